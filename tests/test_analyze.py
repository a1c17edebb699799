"""The analysis of a finished pipeline run (``layerwise analyze sample`` and ``spectrum``): its
stack loaded back, sampled with a Parzen estimate, its Jacobian's spectrum; and the sampler's
dispatch on untrained stacks.

The run-based tests build a pipeline-shaped run with the pipeline's own pieces (config logged
as an artifact, a nested ``pretrain`` run with one nested ``layer k`` run per layer logging its
digest, layers saved to the stage cache by ``pretrain_stack``) but train the small layers
directly, which is ten times faster than ``run_pipeline``; the slow test runs the real pipeline.
"""
import math

import mlflow
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pipelines import tracking
from pipelines.analysis.parzen import parzen_estimate, parzen_log_likelihood
from pipelines.analysis.runs import load_run
from pipelines.analysis.sampling import draw_samples, sample_run
from pipelines.analysis.spectrum import jacobian_singular_values, spectrum_run, spectrum_summary
from pipelines.analysis.vector_field import fit_autoencoder
from pipelines.cli import main
from pipelines.config import load_config
from pipelines.data.datasets import load_dataset
from pipelines.data.splits import make_split
from pipelines.run import run_pipeline
from pipelines.stages.layer_cache import layer_digest
from pipelines.stages.pretraining import pretrain_stack
from pretrain.autoencoder import AutoEncoder
from pretrain.rbm import RBM
from pretrain.stack import Stack


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("analyze") / "mlruns"
    uri = f"sqlite:///{root / 'mlflow.db'}"
    yield root, uri
    mlflow.set_tracking_uri(None)


# -- a pipeline run, loaded back ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipeline_run(store):
    root, uri = store
    cfg = load_config("quickstart", ["pretrain.layers.0.n_hidden=32", "pretrain.layers.1.n_hidden=16",
                                     f"tracking.uri={uri}"])
    ds = load_dataset("digits", seed=cfg.seed)
    split = make_split(ds, labels=cfg.finetune.labels, seed=cfg.seed)
    exp = tracking.setup(uri, cfg.tracking.experiment)

    def fit_layer(k, layer, codes, val_codes):
        with tracking.start_run(f"layer {k + 1} ({cfg.pretrain.layers[k].kind})", experiment_id=exp, nested=True):
            mlflow.log_params({"kind": cfg.pretrain.layers[k].kind, "index": k + 1, "digest": layer_digest(cfg, k)})
            fit_autoencoder(layer, codes, epochs=10, batch_size=32, seed=k)

    with tracking.start_run(cfg.name, experiment_id=exp) as parent:
        tracking.log_config(cfg)
        with tracking.start_run("pretrain", experiment_id=exp, nested=True):
            stack, _ = pretrain_stack(cfg, torch.from_numpy(split.X_pool), None, cache_dir=root / "cache",
                                      fit_layer=fit_layer)
    return parent.info.run_id, uri, stack.eval(), split


def test_load_run_rebuilds_the_cached_stack(pipeline_run, tmp_path):
    run_id, uri, stack, split = pipeline_run
    loaded = load_run(run_id, uri=uri)
    x = torch.from_numpy(split.X_test[:20])
    with torch.no_grad():
        torch.testing.assert_close(loaded.stack.encode(x), stack.encode(x), rtol=0, atol=0)
    assert np.array_equal(loaded.split.X_test, split.X_test)
    with pytest.raises(FileNotFoundError, match="layer1-"):
        load_run(run_id, uri=uri, root=tmp_path)  # no cache/ there
    with pytest.raises(ValueError, match="not in"):
        load_run("0" * 32, uri=uri)


def test_sample_run_logs_a_parzen_estimate_far_above_noise(pipeline_run):
    """The CAE chain's samples of the trained stack, scored on digits test with sigma chosen on
    validation, must beat uniform-noise "samples" by a wide margin (measured: model -0.3 nats,
    noise -40, the pool itself +28; the 60-epoch quickstart stack gets +22)."""
    run_id, uri, _, split = pipeline_run
    out = sample_run(run_id, uri=uri, n_samples=2000, n_chains=50, burn_in=5, seed=0)
    assert out["sampler"] == "cae-chain" and out["n_samples"] == 2000
    noise = np.random.default_rng(0).random((2000, 64)).astype(np.float32)
    noise_ll, _, _ = parzen_estimate(noise, split.X_valid, split.X_test)
    assert out["parzen_ll"] > noise_ll + 20, (out["parzen_ll"], noise_ll)
    assert out["parzen_ll"] < out["parzen_ll_pool"]  # real digits are the better "samples"
    assert math.isfinite(out["parzen_stderr"]) and 0 < out["parzen_stderr"] < 2
    client = mlflow.MlflowClient(uri)
    logged = client.get_run(run_id).data.metrics
    assert logged["analysis/parzen_ll"] == pytest.approx(out["parzen_ll"])
    assert logged["analysis/parzen_sigma"] == pytest.approx(out["parzen_sigma"])
    arts = {a.path for a in client.list_artifacts(run_id, "analysis")}
    assert {"analysis/sample_chains.png", "analysis/parzen.md"} <= arts
    assert client.get_run(run_id).info.status == "FINISHED"  # logging did not reopen the run


def test_sample_run_chooses_noise_and_burn_in_on_validation_and_reads_test_once(pipeline_run):
    """A grid of sampler settings: the one kept is the best on validation; the test figure is that
    setting's samples (re-drawn with the same seed) scored at its validation sigma."""
    run_id, uri, stack, split = pipeline_run
    out = sample_run(run_id, uri=uri, n_samples=1000, n_chains=50, burn_in=[2, 8], noise=[0.05, 0.3, 3.0],
                     seed=1, log=False)
    trials = out["trials"]
    assert [(t["noise"], t["burn_in"]) for t in trials] == [(z, b) for b in (2, 8) for z in (0.05, 0.3, 3.0)]
    best = max(trials, key=lambda t: t["valid_ll"])
    assert (out["noise"], out["burn_in"], out["parzen_sigma"]) == (best["noise"], best["burn_in"], best["sigma"])
    assert out["parzen_ll_valid"] == best["valid_ll"]
    # measured: noise 0.3 -1.15 and -1.43 nats at burn-ins 2 and 8; 0.05 (slow mixing) -2.44 and
    # -4.15; 3 (off the digits) -3.99 and -3.45. A chain deaf to its noise would score them alike.
    assert out["noise"] == 0.3
    assert max(t["valid_ll"] for t in trials if t["noise"] != 0.3) < best["valid_ll"] - 1.0
    samples, _, _ = draw_samples(stack, split.X_pool, n_samples=1000, n_chains=50, burn_in=out["burn_in"],
                                 noise=out["noise"], seed=1)
    ll = parzen_log_likelihood(samples, split.X_test, out["parzen_sigma"])
    assert out["parzen_ll"] == pytest.approx(float(ll.mean()), abs=1e-6)
    assert out["n_test"] == len(split.X_test) and out["n_valid"] == len(split.X_valid)
    assert "| noise | burn-in | sigma | validation log-likelihood |" in out["markdown"]
    with pytest.raises(ValueError, match="noise is empty"):
        sample_run(run_id, uri=uri, noise=[], log=False)


def test_a_nested_run_id_is_refused_with_its_parent_named(pipeline_run):
    run_id, uri, _, _ = pipeline_run
    client = mlflow.MlflowClient(uri)
    exp = client.get_run(run_id).info.experiment_id
    stage = client.search_runs([exp], f"tags.mlflow.parentRunId = '{run_id}'")[0].info.run_id
    layer = client.search_runs([exp], f"tags.mlflow.parentRunId = '{stage}'")[0].info.run_id
    for child in (stage, layer):  # a layer run names its grandparent, the pipeline run
        with pytest.raises(ValueError, match=f"nested run of pipeline run {run_id}.*--run-id {run_id}"):
            load_run(child, uri=uri)


def test_sample_command_prints_the_table_and_fails_cleanly(pipeline_run, tmp_path):
    run_id, uri, _, _ = pipeline_run
    res = CliRunner().invoke(main, ["analyze", "sample", "--run-id", run_id, "--uri", uri, "--n-samples",
                                    "500", "--chains", "20", "--noise", "0.05", "--noise", "0.3",
                                    "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "| this stack |" in res.output and (tmp_path / "sample_chains.png").exists()
    bad = CliRunner().invoke(main, ["analyze", "sample", "--run-id", "f" * 32, "--uri", uri])
    assert bad.exit_code == 2 and "error:" in bad.output


def test_spectrum_run_logs_the_spectrum(pipeline_run, tmp_path):
    run_id, uri, stack, split = pipeline_run
    res = CliRunner().invoke(main, ["analyze", "spectrum", "--run-id", run_id, "--uri", uri,
                                    "--examples", "200", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "spectrum.png").exists() and (tmp_path / "tangents.png").exists()
    S = jacobian_singular_values(stack, split.X_test[:200])
    want = spectrum_summary(S)
    logged = mlflow.MlflowClient(uri).get_run(run_id).data.metrics
    assert logged["analysis/spectrum/participation_ratio"] == pytest.approx(want["participation_ratio"], rel=1e-5)
    assert f"participation ratio {want['participation_ratio']:.2f}" in res.output
    assert np.all(np.diff(S, axis=1) <= 0)  # each row sorted, largest first


# -- the sampler on untrained stacks -----------------------------------------------------------------------


def test_draw_samples_dispatches_on_the_top_layer():
    X = np.random.default_rng(0).random((30, 12)).astype(np.float32)
    ae_stack = Stack([AutoEncoder(12, 7, seed=0), AutoEncoder(7, 5, seed=1)])
    s, chains, name = draw_samples(ae_stack, X, n_samples=45, n_chains=10, burn_in=3, seed=0)
    assert name == "cae-chain" and s.shape == (45, 12) and chains.shape == (10, 3 + 5, 12)
    np.testing.assert_array_equal(s, chains[:, 3:].reshape(-1, 12)[:45])
    s2, _, _ = draw_samples(ae_stack, X, n_samples=45, n_chains=10, burn_in=3, seed=0)
    np.testing.assert_array_equal(s, s2)
    dbn = Stack([RBM(12, 7, seed=0), RBM(7, 5, seed=1)])
    s, chains, name = draw_samples(dbn, X, n_samples=20, n_chains=10, burn_in=0, seed=0)
    assert name == "dbn-gibbs" and s.shape == (20, 12) and (0 <= s).all() and (s <= 1).all()
    with pytest.raises(ValueError, match="n_samples"):
        draw_samples(dbn, X, n_samples=0)


@pytest.mark.slow
def test_real_pipeline_run_is_sampled_and_analysed(tmp_path):
    """End to end: ``run_pipeline`` (pretraining only), then sample and spectrum on its run."""
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    cfg = load_config("quickstart", ["pretrain.epochs=5", "pretrain.layers.0.n_hidden=32",
                                     "pretrain.layers.1.n_hidden=16", "finetune.methods=[]",
                                     "baselines.methods=[]", f"tracking.uri={uri}"])
    result = run_pipeline(cfg, root=tmp_path / "mlruns")
    out = sample_run(result.run_id, uri=uri, n_samples=1000, n_chains=50)
    assert math.isfinite(out["parzen_ll"])
    spec = spectrum_run(result.run_id, uri=uri, n_examples=100)
    metrics = mlflow.MlflowClient(uri).get_run(result.run_id).data.metrics
    assert metrics["analysis/parzen_ll"] == pytest.approx(out["parzen_ll"])
    assert metrics["analysis/spectrum/top_singular_value"] == pytest.approx(spec["top_singular_value"])
    mlflow.set_tracking_uri(None)
