"""Every row of the README's bad-input table: what the user does, and the one clear error they
see from ``layerwise run`` (exit code 2, a message naming the problem and the fix), with nothing
written to the tracking store when the input is refused before training."""
import gzip
import http.server
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
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
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
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


# -- the config file and its keys -------------------------------------------------------------
TINY = ["--set", "pretrain.epochs=1", "--set", "pretrain.layers.0.n_hidden=8",
        "--set", "pretrain.layers.1.n_hidden=4", "--set", "finetune.methods=[]",
        "--set", "baselines.methods=[knn]", "--set", "baselines.inputs=[pixels]"]


def test_config_path_is_a_folder(run, tmp_path):
    (tmp_path / "configs").mkdir()
    _refused(run(str(tmp_path / "configs")), "is a folder", "give a YAML file")


def test_config_file_not_utf8(run, tmp_path):
    (tmp_path / "latin.yaml").write_bytes(b"name: caf\xe9\n")
    _refused(run(str(tmp_path / "latin.yaml")), "latin.yaml cannot be read (not UTF-8 text)")


def test_negative_seed_names_the_key(run):
    _refused(run("--set", "seed=-1"), "seed: Input should be greater than or equal to 0", "(got -1)")


def test_unknown_accelerator_refused_before_the_store(run):
    _refused(run("--set", "trainer.accelerator=tpuu"), "trainer.accelerator='tpuu'", "tpuu",
             "--set trainer.accelerator=")


def test_unknown_strategy_refused_before_the_store(run):
    _refused(run("--set", "trainer.strategy=dpp"), "trainer.strategy='dpp'")


def test_too_many_tangents_names_the_key(run):
    _refused(run("--set", "finetune.n_tangents=500"), "finetune.n_tangents=500",
             "pretrain.layers.1.n_hidden=100", "finetune.n_tangents <= 100")


def test_more_tangents_than_input_dimensions(run):
    _refused(run("--set", "finetune.n_tangents=80"), "finetune.n_tangents=80", "only 64 input dimensions")


# -- files the tool reads or caches -----------------------------------------------------------
def test_truncated_npz(run, tmp_path):
    path = Path(_npz(tmp_path, GOOD_X, GOOD_Y))
    path.write_bytes(path.read_bytes()[:300])
    _refused(run("--set", "data.name=npz", "--set", f"data.path={path}"),
             f"{path}: cannot be read as an .npz archive", "truncated", "np.savez")


def test_layer_checkpoint_with_other_shapes(run):
    import torch

    assert run(*TINY).exit_code == 0
    saved = next(Path("mlruns/cache").glob("layer1-*.pt"))
    blob = torch.load(saved, weights_only=True)
    blob["state_dict"] = {k: torch.zeros(3, *v.shape) for k, v in blob["state_dict"].items()}
    torch.save(blob, saved)  # the right digest, tensors of another layer
    result = run(*TINY)
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert f"{saved.resolve().name} holds tensors that do not fit layer" in text and "delete it" in text
    assert "Traceback" not in result.output


def test_damaged_lightning_checkpoint_of_an_interrupted_layer(run):
    assert run(*TINY).exit_code == 0
    next(Path("mlruns/cache").glob("layer1-*.pt")).unlink()  # as if killed mid-layer
    last = next(Path("mlruns/cache").glob("layer1-*-ckpt/last.ckpt"))
    last.write_bytes(last.read_bytes()[:100])
    result = run(*TINY)
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert f"{last} cannot be read as a Lightning checkpoint" in text and "delete it" in text
    assert "Traceback" not in result.output


def test_cached_results_file_edited_by_hand_is_recomputed(run):
    assert run(*TINY).exit_code == 0
    cached = next(Path("mlruns/cache/results").glob("*-baselines-knn.json"))
    cached.write_text("{not json")
    result = run(*TINY)
    assert result.exit_code == 0, result.output
    assert "| knn | pixels |" in result.output
    assert "layer 1 of 2 loaded from the cache" in result.output  # the layers were not retrained
    assert "baseline knn: from the cache" not in result.output and "baseline knn (" in result.output


# -- the tracking store -----------------------------------------------------------------------
def test_plain_path_as_tracking_uri(run, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "./mlruns")
    _refused(run(*TINY), "MLFLOW_TRACKING_URI='./mlruns' is a folder path", "sqlite:///",
             "mlruns/mlflow.db", "unset it")


def test_unknown_scheme_in_tracking_uri(run):
    _refused(run(*TINY, "--set", "tracking.uri=sqlit:///x.db"),
             "tracking.uri='sqlit:///x.db' has the unknown scheme 'sqlit'")


def _importable(name):
    import importlib.util

    return importlib.util.find_spec(name) is not None


@pytest.mark.skipif(_importable("psycopg") or _importable("psycopg2"), reason="a driver is installed")
def test_database_uri_without_its_driver(run):
    result = run(*TINY, "--set", "tracking.uri=postgresql://me:secret@127.0.0.1:1/runs")
    _store_refused(result, "the tracking store 127.0.0.1:1/runs needs the Python package", "pip install it")
    assert "secret" not in result.output


def _store_refused(result, *patterns):
    assert result.exit_code == 2, (result.exit_code, result.output)
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    text = " ".join(result.output.split())
    for p in patterns:
        assert p in text, f"{p!r} not in: {text}"


def test_store_folder_is_a_file(run):
    Path("mlruns").write_text("not a folder")
    _store_refused(run(*TINY), "mlruns/mlflow.db cannot be written", "mlruns is a file, not a folder")
    assert Path("mlruns").read_text() == "not a folder"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders")
@pytest.mark.parametrize("with_store", [False, True])
def test_read_only_store_folder(run, with_store):
    from pipelines import tracking

    Path("mlruns").mkdir()
    if with_store:
        tracking.setup(None, "layerwise")
    before = sorted(p.name for p in Path("mlruns").iterdir())
    Path("mlruns").chmod(0o555)
    try:
        t0 = time.monotonic()
        _store_refused(run(*TINY), "mlruns/mlflow.db cannot be written", "not writable")
        assert time.monotonic() - t0 < 30
    finally:
        Path("mlruns").chmod(0o755)
    assert sorted(p.name for p in Path("mlruns").iterdir()) == before


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_damaged_store_file(run, damage):
    from pipelines import tracking

    db = Path("mlruns/mlflow.db")
    if damage == "garbage":
        db.parent.mkdir()
        db.write_bytes(b"this is no database " * 200)
    else:
        tracking.setup(None, "layerwise")
        db.write_bytes(db.read_bytes()[: db.stat().st_size // 2])
    before = db.read_bytes()
    _store_refused(run(*TINY), f"the tracking store {db.resolve()} is damaged", "move it away")
    assert db.read_bytes() == before and not Path("mlruns/cache").exists()


class _Unavailable(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - the handler's protocol
        self.send_response(503)
        self.end_headers()
        self.wfile.write(b"down for maintenance")

    do_POST = do_GET

    def log_message(self, *args):
        pass


@pytest.fixture
def server_503():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Unavailable)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_tracking_server_answering_503_falls_back_within_seconds(run, monkeypatch, server_503):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server_503)
    t0 = time.monotonic()
    result = run(*TINY)
    assert time.monotonic() - t0 < 30, "the 503 server held the run"
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert f"warning: the MLflow tracking server {server_503} answers HTTP 503" in text
    assert "local store" in text and Path("mlruns/mlflow.db").exists()


def test_tracking_server_that_never_answers_falls_back(run, monkeypatch):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # the kernel accepts connections; nobody ever answers
    try:
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        t0 = time.monotonic()
        result = run(*TINY)
        assert time.monotonic() - t0 < 30
    finally:
        silent.close()
    assert result.exit_code == 0, result.output
    assert "unreachable" in result.output and "timed out" in result.output


# -- the run itself ---------------------------------------------------------------------------
def test_diverging_fine_tuning_stops_naming_the_method(run):
    result = run("--set", "pretrain.epochs=1", "--set", "pretrain.layers.0.n_hidden=16",
                 "--set", "pretrain.layers.1.n_hidden=8", "--set", "finetune.methods=[mlp]",
                 "--set", "finetune.lr=1e6", "--set", "finetune.epochs=30",
                 "--set", "baselines.methods=[]")
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "error: finetune mlp (finetune.lr=1000000.0)" in text and "learning rate too high" in text
    assert not list(Path("mlruns/cache/results").glob("*-finetune-mlp.json")), "a diverged row was cached"


def _statuses(root: Path) -> list[str]:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("layerwise")
    return [r.info.status for r in client.search_runs([exp.experiment_id])]


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_mid_layer_exits_with_its_code_and_marks_runs_killed(tmp_path, sig, code):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "run", "--set", "pretrain.epochs=500",
         "--set", "pretrain.layers.0.n_hidden=8", "--set", "pretrain.layers.1.n_hidden=4",
         "--set", "finetune.methods=[]", "--set", "baselines.methods=[]"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list((tmp_path / "mlruns" / "cache").glob("layer1-*-ckpt/last.ckpt")):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert f"error: interrupted by {sig.name}" in err and "Traceback" not in err, err
    assert set(_statuses(tmp_path)) == {"KILLED"}  # the parent, pretrain and layer 1
    assert not list((tmp_path / "mlruns").rglob("*.tmp"))
