"""Supervised fine-tuning of an unrolled stack, with or without an unsupervised term.

For a labeled batch ``{(x_n, y_n)}`` of size B, with ``logits = MLP(x)`` (``finetune.unroll``
Eq. 3) and an optional decoder ``g`` unrolled from the same stack:

    (1) CE = -1/B sum_n log softmax(logits_n)[y_n]              from the logits: stable
    (2) REC = 1/B sum_n L(x_n, g(f(x_n)))                        unroll Eq. (4) or (5)
    (3) loss = CE + alpha * REC                                  alpha = ``reconstruction``
    (4) error = 1/B sum_n 1[argmax logits_n != y_n]
    (5) minimised over every W_k, b_k and the head V, a; with ``freeze_hidden`` over V, a only

With alpha > 0 the encoder keeps being trained to reconstruct its inputs while it learns to
classify ("fine-tuning with or without unsupervised updates"); alpha = 0 is plain supervised
fine-tuning. Each term is logged already weighted (``stage/rec`` is alpha * REC), so
``stage/loss == stage/ce + stage/rec``; a term of weight 0 is neither computed nor logged.
Frozen hidden layers (``freeze_hidden``, "the supervised phase without fine-tuning of hidden
layers") make the unrolled encoder a fixed feature map under a softmax: their weights are
excluded from autograd (``requires_grad`` off), so they stay bit-identical and no optimizer,
weight decay or DDP reduction touches them.

References
----------
Bengio, Lamblin, Popovici & Larochelle, Greedy layer-wise training of deep networks, NIPS 2007.
Larochelle, Bengio, Louradour & Lamblin, Exploring strategies for training deep neural
networks, JMLR 2009.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from pretrain.checks import check_bool, check_positive
from pretrain.module import Module, batch_input

from .unroll import MLP, UnrolledDecoder, UnrolledEncoder


def split_batch(batch) -> tuple:
    """The labeled part of a batch and its unlabeled part (None without one): a semi-supervised
    batch is ``{"labeled": ..., "unlabeled": ...}`` (``PairedLoader``), a supervised one the
    labeled tuple alone."""
    if not isinstance(batch, dict):
        return batch, None
    unknown = set(batch) - {"labeled", "unlabeled"}
    if unknown or "labeled" not in batch:
        raise ValueError(f"a dict batch needs the keys 'labeled' and optionally 'unlabeled', "
                         f"got {sorted(batch)}")
    return batch["labeled"], batch.get("unlabeled")


def check_labeled(x: torch.Tensor, y: torch.Tensor, *, n_visible: int, n_classes: int,
                  who: str) -> None:
    """Raise the ValueError naming the problem when ``x`` is not (B, n_visible) or ``y`` not B
    integer labels in ``[0, n_classes)``; ``who`` names the module in the message."""
    if x.ndim != 2 or x.shape[1] != n_visible:
        raise ValueError(f"{who} expects inputs of shape (B, {n_visible}), got {tuple(x.shape)}")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"labels must have shape ({x.shape[0]},) to match the inputs, "
                         f"got {tuple(y.shape)}")
    if y.dtype.is_floating_point or y.dtype == torch.bool or y.dtype.is_complex:
        raise ValueError(f"labels must be integers in [0, {n_classes}), got dtype {y.dtype}")
    bad = y[(y < 0) | (y >= n_classes)]
    if bad.numel():
        raise ValueError(f"label {bad[0].item()} is out of range for n_classes={n_classes}: "
                         f"labels must be integers in [0, {n_classes - 1}]")


class Classifier(Module):
    """An MLP (encoder + softmax head) trained on Eq. (3).

    Parameters
    ----------
    encoder : an ``UnrolledEncoder`` (trained in place, not copied).
    n_classes : number of classes (>= 2); labels are integers in ``[0, n_classes)``.
    lr, optimizer, momentum, weight_decay : the optimizer (``"adam"`` or ``"sgd"``; momentum for SGD).
    lr_decay, lr_anneal_start : the learning rate's factor per epoch and the fraction of the
        epochs after which it anneals linearly to zero (``pretrain.module.Module``).
    reconstruction : alpha of Eq. (3) (>= 0); > 0 needs ``decoder``.
    decoder : the ``UnrolledDecoder`` unrolled together with ``encoder`` (``unroll_autoencoder``).
    freeze_hidden : keep every hidden layer of ``encoder`` as given and train the head only
        (Eq. 5); False (the default) trains them all: the Classifier sets ``requires_grad`` of
        the encoder's weights either way.
    seed : seeds the head's initial weights.
    """

    progress_terms = ("loss", "error")

    def __init__(self, encoder: UnrolledEncoder, n_classes: int, *, lr: float = 0.01,
                 optimizer: str = "adam", momentum: float = 0.0, weight_decay: float = 0.0,
                 lr_decay: float = 1.0, lr_anneal_start: float | None = None, reconstruction: float = 0.0,
                 decoder: UnrolledDecoder | None = None, freeze_hidden: bool = False, seed: int = 0):
        if not isinstance(encoder, UnrolledEncoder):
            raise ValueError(f"encoder must be an UnrolledEncoder (finetune.unroll), got "
                             f"{type(encoder).__name__}")
        super().__init__(lr=lr, optimizer=optimizer, momentum=momentum, weight_decay=weight_decay,
                         lr_decay=lr_decay, lr_anneal_start=lr_anneal_start)
        check_positive("reconstruction", reconstruction, allow_zero=True)
        if reconstruction > 0:
            if decoder is None:
                raise ValueError(f"reconstruction={reconstruction!r} needs a decoder: build it with "
                                 f"encoder, decoder = unroll_autoencoder(stack)")
        check_bool("freeze_hidden", freeze_hidden)
        if freeze_hidden and reconstruction > 0:
            raise ValueError(f"reconstruction={reconstruction!r} trains the hidden layers, which "
                             f"freeze_hidden=True keeps fixed: use one or the other")
        if decoder is not None:
            decoder.check_encoder(encoder)
        self.net = MLP(encoder, n_classes, seed=seed)  # validates n_classes and seed
        self.freeze_hidden = freeze_hidden  # an attribute: subclasses save their own hparams
        encoder.requires_grad_(not freeze_hidden)  # Eq. (5)
        self.decoder = decoder
        self.save_hyperparameters(ignore=["encoder", "decoder"])

    @property
    def encoder(self) -> UnrolledEncoder:
        return self.net.encoder

    @property
    def n_classes(self) -> int:
        return self.hparams.n_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits: (B, n_visible) -> (B, n_classes)."""
        return self.net(x)

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """``p(y | x)``: (B, n_visible) -> (B, n_classes), rows summing to 1."""
        return torch.softmax(self(x), dim=1)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The most probable class: (B, n_visible) -> (B,) int64."""
        return self(x).argmax(dim=1)

    # -- the objective ----------------------------------------------------------------------
    def _check_labeled(self, x: torch.Tensor, y: torch.Tensor) -> None:
        check_labeled(x, y, n_visible=self.encoder.n_visible, n_classes=self.n_classes,
                      who=type(self).__name__)

    def _check_unlabeled(self, x_u: torch.Tensor) -> None:
        if x_u.ndim != 2 or x_u.shape[1] != self.encoder.n_visible:
            raise ValueError(f"unlabeled inputs must have shape (B, {self.encoder.n_visible}), "
                             f"got {tuple(x_u.shape)}")

    def supervised_terms(self, x: torch.Tensor, y: torch.Tensor, *, h: torch.Tensor | None = None,
                         logits: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Eqs. (1), (2) (weighted) and (4) for a labeled batch; ``error`` is not differentiable.
        ``h`` (B, n_hidden) and ``logits`` (B, n_classes): the encoder's codes and the head's
        logits of x, where the caller has them from a pass it shares (``VAT``)."""
        self._check_labeled(x, y)
        if h is None and (logits is None or self.hparams.reconstruction > 0):
            h = self.encoder(x)  # (B, n_hidden)
        logits = self.net.head(h) if logits is None else logits  # (B, n_classes)
        terms = {"ce": F.cross_entropy(logits, y)}  # Eq. (1), from the logits
        if self.hparams.reconstruction > 0:
            rec = self.decoder.reconstruction_error(h, x).mean()  # Eq. (2)
            terms["rec"] = self.hparams.reconstruction * rec
        terms["error"] = (logits.detach().argmax(dim=1) != y).to(logits.dtype).mean()  # Eq. (4)
        return terms

    def loss_terms(self, batch, *, stage: str) -> dict[str, torch.Tensor]:
        """Named terms of a batch ``(x, y)``; ``loss`` (Eq. 3) is what is minimised."""
        x, y = batch[0], batch[1]
        terms = self.supervised_terms(x, y)
        terms["loss"] = sum(v for k, v in terms.items() if k != "error")  # Eq. (3)
        return terms

    # -- Lightning --------------------------------------------------------------------------
    def batch_terms(self, batch, stage: str, batch_idx: int) -> dict[str, torch.Tensor]:
        return self.loss_terms(batch, stage=stage)

    def predict_step(self, batch, batch_idx):
        return self.predict_proba(batch_input(batch))
