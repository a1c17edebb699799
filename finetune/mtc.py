"""The manifold tangent classifier (MTC): fine-tuning that keeps the output flat along tangents.

For the classifier's output ``o(x) = softmax(logits(x))`` (B, n_classes), the tangents
``U_x = {u_1, ..., u_k}`` of the data manifold at x (``finetune.tangents``: the k leading right
singular vectors of the pretrained stack's Jacobian), a labeled batch ``{(x_n, y_n, U_n)}`` of
size B and an optional unlabeled batch ``{(x_m, U_m)}`` of size B_u:

    (1) Omega(x) = sum_{u in U_x} ||(do/dx)(x) u||^2                 tangent propagation
    (2) TANGENT = beta / (B + B_u) * sum over all B + B_u examples of Omega(x)
    (3) loss = CE + alpha * REC + TANGENT                             CE, REC: ``finetune.classifier``

The penalty of (1) is on the output o(x), the class probabilities, as in the paper (Rifai et
al. 2011, Eq. 10: "the gradient of the output o(x) ... in the direction of the tangents"), not on
the logits: a logit can move along the manifold without changing the decision, a probability
cannot. It needs no labels, so the semi-supervised variant (2) also penalises the unlabeled
pool. ``(do/dx) u`` is a forward-mode Jacobian-vector product (``finetune.tangent_prop``),
never the (n_classes, n_visible) Jacobian itself. With beta = 0 the loss is the
``Classifier``'s, term for term, and (1) is not computed.

Batches: ``(x, y, U)`` with U (B, k, n_visible); or, for the semi-supervised variant, a dict
``{"labeled": (x, y, U), "unlabeled": (x_u, U_u)}`` (what Lightning's ``CombinedLoader`` yields
from a dict of loaders); validation and test batches may be ``(x, y)`` (no penalty). Logged,
weighted as in the loss: ``stage/ce``, ``stage/rec``, ``stage/tangent``, ``stage/loss``,
``stage/error``.

The same tangents also give a k-NN classifier that ignores moves along the manifold (the
one-sided tangent distance of Simard et al., with the tangents of the reference points):

    (4) d_T(q, x)^2 = min_a ||q - (x + U_x^T a)||^2 = ||q - x||^2 - ||U_x (q - x)||^2
                                                     (U_x with orthonormal rows, (k, d))
    (5) y(q) = majority label of the n_neighbors references x_i nearest to q in d_T

References
----------
Rifai, Dauphin, Vincent, Bengio & Muller, The manifold tangent classifier, NIPS 2011.
Simard, Victorri, LeCun & Denker, Tangent prop, NIPS 1992.
Simard, LeCun & Denker, Efficient pattern recognition using a new transformation distance,
NIPS 1993.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from pretrain.checks import check_int, check_positive

from .classifier import Classifier, split_batch
from .tangent_prop import tangent_penalty
from .unroll import UnrolledDecoder, UnrolledEncoder


class MTC(Classifier):
    """A ``Classifier`` trained on Eq. (3): cross-entropy plus the tangent penalty.

    Parameters
    ----------
    encoder, n_classes : as for ``Classifier``.
    beta : weight of the tangent penalty (>= 0).
    lr, optimizer, momentum, weight_decay, lr_decay, lr_anneal_start, reconstruction, decoder,
    seed : as for ``Classifier``.
    """

    def __init__(self, encoder: UnrolledEncoder, n_classes: int, *, beta: float = 0.1,
                 lr: float = 0.01, optimizer: str = "adam", momentum: float = 0.0,
                 weight_decay: float = 0.0, lr_decay: float = 1.0,
                 lr_anneal_start: float | None = None, reconstruction: float = 0.0,
                 decoder: UnrolledDecoder | None = None, seed: int = 0):
        check_positive("beta", beta, allow_zero=True)
        super().__init__(encoder, n_classes, lr=lr, optimizer=optimizer, momentum=momentum,
                         weight_decay=weight_decay, lr_decay=lr_decay, lr_anneal_start=lr_anneal_start,
                         reconstruction=reconstruction,
                         decoder=decoder, seed=seed)
        self.save_hyperparameters(ignore=["encoder", "decoder"])

    def output(self, x: torch.Tensor) -> torch.Tensor:
        """``o(x)``, the probabilities Eq. (1) differentiates: (B, n_visible) -> (B, n_classes)."""
        return torch.softmax(self(x), dim=1)

    def _check_tangents(self, x: torch.Tensor, U: torch.Tensor, part: str) -> None:
        d = self.encoder.n_visible
        if U.ndim != 3 or U.shape[0] != x.shape[0] or U.shape[2] != d:
            raise ValueError(f"the {part} tangents must have shape ({x.shape[0]}, k, {d}) to match "
                             f"the inputs {tuple(x.shape)}, got {tuple(U.shape)}")

    def penalty(self, x: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
        """Eq. (1) per example: x (B, n_visible), U (B, k, n_visible) -> (B,)."""
        return tangent_penalty(self.output, x, U)

    def loss_terms(self, batch, *, stage: str) -> dict[str, torch.Tensor]:
        """Named terms of an MTC batch (see the module docstring); ``loss`` is Eq. (3)."""
        labeled, unlabeled = split_batch(batch)
        if len(labeled) not in (2, 3):
            raise ValueError(f"a labeled batch is (x, y, U) or, for evaluation, (x, y); got "
                             f"{len(labeled)} items")
        x, y = labeled[0], labeled[1]
        terms = self.supervised_terms(x, y)

        penalised = []  # (x, U) pairs that Eq. (2) averages over
        if len(labeled) == 3:
            self._check_tangents(x, labeled[2], "labeled")
            penalised.append((x, labeled[2]))
        if unlabeled is not None:
            if len(unlabeled) != 2:
                raise ValueError(f"an unlabeled batch is (x_u, U_u), got {len(unlabeled)} items")
            x_u, U_u = unlabeled
            self._check_unlabeled(x_u)
            self._check_tangents(x_u, U_u, "unlabeled")
            penalised.append((x_u, U_u))
        if stage == "train" and self.hparams.beta > 0 and not penalised:
            raise ValueError("MTC training batches need tangents: (x, y, U) or "
                             "{'labeled': (x, y, U), 'unlabeled': (x_u, U_u)}; compute U with "
                             "finetune.tangents")
        if self.hparams.beta > 0 and penalised:
            omega = torch.cat([self.penalty(xp, Up) for xp, Up in penalised])  # (B + B_u,), Eq. (1)
            terms["tangent"] = self.hparams.beta * omega.mean()  # Eq. (2)
        terms["loss"] = sum(v for k, v in terms.items() if k != "error")  # Eq. (3)
        return terms


def tangent_distance(X_query: torch.Tensor, X_ref: torch.Tensor, U_ref: torch.Tensor) -> torch.Tensor:
    """Eq. (4): squared one-sided tangent distances, (Q, d), (N, d), (N, k, d) -> (Q, N).

    ``U_ref`` must have orthonormal rows per reference (``finetune.tangents`` gives them); k = 0
    is the squared Euclidean distance. Matrix-free in the pairs: two matmuls, no (Q, N, d) tensor.
    """
    if X_query.ndim != 2 or X_ref.ndim != 2 or X_query.shape[1] != X_ref.shape[1]:
        raise ValueError(f"queries (Q, d) and references (N, d) must share d, got "
                         f"{tuple(X_query.shape)} and {tuple(X_ref.shape)}")
    N, d = X_ref.shape
    if U_ref.ndim != 3 or U_ref.shape[0] != N or U_ref.shape[2] != d:
        raise ValueError(f"the reference tangents must have shape ({N}, k, {d}), got {tuple(U_ref.shape)}")
    k = U_ref.shape[1]
    sq = ((X_query ** 2).sum(1)[:, None] - 2.0 * X_query @ X_ref.T
          + (X_ref ** 2).sum(1)[None, :])  # (Q, N): ||q - x||^2
    Uq = (U_ref.reshape(N * k, d) @ X_query.T).T.reshape(len(X_query), N, k)  # (Q, N, k): U_x q
    Ux = torch.einsum("nkd,nd->nk", U_ref, X_ref)  # (N, k): U_x x
    proj = ((Uq - Ux[None]) ** 2).sum(2)  # (Q, N): ||U_x (q - x)||^2
    return (sq - proj).clamp_min(0.0)  # Eq. (4); rounding can dip below 0


@torch.no_grad()
def tangent_distance_knn(X_train: torch.Tensor, y_train: torch.Tensor, U_train: torch.Tensor,
                         X_query: torch.Tensor, *, n_neighbors: int = 1,
                         batch_size: int = 256) -> torch.Tensor:
    """Eq. (5): k-NN labels of ``X_query`` (Q, d) in the tangent distance of Eq. (4): (Q,) int64.

    Parameters
    ----------
    X_train, y_train, U_train : references (N, d), their labels (N,) and tangents (N, k, d).
    X_query : the points to classify (Q, d).
    n_neighbors : votes per query; a tie goes to the tied class with the nearest neighbour.
    batch_size : queries per block (memory grows as batch_size * N * k).
    """
    if (isinstance(n_neighbors, bool) or not isinstance(n_neighbors, int)
            or not 1 <= n_neighbors <= len(X_train)):
        raise ValueError(f"n_neighbors must be an integer in [1, {len(X_train)}], got {n_neighbors!r}")
    check_int("batch_size", batch_size, 1)
    if y_train.shape != (len(X_train),):
        raise ValueError(f"y_train must have shape ({len(X_train)},), got {tuple(y_train.shape)}")
    n_classes = int(y_train.max()) + 1
    out = []
    for i in range(0, len(X_query), batch_size):
        dist = tangent_distance(X_query[i:i + batch_size], X_train, U_train)  # (Qb, N)
        idx = dist.topk(n_neighbors, dim=1, largest=False).indices  # (Qb, n_neighbors), nearest first
        labels = y_train[idx]  # (Qb, n_neighbors)
        counts = F.one_hot(labels, n_classes).sum(1)  # (Qb, C)
        winner = counts == counts.max(dim=1, keepdim=True).values  # (Qb, C): the tied majority
        # the nearest neighbour whose class is among the tied majority decides
        first = winner.gather(1, labels).to(torch.int8).argmax(dim=1)  # (Qb,)
        out.append(labels.gather(1, first[:, None])[:, 0])
    return torch.cat(out) if out else y_train.new_empty(0)
