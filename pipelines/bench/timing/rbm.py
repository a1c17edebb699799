"""Speed benchmark: epochs of a 784-500 binary RBM (CD-1, batch 100) on MNIST, on one device.

Four measurements on the same images (float32, bytes / 255, in file order), by one clock
(``timing.matmul.device_clock``: CPU time on the CPU, synchronized wall time on a GPU):

(a) ``pretrain.rbm.RBM`` through a Lightning Trainer (no logger, no checkpoints), its batches
    from ``ArrayDataModule`` in file order, ``RBM.updates_per_step`` of them a training step
    (the same updates as one a step, as ``fit_layer`` trains it); the layer logs
    its terms once per epoch and computes the monitoring-only terms (the reconstruction error,
    the surrogate's value) on every ``RBM.monitor_every``-th batch;
(b) the same update as a raw PyTorch loop (:func:`train_raw`): Eq. (17) of ``pretrain.rbm``
    written out in place, from the same seeds and Gibbs draws;
(c) scikit-learn's ``BernoulliRBM(n_components=500, batch_size=100, learning_rate=0.1)`` (CPU
    only), its BLAS limited to torch's thread count (threadpoolctl);
(d) the update's five products alone, each timed with fp32 ``torch.mm`` on its own shape: the
    ideal epoch.

Throughput counts the useful flops only: 2 B n_visible n_hidden for each of the five products of
a CD-1 update (:func:`update_products`: the up pass of the data, the down and up passes of the
Gibbs step, the weight gradient of data and chain end; scikit-learn's PCD-1 update does the same
five). Our monitoring down pass is not counted.

    python -m pipelines.bench.timing.rbm [--data-dir DIR] [--threads N] [--n-train N] [--accelerator cpu]
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from sklearn.neural_network import BernoulliRBM
from threadpoolctl import threadpool_limits

from pipelines.bench.timing.matmul import bench_device, clock_name, device_clock, epoch_timer, flops, products_seconds
from pipelines.data.datamodule import ArrayDataModule
from pipelines.data.mnist import load_mnist
from pipelines.training import make_trainer, quiet_lightning
from pretrain.rbm import RBM, pseudo_likelihood

N_HIDDEN, BATCH, LR = 500, 100, 0.1


def update_products(B: int = BATCH, n_visible: int = 784, n_hidden: int = N_HIDDEN) -> list[tuple[int, int, int]]:
    """The five products of a CD-1 update as ``(rows, inner, cols)``: the up pass of the data,
    the down and up passes of the Gibbs step, and the two halves of the weight gradient."""
    up, down, outer = (B, n_visible, n_hidden), (B, n_hidden, n_visible), (n_hidden, B, n_visible)
    return [up, down, up, outer, outer]


def train_lightning(X: torch.Tensor, epochs: int, seed: int, device: torch.device = torch.device("cpu")):
    """Through a Trainer on the batches of :func:`train_raw`, in file order, from the data module
    the pipelines use (``ArrayDataModule``: on a GPU the data stays there; the RBM's
    ``updates_per_step`` batches a training step, as ``fit_layer`` gives them). Returns (model,
    seconds per epoch by the device's clock)."""
    rbm = RBM(X.shape[1], N_HIDDEN, k=1, lr=LR, seed=seed)
    timer = epoch_timer()
    trainer = make_trainer(max_epochs=epochs, callbacks=[timer], deterministic=False,
                           accelerator="gpu" if device.type == "cuda" else "cpu", devices=1)
    trainer.fit(rbm, datamodule=ArrayDataModule(X, batch_size=BATCH, shuffle=False,
                                                batches_per_step=rbm.updates_per_step))
    return rbm, timer.seconds(device) / epochs


def train_raw(X: torch.Tensor, epochs: int, seed: int, device: torch.device = torch.device("cpu")):
    """The RBM's update (CD-1, SGD with momentum, weight decay on W) as a plain loop, the way it is
    written without a framework: the same initial weights and Gibbs draws as ``RBM(seed=seed)``.
    Returns ((W, b, c), seconds per epoch by the device's clock)."""
    ref = RBM(X.shape[1], N_HIDDEN, k=1, lr=LR, seed=seed)  # the initial weights and settings only
    W, b, c = (p.detach().to(device).clone() for p in (ref.W, ref.b, ref.c))
    bufs = [torch.zeros_like(p) for p in (W, b, c)]
    wd = ref.hparams.weight_decay
    gibbs = torch.Generator(device=device).manual_seed(seed + 1)
    X = X.to(device)
    clock = device_clock(device)
    t0 = clock()
    for epoch in range(epochs):
        m = ref.momentum_at(epoch)
        for i in range(0, len(X), BATCH):
            v0 = X[i:i + BATCH]
            B = v0.shape[0]
            h0 = torch.addmm(b, v0, W.T).sigmoid_()  # P(h=1|v_0)
            h = torch.rand(h0.shape, generator=gibbs, device=device).lt_(h0)  # h ~ P(h|v_0)
            pv = torch.addmm(c, h, W).sigmoid_()
            vk = torch.rand(pv.shape, generator=gibbs, device=device).lt_(pv)  # v_1 ~ P(v|h)
            hk = torch.addmm(b, vk, W.T).sigmoid_()
            G = torch.cat([h0.neg_(), hk]).div_(B)  # (2B, n_hidden): [-h_0; h_1] / B
            grads = (G.T @ torch.cat([v0, vk]), G.sum(0), (vk.sum(0) - v0.sum(0)).div_(B))
            for p, buf, g, decay in zip((W, b, c), bufs, grads, (wd, 0.0, 0.0)):
                buf.mul_(m).add_(g.add_(p, alpha=decay) if decay else g)  # v <- m v + g + wd p
                p.sub_(buf, alpha=LR)  # p <- p - lr v
    return (W, b, c), (clock() - t0) / epochs


def train_sklearn(X: np.ndarray, epochs: int, seed: int):
    """scikit-learn's BernoulliRBM on ``X`` (its dtype kept), its BLAS on torch's thread count.
    Returns (model, CPU seconds per epoch)."""
    model = BernoulliRBM(n_components=N_HIDDEN, batch_size=BATCH, n_iter=epochs, learning_rate=LR,
                         random_state=seed)
    with threadpool_limits(limits=torch.get_num_threads()):
        t0 = time.process_time()
        model.fit(X)
        return model, (time.process_time() - t0) / epochs


def bench_rbm(X: np.ndarray, device: torch.device, *, repeats: int = 3, seed: int = 0,
              seconds: float = 0.3, sklearn: bool = True) -> dict:
    """Time (a)-(d) of the module docstring on ``X`` (N, 784) float32, one epoch each, interleaved
    ``repeats`` times (the fastest reading kept: other processes only ever add time).

    Returns images/s and seconds per epoch of each; the scikit-learn row only on the CPU."""
    Xt = torch.from_numpy(np.ascontiguousarray(X))
    n, products = len(X), update_products(BATCH, X.shape[1], N_HIDDEN)
    best: dict[str, float] = {}
    keep = lambda k, s: best.__setitem__(k, min(best.get(k, float("inf")), s))
    for _ in range(repeats):
        keep("lightning", train_lightning(Xt, 1, seed, device)[1])
        keep("raw", train_raw(Xt, 1, seed, device)[1])
        if sklearn and device.type == "cpu":
            keep("sklearn", train_sklearn(X, 1, seed)[1])
        keep("matmul", products_seconds(products, device, seconds) * n / BATCH)  # the ideal epoch
    per_image = {k: n / v for k, v in best.items()}
    return {"images_per_s": per_image, "seconds_per_epoch": best,
            "gflops_matmul": flops(products) * n / BATCH / best["matmul"] / 1e9, "clock": clock_name(device),
            "what": f"RBM {X.shape[1]}-{N_HIDDEN} CD-1, batch {BATCH}"}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default=None, help="folder with the MNIST .gz files")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                   help="threads for torch and BLAS (default: the cores this process may use)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", type=int, default=60000, help="first N training images")
    p.add_argument("--repeats", type=int, default=3, help="readings of each; the fastest is kept")
    p.add_argument("--accelerator", default="cpu", choices=("cpu", "gpu", "auto"))
    args = p.parse_args(argv)
    device = bench_device(args.accelerator)
    torch.set_num_threads(args.threads)
    quiet_lightning()
    X_train, _, X_test, _ = load_mnist(args.data_dir)
    X = np.ascontiguousarray(X_train[:args.n_train])
    r = bench_rbm(X, device, repeats=args.repeats, seed=args.seed)
    ips, ideal = r["images_per_s"], r["images_per_s"]["matmul"]
    print(f"{r['what']}, {len(X)} images, {args.threads} threads, {device.type}, by {r['clock']}; "
          f"matmul rate at the update's shapes {r['gflops_matmul']:.1f} GFLOP/s")
    print(f"{'trainer':<28} {'images/s':>9} {'of the matmul rate':>19} {'vs sklearn':>10}")
    for name in ("lightning", "raw", "sklearn"):
        if name in ips:
            vs = f"{ips[name] / ips['sklearn']:.2f}x" if "sklearn" in ips else "-"
            print(f"{name:<28} {ips[name]:9.0f} {ips[name] / ideal:19.0%} {vs:>10}")
    Vb = torch.from_numpy(X_test > 0.5).float()  # the exact pseudo-likelihood is defined on bits
    model, _ = train_lightning(torch.from_numpy(X), 1, args.seed, device)
    with torch.no_grad():
        W, b, c = (t.detach().cpu() for t in (model.W, model.b, model.c))
        print(f"exact log pseudo-likelihood on the binarized test images: "
              f"{pseudo_likelihood(Vb, W, b, c).mean().item():.2f} nats per image")


if __name__ == "__main__":
    main()
