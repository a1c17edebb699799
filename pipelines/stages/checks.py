"""What a run checks before it writes anything: the layers, the trainer's flags and the
fine-tuning settings that depend on the data, each refused with the dotted key and the fix.

The config's own types and ranges are pydantic's (``pipelines.config``); these are the checks
that need the data's width or Lightning, and that would otherwise fail after the tracking store
and the first runs were written.
"""
from __future__ import annotations

from pretrain.layer import Layer
from pretrain.presets import accepted_keys
from pretrain.whitening import Whitening

from pipelines.config import ConfigError, PipelineConfig
from pipelines.stages.pretraining import build_layers
from pipelines.training import make_trainer

TRAINER_KEYS = ("accelerator", "strategy", "precision", "devices", "num_nodes", "deterministic")


def check_trainer(cfg: PipelineConfig) -> None:
    """Build one Trainer from ``trainer``'s flags: an unknown accelerator or strategy, a GPU
    asked on a machine without one, a precision Lightning does not know are refused here."""
    try:
        make_trainer(cfg.trainer, max_epochs=1)
    except Exception as e:  # Lightning's MisconfigurationException, ValueError, RuntimeError
        text = " ".join(str(e).split())
        key = next((k for k in TRAINER_KEYS if k in text.lower()), None)
        where = f"trainer.{key}={getattr(cfg.trainer, key)!r}" if key else "trainer"
        raise ConfigError(f"{where}: {text} Fix it with --set trainer.{key or 'accelerator'}=... "
                          f"(e.g. cpu).") from None


def check_tangents(cfg: PipelineConfig, n_visible: int) -> None:
    """The MTC's ``finetune.n_tangents`` fits the stack: at most the top code's width and the
    input's dimension (the Jacobian has no more non-zero singular values)."""
    if not any(m.startswith("mtc") for m in cfg.finetune.methods) or not cfg.pretrain.layers:
        return
    k = cfg.finetune.n_tangents
    top = len(cfg.pretrain.layers) - 1
    n_top = cfg.pretrain.layers[top].n_hidden
    if k > n_top:
        raise ConfigError(f"finetune.n_tangents={k}: the stack's top code has "
                          f"pretrain.layers.{top}.n_hidden={n_top} units, so its Jacobian has at "
                          f"most {n_top} non-zero singular values; set finetune.n_tangents <= {n_top}")
    if k > n_visible:
        raise ConfigError(f"finetune.n_tangents={k}: the data has only {n_visible} input "
                          f"dimensions; set finetune.n_tangents <= {n_visible}")


def check_whitened_inputs(cfg: PipelineConfig, layers: list[Layer]) -> None:
    """A layer stacked on a whitening layer reads real-valued codes (zero mean, unit variance,
    either sign): it must reconstruct them with linear visible units and the squared error, not
    as Bernoulli means, which would fail on its first batch after the whitening was fitted."""
    for k in range(1, len(layers)):
        unit = layers[k].visible_unit
        if not isinstance(layers[k - 1], Whitening) or unit == "linear":
            continue
        kind, key = cfg.pretrain.layers[k].kind, f"pretrain.layers.{k}"
        fix = (f"--set {key}.visible_unit=linear --set {key}.loss=mse" if "loss" in accepted_keys(kind)
               else f"--set {key}.kind=grbm (Gaussian visible units)" if kind == "rbm"
               else "a layer kind with linear visible units")
        raise ConfigError(f"{key} ({kind}) is stacked on the whitening of pretrain.layers.{k - 1}, "
                          f"whose codes are real-valued (zero mean, unit variance, either sign), but "
                          f"it reconstructs them with visible_unit={unit!r}, which cannot reach them "
                          f"all; use {fix}")


def check_before_writing(cfg: PipelineConfig, n_visible: int) -> None:
    """Every check of a run's settings that needs the data's width or Lightning."""
    check_whitened_inputs(cfg, build_layers(cfg, n_visible))
    check_tangents(cfg, n_visible)
    check_trainer(cfg)
