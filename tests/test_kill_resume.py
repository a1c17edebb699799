"""Kill a running pipeline with SIGKILL in the middle of a layer, start it again, and check that
it resumes: the final numbers equal an uninterrupted run's, the killed MLflow run is marked
KILLED, the interrupted layer continues from its checkpoint and no stage runs twice."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

OVERRIDES = ["pretrain.epochs=6", "pretrain.layers.0.n_hidden=128", "pretrain.layers.0.batch_size=8",
             "pretrain.layers.1.n_hidden=16", "finetune.epochs=6", "finetune.methods=[mlp]",
             "finetune.labels=100", "baselines.methods=[knn]", "baselines.inputs=[codes]"]


def _start(root: Path) -> subprocess.Popen:
    root.mkdir(exist_ok=True)
    uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    code = ("import json, sys\n"
            "from pipelines.config import load_config\nfrom pipelines.run import run_pipeline\n"
            f"cfg = load_config('quickstart', {OVERRIDES + [f'tracking.uri={uri}']!r})\n"
            f"res = run_pipeline(cfg, root={str(root / 'mlruns')!r})\n"
            "print('ROWS', json.dumps([(r.method, r.inputs, r.test) for r in res.rows]))\n")
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=root)


def _rows(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    return next(line for line in out.splitlines() if line.startswith("ROWS"))


def test_sigkill_mid_layer_then_resume_equals_uninterrupted(tmp_path):
    reference = _rows(_start(tmp_path / "a"))

    root = tmp_path / "b"
    proc = _start(root)
    cache = root / "mlruns" / "cache"
    deadline = time.time() + 300
    while time.time() < deadline:  # wait until layer 1 has a checkpoint but is not finished
        ckpts = list(cache.glob("layer1-*-ckpt/last.ckpt"))
        if ckpts and not list(cache.glob("layer1-*.pt")):
            break
        assert proc.poll() is None, "the pipeline finished before it could be killed"
        time.sleep(0.05)
    else:
        pytest.fail("layer 1 never wrote a checkpoint")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not list(cache.glob("layer1-*.pt")), "layer 1 was already finished when killed"
    assert not list(cache.rglob("*.tmp")), "a half-written file was left where a later run trusts it"

    assert _rows(_start(root)) == reference  # the same numbers as the uninterrupted run

    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    try:
        runs = mlflow.search_runs(experiment_names=["layerwise"])
        names = runs["tags.mlflow.runName"]
        parents = runs[runs["tags.layerwise.config"] == "quickstart"]
        assert sorted(parents.status) == ["FINISHED", "KILLED"]
        assert "RUNNING" not in set(runs.status)
        layer1 = runs[names.str.startswith("layer 1")]
        assert sorted(layer1.status) == ["FINISHED", "KILLED"]
        resumed = layer1[layer1.status == "FINISHED"].run_id.iloc[0]
        epochs = len(mlflow.MlflowClient().get_metric_history(resumed, "train/loss"))
        assert 0 < epochs < 6, f"the resumed layer 1 ran {epochs} epochs: it started over"
        assert (names.str.startswith("layer 2")).sum() == 1  # layer 2 ran once
        assert (names == "finetune mlp").sum() == 1
    finally:
        mlflow.set_tracking_uri(None)
