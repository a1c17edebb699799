"""The pipeline end to end on digits: MLflow layout, stage cache on re-run, the logged model."""
import mlflow
import numpy as np
import pytest
import torch

from pipelines.config import load_config
from pipelines.run import run_pipeline

TINY = ["pretrain.epochs=3", "pretrain.layers.0.n_hidden=32", "pretrain.layers.1.n_hidden=16",
        "finetune.epochs=8", "finetune.methods=[mlp]", "finetune.labels=100",
        "baselines.methods=[knn]", "baselines.inputs=[pixels,codes]"]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipe")
    uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    cfg = load_config("quickstart", TINY + [f"tracking.uri={uri}"])
    result = run_pipeline(cfg, root=root / "mlruns")
    yield cfg, root, result
    mlflow.set_tracking_uri(None)


def test_parent_run_with_nested_stage_runs(first_run):
    cfg, root, result = first_run
    mlflow.set_tracking_uri(result.tracking_uri)
    runs = mlflow.search_runs(experiment_names=[cfg.tracking.experiment])
    names = dict(zip(runs.run_id, runs["tags.mlflow.runName"]))
    parent_of = dict(zip(runs.run_id, runs["tags.mlflow.parentRunId"]))
    # named for what it ran; the config's name is a tag
    assert names[result.run_id] == "digits L100 s0 mlp"
    assert runs.set_index("run_id").loc[result.run_id, "tags.layerwise.config"] == "quickstart"
    stages = {names[r] for r, p in parent_of.items() if p == result.run_id}
    assert stages == {"pretrain", "finetune", "baselines"}
    pretrain_id = next(r for r, p in parent_of.items() if p == result.run_id and names[r] == "pretrain")
    layers = sorted(names[r] for r, p in parent_of.items() if p == pretrain_id)
    assert layers == ["layer 1 (cae_h 64-32)", "layer 2 (cae_h 32-16)"]
    assert set(runs.status) == {"FINISHED"}
    # per-epoch loss terms of a layer, each logged on its own
    layer1 = next(r for r in parent_of if names[r].startswith("layer 1"))
    hist = mlflow.MlflowClient().get_metric_history(layer1, "train/contraction")
    assert len(hist) == cfg.pretrain.epochs and all(m.value > 0 for m in hist)
    parent = runs[runs.run_id == result.run_id].iloc[0]
    assert parent["params.finetune.labels"] == "100"
    assert parent["tags.git_commit"]


def test_results_table_logged_and_numbers_in_range(first_run):
    _, _, result = first_run
    methods = {(r.method, r.inputs) for r in result.rows}
    assert methods == {("mlp", "stack"), ("knn", "pixels"), ("knn", "codes")}
    for r in result.rows:
        assert 0 <= r.test <= 100
    knn = next(r for r in result.rows if r.method == "knn" and r.inputs == "pixels")
    assert knn.test < 20  # k-NN on digits with 100 labels is near 10% error
    md = mlflow.artifacts.load_text(f"runs:/{result.run_id}/results/results.md")
    assert "| knn | pixels |" in md


def test_rerun_loads_layers_from_cache_with_identical_codes(first_run):
    cfg, root, result = first_run
    again = run_pipeline(cfg, root=root / "mlruns")
    assert again.layers_loaded == [True, True]
    x = torch.rand(5, 64)
    torch.testing.assert_close(again.stack.encode(x), result.stack.encode(x), rtol=0, atol=0)


def test_changing_layer_2_reuses_layer_1(first_run):
    cfg, root, _ = first_run
    cfg2 = cfg.model_copy(deep=True)
    cfg2.pretrain.layers[1].n_hidden = 8
    cfg2.finetune.methods = []
    cfg2.baselines.methods = []
    res = run_pipeline(cfg2, root=root / "mlruns")
    assert res.layers_loaded == [True, False]


def test_logged_model_loads_as_the_classifier_and_reproduces_the_test_error(first_run):
    """``mlflow.pytorch.load_model`` gives a module (``eval()`` works) whose output is the class
    probabilities; its labels on the test set give the logged test error; the pyfunc agrees;
    the model is named for its method, has a signature and an input example, is registered."""
    from pipelines.data.datasets import load_dataset
    from pipelines.data.splits import make_split

    cfg, _, result = first_run
    client = mlflow.MlflowClient()
    child = mlflow.search_runs(experiment_ids=[client.get_run(result.run_id).info.experiment_id],
                               filter_string="tags.mlflow.runName = 'finetune mlp'").iloc[0]
    model = mlflow.pytorch.load_model(f"runs:/{child.run_id}/mlp").eval()
    split = make_split(load_dataset("digits"), labels=100, seed=0)
    x = torch.as_tensor(split.X_test)
    with torch.no_grad():
        proba = model(x)
    torch.testing.assert_close(proba.sum(1), torch.ones(len(x)))
    error = 100 * float((model.predict(x).numpy() != split.y_test).mean())
    assert error == pytest.approx(child["metrics.test/error"], abs=1e-9)
    pyfunc = mlflow.pyfunc.load_model(f"runs:/{child.run_id}/mlp")
    torch.testing.assert_close(torch.as_tensor(np.asarray(pyfunc.predict(split.X_test[:6]))),
                               proba[:6], rtol=1e-5, atol=1e-6)
    info = mlflow.models.get_model_info(f"runs:/{child.run_id}/mlp")
    assert info.name == "mlp" and info.signature is not None and info.saved_input_example_info
    assert list(info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == [-1, 64]
    best = client.get_model_version_by_alias("digits-L100", "best")
    assert best.tags["method"] == "mlp" and best.tags["run_id"] == child.run_id
    # validation and test errors in one unit (percent)
    val = [m.value for m in client.get_metric_history(child.run_id, "val/error")]
    assert min(val) == pytest.approx(child["metrics.best/val_error"], abs=1e-4) and max(val) > 1


def test_bad_layer_value_names_the_layer(tmp_path):
    cfg = load_config("quickstart", ["pretrain.layers.1.kind=rbm", "pretrain.layers.1.contraction=0.1",
                                     f"tracking.uri=sqlite:///{tmp_path / 'db.db'}"])
    with pytest.raises(ValueError, match=r"pretrain\.layers\.1 \(rbm\): .*does not accept 'contraction'"):
        run_pipeline(cfg, root=tmp_path)


def test_the_tangent_accuracy_settings_reach_the_tangents(tmp_path, monkeypatch):
    import finetune.tangents as tg
    from pipelines.config import FinetuneConfig
    from pipelines.stages import finetuning

    # the config's defaults are the tangents' own (mirrored there: the config does not import torch)
    assert FinetuneConfig().tangent_oversample == tg.OVERSAMPLE
    assert FinetuneConfig().tangent_rank_tol == tg.RANK_TOL
    calls = []
    real = finetuning.cached_tangents

    def spy(stack, X, k, cache_dir, **options):
        calls.append(options)
        return real(stack, X, k, cache_dir, **options)

    monkeypatch.setattr(finetuning, "cached_tangents", spy)
    cfg = load_config("quickstart", TINY + ["finetune.methods=[mtc_all]", "finetune.epochs=2",
                                            "finetune.n_tangents=3", "finetune.tangent_oversample=2",
                                            "finetune.tangent_rank_tol=0.5",
                                            "baselines.methods=[]",
                                            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"])
    try:
        run_pipeline(cfg, root=tmp_path)
    finally:
        mlflow.set_tracking_uri(None)
    assert len(calls) == 2  # the labeled set and the pool
    assert all(c["oversample"] == 2 and c["rank_tol"] == 0.5 for c in calls), calls
