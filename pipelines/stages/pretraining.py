"""The pretraining stage of a pipeline: build the layers from the config, fit them greedily or
jointly (``pretrain.schedule``).

Each layer is fitted by its own Lightning Trainer inside a nested MLflow run (metrics per epoch
through ``MLFlowLogger``, figures as artifacts) and saved to the layer cache
(``pipelines.stages.layer_cache``): a re-run with the same config loads finished layers instead
of training them again, and an interrupted layer resumes from its last Lightning checkpoint.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path

import mlflow
import torch
from lightning.pytorch.loggers import MLFlowLogger

from pretrain.corruption import corrupt
from pretrain.layer import Layer
from pretrain.presets import accepted_keys, make_layer
from pretrain.joint import JointStack
from pretrain.stack import GreedyStack, Stack
from pretrain.whitening import Whitening

from pipelines import progress, tracking, training
from pipelines.config import PipelineConfig
from pipelines.files import file_lock
from pipelines.reporting import figures
from pipelines.stages.layer_cache import layer_digest, layer_path, load_layer, save_layer


def build_layers(cfg: PipelineConfig, n_visible: int) -> list[Layer]:
    """The untrained layers of ``cfg.pretrain.layers``, each seeded from the run's seed."""
    if not cfg.pretrain.layers:
        raise ValueError("pretrain.layers is empty: a stack needs at least one layer, e.g. "
                         "--set 'pretrain.layers=[{kind: cae, n_hidden: 100}]'")
    layers, n_in, maps_below = [], n_visible, None
    for k, spec in enumerate(cfg.pretrain.layers):
        kwargs = spec.layer_kwargs()
        if maps_below is not None and spec.in_shape is None and "in_shape" in accepted_keys(spec.kind):
            kwargs["in_shape"] = maps_below  # a convolutional layer reads the maps of the one below
        try:
            layer = make_layer(spec.kind, n_in, spec.n_hidden, seed=cfg.seed * 100 + k, **kwargs)
        except (TypeError, ValueError) as e:
            raise ValueError(f"pretrain.layers.{k} ({spec.kind}): {e}") from None
        layers.append(layer)
        n_in, maps_below = spec.n_hidden, getattr(layer, "out_shape", None)
    return layers


def log_layer_figures(layer: Layer, codes: torch.Tensor, *, k: int, run_id: str,
                      image_shape: tuple[int, int] | None, n_examples: int = 10,
                      whitening: Whitening | None = None) -> None:
    """Loss terms per epoch for every layer; filters and reconstructions (beside the corrupted
    inputs, for a denoising layer) for the first layer of image data, and for the second when the
    first is ``whitening``: drawn in input space through it (Eqs. 6 and 9 of
    ``pretrain.whitening``), with the decoder filters beside the encoder filters, as for a
    whitening layer itself."""
    history = tracking.metric_history(run_id)
    if history:
        tracking.log_figure(figures.curves_figure(history, f"layer {k + 1}"), "figures/loss_terms.png")
    # layer 2 above a whitening layer, drawn in input space (a dense layer: a filter bank is not)
    below = whitening if k == 1 and layer.encoder_weight.ndim == 2 else None
    if image_shape is None or (k > 0 and below is None):
        return
    to_input = (lambda v: v) if below is None else below.decode  # Eq. (6): codes back to pixels
    W, W_prime = ((layer.encoder_weight, layer.decoder_weight) if below is None
                  else below.input_filters(layer))  # Eq. (9)
    W, W_prime = W.detach().cpu().numpy(), W_prime.detach().cpu().numpy()
    if isinstance(layer, Whitening):  # ZCA's rows by their pixel's variance: not the border first
        order = layer.filter_order().cpu().numpy()
        W, W_prime = W[order], W_prime[:, order]
    # a convolutional layer's W is a filter bank (M, C, k_h, k_w): one image per map and channel
    shape = image_shape if W.ndim == 2 else W.shape[-2:]
    tracking.log_figure(figures.filters_figure(W.reshape(-1, shape[0] * shape[1]), shape),
                        "figures/filters.png")
    if below is not None or isinstance(layer, Whitening):
        tracking.log_figure(figures.decoder_filters_figure(W, W_prime, image_shape),
                            "figures/decoder_filters.png")
    x = codes[:n_examples]
    with torch.no_grad():
        r = to_input(layer.reconstruct(x))
        x_tilde = None
        kind = layer.hparams.get("corruption", "none")
        if kind != "none":
            g = torch.Generator().manual_seed(0)
            x_tilde = to_input(corrupt(x, kind, layer.hparams["corruption_level"], g)).numpy()
        x = to_input(x)
    tracking.log_figure(figures.reconstruction_figure(x.numpy(), r.numpy(), image_shape, x_tilde),
                        "figures/reconstructions.png")


def _whitening_below(cfg: PipelineConfig, k: int, cache_dir: Path,
                     image_shape: tuple[int, int] | None) -> Whitening | None:
    """Layer 1 when it is a whitening layer and ``k`` is layer 2 of image data, for the figures of
    layer 2 in input space: read back from the layer cache, where :func:`pretrain_stack` saves
    it (trained or loaded) before layer 2 is fitted."""
    if k != 1 or image_shape is None or cfg.pretrain.layers[0].kind != "whiten":
        return None
    path = layer_path(cache_dir, cfg, 0)
    if not path.exists():
        return None
    first = build_layers(cfg, image_shape[0] * image_shape[1])[0]
    load_layer(first, path, layer_digest(cfg, 0))
    return first


def layer_epochs(cfg: PipelineConfig, k: int) -> int:
    """The epochs layer ``k`` trains: its own ``epochs``, else ``pretrain.epochs``."""
    return cfg.pretrain.layers[k].epochs or cfg.pretrain.epochs


def layer_label(cfg: PipelineConfig, k: int, layer: Layer) -> str:
    """Layer ``k``'s kind and sizes as logs and tables name it: ``cae_h 784-1000``."""
    return f"{cfg.pretrain.layers[k].kind} {layer.n_visible}-{layer.n_hidden}"


def tracked_layer_fitter(cfg: PipelineConfig, *, uri: str, experiment_id: str, cache_dir: Path,
                         image_shape: tuple[int, int] | None, log=None):
    """The ``fit_layer`` of :func:`pretrain_stack` that pipelines and benchmarks use: layer k in a
    nested MLflow run (its kind and digest as params, metrics per epoch, figures), fitted by a
    Trainer for the layer's own ``epochs`` and ``batch_size`` (else ``pretrain``'s), with a
    Lightning checkpoint in the cache to resume an interrupted layer from. A layer that refuses its
    input is reported with its place in the config. ``log`` (optional) gets one line per layer.

    Called with ``epochs=e`` (the joint schedule's round e), it takes the layer to e epochs from
    its checkpoint and reopens the layer's run after round 1; the checkpoints of a joint stack
    are named by the whole stack, whose rounds they replay (a killed joint run resumes there)."""
    runs: dict[int, str] = {}  # layer -> its nested run, reopened in later rounds

    def fit_layer(k: int, layer: Layer, codes: torch.Tensor, val_codes: torch.Tensor | None,
                  epochs: int | None = None) -> None:
        spec, digest = cfg.pretrain.layers[k], layer_digest(cfg, k)
        name = f"layer {k + 1} ({layer_label(cfg, k, layer)})"
        full, joint = layer_epochs(cfg, k), cfg.pretrain.schedule == "joint"
        epochs = full if epochs is None else epochs
        if log is not None and (not joint or epochs == 1):
            log(f"pretraining {cfg.data.name} {name}")
        title = f"pretraining layer {k + 1} of {len(cfg.pretrain.layers)} ({layer_label(cfg, k, layer)})"
        ckpt_key = layer_digest(cfg, len(cfg.pretrain.layers) - 1) if joint else digest
        run_cm = (mlflow.start_run(run_id=runs[k], nested=True) if joint and epochs > 1 and k in runs
                  else tracking.start_run(name, experiment_id=experiment_id, nested=True))
        with progress.stage(title, total=epochs), run_cm as run:
            runs[k] = run.info.run_id
            mlflow.log_params({"kind": spec.kind, "index": k + 1, "digest": digest})
            logger = MLFlowLogger(tracking_uri=uri, run_id=run.info.run_id,
                                  experiment_name=cfg.tracking.experiment)
            with warnings.catch_warnings():
                if joint:  # each round after the first goes on in the checkpoint folder it left
                    warnings.filterwarnings("ignore", "Checkpoint directory .* exists and is not empty")
                training.fit_layer(layer, codes, val_codes, epochs=epochs,
                                   batch_size=spec.batch_size or cfg.pretrain.batch_size,
                                   seed=cfg.seed * 100 + k, trainer_cfg=cfg.trainer, logger=logger,
                                   ckpt_dir=cache_dir / f"layer{k + 1}-{ckpt_key}-ckpt",
                                   where=f"pretrain.layers.{k} (layer {k + 1}, {spec.kind})")
            if epochs < full:  # a joint round before the last: figures once, at the end
                return
            log_layer_figures(layer, codes, k=k, run_id=run.info.run_id, image_shape=image_shape,
                              whitening=_whitening_below(cfg, k, cache_dir, image_shape))

    return fit_layer


def _layer_lock(cfg: PipelineConfig, path: Path):
    """A lock beside a cached layer, so that two runs of one config in one folder train it once
    and never share its Lightning checkpoint. Not under DDP, where every rank must enter ``fit``
    together (a rank waiting on the lock would stall the others)."""
    single = (str(cfg.trainer.devices) == "1" and cfg.trainer.num_nodes == 1
              and int(os.environ.get("WORLD_SIZE", "1")) <= 1)
    return file_lock(path.with_name(f".{path.stem}.lock")) if single else contextlib.nullcontext()


def pretrain_stack(cfg: PipelineConfig, X: torch.Tensor, X_val: torch.Tensor | None, *,
                   cache_dir: Path, fit_layer) -> tuple[Stack, list[bool]]:
    """Greedy or joint pretraining (``cfg.pretrain.schedule``) with per-layer caching.

    ``fit_layer(k, layer, codes, val_codes)`` trains one layer (the pipeline's tracked Trainer).
    Returns the stack and, per layer, whether it was loaded from the cache.
    """
    layers = build_layers(cfg, X.shape[1])
    if cfg.pretrain.schedule == "joint":
        return _pretrain_jointly(cfg, layers, X, X_val, cache_dir=cache_dir, fit_layer=fit_layer)
    greedy = GreedyStack(layers)
    loaded = [False] * len(layers)

    def fit_or_load(k: int, layer: Layer, codes, val_codes) -> None:
        digest, path = layer_digest(cfg, k), layer_path(cache_dir, cfg, k)
        with _layer_lock(cfg, path):  # another run training this layer: wait, then load it
            if path.exists():
                load_layer(layer, path, digest)
                loaded[k] = True
                progress.note(f"layer {k + 1} of {len(layers)} loaded from the cache ({path.name})")
                return
            fit_layer(k, layer, codes, val_codes)
            save_layer(layer, path, digest)

    stack = greedy.fit(X, fit_or_load, X_val)
    return stack, loaded


def _pretrain_jointly(cfg: PipelineConfig, layers: list[Layer], X: torch.Tensor,
                      X_val: torch.Tensor | None, *, cache_dir: Path, fit_layer) -> tuple[Stack, list[bool]]:
    """The joint schedule (``pretrain.joint``), cached as a whole: every layer loaded when every
    layer is in the cache, else all trained together (their rounds resumed from the stack's
    checkpoints) and the missing ones saved. Layer k's file is keyed by layers 1..k, which alone
    determine its weights, so a deeper joint stack finds it; a shallower one's files do not let
    a deeper one skip rounds, since layer k + 1 needs the path of layer k's codes."""
    joint, n = JointStack(layers), len(layers)
    digests = [layer_digest(cfg, k) for k in range(n)]
    paths = [layer_path(cache_dir, cfg, k) for k in range(n)]
    with _layer_lock(cfg, paths[-1]):
        if all(p.exists() for p in paths):
            for layer, path, digest in zip(layers, paths, digests):
                load_layer(layer, path, digest)
            progress.note(f"all {n} jointly trained layers loaded from the cache ({paths[-1].name})")
            return joint.stack, [True] * n
        epochs = [layer_epochs(cfg, k) for k in range(n)]
        stack = joint.fit(X, fit_layer, X_val, epochs=epochs)
        for layer, path, digest in zip(stack, paths, digests):
            if not path.exists():
                save_layer(layer, path, digest)
    return stack, [False] * n
