"""``layerwise bench SUITE --select METHOD``: a suite's fine-tuning hyperparameters selected on
validation, once per group of cells, as the papers chose theirs.

For each group of ``METHOD``'s cells (a validation setting and label count, a dataset: a cell's
keys without its seed), an Optuna study over the space's fine-tuning keys: every trial runs
the group's seed-0 cell with the sampled values and without its test set (the suite's shared
stack, the cell's own split: in the realistic setting the L labeled validation images), and its
value is the cell's validation error (%). The pruner stops a trial whose validation curve lags.
When a group's study holds ``trials`` finished trials, the best trial's values, its validation
error and the study's cost are written to ``selected.csv`` beside the suite's ``cells.csv``
(``pipelines.bench.selected``); the suite run then applies them to every seed of the group. The
group's rows of ``cells.csv`` computed before (with other values) move to ``superseded.csv``
there, so that the next suite run computes them with the selected values.

A space's keys outside ``finetune.*`` are left at the suite's values: every cell of a suite
shares its pretrained stack. The studies live in the Optuna storage under the root
(``optuna.db``): a selection stopped and started again keeps its finished trials, and one with
more trials extends them. MLflow holds one parent run per selection, a nested run per trial.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import mlflow
import optuna

from pipelines import tracking
from pipelines.bench.cells import Cell, select_cells
from pipelines.bench.context import EXPERIMENT, Context, bench_config
from pipelines.bench.hardware import hardware
from pipelines.bench.profiles import Profile, get_profile
from pipelines.bench.results import FILE as CELLS, SCHEMAS, SUPERSEDED, ResultsFile, results_dir
from pipelines.bench.readme import with_selection
from pipelines.bench.selected import FILE, SelectionFile, as_finetune, group_id
from pipelines.bench.suites import SUITES
from pipelines.bench.suites.classify import classify
from pipelines.config import ConfigError
from pipelines.interrupts import Interrupted
from pipelines.search import records
from pipelines.search.space import Space, check_space, load_space
from pipelines.search.study import (FINISHED, SAMPLERS, count, dead_trials, default_storage,
                                    differing_attr, fail_trial, make_pruner, make_sampler, open_storage,
                                    own_running_trials, where_am_i)
from pipelines.search.trial import trial_run
from pipelines.training import quiet_lightning

BASELINES = ("svm", "knn")  # these choose their own C, gamma, k on the cell's validation set


@dataclass
class Selected:
    group: str
    values: dict
    valid_error: float
    trials: int
    wall_s: float                    # the study's finished trials, summed: the search's cost


def _fine_tuning_space(space: Space, log: Callable[[str], None]) -> Space:
    kept = tuple(p for p in space.params if p.key.startswith("finetune."))
    left = [p.key for p in space.params if not p.key.startswith("finetune.")]
    if not kept:
        raise ConfigError(f"space {space.source} has no finetune.* key: a suite's cells share their "
                          "pretrained stacks, so a selection searches fine-tuning keys only")
    if left:
        log(f"space {Path(space.source).stem}: {', '.join(left)} left at the suite's values (its "
            f"cells share one pretrained stack); searching {', '.join(p.key for p in kept)}")
    return Space(space.objective, kept, space.source)


def _groups(suite: str, prof: Profile, method: str, only: Sequence[str]) -> list[Cell]:
    """The seed-0 cells of ``method`` whose ids match ``only``: one per group."""
    spec = SUITES[suite]
    cells = [c for c in spec.cells(prof) if c.seed == 0]
    methods = list(dict.fromkeys(str(c.keys[spec.kind_key]) for c in cells))
    if method not in methods:
        raise ValueError(f"--select {method!r} is no method of {suite}: choose one of {', '.join(methods)}")
    if method in BASELINES:
        raise ValueError(f"--select {method}: svm and knn choose their own C, gamma and k on each "
                         f"cell's validation set; select a fine-tuned method")
    mine = [c for c in cells if c.keys[spec.kind_key] == method]
    keep = select_cells(mine, only)
    return [c for c in mine if keep(c)]


def _study(url: str, name: str, sampler: str, pruner: str, attrs: dict):
    """The group's study and its storage, created or loaded; one started with another cell or
    space is refused."""
    storage = open_storage(url, stale_trial_callback=lambda s, t: records.fail_trial_run(
        t.user_attrs.get("mlflow_run_id"), "its process stopped beating"))
    study = optuna.create_study(storage=storage, study_name=name, direction="minimize",
                                load_if_exists=True, sampler=make_sampler(sampler, 0),
                                pruner=make_pruner(pruner))
    key = differing_attr(study, attrs)
    if key is not None:
        raise ConfigError(f"study {name!r} in {url} was started with another "
                          f"{key.removeprefix('layerwise.')}: delete the study (or the storage) "
                          f"to select afresh, or run the code that started it")
    for t in dead_trials(study):
        fail_trial(storage, study, t.number)
        records.fail_trial_run(t.user_attrs.get("mlflow_run_id"), "its process died")
    return study, storage


def select(suite: str, method: str, space: str | Path, *, trials: int, profile: str | Profile = "quick",
           data_dir: str | None = None, root: str | Path = "mlruns", uri: str | None = None,
           results: str | Path = "results", only: Sequence[str] = (), sampler: str = "tpe",
           pruner: str = "median", accelerator: str = "cpu",
           log: Callable[[str], None] = print) -> list[Selected]:
    """Select ``method``'s fine-tuning values on validation for each of its groups in ``suite``
    (those whose seed-0 cell id matches ``only``); write each to ``selected.csv`` as it lands."""
    classifiers = [name for name, schema in SCHEMAS.items() if schema.valid and name in SUITES]
    if suite not in classifiers:
        raise ValueError(f"--select works on the suites of fine-tuned classifiers "
                         f"({', '.join(classifiers)}), not {suite!r}")
    if sampler not in SAMPLERS or sampler == "grid":
        raise ConfigError(f"unknown sampler {sampler!r} for a selection: choose tpe or random")
    if isinstance(trials, bool) or int(trials) != trials or trials < 1:
        raise ConfigError(f"--trials must be a positive integer, got {trials!r}")
    spec, prof = SUITES[suite], get_profile(profile, 1)
    groups = _groups(suite, prof, method, only)
    first = groups[0].task
    raw = bench_config(prof, first["data"], first["stack"], 0).model_dump(mode="json")
    space_ft = _fine_tuning_space(load_space(space, raw), log)
    check_space(space_ft, raw)
    all_cells = spec.cells(prof)
    digests = spec.cell_digests(prof, all_cells)
    folder = results_dir(results, suite, prof.name)
    book = SelectionFile(folder / FILE, SCHEMAS[suite])
    order = [book.key(c.keys) for c in all_cells if c.seed == 0]

    quiet_lightning()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    url = default_storage(root)
    uri, experiment_id = tracking.open_store(uri, root=root, experiment=EXPERIMENT)
    ctx = Context(prof, data_dir=data_dir, root=root, uri=uri, experiment_id=experiment_id,
                  experiment=EXPERIMENT, log=log, accelerator=accelerator)
    stamp = {"commit": tracking.git_commit(), "hardware": hardware(accelerator)}
    out = []
    with tracking.start_run(f"select {suite} ({prof.name}) {method}", experiment_id=experiment_id,
                            tags={**tracking.environment_tags(), "layerwise.bench": suite,
                                  "layerwise.profile": prof.name, "layerwise.select": method}):
        mlflow.log_params({"space": Path(space_ft.source).stem, "trials": trials, "sampler": sampler})
        for cell in groups:
            name = f"{suite}-{prof.name}-{group_id(cell)}-{Path(space_ft.source).stem}"
            study, storage = _study(url, name, sampler, pruner, {
                "layerwise.cell": digests[cell.id],
                "layerwise.space": json.dumps(space_ft.as_dict(), sort_keys=True)})
            spec.prepare(ctx, cell)
            base = ctx.config(cell.task["data"], cell.task["stack"], cell.seed).finetune.model_dump()
            objective = _objective(ctx, cell, space_ft, base, name, experiment_id, log)
            failed = 0
            while count(study, FINISHED) < trials:
                try:
                    study.optimize(objective, n_trials=1, catch=(ValueError, FloatingPointError))
                except Interrupted:  # Optuna leaves the trial RUNNING on a BaseException
                    for t in own_running_trials(study):
                        fail_trial(storage, study, t.number)
                    raise
                last = study.get_trials(deepcopy=False)[-1]
                if last.state == optuna.trial.TrialState.FAIL:
                    failed += 1
                    log(f"{group_id(cell)} trial {last.number}: failed ({last.user_attrs.get('error', '?')})")
                    if failed >= trials:
                        raise RuntimeError(f"{failed} trials of study {name!r} failed in this run; "
                                           f"see the runs' layerwise.fail_reason tags in MLflow")
            done = study.get_trials(deepcopy=False, states=FINISHED)
            complete = [t for t in done if t.state == optuna.trial.TrialState.COMPLETE]
            if not complete:
                raise RuntimeError(f"study {name!r} has no complete trial (all pruned or failed): "
                                   f"relax the pruner (--pruner none) or the space")
            best = min(complete, key=lambda t: t.value)
            chosen = Selected(group_id(cell), dict(best.params), float(best.value), len(done),
                              sum(float(t.user_attrs.get("wall_s", 0.0)) for t in done))
            book.save(cell.keys, {"values": json.dumps(chosen.values, sort_keys=True),
                                  "valid_error": f"{chosen.valid_error:.10g}", "trials": str(chosen.trials),
                                  "wall_s": f"{chosen.wall_s:.3f}", **stamp,
                                  "settings": digests[cell.id], "study": name}, order)
            moved = ResultsFile(folder / CELLS, SCHEMAS[suite], all_cells).supersede(
                cell.keys, spec.cell_digests(prof, with_selection(suite, prof, [cell], folder))[cell.id])
            if moved:
                log(f"{chosen.group}: {moved} rows computed before these values moved to {SUPERSEDED}")
            mlflow.log_metric(f"{chosen.group}/valid_error", chosen.valid_error)
            log(f"{chosen.group}: valid error {chosen.valid_error:.2f}% with {chosen.values} "
                f"({chosen.trials} trials, {chosen.wall_s / 60:.1f} min)")
            out.append(chosen)
    return out


def _objective(ctx: Context, cell: Cell, space: Space, base: dict, study_name: str,
               experiment_id: str, log: Callable[[str], None]):
    """A trial: the cell with the sampled fine-tuning values, its validation error (%)."""

    def objective(trial: optuna.Trial) -> float:
        for k, v in where_am_i().items():
            trial.set_user_attr(k, v)
        values = space.suggest(trial)
        task = {**cell.task, "finetune": {**cell.task.get("finetune", {}), **as_finetune(values, base)}}
        t0 = time.perf_counter()
        with trial_run(trial, study_name, name=f"{group_id(cell)} trial {trial.number}",
                       experiment_id=experiment_id, values=values) as report:
            res = classify(ctx, Cell(cell.id, cell.keys, cell.seed, task), evaluate_test=False,
                           callbacks=[report])
            mlflow.log_metric("valid_error", res["valid"])
        trial.set_user_attr("wall_s", time.perf_counter() - t0)
        shown = ", ".join(f"{k.removeprefix('finetune.')}={v:.3g}" if isinstance(v, float) else
                          f"{k.removeprefix('finetune.')}={v}" for k, v in values.items())
        if report.pruned_epoch is not None:
            log(f"{group_id(cell)} trial {trial.number}: pruned at epoch {report.pruned_epoch} ({shown})")
            raise optuna.TrialPruned(f"validation error above the pruner's bar at epoch {report.pruned_epoch}")
        log(f"{group_id(cell)} trial {trial.number}: valid error {res['valid']:.2f}% ({shown})")
        return res["valid"]

    return objective
