"""The benchmark runner: resumable cells, results summarised over seeds beside the papers, MLflow.

A suite (``pipelines.bench.suites``) is a list of cells; a cell is one method in one setting
(dataset, label count, validation set) with one seed. The runner runs each cell that has no
result yet and writes its result atomically (temporary file, then ``os.replace``) as
``<root>/bench/<suite>-<profile>-<hash>/<cell>.json``, the hash covering the profile (all but
its seed count, so that more seeds extend a finished run) and the suite's settings. A suite
stopped and started again skips the cells whose file exists; a half-written temporary file is
never taken for a result. Per group of cells that differ only in the seed, with e_s the test
error (or other metric) of seed s and S seeds:

    (1) mean = 1/S sum_s e_s
    (2) std  = sqrt(1/(S - 1) sum_s (e_s - mean)^2)        (S = 1: no std, printed without ±)
    (3) difference = mean - paper                          (negative: ours is lower)

One MLflow parent run per suite run, one nested run per computed cell (the training stages
of a cell nest below it); the tables (Markdown and CSV) and the figure are logged to the
parent and written beside the cell files.
"""
from __future__ import annotations

import csv
import fnmatch
import hashlib
import io
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from pipelines.files import atomic_write_text

EXPERIMENT = "layerwise-bench"


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


def settings_digest(settings: dict) -> str:
    """A short hash of JSON-able settings: names a suite run's folder."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=list).encode()).hexdigest()[:12]


class CellStore:
    """Finished cells as ``<directory>/<cell id>.json``, each written atomically."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    def path(self, cell_id: str) -> Path:
        return self.directory / f"{cell_id}.json"

    def load(self, cell_id: str) -> dict | None:
        """The stored result of a cell, or None when it has none (or an unreadable one)."""
        p = self.path(cell_id)
        if not p.is_file():
            return None
        try:
            result = json.loads(p.read_text())
        except (OSError, ValueError):
            print(f"warning: {p} cannot be read as a cell result; running the cell again",
                  file=sys.stderr)
            return None
        return result if isinstance(result, dict) and result.get("id") == cell_id else None

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

    ``compute(cell)`` returns at least ``{"value": float}``; the runner adds the cell's id,
    keys, seed and task, and the wall time when ``compute`` did not give one. A missing cell
    that is not ``selected`` is left out of the results (the table shows '-' for it).
    """
    ids = [c.id for c in cells]
    if len(set(ids)) != len(ids):
        raise ValueError(f"cell ids must be unique, got duplicates {sorted({i for i in ids if ids.count(i) > 1})}")
    results = []
    for i, cell in enumerate(cells, 1):
        done = store.load(cell.id)
        if done is not None:
            log(f"[{i}/{len(cells)}] {cell.id}: {_fmt(done['value'])} (finished before)")
            results.append(done)
            continue
        if not selected(cell):
            continue
        t0 = time.perf_counter()
        out = compute(cell)
        result = {"seconds": time.perf_counter() - t0, **out, "id": cell.id, "keys": cell.keys,
                  "seed": cell.seed, "task": cell.task}
        if not isinstance(result.get("value"), (int, float)):
            raise ValueError(f"cell {cell.id}: compute returned no numeric 'value' ({out!r})")
        store.save(result)
        log(f"[{i}/{len(cells)}] {cell.id}: {_fmt(result['value'])} ({result['seconds']:.0f} s)")
        results.append(result)
    return results


# -- summaries and tables ------------------------------------------------------------------------

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
    """Group results by their keys (in order of first appearance) and apply Eqs. (1)-(2)."""
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


def _fmt(v: float | None, digits: int = 2, sign: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"


def mean_std(s: Summary, digits: int = 2) -> str:
    """``"12.03 ± 0.45"``, or ``"12.03"`` for a single seed."""
    return _fmt(s.mean, digits) if s.std is None else f"{_fmt(s.mean, digits)} ± {_fmt(s.std, digits)}"


def to_markdown(summaries: list[Summary], key_names: list[str], *, title: str | None = None,
                paper_name: str = "paper", notes: list[str] = (), digits: int = 2) -> str:
    """One row per group: its keys, ours (mean ± std), the seed count, the paper, the difference."""
    lines = [f"### {title}", ""] if title else []
    lines += ["| " + " | ".join([*key_names, "ours (mean ± std)", "seeds", paper_name, f"ours - {paper_name}"]) + " |",
              "|" + "---|" * (len(key_names) + 4)]
    for s in summaries:
        cells = [str(s.keys.get(k, "-")) for k in key_names]
        lines.append("| " + " | ".join([*cells, mean_std(s, digits), str(s.n), _fmt(s.paper, digits),
                                        _fmt(s.difference, digits, sign=True)]) + " |")
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


def pivot_markdown(summaries: list[Summary], row_key: str, col_key: str, *, title: str | None = None,
                   digits: int = 2) -> str:
    """A compact view: one row per ``row_key`` value, one column per ``col_key`` value, each
    entry ``ours (paper)``; ``-`` where a group is missing or the paper has no figure."""
    rows = list(dict.fromkeys(s.keys[row_key] for s in summaries))
    cols = list(dict.fromkeys(s.keys[col_key] for s in summaries))
    at = {(s.keys[row_key], s.keys[col_key]): s for s in summaries}
    lines = [f"#### {title}", ""] if title else []
    lines += ["| " + " | ".join([row_key, *map(str, cols)]) + " |", "|" + "---|" * (len(cols) + 1)]
    for r in rows:
        entries = []
        for c in cols:
            s = at.get((r, c))
            entries.append("-" if s is None else f"{mean_std(s, digits)} ({_fmt(s.paper, digits)})")
        lines.append("| " + " | ".join([str(r), *entries]) + " |")
    return "\n".join(lines) + "\n"


def to_csv(summaries: list[Summary], key_names: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*key_names, "metric", "mean", "std", "seeds", "paper", "difference"])
    for s in summaries:
        w.writerow([*(s.keys.get(k, "") for k in key_names), s.metric, f"{s.mean:.6g}",
                    "" if s.std is None else f"{s.std:.6g}", s.n,
                    "" if s.paper is None else s.paper,
                    "" if s.difference is None else f"{s.difference:.6g}"])
    return buf.getvalue()


# -- figures ------------------------------------------------------------------------------------

def _new_figure(n_panels: int, width: float = 6.0, height: float = 4.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * n_panels, height))
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, n_panels, squeeze=False)[0]


def lines_figure(summaries: list[Summary], *, x_key: str, line_key: str, panel_key: str | None = None,
                 paper: dict | None = None, ylabel: str = "", title: str = ""):
    """One line per ``line_key`` value (ours: mean with std bars), ``x_key`` on a log axis, one
    panel per ``panel_key`` value; ``paper[line][x]`` drawn as hollow squares on dashed lines."""
    panels = list(dict.fromkeys(s.keys[panel_key] for s in summaries)) if panel_key else [None]
    fig, axes = _new_figure(len(panels))
    colors = {m: f"C{i}" for i, m in enumerate(dict.fromkeys(s.keys[line_key] for s in summaries))}
    for ax, panel in zip(axes, panels):
        sub = [s for s in summaries if panel is None or s.keys[panel_key] == panel]
        for m, color in colors.items():
            pts = sorted((s.keys[x_key], s.mean, s.std or 0.0) for s in sub if s.keys[line_key] == m)
            if pts:
                xs, ys, es = zip(*pts)
                ax.errorbar(xs, ys, yerr=es, color=color, marker="o", ms=4, capsize=2, label=str(m))
            ref = sorted((paper or {}).get(m, {}).items())
            if ref:
                ax.plot(*zip(*ref), color=color, ls="--", marker="s", mfc="none", ms=5, label=f"{m} (paper)")
        ax.set_xscale("log")
        ax.set_xlabel(x_key)
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title}{'' if panel is None else f': {panel_key} {panel}'}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return fig


def bars_figure(summaries: list[Summary], *, group_key: str | None, bar_key: str, ylabel: str = "",
                title: str = ""):
    """Grouped bars (ours: mean with std bars) per ``group_key`` value, one bar per ``bar_key``
    value; the paper's figure as a black tick on its bar."""
    groups = list(dict.fromkeys(s.keys[group_key] for s in summaries)) if group_key else [""]
    bars = list(dict.fromkeys(s.keys[bar_key] for s in summaries))
    fig, (ax,) = _new_figure(1, width=max(6.0, 0.5 * len(groups) * len(bars) ** 0.5 + 4))
    width = 0.8 / len(bars)
    at = {(s.keys[group_key] if group_key else "", s.keys[bar_key]): s for s in summaries}
    labeled = False
    for j, b in enumerate(bars):
        for i, g in enumerate(groups):
            s = at.get((g, b))
            if s is None:
                continue
            x = i - 0.4 + (j + 0.5) * width
            ax.bar(x, s.mean, width, yerr=s.std or 0.0, color=f"C{j}", label=str(b) if i == 0 else None)
            if s.paper is not None:
                ax.plot([x - width / 2, x + width / 2], [s.paper] * 2, color="k", lw=2,
                        label=None if labeled else "paper")
                labeled = True
    ax.set_xticks(range(len(groups)), [str(g) for g in groups], rotation=30 if group_key else 0,
                  ha="right" if group_key else "center", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    return fig


# -- one suite, tracked ----------------------------------------------------------------------------

@dataclass
class BenchResult:
    suite: str
    profile: str
    directory: Path
    results: list[dict]
    summaries: list[Summary]
    markdown: str
    csv: str
    figure_path: Path | None
    run_id: str
    tracking_uri: str


def run_bench(suite: str, *, profile="quick", seeds: int | None = None, data_dir: str | None = None,
              root: str | Path = "mlruns", uri: str | None = None,
              log: Callable[[str], None] = print, accelerator: str = "cpu",
              only: Sequence[str] = ()) -> BenchResult:
    """Run (or resume) benchmark ``suite`` of ``pipelines.bench.suites.SUITES``.

    Parameters
    ----------
    suite : ``semi-supervised``, ``variations``, ``knowledge-free``, ``deep-autoencoder`` or ``speed``.
    profile : a name of ``bench_suites.PROFILES`` (``tiny``, ``quick``, ``full``) or a ``Profile``.
    seeds : seeds per cell (default: the profile's).
    data_dir : where the MNIST files are looked up first (variation sets are cached there too).
    root : the folder holding ``bench/`` (cell results, layer and tangent caches).
    uri : the MLflow tracking URI (default: ``$MLFLOW_TRACKING_URI``, else ``<root>/mlflow.db``).
    log : receives one progress line per cell.
    accelerator : the Trainer flag for every network (``cpu``, ``gpu``, ``auto``); the MTC's
        tangents are computed on the same device. Not part of the results' hash: a suite
        resumes across devices.
    only : shell-style patterns of cell ids to compute (default: all); the other cells are
        read back when they are finished and left out when not, and the table says how many
        cells it holds.
    """
    from pipelines.bench.suites import SUITES, Context, get_profile

    if suite not in SUITES:
        raise ValueError(f"unknown benchmark suite {suite!r}: choose one of {', '.join(SUITES)}")
    spec = SUITES[suite]
    prof = get_profile(profile, seeds)  # bad names fail before anything heavy is imported

    import mlflow

    from pipelines import tracking
    from pipelines.reporting.figures import save_figure
    from pipelines.training import quiet_lightning

    cells = spec.cells(prof)
    selected = select_cells(cells, only)
    digest = settings_digest(spec.settings(prof))
    root = Path(root)
    directory = root / "bench" / f"{suite}-{prof.name}-{digest}"
    store = CellStore(directory)

    quiet_lightning()
    uri, experiment_id = tracking.open_store(uri, root=root, experiment=EXPERIMENT)
    stale = tracking.mark_stale_runs(experiment_id, digest)
    import torch

    if accelerator != "cpu" and torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")  # TF32 tensor cores for float32 matmuls
    ctx = Context(prof, data_dir=data_dir, root=root, uri=uri, experiment_id=experiment_id,
                  experiment=EXPERIMENT, log=log, accelerator=accelerator)
    tags = {**tracking.environment_tags(), "layerwise.digest": digest, "layerwise.bench": suite,
            "layerwise.profile": prof.name}
    if stale:
        tags["layerwise.resumed_from"] = stale[0]
    title = spec.title(prof)
    log(f"{title}\ncells: {len(cells)}, results in {directory}")

    def compute(cell: Cell) -> dict:
        spec.prepare(ctx, cell)  # pretraining runs nest under the suite's run, not the cell's
        with tracking.start_run(cell.id, experiment_id=experiment_id, nested=True):
            mlflow.log_params({**{f"cell.{k}": v for k, v in cell.keys.items()}, "cell.seed": cell.seed})
            out = spec.run_cell(ctx, cell)
            mlflow.log_metric("value", out["value"])
        return out

    with tracking.start_run(f"bench {suite} ({prof.name})", experiment_id=experiment_id,
                            tags=tags) as parent:
        mlflow.log_params({"suite": suite, "directory": str(directory),
                           **{f"profile.{k}": v for k, v in prof.as_dict().items()}})
        results = run_cells(cells, store, compute, log=log, selected=selected)
        summaries = summarize(results, spec.paper)
        markdown = spec.markdown(summaries, results, prof)
        if len(results) < len(cells):
            markdown = (f"**Partial: {len(results)} of {len(cells)} cells finished** (the others "
                        f"show '-'; the same command with no --only computes them).\n\n" + markdown)
        table_csv = to_csv(summaries, spec.key_names)
        atomic_write_text(directory / "table.md", markdown)
        atomic_write_text(directory / "table.csv", table_csv)
        tracking.log_text_artifact(markdown, "results/table.md")
        tracking.log_text_artifact(table_csv, "results/table.csv")
        for r in results:
            mlflow.log_metric(_metric_key(r["id"]), float(r["value"]))
        figure_path = None
        fig = spec.figure(summaries, results, prof)
        if fig is not None:
            figure_path = save_figure(fig, directory / "figure.png")
            tracking.log_file(figure_path, "results")
    return BenchResult(suite, prof.name, directory, results, summaries, markdown, table_csv,
                       figure_path, parent.info.run_id, uri)


def _metric_key(text: str) -> str:
    import re

    return re.sub(r"[^\w/.\- ]+", "_", text)
