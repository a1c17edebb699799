"""Batching throughput: slice batches (``SliceLoader``) against ``TensorDataset`` + ``DataLoader``.

One training epoch of batches over MNIST's 60000 x 784 training images (scikit-learn's digits
when the MNIST files are not found), both loaders shuffled, same batch size, in the same run.
Each loader gets one untimed warm-up pass; the best of ``repeats`` timed passes is reported.

Run: ``python -m pipelines.bench.timing.batching [--data-dir DIR] [--batch-size 100] [--threads 1]``.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from pipelines.data.datamodule import ArrayDataModule
from pipelines.data.datasets import load_dataset


def _time_epoch(loader, n_batches: int | None, repeats: int) -> tuple[float, int]:
    """Best wall time of ``repeats`` passes over (at most) ``n_batches`` batches, and the count."""
    best, count = float("inf"), 0
    for r in range(repeats + 1):  # pass 0 warms up caches and allocators, untimed
        t0 = time.perf_counter()
        count = 0
        for batch in loader:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            x.sum()  # touch the batch so lazily produced data is really produced
            count += 1
            if n_batches is not None and count >= n_batches:
                break
        if r:
            best = min(best, time.perf_counter() - t0)
    return best, count


def bench_batching(X: np.ndarray, batch_size: int = 100, n_batches: int | None = None, *,
                   y: np.ndarray | None = None, repeats: int = 3, seed: int = 0) -> dict[str, dict[str, float]]:
    """Batches per second of one epoch for each loader.

    Parameters
    ----------
    X : (n, d) inputs.
    batch_size : rows per batch.
    n_batches : stop each pass after this many batches (None: the whole epoch).
    y : (n,) labels, batched with X when given.
    repeats : timed passes per loader (the best is kept).
    seed : seed of both loaders' shuffling.

    Returns
    -------
    results : loader name -> ``{"batches_per_s", "rows_per_s", "epoch_s", "batches"}``.
    """
    dm = ArrayDataModule(X, y, batch_size=batch_size, seed=seed)
    Xt = dm.X_train
    tensors = (Xt,) if dm.y_train is None else (Xt, dm.y_train)
    loaders = {
        "SliceLoader (ArrayDataModule)": dm.train_dataloader(),
        "TensorDataset + DataLoader": DataLoader(TensorDataset(*tensors), batch_size=batch_size, shuffle=True,
                                                 generator=torch.Generator().manual_seed(seed)),
    }
    results = {}
    for name, loader in loaders.items():
        seconds, count = _time_epoch(loader, n_batches, repeats)
        per_epoch = len(loader)
        results[name] = {"batches_per_s": count / seconds, "rows_per_s": count * batch_size / seconds,
                         "epoch_s": seconds * per_epoch / count, "batches": count}
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="folder holding the MNIST .gz files")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--n-batches", type=int, default=None, help="batches per pass (default: one epoch)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        ds = load_dataset("mnist", data_dir=args.data_dir)
        what = "MNIST training images"
    except FileNotFoundError:
        ds = load_dataset("digits")
        what = "scikit-learn digits (MNIST files not found)"
    print(f"data: {what}, X {ds.X.shape[0]} x {ds.X.shape[1]} float32, batch size {args.batch_size}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    results = bench_batching(ds.X, batch_size=args.batch_size, n_batches=args.n_batches, y=ds.y,
                             repeats=args.repeats)
    base = results["TensorDataset + DataLoader"]["batches_per_s"]
    print(f"{'loader':32s} {'batches/s':>10s} {'rows/s':>12s} {'epoch (s)':>10s} {'speed-up':>9s}")
    for name, r in results.items():
        print(f"{name:32s} {r['batches_per_s']:10.0f} {r['rows_per_s']:12.0f} {r['epoch_s']:10.4f} "
              f"{r['batches_per_s'] / base:8.1f}x")
    return results


if __name__ == "__main__":
    main()
