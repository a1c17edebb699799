"""Speed benchmark: the MTC's k = 15 tangents for the 60000 MNIST training images.

The stack is 784-1000-500 with sigmoid units by default (the first two layer sizes of the MTC
paper's MNIST models; 500 on top keeps J(x) at (500, 784)); ``--sizes 784,1000,1000`` is the
MTC's own two-layer stack. Weights are untrained (seeded Glorot) unless ``--pretrain-epochs E``
first trains each layer as a CAE for E epochs on the first 10000 images, and ``--layers
a.pt,b.pt`` loads trained layers instead (the layer checkpoints that ``layerwise run`` and the
benchmark suites cache, e.g. the semi-supervised full profile's 784-1000-1000 CAE+H stack).
Three measurements in one run:

1. ``finetune.tangents.tangents`` on the first ``--n`` images, for each ``--configs`` entry
   ``oversample:block_size:rank_tol``. Its matmuls are counted exactly: a Krylov space of
   m = k + oversample vectors costs ``b + m + (m - last block)`` products with J or J^T per
   example (b the block size), each ``2 * sum_l n_l n_{l-1}`` flops, with r for d in the first
   layer when rank_tol restricts the search to r directions (Eq. (9) of ``finetune.tangents``);
   the achieved GFLOP/s is that count over the wall time, and the ideal time that count at the
   machine's matmul rate.
2. The exact per-example SVD of the explicit Jacobian (``torch.linalg.svd``, float32, batches of
   50) on ``--sample`` images, extrapolated linearly to the whole set.
3. This machine's fp32 ``torch.mm`` rate on the shapes the tangents use, measured before and
   after each configuration, two ways: torch's intra-op threads on one product, and one
   one-thread product per core at once (how ``tangents`` uses the cores); the better is the
   machine rate. The machines are shared: only ratios taken at the same moment mean much, so
   the load average and the process CPU time are printed beside the wall time (on a machine
   shared with other jobs, CPU seconds / cores is about what the run would take alone).

Accuracy on the sample, against the float64 SVD of the explicit Jacobian: the largest
principal angle between the computed and the exact top-k subspaces (max and median over the
sample), the relative error of the singular values, and the captured energy
``sum_i ||J u_i||^2 / sum_{i<=k} sigma_i^2`` (1 for the exact subspace; meaningful even when
sigma_k ~ sigma_{k+1} makes the angle ill-defined), with the median gap ratio sigma_{k+1}/sigma_k.

    python -m pipelines.bench.timing.tangents [--data-dir ../shared/data] [--n N] [--configs 10:1:0.01]
        [--sizes 784,1000,1000 | --layers a.pt,b.pt] [--pretrain-epochs E]
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from finetune.tangent_defaults import OVERSAMPLE, RANK_TOL
from finetune.tangents import (
    explicit_jacobian,
    krylov_dim,
    krylov_products,
    one_thread,
    search_space,
    tangents,
)
from pipelines.bench.timing.matmul import machine_rate
from pipelines.data.mnist import load_mnist
from pipelines.training import fit_layer, quiet_lightning
from pretrain.autoencoder import AutoEncoder
from pretrain.stack import Stack, encode_all

K = 15
SIZES = (784, 1000, 500)


def load_images(data_dir: str | None, n: int) -> torch.Tensor:
    """The first n MNIST training images as (n, 784) float32 in [0, 1]."""
    X = load_mnist(data_dir)[0][:n]
    return torch.from_numpy(np.ascontiguousarray(X))


def krylov_flops(k: int, oversample: int, block_size: int, sizes=SIZES, r: int | None = None) -> float:
    """Flops of the products with J and J^T for one example (see the module docstring); r, the
    dimension of the search space when it is restricted, replaces d in the first layer."""
    m = krylov_dim(k, oversample, sizes[0])
    first = sizes[1] * (sizes[0] if r is None else r)
    rest = sum(a * c for a, c in zip(sizes[1:-1], sizes[2:]))
    return 2.0 * krylov_products(m, block_size) * (first + rest)


def load_layers(paths: list[str]) -> Stack:
    """A stack of sigmoid autoencoder layers from layer checkpoints ({"state_dict": W, b, c})."""
    layers = []
    for path in paths:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        state = blob.get("state_dict", blob) if isinstance(blob, dict) else None
        if not isinstance(state, dict) or "W" not in state:
            raise ValueError(f"{path} is not an autoencoder layer checkpoint (no state_dict with W); "
                             f"pass the layer-*.pt files of a cached stack")
        n_hidden, n_visible = state["W"].shape
        layer = AutoEncoder(n_visible, n_hidden)
        layer.load_state_dict(state)
        layers.append(layer)
    return frozen_stack(layers)


def frozen_stack(layers) -> Stack:
    """The layers as a Stack in eval mode with no parameter requiring a gradient."""
    stack = Stack(layers).eval()
    for p in stack.parameters():
        p.requires_grad_(False)
    return stack


def explicit_flops(sizes=SIZES) -> float:
    """Flops per example of the Gram form: J = D_L W_L ... D_1 W_1 built layer by layer from
    the bottom (the cheapest order when the layers do not shrink below d), then J^T J, before
    its d x d eigendecomposition."""
    d = sizes[0]
    build = sum(a * c for a, c in zip(sizes[1:-1], sizes[2:])) * d  # W_l (D W ... W_1), l >= 2
    return 2.0 * (build + d * d * sizes[-1])


def build_stack(seed: int, pretrain_epochs: int, X: torch.Tensor, contraction: float = 0.1,
                sizes=SIZES) -> Stack:
    layers = [AutoEncoder(a, c, seed=seed + i, contraction=contraction, lr=1e-3, optimizer="adam")
              for i, (a, c) in enumerate(zip(sizes[:-1], sizes[1:]))]
    if pretrain_epochs:
        quiet_lightning()
        codes = X[:10000]
        for layer in layers:
            fit_layer(layer, codes.numpy(), epochs=pretrain_epochs, batch_size=100, seed=seed,
                      deterministic=False)
            codes = encode_all(layer, codes)
    return frozen_stack(layers)


def exact(stack: Stack, X: torch.Tensor, dtype: torch.dtype, chunk: int = 50):
    """Right singular vectors (n, min, d) and singular values (n, min) by the explicit SVD."""
    st = stack.to(dtype)
    Vh, S = [], []
    with torch.no_grad(), one_thread():
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


def _load() -> str:
    return "load average " + " / ".join(f"{v:.1f}" for v in os.getloadavg()) + " (1 / 5 / 15 min)"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--n", type=int, default=60000, help="images to compute tangents for")
    ap.add_argument("--sample", type=int, default=200, help="images for the exact SVD")
    ap.add_argument("--configs", default=f"{OVERSAMPLE}:1:{RANK_TOL},13:1:0",
                    help="comma-separated oversample:block_size[:rank_tol] (default: the default, "
                         f"m = {K + OVERSAMPLE} Lanczos vectors in the span holding all but "
                         f"{RANK_TOL} of ||W_1||_F^2, and the former default, m = 28 in the whole "
                         "input space; rank_tol 0 when left out)")
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)), help="layer sizes, from 784")
    ap.add_argument("--layers", default=None,
                    help="comma-separated layer checkpoints to load instead of building --sizes")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--pretrain-epochs", type=int, default=0)
    ap.add_argument("--contraction", type=float, default=0.1, help="CAE lambda for --pretrain-epochs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.sample = min(args.sample, args.n)
    sizes = tuple(int(v) for v in args.sizes.split(","))
    configs = []
    for c in args.configs.split(","):
        parts = c.split(":")
        configs.append((int(parts[0]), int(parts[1]), float(parts[2]) if len(parts) > 2 else 0.0))

    X = load_images(args.data_dir, max(args.n, args.sample))
    if args.layers:
        stack = load_layers(args.layers.split(","))
        sizes = (stack.n_visible,) + tuple(layer.n_hidden for layer in stack)
        weights = f"loaded from {args.layers}"
    else:
        stack = build_stack(args.seed, args.pretrain_epochs, X, args.contraction, sizes)
        weights = (f"CAE-pretrained (lambda {args.contraction}) {args.pretrain_epochs} epochs on "
                   f"10000 images" if args.pretrain_epochs else "untrained")
    print(f"stack {'-'.join(map(str, sizes))} sigmoid, {weights}; k={K}; "
          f"{torch.get_num_threads()} threads; n={args.n}; {_load()}")
    rows = args.batch_size
    cores = torch.get_num_threads()
    shape = f"{rows}x{sizes[0]} @ {sizes[0]}x{sizes[1]}"
    rates = [machine_rate(rows, sizes[0], sizes[1])]
    print(f"fp32 matmul rate ({shape}): {rates[0][0]:.1f} GFLOP/s on {cores} intra-op threads, "
          f"{rates[0][1]:.1f} with one product per core; {rates[0][2]:.1f} per CPU second of one core")

    t0 = time.perf_counter()
    Vh, S_ref = exact(stack, X[:args.sample], torch.float64)
    t64 = time.perf_counter() - t0
    t0 = time.perf_counter()
    exact(stack, X[:args.sample], torch.float32)
    t32 = time.perf_counter() - t0
    print(f"exact SVD of the explicit Jacobian, {args.sample} images: float32 {t32:.1f} s "
          f"(-> {t32 * 60000 / args.sample:.0f} s for 60000), float64 {t64:.1f} s "
          f"(-> {t64 * 60000 / args.sample:.0f} s)")

    print("\nWall time depends on the other jobs of a shared machine; CPU time barely does: "
          f"'alone' is CPU s / {cores} cores, 'ideal' the products alone at {cores} times the "
          "per-CPU-second matmul rate.\n")
    print("| oversample | b | rank_tol | r | m | products | s (n images) | s / 60000 | CPU s / 60000 | alone s / 60000 | "
          "ideal s / 60000 | GFLOP/s of wall | of matmul rate | GFLOP per CPU s | of per-core rate | "
          "max angle (rad) max / median | sigma rel. err. median / max | energy min / median |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    first_flops = None
    for oversample, block_size, rank_tol in configs:
        space = search_space(stack, K, oversample=oversample, rank_tol=rank_tol)
        r = None if space is None else space.shape[0]
        t0, c0 = time.perf_counter(), time.process_time()
        U, S = tangents(stack, X[:args.n], K, oversample=oversample, block_size=block_size,
                        rank_tol=rank_tol, batch_size=args.batch_size, seed=args.seed,
                        method="krylov")
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        flops = krylov_flops(K, oversample, block_size, sizes, r)
        first_flops = first_flops or flops
        rates.append(machine_rate(rows, sizes[0], sizes[1]))
        rate = max(0.5 * (rates[-2][0] + rates[-1][0]), 0.5 * (rates[-2][1] + rates[-1][1]))
        per_core = max(rates[-2][2], rates[-1][2])
        acc = accuracy(U[:args.sample], S[:args.sample], Vh, S_ref)
        m = krylov_dim(K, oversample, sizes[0])
        scale = 60000 / args.n
        print(f"| {oversample} | {block_size} | {rank_tol:g} | {r or sizes[0]} | {m} | {krylov_products(m, block_size)} | {dt:.1f} | "
              f"{dt * scale:.0f} | {cpu * scale:.0f} | {cpu * scale / cores:.0f} | "
              f"{flops * 60000 / (cores * per_core) / 1e9:.0f} | {flops * args.n / dt / 1e9:.1f} | "
              f"{flops * args.n / dt / 1e9 / rate:.0%} | {flops * args.n / cpu / 1e9:.1f} | "
              f"{flops * args.n / cpu / 1e9 / per_core:.0%} | "
              f"{acc['angle_max']:.3f} / {acc['angle_median']:.3f} | "
              f"{acc['sv_relerr_median']:.1e} / {acc['sv_relerr_max']:.1e} | "
              f"{acc['energy_min']:.4f} / {acc['energy_median']:.4f} |", flush=True)
    lo = min(max(r[:2]) for r in rates)
    hi = max(max(r[:2]) for r in rates)
    print(f"\nmatmul rate during the run: {lo:.1f} .. {hi:.1f} GFLOP/s (the better of the two ways), "
          f"{min(r[2] for r in rates):.1f} .. {max(r[2] for r in rates):.1f} per CPU second of one "
          f"core; median gap ratio sigma_{K + 1}/sigma_{K} = {acc['gap_ratio']:.3f}; "
          f"orthonormality error {acc['orth_err']:.1e}; {_load()}")
    print(f"Gram form (explicit J, then J^T J): {explicit_flops(sizes) / 1e9:.2f} GFLOP per example "
          f"before its eigendecomposition, {explicit_flops(sizes) * 60000 / hi / 1e9:.0f} s for "
          f"60000 at the best matmul rate, {explicit_flops(sizes) / first_flops:.0f} "
          f"times the products of the first configuration")


if __name__ == "__main__":
    main()
