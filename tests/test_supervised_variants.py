"""The supervised variants of fine-tuning: frozen hidden layers (``mlp_frozen``), the
reconstruction term as a method (``mlp_rec``), and greedy layer-wise supervised pretraining
(``mlp_greedy_supervised``), on the embedded digits with real Trainers and a real MLflow store."""
import lightning.pytorch as L
import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from lightning.pytorch.loggers import CSVLogger

from finetune.classifier import Classifier
from finetune.supervised_greedy import SupervisedLayer
from finetune.unroll import UnrolledDecoder, UnrolledEncoder, unroll_autoencoder
from pretrain.autoencoder import AutoEncoder
from pretrain.stack import Stack
from pipelines.cli import main
from pipelines.config import ConfigError, load_config
from pipelines.data.datamodule import ArrayDataModule
from pipelines.data.datasets import load_dataset
from pipelines.data.splits import make_split
from pipelines.estimators import StackedMLPClassifier
from pipelines.stages.finetuning import REC_WEIGHT, fit_supervised_layers, reconstruction_weight
from pipelines.training import make_trainer

NEW = ["mlp_rec", "mlp_frozen", "mlp_greedy_supervised"]


@pytest.fixture(scope="module")
def split():
    """The digits with 200 labels (20 per class), 297 validation and 500 test digits."""
    return make_split(load_dataset("digits"), labels=200, seed=0)


def fresh_encoder(sizes=(64, 48, 32), seed=0) -> UnrolledEncoder:
    """An untrained sigmoid encoder of ``sizes``, Glorot-initialised from ``seed``."""
    layers = [AutoEncoder(n_in, n_out, seed=seed * 100 + k)
              for k, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:]))]
    return UnrolledEncoder(Stack(layers))


def fit(module, split, epochs, seed=0, logger=False):
    L.seed_everything(seed, verbose=False)
    dm = ArrayDataModule(split.X_lab, split.y_lab, split.X_valid, split.y_valid, batch_size=25, seed=seed)
    make_trainer(max_epochs=epochs, logger=logger).fit(module, datamodule=dm)
    return module


def error(module, X, y) -> float:
    with torch.no_grad():
        return float((module(torch.as_tensor(X, dtype=torch.float32)).argmax(1).numpy() != y).mean())


def weights(encoder) -> list[torch.Tensor]:
    return [p.detach().clone() for lin in encoder.layers for p in (lin.weight, lin.bias)]


# -- frozen hidden layers -----------------------------------------------------------------------
def test_frozen_fine_tuning_keeps_every_hidden_weight_and_trains_the_softmax(split):
    """SGD with momentum and weight decay: a freeze that only zeroed the gradients would still
    decay the hidden weights; the same run without the freeze moves them."""
    runs = {}
    for frozen in (True, False):
        encoder = fresh_encoder()
        before = weights(encoder)
        module = Classifier(encoder, 10, lr=0.1, optimizer="sgd", momentum=0.9, weight_decay=1e-3,
                            freeze_hidden=frozen, seed=0)
        V0 = module.net.head.weight.detach().clone()
        untrained = error(module, split.X_test, split.y_test)
        fit(module, split, epochs=8)
        same = [torch.equal(a, b) for a, b in zip(before, weights(encoder))]
        runs[frozen] = (same, torch.equal(V0, module.net.head.weight), untrained,
                        error(module, split.X_test, split.y_test))
    same, head_same, untrained, err = runs[True]
    assert all(same) and not head_same
    # measured: 91% before, 29.8% after (a softmax on fixed random sigmoid features)
    assert untrained > 0.8 and err < 0.4, (untrained, err)
    assert not any(runs[False][0])  # every hidden weight and bias moves when not frozen


def test_frozen_and_reconstruction_together_are_refused():
    encoder, decoder = unroll_autoencoder(Stack([AutoEncoder(64, 16, seed=0)]))
    with pytest.raises(ValueError, match="freeze_hidden=True keeps fixed"):
        Classifier(encoder, 10, reconstruction=0.1, decoder=decoder, freeze_hidden=True)
    with pytest.raises(ValueError, match="freeze_hidden must be True or False"):
        Classifier(encoder, 10, freeze_hidden=1)


# -- greedy layer-wise supervised pretraining ---------------------------------------------------
def test_each_phase_trains_its_layer_and_leaves_the_layers_below_bit_identical(split, tmp_path):
    encoder = fresh_encoder((64, 48, 32, 24))
    snapshots, logs = [], []

    class Phase:  # a context per phase: the weights on entry and exit, and a real CSV logger
        def __init__(self, k):
            self.k = k

        def __enter__(self):
            self.before = weights(encoder)
            self.logger = CSVLogger(tmp_path, name=f"layer{self.k}")
            return self.logger

        def __exit__(self, *exc):
            snapshots.append((self.before, weights(encoder)))
            logs.append(pd.read_csv(f"{self.logger.log_dir}/metrics.csv"))

    kept = fit_supervised_layers(encoder, 10, split.X_lab, split.y_lab, split.X_valid, split.y_valid,
                                 epochs=6, patience=6, batch_size=25, lr=0.01, seed=0, phase_logger=Phase)
    assert len(kept) == 3 and all(0 <= e < 6 for e in kept)
    for k, (before, after) in enumerate(snapshots, start=1):
        same = [torch.equal(a, b) for a, b in zip(before, after)]  # (W_1, b_1, W_2, b_2, ...)
        assert all(same[:2 * (k - 1)]), f"phase {k} moved a layer below it"
        assert not same[2 * (k - 1)] and not same[2 * k - 1], f"phase {k} did not train layer {k}"
        assert all(same[2 * k:]), f"phase {k} moved a layer above it"
    # each phase's softmax classifies: measured best validation errors 14.1%, 15.5%, 19.9% (their
    # first epochs: 58%, 70%, 70%; chance is 90%)
    best = [log["val/error"].dropna().min() for log in logs]
    assert all(b < 0.35 for b in best), best
    assert all(p.requires_grad for p in encoder.parameters())  # left trainable for step (4)


def test_supervised_layer_refuses_a_layer_it_does_not_have():
    encoder = fresh_encoder()
    for k in (0, 3):
        with pytest.raises(ValueError, match=r"k=|k must be"):
            SupervisedLayer(encoder, k, 10)


# -- the reconstruction term --------------------------------------------------------------------
def pretrained_stack(split):
    """A 64-32 autoencoder pretrained for 2 epochs on the pool: its reconstruction can still fall."""
    layer = AutoEncoder(64, 32, lr=0.01, optimizer="adam", seed=0)
    L.seed_everything(0, verbose=False)
    X = torch.as_tensor(split.X_pool, dtype=torch.float32)
    make_trainer(max_epochs=2).fit(layer, datamodule=ArrayDataModule(X, batch_size=32, seed=0))
    return Stack([layer])


def test_weight_zero_is_the_mlp_exactly_and_a_positive_weight_lowers_the_reconstruction(split):
    stack = pretrained_stack(split)
    runs = {}
    x = torch.as_tensor(split.X_test, dtype=torch.float32)
    for name, alpha in (("mlp", None), ("rec0", 0.0), ("rec", REC_WEIGHT)):
        if alpha is None:  # as the stage builds mlp
            encoder = UnrolledEncoder(stack)
            module = Classifier(encoder, 10, lr=0.01, seed=0)
        else:  # as the stage builds mlp_rec
            encoder, decoder = unroll_autoencoder(stack)
            module = Classifier(encoder, 10, lr=0.01, reconstruction=alpha, decoder=decoder, seed=0)
        fit(module, split, epochs=6)
        decoder = UnrolledDecoder(stack, encoder) if alpha is None else decoder  # tied: the tuned W
        with torch.no_grad():
            rec = float(decoder.reconstruction_error(encoder(x), x).mean())  # unroll Eq. (4)
        runs[name] = (module.net.state_dict(), rec)
    mlp, rec0 = runs["mlp"][0], runs["rec0"][0]
    assert all(torch.equal(mlp[k], rec0[k]) for k in mlp)  # bit-identical after training
    # measured: reconstruction error per test digit 25.6 (mlp) against 20.4 (alpha = REC_WEIGHT)
    assert runs["rec"][1] < runs["mlp"][1] - 2.0, (runs["rec"][1], runs["mlp"][1])


def test_each_method_takes_its_reconstruction_weight():
    ft = load_config("quickstart").finetune
    assert reconstruction_weight(ft, "mlp_rec") == REC_WEIGHT
    ft.reconstruction = 0.3
    assert reconstruction_weight(ft, "mlp_rec") == 0.3 and reconstruction_weight(ft, "mtc") == 0.3
    assert all(reconstruction_weight(ft, m) == 0 for m in ("mlp", "mlp_frozen", "mlp_greedy_supervised",
                                                           "mlp_no_pretraining", "ladder"))


# -- from the command line, into MLflow ----------------------------------------------------------
SMALL = ["pretrain.epochs=2", "pretrain.layers.0.n_hidden=64", "pretrain.layers.1.n_hidden=32",
         "finetune.epochs=12", "finetune.patience=12", "finetune.lr=0.01",
         f"finetune.methods=[{','.join(NEW)}]", "baselines.methods=[]"]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("variants") / "mlruns"
    uri = f"sqlite:///{root / 'mlflow.db'}"
    args = ["run", "--quiet", *(f"--set={o}" for o in [*SMALL, f"tracking.uri={uri}"])]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root.parent)
        res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    try:
        mlflow.set_tracking_uri(uri)
        runs = mlflow.search_runs(experiment_names=["layerwise"])
        client = mlflow.MlflowClient()
        by_name = {r["tags.mlflow.runName"]: r for _, r in runs.iterrows()}
        rec = [m.value for m in client.get_metric_history(by_name["finetune mlp_rec"]["run_id"], "train/rec")]
    finally:
        mlflow.set_tracking_uri(None)
    return res.output, by_name, rec


def test_the_new_methods_run_from_the_cli_as_nested_runs_with_rows(cli_run):
    output, by_name, _ = cli_run
    rows = {line.split("|")[1].strip(): line for line in output.splitlines() if line.startswith("| mlp")}
    assert set(rows) == set(NEW), output
    greedy = by_name["finetune mlp_greedy_supervised"]
    for k in (1, 2):  # one run per layer, nested under the method's run
        assert by_name[f"supervised layer {k}"]["tags.mlflow.parentRunId"] == greedy["run_id"]
    parent = by_name["finetune"]["run_id"]
    assert all(by_name[f"finetune {m}"]["tags.mlflow.parentRunId"] == parent for m in NEW)
    assert by_name["finetune mlp_rec"]["params.reconstruction"] == str(REC_WEIGHT)
    assert "pixels" in rows["mlp_greedy_supervised"] and "stack" in rows["mlp_frozen"]


def test_greedy_supervised_from_the_cli_classifies_far_below_chance(cli_run, split):
    _, by_name, _ = cli_run
    untrained = error(Classifier(fresh_encoder((64, 64, 32)), 10, seed=0), split.X_test, split.y_test)
    test_error = by_name["finetune mlp_greedy_supervised"]["metrics.test/error"]
    layers = [by_name[f"supervised layer {k}"]["metrics.best/val_error"] for k in (1, 2)]
    # measured (50 labels, 500 test digits): untrained 85.8%, test 27.0%; the phases' best
    # validation errors 20.2%, 34.3%
    assert untrained > 0.8
    assert test_error < 40 and max(layers) < 45, (test_error, layers)


def test_the_reconstruction_term_is_logged_and_decreases(cli_run):
    _, by_name, rec = cli_run
    assert len(rec) >= 5 and rec[-1] < rec[0], rec
    assert "metrics.train/rec" not in by_name["finetune mlp_frozen"] or np.isnan(
        by_name["finetune mlp_frozen"]["metrics.train/rec"])


# -- bad settings and the scikit-learn estimator -------------------------------------------------
@pytest.mark.parametrize("override, key", [
    ("finetune.methods=[mlp_frozn]", "unknown fine-tuning method 'mlp_frozn'"),
    ("finetune.supervised_epochs=0", "finetune.supervised_epochs")])
def test_bad_settings_name_their_key(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config("quickstart", [override])


def test_the_estimator_takes_the_variants(split):
    X = np.r_[split.X_lab, split.X_valid]
    y = np.r_[split.y_lab, split.y_valid]
    common = dict(layers=[("cae", 32)], pretrain_epochs=3, epochs=5, lr=0.01, random_state=0)
    frozen = StackedMLPClassifier(freeze_hidden=True, **common).fit(X, y)
    assert torch.equal(frozen.module_.encoder.layers[0].weight, frozen.stack_[0].encoder_weight)
    greedy = StackedMLPClassifier(pretraining="supervised", **common).fit(X, y)
    # measured: 10.0% test error (chance 90%)
    assert np.mean(greedy.predict(split.X_test) != split.y_test) < 0.3
    with pytest.raises(ValueError, match="unknown pretraining 'greedy'"):
        StackedMLPClassifier(pretraining="greedy", **common).fit(X, y)
