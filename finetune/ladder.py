"""The Ladder network: a denoising autoencoder at every layer, trained jointly with the classifier.

An encoder of layers l = 1..L (the unrolled stack's K layers and the softmax head, L = K + 1;
m_l units in layer l, m_0 = n_visible) runs twice on a batch of N = B + B_u rows (a labeled
batch of size B and an optional unlabeled one), once corrupted and once clean, with the same
weights W(l), b(l), beta(l), gamma(l):

    (1) z~(0) = h~(0) = x + n(0),   n(l) ~ N(0, sigma_n^2 I)                 the corrupted encoder
    (2) z~(l) = BN(W(l) h~(l-1) + b(l)) + n(l),  h~(l) = phi_l(gamma(l) (z~(l) + beta(l)))
                                                   l = 1..L; phi_l the layer's unit, phi_L = softmax
    (3) BN(z) = (z - mu_B) / sigma_B,  mu_B, sigma_B^2 = mean, (biased) variance per unit
              over the labeled batch for its rows and over the unlabeled batch for its rows,
              sigma_B = sqrt(sigma_B^2 + eps)
    (4) z(l), h(l), mu(l), sigma(l): (1)-(3) with n = 0                        the clean encoder
    (5) u(L) = BN(h~(L)),   u(l) = BN(V(l+1) z^(l+1)),  l = L-1..0          the decoder, top first
              (BN over each batch on its own, as in (3))
    (6) z^(l) = g(z~(l), u(l)) = (z~(l) - mu(u)) v(u) + mu(u)                the vanilla combinator
        mu(u) = a1 sigm(a2 u + a3) + a4 u + a5,   v(u) = a6 sigm(a7 u + a8) + a9 u + a10
    (7) z^_BN(l) = (z^(l) - mu(l)) / sigma(l),  l >= 1;   z^_BN(0) = z^(0)
    (8) C_d(l) = lambda_l / (N m_l) sum_n ||z(l)_n - z^_BN(l)_n||^2         over all N rows
              (mu(l), sigma(l) in (7): the clean statistics of the row's own batch)
    (9) C_c = -1/B sum_n log P~(y_n | x_n),   P~ = h~(L) on the labeled rows
    (10) loss = C_c + sum_l C_d(l)
    (11) prediction: argmax of the clean encoder's h(L) (mu, sigma: running averages)

Products in (2), (6) are per unit; a1..a10 are vectors of m_l parameters per layer (a2 = a7 = 1,
the others 0 at the start, as in the authors' code, so that z^ = 0). The supervised cost (9)
is on the corrupted output, the noise acting as a regulariser; the denoising costs (8) need no
labels and cover the labeled and unlabeled rows. The clean encoder gives the targets z(l) and
the statistics (7) normalises the decoder's guesses with; in evaluation it uses running
averages of mu(l), sigma(l)^2 (``finetune.batch_norm``, whose ``BatchNormMLP`` runs Eqs.
(1)-(4)), updated by the clean pass of each training batch over all its rows. The labeled and
the unlabeled batch are normalised each on its own, as in the authors' code: normalised
together, the same few labeled images in every batch would share their statistics with the
unlabeled rows, whose pre-activations the network then moves to suit the labeled rows' cost,
and the clean network on test images loses what it learned (on 100 MNIST labels, 10000-image
pool, no denoising: 81 % validation error normalised together, 25 % each on its own). The
encoder's first K layers are the unrolled stack's (pretrained or fresh); ``BatchNormMLP.match_mlp`` sets beta(l), gamma(l) and the
running averages from the data, so that a pretrained Ladder starts from the stack's codes (BN
with gamma = 1, beta = 0 would not).

With ``batch_norm=False`` BN is the identity, beta and gamma are absent and (7) is
z^_BN = z^; with also sigma_n = 0 and every lambda_l = 0 the loss is the ``Classifier``'s, term
for term (same CE, same gradients in the shared weights).

Batches: ``(x, y)``, or a dict ``{"labeled": (x, y), "unlabeled": (x_u,)}``; validation and test
batches are ``(x, y)`` and get the clean encoder's CE. Logged: ``stage/ce``, ``stage/denoise_l``
(each lambda_l > 0, weighted), ``stage/loss``, ``stage/error``.

References
----------
Rasmus, Valpola, Honkala, Berglund & Raiko, Semi-supervised learning with ladder networks,
NIPS 2015.
Valpola, From neural PCA to deep unsupervised learning, 2015.
Pezeshki, Fan, Brakel, Courville & Bengio, Deconstructing the ladder network architecture,
ICML 2016 (the name "vanilla combinator").
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.checks import check_bool, check_positive

from .batch_norm import BatchNormMLP, batch_normalize_groups
from .classifier import Classifier, split_batch
from .unroll import UnrolledEncoder

#: the paper's MNIST denoising weights: lambda_0 = 1000 (the input), lambda_1 = 10, then 0.1
PAPER_LAMBDAS = (1000.0, 10.0, 0.1)
N_COMBINATOR = 10  # a1..a10 of Eq. (6)


def paper_lambdas(n_layers: int) -> list[float]:
    """lambda_0..lambda_L of the paper's MNIST runs for ``n_layers = L + 1`` cost layers."""
    return [PAPER_LAMBDAS[min(i, 2)] for i in range(n_layers)]


def combinator(z_tilde: torch.Tensor, u: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Eq. (6), the vanilla combinator: z~ (N, m), u (N, m), a (10, m) -> z^ (N, m)."""
    a1, a2, a3, a4, a5, a6, a7, a8, a9, a10 = a
    mu = a1 * torch.sigmoid(a2 * u + a3) + a4 * u + a5  # (N, m)
    v = a6 * torch.sigmoid(a7 * u + a8) + a9 * u + a10  # (N, m)
    return (z_tilde - mu) * v + mu  # Eq. (6)


def denoising_cost(z: torch.Tensor, z_hat: torch.Tensor, mu: torch.Tensor | float,
                   sigma: torch.Tensor | float) -> torch.Tensor:
    """Eqs. (7)-(8) without lambda: 1/(N m) sum_n ||z_n - (z^_n - mu) / sigma||^2, a scalar."""
    z_hat_bn = (z_hat - mu) / sigma  # Eq. (7)
    return ((z - z_hat_bn) ** 2).mean()  # Eq. (8): mean over the N rows and the m units


def _combinator_init(m: int) -> torch.Tensor:
    a = torch.zeros(N_COMBINATOR, m)  # (10, m)
    a[1] = a[6] = 1.0  # a2 = a7 = 1
    return a


class Ladder(Classifier):
    """A ``Classifier`` whose network is a ``BatchNormMLP``, trained on Eq. (10) with the decoder.

    Parameters
    ----------
    encoder, n_classes : as for ``Classifier``; the encoder's layers are the first K layers.
    noise : sigma_n of Eqs. (1)-(2), the standard deviation of the Gaussian noise (>= 0).
    denoise : lambda_0..lambda_L of Eq. (8), K + 2 weights (>= 0; the input's first);
        None: ``paper_lambdas``.
    batch_norm : Eq. (3) in every layer (True, the paper) or the identity (False).
    lr, optimizer, momentum, weight_decay, lr_decay, lr_anneal_start, seed : as for ``Classifier``;
        ``seed`` also seeds the decoder's V(l).
    """

    def __init__(self, encoder: UnrolledEncoder, n_classes: int, *, noise: float = 0.3,
                 denoise: Sequence[float] | None = None, batch_norm: bool = True,
                 lr: float = 0.01, optimizer: str = "adam", momentum: float = 0.0,
                 weight_decay: float = 0.0, lr_decay: float = 1.0, lr_anneal_start: float | None = None,
                 seed: int = 0):
        check_positive("noise", noise, allow_zero=True)
        check_bool("batch_norm", batch_norm)
        super().__init__(encoder, n_classes, lr=lr, optimizer=optimizer, momentum=momentum,
                         weight_decay=weight_decay, lr_decay=lr_decay, lr_anneal_start=lr_anneal_start,
                         seed=seed)
        self.net = BatchNormMLP(encoder, n_classes, batch_norm=batch_norm, seed=seed)  # the same head
        sizes = self.net.sizes
        n_cost = len(sizes)
        if denoise is None:
            denoise = paper_lambdas(n_cost)
        denoise = [float(check_positive(f"denoise[{i}]", v, allow_zero=True)) for i, v in enumerate(denoise)]
        if len(denoise) != n_cost:
            raise ValueError(f"denoise must hold {n_cost} weights lambda_0..lambda_{n_cost - 1} (the "
                             f"input, {len(encoder.layers)} hidden layers and the softmax), got "
                             f"{len(denoise)}")
        self.sizes, self.lambdas = sizes, denoise
        W = encoder.layers[0].weight
        g = torch.Generator().manual_seed(seed + 1)  # V(l): N(0, 1/m_l), the authors' scale
        self.V = nn.ParameterList([nn.Parameter((torch.randn(sizes[l - 1], sizes[l], generator=g)
                                                 / math.sqrt(sizes[l])).to(W)) for l in range(1, n_cost)])
        self.a = nn.ParameterList([nn.Parameter(_combinator_init(m).to(W)) for m in sizes])
        self.save_hyperparameters(ignore=["encoder", "decoder"])

    def encode(self, x: torch.Tensor, noise: float, *, track: bool = False,
               groups: Sequence[int] | None = None) -> dict[str, list | torch.Tensor]:
        """``BatchNormMLP.encode``."""
        return self.net.encode(x, noise, track=track, groups=groups)

    # -- the decoder ------------------------------------------------------------------------
    def decode(self, corrupted: dict, h_top: torch.Tensor,
               groups: Sequence[int] | None = None) -> list[torch.Tensor | None]:
        """Eqs. (5)-(6), top first: z^(l) for l = 0..L (None below the lowest lambda_l > 0);
        ``groups`` as for ``encode``."""
        def bn(t: torch.Tensor) -> torch.Tensor:  # BN of Eq. (5), per group
            return batch_normalize_groups(t, groups)[0] if self.hparams.batch_norm else t

        lowest = min(l for l, lam in enumerate(self.lambdas) if lam > 0)
        z_hat: list[torch.Tensor | None] = [None] * len(self.sizes)
        u = bn(h_top)  # Eq. (5): u(L)
        for l in range(len(self.sizes) - 1, lowest - 1, -1):
            if l < len(self.sizes) - 1:
                u = bn(z_hat[l + 1] @ self.V[l].T)  # Eq. (5): (N, m_l)
            z_hat[l] = combinator(corrupted["z"][l], u, self.a[l])  # Eq. (6)
        return z_hat

    # -- the objective ----------------------------------------------------------------------
    def loss_terms(self, batch, *, stage: str) -> dict[str, torch.Tensor]:
        """Named terms of a Ladder batch (see the module docstring); ``loss`` is Eq. (10)."""
        labeled, unlabeled = split_batch(batch)
        x, y = labeled[0], labeled[1]
        self._check_labeled(x, y)
        if stage != "train":
            logits = self(x)
            terms = {"ce": F.cross_entropy(logits, y)}
        else:
            xs = [x]
            if unlabeled is not None:
                x_u = unlabeled[0]
                self._check_unlabeled(x_u)
                xs.append(x_u)
            x_all = torch.cat(xs)  # (N, n_visible), N = B + B_u
            groups = [len(x_g) for x_g in xs]  # Eq. (3): each batch normalised on its own
            corrupted = self.encode(x_all, self.hparams.noise, groups=groups)
            logits = corrupted["logits"][:len(x)]  # (B, n_classes): P~ of Eq. (9)
            terms = {"ce": F.cross_entropy(logits, y)}  # Eq. (9)
            denoising = any(lam > 0 for lam in self.lambdas)
            if self.hparams.batch_norm or denoising:
                with torch.set_grad_enabled(denoising and torch.is_grad_enabled()):
                    # Eq. (4), and the running averages
                    clean = self.encode(x_all, 0.0, track=True, groups=groups)
            if denoising:
                z_hat = self.decode(corrupted, torch.softmax(corrupted["logits"], dim=1), groups)
                for l, lam in enumerate(self.lambdas):
                    if lam > 0:  # Eq. (8)
                        terms[f"denoise_{l}"] = lam * denoising_cost(clean["z"][l], z_hat[l],
                                                                     clean["mu"][l], clean["sigma"][l])
        terms["loss"] = sum(terms.values())  # Eq. (10)
        terms["error"] = (logits.detach().argmax(dim=1) != y).to(logits.dtype).mean()
        return terms
