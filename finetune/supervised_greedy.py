"""Greedy layer-wise supervised pretraining: each hidden layer trained with a temporary softmax
on top of the frozen layers below it, then the whole MLP fine-tuned.

For an MLP of L hidden layers ``h_k = s_k(W_k h_{k-1} + b_k)``, ``h_0 = x`` (``finetune.unroll``
Eq. 1), started from Glorot-uniform weights (no unsupervised pretraining), and a labeled set
``{(x_n, y_n)}`` in batches of size B:

    (1) for k = 1..L:  logits_k = V_k h_k + a_k                 a temporary softmax on layer k
    (2)                CE_k = -1/B sum_n log softmax(logits_k,n)[y_n]       from the logits
    (3)                minimise CE_k over W_k, b_k, V_k, a_k     W_j, b_j (j < k) stay fixed
    (4) drop every V_k, a_k; fine-tune the MLP (layers 1..L and a new softmax head) on the
        cross-entropy over all its weights: ``finetune.classifier`` Eq. (3) with alpha = 0

Each phase (3) is one ``SupervisedLayer`` fitted for some epochs on the labeled set and
selected like the MLP (the weights of its epoch of lowest validation error kept); the layers
below k are excluded from autograd during it, so they stay bit-identical. The phases train the
``UnrolledEncoder`` in place, and step (4) is a ``Classifier`` on that same encoder. Bengio et
al. (2007) found this procedure generally worse than unsupervised pretraining but better than
no pretraining at all; their explanation is that the supervised criterion of each phase is too
greedy: a layer keeps what helps the softmax directly above it and may discard what only the
layers above could have used. ``error`` (the share of misclassified examples) is logged beside
CE, as for the MLP.

References
----------
Bengio, Lamblin, Popovici & Larochelle, Greedy layer-wise training of deep networks, NIPS 2007.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.checks import check_int
from pretrain.module import Module
from pretrain.units import activation

from .classifier import check_labeled
from .unroll import UnrolledEncoder


class SupervisedLayer(Module):
    """Phase k of greedy supervised pretraining: layer k of ``encoder`` and a temporary softmax
    trained on Eq. (2), the layers below it fixed (Eq. 3).

    Parameters
    ----------
    encoder : the ``UnrolledEncoder`` whose layers the phases train in place (not copied).
    k : the layer this phase trains, 1 <= k <= L (layer k is ``encoder.layers[k - 1]``).
    n_classes : number of classes (>= 2); labels are integers in ``[0, n_classes)``.
    lr, optimizer, momentum, weight_decay : the optimizer, as for ``Classifier``.
    seed : seeds the temporary head ``V_k ~ N(0, 0.01^2)`` (``a_k = 0``), as the MLP's head.
    """

    progress_terms = ("loss", "error")

    def __init__(self, encoder: UnrolledEncoder, k: int, n_classes: int, *, lr: float = 0.01,
                 optimizer: str = "adam", momentum: float = 0.0, weight_decay: float = 0.0,
                 seed: int = 0):
        if not isinstance(encoder, UnrolledEncoder):
            raise ValueError(f"encoder must be an UnrolledEncoder (finetune.unroll), got "
                             f"{type(encoder).__name__}")
        n_layers = len(encoder.layers)
        k = check_int("k", k, 1)
        if k > n_layers:
            raise ValueError(f"k={k} is beyond the encoder's {n_layers} layers: give 1 <= k <= {n_layers}")
        n_classes, seed = check_int("n_classes", n_classes, 2), check_int("seed", seed)
        super().__init__(lr=lr, optimizer=optimizer, momentum=momentum, weight_decay=weight_decay)
        self.encoder, self.k, self.n_classes = encoder, k, n_classes
        for j, lin in enumerate(encoder.layers, start=1):
            lin.requires_grad_(j == k)  # Eq. (3): only layer k trains; those above are unused
        W = encoder.layers[k - 1].weight  # (n_hidden_k, n_hidden_{k-1})
        g = torch.Generator().manual_seed(seed)
        self.V = nn.Parameter((0.01 * torch.randn(n_classes, W.shape[0], generator=g)).to(W))
        self.a = nn.Parameter(torch.zeros(n_classes).to(W))
        self.save_hyperparameters(ignore=["encoder"])

    def describe(self) -> str:
        return f"supervised layer {self.k} of {len(self.encoder.layers)}"

    def code(self, x: torch.Tensor) -> torch.Tensor:
        """``h_k``: (B, n_visible) -> (B, n_hidden_k)."""
        h = x
        for lin, unit in zip(self.encoder.layers[:self.k], self.encoder.units[:self.k]):
            h = activation(unit, lin(h))  # (B, n_hidden_j)
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Eq. (1): (B, n_visible) -> logits (B, n_classes)."""
        return F.linear(self.code(x), self.V, self.a)

    def batch_terms(self, batch, stage: str, batch_idx: int) -> dict[str, torch.Tensor]:
        x, y = batch[0], batch[1]
        check_labeled(x, y, n_visible=self.encoder.n_visible, n_classes=self.n_classes,
                      who=self.describe())
        logits = self(x)  # (B, n_classes)
        ce = F.cross_entropy(logits, y)  # Eq. (2), from the logits
        error = (logits.detach().argmax(dim=1) != y).to(logits.dtype).mean()
        return {"loss": ce, "ce": ce, "error": error}
