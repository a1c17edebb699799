"""The contract every pretraining layer keeps, so that any layer stacks and unrolls.

A layer maps visible vectors ``x`` (B, n_visible) to codes ``h`` (B, n_hidden) and back:

    h = encode(x) = s_h(W x + b)          W: (n_hidden, n_visible), b: (n_hidden,)
    r = decode(h) = s_v(W' h + c)         W': (n_visible, n_hidden), c: (n_visible,)

An RBM keeps the same contract with ``encode = P(h=1|v)`` and ``decode = P(v=1|h)`` (or the
Gaussian mean). Subclasses implement ``encode``, ``decode``, the four weight properties and
``loss_terms``; this base class turns ``loss_terms`` into Lightning's training, validation and
test steps, logs each term as ``stage/name`` and stops on a non-finite loss instead of writing
NaN weights.

Each logged ``stage/name`` is the epoch mean of the term, weighted by batch size:

    (1) m = sum_batches B_k t_k / sum_batches B_k

summed on the device as the batches come and ``self.log``-ged once, at the end of the epoch.
Lightning's ``log`` costs about a millisecond of Python per call: logging every term at every
step (what ``on_epoch=True`` does) cost a quarter of a CPU step of a 784-500 RBM.
"""
from __future__ import annotations

import lightning.pytorch as L
import torch

OPTIMIZERS = ("sgd", "adam")


def check_positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    """Raise a ValueError naming ``name`` unless ``value`` is > 0 (or >= 0 with allow_zero)."""
    ok = value >= 0 if allow_zero else value > 0
    if not ok or value != value:  # value != value catches NaN
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value!r}")
    return value


def check_probability(name: str, value: float) -> float:
    """Raise a ValueError naming ``name`` unless ``0 <= value <= 1``."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return value


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


class Layer(L.LightningModule):
    """Base class of all pretraining layers (autoencoders and RBMs).

    Parameters
    ----------
    lr : learning rate of the optimizer.
    optimizer : ``"sgd"`` or ``"adam"``.
    momentum : SGD momentum (ignored by Adam).
    weight_decay : L2 weight decay added by the optimizer.
    """

    #: unit of the code h (``pretrain.units`` name); sigmoid for an RBM
    hidden_unit: str = "sigmoid"
    #: unit of the reconstruction r; sigmoid for binary inputs, linear for real-valued ones
    visible_unit: str = "sigmoid"

    def __init__(self, *, lr: float = 0.1, optimizer: str = "sgd", momentum: float = 0.0,
                 weight_decay: float = 0.0):
        super().__init__()
        check_positive("lr", lr)
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
        check_probability("momentum", momentum)
        check_positive("weight_decay", weight_decay, allow_zero=True)
        self._opt = dict(lr=lr, optimizer=optimizer, momentum=momentum, weight_decay=weight_decay)
        #: a name for messages and logs, set by the stack ("layer 2")
        self.layer_name = type(self).__name__
        #: the epoch's sums of Eq. (1): {stage: {"epoch": e, "groups": [[names, sum B_k t_k, sum B_k]]}}
        self._running_sums: dict[str, dict] = {}

    def __setattr__(self, name: str, value) -> None:
        # Lightning sets this plain string around each of the ~20 hooks it calls per step (44
        # times a step); nn.Module's __setattr__ looks through parameters, buffers and submodules
        # each time, ~10 us a call on a shared CPU core: about as much as a tiny layer's whole step
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    # -- the contract ---------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:  # (B, n_visible) -> (B, n_hidden)
        raise NotImplementedError

    def decode(self, h: torch.Tensor) -> torch.Tensor:  # (B, n_hidden) -> (B, n_visible)
        raise NotImplementedError

    @property
    def encoder_weight(self) -> torch.Tensor:  # W: (n_hidden, n_visible)
        raise NotImplementedError

    @property
    def encoder_bias(self) -> torch.Tensor:  # b: (n_hidden,)
        raise NotImplementedError

    @property
    def decoder_weight(self) -> torch.Tensor:  # W': (n_visible, n_hidden); W.T when tied
        raise NotImplementedError

    @property
    def decoder_bias(self) -> torch.Tensor:  # c: (n_visible,)
        raise NotImplementedError

    @property
    def tied(self) -> bool:
        return True

    def loss_terms(self, x: torch.Tensor, *, train: bool) -> dict[str, torch.Tensor]:
        """The loss of a batch as named scalar terms; the key ``"loss"`` is what is minimised."""
        raise NotImplementedError

    # -- derived ---------------------------------------------------------------------------
    @property
    def n_visible(self) -> int:
        return self.encoder_weight.shape[1]

    @property
    def n_hidden(self) -> int:
        return self.encoder_weight.shape[0]

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x)

    # -- Lightning ----------------------------------------------------------------------------
    def step_terms(self, x: torch.Tensor, stage: str, batch_idx: int) -> dict[str, torch.Tensor]:
        """The terms a Trainer step computes and logs: ``loss_terms`` unless a layer leaves
        monitoring-only terms out of some steps (the RBM's reconstruction error)."""
        return self.loss_terms(x, train=stage == "train")

    def _step(self, batch, stage: str, batch_idx: int = 0) -> torch.Tensor:
        x = batch_input(batch)
        terms = self.step_terms(x, stage, batch_idx)
        loss = terms["loss"]
        if not torch.isfinite(loss):  # one scalar read: the check that no NaN reaches the weights
            raise FloatingPointError(
                f"{self.layer_name} ({type(self).__name__}): the {stage} loss became {loss.item()} "
                f"at epoch {self.current_epoch}, step {self.global_step}. Likely cause: a learning "
                f"rate too high (lr={self._opt['lr']}) or inputs outside the range the loss expects; "
                f"lower lr or check the data. No weights were written from this step.")
        self._accumulate(stage, terms, x.shape[0])
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train", batch_idx)

    def validation_step(self, batch, batch_idx):
        return self._step(batch, "val", batch_idx)

    def test_step(self, batch, batch_idx):
        return self._step(batch, "test", batch_idx)

    # -- epoch means of the terms, Eq. (1) -------------------------------------------------------
    def _accumulate(self, stage: str, terms: dict[str, torch.Tensor], batch_size: int) -> None:
        acc = self._running_sums.get(stage)
        if acc is None or acc["epoch"] != self.current_epoch:  # a new epoch (or sums left stale)
            acc = self._running_sums[stage] = {"epoch": self.current_epoch, "groups": []}
        # one group per set of term names (an RBM's monitored steps have one term more): the
        # terms of a step are stacked and added in one op, sum B_k t_k and sum B_k of Eq. (1)
        names = list(terms)
        group = next((g for g in acc["groups"] if g[0] == names), None)
        values = torch.stack([v.detach() for v in terms.values()])  # (n_terms,)
        if group is None:
            # float64: 600 batches of float32 terms add up without losing digits (not on MPS)
            dtype = torch.float32 if values.device.type == "mps" else torch.float64
            group = [names, torch.zeros(len(names), dtype=dtype, device=values.device), 0]
            acc["groups"].append(group)
        elif group[1].device != values.device:  # sums restored from a checkpoint onto the CPU
            group[1] = group[1].to(values.device)
        group[1].add_(values, alpha=batch_size)  # no host sync
        group[2] += batch_size

    def _log_epoch(self, stage: str) -> None:
        acc = self._running_sums.pop(stage, None)
        if acc is None:
            return
        totals: dict[str, list] = {}  # name -> [sum B_k t_k, sum B_k] over the groups that have it
        for names, sums, count in acc["groups"]:
            for name, total in zip(names, sums):
                t = totals.setdefault(name, [0.0, 0])
                t[0], t[1] = t[0] + total, t[1] + count
        for name, (total, count) in totals.items():
            # under DDP: the mean of the ranks' means (the loaders give every rank equal counts)
            self.log(f"{stage}/{name}", (total / count).to(torch.get_default_dtype()), on_step=False,
                     on_epoch=True, prog_bar=name == "loss", sync_dist=True)

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    # -- checkpoints carry the noise streams -----------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Save the state of the layer's noise generators (corruption, Gibbs chains), so that a
        layer resumed from a checkpoint draws exactly the noise an uninterrupted run draws."""
        gens = getattr(self, "_generators", {})
        checkpoint["generator_states"] = {k: g.get_state() for k, g in gens.items()}
        checkpoint["generator_devices"] = {k: str(g.device) for k, g in gens.items()}
        # the partial sums of an epoch a checkpoint interrupts (Eq. 1), so that its logged means
        # come out as an uninterrupted run's
        checkpoint["running_sums"] = {
            stage: {"epoch": acc["epoch"],
                    "groups": [[list(names), sums.cpu(), n] for names, sums, n in acc["groups"]]}
            for stage, acc in self._running_sums.items()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        states = checkpoint.get("generator_states", {})
        devices = checkpoint.get("generator_devices", {})
        gens = {}
        for k, state in states.items():
            device = torch.device(devices.get(k, "cpu"))
            if device.type == "cuda" and not torch.cuda.is_available():
                continue  # a GPU stream cannot continue on the CPU: the layer reseeds it
            gens[k] = torch.Generator(device=device).set_state(state)
        if gens:
            self._generators = gens
        # restored on the CPU; _accumulate moves them to the device of the next batch's terms
        self._running_sums = {
            stage: {"epoch": acc["epoch"],
                    "groups": [[list(names), sums, n] for names, sums, n in acc["groups"]]}
            for stage, acc in checkpoint.get("running_sums", {}).items()}

    def configure_optimizers(self):
        o = self._opt
        if o["optimizer"] == "adam":
            return torch.optim.Adam(self.parameters(), lr=o["lr"], weight_decay=o["weight_decay"])
        return torch.optim.SGD(self.parameters(), lr=o["lr"], momentum=o["momentum"],
                               weight_decay=o["weight_decay"], fused=fused_sgd(self.parameters()))
