"""The pretraining stage of a pipeline: build the layers from the config, fit them greedily.

Each layer is fitted by its own Lightning Trainer inside a nested MLflow run (metrics per epoch
through ``MLFlowLogger``, figures as artifacts) and saved to the stage cache as
``layer<k>-<hash>.pt``, keyed by the hash of the config that produced it: a re-run with the same config
loads finished layers instead of training them again, and an interrupted layer resumes from
its last Lightning checkpoint.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from pretrain.layer import Layer
from pretrain.presets import make_layer
from pretrain.stack import GreedyStack, Stack

from .config import PipelineConfig


class CheckpointMismatch(ValueError):
    """A saved layer that was produced by another config."""


def layer_digest(cfg: PipelineConfig, k: int) -> str:
    """The hash that names layer ``k``'s output: everything that determines its weights.

    That is the seed, the unlabeled pool (dataset and validation size), the trainer's numerics
    and layers 1..k; not the labels, the validation cap, the test subsample or fine-tuning.
    """
    sub = cfg.model_copy(deep=True)
    sub.pretrain.layers = sub.pretrain.layers[: k + 1]
    sub.data.valid_labels = sub.data.n_test = None
    sub.data.download = False
    sub.data.data_dir = None  # where the files were found does not change them (md5-checked)
    sub.trainer.devices = sub.trainer.num_nodes = 1
    sub.trainer.strategy = "auto"
    return sub.digest("seed", "data", "pretrain", "trainer")


def build_layers(cfg: PipelineConfig, n_visible: int) -> list[Layer]:
    """The untrained layers of ``cfg.pretrain.layers``, each seeded from the run's seed."""
    if not cfg.pretrain.layers:
        raise ValueError("pretrain.layers is empty: a stack needs at least one layer, e.g. "
                         "--set 'pretrain.layers=[{kind: cae, n_hidden: 100}]'")
    layers, n_in = [], n_visible
    for k, spec in enumerate(cfg.pretrain.layers):
        try:
            layer = make_layer(spec.kind, n_in, spec.n_hidden, seed=cfg.seed * 100 + k,
                               **spec.layer_kwargs())
        except (TypeError, ValueError) as e:
            raise ValueError(f"pretrain.layers.{k} ({spec.kind}): {e}") from None
        layers.append(layer)
        n_in = spec.n_hidden
    return layers


def save_layer(layer: Layer, path: Path, digest: str) -> None:
    """Save a trained layer atomically (temporary name, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save({"digest": digest, "kind": type(layer).__name__,
                    "state_dict": {k: v.detach().cpu() for k, v in layer.state_dict().items()}}, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_layer(layer: Layer, path: Path, digest: str) -> None:
    """Load a saved layer into ``layer``; refuse one saved under another config."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or tampered file: say which and what to do
        raise CheckpointMismatch(f"{path} cannot be read as a layer checkpoint ({type(e).__name__}: "
                                 f"{e}); delete it to retrain that layer") from None
    if not isinstance(blob, dict) or blob.get("digest") != digest:
        raise CheckpointMismatch(f"{path} was saved by another config (digest "
                                 f"{blob.get('digest') if isinstance(blob, dict) else '?'} != {digest}); "
                                 f"delete it or run with the config that made it")
    layer.load_state_dict(blob["state_dict"])


def log_layer_figures(layer: Layer, codes: torch.Tensor, *, k: int, run_id: str,
                      image_shape: tuple[int, int] | None, n_examples: int = 10) -> None:
    """Loss terms per epoch for every layer; filters and reconstructions (beside the corrupted
    inputs, for a denoising layer) for the first layer of image data."""
    from . import figures, tracking

    history = tracking.metric_history(run_id)
    if history:
        tracking.log_figure(figures.curves_figure(history, f"layer {k + 1}"), "figures/loss_terms.png")
    if k > 0 or image_shape is None:
        return
    tracking.log_figure(figures.filters_figure(layer.encoder_weight.detach().cpu().numpy(),
                                               image_shape), "figures/filters.png")
    x = codes[:n_examples]
    with torch.no_grad():
        r = layer.reconstruct(x)
        x_tilde = None
        kind = layer.hparams.get("corruption", "none")
        if kind != "none":
            from pretrain.corruption import corrupt
            g = torch.Generator().manual_seed(0)
            x_tilde = corrupt(x, kind, layer.hparams["corruption_level"], g).numpy()
    tracking.log_figure(figures.reconstruction_figure(x.numpy(), r.numpy(), image_shape, x_tilde),
                        "figures/reconstructions.png")


def tracked_layer_fitter(cfg: PipelineConfig, *, uri: str, experiment_id: str, cache_dir: Path,
                         image_shape: tuple[int, int] | None, log=None):
    """The ``fit_layer`` of :func:`pretrain_stack` that pipelines and benchmarks use: layer k in a
    nested MLflow run (its kind and digest as params, metrics per epoch, figures), fitted by a
    Trainer for the layer's own ``epochs`` and ``batch_size`` (else ``pretrain``'s), with a
    Lightning checkpoint in the cache to resume an interrupted layer from. A layer that refuses its
    input is reported with its place in the config. ``log`` (optional) gets one line per layer."""
    import mlflow
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import MLFlowLogger

    from . import tracking
    from .datamodule import ArrayDataModule
    from .training import last_checkpoint, make_trainer

    def fit_layer(k: int, layer: Layer, codes: torch.Tensor, val_codes: torch.Tensor | None) -> None:
        spec, digest = cfg.pretrain.layers[k], layer_digest(cfg, k)
        name = f"layer {k + 1} ({spec.kind} {layer.n_visible}-{layer.n_hidden})"
        if log is not None:
            log(f"pretraining {cfg.data.name} {name}")
        with tracking.start_run(name, experiment_id=experiment_id, nested=True) as run:
            mlflow.log_params({"kind": spec.kind, "index": k + 1, "digest": digest})
            logger = MLFlowLogger(tracking_uri=uri, run_id=run.info.run_id,
                                  experiment_name=cfg.tracking.experiment)
            dm = ArrayDataModule(codes, None, val_codes, None,
                                 batch_size=spec.batch_size or cfg.pretrain.batch_size,
                                 seed=cfg.seed * 100 + k)
            ckpt_dir = cache_dir / f"layer{k + 1}-{digest}-ckpt"
            trainer = make_trainer(
                cfg.trainer, max_epochs=spec.epochs or cfg.pretrain.epochs, logger=logger,
                # save_top_k=1: with 0, Lightning writes last.ckpt only when fit ends
                callbacks=[ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=1)],
                checkpointing=True, root_dir=cache_dir)
            try:
                trainer.fit(layer, datamodule=dm, ckpt_path=last_checkpoint(ckpt_dir))
            except ValueError as e:  # bad inputs for this layer (e.g. codes outside [0, 1])
                raise ValueError(f"pretrain.layers.{k} (layer {k + 1}, {spec.kind}): {e}") from None
            log_layer_figures(layer, codes, k=k, run_id=run.info.run_id, image_shape=image_shape)

    return fit_layer


def pretrain_stack(cfg: PipelineConfig, X: torch.Tensor, X_val: torch.Tensor | None, *,
                   cache_dir: Path, fit_layer) -> tuple[Stack, list[bool]]:
    """Greedy pretraining with per-layer caching.

    ``fit_layer(k, layer, codes, val_codes)`` trains one layer (the pipeline's tracked Trainer).
    Returns the stack and, per layer, whether it was loaded from the cache.
    """
    layers = build_layers(cfg, X.shape[1])
    greedy = GreedyStack(layers)
    loaded = [False] * len(layers)

    def fit_or_load(k: int, layer: Layer, codes, val_codes) -> None:
        digest = layer_digest(cfg, k)
        path = cache_dir / f"layer{k + 1}-{digest}.pt"  # a change above layer k reuses layer k
        if path.exists():
            load_layer(layer, path, digest)
            loaded[k] = True
            return
        fit_layer(k, layer, codes, val_codes)
        save_layer(layer, path, digest)

    stack = greedy.fit(X, fit_or_load, X_val)
    return stack, loaded
