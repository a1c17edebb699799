"""The classification cell of the semi-supervised, variations and knowledge-free suites: a
scikit-learn baseline or a network fine-tuned on a pretrained stack; its value is the % test
error. ``prepare``, which every suite runs before a cell, pretrains the cell's stack before the
cell's own MLflow run opens."""
from __future__ import annotations

import numpy as np

from finetune.baselines import run_baseline
from pipelines.bench.cells import Cell
from pipelines.bench.context import Context
from pipelines.config import starts_fresh
from pipelines.stages.finetuning import fit_classifier


def uses_pretraining(task: dict) -> bool:
    """Whether a cell reads its stack's trained weights: a stack named, and a method that is
    neither PCA nor a network that starts from fresh weights of the stack's shape
    (``pipelines.config.starts_fresh``)."""
    method = task.get("method") or ""
    return bool(task.get("stack")) and not starts_fresh(method) and method != "pca"


def prepare(ctx: Context, cell: Cell) -> None:
    """Pretrain the cell's stack (if it reads one), so that its runs nest under the suite's run."""
    if uses_pretraining(cell.task):
        ctx.stack(cell.task["data"], cell.task["stack"])


def _valid_labels(ctx: Context, data: str, cap: int | None) -> int | None:
    """``make_split``'s ``valid_labels`` for at most ``cap`` validation rows: None (all rows) when
    the cap holds them all, else a class-balanced count the rarest class can fill."""
    ds = ctx.dataset(data)
    if cap is None or cap >= ds.n_valid:
        return None
    rarest = int(np.bincount(ds.y[len(ds.y) - ds.n_valid:], minlength=ds.n_classes).min())
    return max(1, min(cap // ds.n_classes, rarest)) * ds.n_classes


def classify(ctx: Context, cell: Cell, *, evaluate_test: bool = True, callbacks=()) -> dict:
    """A classification cell: a scikit-learn baseline or a fine-tuned network; % test error.
    A task's ``finetune`` dict overrides those keys of the stack's config for this cell alone.
    ``evaluate_test=False`` (a selection's trial): a network's test set is not read, ``value``
    is None; ``callbacks``: extra Lightning callbacks of its Trainer."""
    t, p = cell.task, ctx.profile
    data, method = t["data"], t["method"]
    split = ctx.split(data, labels=t["labels"], seed=cell.seed,
                      valid_labels=_valid_labels(ctx, data, t.get("valid_cap")))
    if method in ("svm", "knn"):
        grid = {"Cs": p.svm_C, "gamma_factors": p.svm_gamma} if method == "svm" else {}
        res = run_baseline(method, split.X_lab, split.y_lab, split.X_valid, split.y_valid, split.X_test,
                           split.y_test, random_state=cell.seed, **grid)
        return {"value": 100 * res.test_error, "valid": 100 * res.valid_error, "params": res.params}
    stack = ctx.stack(data, t["stack"]) if uses_pretraining(t) else None
    cfg = ctx.config(data, t["stack"], cell.seed)
    if t.get("finetune"):
        cfg.finetune = type(cfg.finetune).model_validate({**cfg.finetune.model_dump(), **t["finetune"]})
    row = fit_classifier(cfg, split, stack=stack, method=method,
                         uri=ctx.uri, experiment_id=ctx.experiment_id, cache_dir=ctx.cache_dir(data),
                         image_shape=ctx.dataset(data).image_shape, evaluate_test=evaluate_test,
                         callbacks=callbacks)
    return {"value": row.test, "valid": row.valid, "params": row.params}
