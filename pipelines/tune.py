"""``layerwise tune``: hyperparameter search on the validation set, as the papers chose theirs.

An Optuna study over a space of dotted config keys (``pipelines.search.space``): every trial
runs the pipeline with the sampled values and without its test set, and its value is the
validation error of the space's objective (in the paper setting or the realistic one, as the
config's ``data.valid_labels`` says). When the requested trials are done, the best trial's
configuration is written as YAML (``layerwise run best.yaml`` reproduces it) and run once more,
this time with the test set: the only time a search reads it.

The study lives in an Optuna storage (SQLite ``optuna.db`` under the tracking root unless
``storage`` is given), so a killed ``tune`` started again keeps its finished trials and fails
the killed one, a second ``tune`` with more trials extends the study, and several processes or
machines can work on one study. MLflow holds one parent run per study and a nested run per
trial (``pipelines.search.records``).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import optuna
from mlflow.exceptions import MlflowException

from pipelines import tracking
from pipelines.config import ConfigError, config_from_dict, load_config
from pipelines.files import atomic_write_text
from pipelines.interrupts import Interrupted
from pipelines.reporting.tables import Row
from pipelines.run import RunResult, run_pipeline
from pipelines.search import records
from pipelines.search.space import Space, as_overrides, check_space, load_space
from pipelines.search.study import (FINISHED, SAMPLERS, count, dead_trials, default_storage, differing_attr,
                                    fail_trial, make_pruner, make_sampler, open_storage, own_running_trials)
from pipelines.search.trial import make_objective, trial_config
from pipelines.stages.checks import check_before_writing
from pipelines.stages.inputs import config_dataset, config_split
from pipelines.training import quiet_lightning

STAGES = ("all", "finetune")


@dataclass
class TuneResult:
    study: str
    storage: str
    tracking_uri: str
    run_id: str                       # the study's MLflow parent run
    best_trial: int
    best_values: dict
    best_valid: float                 # the best trial's validation error (%)
    best_path: Path                   # its configuration, for ``layerwise run``
    final: RunResult                  # that configuration run with its test set
    trials_markdown: str
    objective: str
    states: dict = field(default_factory=dict)  # trials per state, over the whole study

    @property
    def best_row(self) -> Row:
        """The objective's row of the final run: its test error."""
        return next(r for r in self.final.rows if r.method == self.objective)


def _check_inputs(cfg, raw: dict, space: Space, stage: str, sampler: str, trials: int) -> None:
    """Everything that can be refused before anything is written."""
    if stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r}: choose from {', '.join(STAGES)}")
    if stage == "finetune":
        outside = [p.key for p in space.params if not p.key.startswith("finetune.")]
        if outside:
            raise ConfigError(f"--stage finetune searches fine-tuning keys only, but the space sets "
                              f"{', '.join(outside)}: drop them or leave --stage out")
    if sampler not in SAMPLERS:
        raise ConfigError(f"unknown sampler {sampler!r}: choose from {', '.join(SAMPLERS)}")
    if int(trials) != trials or trials < 1:
        raise ConfigError(f"--trials must be a positive integer, got {trials!r}")
    ds = config_dataset(cfg)

    def pipeline_checks(c) -> None:  # what run_pipeline checks before it writes
        config_split(ds, c)
        check_before_writing(c, ds.X.shape[1])

    pipeline_checks(trial_config(raw, {}, space.objective))
    check_space(space, raw, check=pipeline_checks)
    if sampler == "grid":
        space.grid()


def _same_study(study: optuna.Study, cfg, space: Space) -> None:
    """Refuse to extend a study with another config or space: its trials would not compare."""
    mine = {"layerwise.config": cfg.digest("seed", "data", "pretrain", "finetune", "baselines", "trainer"),
            "layerwise.space": json.dumps(space.as_dict(), sort_keys=True)}
    key = differing_attr(study, mine)
    if key is not None:
        what = "config" if key == "layerwise.config" else "space"
        raise ConfigError(f"study {study.study_name!r} was started with another {what}: give "
                          f"another --study name, or the same config, --set values and space")


def _open_store(cfg, root: Path) -> tuple[str, str]:
    """``tracking.open_store``, tried again when another process of the study creates the same
    store or experiment at the same moment."""
    for attempt in range(3):
        try:
            return tracking.open_store(cfg.tracking.uri, root=root, experiment=cfg.tracking.experiment)
        except MlflowException:
            if attempt == 2:
                raise
            time.sleep(1 + attempt)


def best_config(raw: dict, values: dict, objective: str):
    """The study's config with the best values, fine-tuning its methods and the objective's."""
    cfg = config_from_dict(raw, as_overrides(values), source="of the best trial")
    if objective not in cfg.finetune.methods:
        cfg.finetune.methods = [*cfg.finetune.methods, objective]
    return cfg


def tune(config: str | Path | None, space_path: str | Path, *, trials: int, study: str | None = None,
         storage: str | None = None, overrides: list[str] = (), sampler: str = "tpe",
         pruner: str | optuna.pruners.BasePruner = "median", stage: str = "all",
         root: str | Path = "mlruns", best_path: str | Path | None = None, log=None) -> TuneResult:
    """Run (or extend) a study until it holds ``trials`` finished trials (complete or pruned);
    then evaluate the best trial's configuration on the test set, once."""
    quiet_lightning()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    log = log or (lambda line: None)
    cfg = load_config(config, list(overrides))
    raw = cfg.model_dump(mode="json")
    space = load_space(space_path, raw)
    _check_inputs(cfg, raw, space, stage, sampler, trials)
    grid = space.grid() if sampler == "grid" else None
    if grid is not None:
        size = 1
        for values in grid.values():
            size *= len(values)
        trials = min(trials, size)
    root = Path(root)
    name = study or f"{cfg.name}-{Path(space_path).stem}"
    if storage is None:
        root.mkdir(parents=True, exist_ok=True)
    url = storage or default_storage(root)
    rdb = open_storage(url, stale_trial_callback=lambda s, t: records.fail_trial_run(
        t.user_attrs.get("mlflow_run_id"), "its process stopped beating"))
    opt = optuna.create_study(storage=rdb, study_name=name, direction="minimize", load_if_exists=True,
                              sampler=make_sampler(sampler, cfg.seed, grid),
                              pruner=make_pruner(pruner) if isinstance(pruner, str) else pruner)
    _same_study(opt, cfg, space)

    uri, experiment_id = _open_store(cfg, root)
    run_id = records.study_run(experiment_id, name, storage=url, tags=tracking.environment_tags())
    with records.resumed(run_id):
        mlflow.set_tags({"layerwise.sampler": sampler, "layerwise.objective": space.objective,
                         "layerwise.pruner": pruner if isinstance(pruner, str) else type(pruner).__name__})
        tracking.log_text_artifact(json.dumps(space.as_dict(), indent=2), "space.json")
        for t in dead_trials(opt):
            fail_trial(rdb, opt, t.number)
            records.fail_trial_run(t.user_attrs.get("mlflow_run_id"), "its process died")
            log(f"trial {t.number}: its process died; marked failed")
        objective = make_objective(space, raw, study_name=name, root=root, experiment_id=experiment_id,
                                   log=log)
        failed_here = 0
        while count(opt, FINISHED) + count(opt, [optuna.trial.TrialState.RUNNING]) < trials:
            ran: list = []
            try:
                opt.optimize(objective, n_trials=1, catch=(ValueError, FloatingPointError),
                             callbacks=[lambda s, t: ran.append(t)])
            except Interrupted:  # Optuna leaves the trial RUNNING on a BaseException
                for t in own_running_trials(opt):
                    fail_trial(rdb, opt, t.number)
                raise
            if ran and ran[0].state == optuna.trial.TrialState.FAIL:
                failed_here += 1
                log(f"trial {ran[0].number}: failed ({ran[0].user_attrs.get('error', 'see its MLflow run')})")
                if failed_here >= trials:
                    raise RuntimeError(f"{failed_here} trials of study {name!r} failed in this run; "
                                       f"see the runs' layerwise.fail_reason tags in MLflow")
        if count(opt, [optuna.trial.TrialState.COMPLETE]) == 0:
            raise RuntimeError(f"study {name!r} has no complete trial (all pruned or failed): "
                               f"relax the pruner (--pruner none) or the space")
        best = opt.best_trial
        best_cfg = best_config(raw, best.params, space.objective)
        best_path = Path(best_path) if best_path else root / "tune" / f"{name}-best.yaml"
        header = (f"# the best configuration of study {name} (trial {best.number}, {space.objective} "
                  f"validation error {best.value:.2f}%): layerwise run {best_path.name}\n")
        atomic_write_text(best_path, header + best_cfg.to_yaml())
        log(f"best: trial {best.number}, valid error {best.value:.2f}%; its test error, once:")
        final = run_pipeline(best_cfg, root=root, nested=True)
        row = next(r for r in final.rows if r.method == space.objective)
        mlflow.log_metrics({"best/valid_error": best.value, "best/test_error": row.test,
                            "best/trial": best.number, "trials": len(opt.trials)})
        mlflow.set_tags({f"best.{k}": str(v) for k, v in best.params.items()})
        tracking.log_file(best_path)
        records.log_study_figures(opt)
        table = records.trials_markdown(opt, [p.key for p in space.params],
                                        f"study {name}: {space.objective} validation error")
        tracking.log_text_artifact(table, "trials.md")
    states = {}
    for t in opt.trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    return TuneResult(study=name, storage=url, tracking_uri=uri, run_id=run_id, best_trial=best.number,
                      best_values=dict(best.params), best_valid=best.value, best_path=best_path,
                      final=final, trials_markdown=table, objective=space.objective, states=states)
