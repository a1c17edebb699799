"""The ``layerwise`` command line. Heavy libraries are imported inside the commands, so that
``layerwise --help`` answers at once."""
from __future__ import annotations

import sys

import click


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="layerwise")
def main() -> None:
    """layerwise: greedy layer-wise pretraining and semi-supervised fine-tuning.

    \b
    layerwise run                                   quickstart on the embedded digits
    layerwise run mnist_mtc --set finetune.labels=100 --set seed=3
    layerwise bench semi-supervised --profile quick
    layerwise ui                                    MLflow UI over ./mlruns
    """


@main.command()
@click.argument("config", required=False)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value, e.g. --set finetune.labels=100 (repeatable).")
@click.option("--data-dir", default=None, help="Where to look for data files (MNIST) first.")
@click.option("--download", is_flag=True, help="Fetch missing MNIST files from the usual mirrors.")
@click.option("--print-config", is_flag=True, help="Print the resolved config and exit.")
def run(config: str | None, overrides: tuple[str, ...], data_dir: str | None, download: bool,
        print_config: bool) -> None:
    """Run a pipeline: CONFIG is a YAML path or a shipped name (default: quickstart)."""
    from pipelines.config import ConfigError, load_config

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
    from pipelines.run import run_pipeline

    try:
        result = run_pipeline(cfg)
    except (ValueError, FileNotFoundError, ConnectionError, FloatingPointError) as e:
        _fail(str(e))
    click.echo(result.table_markdown)
    click.echo(f"\nMLflow run {result.run_id} in {result.tracking_uri}  (layerwise ui to browse)")


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
def data_show(name: str, data_dir: str | None, download: bool, out: str | None, seed: int) -> None:
    """Write a grid of examples of dataset NAME, one row per class."""
    from pipelines.data.datasets import load_dataset
    from pipelines.reporting.figures import example_grid, save_figure

    try:
        ds = load_dataset(name, data_dir=data_dir, seed=seed, download=download)
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e))
    out = out or f"{name}-examples.png"
    save_figure(example_grid(ds, seed=seed), out)
    click.echo(f"wrote {out} ({len(ds.X)} training and {len(ds.X_test)} test examples, "
               f"{ds.n_classes} classes)")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to bind; keep 127.0.0.1 unless others must reach it.")
@click.option("--port", default=5000, show_default=True)
@click.option("--uri", default=None, help="Tracking store (default: $MLFLOW_TRACKING_URI or ./mlruns).")
def ui(host: str, port: int, uri: str | None) -> None:
    """Start the MLflow UI over the same store that runs write to."""
    import subprocess

    from pipelines.tracking import artifact_root, resolve_uri

    uri = resolve_uri(uri)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
           "--host", host, "--port", str(port)]
    root = artifact_root(uri)
    if root:
        cmd += ["--default-artifact-root", root]
    click.echo(f"MLflow UI on http://{host}:{port} over {uri}")
    sys.exit(subprocess.call(cmd))


@main.group()
def bench() -> None:
    """Benchmarks: the papers' tables, and speed against this machine's own matmul rate."""


@main.group()
def analyze() -> None:
    """What a trained autoencoder knows: vector fields, samples, Jacobian spectra."""


@analyze.command("vector-field")
@click.option("--out", "out_dir", default="analysis", show_default=True, help="Folder for the figures.")
@click.option("--run-id", default=None, help="Also log the figures and numbers to this MLflow run.")
@click.option("--uri", default=None, help="Tracking store (default: $MLFLOW_TRACKING_URI or ./mlruns).")
@click.option("--data", type=click.Choice(["circle", "spiral"]), default="circle", show_default=True)
@click.option("--hidden-unit", type=click.Choice(["sigmoid", "tanh"]), default="tanh", show_default=True)
@click.option("--epochs", default=30, show_default=True)
@click.option("--seed", default=0, show_default=True)
def analyze_vector_field(out_dir, run_id, uri, data, hidden_unit, epochs, seed) -> None:
    """Train a DAE and a CAE on 2-D toy data; plot r(x) - x and the potential."""
    from pipelines.analysis.vector_field import vector_field_analysis

    res = vector_field_analysis(out_dir, data=data, hidden_unit=hidden_unit, epochs=epochs, seed=seed,
                                run_id=run_id, uri=uri)
    for kind in ("dae", "cae"):
        m = res[kind]
        click.echo(f"{kind}: 50 steps of x <- r(x) take the mean distance to the curve from "
                   f"{m['distance_start']:.3f} to {m['distance_end']:.3f}; potential on the data "
                   f"{m['potential_data']:.3f}, far from it {m['potential_far']:.3f}")
    click.echo("wrote " + ", ".join(res["files"]))


@analyze.command("sample")
@click.option("--run-id", required=True, help="Parent run id of a pipeline run.")
@click.option("--uri", default=None, help="Tracking store (default: $MLFLOW_TRACKING_URI or ./mlruns).")
@click.option("--root", default=None, help="Folder holding cache/ (default: beside the store).")
@click.option("--n-samples", default=10000, show_default=True)
@click.option("--chains", "n_chains", default=100, show_default=True)
@click.option("--burn-in", "burn_in", type=int, multiple=True, default=(10,), show_default=True,
              help="Chain steps dropped before sampling; repeat to choose on the validation set.")
@click.option("--noise", type=float, multiple=True, default=(0.3,), show_default=True,
              help="Std of the CAE chain's noise; repeat to choose on the validation set.")
@click.option("--seed", default=0, show_default=True)
@click.option("--out", "out_dir", default=None, help="Also write the figures here.")
def analyze_sample(run_id, uri, root, n_samples, n_chains, burn_in, noise, seed, out_dir) -> None:
    """Sample a run's stack; log the chains and the Parzen log-likelihood to the run."""
    from pipelines.analysis.sampling import sample_run

    try:
        res = sample_run(run_id, uri=uri, root=root, n_samples=n_samples, n_chains=n_chains,
                         burn_in=list(burn_in), noise=list(noise), seed=seed, out_dir=out_dir)
    except (ValueError, FileNotFoundError, ConnectionError) as e:
        _fail(str(e))
    click.echo(res["markdown"])


@analyze.command("spectrum")
@click.option("--run-id", required=True, help="Parent run id of a pipeline run.")
@click.option("--uri", default=None, help="Tracking store (default: $MLFLOW_TRACKING_URI or ./mlruns).")
@click.option("--root", default=None, help="Folder holding cache/ (default: beside the store).")
@click.option("--examples", "n_examples", default=1000, show_default=True)
@click.option("--out", "out_dir", default=None, help="Also write the figures here.")
def analyze_spectrum(run_id, uri, root, n_examples, out_dir) -> None:
    """Singular values of the top code's Jacobian over test examples; tangent images."""
    from pipelines.analysis.spectrum import spectrum_run

    try:
        res = spectrum_run(run_id, uri=uri, root=root, n_examples=n_examples, out_dir=out_dir)
    except (ValueError, FileNotFoundError, ConnectionError) as e:
        _fail(str(e))
    click.echo(f"{res['n_examples']} examples: top singular value {res['top_singular_value']:.3g}, "
               f"{res['above_10pct']} above 10% of it, {res['above_1pct']} above 1%, "
               f"participation ratio {res['participation_ratio']:.2f}")


BENCH_SUITES = {
    "semi-supervised": "MNIST with 100-3000 labels: SVM, k-NN, NN, CAE, MTC beside the MTC paper.",
    "variations": "The Larochelle variation sets (regenerated): SVM, DAE-3, RBM-3, CAE-1, CAE-2, MTC.",
    "knowledge-free": "MNIST with all labels: k-NN, SVM, NN, CAE, MTC beside the MTC paper.",
    "deep-autoencoder": "784-1000-500-250-30 RBM-pretrained autoencoder, without pretraining, and PCA.",
    "speed": "The speed benchmarks in one table, beside references measured in the same run.",
}


def _bench_command(suite: str, summary: str) -> None:
    @bench.command(suite, help=f"{summary} Resumes from the cells it finished.")
    @click.option("--profile", type=click.Choice(["tiny", "quick", "full"]), default="quick",
                  show_default=True, help="Sizes and epochs: quick (~20 min on 2 cores), full (the papers').")
    @click.option("--seeds", type=int, default=None, help="Seeds per cell (default: the profile's).")
    @click.option("--data-dir", default=None, help="Where to look for the MNIST files first.")
    @click.option("--root", default="mlruns", show_default=True,
                  help="Folder for cell results and caches (bench/ inside it).")
    @click.option("--threads", type=int, default=None,
                  help="torch threads (default: torch's); 1 is faster on a busy machine.")
    @click.option("--accelerator", type=click.Choice(["cpu", "gpu", "auto"]), default="cpu",
                  show_default=True, help="Lightning's accelerator flag for every network.")
    @click.option("--only", multiple=True, metavar="PATTERN",
                  help="Compute only the cells whose id matches (shell-style, repeatable), "
                       "e.g. 'paper-*-mtc_all-*'; the table shows the finished ones.")
    def command(profile: str, seeds: int | None, data_dir: str | None, root: str,
                threads: int | None, accelerator: str, only: tuple[str, ...]) -> None:
        from pipelines.bench.runner import run_bench

        if threads is not None:
            import torch

            torch.set_num_threads(max(1, threads))
        try:
            res = run_bench(suite, profile=profile, seeds=seeds, data_dir=data_dir, root=root,
                            log=lambda line: click.echo(line, err=True), accelerator=accelerator,
                            only=only)
        except (ValueError, FileNotFoundError, ConnectionError, FloatingPointError) as e:
            _fail(str(e))
        click.echo(res.markdown)
        figure = f", figure {res.figure_path}" if res.figure_path else ""
        click.echo(f"tables in {res.directory}{figure}; MLflow run {res.run_id} in {res.tracking_uri}")


for _suite, _summary in BENCH_SUITES.items():
    _bench_command(_suite, _summary)


if __name__ == "__main__":  # pragma: no cover
    main()
