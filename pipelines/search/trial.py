"""One trial of a search: the sampled configuration run without its test set, reported per epoch.

The trial's configuration is the study's config with the sampled values applied as ``--set``
overrides, fine-tuning only the objective's method and no baselines: its value is that
method's best validation error (percent), and ``run_pipeline(evaluate_test=False)`` drops the
test rows before any stage sees them. Layers come from the layer cache whenever the sampled
values leave the pretraining keys alone, so trials that vary only fine-tuning pretrain once.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

import lightning.pytorch as L
import mlflow
import optuna
from mlflow.tracking import MlflowClient

from pipelines import tracking
from pipelines.config import PipelineConfig, config_from_dict
from pipelines.run import run_pipeline
from pipelines.search.records import STATE_TAG, trial_tags
from pipelines.search.space import Space, as_overrides
from pipelines.search.study import where_am_i


class ReportToTrial(L.Callback):
    """After every validation epoch: report the validation error (percent) to the Optuna trial
    and log it to the trial's MLflow run; when the pruner says so, stop training there (the
    pipeline then finishes normally and the trial is recorded as pruned at that epoch)."""

    def __init__(self, trial: optuna.Trial, run_id: str, monitor: str = "val/error"):
        self.trial, self.run_id, self.monitor = trial, run_id, monitor
        self.pruned_epoch: int | None = None
        self._client = MlflowClient()

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        value, epoch = 100 * float(trainer.callback_metrics[self.monitor]), trainer.current_epoch
        self.trial.report(value, epoch)
        self._client.log_metric(self.run_id, "val_error", value, step=epoch)
        if self.trial.should_prune():
            self.pruned_epoch = epoch
            trainer.should_stop = True


@contextlib.contextmanager
def trial_run(trial: optuna.Trial, study_name: str, *, name: str, experiment_id: str,
              values: dict[str, Any]) -> Iterator[ReportToTrial]:
    """A trial's nested MLflow run, around the training it reports from: the sampled values as
    params, a ``ReportToTrial`` for the Trainer, and the trial's state as a tag when the block
    ends (FAIL with the reason on an exception, then PRUNED at its epoch or COMPLETE)."""
    with tracking.start_run(name, experiment_id=experiment_id, nested=True,
                            tags=trial_tags(study_name, trial.number)) as run:
        trial.set_user_attr("mlflow_run_id", run.info.run_id)
        mlflow.log_params(values)
        report = ReportToTrial(trial, run.info.run_id)
        try:
            yield report
        except BaseException as e:
            reason = f"{type(e).__name__}: {e}"[:500]
            trial.set_user_attr("error", reason)
            mlflow.set_tags({STATE_TAG: "FAIL", "layerwise.fail_reason": reason})
            raise
        if report.pruned_epoch is not None:
            mlflow.set_tags({STATE_TAG: "PRUNED", "layerwise.pruned_epoch": str(report.pruned_epoch)})
            trial.set_user_attr("pruned_epoch", report.pruned_epoch)
        else:
            mlflow.set_tag(STATE_TAG, "COMPLETE")


def trial_config(raw: dict, values: dict[str, Any], objective: str) -> PipelineConfig:
    """The configuration a trial runs: ``raw`` with ``values`` set, only the objective's method."""
    return config_from_dict(raw, as_overrides(values) + [f"finetune.methods=[{objective}]",
                                                         "baselines.methods=[]"],
                            source="of the trial")


def make_objective(space: Space, raw: dict, *, study_name: str, root: Path, experiment_id: str,
                   log=None):
    """The Optuna objective: runs inside the study's active MLflow run."""

    def objective(trial: optuna.Trial) -> float:
        for k, v in where_am_i().items():
            trial.set_user_attr(k, v)
        values = space.suggest(trial)
        cfg = trial_config(raw, values, space.objective)
        with trial_run(trial, study_name, name=f"trial {trial.number}", experiment_id=experiment_id,
                       values=values) as report:
            result = run_pipeline(cfg, root=root, evaluate_test=False, nested=True, callbacks=[report])
            row = next(r for r in result.rows if r.method == space.objective)
            mlflow.log_metric("valid_error", row.valid)
        pruned = report.pruned_epoch
        if log is not None:
            shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
            state = f"pruned at epoch {pruned}" if pruned is not None else f"valid error {row.valid:.2f}%"
            log(f"trial {trial.number}: {state} ({shown})")
        if pruned is not None:
            raise optuna.TrialPruned(f"validation error above the pruner's bar at epoch {pruned}")
        return row.valid

    return objective
