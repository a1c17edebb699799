"""One pipeline run: split -> greedy pretraining -> fine-tuning -> baselines -> results table.

Every stage is a nested MLflow run under one parent run; every stage reads what the stage
before produced; the trained layers are cached by config hash under ``mlruns/cache`` so that a
re-run after a crash resumes at the first missing layer.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import lightning.pytorch as L
import mlflow
import numpy as np
import torch

from pipelines import progress, tracking
from pipelines.config import PipelineConfig
from pipelines.files import atomic_write_text
from pipelines.models import registered_name
from pipelines.reporting.tables import Row, to_csv, to_markdown
from pipelines.stages.baselines import run_baselines
from pipelines.stages.inputs import config_dataset, config_split
from pipelines.stages.finetuning import fit_classifier, fit_deep_autoencoder
from pipelines.stages.checks import check_before_writing
from pipelines.stages.pretraining import pretrain_stack, tracked_layer_fitter
from pipelines.training import quiet_lightning


@dataclass
class RunResult:
    run_id: str
    tracking_uri: str
    rows: list[Row]
    table_markdown: str
    stack: object | None = None
    layers_loaded: list[bool] | None = None
    #: the stages taken from the caches instead of computed ("layer 1", "finetune mlp", ...)
    from_cache: list[str] | None = None


def _tensor(a: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(a, dtype=torch.float32)


def data_label(cfg: PipelineConfig) -> str:
    """The dataset as runs and registered models are named: its name, or ``<file stem>-npz``."""
    if cfg.data.name == "npz" and cfg.data.path:
        return f"{Path(cfg.data.path).stem}-npz"
    return cfg.data.name


def run_name(cfg: PipelineConfig) -> str:
    """The parent run's name, what it ran: ``digits L50 s0 mlp,mtc`` (dataset, labels, seed,
    fine-tuning methods); the config's name is the tag ``layerwise.config``."""
    labels = "all" if cfg.finetune.labels is None else cfg.finetune.labels
    methods = ",".join(cfg.finetune.methods)
    return f"{data_label(cfg)} L{labels} s{cfg.seed}" + (f" {methods}" if methods else "")


def run_pipeline(cfg: PipelineConfig, *, root: str | Path = "mlruns", evaluate_test: bool = True,
                 nested: bool = False, callbacks=()) -> RunResult:
    """Run the whole pipeline of ``cfg``; return the results table and the MLflow run id.

    For a hyperparameter search's trial (``pipelines.tune``): ``evaluate_test=False`` drops the
    test rows from the split before any stage sees them (the rows' ``test`` is None, nothing is
    cached or registered); ``nested`` starts the run under the active MLflow run; ``callbacks``
    go to the Trainers of the fine-tuned classifiers (a pruning callback).
    """
    quiet_lightning()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    root = Path(root)
    # bad data, splits, layers and trainer flags fail here, before anything is written
    with progress.stage(f"checking the config and the data ({cfg.data.name})"):
        ds = config_dataset(cfg)
        split = config_split(ds, cfg)
        if not evaluate_test:  # no stage can read what is not there
            split = replace(split, X_test=split.X_test[:0], y_test=split.y_test[:0])
        check_before_writing(cfg, ds.X.shape[1])

    uri, experiment_id = tracking.open_store(cfg.tracking.uri, root=root,
                                             experiment=cfg.tracking.experiment)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    cache_dir = root / "cache"
    digest = cfg.digest("seed", "data", "pretrain", "finetune", "baselines")
    # a trial's runs are a study's to clean up: another process may run the same config now
    stale = [] if nested else tracking.mark_stale_runs(experiment_id, digest)

    from_cache: list[str] = []

    def cached_rows(stage: str, method: str, compute) -> list[Row]:
        """A finished stage's rows are found by config hash instead of being computed again."""
        if not evaluate_test:
            return compute()
        path = cache_dir / "results" / f"{digest}-{stage}-{method}.json"
        if path.exists():
            try:
                rows = [Row(**d) for d in json.loads(path.read_text())]
                progress.annotate("from the cache")
                from_cache.append(f"{stage} {method}")
                return rows
            except (ValueError, TypeError):  # edited by hand or from another version: recompute
                pass
        rows = compute()
        atomic_write_text(path, json.dumps([asdict(r) for r in rows]))
        return rows

    tags = {**tracking.environment_tags(), "layerwise.digest": digest, "layerwise.config": cfg.name}
    if stale:
        tags["layerwise.resumed_from"] = ",".join(stale[:1])
    registered = registered_name(data_label(cfg), cfg.finetune.labels)
    with tracking.start_run(run_name(cfg), experiment_id=experiment_id, tags=tags,
                            nested=nested) as parent:
        tracking.log_config(cfg)
        for context, X, y in (("pool", split.X_pool, None), ("labeled", split.X_lab, split.y_lab),
                              ("validation", split.X_valid, split.y_valid),
                              ("test", split.X_test, split.y_test)):
            if context == "test" and not evaluate_test:
                continue
            tracking.log_dataset_input(X, y, name=f"{ds.name}-{context}", source=ds.source,
                                       context=context)

        # -- stage 1: greedy pretraining, one nested run per layer --------------------------
        fit_layer = tracked_layer_fitter(cfg, uri=uri, experiment_id=experiment_id,
                                         cache_dir=cache_dir, image_shape=ds.image_shape)

        stack, loaded = None, []
        if cfg.trains_stack:
            with tracking.start_run("pretrain", experiment_id=experiment_id, nested=True):
                stack, loaded = pretrain_stack(cfg, _tensor(split.X_pool), _tensor(split.X_valid),
                                               cache_dir=cache_dir, fit_layer=fit_layer)
                mlflow.log_params({"sizes": "-".join(map(str, stack.sizes)),
                                   "layers_from_cache": sum(loaded)})
            stack.eval()
            from_cache += [f"layer {k + 1}" for k, hit in enumerate(loaded) if hit]
        else:  # every method starts from fresh weights of the layers' shape
            progress.note("no method reads a pretrained stack: pretraining skipped")

        # -- stage 2: fine-tuning (MLP, MTC, deep autoencoder) ------------------------------
        rows: list[Row] = []
        with tracking.start_run("finetune", experiment_id=experiment_id, nested=True):
            for method in cfg.finetune.methods:
                epochs = (cfg.finetune.deep_autoencoder_epochs if method == "deep_autoencoder"
                          else cfg.finetune.epochs)
                if method == "deep_autoencoder":
                    compute = lambda: fit_deep_autoencoder(cfg, split, stack=stack, uri=uri,
                                                           experiment_id=experiment_id,
                                                           evaluate_test=evaluate_test)
                else:
                    compute = lambda: [fit_classifier(
                        cfg, split, stack=stack, method=method, uri=uri, experiment_id=experiment_id,
                        cache_dir=cache_dir, image_shape=ds.image_shape, register_as=registered,
                        evaluate_test=evaluate_test, callbacks=callbacks)]
                with progress.stage(f"fine-tuning {method}", total=epochs):
                    rows += cached_rows("finetune", method, compute)

        # -- stage 3: baselines on pixels and on codes --------------------------------------
        with tracking.start_run("baselines", experiment_id=experiment_id, nested=True):
            for method in cfg.baselines.methods:
                with progress.stage(f"baseline {method}", unit="fit"):
                    rows += cached_rows("baselines", method, lambda: run_baselines(
                        cfg, stack, split, uri=uri, experiment_id=experiment_id, methods=[method],
                        evaluate_test=evaluate_test))

        # -- stage 4: the results table -------------------------------------------------------
        title = (f"{cfg.name}: {ds.name}, {len(split.y_lab)} labels, "
                 f"{len(split.y_valid)} validation, {len(split.y_test)} test, seed {cfg.seed}")
        md = to_markdown(rows, title)
        tracking.log_text_artifact(md, "results/results.md")
        tracking.log_text_artifact(to_csv(rows), "results/results.csv")
        for r in rows:
            key = re.sub(r"[^\w/.-]+", "_", f"{r.metric.split(' (')[0]}/{r.method}/{r.inputs}")
            if r.test is not None:
                mlflow.log_metric(key, r.test)
        mlflow.set_tag("layerwise.from_cache", ", ".join(from_cache) or "none")
        return RunResult(run_id=parent.info.run_id, tracking_uri=uri, rows=rows,
                         table_markdown=md, stack=stack, layers_loaded=loaded, from_cache=from_cache)
