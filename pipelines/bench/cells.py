"""Benchmark cells and their resumable store.

A suite is a list of cells; a cell is one method in one setting (dataset, label count,
validation set) with one seed. ``run_cells`` runs each cell that has no result yet and writes
its result atomically (temporary file, then ``os.replace``) as ``<directory>/<cell>.json``, so
a suite stopped and started again skips the cells whose file exists, and a half-written
temporary file is never taken for a result. The folder is named by ``settings_digest`` of the
suite's settings, so that a run with other settings never reads these results.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from pipelines import progress

from pipelines.files import atomic_write_text
from pipelines.reporting.tables import fmt


@dataclass(frozen=True)
class Cell:
    """One unit of work and of resumption.

    ``keys`` are what the table groups by (all but the seed); ``task`` says how to run it
    (dataset, stack, fitting method), for the suite's runner, and is stored with the result.
    """

    id: str
    keys: dict
    seed: int
    task: dict = field(default_factory=dict)


def wall_seconds(result: dict) -> float:
    """A finished cell's recorded wall time; cell files written before ``wall_s`` name it ``seconds``."""
    return float(result["wall_s"] if "wall_s" in result else result.get("seconds", 0.0))


def settings_digest(settings: dict) -> str:
    """A short hash of JSON-able settings: names a suite run's folder."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=list).encode()).hexdigest()[:12]


class CellStore:
    """Finished cells as ``<directory>/<cell id>.json``, each written atomically."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    def path(self, cell_id: str) -> Path:
        return self.directory / f"{cell_id}.json"

    def has(self, cell: Cell) -> bool:
        return self.load(cell) is not None

    def load(self, cell: Cell) -> dict | None:
        """The stored result of a cell, or None when it has none, an unreadable one, or one
        computed for another task (the same cell id with other values selected for it)."""
        p = self.path(cell.id)
        if not p.is_file():
            return None
        try:
            result = json.loads(p.read_text())
        except (OSError, ValueError):
            print(f"warning: {p} cannot be read as a cell result; running the cell again",
                  file=sys.stderr)
            return None
        if not isinstance(result, dict) or result.get("id") != cell.id:
            return None
        if "task" in result and result["task"] != json.loads(json.dumps(cell.task)):
            return None
        return result

    def save(self, result: dict) -> None:
        atomic_write_text(self.path(result["id"]), json.dumps(result, indent=1, sort_keys=True))


def select_cells(cells: list[Cell], patterns: Sequence[str] = ()) -> Callable[[Cell], bool]:
    """The cells whose id matches one of the shell-style ``patterns`` (all when none is given),
    e.g. ``paper-*-mtc*`` for the MTC columns of the paper's validation setting. A pattern that
    matches no cell is an error naming the cells there are."""
    if not patterns:
        return lambda cell: True
    for p in patterns:
        if not any(fnmatch.fnmatchcase(c.id, p) for c in cells):
            sample = ", ".join(c.id for c in cells[:4])
            raise ValueError(f"--only {p!r} matches no cell of this suite; cell ids look like {sample}, ...")
    return lambda cell: any(fnmatch.fnmatchcase(cell.id, p) for p in patterns)


def run_cells(cells: list[Cell], store: CellStore, compute: Callable[[Cell], dict], *,
              log: Callable[[str], None] = print,
              selected: Callable[[Cell], bool] = lambda cell: True) -> list[dict]:
    """The results of ``cells``: stored ones read back, missing ones computed and stored.

    ``store`` is a ``CellStore`` or any object with its ``has``, ``load`` and ``save``
    (``pipelines.bench.results.ResultStore`` adds the committed results file).
    ``compute(cell)`` returns at least ``{"value": float}``; the runner adds the cell's id,
    keys, seed and task, and its wall time ``wall_s`` when ``compute`` did not give one. A
    missing cell that is not ``selected`` is left out of the results (the table shows '-' for it).
    """
    ids = [c.id for c in cells]
    if len(set(ids)) != len(ids):
        raise ValueError(f"cell ids must be unique, got duplicates {sorted({i for i in ids if ids.count(i) > 1})}")
    results = []
    todo = [c for c in cells if selected(c) and not store.has(c)]
    suite = progress.Stage(f"{len(todo)} cells to compute", total=len(todo), unit="cell")
    for i, cell in enumerate(cells, 1):
        done = store.load(cell)
        if done is not None:
            log(f"[{i}/{len(cells)}] {cell.id}: {fmt(done['value'])} (finished before)")
            results.append(done)
            continue
        if not selected(cell):
            continue
        t0 = time.perf_counter()
        # the live line: cell i of N, its layers' epochs, and the suite's time left from the
        # mean time of the cells computed so far
        with progress.stage(f"cell {i} of {len(cells)} ({cell.id})", line=False) as shown:
            shown.note = suite.eta_note()
            out = compute(cell)
        suite.done += 1
        result = {"wall_s": time.perf_counter() - t0, **out, "id": cell.id, "keys": cell.keys,
                  "seed": cell.seed, "task": cell.task}
        if not isinstance(result.get("value"), (int, float)):
            raise ValueError(f"cell {cell.id}: compute returned no numeric 'value' ({out!r})")
        store.save(result)
        log(f"[{i}/{len(cells)}] {cell.id}: {fmt(result['value'])} ({result['wall_s']:.0f} s)")
        results.append(result)
    return results
