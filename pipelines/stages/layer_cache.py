"""Trained layers cached on disk: ``layer<k>-<digest>.pt``, named by the config that made them.

A re-run with the same config loads each finished layer instead of training it again; a change
above layer k (another width for layer k + 1, other fine-tuning) reuses layers 1..k. The digest
covers exactly what determines a layer's weights (:func:`layer_digest`); the file stores it,
so a file renamed or copied from another config is refused rather than trusted.
"""
from __future__ import annotations

from pathlib import Path

import torch

from pretrain.layer import Layer

from pipelines.config import PipelineConfig
from pipelines.files import atomic_path


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


def layer_path(cache_dir: Path, cfg: PipelineConfig, k: int) -> Path:
    """Where layer ``k`` of ``cfg`` is cached."""
    return Path(cache_dir) / f"layer{k + 1}-{layer_digest(cfg, k)}.pt"


def save_layer(layer: Layer, path: Path, digest: str) -> None:
    """Save a trained layer atomically (temporary name, then rename)."""
    with atomic_path(path) as tmp:
        torch.save({"digest": digest, "kind": type(layer).__name__,
                    "state_dict": {k: v.detach().cpu() for k, v in layer.state_dict().items()}}, tmp)


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
    try:
        layer.load_state_dict(blob["state_dict"])
    except (RuntimeError, KeyError, TypeError) as e:  # the right digest, other tensors
        first = str(e).strip().splitlines()
        raise CheckpointMismatch(f"{path} holds tensors that do not fit layer {type(layer).__name__} "
                                 f"{layer.n_visible}-{layer.n_hidden} ({first[-1].strip() if first else e}); "
                                 f"delete it to retrain that layer") from None
