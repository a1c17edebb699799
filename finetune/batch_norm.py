"""A batch-normalised MLP: the unrolled layers and the softmax head, each pre-activation
normalised over the batch, then shifted and scaled by learned vectors.

For layers l = 1..L (the encoder's K layers and the softmax head, L = K + 1; m_l units in layer
l, m_0 = n_visible), a batch of N rows and an optional noise level sigma_n:

    (1) h(0) = x + n(0),   n(l) ~ N(0, sigma_n^2 I)                       (sigma_n = 0: clean)
    (2) z(l) = BN(W(l) h(l-1) + b(l)) + n(l),   h(l) = phi_l(gamma(l) (z(l) + beta(l)))
                                                 phi_l the layer's unit; the top keeps its logits
    (3) BN(a) = (a - mu_B) / sigma_B,   mu_B, sigma_B^2 = mean, (biased) variance over the batch
              per unit, sigma_B = sqrt(sigma_B^2 + eps); a batch made of groups (``groups``: a
              labeled and an unlabeled batch) normalises each group by its own mu_B, sigma_B
    (4) in eval: mu_B, sigma_B^2 replaced by running averages, each pass that ``track``s moving
        them a fraction ``BN_MOMENTUM`` toward the statistics of all its rows

The Ladder network runs (2) twice, corrupted and clean, and reads z(l), mu_B, sigma_B of both
(``finetune.ladder``); VAT runs it clean, its perturbed passes normalised by their own batch but
not tracked, so that the running averages learn only the clean data (``finetune.vat``).
``match_mlp`` sets gamma(l), beta(l) and the running averages from data, so that a network on a
pretrained stack starts from the stack's codes (gamma = 1, beta = 0 would rescale every
pre-activation).

Groups matter where only some rows carry a cost: normalised together, a fixed set of labeled
rows would share its statistics with the unlabeled rows beside it, and the network could move
the unlabeled rows' pre-activations to shift those statistics in the labeled rows' favour, a
function of the batch that the clean network, on test images, does not compute.

With ``batch_norm=False`` BN is the identity, beta and gamma are absent: the ``MLP``.

References
----------
Ioffe & Szegedy, Batch normalization: accelerating deep network training by reducing internal
covariate shift, ICML 2015.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from pretrain.checks import check_bool
from pretrain.units import activation

from .unroll import MLP, UnrolledEncoder

#: eps of Eq. (3), and the momentum of the running averages of Eq. (4)
BN_EPS = 1e-5
BN_MOMENTUM = 0.1


def batch_normalize(z: torch.Tensor, eps: float = BN_EPS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eq. (3): (N, m) -> (BN(z) (N, m), mu_B (m,), sigma_B (m,)), biased variance.

    The variance is the mean of the centred squares, two passes over z: on the CPU torch's
    ``var(dim=0)`` took 12 times as long at (150, 1000)."""
    mu = z.mean(dim=0)  # (m,)
    centred = z - mu  # (N, m)
    sigma = torch.sqrt(centred.square().mean(dim=0) + eps)  # (m,)
    return centred / sigma, mu, sigma  # Eq. (3)


def batch_normalize_groups(z: torch.Tensor, groups: Sequence[int] | None = None,
                           eps: float = BN_EPS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eq. (3) over each block of consecutive rows whose sizes are ``groups`` (None: one block):
    (N, m) -> (BN(z) (N, m), mu_B, sigma_B), the statistics (m,) for one block, else (N, m),
    each row its block's."""
    if groups is None or len(groups) == 1:
        return batch_normalize(z, eps)
    parts = [batch_normalize(block, eps) for block in z.split(list(groups))]
    return (torch.cat([p[0] for p in parts]),  # (N, m)
            torch.cat([p[1].expand(n, -1) for p, n in zip(parts, groups)]),  # (N, m)
            torch.cat([p[2].expand(n, -1) for p, n in zip(parts, groups)]))  # (N, m)


class BatchNormMLP(MLP):
    """Eqs. (1)-(4): an ``MLP`` (the unrolled layers and the softmax head) with batch
    normalisation, beta and gamma in every layer; ``forward`` is the clean pass's logits, so that
    whatever serves an ``MLP`` serves it.

    Parameters
    ----------
    encoder, n_classes, seed : as for ``MLP``.
    batch_norm : Eq. (3) in every layer, or the identity (then it is the ``MLP``).
    """

    def __init__(self, encoder: UnrolledEncoder, n_classes: int, *, batch_norm: bool = True,
                 seed: int = 0):
        super().__init__(encoder, n_classes, seed=seed)
        self.batch_norm = check_bool("batch_norm", batch_norm)
        self.sizes = [*encoder.sizes, n_classes]  # m_0..m_L
        W = encoder.layers[0].weight
        if batch_norm:
            self.beta = nn.ParameterList([nn.Parameter(torch.zeros(m).to(W)) for m in self.sizes[1:]])
            self.gamma = nn.ParameterList([nn.Parameter(torch.ones(m).to(W)) for m in self.sizes[1:]])
            for l, m in enumerate(self.sizes[1:], 1):
                self.register_buffer(f"running_mean_{l}", torch.zeros(m).to(W))
                self.register_buffer(f"running_var_{l}", torch.ones(m).to(W))

    def _linears(self) -> list[tuple[nn.Linear, str]]:
        return [*zip(self.encoder.layers, self.encoder.units), (self.head, "softmax")]

    def _normalize(self, l: int, z_pre: torch.Tensor, *, track: bool,
                   groups: Sequence[int] | None = None):
        """Eq. (3) in layer l: batch statistics in training, per group of rows with ``groups``
        (then mu and sigma are (N, m), each row its group's), and with ``track`` the running
        averages move toward the statistics of all the rows (Eq. 4); running averages in eval;
        the identity without batch norm."""
        if not self.batch_norm:
            return z_pre, 0.0, 1.0
        mean, var = getattr(self, f"running_mean_{l}"), getattr(self, f"running_var_{l}")
        if not self.training:
            sigma = torch.sqrt(var + BN_EPS)
            return (z_pre - mean) / sigma, mean, sigma
        z, mu, sigma = batch_normalize_groups(z_pre, groups)  # Eq. (3)
        if track:
            with torch.no_grad():
                if mu.dim() == 1:  # one group: its statistics are all the rows'
                    all_mu, all_var = mu, sigma ** 2 - BN_EPS
                else:
                    all_mu = z_pre.mean(dim=0)
                    all_var = (z_pre - all_mu).square().mean(dim=0)
                mean.lerp_(all_mu.detach(), BN_MOMENTUM)  # Eq. (4)
                var.lerp_(all_var.detach(), BN_MOMENTUM)
        return z, mu, sigma

    def encode(self, x: torch.Tensor, noise: float = 0.0, *, track: bool = False,
               groups: Sequence[int] | None = None) -> dict[str, list | torch.Tensor]:
        """Eqs. (1)-(2): per layer l = 0..L the normalised (noisy) z(l), mu(l), sigma(l), and
        the top's pre-softmax ``logits`` (N, n_classes); ``track``: the running averages of
        Eq. (4) learn this pass's statistics; ``groups``: the sizes of consecutive blocks of
        rows (summing to N) that Eq. (3) normalises each on its own."""
        if groups is not None and sum(groups) != len(x):
            raise ValueError(f"groups {list(groups)} must sum to the batch's {len(x)} rows")
        noisy = (lambda t: t + noise * torch.randn_like(t)) if noise > 0 else (lambda t: t)
        h = noisy(x)  # Eq. (1)
        zs, mus, sigmas = [h], [0.0], [1.0]
        for l, (lin, unit) in enumerate(self._linears(), 1):
            z, mu, sigma = self._normalize(l, lin(h), track=track, groups=groups)  # (N, m_l)
            z = noisy(z)  # Eq. (2)
            a = self.gamma[l - 1] * (z + self.beta[l - 1]) if self.batch_norm else z
            zs.append(z), mus.append(mu), sigmas.append(sigma)
            h = a if unit == "softmax" else activation(unit, a)  # the top keeps its logits
        return {"z": zs, "mu": mus, "sigma": sigmas, "logits": h}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The clean pass's logits, (B, n_visible) -> (B, n_classes); untracked."""
        return self.encode(x, 0.0)["logits"]

    @torch.no_grad()
    def match_mlp(self, x: torch.Tensor) -> None:
        """Start the encoder's layers from the stack's function: with mu(l), sigma(l) the
        statistics of x's pre-activations in the unrolled stack, gamma(l) = sigma(l) and
        beta(l) = mu(l) / sigma(l) give gamma (z + beta) = W h + b, so that the clean pass
        (running averages set to those statistics) computes the stack's codes on data like x,
        rather than the stack's layers on rescaled pre-activations. The softmax layer, new and
        small, keeps gamma = 1, beta = 0. Without batch norm there is nothing to match."""
        if not self.batch_norm:
            return
        h = x
        for l, (lin, unit) in enumerate(zip(self.encoder.layers, self.encoder.units), 1):
            pre = lin(h)  # (N, m_l)
            _, mu, sigma = batch_normalize(pre)
            self.gamma[l - 1].copy_(sigma)
            self.beta[l - 1].copy_(mu / sigma)
            getattr(self, f"running_mean_{l}").copy_(mu)
            getattr(self, f"running_var_{l}").copy_(sigma ** 2 - BN_EPS)
            h = activation(unit, pre)
