"""Two ``layerwise run`` processes started together in one folder: the store is created once
(the second waits on its lock), a cached layer is trained once (the second waits, then loads
it), both print the same table, and neither takes the other's live run for a stale one."""
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from pipelines import tracking

ARGS = ["run", "--set", "pretrain.epochs=2", "--set", "pretrain.layers.0.n_hidden=8",
        "--set", "pretrain.layers.1.n_hidden=4", "--set", "finetune.methods=[mlp]",
        "--set", "finetune.epochs=2", "--set", "baselines.methods=[knn]",
        "--set", "baselines.inputs=[pixels]", "--quiet"]


def _two_at_once(folder: Path) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    procs = [subprocess.Popen([sys.executable, "-m", "pipelines.cli", *ARGS], cwd=folder, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    tables = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        tables.append(out)
    return tables


def _statuses(folder: Path) -> dict[str, int]:
    client = mlflow.MlflowClient(tracking.default_uri(folder / "mlruns"))
    exp = client.get_experiment_by_name("layerwise")
    out: dict[str, int] = {}
    for r in client.search_runs([exp.experiment_id]):
        out[r.info.status] = out.get(r.info.status, 0) + 1
    return out


@pytest.mark.parametrize("with_store", [False, True], ids=["fresh folder", "existing store"])
def test_two_runs_at_once_finish_alike_and_neither_is_killed(tmp_path, with_store):
    if with_store:
        tracking.setup(tracking.default_uri(tmp_path / "mlruns"), "layerwise")
        mlflow.set_tracking_uri(None)
    a, b = _two_at_once(tmp_path)
    assert a == b and "| mlp | stack |" in a and "| knn | pixels |" in a
    statuses = _statuses(tmp_path)
    assert set(statuses) == {"FINISHED"}, statuses
    parents = [r for r in mlflow.MlflowClient(tracking.default_uri(tmp_path / "mlruns")).search_runs(
        [mlflow.MlflowClient(tracking.default_uri(tmp_path / "mlruns"))
         .get_experiment_by_name("layerwise").experiment_id],
        "tags.`layerwise.digest` != ''")]
    assert len(parents) == 2 and all(tracking.OWNER_TAG in p.data.tags for p in parents)
    assert len(list((tmp_path / "mlruns" / "cache").glob("layer*-*.pt"))) == 2


def test_stale_sweep_spares_live_owners_and_marks_dead_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    exp = tracking.setup(None, "t")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    client = mlflow.MlflowClient()
    ids = {}
    for who, owner in (("live", tracking.owner()), ("dead", f"{tracking.socket.gethostname()}:{dead.pid}"),
                       ("elsewhere", "another-host:1"), ("untagged", None)):
        tags = {"layerwise.digest": "d"} | ({tracking.OWNER_TAG: owner} if owner else {})
        ids[who] = client.create_run(exp, tags=tags).info.run_id
    child = client.create_run(exp, tags={"mlflow.parentRunId": ids["dead"]}).info.run_id
    stale = tracking.mark_stale_runs(exp, "d")
    assert sorted(stale) == sorted([ids["dead"], ids["untagged"], child])
    status = {who: client.get_run(i).info.status for who, i in ids.items()}
    assert status == {"live": "RUNNING", "dead": "KILLED", "elsewhere": "RUNNING", "untagged": "KILLED"}
    mlflow.set_tracking_uri(None)
