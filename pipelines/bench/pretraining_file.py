"""What each pretrained layer of a suite's stacks cost: ``<results>/<suite>-<profile>/pretraining.csv``,
beside ``cells.csv``. Its header::

    data,stack,layer,what,epochs,wall_s,commit,hardware,settings

One row per layer (1 = the bottom) of each stack the suite's cells share, written when the layer
is trained, with the wall time of its training (for a jointly trained stack, the sum of its
rounds), the commit and the hardware; ``settings`` is the layer's cache digest
(``layer_cache.layer_digest``). A layer loaded from the cache writes nothing (loading is not
what the stack cost), and one trained again replaces its row. The committed table's time
section (``timing_report.recorded_markdown``) reads the rows, so that the cost of a table is
its cells' time plus its stacks'.
"""
from __future__ import annotations

import math
from pathlib import Path

from pipelines.bench.csv_file import CsvFile

FILE = "pretraining.csv"
HEADER = ["data", "stack", "layer", "what", "epochs", "wall_s", "commit", "hardware", "settings"]


class PretrainingFile:
    """``pretraining.csv`` of one suite and profile; its rows by (data, stack, layer)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._file = CsvFile(self.path, HEADER, self._check_row, what="layer",
                             named_by=["data", "stack", "layer"])
        self.rows = self._file.read()

    def _check_row(self, line: int, row: dict[str, str]) -> tuple[str, str, int]:
        try:
            layer, epochs, seconds = int(row["layer"]), int(row["epochs"]), float(row["wall_s"])
        except ValueError as e:
            raise self._file.refuse(f"line {line} does not parse ({e})", "Fix or delete that line.") from None
        if layer < 1 or epochs < 0 or not (math.isfinite(seconds) and seconds >= 0):
            raise self._file.refuse(f"line {line} needs a layer >= 1, epochs >= 0 and a finite wall_s >= 0",
                                    "Fix or delete that line.")
        return row["data"], row["stack"], layer

    def save(self, *, data: str, stack: str, layer: int, what: str, epochs: int, seconds: float,
             commit: str, hardware: str, settings: str) -> None:
        """Add (or replace) the row of one trained layer (``layer``: 1 = the bottom; ``what``: its
        kind and sizes, ``rbm 784-1000``)."""
        row = {"data": data, "stack": stack, "layer": str(int(layer)), "what": what,
               "epochs": str(int(epochs)), "wall_s": f"{float(seconds):.3f}", "commit": commit,
               "hardware": hardware, "settings": settings}
        self.rows = self._file.save((data, stack, int(layer)), row, lambda k: k)

    def stacks(self) -> dict[tuple[str, str], list[dict[str, str]]]:
        """The rows grouped by (data, stack), each stack's layers bottom first."""
        out: dict[tuple[str, str], list[dict[str, str]]] = {}
        for key in sorted(self.rows):
            out.setdefault(key[:2], []).append(self.rows[key])
        return out
