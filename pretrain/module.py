"""The Lightning scaffolding of every trained module: pretraining layers and fine-tuned networks.

A subclass computes the loss of a batch as named scalar terms (``batch_terms``; the key
``"loss"`` is what is minimised, or ``OBJECTIVE`` where the loss's value is computed on some
batches only: its gradient is the step's, its value serves the non-finite guard alone and is not
logged); this base class turns them into Lightning's training,
validation and test steps, logs each term as ``stage/name``, stops on a non-finite loss
before it reaches the weights, and builds the optimizer from ``lr``, ``optimizer``,
``momentum`` and ``weight_decay``:

    (1) sgd    g = dL/dw + weight_decay w,  v <- momentum v + g,  w <- w - lr v
    (2) adam   Adam (Kingma & Ba 2015) on the same g

The non-finite guard comes in two forms with the same outcome (``sync_free_guard``):

- immediate (the CPU's): ``if not isfinite(loss): raise`` in the step, a device-to-host read
  per step, which costs nothing on the CPU but stalls an accelerator's queue every step;
- sync-free (an accelerator's): each stage keeps on the device, with the value of its loss,

    (3) s* = min {s in the epoch : loss_s not finite}  (-1 while there is none),
        g <- 0 at every step s >= s*

  g zeroed after backward (``masked_fill``, not a product: NaN * 0 is NaN), so that no NaN
  reaches the weights; s* is read once, at the stage's last batch of the epoch (before
  validation and checkpoints), where the immediate guard's ``FloatingPointError`` is raised,
  naming step s*. With SGD without momentum or weight decay the weights are those the immediate
  guard leaves; with momentum, weight decay or Adam the optimizer's own state still moves them,
  by finite amounts. Under DDP the flag is combined across ranks (the gradients are averaged
  over them), with a collective that does not wait on the host.

A module in manual optimization may take several updates per Lightning step
(``updates_per_step``): its data module then yields a :class:`Block` of K consecutive minibatches
of the epoch and ``training_step`` runs ``update`` on each in order, with its index in the epoch,
so that the Trainer's per-step work (hooks, progress, fetching) is paid once per K updates. The
updates, the noise they draw, the optimizer steps (``global_step`` counts each), the logged epoch
means and the epoch-end checkpoints are those of K = 1.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import lightning.pytorch as L
import torch

from pretrain.checks import check_choice, check_positive, check_probability
from pretrain.names import OPTIMIZERS


#: the key of a batch's minimised objective when its value is no term to log: a module that
#: computes its loss's value on some batches only (the RBM, whose surrogate's value is a monitor)
#: gives the gradient under this key, with a value that is finite exactly when the gradient is
OBJECTIVE = "objective"


def objective(terms: dict[str, torch.Tensor]) -> torch.Tensor:
    """The term a step minimises: ``terms[OBJECTIVE]`` where a module gives one, else ``loss``."""
    return terms[OBJECTIVE] if OBJECTIVE in terms else terms["loss"]


def scales_gradient(scale: torch.Tensor) -> bool:
    """Whether a closed-form backward must multiply its gradients by the incoming ``scale``: a
    precision plugin scales the loss (``scale`` != 1); a CPU scalar is read for free, and on an
    accelerator the product is taken rather than a host read."""
    return scale.device.type != "cpu" or float(scale) != 1.0


def check_optimizer(lr: float, optimizer: str, momentum: float, weight_decay: float,
                    lr_decay: float = 1.0, lr_anneal_start: float | None = None) -> None:
    """Raise the ValueError naming the first bad optimizer setting, if any."""
    check_positive("lr", lr)
    check_choice("optimizer", optimizer, OPTIMIZERS)
    check_probability("momentum", momentum)
    check_positive("weight_decay", weight_decay, allow_zero=True)
    check_positive("lr_decay", lr_decay)
    check_probability("lr_decay", lr_decay)
    if lr_anneal_start is not None and not 0.0 <= lr_anneal_start < 1.0:
        raise ValueError(f"lr_anneal_start must be a fraction of the epochs in [0, 1) (or None: no "
                         f"annealing), got {lr_anneal_start!r}")


class LrFactor:
    """The learning rate's factor at epoch t (from 0) of E: ``lr_decay ** t`` times, from epoch
    ``s = round(start * E)`` on, the linear anneal to zero at E, ``min(1, (E - t) / (E - s))``:
    epoch s trains at the full rate, the last at ``1 / (E - s)`` of it (Rasmus et al. 2015 anneal
    over the last third: ``start`` 2/3). A class, not a lambda, so that ``LambdaLR`` saves it in
    checkpoints."""

    def __init__(self, lr_decay: float, start: float | None, epochs: int | None):
        self.lr_decay, self.epochs = lr_decay, epochs
        self.anneal_from = None if start is None else min(round(start * epochs), epochs - 1)

    def __call__(self, t: int) -> float:
        factor = self.lr_decay ** t
        if self.anneal_from is not None and t > self.anneal_from:
            factor *= max(0.0, (self.epochs - t) / (self.epochs - self.anneal_from))
        return factor


def fused_kernel(params) -> bool | None:
    """``fused=True`` for ``torch.optim.SGD`` and ``Adam`` where torch has the fused kernel (CPU
    and CUDA floating-point parameters): the whole update in one pass over each weight instead
    of one per term; else None (torch's default). SGD's numbers are the loop's; Adam's differ
    from the loop's in the last bit (the same formula, rounded in another order), and take a
    fifth of its time on the CPU (a 784-1000-1000-10 MLP's step: 3.4 ms against 16.6 ms)."""
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


class Block(NamedTuple):
    """K consecutive minibatches of an epoch, taken by one training step (``updates_per_step``).

    ``first`` is the index of the first in the epoch, ``last`` whether the block ends the epoch,
    ``batches`` the minibatches, each as a loader yields it (``x`` or ``(x, y, ...)``)."""

    first: int
    last: bool
    batches: tuple


class Module(L.LightningModule):
    """Base class of the trained modules: steps, logging, the non-finite guard, the optimizer.

    Parameters
    ----------
    lr : learning rate of the optimizer (> 0).
    optimizer : one of ``OPTIMIZERS``.
    momentum : SGD momentum in [0, 1] (ignored by Adam).
    weight_decay : L2 weight decay added by the optimizer (>= 0).
    lr_decay : the learning rate's factor per epoch, in (0, 1]: epoch t trains at
        ``lr * lr_decay ** t``; 1: constant.
    lr_anneal_start : None, or the fraction of the Trainer's ``max_epochs`` E after which the rate
        also decays linearly to zero at E; needs a finite E.
    Both are one schedule, :class:`LrFactor` in a ``LambdaLR`` that Lightning steps after each
    training epoch and saves in its checkpoints.
    """

    #: the terms ``log_terms`` logs (None: all of them) and those shown in the progress bar
    logged_terms: tuple[str, ...] | None = None
    progress_terms: tuple[str, ...] = ("loss",)
    #: what the message of a non-finite loss advises after the learning rate
    nonfinite_advice = "; lower it or check the data for NaN/inf."
    #: the sync-free non-finite guard (True), the immediate one (False), or None: sync-free on
    #: an accelerator, immediate on the CPU
    sync_free_guard: bool | None = None
    #: minibatches a training step takes (as a :class:`Block`) where the data module can give
    #: them so; more than 1 needs manual optimization (``update`` takes its own optimizer step)
    updates_per_step: int = 1

    def __init__(self, *, lr: float, optimizer: str, momentum: float, weight_decay: float,
                 lr_decay: float = 1.0, lr_anneal_start: float | None = None):
        super().__init__()
        check_optimizer(lr, optimizer, momentum, weight_decay, lr_decay, lr_anneal_start)
        self._opt = dict(lr=lr, optimizer=optimizer, momentum=momentum, weight_decay=weight_decay,
                         lr_decay=lr_decay, lr_anneal_start=lr_anneal_start)
        #: per stage, the sync-free guard's record [s*, the loss at s*, the epoch] (s* and the
        #: loss on the device)
        self._nonfinite: dict[str, list[torch.Tensor]] = {}

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

    def _step(self, batch, stage: str, batch_idx: int = 0, last: bool | None = None) -> torch.Tensor:
        """The terms of a batch, checked and logged; ``last``: whether it ends the stage's epoch
        (None: from ``batch_idx`` and the Trainer's count of batches)."""
        terms = self.batch_terms(batch, stage, batch_idx)
        loss = objective(terms)
        terms.pop(OBJECTIVE, None)  # the guard's value, no term to log
        sync_free = self.uses_sync_free_guard()
        if sync_free:
            self._record_nonfinite(stage, loss)
        elif not torch.isfinite(loss):  # one scalar read: the check that no NaN reaches the weights
            raise self._nonfinite_error(stage, loss.item(), self.current_epoch, self.global_step)
        self.log_terms(stage, terms, batch)
        if sync_free and (self._last_batch(stage, batch_idx) if last is None else last):
            self._raise_nonfinite(stage)
        return loss

    # -- the non-finite guard ---------------------------------------------------------------------
    def uses_sync_free_guard(self) -> bool:
        """Whether the steps run the sync-free guard: ``sync_free_guard``, or by the device."""
        return self.device.type != "cpu" if self.sync_free_guard is None else bool(self.sync_free_guard)

    def _nonfinite_error(self, stage: str, value, epoch: int, step: int) -> FloatingPointError:
        return FloatingPointError(
            f"{self.describe()}: the {stage} loss became {value} at epoch {epoch}, step {step}. "
            f"Likely cause: a learning rate too high (lr={self._opt['lr']}){self.nonfinite_advice}")

    def _record_nonfinite(self, stage: str, loss: torch.Tensor) -> None:
        """Note on the device the first step of the epoch whose loss is not finite."""
        loss = loss.detach()
        bad = ~torch.isfinite(loss)  # () bool
        if stage == "train" and self._trainer is not None and self.trainer.world_size > 1:
            bad = self.all_gather(bad.to(torch.int32)).any()  # a bad rank's gradients reach all ranks
        record = self._nonfinite.get(stage)
        if record is not None and record[2] != self.current_epoch:  # an epoch whose end went unseen
            self._raise_nonfinite(stage)
            record = None
        if record is None:
            record = self._nonfinite[stage] = [torch.full((), -1, dtype=torch.int64, device=loss.device),
                                               torch.zeros_like(loss), self.current_epoch]
        first = bad & (record[0] < 0)  # the epoch's first bad step
        record[0].masked_fill_(first, self.global_step)  # s*, Eq. (3)
        record[1] = torch.where(first, loss, record[1])

    def _last_batch(self, stage: str, batch_idx: int) -> bool:
        """Whether ``batch_idx`` is the last batch of the stage's epoch (always, without a Trainer)."""
        t = self._trainer
        if t is None:
            return True
        n = {"train": t.num_training_batches, "val": t.num_val_batches, "test": t.num_test_batches}[stage]
        n = n if isinstance(n, (int, float)) else n[0]  # evaluation: one count per dataloader
        return batch_idx + 1 >= n

    def _raise_nonfinite(self, stage: str) -> None:
        """Read the stage's record (the one host read of its epoch); raise if a step was bad."""
        record = self._nonfinite.pop(stage, None)
        if record is None:
            return
        first_step = int(record[0])
        if first_step >= 0:
            value = record[1].item()  # finite when the bad loss was another rank's (DDP)
            raise self._nonfinite_error(stage, value if not math.isfinite(value) else
                                        "non-finite on another rank", record[2], first_step)

    def backward(self, loss: torch.Tensor, *args, **kwargs) -> None:
        """Lightning's backward; under the sync-free guard, from the epoch's first non-finite step
        on, every gradient is then set to 0 on the device. Here rather than in
        ``on_before_optimizer_step``: after every module's backward (automatic or manual
        optimization, and DDP's gradient averaging) and before any hook that reads the gradients."""
        super().backward(loss, *args, **kwargs)
        record = self._nonfinite.get("train")
        if record is not None:
            bad = record[0] >= 0  # () bool, on the device: s >= s* once s* is set
            for p in self.parameters():
                if p.grad is not None:
                    p.grad.masked_fill_(bad, 0.0)  # Eq. (3)

    # a stage starts without a record (one that an exception left behind is stale) and reads
    # what is left at its end (an epoch cut short by max_steps has no last batch)
    def on_train_start(self) -> None:
        self._nonfinite.pop("train", None)

    def on_validation_start(self) -> None:
        self._nonfinite.pop("val", None)

    def on_test_start(self) -> None:
        self._nonfinite.pop("test", None)

    def on_train_end(self) -> None:
        self._raise_nonfinite("train")

    def on_validation_end(self) -> None:
        self._raise_nonfinite("val")

    def on_test_end(self) -> None:
        self._raise_nonfinite("test")

    def training_step(self, batch, batch_idx):
        if not isinstance(batch, Block):
            return self.update(batch, batch_idx)
        if self.automatic_optimization:
            raise ValueError(f"{self.describe()}: a training step of several minibatches (a Block) needs "
                             "manual optimization; give this module's data module batches_per_step=1")
        n = len(batch.batches)
        for j, b in enumerate(batch.batches):  # in the epoch's order, as K steps of one batch would
            self.update(b, batch.first + j, last=batch.last and j == n - 1)
        return None

    def update(self, batch, batch_idx: int, last: bool | None = None):
        """One update on one minibatch, the ``batch_idx``-th of the epoch (``last``: see ``_step``).
        Automatic optimization returns the loss for Lightning's step; a manual module steps here."""
        return self._step(batch, "train", batch_idx, last)

    def validation_step(self, batch, batch_idx):
        return self._step(batch, "val", batch_idx)

    def test_step(self, batch, batch_idx):
        return self._step(batch, "test", batch_idx)

    def configure_optimizers(self):
        o = self._opt
        params = list(self.parameters())  # a tied weight appears once
        if o["optimizer"] == "adam":
            opt = torch.optim.Adam(params, lr=o["lr"], weight_decay=o["weight_decay"],
                                   fused=fused_kernel(params))
        else:
            opt = torch.optim.SGD(params, lr=o["lr"], momentum=o["momentum"], weight_decay=o["weight_decay"],
                                  fused=fused_kernel(params))
        if o["lr_decay"] == 1.0 and o["lr_anneal_start"] is None:
            return opt
        epochs = self.trainer.max_epochs
        if o["lr_anneal_start"] is not None and (epochs is None or epochs < 1):
            raise ValueError(f"lr_anneal_start={o['lr_anneal_start']} anneals the rate to zero at the "
                             f"Trainer's last epoch: give the Trainer max_epochs >= 1 (got {epochs})")
        decay = torch.optim.lr_scheduler.LambdaLR(opt, LrFactor(o["lr_decay"], o["lr_anneal_start"], epochs))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": decay, "interval": "epoch"}}
