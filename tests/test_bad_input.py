"""Every row of the README's bad-input table: what the user does, and the one clear error they
see from ``layerwise run`` (exit code 2, a message naming the problem and the fix), with nothing
written to the tracking store when the input is refused before training."""
import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pipelines.cli import main

MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("LAYERWISE_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.cache/layerwise of the machine

    def invoke(*args):
        result = CliRunner().invoke(main, ["run", *args])
        return result
    return invoke


def _refused(result, *patterns):
    assert result.exit_code == 2, (result.exit_code, result.output)
    text = " ".join(result.output.split())
    for p in patterns:
        assert p in text, f"{p!r} not in: {text}"
    assert not Path("mlruns").exists(), "a refused input wrote to the tracking store"


def _npz(tmp_path, X, y, name="data.npz"):
    path = tmp_path / name
    np.savez(path, X=X, y=y)
    return str(path)


GOOD_X = np.random.default_rng(0).random((60, 5)).astype(np.float32)
GOOD_Y = np.arange(60) % 3


def test_unknown_config_key(run):
    _refused(run("--set", "pretrain.layers.0.n_hiden=5"), "pretrain.layers.0.n_hiden: unknown key")


def test_unknown_layer_kind(run):
    _refused(run("--set", "pretrain.layers.0.kind=vae"),
             "pretrain.layers.0.kind: unknown layer kind 'vae'", "choose one of ae, dae")


def test_bad_yaml(run, tmp_path):
    (tmp_path / "bad.yaml").write_text("seed: 1\npretrain: {layers: [\n")
    _refused(run(str(tmp_path / "bad.yaml")), "is not valid YAML at line")


def test_negative_hyperparameter(run):
    _refused(run("--set", "pretrain.layers.0.lr=-0.1"), "pretrain.layers.0.lr", "greater than 0", "-0.1")


def test_probability_out_of_range(run):
    _refused(run("--set", "pretrain.layers.0.kind=dae", "--set", "pretrain.layers.0.corruption_level=1.5"),
             "pretrain.layers.0 (dae)", "1.5")


def test_option_a_kind_does_not_take(run):
    _refused(run("--set", "pretrain.layers.1.kind=rbm", "--set", "pretrain.layers.1.contraction=0.1"),
             "pretrain.layers.1 (rbm)", "does not accept 'contraction'")


def test_labels_not_divisible_by_classes(run):
    _refused(run("--set", "finetune.labels=55"), "labels=55 is not divisible by the 10 classes")


def test_more_labels_than_exist(run):
    _refused(run("--set", "finetune.labels=2000"), "per class asked, but class")


def test_npz_wrong_shape(run, tmp_path):
    _refused(run("--set", "data.name=npz", "--set", f"data.path={_npz(tmp_path, GOOD_X[:, 0], GOOD_Y)}"),
             "must be 2-D")


def test_npz_nan(run, tmp_path):
    X = GOOD_X.copy()
    X[3, 2] = np.nan
    _refused(run("--set", "data.name=npz", "--set", f"data.path={_npz(tmp_path, X, GOOD_Y)}"),
             "has NaN or infinite values")


def test_npz_values_outside_unit_interval(run, tmp_path):
    _refused(run("--set", "data.name=npz", "--set", f"data.path={_npz(tmp_path, GOOD_X * 7 - 3, GOOD_Y)}"),
             "values outside [0, 1]", "scale it")


def test_npz_labels_out_of_range(run, tmp_path):
    y = GOOD_Y.copy()
    y[y == 1] = 7  # classes 0, 2, 7: not 0..K-1
    _refused(run("--set", "data.name=npz", "--set", f"data.path={_npz(tmp_path, GOOD_X, y)}"),
             "labels must be 0..K-1")


def test_npz_negative_labels(run, tmp_path):
    _refused(run("--set", "data.name=npz", "--set", f"data.path={_npz(tmp_path, GOOD_X, GOOD_Y - 1)}"),
             "negative labels")


def test_missing_data_file(run, tmp_path):
    _refused(run("--set", "data.name=mnist", "--data-dir", str(tmp_path / "nowhere")),
             "MNIST files not found", "train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz",
             "--data-dir")


@pytest.mark.skipif(not MNIST.exists(), reason="shared MNIST files not present")
def test_corrupt_data_file_md5(run, tmp_path):
    d = tmp_path / "mn"
    d.mkdir()
    for f in MNIST.glob("*-ubyte.gz"):  # the four IDX files (the folder may hold caches too)
        shutil.copy(f, d / f.name)
    with gzip.open(d / "t10k-labels-idx1-ubyte.gz", "wb") as f:  # valid gzip, other bytes
        f.write(b"\x00" * 100)
    _refused(run("--set", "data.name=mnist", "--data-dir", str(d)), "t10k-labels-idx1-ubyte.gz", "md5")


def test_cross_entropy_layer_on_codes_outside_unit_interval(run):
    # tanh codes lie in (-1, 1): a cross-entropy layer above them is refused with the fix
    result = run("--set", "pretrain.layers.0.hidden_unit=tanh", "--set", "pretrain.epochs=1",
                 "--set", "finetune.methods=[]", "--set", "baselines.methods=[]")
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "pretrain.layers.1 (layer 2, cae_h)" in text and "inputs in [0, 1]" in text
    assert "loss='mse'" in text


def test_diverging_training_stops_naming_layer_and_epoch(run):
    result = run("--set", "pretrain.layers.0.lr=1e30", "--set", "pretrain.layers.0.optimizer=sgd",
                 "--set", "pretrain.epochs=2", "--set", "finetune.methods=[]",
                 "--set", "baselines.methods=[]")
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "layer 1" in text and "epoch 0" in text and "learning rate" in text
    assert not list(Path("mlruns/cache").glob("layer1-*.pt")), "NaN weights were saved"


def test_tampered_layer_checkpoint(run):
    args = ["--set", "pretrain.epochs=1", "--set", "pretrain.layers.0.n_hidden=8",
            "--set", "pretrain.layers.1.n_hidden=4", "--set", "finetune.methods=[]",
            "--set", "baselines.methods=[]"]
    assert run(*args).exit_code == 0
    saved = next(Path("mlruns/cache").glob("layer1-*.pt"))
    saved.write_bytes(saved.read_bytes()[:200])
    result = run(*args)
    assert result.exit_code == 2 and "cannot be read as a layer checkpoint" in result.output
    assert "delete it" in result.output


def test_unreachable_tracking_server_still_writes_locally(run, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    result = run("--set", "pretrain.epochs=1", "--set", "pretrain.layers.0.n_hidden=8",
                 "--set", "pretrain.layers.1.n_hidden=4", "--set", "finetune.methods=[]",
                 "--set", "baselines.methods=[knn]", "--set", "baselines.inputs=[pixels]")
    assert result.exit_code == 0, result.output
    assert "unreachable" in result.output and "local store" in result.output
    assert Path("mlruns/mlflow.db").exists()
