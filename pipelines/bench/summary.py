"""Benchmark results summarised over seeds, beside the paper's figure.

Per group of cells that differ only in the seed, with e_s the test error (or other metric) of
seed s and S seeds:

    (1) mean = 1/S sum_s e_s
    (2) std  = sqrt(1/(S - 1) sum_s (e_s - mean)^2)        (S = 1: no std, printed without ±)
    (3) difference = mean - paper                          (negative: ours is lower)

The tables and figures of summaries are drawn by ``pipelines.reporting``.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Callable


@dataclass
class Summary:
    """One group of cells (same keys, all seeds): Eqs. (1)-(3)."""

    keys: dict
    metric: str
    mean: float
    std: float | None
    n: int
    paper: float | None = None

    @property
    def difference(self) -> float | None:
        return None if self.paper is None else self.mean - self.paper  # Eq. (3)


def summarize(results: list[dict], paper: Callable[[dict], float | None] = lambda keys: None) -> list[Summary]:
    """Group results by their keys (in order of first appearance) and apply Eqs. (1)-(2);
    ``paper(keys)`` is the published figure of a group, or None."""
    groups: dict[str, list[dict]] = {}
    for r in results:
        groups.setdefault(json.dumps(r["keys"], sort_keys=True), []).append(r)
    out = []
    for rs in groups.values():
        values = [float(r["value"]) for r in rs]
        n = len(values)
        mean = sum(values) / n  # Eq. (1)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None  # Eq. (2)
        out.append(Summary(dict(rs[0]["keys"]), rs[0].get("metric", "test error (%)"), mean, std, n,
                           paper(rs[0]["keys"])))
    return out
