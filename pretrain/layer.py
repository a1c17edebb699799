"""The contract every pretraining layer keeps, so that any layer stacks and unrolls.

A layer maps visible vectors ``x`` (B, n_visible) to codes ``h`` (B, n_hidden) and back:

    h = encode(x) = s_h(W x + b)          W: (n_hidden, n_visible), b: (n_hidden,)
    r = decode(h) = s_v(W' h + c)         W': (n_visible, n_hidden), c: (n_visible,)

An RBM keeps the same contract with ``encode = P(h=1|v)`` and ``decode = P(v=1|h)`` (or the
Gaussian mean). A layer may scale its code after the unit, ``h = g * s_h(W x + b)`` with a
per-unit gain g (``encoder_scale``; PSD's predictor), which unrolling and tangents apply; None,
the default, is no scale. Subclasses implement ``encode``, ``decode``, the four weight
properties and ``loss_terms``; ``pretrain.module.Module`` turns ``loss_terms`` into Lightning's
training, validation and test steps and stops on a non-finite loss instead of writing NaN
weights, and this class logs each term as ``stage/name``.

Each logged ``stage/name`` is the epoch mean of the term, weighted by batch size:

    (1) m = sum_batches B_k t_k / sum_batches B_k

summed on the device as the batches come and ``self.log``-ged once, at the end of the epoch:
Lightning's ``log`` is Python work on every call, too much to pay for every term of every
step of a small layer.
"""
from __future__ import annotations

import torch

from pretrain.module import Module, batch_input


class Layer(Module):
    """Base class of all pretraining layers (autoencoders and RBMs).

    Parameters
    ----------
    lr, optimizer, momentum, weight_decay : the optimizer (``pretrain.module.Module``); SGD and
        Adam run through torch's fused kernel where it has one (``module.fused_kernel``).
    """

    #: unit of the code h (``pretrain.units`` name); sigmoid for an RBM
    hidden_unit: str = "sigmoid"
    #: unit of the reconstruction r; sigmoid for binary inputs, linear for real-valued ones
    visible_unit: str = "sigmoid"

    nonfinite_advice = (" or inputs outside the range the loss expects; lower lr or check the data. "
                        "No weights were written from this step.")

    def __init__(self, *, lr: float = 0.1, optimizer: str = "sgd", momentum: float = 0.0,
                 weight_decay: float = 0.0):
        super().__init__(lr=lr, optimizer=optimizer, momentum=momentum, weight_decay=weight_decay)
        #: a name for messages and logs, set by the stack ("layer 2")
        self.layer_name = type(self).__name__
        #: the epoch's sums of Eq. (1): {stage: {"epoch": e, "groups": [[names, sum B_k t_k, sum B_k]]}}
        self._running_sums: dict[str, dict] = {}
        #: the layer's noise streams by name (corruption, Gibbs chains), created on the data's
        #: device by ``generator`` and saved in checkpoints
        self._generators: dict[str, torch.Generator] = {}

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
    def encoder_scale(self) -> torch.Tensor | None:  # g: (n_hidden,), h = g * s_h(W x + b)
        return None

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

    # -- shared by the kinds -------------------------------------------------------------------
    def generator(self, stream: str, device: torch.device, seed: int) -> torch.Generator:
        """The noise stream ``stream`` on ``device``, seeded ``seed`` when it is first drawn
        there (a separate evaluation stream keeps validation from shifting the training noise)."""
        g = self._generators.get(stream)
        if g is None or g.device != device:
            g = self._generators[stream] = torch.Generator(device=device).manual_seed(seed)
        return g

    def check_unit_interval(self, x: torch.Tensor, needs: str, fix: str) -> None:
        """Refuse inputs outside [0, 1] (NaN included) for ``needs``, naming the range and ``fix``."""
        lo, hi = torch.stack(torch.aminmax(x)).tolist()  # one device-to-host read a batch
        if not (lo >= 0 and hi <= 1):
            raise ValueError(f"{self.layer_name}: {needs} needs inputs in [0, 1], got values in "
                             f"[{lo:.4g}, {hi:.4g}]; {fix}")

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

    def batch_terms(self, batch, stage: str, batch_idx: int) -> dict[str, torch.Tensor]:
        return self.step_terms(batch_input(batch), stage, batch_idx)

    def describe(self) -> str:
        return f"{self.layer_name} ({type(self).__name__})"

    def log_terms(self, stage: str, terms: dict[str, torch.Tensor], batch) -> None:
        self._accumulate(stage, terms, batch_input(batch).shape[0])

    # -- epoch means of the terms, Eq. (1) -------------------------------------------------------
    def _accumulate(self, stage: str, terms: dict[str, torch.Tensor], batch_size: int) -> None:
        if not terms:  # a step whose terms are all monitoring-only ones, left out (the RBM's)
            return
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
                     on_epoch=True, prog_bar=name in self.progress_terms, sync_dist=True)

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
