"""Where a suite's wall time went: per cell kind, pretraining and tangents, computed or loaded.

A suite run's time T (``time.perf_counter`` from its start to its table) splits as

    (1) T = sum_kinds C_kind + P + O

with C_kind the wall time of the cells of one kind (the suite's method column) computed in this
run, P the pretraining (``pretraining.pretrain_stack``: layers trained, and layers loaded from
their cache with the encoding between them) and O the rest (data, tracking, tables). The
tangents (``tangent_cache.cached_tangents``) run inside the MTC cells: their time is part of
C_mtc, shown on its own line. A resumed suite also reads cells back from their files; their
time is what was recorded when they ran (``wall_s``), reported apart from this run's. Beside each
stage computed in the run stands its ideal: its matmul flops (``pipelines.flop_count``) at the
machine's fp32 matmul rate R measured at the run's end (:func:`ideal_rate`),

    (2) ideal_stage = F_stage / R

so that the distance of a cell kind from the hardware's limit is read off its row.

The table of committed results (``pipelines.bench.readme``) has the cells' recorded times and the
recorded pretraining of their stacks (``pipelines.bench.pretraining_file``): :func:`recorded_markdown`.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Iterator

from pipelines.bench.cells import wall_seconds
from pipelines.bench.timing.matmul import bench_device, device_clock, matmul_rate
from pipelines.stages import tangent_cache

#: the stages a ledger counts, in the order the report lists them
STAGES = ("pretraining", "tangents")


@dataclass
class Tally:
    """How many times a stage ran (or was loaded), the seconds it took and the matmul flops
    counted in it (``pipelines.flop_count``)."""

    count: int = 0
    seconds: float = 0.0
    flops: float = 0.0

    def add(self, seconds: float, count: int = 1, flops: float = 0.0) -> None:
        self.count += count
        self.seconds += seconds
        self.flops += flops


@dataclass
class Ledger:
    """The cached stages of one suite run: per stage, computed now and loaded from its cache."""

    computed: dict[str, Tally] = field(default_factory=lambda: {s: Tally() for s in STAGES})
    loaded: dict[str, Tally] = field(default_factory=lambda: {s: Tally() for s in STAGES})

    def add(self, stage: str, seconds: float, *, loaded: bool, count: int = 1, flops: float = 0.0) -> None:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}: choose one of {', '.join(STAGES)}")
        (self.loaded if loaded else self.computed)[stage].add(seconds, count, flops)

    def flops(self) -> float:
        """The flops counted in the stages computed in this run."""
        return sum(t.flops for t in self.computed.values())

    @contextlib.contextmanager
    def listening(self) -> Iterator["Ledger"]:
        """Count every ``cached_tangents`` call made inside the block."""
        def listener(seconds: float, loaded: bool) -> None:
            self.add("tangents", seconds, loaded=loaded)

        tangent_cache.LISTENERS.append(listener)
        try:
            yield self
        finally:
            tangent_cache.LISTENERS.remove(listener)


def ideal_rate(accelerator: str) -> float:
    """The machine's fp32 matmul rate now, GFLOP/s of wall time, at a layer's shape (a batch of
    100 through 784 -> 1000) on the device of ``accelerator``: the R of the ideal seconds."""
    device = bench_device(accelerator)
    clock = time.perf_counter if device.type == "cpu" else device_clock(device)
    return matmul_rate(100, 784, 1000, seconds=1.0, clock=clock, device=device)


def _by_kind(results: list[dict], kind_key: str) -> dict[str, Tally]:
    kinds: dict[str, Tally] = {}
    for r in results:
        kinds.setdefault(str(r["keys"][kind_key]), Tally()).add(wall_seconds(r), flops=r.get("flops") or 0.0)
    return kinds


def _s(t: Tally | None) -> tuple[str, str]:
    return ("-", "-") if t is None or not (t.count or t.seconds) else (str(t.count), f"{t.seconds:.1f}")


def _ideal(t: Tally | None, rate: float | None) -> tuple[str, str]:
    """The tally's matmul GFLOP and their seconds at ``rate`` GFLOP/s, Eq. (2)."""
    if t is None or not t.flops or not rate:
        return "-", "-"
    return _figure(t.flops / 1e9), _figure(t.flops / 1e9 / rate)


def _figure(x: float) -> str:
    return f"{x:.0f}" if x >= 100 else f"{x:.3g}"  # 3 significant digits, no exponent


def run_markdown(results: list[dict], computed_ids: set[str], ledger: Ledger, total: float,
                 kind_key: str, rate: float | None = None) -> str:
    """The breakdown of Eq. (1) for one run, under the suite's table, each stage computed in
    this run beside its ideal: its counted matmul flops at ``rate`` GFLOP/s (``ideal_rate``).

    ``computed_ids``: the cells computed in this run (the others of ``results`` were read back);
    ``kind_key``: the cell key that names a cell's kind (``method``, ``model``, ``benchmark``).
    """
    now = _by_kind([r for r in results if r["id"] in computed_ids], kind_key)
    before = _by_kind([r for r in results if r["id"] not in computed_ids], kind_key)
    cells_now = sum(t.seconds for t in now.values())
    pre = ledger.computed["pretraining"].seconds + ledger.loaded["pretraining"].seconds
    other = total - cells_now - pre  # Eq. (1)
    lines = [f"#### Time: {total:.1f} s in this run", "",
             "| where | computed in this run | wall s | loaded | wall s | matmul GFLOP | ideal s |",
             "|---|---|---|---|---|---|---|"]
    for kind in dict.fromkeys(str(r["keys"][kind_key]) for r in results):  # the suite's order
        lines.append(f"| cells: {kind} | " + " | ".join(
            [*_s(now.get(kind)), *_s(before.get(kind)), *_ideal(now.get(kind), rate)]) + " |")
    for stage, what in (("pretraining", "pretraining (layers)"),
                        ("tangents", "tangents (inside the cells' time)")):
        lines.append(f"| {what} | " + " | ".join([*_s(ledger.computed[stage]), *_s(ledger.loaded[stage]),
                                                  *_ideal(ledger.computed[stage], rate)]) + " |")
    lines += [f"| other (data, tracking, tables) | | {other:.1f} | | | | |",
              f"| this run | | {total:.1f} | | | | |", "",
              "Loaded: cells read back from their result files, with the wall time recorded when they "
              "ran; layers and tangents read from their caches, with the time that took in this run "
              "(for layers, with the encoding of the pool between them)."]
    if rate:
        lines.append(f"Ideal: the matmul flops counted in the stages computed in this run (every fit's "
                     f"first batch of each stage times its batches, and the tangents; "
                     f"`pipelines/flop_count.py`) at this machine's fp32 matmul rate measured at the "
                     f"end of the run, {rate:.1f} GFLOP/s of wall time ((100, 784) x (784, 1000)).")
    return "\n".join(lines) + "\n"


def recorded_markdown(results: list[dict], kind_key: str,
                      stacks: dict[tuple[str, str], list[dict[str, str]]] | None = None) -> str:
    """The cells' recorded wall time per kind, then the recorded pretraining of the stacks they
    share (``stacks``: the rows of ``pretraining_file``, by data and stack), and the hardware and
    commits that computed them: Eq. (1) without the run's other time O."""
    stacks = stacks or {}
    kinds = _by_kind(results, kind_key)
    cells = sum(t.seconds for t in kinds.values())
    pre = {key: sum(float(r["wall_s"]) for r in rows) for key, rows in stacks.items()}
    total = cells + sum(pre.values())
    title = (f"{total:.1f} s: {cells:.1f} s of cells and {total - cells:.1f} s of pretraining, as recorded"
             if stacks else f"{cells:.1f} s of cell wall time, as recorded per cell")
    lines = [f"#### Time: {title}", "", "| cells | count | wall s |", "|---|---|---|"]
    lines += [f"| {kind} | {t.count} | {t.seconds:.1f} |" for kind, t in kinds.items()]
    for (data, stack), rows in stacks.items():
        layers = ", ".join(f"{r['what']} {float(r['wall_s']):.0f} s" for r in rows)
        lines.append(f"| pretraining {data} {stack} ({layers}) | {len(rows)} | {pre[(data, stack)]:.1f} |")
    everything = [*results, *(r for rows in stacks.values() for r in rows)]
    hardware = sorted({r.get("hardware") or "unknown" for r in everything})
    commits = sorted({(r.get("commit") or "unknown")[:12] for r in everything})
    shared = ("Pretraining: the layers of each stack the cells share, each timed when it was trained "
              "(pretraining.csv)" if stacks else
              "Pretraining is not in these times (a stack is shared by the cells)")
    lines += ["", f"{shared}. Hardware: {'; '.join(hardware)}. "
                  f"Commit{'s' if len(commits) > 1 else ''}: {', '.join(commits)}."]
    return "\n".join(lines) + "\n"
