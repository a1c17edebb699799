"""``layerwise analyze``: what a trained autoencoder knows (vector fields, samples, Jacobian spectra)."""
from __future__ import annotations

import click

from pipelines.cli.errors import fail


@click.group()
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
        fail(str(e))
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
        fail(str(e))
    click.echo(f"{res['n_examples']} examples: top singular value {res['top_singular_value']:.3g}, "
               f"{res['above_10pct']} above 10% of it, {res['above_1pct']} above 1%, "
               f"participation ratio {res['participation_ratio']:.2f}")
