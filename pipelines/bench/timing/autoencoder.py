"""Speed benchmark: epochs of an autoencoder layer (CAE+H 784-1000 by default) on one device,
beside a raw PyTorch loop of the same update and this machine's own matmul rate at the update's
shapes, all measured in the same run by one clock (``timing.matmul.device_clock``: CPU time on
the CPU, synchronized wall time on a GPU; the machines are shared and noisy, so only ratios to a
reference taken at the same moment mean anything).

Run: ``python -m pipelines.bench.timing.autoencoder [--data-dir DIR] [--n 10000] [--threads 1]``.

For an autoencoder layer d -> h (tied or not) and a batch of B, one update needs five
(B x d x h)-sized matmuls, 2 B d h flops each:

    forward   a = x W^T (encode), z = h~ W' (decode)
    backward  dL/dW' = h~^T dL/dz, dL/dh~ = dL/dz W'^T, dL/dW = (dL/da)^T x     => 10 B d h  (1)

(no gradient with respect to the input x is needed). The contractive penalty adds O(B h + d h),
negligible beside (1); the higher-order one adds ``W eps`` for C perturbed copies, its product
forward and its weight gradient backward: 4 C B d h more (13 products of B d h for CAE+H's C = 4).
Only these count as useful flops: a layer that computed ``W x`` twice would show a lower rate,
not a higher one. The ideal epoch is the time of these products alone, each timed on its own
shape with fp32 ``torch.mm`` (:func:`update_products`). The raw loop (:func:`train_raw`) is the
loss of ``pretrain.autoencoder`` Eq. (6) written in plain torch for sigmoid units and
cross-entropy, differentiated by autograd, with ``torch.optim.SGD``: the update as it is written
without the layer.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from pipelines.bench.timing.matmul import (
    clock_name,
    device_clock,
    epoch_timer,
    flops,
    measurement_arguments,
    products_seconds,
)
from pipelines.data.mnist import load_mnist
from pipelines.training import fit_layer, quiet_lightning
from pretrain.presets import make_layer

LR = 0.01


def update_products(B: int, d: int, h: int, copies: int = 0) -> list[tuple[int, int, int]]:
    """The matmuls of one autoencoder update, Eq. (1), plus ``copies`` perturbed copies, each
    as ``(rows, inner, cols)`` of a ``(rows, inner) x (inner, cols)`` product."""
    up, down, weight = (B, d, h), (B, h, d), (h, B, d)
    products = [up, down, weight, up, weight]  # encode, decode; dW', dL/dh~, dW
    if copies:
        products += [(copies * B, d, h), (h, copies * B, d)]  # W eps, its dW
    return products


def train_raw(layer, X: torch.Tensor, batch_size: int, device: torch.device) -> float:
    """One epoch of ``layer``'s update (sigmoid units, cross-entropy, tied weights, contraction and
    higher-order penalties as the layer's hyperparameters set them) written in plain torch and
    differentiated by autograd, from a copy of the layer's initial weights. Returns the seconds
    by the device's clock."""
    hp = layer.hparams
    W, b, c = (p.detach().to(device).clone().requires_grad_() for p in (layer.W, layer.b, layer.c))
    opt = torch.optim.SGD([W, b, c], lr=LR)
    g = torch.Generator(device=device).manual_seed(0)
    C = hp.higher_order_copies if hp.higher_order > 0 else 0
    X = X.to(device)
    clock = device_clock(device)
    t0 = clock()
    for i in range(0, len(X), batch_size):
        x = X[i:i + batch_size]
        B = x.shape[0]
        a = F.linear(x, W, b)
        h = torch.sigmoid(a)
        loss = F.binary_cross_entropy_with_logits(h @ W + c, x, reduction="sum") / B
        d, n = h * (1 - h), (W * W).sum(1)  # s'(a), ||W_j||^2
        loss = loss + hp.contraction * ((d * d) @ n).mean()
        if C:
            eps = torch.randn((C, B, x.shape[1]), generator=g, device=device)
            h_t = torch.sigmoid(a + hp.higher_order_sigma * F.linear(eps, W))
            loss = loss + hp.higher_order * (((d - h_t * (1 - h_t)) ** 2).mean(0) @ n).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return clock() - t0


def bench_autoencoder(X: np.ndarray, *, n_hidden: int = 1000, kind: str = "cae_h", batch_size: int = 100,
                      device: torch.device = torch.device("cpu"), repeats: int = 3, seconds: float = 0.3,
                      raw: bool = True) -> dict:
    """Time an epoch of a ``kind`` layer through a real Trainer (``fit_layer``: on a GPU the data
    stays on the device), the raw loop (sigmoid cross-entropy kinds only) and the ideal epoch, interleaved
    ``repeats`` times, the fastest reading of each kept. The epochs alone are timed, not the
    Trainer's set-up."""
    quiet_lightning()
    N, d = X.shape
    layer = make_layer(kind, d, n_hidden, optimizer="sgd", lr=LR, seed=0)
    copies = layer.hparams.higher_order_copies if layer.hparams.higher_order > 0 else 0
    products = update_products(batch_size, d, n_hidden, copies)
    useful = flops(products) * N / batch_size  # useful flops of an epoch, the last batch pro rata
    raw = raw and layer.hidden_unit == "sigmoid" and layer.hparams.loss == "cross_entropy" and layer.tied
    Xt = torch.from_numpy(np.ascontiguousarray(X)).to(device)
    best: dict[str, float] = {}
    keep = lambda k, s: best.__setitem__(k, min(best.get(k, float("inf")), s))
    for _ in range(repeats):
        fresh = make_layer(kind, d, n_hidden, optimizer="sgd", lr=LR, seed=0)
        timer = epoch_timer()
        fit_layer(fresh, X, epochs=1, batch_size=batch_size, seed=0, callbacks=[timer], deterministic=False,
                  accelerator="gpu" if device.type == "cuda" else "cpu", devices=1)
        keep("lightning", timer.seconds(device))
        if raw:
            keep("raw", train_raw(layer, Xt, batch_size, device))
        keep("matmul", products_seconds(products, device, seconds) * N / batch_size)
    return {"what": f"{kind} {d}-{n_hidden}, batch {batch_size}", "seconds_per_epoch": best,
            "gflops": {k: useful / v / 1e9 for k, v in best.items()},
            "fraction_of_matmul": {k: best["matmul"] / v for k, v in best.items()},
            "clock": clock_name(device), "batches": -(-N // batch_size)}


def format_rows(rows: list[dict]) -> str:
    lines = ["| what | trainer | s/epoch | GFLOP/s | of the matmul rate |", "|---|---|---|---|---|"]
    for r in rows:
        for name, seconds in r["seconds_per_epoch"].items():
            lines.append(f"| {r['what']} | {name} | {seconds:.2f} | {r['gflops'][name]:.1f} | "
                         f"{r['fraction_of_matmul'][name]:.0%} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="folder holding the MNIST .gz files")
    parser.add_argument("--n", type=int, default=10000, help="training images per epoch")
    parser.add_argument("--hidden", type=int, default=1000)
    parser.add_argument("--kind", default="cae_h", help="layer kind (pretrain.presets)")
    parser.add_argument("--batch-size", type=int, default=100)
    args, device = measurement_arguments(parser, argv)
    X = np.ascontiguousarray(load_mnist(args.data_dir)[0][:args.n])
    r = bench_autoencoder(X, n_hidden=args.hidden, kind=args.kind, batch_size=args.batch_size,
                          device=device, repeats=args.repeats)
    print(f"{len(X)} images, {torch.get_num_threads()} threads, {device.type}, by {r['clock']}")
    print(format_rows([r]))
    return r


if __name__ == "__main__":
    main()
