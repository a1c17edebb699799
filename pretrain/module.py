"""The Lightning scaffolding of every trained module: pretraining layers and fine-tuned networks.

A subclass computes the loss of a batch as named scalar terms (``batch_terms``; the key
``"loss"`` is what is minimised); this base class turns them into Lightning's training,
validation and test steps, logs each term as ``stage/name``, stops on a non-finite loss
before it reaches the weights, and builds the optimizer from ``lr``, ``optimizer``,
``momentum`` and ``weight_decay``:

    (1) sgd    g = dL/dw + weight_decay w,  v <- momentum v + g,  w <- w - lr v
    (2) adam   Adam (Kingma & Ba 2015) on the same g
"""
from __future__ import annotations

import lightning.pytorch as L
import torch

from pretrain.checks import check_choice, check_positive, check_probability
from pretrain.names import OPTIMIZERS


def check_optimizer(lr: float, optimizer: str, momentum: float, weight_decay: float) -> None:
    """Raise the ValueError naming the first bad optimizer setting, if any."""
    check_positive("lr", lr)
    check_choice("optimizer", optimizer, OPTIMIZERS)
    check_probability("momentum", momentum)
    check_positive("weight_decay", weight_decay, allow_zero=True)


def fused_sgd(params) -> bool | None:
    """``fused=True`` for ``torch.optim.SGD`` where torch has the fused kernel (CPU and CUDA
    floating-point parameters): weight decay, momentum and the step in one pass over each
    weight instead of four, with the same numbers as the loop; else None (torch's default)."""
    params = list(params)
    ok = params and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return True if ok else None


def batch_input(batch) -> torch.Tensor:
    """The input ``x`` of a batch: the tensor itself, or the first item of ``(x,)``/``(x, y)``."""
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def batch_size(batch) -> int:
    """Examples in a batch: the labeled part of a dict batch, else the input's rows."""
    if isinstance(batch, dict):
        batch = batch["labeled"]
    return batch_input(batch).shape[0]


class Module(L.LightningModule):
    """Base class of the trained modules: steps, logging, the non-finite guard, the optimizer.

    Parameters
    ----------
    lr : learning rate of the optimizer (> 0).
    optimizer : one of ``OPTIMIZERS``.
    momentum : SGD momentum in [0, 1] (ignored by Adam).
    weight_decay : L2 weight decay added by the optimizer (>= 0).
    """

    #: the terms ``log_terms`` logs (None: all of them) and those shown in the progress bar
    logged_terms: tuple[str, ...] | None = None
    progress_terms: tuple[str, ...] = ("loss",)
    #: SGD through torch's fused kernel (``fused_sgd``) rather than its default loop
    fused: bool = False
    #: what the message of a non-finite loss advises after the learning rate
    nonfinite_advice = "; lower it or check the data for NaN/inf."

    def __init__(self, *, lr: float, optimizer: str, momentum: float, weight_decay: float):
        super().__init__()
        check_optimizer(lr, optimizer, momentum, weight_decay)
        self._opt = dict(lr=lr, optimizer=optimizer, momentum=momentum, weight_decay=weight_decay)

    def batch_terms(self, batch, stage: str, batch_idx: int) -> dict[str, torch.Tensor]:
        """The named scalar terms of a batch at ``stage`` (train, val or test)."""
        raise NotImplementedError

    def describe(self) -> str:
        """The module as messages name it."""
        return type(self).__name__

    def log_terms(self, stage: str, terms: dict[str, torch.Tensor], batch) -> None:
        """Log each term as ``stage/name``, the epoch mean weighted by batch size."""
        size = batch_size(batch)
        for name, value in terms.items():
            if self.logged_terms is None or name in self.logged_terms:
                self.log(f"{stage}/{name}", value.detach(), on_step=False, on_epoch=True,
                         prog_bar=name in self.progress_terms, batch_size=size,
                         sync_dist=True)  # under DDP every rank selects on the same numbers

    def _step(self, batch, stage: str, batch_idx: int = 0) -> torch.Tensor:
        terms = self.batch_terms(batch, stage, batch_idx)
        loss = terms["loss"]
        if not torch.isfinite(loss):  # one scalar read: the check that no NaN reaches the weights
            raise FloatingPointError(
                f"{self.describe()}: the {stage} loss became {loss.item()} at epoch "
                f"{self.current_epoch}, step {self.global_step}. Likely cause: a learning rate too "
                f"high (lr={self._opt['lr']}){self.nonfinite_advice}")
        self.log_terms(stage, terms, batch)
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train", batch_idx)

    def validation_step(self, batch, batch_idx):
        return self._step(batch, "val", batch_idx)

    def test_step(self, batch, batch_idx):
        return self._step(batch, "test", batch_idx)

    def configure_optimizers(self):
        o = self._opt
        params = list(self.parameters())  # a tied weight appears once
        if o["optimizer"] == "adam":
            return torch.optim.Adam(params, lr=o["lr"], weight_decay=o["weight_decay"])
        return torch.optim.SGD(params, lr=o["lr"], momentum=o["momentum"], weight_decay=o["weight_decay"],
                               fused=fused_sgd(params) if self.fused else None)
