"""``layerwise bench SUITE``: run (or resume) one benchmark suite, tracked in MLflow.

The cells of the suite (``pipelines.bench.suites``) that have no result yet are computed and
stored under ``<root>/bench/<suite>-<profile>-<hash>/`` (``pipelines.bench.cells``), the hash
covering the profile (all but its seed count, so that more seeds extend a finished run) and the
suite's settings; the results are summarised over seeds beside the paper's figures
(``pipelines.bench.summary``). One MLflow parent run per suite run, one nested run per computed
cell (the training stages of a cell nest below it); the tables (Markdown and CSV) and the
figure are logged to the parent and written beside the cell files. Under the table, where the
run's time went (``pipelines.bench.timing_report``).

With ``results``, the finished cells are also kept in the suite's results file
(``<results>/<suite>-<profile>/cells.csv``, ``pipelines.bench.results``), with its table
(``table.md``, ``pipelines.bench.readme``) beside it, both rewritten as each cell lands; a cell
with a row there is not computed again, so a suite resumes from committed results on any machine.
The hyperparameters selected on validation for a group of cells (``selected.csv`` there,
``pipelines.bench.selected``, written by ``pipelines.selection``) are applied to every seed of it.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import mlflow
import torch

from pipelines import flop_count, tracking
from pipelines.bench.cells import Cell, CellStore, run_cells, select_cells, settings_digest
from pipelines.bench.context import EXPERIMENT, Context
from pipelines.bench.hardware import hardware
from pipelines.bench.pretraining_file import FILE as PRETRAINING, PretrainingFile
from pipelines.bench.profiles import Profile, get_profile
from pipelines.bench.readme import results_table, update_section, with_selection
from pipelines.bench.results import FILE, SCHEMAS, TABLE, ResultsFile, ResultStore, results_dir
from pipelines.bench.suites import SUITES
from pipelines.bench.summary import Summary, summarize
from pipelines.bench.timing.matmul import bench_device
from pipelines.bench.timing_report import Ledger, ideal_rate, run_markdown
from pipelines.files import atomic_write_text
from pipelines.reporting.figures import save_figure
from pipelines.reporting.tables import summary_csv
from pipelines.training import quiet_lightning


#: the suites whose results measure the device they ran on: one results folder per device
BY_DEVICE = ("speed",)


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
    results_dir: Path | None = None


def run_bench(suite: str, *, profile: str | Profile = "quick", seeds: int | None = None,
              data_dir: str | None = None, root: str | Path = "mlruns", uri: str | None = None,
              log: Callable[[str], None] = print, accelerator: str = "cpu",
              only: Sequence[str] = (), results: str | Path | None = None,
              pretrain_only: bool = False) -> BenchResult:
    """Run (or resume) benchmark ``suite`` of ``pipelines.bench.suites.SUITES``.

    Parameters
    ----------
    suite : ``semi-supervised``, ``variations``, ``knowledge-free``, ``deep-autoencoder`` or ``speed``.
    profile : a name of ``pipelines.bench.profiles.PROFILES`` (``tiny``, ``quick``, ``full``) or a ``Profile``.
    seeds : seeds per cell (default: the profile's).
    data_dir : where the MNIST files are looked up first (variation sets are cached there too).
    root : the folder holding ``bench/`` (cell results, layer and tangent caches).
    uri : the MLflow tracking URI (default: ``$MLFLOW_TRACKING_URI``, else ``<root>/mlflow.db``).
    log : receives one progress line per cell.
    accelerator : the Trainer flag for every network (``cpu``, ``gpu``, ``auto``); the MTC's
        tangents are computed on the same device. Not part of the results' hash: a suite
        resumes across devices, except those of ``BY_DEVICE``, measurements of the device itself,
        kept in one folder per device (``<suite>-<profile>-<cpu|cuda>-<hash>``); for those,
        ``gpu`` where there is none is refused.
    only : shell-style patterns of cell ids to compute (default: all); the other cells are
        read back when they are finished and left out when not, and the table says how many
        cells it holds.
    results : the folder of committed results (``results`` on the command line); None: none.
        The suites of ``pipelines.bench.results.SCHEMAS`` keep theirs in
        ``<results>/<suite>-<profile>/``; a file there that does not fit the suite is refused
        before anything runs.
    pretrain_only : pretrain (or load) the stacks of the cells the same call would compute, into
        the layer cache under ``root`` (and ``pretraining.csv``), and compute no cell: the
        expensive part on one machine (a GPU), the cells on another. The result holds no cell,
        its markdown the time report.
    """
    if suite not in SUITES:
        raise ValueError(f"unknown benchmark suite {suite!r}: choose one of {', '.join(SUITES)}")
    spec = SUITES[suite]
    prof = get_profile(profile, seeds)

    cells = spec.cells(prof)
    selected = select_cells(cells, only)
    digest = settings_digest(spec.settings(prof))
    root = Path(root)
    directory = root / "bench" / f"{suite}-{prof.name}-{digest}"
    if suite in BY_DEVICE:  # CPU and GPU timings never share a folder
        directory = root / "bench" / f"{suite}-{prof.name}-{bench_device(accelerator).type}-{digest}"
    book = None
    if results is not None and suite in SCHEMAS:
        folder = results_dir(results, suite, prof.name)
        cells = with_selection(suite, prof, cells, folder)
        book = ResultsFile(folder / FILE, SCHEMAS[suite], cells, spec.cell_digests(prof, cells))

    def landed() -> None:  # the committed table, and the README's section of it, follow each cell
        table = results_table(suite, prof.name, book)
        atomic_write_text(book.path.with_name(TABLE), table)
        update_section(book.path.parent.parent.resolve().parent / "README.md", book.path.parent.name, table)

    store = ResultStore(CellStore(directory), book, landed=landed)

    started = time.perf_counter()
    quiet_lightning()
    uri, experiment_id = tracking.open_store(uri, root=root, experiment=EXPERIMENT)
    stale = tracking.mark_stale_runs(experiment_id, digest)
    if accelerator != "cpu" and torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")  # TF32 tensor cores for float32 matmuls
    ledger = Ledger()
    stamp = {"commit": tracking.git_commit(), "hardware": hardware(accelerator)}
    pretraining = None if book is None else PretrainingFile(book.path.with_name(PRETRAINING))
    ctx = Context(prof, data_dir=data_dir, root=root, uri=uri, experiment_id=experiment_id,
                  experiment=EXPERIMENT, log=log, accelerator=accelerator, ledger=ledger,
                  pretraining=pretraining, stamp=stamp)
    computed: set[str] = set()
    tags = {**tracking.environment_tags(), "layerwise.digest": digest, "layerwise.bench": suite,
            "layerwise.profile": prof.name}
    if stale:
        tags["layerwise.resumed_from"] = stale[0]
    title = spec.title(prof)
    log(f"{title}\ncells: {len(cells)}, results in {directory}")

    def rate_for(results: list[dict]) -> float | None:  # the ideal's matmul rate, if anything counted flops
        return ideal_rate(accelerator) if ledger.flops() or any(r.get("flops") for r in results) else None

    def compute(cell: Cell) -> dict:
        spec.prepare(ctx, cell)  # pretraining runs nest under the suite's run, not the cell's
        t0 = time.perf_counter()  # a cell's time leaves out the pretraining of the stack it shares
        with tracking.start_run(cell.id, experiment_id=experiment_id, nested=True), \
                flop_count.counting() as tally:
            mlflow.log_params({**{f"cell.{k}": v for k, v in cell.keys.items()}, "cell.seed": cell.seed})
            out = spec.run_cell(ctx, cell)
            mlflow.log_metric("value", out["value"])
        computed.add(cell.id)
        return {"wall_s": time.perf_counter() - t0, "flops": tally.flops, **out, **stamp}

    with tracking.start_run(f"bench {suite} ({prof.name})", experiment_id=experiment_id,
                            tags=tags) as parent:
        mlflow.log_params({"suite": suite, "directory": str(directory),
                           **{f"profile.{k}": v for k, v in prof.as_dict().items()}})
        if pretrain_only:
            todo = [c for c in cells if selected(c) and not store.has(c)]
            for cell in todo:
                spec.prepare(ctx, cell)  # each stack once: the context keeps the ones it has
            total = time.perf_counter() - started
            markdown = (f"Pretrained the stacks of the {len(todo)} cells left to compute; no cell "
                        f"computed (pretrain only).\n\n"
                        + run_markdown([], set(), ledger, total, spec.kind_key, rate_for([])))
            tracking.log_text_artifact(markdown, "results/pretraining.md")
            return BenchResult(suite, prof.name, directory, [], [], markdown, "", None, parent.info.run_id,
                               uri, None if book is None else book.path.parent)
        with ledger.listening():
            results = run_cells(cells, store, compute, log=log, selected=selected)
        summaries = summarize(results, spec.paper)
        markdown = spec.markdown(summaries, results, prof)
        if len(results) < len(cells):
            markdown = (f"**Partial: {len(results)} of {len(cells)} cells finished** (the others "
                        f"show '-'; the same command with no --only computes them).\n\n" + markdown)
        if book is not None:
            landed()
        total = time.perf_counter() - started
        markdown += "\n" + run_markdown(results, computed, ledger, total, spec.kind_key, rate_for(results))
        table_csv = summary_csv(summaries, spec.key_names)
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
                       figure_path, parent.info.run_id, uri, None if book is None else book.path.parent)


def _metric_key(text: str) -> str:
    """An MLflow metric name for a cell id: characters MLflow refuses become ``_``."""
    return re.sub(r"[^\w/.\- ]+", "_", text)
