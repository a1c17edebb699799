"""The ``layerwise`` command line. Heavy libraries are imported inside the commands, so that
``layerwise --help`` answers at once; the ``bench`` and ``analyze`` groups have their own modules."""
from __future__ import annotations

import sys

import click

from pipelines.cli.analyze import analyze
from pipelines.cli.bench import bench
from pipelines.cli.errors import fail as _fail


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="layerwise")
def main() -> None:
    """layerwise: greedy layer-wise pretraining and semi-supervised fine-tuning.

    \b
    layerwise run                                   quickstart on the embedded digits
    layerwise run mnist_mtc --set finetune.labels=100 --set seed=3
    layerwise bench semi-supervised --profile quick
    layerwise tune mnist_mtc --space mtc --trials 50
    layerwise ui                                    MLflow UI over ./mlruns
    """


@main.command()
@click.argument("config", required=False)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value, e.g. --set finetune.labels=100 (repeatable).")
@click.option("--data-dir", default=None, help="Where to look for data files (MNIST) first.")
@click.option("--download", is_flag=True, help="Fetch missing MNIST files from the usual mirrors.")
@click.option("--print-config", is_flag=True, help="Print the resolved config and exit.")
@click.option("--quiet", "-q", is_flag=True, help="Print the results table only (no progress).")
def run(config: str | None, overrides: tuple[str, ...], data_dir: str | None, download: bool,
        print_config: bool, quiet: bool) -> None:
    """Run a pipeline: CONFIG is a YAML path or a shipped name (default: quickstart).

    Progress goes to standard error: a live line on a terminal, one line per finished stage
    when piped; the table goes to standard output."""
    from pipelines import progress
    from pipelines.config import ConfigError, load_config
    from pipelines.interrupts import Interrupted, signals_raise

    overrides = list(overrides)
    if data_dir:
        overrides.append(f"data.data_dir={data_dir}")
    if download:
        overrides.append("data.download=true")
    try:
        cfg = load_config(config, overrides)
    except ConfigError as e:
        _fail(str(e))
    if print_config:
        click.echo(cfg.to_yaml())
        return
    try:
        with progress.configure(progress.mode_for(quiet)), signals_raise():
            with progress.stage("loading torch, Lightning and MLflow"):
                from pipelines.run import run_pipeline
            result = run_pipeline(cfg)
    except (ValueError, FileNotFoundError, ConnectionError, FloatingPointError) as e:
        _fail(str(e))
    except Interrupted as e:
        click.echo(f"error: {e}; the runs are marked KILLED. Run the same command again to "
                   f"resume from the finished layers.", err=True)
        sys.exit(e.exit_code)
    except Exception as e:
        if not type(e).__module__.startswith(("mlflow", "sqlalchemy")):
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        _fail(f"the tracking store failed ({type(e).__name__}: {first}). Check the store, or "
              f"set tracking.uri / MLFLOW_TRACKING_URI to another one")
    click.echo(result.table_markdown)
    if not quiet:
        if result.from_cache:  # beside the progress lines: the table stays what it was
            click.echo(f"from the cache, not computed: {', '.join(result.from_cache)} "
                       f"(layerwise cache list shows them, cache clear removes them)", err=True)
        click.echo(f"\nMLflow run {result.run_id} in {result.tracking_uri}  (layerwise ui to browse)")


@main.command()
@click.argument("config")
@click.option("--space", "space", required=True, metavar="SPACE",
              help="A shipped space (mtc, sda, dbn, ladder, vat) or a YAML file: 'objective' (a fine-tuning method) "
                   "and 'space' (dotted key: range).")
@click.option("--trials", type=int, required=True, help="Finished trials the study should hold.")
@click.option("--study", default=None, help="Study name (default: CONFIG's name and SPACE's stem).")
@click.option("--storage", default=None,
              help="Optuna storage URL (default: SQLite optuna.db under ./mlruns); a shared "
                   "PostgreSQL or MySQL database lets many machines work on one study.")
@click.option("--sampler", default="tpe", show_default=True, help="tpe, random or grid.")
@click.option("--pruner", default="median", show_default=True, help="median or none.")
@click.option("--stage", default="all", show_default=True,
              help="'finetune': search fine-tuning keys only, on one pretrained stack.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value for every trial (repeatable).")
@click.option("--best", "best_path", default=None,
              help="Where to write the best configuration (default: mlruns/tune/STUDY-best.yaml).")
def tune(config: str, space: str, trials: int, study: str | None, storage: str | None, sampler: str,
         pruner: str, stage: str, overrides: tuple[str, ...], best_path: str | None) -> None:
    """Search hyperparameters on the validation set; test the best configuration once."""
    from pipelines.config import ConfigError
    from pipelines.interrupts import Interrupted, signals_raise
    from pipelines.tune import tune as run_tune

    try:
        with signals_raise():
            res = run_tune(config, space, trials=trials, study=study, storage=storage,
                           overrides=list(overrides), sampler=sampler, pruner=pruner, stage=stage,
                           best_path=best_path, log=lambda line: click.echo(line, err=True))
    except (ConfigError, ValueError, FileNotFoundError, ConnectionError, RuntimeError) as e:
        _fail(str(e))
    except Interrupted as e:
        click.echo(f"error: {e}; the study's runs are marked KILLED and its running trial failed. "
                   f"Run the same command again to go on with the study.", err=True)
        sys.exit(e.exit_code)
    click.echo(res.trials_markdown)
    row = res.best_row
    states = ", ".join(f"{n} {s.lower()}" for s, n in sorted(res.states.items()))
    click.echo(f"best: trial {res.best_trial}, {res.objective} validation error {res.best_valid:.2f}%, "
               f"test error {row.test:.2f}% (the test set's only use)  [{states}]")
    click.echo(f"best configuration: {res.best_path}  (layerwise run {res.best_path} reproduces it)")
    click.echo(f"study {res.study} in {res.storage}; MLflow run {res.run_id} in {res.tracking_uri}")


@main.group()
def data() -> None:
    """Datasets: which are found where, and what they look like."""


@data.command("list")
@click.option("--data-dir", default=None, help="Where to look for data files first.")
def data_list(data_dir: str | None) -> None:
    """List the datasets and where their files are found."""
    from pipelines.data.catalog import catalog
    from pipelines.data.mnist import dataset_locations

    rows = catalog(data_dir)
    click.echo("searched, in order: " + ", ".join(str(d) for d in dataset_locations(data_dir)))
    for row in rows:
        click.echo(f"{row.name:18s} {row.status}")


@data.command("show")
@click.argument("name")
@click.option("--data-dir", default=None, help="Where to look for data files first.")
@click.option("--download", is_flag=True, help="Fetch missing MNIST files from the usual mirrors.")
@click.option("--out", default=None, help="Image file to write (default: NAME-examples.png).")
@click.option("--seed", default=0, show_default=True)
@click.option("--path", default=None, help="The .npz file, for NAME npz.")
@click.option("--image-shape", type=(int, int), default=None, metavar="ROWS COLS",
              help="Shape of one image, for data that does not carry its own.")
def data_show(name: str, data_dir: str | None, download: bool, out: str | None, seed: int,
              path: str | None, image_shape: tuple[int, int] | None) -> None:
    """Write a grid of examples of dataset NAME, one row per class
    (``layerwise data show npz --path FILE.npz``)."""
    from pathlib import Path

    from pipelines.data.datasets import load_dataset
    from pipelines.reporting.figures import example_grid, save_figure

    if name == "npz" and path is None:
        _fail("dataset 'npz' needs --path FILE.npz (a file with arrays X and y)")
    if name != "npz" and path is not None:
        _fail(f"--path is for dataset 'npz' only; {name!r} is found by name (see layerwise data list)")
    try:
        ds = load_dataset(name, data_dir=data_dir, path=path, seed=seed, download=download,
                          image_shape=image_shape)
        if ds.image_shape is None:
            _fail(f"{path or name}: rows of {ds.n_features} values have no known image shape; "
                  f"give --image-shape ROWS COLS (rows * cols = {ds.n_features}) if they are images")
        fig = example_grid(ds, seed=seed)
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e).replace("data.image_shape=", "--image-shape "))
    out = out or f"{Path(path).stem if path else name}-examples.png"
    save_figure(fig, out)
    click.echo(f"wrote {out} ({len(ds.X)} training and {len(ds.X_test)} test examples, "
               f"{ds.n_classes} classes)")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to bind; keep 127.0.0.1 unless others must reach it.")
@click.option("--port", default=5000, show_default=True)
@click.option("--uri", default=None, help="Tracking store (default: $MLFLOW_TRACKING_URI or ./mlruns).")
@click.option("--workers", default=1, show_default=True, help="Server worker processes.")
def ui(host: str, port: int, uri: str | None, workers: int) -> None:
    """Start the MLflow UI over the same store that runs write to; print its URL once it
    answers. Ctrl-C or SIGTERM stops it and every process it started."""
    from pipelines.ui import run_ui

    try:
        code = run_ui(host, port, uri, workers=workers, echo=click.echo)
    except (ValueError, RuntimeError) as e:
        _fail(str(e))
    sys.exit(code)


@main.group()
def cache() -> None:
    """The caches of trained layers, tangents and finished stages: sizes, and clearing them."""


@cache.command("list")
@click.option("--root", default="mlruns", show_default=True, help="Folder holding cache/ and bench/.")
@click.option("--files", "show_files", is_flag=True, help="Also list every file.")
def cache_list(root: str, show_files: bool) -> None:
    """What each cache holds under ROOT: files, size, age of the oldest and newest."""
    import time

    from pipelines.caches import cache_files, human_age, human_size, summarize

    now = time.time()
    total = 0
    for s in summarize(root):
        total += s.size
        ages = (f", {human_age(now - s.newest)} to {human_age(now - s.oldest)} old"
                if s.files else "")
        click.echo(f"{s.kind:11s} {s.files:6d} files {human_size(s.size):>9s}{ages}  in {s.folder}")
    click.echo(f"{'total':11s} {'':12s} {human_size(total):>9s}")
    if show_files:
        for f in cache_files(root):
            click.echo(f"{f.kind:11s} {human_size(f.size):>9s} {human_age(now - f.modified):>5s}  {f.path}")


@cache.command("clear")
@click.option("--root", default="mlruns", show_default=True, help="Folder holding cache/ and bench/.")
@click.option("--older-than", default=None, metavar="AGE",
              help="Only files last written at least this long ago: 30m, 12h, 7d, 2w.")
@click.option("--kind", "kinds", multiple=True,
              type=click.Choice(["layers", "checkpoints", "tangents", "results", "bench", "partial"]),
              help="Only these caches (repeatable; default: all).")
@click.option("--dry-run", is_flag=True, help="Say what would be removed; remove nothing.")
def cache_clear(root: str, older_than: str | None, kinds: tuple[str, ...], dry_run: bool) -> None:
    """Remove cache files (all, or of some kinds, or older than AGE); later runs recompute them."""
    from pipelines.caches import KINDS, clear, human_size, parse_age

    try:
        age = None if older_than is None else parse_age(older_than)
    except ValueError as e:
        _fail(str(e))
    removed = clear(root, older_than=age, kinds=kinds or KINDS, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    by_kind = {}
    for f in removed:
        n, size = by_kind.get(f.kind, (0, 0))
        by_kind[f.kind] = (n + 1, size + f.size)
    detail = ", ".join(f"{k} {n} ({human_size(s)})" for k, (n, s) in by_kind.items())
    click.echo(f"{verb} {len(removed)} files, {human_size(sum(f.size for f in removed))}"
               + (f": {detail}" if detail else f" (nothing under {root} matched)"))


main.add_command(bench)
main.add_command(analyze)
