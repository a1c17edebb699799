"""This machine's fp32 matmul rate, the reference every speed measurement is a fraction of, the
device and clock a measurement runs on, and the callback that times Lightning's training epochs.

The machines are shared and noisy, so a rate means something only beside a reference taken at
the same moment: each benchmark times ``torch.mm`` on the shapes it uses, in the same run, on the
same device and by the same clock. On the CPU that clock is this process's CPU time (all its
threads: steadier than the wall clock when other processes share the cores); on a GPU it is the
wall clock read after ``torch.cuda.synchronize()``.
"""
from __future__ import annotations

import threading
import time
from typing import Callable

import lightning.pytorch as L
import torch

ACCELERATORS = ("cpu", "gpu", "auto")


def measurement_arguments(parser, argv=None):
    """Parse a timing CLI's ``argv`` with the options every measurement takes (``--repeats``,
    ``--threads``, ``--accelerator``) added to ``parser``; sets torch's threads. Returns
    ``(args, device)``."""
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--accelerator", default="cpu", choices=ACCELERATORS)
    args = parser.parse_args(argv)
    device = bench_device(args.accelerator)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    return args, device


def bench_device(accelerator: str) -> torch.device:
    """The device of Lightning's ``accelerator`` flag for a measurement: ``cpu``; ``gpu`` (CUDA,
    refused with the fix where there is none: a GPU figure measured on the CPU would be a lie);
    ``auto`` (CUDA when there is one, else the CPU)."""
    if accelerator not in ACCELERATORS:
        raise ValueError(f"accelerator must be one of {', '.join(ACCELERATORS)}, got {accelerator!r}")
    if accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("--accelerator gpu: no CUDA GPU is visible to torch on this machine "
                         f"(torch {torch.__version__}); use --accelerator cpu, or auto to take a GPU "
                         "where there is one")
    return torch.device("cuda")


def device_clock(device: torch.device) -> Callable[[], float]:
    """Seconds by the clock a measurement on ``device`` uses: CPU time on the CPU, the wall clock
    after the device's queue has drained on a GPU."""
    if device.type == "cpu":
        return time.process_time

    def synchronized() -> float:
        torch.cuda.synchronize(device)
        return time.perf_counter()

    return synchronized


def clock_name(device: torch.device) -> str:
    """How a table names the clock of :func:`device_clock`."""
    return "CPU time" if device.type == "cpu" else "GPU wall time"


def matmul_rate(rows: int = 100, d: int = 784, h: int = 1000, seconds: float = 1.0,
                workers: int | None = None, clock=time.perf_counter,
                device: torch.device | str = "cpu") -> float:
    """fp32 GFLOP/s of the ``(rows, d) x (d, h)`` ``torch.mm``: the best of at least three timed
    loops (each about a third of ``seconds``, at most half a second) within ``seconds``.

    ``workers`` None: one product at a time on torch's intra-op threads. ``workers`` n: n
    threads of one intra-op thread each run the product at once (as ``finetune.tangents``
    shares batches out to the cores), and the rate is their sum. ``clock=time.process_time``
    with ``workers=1`` gives the rate per CPU second of one core, which other jobs on the
    machine barely change. ``device``: where the operands live (``workers`` is for the CPU).
    """
    if workers is None:
        return _best_rate(rows, d, h, seconds, clock, torch.device(device))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if workers == 1:
            return _best_rate(rows, d, h, seconds, clock, torch.device("cpu"))
        rates = [0.0] * workers

        def work(i: int) -> None:
            rates[i] = _best_rate(rows, d, h, seconds, clock, torch.device("cpu"))

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
                   clock=time.perf_counter, device: torch.device | str = "cpu") -> float:
    """Seconds of one ``(rows, d) x (d, h)`` ``torch.mm`` on ``clock``, from ``matmul_rate``."""
    return 2.0 * rows * d * h / (matmul_rate(rows, d, h, seconds, workers, clock, device) * 1e9)


def products_seconds(products, device: torch.device, seconds: float = 0.3) -> float:
    """Seconds of the ``(rows, inner, cols)`` products of one update, each timed on its own shape
    with fp32 ``torch.mm`` on ``device`` by its clock (:func:`device_clock`): an update's ideal."""
    clock = device_clock(device)
    return sum(matmul_seconds(r, i, c, seconds, clock=clock, device=device) for r, i, c in products)


def flops(products) -> float:
    """Useful flops of the ``(rows, inner, cols)`` products: 2 rows inner cols each."""
    return sum(2.0 * r * i * c for r, i, c in products)


def _best_rate(rows: int, d: int, h: int, seconds: float, clock, device: torch.device) -> float:
    a, w = torch.rand(rows, d, device=device), torch.rand(d, h, device=device)
    for _ in range(3):
        torch.mm(a, w)
    t0 = clock()
    torch.mm(a, w)
    repeats = max(1, int(min(0.5, seconds / 3) / max(clock() - t0, 1e-6)))
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
    ``cpu`` (this process's CPU time, all threads), summed over epochs; on a GPU the queue is
    drained before each reading, so that the wall time is the device's."""

    def __init__(self):
        self.wall = self.cpu = 0.0
        self.start = (0.0, 0.0)

    @staticmethod
    def _now(module) -> tuple[float, float]:
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)
        return time.perf_counter(), time.process_time()

    def on_train_epoch_start(self, trainer, module):
        self.start = self._now(module)

    def on_train_epoch_end(self, trainer, module):
        wall, cpu = self._now(module)
        self.wall += wall - self.start[0]
        self.cpu += cpu - self.start[1]

    def seconds(self, device: torch.device) -> float:
        """The epochs' seconds by the clock of :func:`device_clock` for ``device``."""
        return self.cpu if device.type == "cpu" else self.wall


def epoch_timer() -> EpochTimer:
    """A fresh ``EpochTimer`` to pass among a Trainer's callbacks."""
    return EpochTimer()
