"""Hyperparameters selected on validation, one row per group of a suite's cells:
``<results>/<suite>-<profile>/selected.csv``, beside ``cells.csv``.

A group is a cell's keys without its seed (``paper-L100-mtc``): as the papers did, the values
are chosen once per row of the table, on its validation set, and every label draw of that row
runs with them. The semi-supervised suites' header::

    method,labels,setting,values,valid_error,trials,wall_s,commit,hardware,settings,study

``values`` (JSON) are the selected keys as ``--set`` names them (``finetune.beta``);
``valid_error`` is the best trial's validation error (%); ``trials`` the study's finished
trials and ``wall_s`` their summed time, the search's cost; ``settings`` the digest of the
group's seed-0 cell before selection, so that values chosen under other settings are refused,
not applied; ``study`` the Optuna study that chose them (``pipelines.selection``).

``apply`` gives every cell of a selected group (every seed) a task whose ``finetune`` dict holds
the values; the cell's settings digest covers its task, so its row of ``cells.csv`` is one
computed with them.
"""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any, Callable

from pipelines.bench.cells import Cell
from pipelines.bench.csv_file import CsvFile
from pipelines.bench.results import Schema

FILE = "selected.csv"


def header(schema: Schema) -> list[str]:
    return [*schema.keys, "values", "valid_error", "trials", "wall_s", "commit", "hardware",
            "settings", "study"]


def group_id(cell: Cell) -> str:
    """A cell's id without its seed: ``paper-L100-mtc-s0`` -> ``paper-L100-mtc``."""
    suffix = f"-s{cell.seed}"
    return cell.id[:-len(suffix)] if cell.id.endswith(suffix) else cell.id


def as_finetune(values: dict[str, Any], finetune: dict) -> dict:
    """The ``finetune`` dict of a task for dotted ``values``: each top-level key they touch, with
    its whole value (``finetune.ladder_denoise.1`` sets one entry of the config's list)."""
    out: dict = {}
    for key, value in values.items():
        head, *path = key.split(".")
        if head != "finetune" or not path:
            raise ValueError(f"selected key {key!r} is no fine-tuning key: a suite's cells share "
                             "their pretrained stacks, so only finetune.* keys are selected per cell")
        top, *rest = path
        if not rest:
            out[top] = value
            continue
        node = out.setdefault(top, copy.deepcopy(finetune[top]))
        for part in rest[:-1]:
            node = node[int(part)] if isinstance(node, list) else node[part]
        last = rest[-1]
        node[int(last) if isinstance(node, list) else last] = value
    return out


class SelectionFile:
    """``selected.csv`` of one suite and profile, its rows by group keys; checked when read."""

    def __init__(self, path: str | Path, schema: Schema):
        self.path, self.schema = Path(path), schema
        self._file = CsvFile(self.path, header(schema), self._check_row, what="group",
                             named_by=list(schema.keys))
        self.rows = self._file.read()

    def key(self, keys: dict) -> tuple:
        return tuple(str(keys[name]) for name in self.schema.keys.values())

    def _refuse(self, problem: str, fix: str) -> ValueError:
        return self._file.refuse(problem, fix)

    def _check_row(self, line: int, row: dict[str, str]) -> tuple:
        try:
            values = json.loads(row["values"])
            numbers = [float(row["valid_error"]), float(row["wall_s"]), int(row["trials"])]
        except ValueError as e:
            raise self._refuse(f"line {line} does not parse ({e})", "Fix or delete that line.") from None
        if not isinstance(values, dict) or not all(math.isfinite(n) for n in numbers):
            raise self._refuse(f"line {line} needs a JSON object of values and finite numbers",
                               "Fix or delete that line.")
        return tuple(row[c] for c in self.schema.keys)

    def values(self, keys: dict) -> dict | None:
        row = self.rows.get(self.key(keys))
        return None if row is None else json.loads(row["values"])

    def save(self, keys: dict, row: dict[str, str], order: list[tuple]) -> None:
        """Add (or replace) one group's row, merged with what another process wrote since; the
        file is rewritten atomically, its rows in ``order`` (the suite's groups)."""
        full = {**{c: str(keys[k]) for c, k in self.schema.keys.items()}, **row}
        rank = {k: i for i, k in enumerate(order)}
        self.rows = self._file.save(self.key(keys), full, lambda k: rank.get(k, len(rank)))

    def apply(self, cells: list[Cell], digests: dict[str, str],
              finetune: Callable[[Cell], dict]) -> list[Cell]:
        """``cells`` with each selected group's values in its tasks' ``finetune`` dicts.
        ``digests``: the cells' settings digests before selection, which a row must match;
        ``finetune``: a cell's config's fine-tuning section, for keys inside lists."""
        groups = {self.key(c.keys): c for c in cells if c.seed == 0}
        for key, row in self.rows.items():
            if key not in groups:
                described = ", ".join(f"{c}={v}" for c, v in zip(self.schema.keys, key))
                raise self._refuse(f"the selection of {described} names no group of this suite and "
                                   "profile", "Delete that line.")
            cell = groups[key]
            if row["settings"] != digests[cell.id]:
                raise self._refuse(
                    f"the values of {group_id(cell)} were selected with other settings (digest "
                    f"{row['settings']}; this code gives {digests[cell.id]})",
                    "Select them again (layerwise bench SUITE --select METHOD) or delete that line.")
        out = []
        for c in cells:
            values = self.values(c.keys)
            if values:
                task = dict(c.task)
                task["finetune"] = {**task.get("finetune", {}), **as_finetune(values, finetune(c))}
                c = Cell(c.id, c.keys, c.seed, task)
            out.append(c)
        return out

    def markdown(self) -> str:
        """The selected values and what the search cost, one line per group."""
        if not self.rows:
            return ""
        cols = list(self.schema.keys)
        lines = ["#### Selected on validation", "",
                 "| " + " | ".join(cols) + " | values | valid error (%) | trials | search (min) |",
                 "|" + "---|" * (len(cols) + 4)]
        for row in self.rows.values():
            values = ", ".join(f"{k.removeprefix('finetune.')}={_fmt(v)}"
                               for k, v in json.loads(row["values"]).items())
            lines.append("| " + " | ".join(row[c] for c in cols) + f" | {values} | "
                         f"{float(row['valid_error']):.2f} | {row['trials']} | "
                         f"{float(row['wall_s']) / 60:.1f} |")
        total = sum(float(r["wall_s"]) for r in self.rows.values()) / 3600
        return "\n".join(lines) + (f"\n\nThe search's time, all groups: {total:.2f} h (the trials' "
                                    "wall time; the shared pretraining not included).\n")


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)
