"""The MLflow side of a search: one parent run per study, one nested run per trial, the figures.

A study's parent run is found again by its tags (``layerwise.study``, ``layerwise.role``), so
every invocation and every process on the study adds its trials under the same run. A trial's
run holds the sampled values as params, the objective's validation error per epoch
(``val_error``), the best one (``valid_error``) and the trial's state as the tag
``layerwise.state`` (COMPLETE, PRUNED or FAIL).
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Iterator

import mlflow
import optuna
from mlflow.tracking import MlflowClient
from optuna.visualization import matplotlib as optuna_plots

from pipelines import tracking
from pipelines.reporting.tables import fmt

STATE_TAG = "layerwise.state"


def _study_runs(client: MlflowClient, experiment_id: str, study: str) -> list:
    runs = client.search_runs([experiment_id], f"tags.`layerwise.study` = '{study}' and "
                              f"tags.`layerwise.role` = 'study'")
    return sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))


def study_run(experiment_id: str, study: str, *, storage: str, tags: dict[str, str]) -> str:
    """The id of the study's parent run, created by the first process that asks. Two processes
    that create one at once both keep the earlier and delete the later."""
    client = MlflowClient()
    runs = _study_runs(client, experiment_id, study)
    if runs:
        return runs[0].info.run_id
    mine = client.create_run(experiment_id, run_name=f"tune {study}",
                             tags={**tags, "layerwise.study": study, "layerwise.role": "study",
                                   "layerwise.storage": storage}).info.run_id
    first = _study_runs(client, experiment_id, study)[0].info.run_id
    if first != mine:
        client.delete_run(mine)
    return first


@contextlib.contextmanager
def resumed(run_id: str) -> Iterator["mlflow.ActiveRun"]:
    """The study's run made active again for this invocation; ended FINISHED, FAILED on an
    error, KILLED on Ctrl-C or SIGTERM (as ``tracking.start_run``)."""
    with tracking.ended_by_outcome(mlflow.start_run(run_id=run_id)) as run:
        yield run


def trial_tags(study: str, number: int) -> dict[str, str]:
    return {"layerwise.study": study, "layerwise.trial": str(number), "layerwise.role": "trial",
            STATE_TAG: "RUNNING"}


def fail_trial_run(run_id: str | None, reason: str) -> None:
    """A trial's run (and its nested runs still RUNNING) closed as FAILED, tagged FAIL."""
    if not run_id:
        return
    client = MlflowClient()
    client.set_tag(run_id, STATE_TAG, "FAIL")
    client.set_tag(run_id, "layerwise.fail_reason", reason)
    experiment_id = client.get_run(run_id).info.experiment_id
    frontier, todo = [run_id], [run_id]
    while frontier:
        parent = frontier.pop()
        children = [c.info.run_id for c in client.search_runs(
            [experiment_id], f"attributes.status = 'RUNNING' and tags.`mlflow.parentRunId` = '{parent}'")]
        frontier += children
        todo += children
    for rid in todo:
        if client.get_run(rid).info.status == "RUNNING":
            client.set_terminated(rid, status="FAILED")


def log_study_figures(study: optuna.Study) -> list[str]:
    """Optimisation history, parameter importances and slices of the finished trials, as
    artifacts of the active (study) run; a figure that needs more trials is left out."""
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    plots = {"figures/optimization_history.png": optuna_plots.plot_optimization_history,
             "figures/slices.png": optuna_plots.plot_slice}
    if len(done) >= 2 and len({k for t in done for k in t.params}) >= 1:
        plots["figures/param_importances.png"] = optuna_plots.plot_param_importances
    logged = []
    for path, plot in plots.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
            try:
                ax = plot(study)
            except (ValueError, RuntimeError, ZeroDivisionError):
                continue  # e.g. importances of parameters that never varied
        fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
        tracking.log_figure(fig, path)
        logged.append(path)
    return logged


def trials_markdown(study: optuna.Study, keys: list[str], title: str) -> str:
    """One row per trial: number, state, validation error (or the epoch it was pruned at),
    the sampled values."""
    lines = [f"### {title}", "", "| trial | state | valid error (%) | " + " | ".join(keys) + " |",
             "|---|---|---|" + "---|" * len(keys)]
    for t in sorted(study.trials, key=lambda t: t.number):
        state = t.state.name
        if t.state == optuna.trial.TrialState.PRUNED and "pruned_epoch" in t.user_attrs:
            state += f" (epoch {t.user_attrs['pruned_epoch']})"
        values = [f"{t.params[k]:.4g}" if isinstance(t.params.get(k), float) else str(t.params.get(k, "-"))
                  for k in keys]
        lines.append(f"| {t.number} | {state} | {fmt(t.value)} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"
