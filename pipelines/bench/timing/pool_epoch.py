"""Speed benchmark: a fine-tuning epoch over the unlabeled pool, of virtual adversarial training
(``finetune.vat``) and of the Ladder network (``finetune.ladder``), on one device, beside this
machine's matmul rate and (VAT) a raw PyTorch loop of the same update, all measured in the same
run by one clock (``timing.matmul.device_clock``: CPU time on the CPU, synchronized wall time on
a GPU; only ratios to a reference taken at the same moment mean anything on a shared machine).

The network is the full semi-supervised profile's: the MLP d-1000-1000-10 of the CAE+H stack's
shape (fresh Glorot weights: pretraining changes the values, not the work), labeled batches of
B = 50 from L = 100 labeled images cycled beside pool batches of B_u = 100, one epoch a pass over
the pool (``finetune.epoch_over: pool``), as the benchmark's ``vat`` and ``ladder`` cells train.

The ideal epoch is the step's products at this machine's fp32 matmul rate:

    (1) ideal seconds = F_step * n_steps / R(B + B_u, d, h_1)

F_step is counted by torch's ``FlopCounterMode`` on a first training step through the same
Trainer (``pipelines.flop_count``): the products the update performs, as written. R is the rate
of the step's widest product, ``(B + B_u, d) x (d, h_1)``, timed with ``torch.mm``
(``timing.matmul.matmul_rate``); a smaller last pool batch is counted as a full one. For VAT with
one power iteration, with P = 2 (d h_1 + h_1 h_2 + h_2 c) the multiply-adds of one row's forward
pass times two and N = B + B_u:

    (2) F_step = B (3P - 2 d h_1) + B_u P + N (5P - 2 d h_1)

the cross-entropy's forward and backward on the labeled batch (no gradient to the input: 3P less
the first layer's input gradient), the clean logits of the pool rows (forward only: the labeled
rows' are the cross-entropy's, the penalty's target reuses them), and on all N rows the power
iteration (a forward and the gradient with respect to r, through every layer: 2P) and the
adversarial KL (a forward and its weight and hidden gradients: 3P - 2 d h_1). For the Ladder, whose
decoder's V(l) have the encoder's shapes and whose every pass runs on all N rows:

    (3) F_step = N (9P - 4 d h_1)

the corrupted and the clean encoder (a forward each, and their weight and hidden gradients: the
clean pass gives the denoising targets, which are differentiated too; neither input needs a
gradient) and the decoder (a forward, its weight and activation gradients): 3 (P + 2P) less the
two input gradients.

The raw loop (:func:`train_raw_vat`) is ``VAT``'s Eq. (8) written in plain torch for sigmoid
hidden units, differentiated by autograd, with ``torch.optim.Adam`` (fused, as the module's),
on the batches of the same ``PairedLoader``: the update as it is written without the module and
the Trainer. The Ladder has no raw loop here (it would be a second Ladder); its reference is the
matmul rate alone.

Run: ``python -m pipelines.bench.timing.pool_epoch [--data-dir DIR] [--n 10000] [--threads 1]``.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from finetune.ladder import Ladder
from finetune.unroll import UnrolledEncoder
from finetune.vat import VAT, kl_from_logits
from pipelines import flop_count
from pipelines.bench.timing.autoencoder import format_rows
from pipelines.bench.timing.matmul import (
    clock_name,
    device_clock,
    epoch_timer,
    matmul_rate,
    measurement_arguments,
)
from pipelines.data.datamodule import ArrayDataModule
from pipelines.data.mnist import load_mnist
from pipelines.training import make_trainer, quiet_lightning
from pretrain.module import fused_kernel
from pretrain.presets import make_layer
from pretrain.stack import Stack

METHODS = ("vat", "ladder")
HIDDEN = (1000, 1000)
LABELS, BATCH, POOL_BATCH, N_CLASSES, LR = 100, 50, 100, 10, 1e-3
#: the shipped ``mnist_vat`` settings: epsilon 2 in pixel units, one power iteration
VAT_SETTINGS = {"alpha": 1.0, "epsilon": 2.0, "xi": 1e-6, "n_power": 1}


def build(method: str, d: int, hidden=HIDDEN, *, n_classes: int = N_CLASSES, seed: int = 0):
    """A fresh ``VAT`` or ``Ladder`` on an MLP ``d-hidden-n_classes`` of sigmoid units (the CAE+H
    stack's shape), its weights Glorot-initialised from ``seed``."""
    if method not in METHODS:
        raise ValueError(f"unknown pool-epoch method {method!r}: choose one of {', '.join(METHODS)}")
    sizes = [d, *hidden]
    encoder = UnrolledEncoder(Stack([make_layer("cae_h", a, b, seed=seed) for a, b in zip(sizes, sizes[1:])]))
    encoder.reset_parameters(torch.Generator().manual_seed(seed))
    if method == "vat":
        return VAT(encoder, n_classes, lr=LR, optimizer="adam", seed=seed, **VAT_SETTINGS)
    return Ladder(encoder, n_classes, lr=LR, optimizer="adam", seed=seed)


def data_module(X_pool, X_lab, y_lab, *, batch_size: int = BATCH, pool_batch: int = POOL_BATCH,
                seed: int = 0, dtype=torch.float32) -> ArrayDataModule:
    """The labeled rows cycled beside one pass over the pool, as the benchmark's cells train."""
    return ArrayDataModule(X_lab, y_lab, batch_size=min(batch_size, len(y_lab)), seed=seed, dtype=dtype,
                           unlabeled=(X_pool,), unlabeled_batch_size=pool_batch, epoch_over="pool")


def fit_epoch(module, dm: ArrayDataModule, device: torch.device) -> float:
    """One epoch of ``module`` on ``dm`` through a real Trainer; its seconds by the device's clock."""
    timer = epoch_timer()
    trainer = make_trainer(max_epochs=1, callbacks=[timer], deterministic=False,
                           accelerator="gpu" if device.type == "cuda" else "cpu", devices=1)
    trainer.fit(module, datamodule=dm)
    return timer.seconds(device)


def step_flops(method: str, X_pool, X_lab, y_lab, *, hidden=HIDDEN, pool_batch: int = POOL_BATCH,
               device: torch.device = torch.device("cpu"), dtype=torch.float32) -> float:
    """F_step of Eq. (1): the products of one training step, counted on a one-step fit."""
    module = build(method, X_pool.shape[1], hidden).to(dtype)
    with flop_count.counting() as tally:
        fit_epoch(module, data_module(X_pool[:pool_batch], X_lab, y_lab, pool_batch=pool_batch, dtype=dtype),
                  device)
    return tally.flops


def vat_flops(B: int, N: int, sizes) -> float:
    """Eq. (2) for an MLP of layer ``sizes`` ``[d, h_1, ..., c]``, B labeled rows of N."""
    P = 2 * sum(a * b for a, b in zip(sizes, sizes[1:]))
    first = 2 * sizes[0] * sizes[1]
    return B * (3 * P - first) + (N - B) * P + N * (5 * P - first)


def ladder_flops(N: int, sizes) -> float:
    """Eq. (3) for a Ladder of layer ``sizes`` ``[d, h_1, ..., c]`` on ``N`` rows a step."""
    P = 2 * sum(a * b for a, b in zip(sizes, sizes[1:]))
    return N * (9 * P - 4 * sizes[0] * sizes[1])


def train_raw_vat(module: VAT, dm: ArrayDataModule, device: torch.device) -> tuple[list[torch.Tensor], float]:
    """One epoch of ``module``'s update (Eq. 8 of ``finetune.vat``, sigmoid hidden units, Adam) in
    plain torch on ``dm``'s batches, from a copy of the module's initial weights; the random
    directions come from the global generator in the module's order. Returns the trained
    ``[W_1, b_1, ..., W_head, b_head]`` and the seconds by the device's clock."""
    hp = module.hparams
    linears = [*module.encoder.layers, module.net.head]
    params = [t.detach().to(device).clone().requires_grad_() for lin in linears for t in (lin.weight, lin.bias)]
    opt = torch.optim.Adam(params, lr=hp.lr, fused=fused_kernel(params))  # as Module.configure_optimizers

    def logits(x):
        h = x
        for i in range(0, len(params) - 2, 2):
            h = torch.sigmoid(F.linear(h, params[i], params[i + 1]))
        return F.linear(h, params[-2], params[-1])

    def unit(v):
        v = v / v.abs().amax(dim=1, keepdim=True).clamp_min(1e-30)
        return v / v.norm(dim=1, keepdim=True).clamp_min(1e-30)

    clock = device_clock(device)
    t0 = clock()
    for batch in dm.train_dataloader():
        (x, y), (x_u,) = (t.to(device) for t in batch["labeled"]), (batch["unlabeled"][0].to(device),)
        logits_lab = logits(x)
        ce = F.cross_entropy(logits_lab, y)
        x_all = torch.cat([x, x_u])
        with torch.no_grad():
            p = torch.cat([logits_lab.detach(), logits(x_u)])  # the target p(. | x)
        r = (hp.xi * unit(torch.randn_like(x_all))).requires_grad_(True)
        (g,) = torch.autograd.grad(kl_from_logits(p, logits(x_all + r)).sum(), r)  # one power iteration
        loss = ce + hp.alpha * kl_from_logits(p, logits(x_all + hp.epsilon * unit(g))).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return [p.detach() for p in params], clock() - t0


def bench_pool_epoch(method: str, X_pool: np.ndarray, X_lab: np.ndarray, y_lab: np.ndarray, *,
                     hidden=HIDDEN, device: torch.device = torch.device("cpu"), repeats: int = 3,
                     seconds: float = 0.3, raw: bool = True) -> dict:
    """Time a pool epoch of ``method`` through a Trainer, the raw loop (VAT) and the ideal epoch of
    Eq. (1), interleaved ``repeats`` times, the fastest reading of each kept (other processes only
    ever add time). The epochs alone are timed, not the Trainer's set-up."""
    quiet_lightning()
    d = X_pool.shape[1]
    n_steps = -(-len(X_pool) // POOL_BATCH)
    flops = step_flops(method, X_pool, X_lab, y_lab, hidden=hidden, device=device) * n_steps
    best: dict[str, float] = {}
    keep = lambda k, s: best.__setitem__(k, min(best.get(k, float("inf")), s))
    for _ in range(repeats):
        torch.manual_seed(0)
        keep("lightning", fit_epoch(build(method, d, hidden), data_module(X_pool, X_lab, y_lab), device))
        if raw and method == "vat":
            torch.manual_seed(0)
            keep("raw", train_raw_vat(build(method, d, hidden), data_module(X_pool, X_lab, y_lab), device)[1])
        rate = matmul_rate(min(BATCH, len(y_lab)) + POOL_BATCH, d, hidden[0], seconds=seconds,
                           clock=device_clock(device), device=device)
        keep("matmul", flops / (rate * 1e9))
    shape = "-".join(map(str, [d, *hidden, N_CLASSES]))
    return {"what": f"{method} {shape}, batches {BATCH} + {POOL_BATCH}, pool epoch", "seconds_per_epoch": best,
            "gflops": {k: flops / v / 1e9 for k, v in best.items()},
            "fraction_of_matmul": {k: best["matmul"] / v for k, v in best.items()},
            "clock": clock_name(device), "steps": n_steps, "gflop_per_step": flops / n_steps / 1e9}


def labeled_subset(X: np.ndarray, y: np.ndarray, n: int = LABELS) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n // n_classes`` images of each class: a class-balanced labeled set."""
    rows = np.concatenate([np.flatnonzero(y == c)[:n // N_CLASSES] for c in range(N_CLASSES)])
    return X[rows], y[rows]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="folder holding the MNIST .gz files")
    parser.add_argument("--n", type=int, default=10000, help="pool images per epoch")
    parser.add_argument("--method", action="append", choices=METHODS, help="default: both")
    args, device = measurement_arguments(parser, argv)
    X, y = load_mnist(args.data_dir)[:2]
    X_pool = np.ascontiguousarray(X[:args.n])
    X_lab, y_lab = labeled_subset(X_pool, y[:args.n])
    rows = [bench_pool_epoch(m, X_pool, X_lab, y_lab, device=device, repeats=args.repeats)
            for m in args.method or METHODS]
    print(f"{len(X_pool)} pool images, {len(y_lab)} labeled, {torch.get_num_threads()} threads, "
          f"{device.type}, by {rows[0]['clock']}")
    print(format_rows(rows))
    return rows


if __name__ == "__main__":
    main()
