"""Results tables, written as Markdown and CSV: one row per method of a pipeline run, and one
row per group of benchmark cells over seeds beside the paper's figure.

A benchmark summary (``pipelines.bench.summary.Summary``) is any object with ``keys`` (what
the group shares), ``metric``, ``mean``, ``std`` (None for a single seed), ``n`` (seeds),
``paper`` (None where the paper has no figure) and ``difference`` (ours - paper, or None).
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict, dataclass, field
from typing import Protocol, Sequence


@dataclass
class Row:
    """One method's result. Errors are percentages; ``metric`` says what ``test`` measures."""

    method: str
    inputs: str
    test: float | None  # None: not evaluated (a hyperparameter search trial)
    valid: float | None = None
    metric: str = "test error (%)"
    params: dict = field(default_factory=dict)
    seconds: float | None = None


class Summarized(Protocol):
    """What the summary tables read of a group of benchmark cells."""

    keys: dict
    metric: str
    mean: float
    std: float | None
    n: int
    paper: float | None

    @property
    def difference(self) -> float | None: ...


def fmt(v: float | None, digits: int = 2, sign: bool = False) -> str:
    """``v`` with ``digits`` decimals (and its sign when ``sign``), ``-`` for None or NaN."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"


def to_markdown(rows: list[Row], title: str | None = None) -> str:
    lines = [f"### {title}", ""] if title else []
    lines += ["| method | inputs | metric | test | valid | chosen |",
              "|---|---|---|---|---|---|"]
    for r in rows:
        chosen = ", ".join(f"{k}={_short(v)}" for k, v in r.params.items())
        lines.append(f"| {r.method} | {r.inputs} | {r.metric} | {fmt(r.test)} | {fmt(r.valid)} | {chosen} |")
    summary = verdict(rows)
    return "\n".join(lines) + "\n" + (f"\n{summary}\n" if summary else "")


def verdict(rows: list[Row]) -> str:
    """One line that says which method won and where the MTC stands against SVM and k-NN."""
    errs = [r for r in rows if r.metric == "test error (%)" and r.test is not None]
    if not errs:
        return ""
    win = min(errs, key=lambda r: r.test)
    line = f"Lowest test error: {win.method} on {win.inputs}, {win.test:.2f}%."
    mtc = [r for r in errs if r.method.startswith("mtc")]
    refs = [min((r for r in errs if r.method == m), key=lambda r: r.test, default=None)
            for m in ("svm", "knn")]
    refs = [r for r in refs if r is not None]
    if mtc and refs:
        best = min(mtc, key=lambda r: r.test)
        parts = [f"{'below' if best.test < r.test else 'not below'} {r.method} ({r.inputs}, "
                 f"{r.test:.2f}%)" for r in refs]
        line += f" Best MTC ({best.method}, {best.test:.2f}%) is " + " and ".join(parts) + "."
    return line


def _short(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def to_csv(rows: list[Row]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["method", "inputs", "metric", "test", "valid", "seconds", "params"])
    w.writeheader()
    for r in rows:
        d = asdict(r)
        d["params"] = ";".join(f"{k}={v}" for k, v in r.params.items())
        w.writerow(d)
    return buf.getvalue()


def best(rows: list[Row], metric: str = "test error (%)") -> Row:
    """The row with the lowest test value among rows of ``metric``."""
    return min((r for r in rows if r.metric == metric), key=lambda r: r.test)


# -- benchmark summaries: ours (mean ± std over seeds) beside the paper ---------------------------

def mean_std(s: Summarized, digits: int = 2) -> str:
    """``"12.03 ± 0.45"``, or ``"12.03"`` for a single seed."""
    return fmt(s.mean, digits) if s.std is None else f"{fmt(s.mean, digits)} ± {fmt(s.std, digits)}"


def summary_markdown(summaries: Sequence[Summarized], key_names: list[str], *, title: str | None = None,
                     paper_name: str = "paper", notes: Sequence[str] = (), digits: int = 2) -> str:
    """One row per group: its keys, ours (mean ± std), the seed count, the paper, the difference."""
    lines = [f"### {title}", ""] if title else []
    lines += ["| " + " | ".join([*key_names, "ours (mean ± std)", "seeds", paper_name, f"ours - {paper_name}"]) + " |",
              "|" + "---|" * (len(key_names) + 4)]
    for s in summaries:
        cells = [str(s.keys.get(k, "-")) for k in key_names]
        lines.append("| " + " | ".join([*cells, mean_std(s, digits), str(s.n), fmt(s.paper, digits),
                                        fmt(s.difference, digits, sign=True)]) + " |")
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


def pivot_markdown(summaries: Sequence[Summarized], row_key: str, col_key: str, *, title: str | None = None,
                   digits: int = 2) -> str:
    """A compact view: one row per ``row_key`` value, one column per ``col_key`` value, each
    entry ``ours (paper)``; ``-`` where a group is missing or the paper has no figure; a line
    saying so where no group is finished."""
    rows = list(dict.fromkeys(s.keys[row_key] for s in summaries))
    cols = list(dict.fromkeys(s.keys[col_key] for s in summaries))
    at = {(s.keys[row_key], s.keys[col_key]): s for s in summaries}
    lines = [f"#### {title}", ""] if title else []
    if not summaries:
        return "\n".join([*lines, "No finished cells yet."]) + "\n"
    lines += ["| " + " | ".join([row_key, *map(str, cols)]) + " |", "|" + "---|" * (len(cols) + 1)]
    for r in rows:
        entries = []
        for c in cols:
            s = at.get((r, c))
            entries.append("-" if s is None else f"{mean_std(s, digits)} ({fmt(s.paper, digits)})")
        lines.append("| " + " | ".join([str(r), *entries]) + " |")
    return "\n".join(lines) + "\n"


def summary_csv(summaries: Sequence[Summarized], key_names: list[str]) -> str:
    """One row per group: its keys, the metric, mean, std, seeds, the paper and the difference."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*key_names, "metric", "mean", "std", "seeds", "paper", "difference"])
    for s in summaries:
        w.writerow([*(s.keys.get(k, "") for k in key_names), s.metric, f"{s.mean:.6g}",
                    "" if s.std is None else f"{s.std:.6g}", s.n,
                    "" if s.paper is None else s.paper,
                    "" if s.difference is None else f"{s.difference:.6g}"])
    return buf.getvalue()
