"""Building Lightning Trainers from the config's trainer flags: the one place that does.

Layers and fine-tuning modules never build a Trainer; every stage of a pipeline, benchmark
and scikit-learn estimator comes through ``make_trainer`` so that ``--set trainer.devices=2
--set trainer.strategy=ddp`` reaches all of them.
"""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import lightning.pytorch as L
import torch


def quiet_lightning() -> None:
    """Silence Lightning's start-up chatter (GPU/TPU availability, tips) for CLI runs."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero",
                 "pytorch_lightning", "pytorch_lightning.utilities.rank_zero", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*GPU available but not used.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    warnings.filterwarnings("ignore", ".*is not a valid datatype for.*")
    warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", ".*Total length of `list` across ranks is zero.*")
    warnings.filterwarnings("ignore", ".*dataset source can be interpreted in multiple ways.*")


def make_trainer(trainer_cfg=None, *, max_epochs: int, logger=False, callbacks=(),
                 root_dir: str | os.PathLike | None = None, progress_bar: bool = False,
                 checkpointing: bool = False, **overrides) -> L.Trainer:
    """A Trainer with the config's flags (accelerator, devices, strategy, precision, ...)."""
    flags = {} if trainer_cfg is None else trainer_cfg.model_dump()
    flags.update(overrides)
    deterministic = flags.pop("deterministic", True)
    return L.Trainer(
        max_epochs=max_epochs,
        logger=logger,
        callbacks=list(callbacks),
        default_root_dir=str(root_dir) if root_dir else None,
        enable_progress_bar=progress_bar,
        enable_model_summary=False,
        enable_checkpointing=checkpointing,
        deterministic=deterministic,
        num_sanity_val_steps=0,
        log_every_n_steps=1,  # layers log per epoch; this only silences the interval warning
        **flags,
    )


def compute_device(trainer_cfg=None) -> torch.device:
    """The device a Trainer with these flags trains on, for the work done outside the Trainer
    (the MTC's tangents): CUDA for ``accelerator`` ``gpu``/``cuda``/``auto`` when a GPU is
    there, else the CPU."""
    accelerator = "cpu" if trainer_cfg is None else str(trainer_cfg.accelerator).lower()
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def last_checkpoint(dirpath: str | os.PathLike) -> str | None:
    """The ``last.ckpt`` that ``ModelCheckpoint(save_last=True)`` leaves, if any."""
    p = Path(dirpath) / "last.ckpt"
    return str(p) if p.exists() else None


class KeepBest(L.Callback):
    """Keep, in memory, the weights of the epoch with the lowest ``(monitor, tiebreak)``.

    Model selection on a small validation set ties often (the error moves in steps of 1/n), so
    ties are broken by a smooth second metric (the validation cross-entropy). ``restore`` puts
    the best weights back into the module after ``fit``.
    """

    def __init__(self, monitor: str = "val/error", tiebreak: str = "val/ce"):
        self.monitor, self.tiebreak = monitor, tiebreak
        self.best_score: tuple[float, float] | None = None
        self.best_epoch: int | None = None
        self.best_state: dict | None = None

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        m = trainer.callback_metrics
        score = (float(m[self.monitor]), float(m.get(self.tiebreak, 0.0)))
        if self.best_score is None or score < self.best_score:
            self.best_score, self.best_epoch = score, trainer.current_epoch
            self.best_state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    def restore(self, pl_module) -> None:
        if self.best_state is None:
            raise RuntimeError(f"no validation epoch logged {self.monitor}: cannot select a model")
        pl_module.load_state_dict(self.best_state)
