"""Speed benchmark: epochs of an autoencoder layer through a real Trainer, beside this machine's
own matmul rate measured in the same run (the machines are shared and noisy, so only ratios to
a reference taken at the same moment mean anything).

Run: ``python -m pipelines.bench.timing.autoencoder [--data-dir DIR] [--n 10000] [--threads 1]``.

For an autoencoder layer d -> h (tied or not) and a batch of B, one update needs five
(B x d x h)-sized matmuls, 2 B d h flops each:

    forward   a = x W^T (encode), z = h~ W' (decode)
    backward  dL/dW' = h~^T dL/dz, dL/dh~ = dL/dz W'^T, dL/dW = (dL/da)^T x     => 10 B d h  (1)

(no gradient with respect to the input x is needed). The contractive penalty adds O(B h + d h),
negligible beside (1); the higher-order one adds ``a~ = a + sigma W eps`` for C perturbed copies,
its product forward and its weight gradient backward: 4 C B d h more. Only these count as
useful flops: a layer that computed ``W x`` twice would show a lower rate, not a higher one.
The ideal epoch is the time of these products alone, each timed on its own shape with fp32
``torch.mm`` in the same run (best of a reading before and one after the layer's epochs); the
target is an epoch within 1 / 0.6 of it (60% of the matmul rate).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from pipelines.bench.timing.matmul import epoch_timer, matmul_seconds
from pipelines.data.mnist import load_mnist
from pipelines.training import fit_layer, quiet_lightning
from pretrain.presets import make_layer


def update_products(B: int, d: int, h: int, copies: int = 0) -> list[tuple[int, int, int]]:
    """The matmuls of one autoencoder update, Eq. (1), plus ``copies`` perturbed copies, each
    as ``(rows, inner, cols)`` of a ``(rows, inner) x (inner, cols)`` product."""
    up, down, weight = (B, d, h), (B, h, d), (h, B, d)
    products = [up, down, weight, up, weight]  # encode, decode; dW', dL/dh~, dW
    if copies:
        products += [(copies * B, d, h), (h, copies * B, d)]  # W eps, its dW
    return products


def bench_autoencoder(X: np.ndarray, *, n_hidden: int = 1000, kind: str = "cae", batch_size: int = 100,
                      epochs: int = 1, rate: float | None = None) -> dict:
    """Time ``epochs`` epochs of a ``kind`` layer through a real Trainer and the fast datamodule.

    The epochs alone are timed (wall and this process's CPU time), not the Trainer's set-up.
    ``rate`` (GFLOP/s), when given, replaces the per-shape matmul timings of the ideal epoch.
    """
    quiet_lightning()
    N, d = X.shape
    layer = make_layer(kind, d, n_hidden, optimizer="sgd", lr=0.01, seed=0)
    copies = layer.hparams.higher_order_copies if layer.hparams.higher_order > 0 else 0
    products = update_products(batch_size, d, n_hidden, copies)
    flops_per_batch = sum(2.0 * rows * inner * cols for rows, inner, cols in products)  # Eq. (1)
    n_batches = -(-N // batch_size)
    flops = flops_per_batch * N / batch_size  # useful flops of an epoch, the last batch pro rata

    def ideal_seconds(clock=time.perf_counter) -> float:
        if rate:
            return flops / (rate * 1e9)
        per_batch = sum(matmul_seconds(*shape, clock=clock) for shape in products)
        return per_batch * N / batch_size

    ideal, ideal_cpu = ideal_seconds(), ideal_seconds(time.process_time)
    timer = epoch_timer()
    fit_layer(layer, X, epochs=epochs, batch_size=batch_size, seed=0, callbacks=[timer], deterministic=False)
    # other processes only ever add time: keep the better of the readings before and after
    ideal, ideal_cpu = min(ideal, ideal_seconds()), min(ideal_cpu, ideal_seconds(time.process_time))
    seconds, cpu = timer.wall / epochs, timer.cpu / epochs
    return {"what": f"{kind} {d}-{n_hidden}, batch {batch_size}", "seconds_per_epoch": seconds,
            "cpu_seconds_per_epoch": cpu, "epochs_per_second": 1.0 / seconds,
            "gflops": flops / seconds / 1e9, "matmul_gflops": flops / ideal / 1e9,
            "fraction_of_matmul": ideal / seconds, "ideal_seconds": ideal,
            # the same ratio in CPU time: steadier where other processes share the cores
            "cpu_fraction_of_matmul": ideal_cpu / cpu, "ideal_cpu_seconds": ideal_cpu, "batches": n_batches}


def format_rows(rows: list[dict]) -> str:
    lines = ["| what | s/epoch | epochs/s | GFLOP/s | matmul GFLOP/s | fraction |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['what']} | {r['seconds_per_epoch']:.2f} | {r['epochs_per_second']:.3f} | "
                     f"{r['gflops']:.1f} | {r['matmul_gflops']:.1f} | {r['fraction_of_matmul']:.0%} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="folder holding the MNIST .gz files")
    parser.add_argument("--n", type=int, default=60000, help="training images per epoch")
    parser.add_argument("--hidden", type=int, default=1000)
    parser.add_argument("--kind", default="cae", help="layer kind (pretrain.presets)")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    X = np.ascontiguousarray(load_mnist(args.data_dir)[0][:args.n])
    r = bench_autoencoder(X, n_hidden=args.hidden, kind=args.kind, batch_size=args.batch_size,
                          epochs=args.epochs)
    print(f"{len(X)} images, {torch.get_num_threads()} threads")
    print(format_rows([r]))
    print(f"CPU time: {r['cpu_seconds_per_epoch']:.2f} s/epoch, {r['cpu_fraction_of_matmul']:.0%} of the matmul rate")
    return r


if __name__ == "__main__":
    main()
