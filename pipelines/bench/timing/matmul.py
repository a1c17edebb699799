"""This machine's fp32 matmul rate, the reference every speed measurement is a fraction of, and
the callback that times Lightning's training epochs.

The machines are shared and noisy, so a rate means something only beside a reference taken at
the same moment: each benchmark times ``torch.mm`` on the shapes it uses, in the same run.
"""
from __future__ import annotations

import threading
import time

import lightning.pytorch as L
import torch


def matmul_rate(rows: int = 100, d: int = 784, h: int = 1000, seconds: float = 1.0,
                workers: int | None = None, clock=time.perf_counter) -> float:
    """fp32 GFLOP/s of the ``(rows, d) x (d, h)`` ``torch.mm``: the best of at least three timed
    loops (each about a third of ``seconds``, at most half a second) within ``seconds``.

    ``workers`` None: one product at a time on torch's intra-op threads. ``workers`` n: n
    threads of one intra-op thread each run the product at once (as ``finetune.tangents``
    shares batches out to the cores), and the rate is their sum. ``clock=time.process_time``
    with ``workers=1`` gives the rate per CPU second of one core, which other jobs on the
    machine barely change.
    """
    if workers is None:
        return _best_rate(rows, d, h, seconds, clock)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if workers == 1:
            return _best_rate(rows, d, h, seconds, clock)
        rates = [0.0] * workers

        def work(i: int) -> None:
            rates[i] = _best_rate(rows, d, h, seconds, clock)

        pool = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        return sum(rates)
    finally:
        torch.set_num_threads(threads)


def machine_rate(rows: int, d: int, h: int, seconds: float = 1.0) -> tuple[float, float, float]:
    """GFLOP/s three ways: one product at a time on torch's intra-op threads, one product per
    intra-op thread at once (their sum), and one core's rate per CPU second."""
    return (matmul_rate(rows, d, h, seconds), matmul_rate(rows, d, h, seconds, workers=torch.get_num_threads()),
            matmul_rate(rows, d, h, seconds, workers=1, clock=time.process_time))


def matmul_seconds(rows: int, d: int, h: int, seconds: float = 0.3, workers: int | None = None,
                   clock=time.perf_counter) -> float:
    """Seconds of one ``(rows, d) x (d, h)`` ``torch.mm`` on ``clock``, from ``matmul_rate``."""
    return 2.0 * rows * d * h / (matmul_rate(rows, d, h, seconds, workers, clock) * 1e9)


def _best_rate(rows: int, d: int, h: int, seconds: float, clock) -> float:
    a, w = torch.rand(rows, d), torch.rand(d, h)
    for _ in range(3):
        torch.mm(a, w)
    t0 = time.perf_counter()
    torch.mm(a, w)
    repeats = max(1, int(min(0.5, seconds / 3) / max(time.perf_counter() - t0, 1e-6)))
    best, loops, t_end = 0.0, 0, time.perf_counter() + seconds
    while loops < 3 or time.perf_counter() < t_end:
        t = clock()
        for _ in range(repeats):
            torch.mm(a, w)
        elapsed = clock() - t
        if elapsed > 0:
            best = max(best, 2.0 * rows * d * h * repeats / elapsed / 1e9)
        loops += 1
    return best


class EpochTimer(L.Callback):
    """Times the training epochs alone, not the Trainer's set-up and tear-down: ``wall`` and
    ``cpu`` (this process's CPU time, all threads), summed over epochs."""

    def __init__(self):
        self.wall = self.cpu = 0.0
        self.start = (0.0, 0.0)

    def on_train_epoch_start(self, trainer, module):
        self.start = (time.perf_counter(), time.process_time())

    def on_train_epoch_end(self, trainer, module):
        self.wall += time.perf_counter() - self.start[0]
        self.cpu += time.process_time() - self.start[1]


def epoch_timer() -> EpochTimer:
    """A fresh ``EpochTimer`` to pass among a Trainer's callbacks."""
    return EpochTimer()
