"""``layerwise bench speed``: pretraining, tangent and batching speed beside this machine's own
matmul rate, measured in the same run (the machines are shared and noisy, so only ratios to a
reference taken at the same moment mean anything).

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


def matmul_seconds(shape_a: tuple[int, int], shape_b: tuple[int, int], seconds: float = 0.3,
                   clock=time.perf_counter) -> float:
    """Seconds of one fp32 ``torch.mm`` of these shapes on ``clock`` (wall by default;
    ``time.process_time`` for this process's CPU time): the best of three timed loops."""
    a, b = torch.rand(*shape_a), torch.rand(*shape_b)
    for _ in range(5):
        torch.mm(a, b)
    t0 = time.perf_counter()
    torch.mm(a, b)
    repeats = max(3, int(seconds / 3 / max(time.perf_counter() - t0, 1e-6)))
    best = float("inf")
    for _ in range(3):
        t = clock()
        for _ in range(repeats):
            torch.mm(a, b)
        best = min(best, (clock() - t) / repeats)
    return best


def update_products(B: int, d: int, h: int, copies: int = 0) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """The matmul shapes of one autoencoder update, Eq. (1), plus ``copies`` perturbed copies."""
    up, down, weight = ((B, d), (d, h)), ((B, h), (h, d)), ((h, B), (B, d))
    products = [up, down, weight, up, weight]  # encode, decode; dW', dL/dh~, dW
    if copies:
        products += [((copies * B, d), (d, h)), ((h, copies * B), (copies * B, d))]  # W eps, its dW
    return products


def epoch_timer():
    """A Lightning callback that times the training epochs alone, not the Trainer's set-up and
    tear-down: ``.wall`` and ``.cpu`` (this process's CPU time, all threads), summed over epochs."""
    import lightning.pytorch as L

    class EpochTimer(L.Callback):
        wall = cpu = 0.0

        def on_train_epoch_start(self, trainer, module):
            self.start = (time.perf_counter(), time.process_time())

        def on_train_epoch_end(self, trainer, module):
            self.wall += time.perf_counter() - self.start[0]
            self.cpu += time.process_time() - self.start[1]

    return EpochTimer()


def bench_autoencoder(X: np.ndarray, *, n_hidden: int = 1000, kind: str = "cae", batch_size: int = 100,
                      epochs: int = 1, rate: float | None = None) -> dict:
    """Time ``epochs`` epochs of a ``kind`` layer through a real Trainer and the fast datamodule.

    The epochs alone are timed (wall and this process's CPU time), not the Trainer's set-up.
    ``rate`` (GFLOP/s), when given, replaces the per-shape matmul timings of the ideal epoch.
    """

    from pipelines.data.datamodule import ArrayDataModule
    from pipelines.training import make_trainer, quiet_lightning
    from pretrain.presets import make_layer

    quiet_lightning()
    N, d = X.shape
    layer = make_layer(kind, d, n_hidden, optimizer="sgd", lr=0.01, seed=0)
    copies = layer.hparams.higher_order_copies if layer.hparams.higher_order > 0 else 0
    products = update_products(batch_size, d, n_hidden, copies)
    flops_per_batch = sum(2.0 * a[0] * a[1] * b[1] for a, b in products)  # Eq. (1)
    n_batches = -(-N // batch_size)
    flops = flops_per_batch * N / batch_size  # useful flops of an epoch, the last batch pro rata

    def ideal_seconds(clock=time.perf_counter) -> float:
        if rate:
            return flops / (rate * 1e9)
        per_batch = sum(matmul_seconds(a, b, clock=clock) for a, b in products)
        return per_batch * N / batch_size

    ideal, ideal_cpu = ideal_seconds(), ideal_seconds(time.process_time)
    timer = epoch_timer()
    trainer = make_trainer(None, max_epochs=epochs, deterministic=False, callbacks=[timer])
    trainer.fit(layer, datamodule=ArrayDataModule(X, batch_size=batch_size, seed=0))
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
