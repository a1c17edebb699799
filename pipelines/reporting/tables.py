"""Results tables: one row per method, written as Markdown and CSV, logged to MLflow."""
from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict, dataclass, field


@dataclass
class Row:
    """One method's result. Errors are percentages; ``metric`` says what ``test`` measures."""

    method: str
    inputs: str
    test: float
    valid: float | None = None
    metric: str = "test error (%)"
    params: dict = field(default_factory=dict)
    seconds: float | None = None


def _fmt(v: float | None, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}f}"


def to_markdown(rows: list[Row], title: str | None = None) -> str:
    lines = [f"### {title}", ""] if title else []
    lines += ["| method | inputs | metric | test | valid | chosen |",
              "|---|---|---|---|---|---|"]
    for r in rows:
        chosen = ", ".join(f"{k}={_short(v)}" for k, v in r.params.items())
        lines.append(f"| {r.method} | {r.inputs} | {r.metric} | {_fmt(r.test)} | {_fmt(r.valid)} | {chosen} |")
    summary = verdict(rows)
    return "\n".join(lines) + "\n" + (f"\n{summary}\n" if summary else "")


def verdict(rows: list[Row]) -> str:
    """One line that says which method won and where the MTC stands against SVM and k-NN."""
    errs = [r for r in rows if r.metric == "test error (%)"]
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
