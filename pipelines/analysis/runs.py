"""A finished pipeline run, read back for analysis, and the analysis logged to it.

:func:`load_run` rebuilds a run's stack from its logged ``config.yaml`` and the stage cache
(``pipelines.stages.layer_cache``): layer k is read from ``<root>/cache/layer<k>-<digest>.pt``,
with the digest logged by its nested ``layer k (...)`` run under the run's ``pretrain`` stage
(or, for layers the run loaded from the cache, recomputed from the config), and the data split
is made again from the config. :func:`log_to_run` puts figures, metrics and texts on that run
(under ``analysis/``) through the client on the existing run, so the run's status and end time
stay as the pipeline left them. :func:`stack_inputs` gives the run's arrays to its stack.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import torch
import yaml
from mlflow.exceptions import MlflowException

from pipelines import tracking
from pipelines.config import PipelineConfig, config_from_dict
from pipelines.data.datasets import Dataset
from pipelines.data.splits import Split
from pipelines.stages.inputs import config_dataset, config_split
from pipelines.stages.layer_cache import layer_digest, load_layer
from pipelines.stages.pretraining import build_layers
from pretrain.stack import Stack


@dataclass
class LoadedRun:
    """A pipeline run's config, trained stack and data split, read back from MLflow and the cache."""

    run_id: str
    uri: str
    cfg: PipelineConfig
    stack: Stack
    ds: Dataset
    split: Split


def cache_root(uri: str) -> Path:
    """The pipeline's root (``mlruns``) beside a local SQLite store; ``./mlruns`` otherwise."""
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).parent
    return Path("mlruns")


def _logged_digests(client, run) -> dict[int, str]:
    """``{k: digest}`` from the nested ``layer k (...)`` runs under the run's ``pretrain`` stage."""
    exp = run.info.experiment_id
    stages = client.search_runs([exp], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    out = {}
    for stage in stages:
        if stage.data.tags.get("mlflow.runName") != "pretrain":
            continue
        for child in client.search_runs([exp], f"tags.mlflow.parentRunId = '{stage.info.run_id}'"):
            p = child.data.params
            if "digest" in p and "index" in p:
                out[int(p["index"]) - 1] = p["digest"]
    return out


def load_run(run_id: str, *, uri: str | None = None, root: str | Path | None = None) -> LoadedRun:
    """Rebuild a pipeline run's stack from its logged ``config.yaml`` and the layer cache.

    Layer k is read from ``<root>/cache/layer<k>-<digest>.pt`` with the digest logged by its
    nested layer run (or, for layers the run loaded from the cache, recomputed from the config).
    ``root`` defaults to :func:`cache_root` of the store. A nested (stage or layer) run id is
    refused with the pipeline run's id named.
    """
    uri = tracking.resolve_uri(uri)
    tracking.check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as e:
        raise ValueError(f"run {run_id} is not in {uri} ({e.message.splitlines()[0]}); give the parent "
                         f"run id of a pipeline run (layerwise ui lists them) and --uri of its "
                         f"store") from None
    if "mlflow.parentRunId" in run.data.tags:  # a stage or layer run: config and stack are its root's
        top = run
        while "mlflow.parentRunId" in top.data.tags:  # layer -> pretrain stage -> pipeline run
            top = client.get_run(top.data.tags["mlflow.parentRunId"])
        raise ValueError(f"run {run_id} ({run.data.tags.get('mlflow.runName', '?')}) is a nested run "
                         f"of pipeline run {top.info.run_id} ({top.data.tags.get('mlflow.runName', '?')}); "
                         f"give that one: --run-id {top.info.run_id}")
    try:
        text = mlflow.artifacts.load_text(f"runs:/{run_id}/config.yaml")
    except MlflowException as e:
        raise ValueError(f"run {run_id} or its config.yaml is not in {uri} ({e.message.splitlines()[0]}); "
                         f"give the parent run id of a pipeline run (layerwise ui lists them) and "
                         f"--uri of its store") from None
    cfg = config_from_dict(yaml.safe_load(text), source=f"run {run_id}")
    if not cfg.trains_stack:
        raise ValueError(f"run {run_id} trained no stack: its methods ({', '.join(cfg.finetune.methods)}) "
                         f"start from fresh weights; give a run whose config pretrains one (a method "
                         f"such as mlp, mtc or vat)")
    root = cache_root(uri) if root is None else Path(root)
    ds = config_dataset(cfg, download=False)
    split = config_split(ds, cfg)
    layers = build_layers(cfg, ds.n_features)
    logged = _logged_digests(client, run)
    for k, layer in enumerate(layers):
        digest = logged.get(k) or layer_digest(cfg, k)
        path = root / "cache" / f"layer{k + 1}-{digest}.pt"
        if not path.exists():
            raise FileNotFoundError(f"layer {k + 1} of run {run_id} is not in the cache ({path} is "
                                    f"missing); re-run the pipeline with that run's config, or pass "
                                    f"--root, the folder holding cache/")
        load_layer(layer, path, digest)
        layer.layer_name = f"layer {k + 1}"
    stack = Stack(layers).eval()
    return LoadedRun(run_id=run_id, uri=uri, cfg=cfg, stack=stack, ds=ds, split=split)


def stack_inputs(stack: Stack, X) -> torch.Tensor:
    """X (N, d), an array or a tensor, as a tensor of the stack's dtype."""
    dtype = stack[0].encoder_weight.dtype
    return X.to(dtype) if isinstance(X, torch.Tensor) else torch.as_tensor(np.asarray(X), dtype=dtype)


def log_to_run(run_id: str, *, uri: str | None = None, figures: dict | None = None,
               metrics: dict[str, float] | None = None, texts: dict[str, str] | None = None) -> None:
    """Log figures, metrics and text artifacts to an existing run without reopening it."""
    uri = tracking.resolve_uri(uri)
    tracking.check_reachable(uri)
    client = mlflow.MlflowClient(uri)
    for path, fig in (figures or {}).items():
        client.log_figure(run_id, fig, path)
    for key, value in (metrics or {}).items():
        client.log_metric(run_id, key, float(value))
    for path, text in (texts or {}).items():
        client.log_text(run_id, text, path)
