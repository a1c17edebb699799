"""Logged models load as the module they were; the alias ``best`` follows the validation error."""
import mlflow
import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from finetune.served import ProbabilityClassifier, Reconstructor
from finetune.unroll import unroll_autoencoder
from pipelines import tracking
from pipelines.estimators import StackedMLPClassifier, StackedPretrainer
from pipelines.models import BEST, log_model, register, registered_name


@pytest.fixture()
def store(tmp_path):
    uri, experiment_id = tracking.open_store(None, root=tmp_path / "mlruns")
    yield experiment_id
    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return (X / 16.0).astype(np.float32), y


def test_loaded_classifier_gives_the_in_memory_probabilities(store, digits):
    X, y = digits
    clf = StackedMLPClassifier(layers=[("cae", 16)], pretrain_epochs=1, epochs=3).fit(X[:300], y[:300])
    with tracking.start_run("t", experiment_id=store):
        uri = log_model(ProbabilityClassifier(clf.module_.net), X, name="mlp")
    loaded = mlflow.pytorch.load_model(uri)
    assert isinstance(loaded, ProbabilityClassifier)
    loaded.train()
    loaded.eval()  # an exported GraphModule raises NotImplementedError here
    with torch.no_grad():
        proba = loaded(torch.as_tensor(X[300:]))
    np.testing.assert_allclose(proba.numpy(), clf.predict_proba(X[300:]), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(loaded.predict(torch.as_tensor(X[300:])).numpy(), clf.predict(X[300:]))
    pyfunc = mlflow.pyfunc.load_model(uri)
    np.testing.assert_allclose(pyfunc.predict(X[300:310]), proba[:10].numpy(), rtol=1e-5, atol=1e-6)
    info = mlflow.models.get_model_info(uri)
    assert info.name == "mlp"
    assert [list(s["tensor-spec"]["shape"]) for s in info.signature.outputs.to_dict()] == [[-1, 10]]
    example = mlflow.models.Model.load(uri).load_input_example(mlflow.artifacts.download_artifacts(uri))
    assert np.asarray(example).shape == (5, 64)


def test_loaded_deep_autoencoder_reconstructs(store, digits):
    X, _ = digits
    stack = StackedPretrainer(layers=[("ae", 12)], epochs=1).fit(X[:200]).stack_
    with tracking.start_run("t", experiment_id=store):
        uri = log_model(Reconstructor(*unroll_autoencoder(stack)), X, name="deep_autoencoder")
    x = torch.as_tensor(X[:20])
    r = mlflow.pytorch.load_model(uri).eval()(x).detach()
    torch.testing.assert_close(r, stack.reconstruct(x).detach(), rtol=1e-5, atol=1e-6)


def test_best_alias_moves_only_to_a_lower_validation_error(store, digits):
    X, y = digits
    clf = StackedMLPClassifier(layers=[("cae", 8)], pretrain_epochs=1, epochs=1).fit(X[:200], y[:200])
    name = registered_name("fashion-npz", 100)
    assert name == "fashion-npz-L100" and registered_name("digits", None) == "digits-Lall"
    seen = []
    for err in (12.0, 8.5, 9.0):
        with tracking.start_run("t", experiment_id=store) as run:
            uri = log_model(ProbabilityClassifier(clf.module_.net), X, name="mtc_all")
        seen.append(register(uri, name, val_error=err, tags={"run_id": run.info.run_id}))
    assert [b for _, b in seen] == [True, True, False]
    best = mlflow.MlflowClient().get_model_version_by_alias(name, BEST)
    assert best.version == seen[1][0] and float(best.tags["val_error"]) == 8.5
    model = mlflow.pytorch.load_model(f"models:/{name}@{BEST}")
    assert isinstance(model, ProbabilityClassifier)
