"""One pipeline run: split -> greedy pretraining -> fine-tuning -> baselines -> results table.

Every stage is a nested MLflow run under one parent run; every stage reads what the stage
before produced; the trained layers are cached by config hash under ``mlruns/cache`` so that a
re-run after a crash resumes at the first missing layer.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning.pytorch as L
import mlflow
import numpy as np
import torch

from pipelines import tracking
from pipelines.config import PipelineConfig
from pipelines.data.datasets import load_dataset
from pipelines.data.splits import make_split
from pipelines.files import atomic_write_text
from pipelines.reporting.tables import Row, to_csv, to_markdown
from pipelines.stages.baselines import run_baselines
from pipelines.stages.finetuning import fit_classifier, fit_deep_autoencoder
from pipelines.stages.pretraining import build_layers, pretrain_stack, tracked_layer_fitter
from pipelines.training import quiet_lightning


@dataclass
class RunResult:
    run_id: str
    tracking_uri: str
    rows: list[Row]
    table_markdown: str
    stack: object | None = None
    layers_loaded: list[bool] | None = None


def _tensor(a: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(a, dtype=torch.float32)


def run_pipeline(cfg: PipelineConfig, *, root: str | Path = "mlruns") -> RunResult:
    """Run the whole pipeline of ``cfg``; return the results table and the MLflow run id."""
    quiet_lightning()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    root = Path(root)
    # bad data and splits fail here, before anything is written
    ds = load_dataset(cfg.data.name, data_dir=cfg.data.data_dir, path=cfg.data.path,
                      seed=cfg.seed, download=cfg.data.download)
    split = make_split(ds, labels=cfg.finetune.labels, seed=cfg.seed, n_valid=cfg.data.n_valid,
                       valid_labels=cfg.data.valid_labels, n_test=cfg.data.n_test)
    build_layers(cfg, ds.X.shape[1])  # bad layer settings too

    uri, experiment_id = tracking.open_store(cfg.tracking.uri, root=root,
                                             experiment=cfg.tracking.experiment)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    cache_dir = root / "cache"
    digest = cfg.digest("seed", "data", "pretrain", "finetune", "baselines")
    stale = tracking.mark_stale_runs(experiment_id, digest)

    def cached_rows(stage: str, method: str, compute) -> list[Row]:
        """A finished stage's rows are found by config hash instead of being computed again."""
        path = cache_dir / "results" / f"{digest}-{stage}-{method}.json"
        if path.exists():
            return [Row(**d) for d in json.loads(path.read_text())]
        rows = compute()
        atomic_write_text(path, json.dumps([asdict(r) for r in rows]))
        return rows

    tags = {**tracking.environment_tags(), "layerwise.digest": digest}
    if stale:
        tags["layerwise.resumed_from"] = ",".join(stale[:1])
    with tracking.start_run(cfg.name, experiment_id=experiment_id, tags=tags) as parent:
        tracking.log_config(cfg)
        for context, X, y in (("pool", split.X_pool, None), ("labeled", split.X_lab, split.y_lab),
                              ("validation", split.X_valid, split.y_valid),
                              ("test", split.X_test, split.y_test)):
            tracking.log_dataset_input(X, y, name=f"{ds.name}-{context}", source=ds.source,
                                       context=context)

        # -- stage 1: greedy pretraining, one nested run per layer --------------------------
        fit_layer = tracked_layer_fitter(cfg, uri=uri, experiment_id=experiment_id,
                                         cache_dir=cache_dir, image_shape=ds.image_shape)

        with tracking.start_run("pretrain", experiment_id=experiment_id, nested=True):
            stack, loaded = pretrain_stack(cfg, _tensor(split.X_pool), _tensor(split.X_valid),
                                           cache_dir=cache_dir, fit_layer=fit_layer)
            mlflow.log_params({"sizes": "-".join(map(str, stack.sizes)),
                               "layers_from_cache": sum(loaded)})
        stack.eval()

        # -- stage 2: fine-tuning (MLP, MTC, deep autoencoder) ------------------------------
        rows: list[Row] = []
        with tracking.start_run("finetune", experiment_id=experiment_id, nested=True):
            for method in cfg.finetune.methods:
                if method == "deep_autoencoder":
                    compute = lambda: fit_deep_autoencoder(cfg, split, stack=stack, uri=uri,
                                                           experiment_id=experiment_id)
                else:
                    compute = lambda: [fit_classifier(
                        cfg, split, stack=stack, method=method, uri=uri, experiment_id=experiment_id,
                        cache_dir=cache_dir, image_shape=ds.image_shape)]
                rows += cached_rows("finetune", method, compute)

        # -- stage 3: baselines on pixels and on codes --------------------------------------
        with tracking.start_run("baselines", experiment_id=experiment_id, nested=True):
            for method in cfg.baselines.methods:
                rows += cached_rows("baselines", method, lambda: run_baselines(
                    cfg, stack, split, uri=uri, experiment_id=experiment_id, methods=[method]))

        # -- stage 4: the results table -------------------------------------------------------
        title = (f"{cfg.name}: {ds.name}, {len(split.y_lab)} labels, "
                 f"{len(split.y_valid)} validation, {len(split.y_test)} test, seed {cfg.seed}")
        md = to_markdown(rows, title)
        tracking.log_text_artifact(md, "results/results.md")
        tracking.log_text_artifact(to_csv(rows), "results/results.csv")
        for r in rows:
            key = re.sub(r"[^\w/.-]+", "_", f"{r.metric.split(' (')[0]}/{r.method}/{r.inputs}")
            mlflow.log_metric(key, r.test)
        return RunResult(run_id=parent.info.run_id, tracking_uri=uri, rows=rows,
                         table_markdown=md, stack=stack, layers_loaded=loaded)
