"""The matmul flops of the work done inside a block, to set its time beside its ideal.

A stage's ideal time is the time its products alone would take at the machine's fp32 matmul
rate R (``pipelines.bench.timing.matmul``):

    (1) F_fit = sum_stage F_stage(first batch) * n_batches(stage),  stage in train, validation,
        test, predict
    (2) F = sum_fits F_fit + F_counted,    ideal seconds = F / R

``F_stage`` is counted by torch's ``FlopCounterMode`` (the ops with a flop formula: matmuls,
convolutions, attention) on the first batch of each stage of a fit only, so that counting costs
one step; a training step is whatever runs between Lightning's batch hooks (forward, backward,
the optimizer; K minibatches for a module that takes ``updates_per_step`` K). A smaller last
batch is counted as a full one, and a module whose steps grow more costly as it trains is
counted at its first: Eq. (1) is an estimate, not a trace. ``F_counted`` is work outside a
Trainer that a caller wraps in :func:`counted` (the MTC's tangents), counted op by op.

While a :func:`counting` block is open, every Trainer that ``training.make_trainer`` builds
carries a :class:`StepFlops` callback (:func:`callbacks`) that adds each fit's Eq. (1) to every
open tally, so that a suite's tally and a cell's see the same fits; outside one, none is added
and nothing is counted.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import lightning.pytorch as L
from torch.utils.flop_counter import FlopCounterMode

STAGES = ("train", "validation", "test", "predict")


@dataclass(eq=False)  # by identity: the open tallies are told apart by it
class Tally:
    """The flops counted inside one :func:`counting` block."""

    flops: float = 0.0


_OPEN: list[Tally] = []


@contextlib.contextmanager
def counting() -> Iterator[Tally]:
    """Count the flops of the fits (and :func:`counted` blocks) run inside the block."""
    tally = Tally()
    _OPEN.append(tally)
    try:
        yield tally
    finally:
        _OPEN.remove(tally)


def _add(flops: float) -> None:
    for tally in _OPEN:
        tally.flops += flops


@contextlib.contextmanager
def counted() -> Iterator[None]:
    """Count every op of the block into the open tallies (none open: the block runs as it is)."""
    if not _OPEN:
        yield
        return
    mode = FlopCounterMode(display=False)
    with mode:
        yield
    _add(float(mode.get_total_flops()))


def callbacks() -> list[L.Callback]:
    """The callbacks a new Trainer gets: a :class:`StepFlops` while a count is open, else none."""
    return [StepFlops()] if _OPEN else []


class StepFlops(L.Callback):
    """Eq. (1) for one Trainer: the flops of the first batch of each stage, times its batches,
    added to the open tallies when the Trainer tears down (after fit, validate, test or predict,
    and after an exception)."""

    def __init__(self):
        self.first: dict[str, float] = {}
        self.batches = dict.fromkeys(STAGES, 0)
        self._mode: tuple[str, FlopCounterMode] | None = None

    def _start(self, stage: str) -> None:
        if stage not in self.first and self._mode is None:
            mode = FlopCounterMode(display=False)
            mode.__enter__()
            self._mode = (stage, mode)

    def _end(self, stage: str) -> None:
        if self._mode is not None and self._mode[0] == stage:
            _, mode = self._mode
            self._mode = None
            mode.__exit__(None, None, None)
            self.first[stage] = float(mode.get_total_flops())
        self.batches[stage] += 1

    def _close(self) -> None:
        if self._mode is not None:  # a batch that raised: its partial count is dropped
            self._mode[1].__exit__(None, None, None)
            self._mode = None
        _add(sum(self.first.get(s, 0.0) * n for s, n in self.batches.items()))  # Eq. (1)
        self.first, self.batches = {}, dict.fromkeys(STAGES, 0)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._start("train")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._end("train")

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if not trainer.sanity_checking:
            self._start("validation")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if not trainer.sanity_checking:
            self._end("validation")

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._start("test")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._end("test")

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._start("predict")

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._end("predict")

    def on_exception(self, trainer, pl_module, exception):
        self._close()

    def teardown(self, trainer, pl_module, stage):
        self._close()
