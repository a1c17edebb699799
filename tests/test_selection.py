"""Hyperparameters selected on validation per group of a suite's cells (``--select``), and the
suite run that applies them.

A small real suite on the embedded digits (an SVM, the MLP and the MTC on a one-layer CAE stack;
real Trainers, a real Optuna SQLite storage, a real MLflow store in tmp_path): a selection's
best trial is the cell the suite then computes, to the last digit of its validation error; a
selection stopped and started again keeps its trials; values chosen under other settings, or
for no group, are refused before anything is written.
"""
import csv
import io
import json
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from digits_suite import SCHEMA, digits_cells, register

from pipelines.bench import readme
from pipelines.bench.profiles import PROFILES
from pipelines.bench.runner import run_bench
from pipelines.bench.selected import SelectionFile, as_finetune
from pipelines.cli import main
from pipelines.config import ConfigError
from pipelines.search.study import default_storage
from pipelines.selection import select

NAME = "digits-select"
PROFILE = replace(PROFILES["tiny"], hidden=16, pretrain_epochs=1, finetune_epochs=3, patience=3,
                  n_tangents=2, n_test=300)
VALID = 100  # each cell's validation rows: errors in steps of 1%
BETA = {"low": 0.01, "high": 30.0, "log": True}
_cells = digits_cells


@pytest.fixture
def suite(monkeypatch):
    """The digits suite with committed results; ``calls`` lists (cell id, its task's finetune)."""
    calls = []
    register(monkeypatch, NAME, lambda cell: calls.append((cell.id, cell.task.get("finetune"))), VALID)
    return calls


def _space(tmp_path, space: dict, objective="mtc") -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(json.dumps({"objective": objective, "space": space}))  # JSON is YAML
    return path


def _select(tmp_path, space, trials, **kw):
    return select(NAME, kw.pop("method", "mtc"), space, trials=trials, profile=PROFILE,
                  root=tmp_path / "mlruns", results=tmp_path / "results", log=lambda m: None, **kw)


def _rows(path: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


def test_the_selected_values_are_those_the_suite_then_runs_with(suite, tmp_path):
    space = _space(tmp_path, {"finetune.beta": BETA, "finetune.lr": {"low": 1e-3, "high": 1e-2, "log": True},
                              # a pretraining key: the stack is shared, so it is left out
                              "pretrain.layers.0.lr": {"low": 1e-4, "high": 1e-2, "log": True}})
    # the cell computed once before any selection (its file under mlruns/bench/, no results file)
    before = run_bench(NAME, profile=PROFILE, root=tmp_path / "mlruns", results=None, log=lambda m: None,
                       only=["L50-mtc-*"])
    assert suite == [("L50-mtc-s0", None)]
    suite.clear()
    out = _select(tmp_path, space, 4, only=["L50-*"])
    assert [s.group for s in out] == ["L50-mtc"]
    chosen = out[0]
    assert set(chosen.values) == {"finetune.beta", "finetune.lr"}  # no pretrain key searched
    assert 0.01 <= chosen.values["finetune.beta"] <= 30 and 1e-3 <= chosen.values["finetune.lr"] <= 1e-2

    # the storage holds the study; the row is its best complete trial, and what its trials cost
    study = optuna.load_study(study_name=f"{NAME}-tiny-L50-mtc-space", storage=default_storage(tmp_path / "mlruns"))
    done = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    complete = [t for t in done if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 4 and chosen.trials == 4
    assert chosen.valid_error == pytest.approx(min(t.value for t in complete))
    assert chosen.wall_s == pytest.approx(sum(t.user_attrs["wall_s"] for t in done)) and chosen.wall_s > 0
    assert all(abs(t.value * VALID / 100 - round(t.value * VALID / 100)) < 1e-4 for t in complete)  # 100 rows
    folder = tmp_path / "results" / f"{NAME}-tiny"
    (row,) = _rows(folder / "selected.csv")
    assert (row["method"], row["labels"], json.loads(row["values"])) == ("mtc", "50", chosen.values)

    # the suite run: the selected group's cell runs with the values and finds the best trial's
    # validation error again; the other group's MTC runs with the config's beta
    res = run_bench(NAME, profile=PROFILE, root=tmp_path / "mlruns", results=tmp_path / "results",
                    log=lambda m: None, only=["L*-mtc-*"])
    given = dict(suite)  # the cell's file of before the selection is not taken for its result
    assert before.results[0]["params"]["beta"] == 1.0
    assert given["L50-mtc-s0"] == {"beta": chosen.values["finetune.beta"], "lr": chosen.values["finetune.lr"]}
    assert given["L100-mtc-s0"] is None
    by_id = {r["id"]: r for r in res.results}
    assert by_id["L50-mtc-s0"]["valid"] == pytest.approx(chosen.valid_error, abs=1e-6)
    assert by_id["L50-mtc-s0"]["params"]["beta"] == pytest.approx(chosen.values["finetune.beta"])
    assert by_id["L100-mtc-s0"]["params"]["beta"] == 1.0  # mnist_mtc's
    table = (folder / "table.md").read_text()
    assert "#### Selected on validation" in table and "| mtc | 50 | beta=" in table
    assert table == readme.results_table(NAME, "tiny", readme.ResultsFile(
        folder / "cells.csv", SCHEMA, _cells(PROFILE)))

    # stopped and started again: the finished trials are kept; more trials extend the study
    again = _select(tmp_path, space, 4, only=["L50-*"])
    assert again[0].trials == 4 and len(optuna.load_study(study_name=study.study_name,
                                                          storage=default_storage(tmp_path / "mlruns")).trials) == 4
    more = _select(tmp_path, space, 5, only=["L50-*"])
    assert more[0].trials == 5 and more[0].valid_error <= chosen.valid_error

    # a trial left RUNNING by a process that died (SIGKILL) is failed, and a new one runs
    study = optuna.load_study(study_name=study.study_name, storage=default_storage(tmp_path / "mlruns"))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = study.ask()
    orphan.set_user_attr("host", socket.gethostname())
    orphan.set_user_attr("pid", dead.pid)
    assert _select(tmp_path, space, 6, only=["L50-*"])[0].trials == 6
    states = {t.number: t.state for t in optuna.load_study(
        study_name=study.study_name, storage=default_storage(tmp_path / "mlruns")).trials}
    assert states[orphan.number] == optuna.trial.TrialState.FAIL and len(states) == 7

    # a study of that name started with another space is refused
    other = _space(tmp_path, {"finetune.beta": {"low": 0.1, "high": 1.0}})
    with pytest.raises(ConfigError, match="started with another space"):
        _select(tmp_path, other, 5, only=["L50-*"])


def test_a_selection_moves_its_groups_earlier_rows_aside_and_the_suite_computes_them_again(suite, tmp_path):
    kw = dict(profile=PROFILE, seeds=2, root=tmp_path / "mlruns", results=tmp_path / "results", log=lambda m: None)
    run_bench(NAME, only=["L50-mtc-*", "L100-mtc-s0"], **kw)
    folder = tmp_path / "results" / f"{NAME}-tiny"
    before = {(r["labels"], r["seed"]): r for r in _rows(folder / "cells.csv")}
    assert sorted(before) == [("100", "0"), ("50", "0"), ("50", "1")]
    suite.clear()
    chosen = _select(tmp_path, _space(tmp_path, {"finetune.beta": BETA}), 1, only=["L50-*"], pruner="none")[0]
    # the L50 rows (both seeds, computed with beta = 1) are kept aside, as they were; L100's stays
    assert _rows(folder / "superseded.csv") == [before["50", "0"], before["50", "1"]]
    assert _rows(folder / "cells.csv") == [before["100", "0"]]
    suite.clear()
    res = run_bench(NAME, only=["L50-mtc-*", "L100-mtc-s0"], **kw)  # no refusal: L50 is computed again
    assert suite == [("L50-mtc-s0", {"beta": chosen.values["finetune.beta"]}),
                     ("L50-mtc-s1", {"beta": chosen.values["finetune.beta"]})]
    assert {r["id"]: r["params"]["beta"] for r in res.results} == pytest.approx(
        {"L50-mtc-s0": chosen.values["finetune.beta"], "L50-mtc-s1": chosen.values["finetune.beta"],
         "L100-mtc-s0": 1.0})
    assert len(_rows(folder / "cells.csv")) == 3 and len(_rows(folder / "superseded.csv")) == 2
    # selected again with the same values: nothing more moves
    suite.clear()
    _select(tmp_path, _space(tmp_path, {"finetune.beta": BETA}), 1, only=["L50-*"], pruner="none")
    assert len(_rows(folder / "cells.csv")) == 3 and len(_rows(folder / "superseded.csv")) == 2 and suite == []


def test_values_selected_under_other_settings_or_for_no_group_are_refused(suite, tmp_path):
    space = _space(tmp_path, {"finetune.beta": BETA})
    _select(tmp_path, space, 1, only=["L50-*"], pruner="none")
    folder = tmp_path / "results" / f"{NAME}-tiny"
    path = folder / "selected.csv"
    good = path.read_text()

    # fewer fine-tuning epochs: the cell's settings changed, so its values were chosen for another cell
    shorter = replace(PROFILE, finetune_epochs=2)
    with pytest.raises(ValueError, match=r"L50-mtc were selected with other settings.*Select them again"):
        run_bench(NAME, profile=shorter, root=tmp_path / "mlruns", results=tmp_path / "results",
                  log=lambda m: None)
    assert not (folder / "cells.csv").exists() and path.read_text() == good

    path.write_text(good.replace("mtc,50,", "mtc,70,"))
    with pytest.raises(ValueError, match="method=mtc, labels=70 names no group"):
        run_bench(NAME, profile=PROFILE, root=tmp_path / "mlruns", results=tmp_path / "results",
                  log=lambda m: None)
    path.write_text(good.replace('"{', '"[{').replace('}"', '}]"'))
    with pytest.raises(ValueError, match="JSON object of values"):
        SelectionFile(path, SCHEMA)
    assert not (folder / "cells.csv").exists()


def test_bad_selections_are_refused_before_anything_runs(suite, tmp_path):
    space = _space(tmp_path, {"finetune.beta": BETA})
    with pytest.raises(ValueError, match="no method of digits-select: choose one of svm, cae, mtc"):
        _select(tmp_path, space, 2, method="mtc_all")
    with pytest.raises(ValueError, match="svm and knn choose their own"):
        _select(tmp_path, space, 2, method="svm")
    with pytest.raises(ConfigError, match="has no finetune.* key"):
        _select(tmp_path, _space(tmp_path, {"pretrain.layers.0.lr": {"low": 1e-4, "high": 1e-2}}), 2)
    with pytest.raises(ConfigError, match="finetune.beta = -1.0 is refused"):
        _select(tmp_path, _space(tmp_path, {"finetune.beta": {"low": -1.0, "high": 1.0}}), 2)
    with pytest.raises(ConfigError, match="--trials must be a positive integer"):
        _select(tmp_path, space, 0)
    with pytest.raises(ValueError, match="not 'deep-autoencoder'"):
        select("deep-autoencoder", "rbm-pretrained", space, trials=1, profile="tiny", root=tmp_path / "m",
               results=tmp_path / "r", log=lambda m: None)
    assert not (tmp_path / "results").exists() and not (tmp_path / "mlruns").exists()

    cli = CliRunner().invoke(main, ["bench", "semi-supervised", "--profile", "tiny", "--select", "mtc"])
    assert cli.exit_code == 2 and "--select needs --space" in cli.output


def test_dotted_values_become_a_tasks_finetune_dict():
    base = {"beta": 1.0, "ladder_denoise": [1000.0, 10.0, 0.1], "lr": 0.001}
    ft = as_finetune({"finetune.ladder_denoise.1": 3.0, "finetune.lr": 0.01}, base)
    assert ft == {"ladder_denoise": [1000.0, 3.0, 0.1], "lr": 0.01}
    assert base["ladder_denoise"] == [1000.0, 10.0, 0.1]  # the config's list is not touched
    with pytest.raises(ValueError, match="no fine-tuning key"):
        as_finetune({"pretrain.epochs": 3}, base)
