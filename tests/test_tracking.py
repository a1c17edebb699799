"""MLflow layout: a real SQLite store under mlruns/, nested runs, params, failed runs marked."""
import subprocess
import sys

import mlflow
import pytest

from pipelines import tracking
from pipelines.config import load_config
from pipelines.files import atomic_write_text


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield tmp_path
    mlflow.set_tracking_uri(None)


def test_default_store_is_sqlite_in_mlruns(store):
    uri = tracking.resolve_uri()
    assert uri == f"sqlite:///{store / 'mlruns' / 'mlflow.db'}"
    exp = tracking.setup(None, "t")
    assert (store / "mlruns" / "mlflow.db").exists()
    assert mlflow.get_experiment(exp).artifact_location == (store / "mlruns" / "artifacts").as_uri()


def test_env_uri_wins_and_explicit_uri_wins_over_env(store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    assert tracking.resolve_uri() == "sqlite:///elsewhere.db"
    assert tracking.resolve_uri("sqlite:///x.db") == "sqlite:///x.db"


def test_parent_and_nested_runs_readable_back(store):
    exp = tracking.setup(None, "t")
    cfg = load_config("quickstart", ["seed=5"])
    with tracking.start_run("parent", experiment_id=exp, tags=tracking.environment_tags()) as p:
        tracking.log_config(cfg)
        with tracking.start_run("stage", experiment_id=exp, nested=True) as c:
            mlflow.log_metric("m", 1.5)
    runs = mlflow.search_runs(experiment_ids=[exp])
    assert len(runs) == 2
    parent = runs[runs.run_id == p.info.run_id].iloc[0]
    child = runs[runs.run_id == c.info.run_id].iloc[0]
    assert parent["params.seed"] == "5" and parent["params.data.name"] == "digits"
    assert parent["tags.version.torch"]
    assert child["tags.mlflow.parentRunId"] == p.info.run_id
    assert child["metrics.m"] == 1.5
    assert set(runs.status) == {"FINISHED"}
    text = mlflow.artifacts.load_text(f"runs:/{p.info.run_id}/config.yaml")
    assert "seed: 5" in text


def test_failed_run_is_marked_failed_not_left_running(store):
    exp = tracking.setup(None, "t")
    with pytest.raises(RuntimeError):
        with tracking.start_run("boom", experiment_id=exp) as r:
            raise RuntimeError("x")
    assert mlflow.get_run(r.info.run_id).info.status == "FAILED"


def test_unreachable_server_is_a_clear_error():
    with pytest.raises(ConnectionError, match="unreachable.*unset it to track locally"):
        tracking.check_reachable("http://127.0.0.1:9", timeout=2)


def test_atomic_write_leaves_no_temporary(tmp_path):
    atomic_write_text(tmp_path / "a" / "t.md", "hello")
    assert (tmp_path / "a" / "t.md").read_text() == "hello"
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["t.md"]


def test_cli_help_imports_no_heavy_library():
    code = ("import sys; from click.testing import CliRunner; from pipelines.cli import main; "
            "r = CliRunner().invoke(main, ['--help']); assert r.exit_code == 0, r.output; "
            "assert 'layerwise run' in r.output; "
            "heavy = [m for m in ('torch', 'lightning', 'mlflow', 'sklearn') if m in sys.modules]; "
            "print(heavy); assert not heavy, heavy")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr + out.stdout


def test_git_commit_is_marked_dirty_by_source_edits_only(tmp_path):
    """A result computed from edited source says so; results and caches written into the
    checkout (untracked or not) leave the commit clean; outside a checkout it is "unknown"."""
    git = lambda *a: subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *a], cwd=tmp_path,
                                    check=True, capture_output=True, text=True).stdout.strip()
    assert tracking.git_commit(tmp_path) == "unknown"
    git("init", "-q")
    for path in ("pretrain/layer.py", "results/cells.csv"):
        (tmp_path / path).parent.mkdir(exist_ok=True)
        (tmp_path / path).write_text("a\n")
    git("add", "."), git("commit", "-qm", "first")
    sha = git("rev-parse", "HEAD")
    assert tracking.git_commit(tmp_path) == sha
    (tmp_path / "results" / "cells.csv").write_text("b\n")  # a results file written by a run
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "new.py").write_text("x\n")  # untracked source: not yet part of any commit
    assert tracking.git_commit(tmp_path) == sha
    (tmp_path / "pretrain" / "layer.py").write_text("b\n")
    assert tracking.git_commit(tmp_path) == f"{sha}-dirty"
