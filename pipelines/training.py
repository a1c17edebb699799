"""Lightning Trainers built from the config's trainer flags, and the one way a layer is fitted.

Layers and fine-tuning modules never build a Trainer; every stage of a pipeline, benchmark,
analysis and scikit-learn estimator comes through ``make_trainer`` so that ``--set
trainer.devices=2 --set trainer.strategy=ddp`` reaches all of them, and every layer of a stack
is fitted by ``fit_layer``, tracked or not.
"""
from __future__ import annotations

import logging
import math
import os
import signal
import warnings
from pathlib import Path

import lightning.pytorch as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from pipelines import flop_count, interrupts, progress
from pipelines.data.datamodule import ArrayDataModule


def quiet_lightning() -> None:
    """Silence Lightning's start-up chatter (GPU/TPU availability, tips) and MLflow's INFO lines
    (creating the store's tables) for CLI runs: nothing a user can act on."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero",
                 "pytorch_lightning", "pytorch_lightning.utilities.rank_zero", "lightning",
                 "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.ERROR)  # its warnings name its internals
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*GPU available but not used.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    warnings.filterwarnings("ignore", ".*is not a valid datatype for.*")
    warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", ".*Total length of `list` across ranks is zero.*")
    warnings.filterwarnings("ignore", ".*dataset source can be interpreted in multiple ways.*")


class Trainer(L.Trainer):
    """Lightning's Trainer, whose ``fit`` ends on SIGTERM with :class:`interrupts.Interrupted`
    (exit code 143) rather than Lightning's ``SIGTERMException``, a ``SystemExit`` with code 0
    that would end a killed run FINISHED-looking with status 0."""

    def fit(self, *args, **kwargs) -> None:
        try:
            return super().fit(*args, **kwargs)
        except SIGTERMException:
            raise interrupts.interrupted(signal.SIGTERM) from None


def make_trainer(trainer_cfg=None, *, max_epochs: int, logger=False, callbacks=(),
                 root_dir: str | os.PathLike | None = None, progress_bar: bool = False,
                 checkpointing: bool = False, **overrides) -> Trainer:
    """A Trainer with the config's flags (accelerator, devices, strategy, precision, ...)."""
    flags = {} if trainer_cfg is None else trainer_cfg.model_dump()
    flags.update(overrides)
    deterministic = flags.pop("deterministic", True)
    return Trainer(
        max_epochs=max_epochs,
        logger=logger,
        callbacks=[*callbacks, EpochProgress(), *flop_count.callbacks()],
        default_root_dir=str(root_dir) if root_dir else None,
        enable_progress_bar=progress_bar,
        enable_model_summary=False,
        enable_checkpointing=checkpointing,
        deterministic=deterministic,
        num_sanity_val_steps=0,
        log_every_n_steps=1,  # layers log per epoch; this only silences the interval warning
        **flags,
    )


class EpochProgress(L.Callback):
    """Report each finished epoch, with the numbers the module shows in a progress bar (its
    ``progress_terms``), to the open stage of ``pipelines.progress``."""

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        shown = {k: float(v) for k, v in trainer.progress_bar_metrics.items()
                 if k != "v_num" and getattr(v, "numel", lambda: 1)() == 1}
        progress.epoch(trainer.current_epoch + 1, trainer.max_epochs, **shown)


def fit_layer(layer: L.LightningModule, X, X_val=None, *, epochs: int, batch_size: int, seed: int,
              trainer_cfg=None, logger=False, callbacks=(), ckpt_dir: str | os.PathLike | None = None,
              where: str | None = None, **overrides) -> L.Trainer | None:
    """Fit one pretraining layer on ``X`` (N, d) for ``epochs`` epochs, in batches of
    ``batch_size`` (at most N) shuffled by ``seed``; validate on ``X_val`` when given.

    ``ckpt_dir``: keep a Lightning ``last.ckpt`` there and resume from it, so that an interrupted
    layer goes on from its last finished epoch. ``where`` (e.g. ``pretrain.layers.1``) prefixes
    the message of an input the layer refuses. A layer with ``updates_per_step`` K > 1 (the RBM)
    gets K batches a training step: the same updates as one a step. The layer keeps no reference
    to the Trainer afterwards (it pickles and clones); the Trainer is returned (None for
    ``epochs == 0``).
    """
    if epochs == 0:
        return None
    dm = ArrayDataModule(X, None, X_val, None, batch_size=min(batch_size, len(X)), seed=seed,
                         batches_per_step=getattr(layer, "updates_per_step", 1))
    callbacks = list(callbacks)
    if ckpt_dir is not None:
        # save_top_k=1: with 0, Lightning writes last.ckpt only when fit ends
        callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=1))
    trainer = make_trainer(trainer_cfg, max_epochs=epochs, logger=logger, callbacks=callbacks,
                           checkpointing=ckpt_dir is not None,
                           root_dir=Path(ckpt_dir).parent if ckpt_dir is not None else None, **overrides)
    resume = last_checkpoint(ckpt_dir) if ckpt_dir is not None else None
    if resume is not None:
        check_checkpoint(resume)
    try:
        trainer.fit(layer, datamodule=dm, ckpt_path=resume)
    except ValueError as e:  # inputs outside the range of the layer's loss, and the like
        if where is None:
            raise
        raise ValueError(f"{where}: {e}") from None
    layer.trainer = None
    return trainer


def compute_device(trainer_cfg=None) -> torch.device:
    """The device a Trainer with these flags trains on, for the work done outside the Trainer
    (the MTC's tangents): CUDA for ``accelerator`` ``gpu``/``cuda``/``auto`` when a GPU is
    there, else the CPU."""
    accelerator = "cpu" if trainer_cfg is None else str(trainer_cfg.accelerator).lower()
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def check_checkpoint(path: str | os.PathLike) -> None:
    """Refuse, with the fix, a Lightning checkpoint that cannot be read back (truncated or
    edited by hand), before ``fit`` fails on it with a traceback."""
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise ValueError(f"{path} cannot be read as a Lightning checkpoint ({type(e).__name__}: "
                         f"{first}); delete it to train that layer from its first epoch") from None


def last_checkpoint(dirpath: str | os.PathLike) -> str | None:
    """The ``last.ckpt`` that ``ModelCheckpoint(save_last=True)`` leaves, if any."""
    p = Path(dirpath) / "last.ckpt"
    return str(p) if p.exists() else None


class ChanceGuard(L.Callback):
    """Stop a classifier whose training diverged without a non-finite loss (a learning rate so
    high that the weights blow up but stay finite): its validation error has stayed at chance
    (no better than guessing the commonest class, within 3 standard errors) and its validation
    cross-entropy above twice a uniform guess's (log K) for ``min_epochs`` epochs. A model that
    learns slowly stays near log K and is left alone. Raises ``FloatingPointError``, as the
    non-finite guard of ``pretrain.module`` does."""

    def __init__(self, y_valid, n_classes: int, min_epochs: int = 5):
        counts = np.bincount(np.asarray(y_valid, dtype=np.int64), minlength=n_classes)
        n = max(int(counts.sum()), 1)
        self.chance = 1.0 - counts.max() / n
        self.band = 3 * math.sqrt(self.chance * (1 - self.chance) / n)
        self.uniform_ce = math.log(max(n_classes, 2))
        self.min_epochs = min_epochs
        self.errors: list[float] = []
        self.ces: list[float] = []

    def on_validation_end(self, trainer, pl_module) -> None:
        m = trainer.callback_metrics
        if trainer.sanity_checking or "val/error" not in m or "val/ce" not in m:
            return
        self.errors.append(float(m["val/error"]))
        self.ces.append(float(m["val/ce"]))
        if (len(self.errors) >= self.min_epochs and min(self.errors) >= self.chance - self.band
                and min(self.ces) > 2 * self.uniform_ce):
            raise FloatingPointError(
                f"training diverged: over {len(self.errors)} epochs the validation error stayed at "
                f"chance ({min(self.errors):.1%} at best; guessing the commonest class gives "
                f"{self.chance:.1%}) and the validation cross-entropy at {min(self.ces):.3g} or more "
                f"(a uniform guess gives {self.uniform_ce:.2f}). Likely cause: a learning rate too "
                f"high; lower it")


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
