"""MLflow tracking: where runs go, one parent run per pipeline, one nested run per stage.

The store is ``./mlruns`` by default: MLflow's SQL backend in ``mlruns/mlflow.db`` and
artifacts under ``mlruns/artifacts`` (MLflow 3 refuses a bare file store unless forced).
``$MLFLOW_TRACKING_URI`` wins when set, and a config's ``tracking.uri`` wins over both.
"""
from __future__ import annotations

import contextlib
import os
import platform
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Iterator

import mlflow
import mlflow.data
from lightning.fabric.utilities.rank_zero import rank_zero_only
from mlflow.tracking import MlflowClient

from pipelines import store
from pipelines.files import file_lock
from pipelines.interrupts import Interrupted

DEFAULT_ROOT = Path("mlruns")


def default_uri(root: str | Path = DEFAULT_ROOT) -> str:
    root = Path(root).resolve()
    return f"sqlite:///{root / 'mlflow.db'}"


def resolve_uri(uri: str | None = None, root: str | Path = DEFAULT_ROOT) -> str:
    """The tracking URI: explicit, else ``$MLFLOW_TRACKING_URI``, else the store under ``root``."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or default_uri(root)


def artifact_root(uri: str) -> str | None:
    """Where a new experiment's artifacts go: ``mlruns/artifacts`` beside a local SQLite store."""
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        return (db.parent / "artifacts").resolve().as_uri()
    return None  # a server decides


def is_rank_zero() -> bool:
    """True in the process of global rank 0 (and in any non-distributed run). Read from the
    launcher's environment (RANK, LOCAL_RANK, SLURM_PROCID), as Lightning does."""
    return getattr(rank_zero_only, "rank", 0) == 0


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail early, with the fix, when an HTTP tracking server does not answer within ``timeout``
    seconds or answers with a server error (5xx: MLflow's client would retry it for minutes)."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code >= 500:
            raise ConnectionError(
                f"the MLflow tracking server {uri} answers HTTP {e.code} ({e.reason}). Fix the "
                f"server, or unset MLFLOW_TRACKING_URI / tracking.uri to track locally in "
                f"./mlruns.") from None
        return  # it answered, even if not with 200
    except (urllib.error.URLError, OSError) as e:
        raise ConnectionError(
            f"the MLflow tracking server {uri} is unreachable ({getattr(e, 'reason', e)}). "
            f"Start it, fix MLFLOW_TRACKING_URI / tracking.uri, or unset it to track locally "
            f"in ./mlruns.") from None


def setup(uri: str | None = None, experiment: str = "layerwise") -> str:
    """Point MLflow at the store, create the experiment if needed; return its id."""
    uri = resolve_uri(uri)
    check_reachable(uri)
    store.check_local_store(uri)
    db = store.sqlite_path(uri)
    # two runs starting in one folder: one creates the tables and the experiment, the other waits
    lock = file_lock(db.parent / ".mlflow.db.lock") if db else contextlib.nullcontext()
    with lock:
        if db:
            db.parent.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(uri)
        try:
            exp = mlflow.get_experiment_by_name(experiment)
            if exp is None:
                return mlflow.create_experiment(experiment, artifact_location=artifact_root(uri))
            return exp.experiment_id
        except Exception as e:
            failure = store.store_failure(uri, e)
            if failure is None:
                raise
            raise failure from None


def open_store(uri: str | None, *, root: str | Path = DEFAULT_ROOT,
               experiment: str = "layerwise") -> tuple[str, str]:
    """The store every ``run`` and ``bench`` writes to, and the experiment's id in it.

    The URI is ``uri``, else ``$MLFLOW_TRACKING_URI``, else the local store under ``root``. A
    server that does not answer is replaced by the local store, with a warning; under DDP, the
    processes of rank > 0 write to a throwaway store of their own (only rank 0 tracks).
    """
    store.check_uri(resolve_uri(uri, root), store.uri_origin(uri))
    uri = resolve_uri(uri, root)
    if uri.startswith(("http://", "https://")):  # bound each later request too
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    try:
        check_reachable(uri)
    except ConnectionError as e:
        local = default_uri(root)
        print(f"warning: {e}\nwriting this run to the local store {local} instead", file=sys.stderr)
        uri = local
    if not is_rank_zero():
        uri = default_uri(tempfile.mkdtemp(prefix="layerwise-rank-"))
    return uri, setup(uri, experiment)


#: the source tree whose edits make a commit "-dirty" (results and caches written beside it do not)
SOURCE_PATHS = ("pretrain", "finetune", "pipelines", "pyproject.toml")


def git_commit(root: str | Path | None = None) -> str:
    """The commit of the layerwise source tree (``root``: its checkout, default this package's),
    with ``-dirty`` when ``SOURCE_PATHS`` differ from it, or "unknown" outside a git checkout."""
    root = Path(__file__).resolve().parent.parent if root is None else Path(root)
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        if out.returncode != 0:
            return "unknown"
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", *SOURCE_PATHS],
                                 cwd=root, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() + ("-dirty" if changed.returncode == 0 and changed.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment_tags() -> dict[str, str]:
    """Package versions and the git commit, recorded on every parent run."""
    tags = {"python": sys.version.split()[0], "platform": platform.platform(),
            "git_commit": git_commit(), OWNER_TAG: owner()}
    for pkg in ("layerwise", "torch", "lightning", "scikit-learn", "mlflow", "numpy"):
        try:
            tags[f"version.{pkg}"] = version(pkg)
        except PackageNotFoundError:
            pass
    return tags


@contextlib.contextmanager
def start_run(name: str, *, experiment_id: str, nested: bool = False,
              tags: dict[str, str] | None = None) -> Iterator["mlflow.ActiveRun"]:
    """An MLflow run that ends FAILED on an exception and KILLED on Ctrl-C or SIGTERM, never
    left RUNNING."""

    with ended_by_outcome(mlflow.start_run(run_name=name, experiment_id=experiment_id, nested=nested,
                                           tags=tags)) as run:
        yield run


@contextlib.contextmanager
def ended_by_outcome(run: "mlflow.ActiveRun") -> Iterator["mlflow.ActiveRun"]:
    """The active ``run``, ended FINISHED, FAILED on an exception, KILLED on Ctrl-C or SIGTERM."""
    try:
        yield run
    except (KeyboardInterrupt, Interrupted):
        mlflow.end_run(status="KILLED")
        raise
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    else:
        mlflow.end_run(status="FINISHED")


#: the process that owns a parent run, ``host:pid``: a run left RUNNING is stale only when that
#: process is gone
OWNER_TAG = "layerwise.owner"


def owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def owner_alive(tag: str | None) -> bool:
    """Whether the process named by an owner tag may still be running. A run without the tag
    (older versions) counts as dead; one owned on another host as alive, since its process
    cannot be checked from here."""
    if not tag or ":" not in tag:
        return False
    host, _, pid = tag.rpartition(":")
    if host != socket.gethostname():
        return True
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # a process of another user has that pid
    return True


def mark_stale_runs(experiment_id: str, digest: str) -> list[str]:
    """Mark runs of the same config left RUNNING by a process that is gone (and their nested
    runs) as KILLED; return their ids. A process killed with SIGKILL cannot end its own runs;
    a run whose owner still runs (another run of the same config, started at the same time in
    the same folder) is left alone."""
    client = MlflowClient()
    stale = [r.info.run_id for r in client.search_runs(
        [experiment_id], f"tags.`layerwise.digest` = '{digest}' and attributes.status = 'RUNNING'")
        if not owner_alive(r.data.tags.get(OWNER_TAG))]
    frontier = list(stale)
    while frontier:  # nested runs, level by level (tag filters take no IN lists)
        parent = frontier.pop()
        children = [c.info.run_id for c in client.search_runs(
            [experiment_id], f"attributes.status = 'RUNNING' and tags.`mlflow.parentRunId` = '{parent}'")]
        frontier += children
        stale += children
    for run_id in stale:
        client.set_terminated(run_id, status="KILLED")
    return stale


def log_config(cfg) -> None:
    """The resolved config as params (dotted keys) and as ``config.yaml``."""
    params = cfg.flat()
    items = list(params.items())
    for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        mlflow.log_params(dict(items[i:i + 100]))
    mlflow.log_text(cfg.to_yaml(), "config.yaml")


def log_figure(fig, path: str) -> None:
    mlflow.log_figure(fig, path)


def log_text_artifact(text: str, path: str) -> None:
    mlflow.log_text(text, path)


def log_file(local_path: str | Path, artifact_dir: str | None = None) -> None:
    mlflow.log_artifact(str(local_path), artifact_dir)


def log_dataset_input(X, y, *, name: str, source: str, context: str) -> None:
    """Log a dataset as an MLflow input (schema, digest, source), not its contents."""
    ds = mlflow.data.from_numpy(X, targets=y, source=source, name=name)
    mlflow.log_input(ds, context=context)


def metric_history(run_id: str) -> dict[str, list[tuple[int, float]]]:
    """Every metric of a run as ``{name: [(step, value), ...]}`` (Lightning logs epochs as steps
    of its own; the epoch is logged as the metric ``epoch``, so curves use the index)."""
    client = MlflowClient()
    out = {}
    for name in client.get_run(run_id).data.metrics:
        if name == "epoch":
            continue
        hist = sorted(client.get_metric_history(run_id, name), key=lambda m: (m.step, m.timestamp))
        out[name] = [(i, m.value) for i, m in enumerate(hist)]
    return out
