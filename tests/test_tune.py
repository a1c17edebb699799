"""`layerwise tune` on digits with tiny configs and a real SQLite Optuna storage: the study, its
MLflow runs, pruning, resuming, the same trials from the same command, the test set read once,
the shipped spaces, bad input refused before anything runs.

One seeded 6-trial study (the ``study`` fixture) serves every test that reads a study; the
two-process and SIGKILL tests start their own processes and are ``slow``."""
import os
import signal
import subprocess
import sys
import time

import mlflow
import numpy as np
import optuna
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from pipelines.cli import main
from pipelines.config import ConfigError, load_config
from pipelines.data.datasets import load_dataset
from pipelines.run import run_pipeline
from pipelines.search.space import check_space, load_space, shipped_spaces
from pipelines.stages.checks import check_before_writing
from pipelines.training import quiet_lightning
from pipelines.tune import tune

TINY = ["pretrain.epochs=2", "pretrain.layers=[{kind: cae, n_hidden: 16}]", "finetune.epochs=6",
        "finetune.patience=6", "finetune.methods=[mlp]", "baselines.methods=[]"]
SPACE = """objective: mlp
space:
  finetune.lr: {low: 0.0003, high: 0.03, log: true}
  finetune.weight_decay: {low: 0.0, high: 0.001}
"""


class PruneTrial(optuna.pruners.BasePruner):
    """Prunes trial ``number`` once it has reported epoch ``epoch``: a pruned trial on cue."""

    def __init__(self, number: int, epoch: int):
        self.number, self.epoch = number, epoch

    def prune(self, study, trial) -> bool:
        return trial.number == self.number and trial.last_step is not None and trial.last_step >= self.epoch


def _overrides(root):
    return TINY + [f"tracking.uri=sqlite:///{root / 'mlruns' / 'mlflow.db'}"]


def _tune(root, trials, space="space.yaml", **kw):
    (root / "space.yaml").write_text(SPACE)
    kw.setdefault("pruner", PruneTrial(1, 2))
    return tune("quickstart", root / space, trials=trials, study="s", overrides=_overrides(root),
                root=root / "mlruns", **kw)


def _trials(root):
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{root / 'mlruns' / 'optuna.db'}")
    return sorted(study.trials, key=lambda t: t.number)


def _runs(result):
    mlflow.set_tracking_uri(result.tracking_uri)
    client = MlflowClient()
    exp = client.get_run(result.run_id).info.experiment_id
    return client, {r.info.run_id: r for r in client.search_runs([exp], max_results=1000)}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The issue's seeded 6-trial study on digits (trial 1 pruned at epoch 2), shared."""
    root = tmp_path_factory.mktemp("tune")
    result = _tune(root, 6)
    yield root, result, _trials(root)  # its trials as they were before any test extends it
    mlflow.set_tracking_uri(None)


def test_six_trials_are_nested_runs_with_states_params_and_curves(study):
    root, result, _ = study
    trials = _trials(root)
    assert [t.state.name for t in trials] == ["COMPLETE", "PRUNED"] + ["COMPLETE"] * 4
    assert trials[1].user_attrs["pruned_epoch"] == 2
    client, runs = _runs(result)
    study_runs = [r for r in runs.values() if r.data.tags.get("layerwise.role") == "study"]
    assert [r.info.run_id for r in study_runs] == [result.run_id]
    by_number = {int(r.data.tags["layerwise.trial"]): r for r in runs.values()
                 if r.data.tags.get("layerwise.role") == "trial"}
    assert sorted(by_number) == list(range(6))
    for t in trials:
        run = by_number[t.number]
        assert run.data.tags["mlflow.parentRunId"] == result.run_id
        assert run.data.tags["layerwise.state"] == t.state.name
        assert {k: float(v) for k, v in run.data.params.items()} == pytest.approx(t.params)
        curve = client.get_metric_history(run.info.run_id, "val_error")
        assert [m.step for m in sorted(curve, key=lambda m: m.step)] == (
            [0, 1, 2] if t.state.name == "PRUNED" else list(range(6)))
    assert by_number[1].data.tags["layerwise.pruned_epoch"] == "2"
    assert by_number[0].data.metrics["valid_error"] == pytest.approx(trials[0].value)


def test_trials_changing_only_finetuning_load_the_cached_layers(study):
    _, result, _ = study
    client, runs = _runs(result)
    loaded = {}
    for r in runs.values():
        if r.data.tags.get("mlflow.runName") == "pretrain":
            pipeline = runs[r.data.tags["mlflow.parentRunId"]]
            trial = runs.get(pipeline.data.tags.get("mlflow.parentRunId"))
            if trial is not None and trial.data.tags.get("layerwise.role") == "trial":
                loaded[int(trial.data.tags["layerwise.trial"])] = r.data.params["layers_from_cache"]
    assert loaded == {0: "0", 1: "1", 2: "1", 3: "1", 4: "1", 5: "1"}


def test_the_test_set_is_evaluated_once_for_the_best_trial(study):
    root, result, _ = study
    client, runs = _runs(result)
    tested = [r for r in runs.values() if "test/error" in r.data.metrics]
    assert len(tested) == 1  # the final run's mlp, nothing during the search
    pipeline = runs[tested[0].data.tags["mlflow.parentRunId"]]  # finetune stage
    pipeline = runs[pipeline.data.tags["mlflow.parentRunId"]]
    assert pipeline.data.tags["mlflow.parentRunId"] == result.run_id
    best = min((t for t in _trials(root) if t.state.name == "COMPLETE"), key=lambda t: t.value)
    assert result.best_trial == best.number
    assert result.best_row.valid == pytest.approx(best.value)  # the best trial, reproduced
    assert result.best_row.test == pytest.approx(tested[0].data.metrics["test/error"])
    assert runs[result.run_id].data.metrics["best/test_error"] == pytest.approx(result.best_row.test)
    best_cfg = load_config(str(result.best_path))
    assert best_cfg.finetune.lr == best.params["finetune.lr"]


def test_six_seeded_trials_beat_their_median_and_the_same_command_gives_the_same_trials(study, tmp_path):
    """Issue 15's first "done when": the best of a seeded 6-trial study on digits is below the
    median complete trial's validation error, and the same command again (in an empty folder,
    so that nothing is reused) gives the same trials: the same values, the same errors."""
    _, first, trials = study
    complete = [t.value for t in trials if t.state.name == "COMPLETE"]
    assert len(trials) == 6 and len(complete) == 5
    assert first.best_valid == min(complete) < float(np.median(complete))
    again = _tune(tmp_path, 6)
    assert [(t.params, t.value) for t in _trials(tmp_path)] == [(t.params, t.value) for t in trials]
    assert (again.best_trial, again.best_values, again.best_valid) == (
        first.best_trial, first.best_values, first.best_valid)


def test_a_second_tune_with_more_trials_extends_the_study(study):
    root, first, before = study
    again = _tune(root, 7)
    trials = _trials(root)
    assert len(trials) == 7
    assert [(t.params, t.value) for t in trials[:6]] == [(t.params, t.value) for t in before]
    assert trials[6].params not in [t.params for t in before]  # a new draw, not trial 0's again
    assert again.run_id == first.run_id  # one MLflow parent run per study


def _npz(path, ds, poison: bool):
    X_test, y_test = ds.X_test, ds.y_test
    if poison:
        rng = np.random.default_rng(1)
        X_test, y_test = rng.random(X_test.shape).astype(np.float32), rng.permutation(y_test)
    np.savez(path, X=ds.X, y=ds.y, X_test=X_test, y_test=y_test)


def test_a_trial_reads_no_test_row(tmp_path):
    ds = load_dataset("digits")
    results = {}
    for poison in (False, True):
        path = tmp_path / f"digits-{poison}.npz"
        _npz(path, ds, poison)
        cfg = load_config("quickstart", _overrides(tmp_path) + ["finetune.epochs=2", "data.name=npz",
                                                                f"data.path={path}"])
        for evaluate in (False, True):
            res = run_pipeline(cfg, root=tmp_path / "mlruns", evaluate_test=evaluate)
            results[poison, evaluate] = res.rows[0]
    assert results[False, False].test is None and results[True, False].test is None
    assert results[True, False].valid == results[False, False].valid == results[False, True].valid
    assert results[True, True].test != results[False, True].test  # the poison is there to be read


@pytest.mark.parametrize("space, words", [
    ("objective: mlp\nspace:\n  finetune.betaa: {low: 0.1, high: 1.0}\n", ["finetune.betaa", "unknown key"]),
    ("objective: mlp\nspace:\n  finetune.lr: {low: 0.1, high: 0.01}\n", ["finetune.lr", "low 0.1 > high 0.01"]),
    ("objective: mlp\nspace:\n  finetune.lr: {low: 0.0, high: 0.1, log: true}\n", ["finetune.lr", "log range"]),
    ("objective: mlp\nspace:\n  pretrain.layers.0.contraction: {low: -1.0, high: 1.0}\n",
     ["pretrain.layers.0.contraction", "-1.0", "greater than or equal to 0"]),
    ("objective: mlp\nspace:\n  pretrain.layers.3.contraction: {low: 0.1, high: 1.0}\n",
     ["pretrain.layers.3.contraction", "index"]),
    ("objective: svm\nspace:\n  finetune.lr: {low: 0.01, high: 0.1}\n", ["objective 'svm'", "mtc, mtc_all"]),
])
def test_a_bad_space_is_refused_naming_the_key_before_anything_is_written(tmp_path, space, words):
    (tmp_path / "bad.yaml").write_text(space)
    with pytest.raises(ConfigError) as e:
        tune("quickstart", tmp_path / "bad.yaml", trials=3, overrides=TINY, root=tmp_path / "mlruns")
    for w in words:
        assert w in str(e.value)
    assert not (tmp_path / "mlruns").exists()


def test_an_unknown_space_name_is_refused_listing_the_shipped_spaces(tmp_path):
    with pytest.raises(ConfigError) as e:
        tune("quickstart", "mtcc", trials=2, overrides=TINY, root=tmp_path / "mlruns")
    assert "space 'mtcc' not found" in str(e.value) and "shipped spaces: cae, dbn, ladder, mtc, sda, vat" in str(e.value)
    assert not (tmp_path / "mlruns").exists()


#: each shipped space and the shipped config it searches
SHIPPED = {"mtc": "mnist_mtc", "cae": "mnist_mtc", "sda": "mnist_sda", "dbn": "mnist_dbn", "ladder": "mnist_ladder", "vat": "mnist_vat"}
MNIST_INPUTS = 28 * 28
#: quickstart cut down to a 1-layer CAE+H wide enough for every n_tangents choice of the mtc space
QUICK_MTC = ["pretrain.epochs=1", "pretrain.layers=[{kind: cae_h, n_hidden: 32}]", "finetune.epochs=2",
             "finetune.patience=2", "finetune.methods=[mtc]", "baselines.methods=[]"]


def test_the_shipped_spaces_are_the_benchmarks_methods():
    assert set(shipped_spaces()) == set(SHIPPED)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_a_shipped_space_fits_its_mnist_config(name):
    """Every key is a dotted key of its config, and every range end and choice passes the config
    models and what a run checks before writing (the layers built on MNIST's 784 inputs, the
    tangents, the trainer): the validation ``tune`` runs at start-up, without MNIST's files."""
    quiet_lightning()
    raw = load_config(SHIPPED[name]).model_dump(mode="json")
    space = load_space(name, raw)
    assert space.source == str(shipped_spaces()[name])
    assert space.objective in raw["finetune"]["methods"]
    check_space(space, raw, check=lambda cfg: check_before_writing(cfg, MNIST_INPUTS))


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_a_shipped_space_cites_its_sources_at_the_top_and_above_every_key(name):
    lines = shipped_spaces()[name].read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if not line.startswith("#"))
    header = "\n".join(lines[:start])
    assert "Sources:" in header and f"layerwise tune {SHIPPED[name]} --space {name}" in header
    body = lines[lines.index("space:") + 1:]
    keys = [i for i, line in enumerate(body) if not line.strip().startswith("#")]
    assert len(keys) == len(load_space(name, load_config(SHIPPED[name]).model_dump(mode="json")).params)
    for i in keys:  # a run of keys sits right below its comment
        j = i
        while j in keys:
            j -= 1
        assert j >= 0 and body[j].strip().startswith("# "), f"{name}: no comment above {body[i].strip()}"


@pytest.mark.slow  # ~30 s: every trial pretrains again (the space moves pretraining keys)
def test_a_shipped_space_by_name_runs_a_two_trial_study_on_quickstart(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sets = QUICK_MTC + [f"tracking.uri=sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"]
    out = CliRunner().invoke(main, ["tune", "quickstart", "--space", "mtc", "--trials", "2",
                                    *sum((["--set", o] for o in sets), [])])
    mlflow.set_tracking_uri(None)
    assert out.exit_code == 0, out.output
    assert "best: trial" in out.output
    space = load_space("mtc", load_config("quickstart", QUICK_MTC).model_dump(mode="json"))
    study = optuna.load_study(study_name="quickstart-mtc",
                              storage=f"sqlite:///{tmp_path / 'mlruns' / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    for t in study.trials:
        assert set(t.params) == {p.key for p in space.params}
        for p in space.params:
            value = t.params[p.key]
            assert value in p.choices if p.kind == "categorical" else p.low <= value <= p.high
    best = load_config(str(tmp_path / "mlruns" / "tune" / "quickstart-mtc-best.yaml"))
    assert best.finetune.beta == study.best_params["finetune.beta"]
    assert best.pretrain.layers[0].contraction == study.best_params["pretrain.layers.0.contraction"]


@pytest.mark.parametrize("args, words", [
    (["--sampler", "cmaes"], ["unknown sampler 'cmaes'", "tpe, random, grid"]),
    (["--storage", "sqlite:////no/such/folder/optuna.db"], ["--storage", "/no/such/folder", "does not exist"]),
    (["--storage", "postgresql://tuner@127.0.0.1:9/study"], ["--storage postgresql://", "install"]),
])
def test_the_command_refuses_a_bad_sampler_or_storage_with_one_line(tmp_path, monkeypatch, args, words):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "space.yaml").write_text(SPACE)
    out = CliRunner().invoke(main, ["tune", "quickstart", "--space", "space.yaml", "--trials", "2",
                                    *sum((["--set", o] for o in TINY), []), *args])
    assert out.exit_code == 2, out.output
    for w in words:
        assert w in out.output
    assert not (tmp_path / "mlruns").exists()


def _cli(root, trials, *extra):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"}
    cmd = [sys.executable, "-m", "pipelines.cli", "tune", "quickstart", "--space", "space.yaml",
           "--trials", str(trials), "--study", "s", "--pruner", "none",
           *sum((["--set", o] for o in TINY), []), *extra]
    return subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


@pytest.mark.slow
def test_two_processes_share_one_study(tmp_path):
    (tmp_path / "space.yaml").write_text(SPACE)
    (tmp_path / "mlruns").mkdir()
    procs = [_cli(tmp_path, 4), _cli(tmp_path, 4)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    trials = _trials(tmp_path)
    finished = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(finished) >= 4 and not [t for t in trials if t.state.name == "RUNNING"]
    assert len({tuple(sorted(t.params.items())) for t in finished}) == len(finished)
    assert {t.user_attrs["pid"] for t in finished} == {p.pid for p in procs}
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["layerwise"])
    assert (runs["tags.layerwise.role"] == "study").sum() == 1
    numbers = runs.loc[runs["tags.layerwise.role"] == "trial", "tags.layerwise.trial"].astype(int)
    assert sorted(numbers) == [t.number for t in trials]
    mlflow.set_tracking_uri(None)


@pytest.mark.slow
def test_sigkill_mid_trial_then_resume(tmp_path):
    (tmp_path / "space.yaml").write_text(SPACE)
    (tmp_path / "mlruns").mkdir()
    proc = _cli(tmp_path, 3)
    deadline = time.time() + 300
    while time.time() < deadline:  # one finished trial, the next one running
        try:
            trials = _trials(tmp_path)
        except Exception:  # the study is not created yet
            trials = []
        if [t.state.name for t in trials] == ["COMPLETE", "RUNNING"] and "mlflow_run_id" in trials[1].user_attrs:
            break
        assert proc.poll() is None, "tune finished before it could be killed"
        time.sleep(0.05)
    else:
        pytest.fail("never saw a running second trial")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    again = _cli(tmp_path, 3)
    out = again.communicate(timeout=600)[0]
    assert again.returncode == 0, out[-3000:]
    assert "trial 1: its process died; marked failed" in out
    trials = _trials(tmp_path)
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    killed = mlflow.get_run(trials[1].user_attrs["mlflow_run_id"])
    assert killed.info.status == "FAILED" and killed.data.tags["layerwise.state"] == "FAIL"
    mlflow.set_tracking_uri(None)


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143)])
def test_a_signal_mid_trial_exits_with_its_code_and_closes_the_trial_and_the_runs(tmp_path, sig, code):
    (tmp_path / "space.yaml").write_text(SPACE)
    (tmp_path / "mlruns").mkdir()
    proc = _cli(tmp_path, 2)
    deadline = time.time() + 300
    while time.time() < deadline:  # the first trial running, its MLflow run open
        try:
            trials = _trials(tmp_path)
        except Exception:  # the study is not created yet
            trials = []
        if [t.state.name for t in trials] == ["RUNNING"] and "mlflow_run_id" in trials[0].user_attrs:
            break
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        time.sleep(0.05)
    else:
        pytest.fail("never saw a running trial")
    time.sleep(1.0)  # into the trial's training
    proc.send_signal(sig)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == code, out[-3000:]
    assert "runs are marked KILLED" in out
    trials = _trials(tmp_path)
    assert [t.state.name for t in trials] == ["FAIL"]  # not left RUNNING for the next process
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["layerwise"])
    status = dict(zip(runs["tags.layerwise.role"].fillna("stage"), runs["status"]))
    assert status["study"] == "KILLED" and status["trial"] == "KILLED", runs[["tags.mlflow.runName", "status"]]
    assert "RUNNING" not in set(runs["status"])  # the stages below: finished, or KILLED
    mlflow.set_tracking_uri(None)
