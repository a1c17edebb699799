"""What a run shows while it goes: one display, on standard error, in one of three modes.

- ``live`` (a terminal): one status line rewritten in place, with the stages open now (``cell 3
  of 40 > pretraining layer 1 of 2 > epoch 12/60, train/loss 23.4``), elapsed time and an
  estimate of the time left, refreshed every half second; each finished stage also leaves a line.
- ``lines`` (piped: CI, logs): only the line of each finished stage, with its time.
- ``quiet``: nothing (``--quiet``; and the default for library calls and tests).

Stages are opened with :func:`stage` by the code that knows them (the pipeline's layers,
fine-tuning methods and baselines, a benchmark's cells); Trainers report epochs to the innermost
open stage through :func:`epoch` (``pipelines.training.EpochProgress``). The module imports no
heavy library, so the command line can show the display before torch is loaded.
"""
from __future__ import annotations

import contextlib
import math
import os
import shutil
import sys
import threading
import time
from typing import Iterator, TextIO

MODES = ("live", "lines", "quiet")


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def duration(seconds: float) -> str:
    """``4.2 s``, ``3:05`` or ``1:02:03``: how long a stage took."""
    return f"{seconds:.1f} s" if seconds < 60 else _clock(seconds)


def _number(name: str, v: float) -> str:
    """``train/loss 23.41``; an error rate (a fraction) in percent, as the tables show it."""
    if not math.isfinite(v):
        return f"{name} {v}"
    return f"{name} {100 * v:.1f}%" if name.endswith("/error") else f"{name} {v:.4g}"


class Stage:
    """One open stage: its title, the count done of a total (epochs of a layer, cells of a
    suite) and the latest numbers; it estimates the time left from the count."""

    def __init__(self, title: str, total: int | None = None, unit: str = "epoch"):
        self.title, self.total, self.unit = title, total, unit
        self.done = 0
        self.metrics: dict[str, float] = {}
        self.note = ""
        self.started = time.monotonic()

    def update(self, done: int, total: int | None = None, **metrics: float) -> None:
        self.done = done
        if total is not None:
            self.total = total
        self.metrics = metrics
        _display.refresh()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def remaining(self) -> float | None:
        if not self.total or not self.done:
            return None
        return self.elapsed() / self.done * max(self.total - self.done, 0)

    def eta_note(self) -> str:
        """``suite ~12:00 left`` once a count has started, else empty."""
        left = self.remaining()
        return "" if left is None else f"{self.done}/{self.total} {self.unit}s done, ~{_clock(left)} left"

    def _numbers(self) -> str:
        ordered = sorted(self.metrics.items(), key=lambda kv: (not kv[0].startswith("train"), kv[0]))
        return ", ".join(_number(k, v) for k, v in ordered)

    def status(self) -> str:
        parts = [self.title]
        if self.total:
            parts.append(f"{self.unit} {self.done}/{self.total}")
        if self.metrics:
            parts.append(self._numbers())
        if self.note:
            parts.append(self.note)
        return ", ".join(parts)

    def finished(self) -> str:
        parts = []
        if self.done:
            parts.append(f"{self.done} {self.unit}{'s' if self.done != 1 else ''}")
        if self.metrics:
            parts.append(self._numbers())
        if self.note:
            parts.append(self.note)
        detail = f": {', '.join(parts)}" if parts else ""
        return f"{self.title}{detail} ({duration(self.elapsed())})"


class Display:
    """The stages open now and where they are shown; one per process (:func:`configure`)."""

    def __init__(self, mode: str = "quiet", stream: TextIO | None = None):
        if mode not in MODES:
            raise ValueError(f"progress mode {mode!r}: choose from {', '.join(MODES)}")
        self.mode, self.stream = mode, stream
        self.stages: list[Stage] = []
        self._lock = threading.RLock()
        self._shown = False
        self._last = 0.0
        self._ticker: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def out(self) -> TextIO:
        return self.stream or sys.stderr

    def _status_line(self) -> str:
        if not self.stages:
            return ""
        inner = self.stages[-1]
        left = inner.remaining()
        when = f"{_clock(inner.elapsed())} elapsed" + (f", ~{_clock(left)} left" if left is not None else "")
        line, when = " > ".join(s.status() for s in self.stages), f"  [{when}]"
        room = shutil.get_terminal_size((100, 20)).columns - 1 - len(when)
        return (line if len(line) <= room else "..." + line[len(line) - room + 3:]) + when

    def refresh(self, force: bool = False) -> None:
        if self.mode != "live":
            return
        now = time.monotonic()
        if not force and now - self._last < 0.1:
            return
        with self._lock:
            self._last = now
            self.out.write("\r\x1b[K" + self._status_line())
            self.out.flush()
            self._shown = True

    def print(self, line: str) -> None:
        """A line that stays (a finished stage, a note), above the live status line."""
        if self.mode == "quiet":
            return
        with self._lock:
            if self._shown:
                self.out.write("\r\x1b[K")
            self.out.write(line + "\n")
            self.out.flush()
        self.refresh(force=True)

    def _tick(self) -> None:
        while not self._stop.wait(0.5):
            self.refresh(force=True)

    def start(self) -> None:
        if self.mode == "live" and self._ticker is None:
            self._stop.clear()
            self._ticker = threading.Thread(target=self._tick, daemon=True)
            self._ticker.start()

    def stop(self) -> None:
        if self._ticker is not None:
            self._stop.set()
            self._ticker.join()
            self._ticker = None
        with self._lock:
            if self._shown:
                self.out.write("\r\x1b[K")
                self.out.flush()
                self._shown = False


_display = Display("quiet")


@contextlib.contextmanager
def configure(mode: str, stream: TextIO | None = None) -> Iterator[Display]:
    """Show progress in ``mode`` for the block (the command line's choice), then go quiet."""
    global _display
    previous = _display
    _display = Display(mode, stream)
    _display.start()
    try:
        yield _display
    finally:
        _display.stop()
        _display = previous


def mode_for(quiet: bool, stream: TextIO | None = None) -> str:
    """``quiet`` when asked or in a process of rank > 0 (under DDP only rank 0 reports), ``live``
    on a terminal, else ``lines``."""
    rank = os.environ.get("RANK") or os.environ.get("LOCAL_RANK") or os.environ.get("SLURM_PROCID") or "0"
    if quiet or rank != "0":
        return "quiet"
    stream = stream or sys.stderr
    return "live" if getattr(stream, "isatty", lambda: False)() else "lines"


@contextlib.contextmanager
def stage(title: str, total: int | None = None, unit: str = "epoch",
          line: bool = True) -> Iterator[Stage]:
    """An open stage for the block; its line is printed when the block ends without an error
    (unless ``line`` is False: the caller reports it its own way)."""
    s = Stage(title, total, unit)
    _display.stages.append(s)
    _display.refresh(force=True)
    try:
        yield s
    except BaseException:
        _display.stages.remove(s)
        raise
    _display.stages.remove(s)
    if line:
        _display.print(s.finished())
    else:
        _display.refresh(force=True)


def epoch(done: int, total: int, **metrics: float) -> None:
    """Epoch ``done`` of ``total`` finished in the innermost open stage that counts epochs
    (no-op without one)."""
    for s in reversed(_display.stages):
        if s.unit == "epoch":
            s.update(done, total, **metrics)
            return


def annotate(text: str) -> None:
    """Add ``text`` to the innermost open stage's line (e.g. ``from the cache``)."""
    if _display.stages:
        _display.stages[-1].note = text


def note(line: str) -> None:
    """A line of its own (a layer loaded from the cache, a stage waiting for another run)."""
    _display.print(line)
