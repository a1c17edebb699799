"""``layerwise bench speed``: pretraining, tangent and batching speed beside this machine's own
matmul rate, measured in the same run (the machines are shared and noisy, so only ratios to a
reference taken at the same moment mean anything).

For an autoencoder layer d -> h with tied weights, one update of a batch of B costs about

    forward   2 B d h (encode) + 2 B h d (decode)
    backward  twice the forward                                  => 12 B d h flops     (1)

and the contractive penalty adds O(B h + d h), negligible beside (1). The ideal epoch time is
``12 N d h / R`` with ``R`` the fp32 matmul rate measured on the same shapes; the target is an
epoch within 1 / 0.6 of it (60% of the matmul rate).
"""
from __future__ import annotations

import time

import numpy as np
import torch


def matmul_rate(B: int = 100, d: int = 784, h: int = 1000, seconds: float = 1.0) -> float:
    """This machine's fp32 GFLOP/s on (B, d) x (d, h) products, the shapes the layers use."""
    a, w = torch.rand(B, d), torch.rand(d, h)
    for _ in range(10):
        a @ w
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(20):
            a @ w
        n += 20
    return 2 * B * d * h * n / (time.perf_counter() - t0) / 1e9


def bench_autoencoder(X: np.ndarray, *, n_hidden: int = 1000, kind: str = "cae", batch_size: int = 100,
                      epochs: int = 1, rate: float | None = None) -> dict:
    """Time ``epochs`` epochs of a ``kind`` layer through a real Trainer and the fast datamodule."""
    from pretrain.presets import make_layer

    from .datamodule import ArrayDataModule
    from .training import make_trainer, quiet_lightning

    quiet_lightning()
    N, d = X.shape
    layer = make_layer(kind, d, n_hidden, optimizer="sgd", lr=0.01, seed=0)
    dm = ArrayDataModule(X, batch_size=batch_size, seed=0)
    trainer = make_trainer(None, max_epochs=epochs, deterministic=False)
    t0 = time.perf_counter()
    trainer.fit(layer, datamodule=dm)
    seconds = (time.perf_counter() - t0) / epochs
    flops = 12.0 * N * d * n_hidden  # Eq. (1)
    rate = rate or matmul_rate(batch_size, d, n_hidden)
    return {"what": f"{kind} {d}-{n_hidden}, batch {batch_size}", "seconds_per_epoch": seconds,
            "epochs_per_second": 1.0 / seconds, "gflops": flops / seconds / 1e9,
            "matmul_gflops": rate, "fraction_of_matmul": flops / seconds / 1e9 / rate,
            "ideal_seconds": flops / (rate * 1e9)}


def format_rows(rows: list[dict]) -> str:
    lines = ["| what | s/epoch | epochs/s | GFLOP/s | matmul GFLOP/s | fraction |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['what']} | {r['seconds_per_epoch']:.2f} | {r['epochs_per_second']:.3f} | "
                     f"{r['gflops']:.1f} | {r['matmul_gflops']:.1f} | {r['fraction_of_matmul']:.0%} |")
    return "\n".join(lines)
