"""Speed benchmark: the MTC's k = 15 tangents for the 60000 MNIST training images.

The stack is 784-1000-500 with sigmoid units (the first two layer sizes of the MTC paper's
MNIST models; 500 on top keeps J(x) at (500, 784)), untrained (seeded Glorot weights) unless
``--pretrain-epochs E`` first trains each layer as a CAE for E epochs on the first 10000 images.
Three measurements in one run:

1. ``finetune.tangents.tangents`` on the first ``--n`` images, for each ``--oversample`` value.
   Its matmuls are counted exactly: a Krylov space of m = k + oversample vectors costs
   ``b + m + (m - last block)`` products with J or J^T per example (b the block size), each
   ``2 * sum_l n_l n_{l-1}`` flops; the achieved GFLOP/s is that count over the wall time.
2. The exact per-example SVD of the explicit Jacobian (``torch.linalg.svd``, float32, batches of
   50) on ``--sample`` images, extrapolated linearly to the whole set.
3. This machine's fp32 ``torch.mm`` rate on the shapes the tangents use, measured just before
   and just after (the machines are shared: only ratios taken at the same moment mean much;
   the process CPU time is printed beside the wall time for the same reason: on a machine
   shared with other jobs, CPU seconds / threads is what the run would take alone).

Accuracy on the sample, against the float64 SVD of the explicit Jacobian: the largest
principal angle between the computed and the exact top-k subspaces (max and median over the
sample), the relative error of the singular values, and the captured energy
``sum_i ||J u_i||^2 / sum_{i<=k} sigma_i^2`` (1 for the exact subspace; meaningful even when
sigma_k ~ sigma_{k+1} makes the angle ill-defined), with the median gap ratio sigma_{k+1}/sigma_k.

    python -m pipelines.bench_tangents [--data-dir ../shared/data] [--n N] [--oversample 15[,30]]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from finetune.tangents import explicit_jacobian, krylov_products, tangents
from pretrain.autoencoder import AutoEncoder
from pretrain.stack import Stack

K = 15
SIZES = (784, 1000, 500)


def load_images(data_dir: str | None, n: int) -> torch.Tensor:
    """The first n MNIST training images as (n, 784) float32 in [0, 1]."""
    from pipelines.mnist import load_mnist

    X = load_mnist(data_dir)[0][:n]
    return torch.from_numpy(np.ascontiguousarray(X))


def matmul_rate(rows: int, d: int, h: int, seconds: float = 2.0) -> float:
    """fp32 GFLOP/s of ``(rows, d) x (d, h)`` torch.mm, the best of 1 s loops."""
    a, w = torch.rand(rows, d), torch.rand(d, h)
    a @ w
    best = 0.0
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 0.5:
            a @ w
            n += 1
        best = max(best, 2.0 * rows * d * h * n / (time.perf_counter() - t0) / 1e9)
    return best


def krylov_flops(k: int, oversample: int, block_size: int, sizes=SIZES) -> float:
    """Flops of the products with J and J^T for one example (see the module docstring)."""
    m = min(k + oversample, sizes[0])
    return 2.0 * krylov_products(m, block_size) * sum(a * c for a, c in zip(sizes[:-1], sizes[1:]))


def build_stack(seed: int, pretrain_epochs: int, X: torch.Tensor, contraction: float = 0.1) -> Stack:
    layers = [AutoEncoder(a, c, seed=seed + i, contraction=contraction, lr=1e-3, optimizer="adam")
              for i, (a, c) in enumerate(zip(SIZES[:-1], SIZES[1:]))]
    if pretrain_epochs:
        from pipelines.datamodule import ArrayDataModule
        from pipelines.training import make_trainer, quiet_lightning
        from pretrain.stack import encode_all

        quiet_lightning()
        codes = X[:10000]
        for layer in layers:
            trainer = make_trainer(None, max_epochs=pretrain_epochs, deterministic=False)
            trainer.fit(layer, datamodule=ArrayDataModule(codes.numpy(), batch_size=100, seed=seed))
            codes = encode_all(layer, codes)
    stack = Stack(layers).eval()
    for p in stack.parameters():
        p.requires_grad_(False)
    return stack


def exact(stack: Stack, X: torch.Tensor, dtype: torch.dtype, chunk: int = 50):
    """Right singular vectors (n, min, d) and singular values (n, min) by the explicit SVD."""
    from finetune.tangents import _one_thread

    st = stack.to(dtype)
    Vh, S = [], []
    with torch.no_grad(), _one_thread():
        for i in range(0, len(X), chunk):
            _, s, vh = torch.linalg.svd(explicit_jacobian(st, X[i:i + chunk].to(dtype)),
                                        full_matrices=False)
            Vh.append(vh)
            S.append(s)
    stack.float()
    return torch.cat(Vh), torch.cat(S)


def accuracy(U: torch.Tensor, S: torch.Tensor, Vh: torch.Tensor, S_ref: torch.Tensor) -> dict:
    k = U.shape[1]
    U, S = U.double(), S.double()
    cos = torch.linalg.svdvals(U @ Vh[:, :k].transpose(1, 2)).clamp(max=1.0)
    angle = torch.arccos(cos).amax(-1)  # (n,) largest principal angle
    J_u = (U @ Vh.transpose(1, 2)) * S_ref[:, None, :]  # (n, k, min): J u_i in the SVD basis
    energy = (J_u ** 2).sum((1, 2)) / (S_ref[:, :k] ** 2).sum(1)
    rel = ((S - S_ref[:, :k]) / S_ref[:, :k]).abs().amax(-1)
    return {"angle_max": angle.max().item(), "angle_median": angle.median().item(),
            "sv_relerr_median": rel.median().item(), "sv_relerr_max": rel.max().item(),
            "energy_min": energy.min().item(), "energy_median": energy.median().item(),
            "gap_ratio": (S_ref[:, k] / S_ref[:, k - 1]).median().item(),
            "orth_err": (U @ U.transpose(1, 2) - torch.eye(k, dtype=U.dtype)).abs().max().item()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--n", type=int, default=60000, help="images to compute tangents for")
    ap.add_argument("--sample", type=int, default=200, help="images for the exact SVD")
    ap.add_argument("--oversample", default="15", help="comma-separated oversample values")
    ap.add_argument("--block-size", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--pretrain-epochs", type=int, default=0)
    ap.add_argument("--contraction", type=float, default=0.1, help="CAE lambda for --pretrain-epochs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.sample = min(args.sample, args.n)

    X = load_images(args.data_dir, max(args.n, args.sample))
    stack = build_stack(args.seed, args.pretrain_epochs, X, args.contraction)
    weights = (f"CAE-pretrained (lambda {args.contraction}) {args.pretrain_epochs} epochs on 10000 "
               f"images" if args.pretrain_epochs else "untrained")
    print(f"stack {'-'.join(map(str, SIZES))} sigmoid, {weights}; k={K}; "
          f"{torch.get_num_threads()} threads; n={args.n}")
    rows = args.batch_size * args.block_size
    rate0 = matmul_rate(rows, SIZES[0], SIZES[1])
    print(f"fp32 matmul rate ({rows}x{SIZES[0]} @ {SIZES[0]}x{SIZES[1]}): {rate0:.1f} GFLOP/s")

    t0 = time.perf_counter()
    Vh, S_ref = exact(stack, X[:args.sample], torch.float64)
    t64 = time.perf_counter() - t0
    t0 = time.perf_counter()
    exact(stack, X[:args.sample], torch.float32)
    t32 = time.perf_counter() - t0
    print(f"exact SVD of the explicit Jacobian, {args.sample} images: float32 {t32:.1f} s "
          f"(-> {t32 * 60000 / args.sample:.0f} s for 60000), float64 {t64:.1f} s "
          f"(-> {t64 * 60000 / args.sample:.0f} s)")

    print("\n| oversample | m | s (n images) | s / 60000 (extrapolated) | CPU s / 60000 | GFLOP/s | "
          "of matmul rate | max angle (rad) max / median | sigma rel. err. median / max | "
          "energy min / median |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    rates = [rate0]
    for oversample in (int(v) for v in args.oversample.split(",")):
        t0, c0 = time.perf_counter(), time.process_time()
        U, S = tangents(stack, X[:args.n], K, oversample=oversample, block_size=args.block_size,
                        batch_size=args.batch_size, seed=args.seed, method="krylov")
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        gflops = krylov_flops(K, oversample, args.block_size) * args.n / dt / 1e9
        rates.append(matmul_rate(rows, SIZES[0], SIZES[1], seconds=1.0))
        rate = 0.5 * (rates[-2] + rates[-1])
        acc = accuracy(U[:args.sample], S[:args.sample], Vh, S_ref)
        print(f"| {oversample} | {K + oversample} | {dt:.1f} | {dt * 60000 / args.n:.0f} | "
              f"{cpu * 60000 / args.n:.0f} | {gflops:.1f} | "
              f"{gflops / rate:.0%} | {acc['angle_max']:.3f} / {acc['angle_median']:.3f} | "
              f"{acc['sv_relerr_median']:.1e} / {acc['sv_relerr_max']:.1e} | "
              f"{acc['energy_min']:.4f} / {acc['energy_median']:.4f} |", flush=True)
    print(f"\nmatmul rate during the run: {min(rates):.1f} .. {max(rates):.1f} GFLOP/s; "
          f"median gap ratio sigma_{K + 1}/sigma_{K} = {acc['gap_ratio']:.3f}; "
          f"orthonormality error {acc['orth_err']:.1e}")


if __name__ == "__main__":
    main()
