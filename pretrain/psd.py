"""Predictive sparse decomposition (PSD): sparse coding with a trained feed-forward predictor.

For a batch x (B, n_visible), a dictionary D (n_visible, n_hidden) with unit-norm columns and a
predictor with W (n_hidden, n_visible), b (n_hidden,) and a per-unit gain g (n_hidden,):

    (1) F(x) = g * tanh(W x + b)                                the predictor: the layer's encode
    (2) z* = argmin_z ||x - D z||^2 + lambda ||z||_1             the codes (``sparse_coding``,
                                                                 FISTA started from F(x))
    (3) L(x, z) = ||x - D z||^2 + lambda ||z||_1 + alpha ||z - F(x)||^2
    (4) a training step: z* of (2) for the batch, held fixed; one optimizer step on the batch
        mean of L(x, z*) in D, W, b and g (D gets the gradient of the reconstruction term,
        the predictor that of the prediction term); then every column of D rescaled to unit
        norm, D_j <- D_j / ||D_j||
    (5) r = decode(h) = D h                                      linear visible units, no bias

Eq. (3) is the loss of Kavukcuoglu, Ranzato & LeCun (2008), minimised as they do, alternating
code inference and parameter steps; inferring z* without the prediction term, from F(x), is
what their implementation (``unsup``'s ``PSD`` and ``FistaL1``) does. The unit-norm columns keep
the L1 term from being defeated by shrinking z and growing D. ``loss_terms`` reports
``rec = ||x - D z*||^2``, ``l1 = lambda ||z*||_1`` and ``prediction = alpha ||z* - F(x)||^2``,
each summed over units and averaged over the batch, ``loss`` their sum, and ``iterations``, the
FISTA iterations the batch needed (a monitor outside the loss: it falls as F(x) learns to start
FISTA near z*).

The gain g sits after the unit, so the layer keeps the stack contract with ``encoder_weight``
W, ``encoder_bias`` b, ``hidden_unit`` tanh and ``encoder_scale`` g (None for every other kind),
which the unrolled networks and the tangents apply. ``encode(x, infer=True)`` returns z* itself,
for classifiers on the sparse codes.

References
----------
Kavukcuoglu, Ranzato & LeCun, Fast inference in sparse coding algorithms with applications to
object recognition, CBLL-TR-2008-12-01 (arXiv 1010.3467), 2008.
Olshausen & Field, Emergence of simple-cell receptive field properties by learning a sparse
code for natural images, Nature 381, 1996.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pretrain import sparse_coding
from pretrain.autoencoder import glorot_uniform
from pretrain.checks import check_float, check_int
from pretrain.layer import Layer


def unit_columns(D: torch.Tensor) -> torch.Tensor:
    """D (n_visible, n_hidden) with every column divided by its norm (a zero column stays 0)."""
    return D / D.norm(dim=0, keepdim=True).clamp_min(torch.finfo(D.dtype).tiny)


class PSD(Layer):
    """Predictive sparse decomposition, trained on Eq. (3) by the alternation of Eq. (4).

    Parameters
    ----------
    n_visible, n_hidden : input and code sizes (>= 1); n_hidden > n_visible is an overcomplete
        dictionary.
    code_l1 : lambda >= 0, the weight of the codes' L1 norm in Eqs. (2)-(3).
    prediction_weight : alpha >= 0, the weight of the prediction term of Eq. (3).
    ista_steps : at most this many FISTA iterations per batch (>= 1).
    ista_tol : FISTA stops when no code of the batch changes by more than this fraction of its
        norm in an iteration (>= 0; 0: only when the codes stop changing).
    lr, optimizer, momentum, weight_decay : the optimizer (``pretrain.layer.Layer``).
    seed : the only source of randomness: the initial D and W.
    """

    hidden_unit = "tanh"
    visible_unit = "linear"

    def __init__(self, n_visible: int, n_hidden: int, *, code_l1: float = 1.0,
                 prediction_weight: float = 1.0, ista_steps: int = 50, ista_tol: float = 1e-4,
                 lr: float = 0.01, optimizer: str = "sgd", momentum: float = 0.0,
                 weight_decay: float = 0.0, seed: int = 0):
        super().__init__(lr=lr, optimizer=optimizer, momentum=momentum, weight_decay=weight_decay)
        n_visible, n_hidden = check_int("n_visible", n_visible, 1), check_int("n_hidden", n_hidden, 1)
        sparse_coding.check_solver(code_l1, ista_tol, ista_steps, ("code_l1", "ista_tol", "ista_steps"))
        check_float("prediction_weight", prediction_weight, low=0,
                    meaning="the weight alpha of ||z - F(x)||^2")
        seed = check_int("seed", seed)
        self.save_hyperparameters()

        g = torch.Generator().manual_seed(seed)  # the init depends on the seed alone
        # D: (n_visible, n_hidden), Gaussian atoms of unit norm
        self.D = nn.Parameter(unit_columns(torch.randn(n_visible, n_hidden, generator=g)))
        # the predictor, Eq. (1): W (n_hidden, n_visible), b (n_hidden,), g (n_hidden,)
        self.W = nn.Parameter(glorot_uniform(n_hidden, n_visible, "tanh", g))
        self.b = nn.Parameter(torch.zeros(n_hidden))
        self.g = nn.Parameter(torch.ones(n_hidden))

    # -- the contract -----------------------------------------------------------------------
    @property
    def encoder_weight(self) -> torch.Tensor:
        return self.W

    @property
    def encoder_bias(self) -> torch.Tensor:
        return self.b

    @property
    def encoder_scale(self) -> torch.Tensor:  # g: (n_hidden,)
        return self.g

    @property
    def decoder_weight(self) -> torch.Tensor:  # D: (n_visible, n_hidden)
        return self.D

    @property
    def decoder_bias(self) -> torch.Tensor:  # Eq. (5) has none: zeros, so that unrolling adds one at 0
        return self.D.new_zeros(self.D.shape[0])

    @property
    def tied(self) -> bool:
        return False

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Eq. (1): (B, n_visible) -> (B, n_hidden)."""
        return self.g * torch.tanh(F.linear(x, self.W, self.b))

    def infer(self, x: torch.Tensor, z0: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
        """Eq. (2) by FISTA from ``z0`` (default F(x)): the codes (B, n_hidden), detached, and
        the iterations FISTA ran."""
        hp = self.hparams
        if z0 is None:
            with torch.no_grad():
                z0 = self.predict(x)
        return sparse_coding.fista(x, self.D.detach(), hp.code_l1, z0=z0, tol=hp.ista_tol,
                                   max_iter=hp.ista_steps)

    def encode(self, x: torch.Tensor, *, infer: bool = False) -> torch.Tensor:
        """Eq. (1), or with ``infer=True`` the sparse codes z* of Eq. (2) (no gradient flows
        through them): (B, n_visible) -> (B, n_hidden)."""
        if infer:
            self._check_input(x)
            return self.infer(x)[0]
        return self.predict(x)

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        """Eq. (5): (B, n_hidden) -> (B, n_visible)."""
        return h @ self.D.T

    # -- the objective ------------------------------------------------------------------------
    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 2 or x.shape[1] != self.n_visible:
            raise ValueError(f"{self.layer_name} expects inputs of shape (B, {self.n_visible}), "
                             f"got {tuple(x.shape)}")

    def loss_terms(self, x: torch.Tensor, *, train: bool) -> dict[str, torch.Tensor]:
        """Eq. (3) at the codes z* of Eq. (2), for a batch ``x`` (B, n_visible): the weighted
        terms, their sum ``loss`` and the FISTA ``iterations``. Gradients reach D through
        ``rec`` and the predictor through ``prediction``; z* is a constant."""
        self._check_input(x)
        hp = self.hparams
        B = x.shape[0]
        p = self.predict(x)  # (B, n_hidden), Eq. (1)
        z, iterations = self.infer(x, z0=p.detach())  # (B, n_hidden), Eq. (2)
        rec = ((x - self.decode(z)) ** 2).sum() / B  # Eq. (3), first term
        l1 = hp.code_l1 * z.abs().sum() / B  # Eq. (3), second term (no gradient: z is fixed)
        prediction = hp.prediction_weight * ((z - p) ** 2).sum() / B  # Eq. (3), third term
        return {"rec": rec, "l1": l1, "prediction": prediction, "loss": rec + l1 + prediction,
                "iterations": torch.tensor(float(iterations), dtype=rec.dtype, device=rec.device)}

    @torch.no_grad()
    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        """Eq. (4)'s last step, after each optimizer step: the atoms back to unit norm."""
        self.D.copy_(unit_columns(self.D))
