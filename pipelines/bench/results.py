"""A suite's finished cells as a results file meant to be committed: ``<results>/<suite>-<profile>/cells.csv``.

One row per cell and seed, with the cell's keys, its value, its validation error, its wall time,
the commit and the hardware that computed it, the digest of the settings it ran with
(``settings``) and the hyperparameters it chose (``params``, JSON). The semi-supervised suites'
header::

    method,labels,setting,seed,test_error,valid_error,wall_s,commit,hardware,settings,params

A suite run reads it before computing anything: a cell with a row is not computed again (even
where its ``mlruns/bench/`` cell file is absent, as on a new machine), and each cell that lands
is added and the file rewritten atomically. A file that does not fit the suite (another header,
a row that is no cell of the suite, a row computed with other settings, a value that is no
number) is refused with one error naming the file and the fix, before anything is written.

When values are selected for a group of cells (``pipelines.selection``), the group's rows
computed with other settings move to ``superseded.csv`` beside it (:meth:`ResultsFile.supersede`;
the same header, one row per cell, seed and settings): the next suite run computes the group
with the selected values, and what was computed before is kept, not tabled. When the code
changes what a cell computes, its rows move there the same way
(:meth:`ResultsFile.supersede_stale`, ``python -m pipelines.bench.readme --supersede``).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

from pipelines.bench.cells import Cell, CellStore, wall_seconds
from pipelines.bench.csv_file import CsvFile

FILE = "cells.csv"
TABLE = "table.md"
#: the rows a selection took out of ``cells.csv`` (computed before its values): kept, not tabled
SUPERSEDED = "superseded.csv"


@dataclass(frozen=True)
class Schema:
    """The columns of one suite's results file."""

    keys: dict[str, str]     # column -> the cell key it holds
    value: str               # the column of a cell's value
    metric: str              # what the value measures (the tables' metric)
    valid: str | None = None  # the column of its validation error, if it has one

    @property
    def header(self) -> list[str]:
        return [*self.keys, "seed", self.value, *([self.valid] if self.valid else []),
                "wall_s", "commit", "hardware", "settings", "params"]


_ERROR = "test error (%)"
_SEMI = Schema({"method": "method", "labels": "labels", "setting": "validation"}, "test_error", _ERROR,
               "valid_error")

#: the suites whose results are committed; ``speed`` measures one machine and stays under mlruns/
SCHEMAS: dict[str, Schema] = {
    "semi-supervised": _SEMI, "semi-supervised-modern": _SEMI,
    "variations": Schema({"method": "method", "dataset": "dataset"}, "test_error", _ERROR, "valid_error"),
    "knowledge-free": Schema({"method": "method"}, "test_error", _ERROR, "valid_error"),
    "deep-autoencoder": Schema({"model": "model"}, "squared_error", "squared error per image"),
}


def results_dir(results: str | Path, suite: str, profile: str) -> Path:
    return Path(results) / f"{suite}-{profile}"


def _number(text: str) -> float | None:
    return None if text == "" else float(text)


class ResultsFile:
    """``cells.csv`` of one suite and profile, checked against the suite's cells when opened.

    ``cells``: this run's cells; ``digests``: per cell id, the digest of its settings, which each
    row must match (None: read for tables only, nothing checked against the code nor written).
    Rows of seeds beyond this run's are kept as they are (a run with more seeds reads them).
    A row of other settings is refused when the file is opened (``refuse_stale``; False: it is
    read, listed by ``stale`` and not loaded, as the tables read the file); one that another run
    wrote since (its own settings: values selected after this run started) is kept as it is when
    this run merges its rows, and is no result of this run (``has`` and ``load`` do not see it).
    """

    def __init__(self, path: str | Path, schema: Schema, cells: list[Cell],
                 digests: dict[str, str] | None = None, *, refuse_stale: bool = True):
        self.path, self.schema = Path(path), schema
        self._order = list(dict.fromkeys(self._key(c.keys) for c in cells))
        self._digest = None if digests is None else {self._key(c.keys): digests[c.id] for c in cells}
        self._file = CsvFile(self.path, schema.header, self._check_row, what="cell",
                             named_by=[*schema.keys, "seed"],
                             foreign_fix="Move the file away (or pass --results with another folder) "
                                         "to compute the suite afresh there.")
        self.rows = self._file.read(None if refuse_stale else partial(self._check_row, settings=False))

    def stale(self) -> list[tuple]:
        """The (keys..., seed) of the rows computed with other settings than this code's digests."""
        if self._digest is None:
            return []
        return [k for k, row in self.rows.items() if row["settings"] != self._digest[k[:-1]]]

    def _key(self, keys: dict, seed: int | None = None) -> tuple:
        k = tuple(str(keys[name]) for name in self.schema.keys.values())
        return k if seed is None else (*k, int(seed))

    def _check_row(self, line: int, row: dict[str, str], *, settings: bool = True) -> tuple:
        """A row read back, checked against the suite's cells (and, with ``settings``, against
        this run's digests): its (keys, seed)."""
        refuse = self._file.refuse
        keys = tuple(row[c] for c in self.schema.keys)
        described = ", ".join(f"{c}={row[c]}" for c in self.schema.keys) + f", seed={row['seed']}"
        if keys not in self._order:
            raise refuse(f"line {line} ({described}) is no cell of this suite and profile",
                         "Delete that line, or run the suite and profile it belongs to.")
        try:
            seed = int(row["seed"])
            numbers = [_number(row[c]) for c in (self.schema.value, self.schema.valid, "wall_s") if c]
            json.loads(row["params"] or "{}")
        except ValueError as e:
            raise refuse(f"line {line} ({described}) does not parse ({e})", "Fix or delete that line.") from None
        if seed < 0 or numbers[0] is None or not all(n is None or math.isfinite(n) for n in numbers):
            raise refuse(f"line {line} ({described}) needs a seed >= 0 and a finite {self.schema.value}",
                         "Fix or delete that line.")
        if settings and self._digest is not None and row["settings"] != self._digest[keys]:
            raise refuse(f"line {line} ({described}) was computed with other settings (digest "
                         f"{row['settings']}; this code gives {self._digest[keys]})",
                         "Move the rows of other settings to superseded.csv (nothing is deleted) "
                         "with `python -m pipelines.bench.readme --supersede` to compute them with "
                         f"this code, or run the commit that wrote them ({row['commit'][:12]}).")
        return (*keys, seed)

    def _rank(self, key: tuple) -> tuple:
        return self._order.index(key[:-1]), key[-1]  # the suite's cell order, then the seed

    def _row(self, cell: Cell) -> dict[str, str] | None:
        """The cell's row, if it ran with this run's settings."""
        row = self.rows.get(self._key(cell.keys, cell.seed))
        if row is None or (self._digest is not None and row["settings"] != self._digest[self._key(cell.keys)]):
            return None
        return row

    def has(self, cell: Cell) -> bool:
        return self._row(cell) is not None

    def load(self, cell: Cell) -> dict | None:
        """The cell's result as the runner stores it, or None when the file has no row for it."""
        row = self._row(cell)
        if row is None:
            return None
        s = self.schema
        return {"id": cell.id, "keys": dict(cell.keys), "seed": cell.seed, "task": cell.task,
                "value": float(row[s.value]), "valid": _number(row[s.valid]) if s.valid else None,
                "metric": s.metric, "wall_s": float(row["wall_s"] or 0.0), "commit": row["commit"],
                "hardware": row["hardware"], "params": json.loads(row["params"] or "{}")}

    def save(self, result: dict) -> None:
        """Add (or replace) the row of ``result`` and rewrite the file atomically, merged with the
        rows that another run of the suite (``--only`` another part) wrote since this one read it."""
        if self._digest is None:
            raise ValueError(f"{self.path} was opened for reading: give the cells' digests to write it")
        s, key = self.schema, self._key(result["keys"], result["seed"])
        valid = result.get("valid")
        row = {**{c: str(result["keys"][k]) for c, k in s.keys.items()}, "seed": str(result["seed"]),
               s.value: f"{float(result['value']):.10g}",
               "wall_s": f"{wall_seconds(result):.3f}",
               "commit": result.get("commit", ""), "hardware": result.get("hardware", ""),
               "settings": self._digest[key[:-1]],
               "params": json.dumps(result.get("params", {}), sort_keys=True, default=str)}
        if s.valid:
            row[s.valid] = "" if valid is None else f"{float(valid):.10g}"
        # rows another run wrote since this one opened the file are that run's: not refused here
        self.rows = self._file.save(key, row, self._rank, check=partial(self._check_row, settings=False))

    def supersede(self, group: dict, settings: str) -> int:
        """Move the rows of the cells whose keys are ``group`` (every seed) and whose settings
        digest is not ``settings`` to ``superseded.csv``, written first, so that a row is in
        one file or both, never in none. Returns how many moved."""
        target = self._key(group)
        return self._move(lambda key, row: key[:-1] == target and row["settings"] != settings)

    def supersede_stale(self) -> int:
        """Move every row computed with other settings than this code's digests to
        ``superseded.csv``, as :meth:`supersede` does; returns how many moved."""
        if self._digest is None:
            raise ValueError(f"{self.path} was opened for reading: give the cells' digests to supersede rows")
        return self._move(lambda key, row: row["settings"] != self._digest[key[:-1]])

    def _move(self, stale: Callable[[tuple, dict], bool]) -> int:
        check = partial(self._check_row, settings=False)
        moving = {(*k, r["settings"]): r for k, r in self._file.read(check).items() if stale(k, r)}
        if moving:
            kept = CsvFile(self.path.with_name(SUPERSEDED), self.schema.header, self._superseded_key,
                           what="superseded cell", named_by=[*self.schema.keys, "seed", "settings"])
            kept.update(moving, lambda k: (*self._rank(k[:-1]), k[-1]))
            moved = lambda key, row: (*key, row["settings"]) in moving  # not a row written since
            self.rows = self._file.update({}, self._rank, remove=moved, check=check)
        return len(moving)

    def _superseded_key(self, line: int, row: dict[str, str]) -> tuple:
        return (*self._check_row(line, row, settings=False), row["settings"])

    def text(self) -> str:
        """The file's CSV: rows in the suite's cell order, then by seed."""
        return self._file.text(self.rows, self._rank)


class ResultStore:
    """The runner's store: cell files under ``mlruns/bench/`` and, when given, the results file.

    A cell is finished when either holds it; a finished cell missing from the results file (one
    computed before the file existed) is added to it as it is read back. ``landed()`` is called
    after each cell saved (the runner rewrites the committed table).
    """

    def __init__(self, cells: CellStore, book: ResultsFile | None = None,
                 landed: Callable[[], None] = lambda: None):
        self.cells, self.book, self.landed = cells, book, landed

    def has(self, cell: Cell) -> bool:
        return self.cells.has(cell) or (self.book is not None and self.book.has(cell))

    def load(self, cell: Cell) -> dict | None:
        result = self.cells.load(cell)
        if self.book is None:
            return result
        if result is None:
            return self.book.load(cell)
        if not self.book.has(cell):
            self.book.save(result)
        return result

    def save(self, result: dict) -> None:
        self.cells.save(result)
        if self.book is not None:
            self.book.save(result)
            self.landed()
