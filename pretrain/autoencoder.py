"""One autoencoder layer: plain, denoising, contractive, higher-order contractive and sparse.

The variants differ only in the corruption q and the penalty Omega. For a batch of B inputs:

    (1) x~ ~ q(x~ | x)                            corruption (training only; x~ = x otherwise)
    (2) h~ = f(x~) = s_h(W x~ + b)                 W: (n_hidden, n_visible), b: (n_hidden,)
    (3) r = g(h~) = s_v(z),  z = W' h~ + c         W' = W^T when tied, c: (n_visible,)
    (4) L_CE(x, r) = -sum_i [x_i log r_i + (1 - x_i) log(1 - r_i)]
                   = sum_i [softplus(z_i) - x_i z_i]           (from the logits z: stable)
    (5) L_MSE(x, r) = 1/2 sum_i (r_i - x_i)^2
    (6) J = mean_B [ L(x, g(f(x~)))                               reconstruction of the CLEAN x
                    + lambda ||J_f(x)||_F^2                       contraction   (penalties.Eq. 1)
                    + gamma E_eps ||J_f(x) - J_f(x + eps)||_F^2   higher order  (penalties.Eq. 3)
                    + beta_1 ||f(x)||_1 ]                         L1 sparsity   (penalties.Eq. 4)
          + beta_KL sum_j KL(rho || mean_B f_j(x))                KL sparsity   (penalties.Eq. 5)

Both reconstruction losses are summed over the n_visible inputs and averaged over the batch
(the convention of the seeds and of the Theano tutorials), so their scale, and the scale at
which lambda and gamma act, grows with the input dimension. Both are negative log-likelihoods
up to a constant: Bernoulli for (4), unit-variance Gaussian for (5). The penalties are taken
at the clean x. ``loss_terms`` reports each term already multiplied by its weight, so
``loss == rec + contraction + higher_order + sparsity``; a term whose weight is 0 is neither
computed nor reported.

References
----------
Vincent et al., Stacked denoising autoencoders, JMLR 2010.
Rifai et al., Contractive auto-encoders, ICML 2011.
Rifai et al., Higher order contractive auto-encoder, ECML PKDD 2011.
Glorot & Bengio, Understanding the difficulty of training deep feedforward networks, AISTATS 2010.
"""
from __future__ import annotations

import functools
import math
import operator

import torch
import torch.nn.functional as F
from torch import nn

from pretrain import penalties
from pretrain.checks import check_bool, check_choice, check_int, check_positive
from pretrain.corruption import check_corruption, corrupt
from pretrain.layer import Layer
from pretrain.names import LOSSES
from pretrain.units import activation, check_unit, derivative


def glorot_uniform(n_out: int, n_in: int, unit: str, generator: torch.Generator) -> torch.Tensor:
    """(n_out, n_in) weights ~ U(-a, a), ``a = sqrt(6 / (n_in + n_out))``, times 4 for a sigmoid.

    The factor 4 compensates the sigmoid's slope of 1/4 at the origin (Glorot & Bengio 2010, as
    in the Theano tutorials).
    """
    gain = 4.0 if unit == "sigmoid" else 1.0
    bound = gain * math.sqrt(6.0 / (n_in + n_out))
    return (2.0 * torch.rand(n_out, n_in, generator=generator) - 1.0) * bound


class AutoEncoder(Layer):
    """Autoencoder layer trained on ``J`` of Eq. (6).

    Parameters
    ----------
    n_visible, n_hidden : input and code sizes (>= 1).
    hidden_unit, visible_unit : ``pretrain.units`` names of s_h and s_v.
    tied : decoder weight ``W' = W^T`` (True) or a separate parameter ``W_prime``.
    loss : ``"cross_entropy"`` (Eq. 4; inputs in [0, 1], sigmoid visible units) or ``"mse"`` (Eq. 5).
    corruption, corruption_level : the training corruption q (``pretrain.corruption``).
    contraction : lambda, weight of the contractive penalty.
    higher_order, higher_order_sigma, higher_order_copies : gamma, the std of eps and the number
        of perturbed copies of the higher-order penalty.
    sparsity_l1 : beta_1, weight of the L1 penalty on codes.
    sparsity_kl, sparsity_target : beta_KL and rho of the KL penalty (sigmoid codes only).
    lr, optimizer, momentum, weight_decay : the optimizer (``pretrain.layer.Layer``).
    seed : the only source of randomness: the initial weights and the corruption noise.
    """

    def __init__(self, n_visible: int, n_hidden: int, *, hidden_unit: str = "sigmoid",
                 visible_unit: str = "sigmoid", tied: bool = True, loss: str = "cross_entropy",
                 corruption: str = "none", corruption_level: float = 0.0,
                 contraction: float = 0.0, higher_order: float = 0.0,
                 higher_order_sigma: float = 0.1, higher_order_copies: int = 4,
                 sparsity_l1: float = 0.0, sparsity_kl: float = 0.0, sparsity_target: float = 0.05,
                 lr: float = 0.1, optimizer: str = "sgd", momentum: float = 0.0,
                 weight_decay: float = 0.0, seed: int = 0):
        super().__init__(lr=lr, optimizer=optimizer, momentum=momentum, weight_decay=weight_decay)
        # plain ints in the hyperparameters (numpy integers do not seed a torch.Generator)
        n_visible, n_hidden = check_int("n_visible", n_visible, 1), check_int("n_hidden", n_hidden, 1)
        check_unit(hidden_unit, "hidden_unit")
        check_unit(visible_unit, "visible_unit")
        check_bool("tied", tied)
        check_choice("loss", loss, LOSSES)
        if loss == "cross_entropy" and visible_unit != "sigmoid":
            raise ValueError(f"loss='cross_entropy' needs visible_unit='sigmoid' (reconstructions are "
                             f"Bernoulli means), got visible_unit={visible_unit!r}; use loss='mse'")
        check_corruption(corruption, corruption_level)
        for name, value in (("contraction", contraction), ("higher_order", higher_order),
                            ("sparsity_l1", sparsity_l1), ("sparsity_kl", sparsity_kl)):
            check_positive(name, value, allow_zero=True)
        check_positive("higher_order_sigma", higher_order_sigma)
        higher_order_copies = check_int("higher_order_copies", higher_order_copies, 1)
        if not 0.0 < sparsity_target < 1.0:
            raise ValueError(f"sparsity_target must be in (0, 1), got {sparsity_target!r}")
        if sparsity_kl > 0 and hidden_unit != "sigmoid":
            raise ValueError(f"sparsity_kl reads codes as firing probabilities and needs "
                             f"hidden_unit='sigmoid', got hidden_unit={hidden_unit!r}; "
                             f"use sparsity_l1 instead")
        seed = check_int("seed", seed)
        self.save_hyperparameters()

        self.hidden_unit = hidden_unit
        self.visible_unit = visible_unit
        self._tied = tied
        g = torch.Generator().manual_seed(seed)  # the init depends on the seed alone
        # W: (n_hidden, n_visible)
        self.W = nn.Parameter(glorot_uniform(n_hidden, n_visible, hidden_unit, g))
        self.b = nn.Parameter(torch.zeros(n_hidden))
        self.c = nn.Parameter(torch.zeros(n_visible))
        if tied:
            self.register_parameter("W_prime", None)
        else:
            self.W_prime = nn.Parameter(glorot_uniform(n_visible, n_hidden, visible_unit, g))
        # corruption / perturbation noise, one stream for training and one for evaluation so
        # that validating does not shift the training noise; created on the data's device
        self._generators: dict[str, torch.Generator] = {}

    # -- the contract -----------------------------------------------------------------------
    @property
    def encoder_weight(self) -> torch.Tensor:
        return self.W

    @property
    def encoder_bias(self) -> torch.Tensor:
        return self.b

    @property
    def decoder_weight(self) -> torch.Tensor:  # W': (n_visible, n_hidden)
        return self.W.T if self._tied else self.W_prime

    @property
    def decoder_bias(self) -> torch.Tensor:
        return self.c

    @property
    def tied(self) -> bool:
        return self._tied

    def encoder_preactivation(self, x: torch.Tensor) -> torch.Tensor:
        """``a = W x + b`` of Eq. (2): (B, n_visible) -> (B, n_hidden)."""
        return F.linear(x, self.W, self.b)  # one fused product-and-bias

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Eq. (2): (B, n_visible) -> (B, n_hidden)."""
        return activation(self.hidden_unit, self.encoder_preactivation(x))

    def decoder_preactivation(self, h: torch.Tensor) -> torch.Tensor:
        """``z = W' h + c`` of Eq. (3), the logits for sigmoid units: (B, n_hidden) -> (B, n_visible)."""
        return F.linear(h, self.decoder_weight, self.c)  # W' = W^T is a view: no copy

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        """Eq. (3): (B, n_hidden) -> (B, n_visible)."""
        return activation(self.visible_unit, self.decoder_preactivation(h))

    # -- the objective ------------------------------------------------------------------------
    def reconstruction_error(self, x: torch.Tensor, x_in: torch.Tensor | None = None) -> torch.Tensor:
        """Per-example loss of reconstructing ``x`` from the input ``x_in`` (default ``x``).

        Eq. (4) or (5), summed over inputs: (B, n_visible) -> (B,).
        """
        z = self.decoder_preactivation(self.encode(x if x_in is None else x_in))  # (B, n_visible)
        return self._reconstruction_loss(x, z)

    def _reconstruction_loss(self, x: torch.Tensor, z: torch.Tensor, reduction: str = "none") -> torch.Tensor:
        """Eq. (4) or (5) of the target ``x`` from the decoder's pre-activation ``z``: per example
        (B,), or their sum (a scalar, in one reduction) with ``reduction="sum"``."""
        if self.hparams.loss == "cross_entropy":
            # from the logits: log(sigmoid(z)) of a saturated unit would be log(0) = -inf
            if reduction == "sum":
                return F.binary_cross_entropy_with_logits(z, x, reduction="sum")  # Eq. (4), summed
            return F.binary_cross_entropy_with_logits(z, x, reduction="none").sum(dim=1)  # Eq. (4)
        r = activation(self.visible_unit, z)
        if reduction == "sum":
            return 0.5 * F.mse_loss(r, x, reduction="sum")  # Eq. (5), summed
        return 0.5 * ((r - x) ** 2).sum(dim=1)  # Eq. (5)

    def _generator(self, device: torch.device, stream: str) -> torch.Generator:
        g = self._generators.get(stream)
        if g is None or g.device != device:
            # seed * 2 (+1): layers seeded s and s + 1 never share a stream
            g = torch.Generator(device=device).manual_seed(2 * self.hparams.seed + (stream == "eval"))
            self._generators[stream] = g
        return g

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 2 or x.shape[1] != self.n_visible:
            raise ValueError(f"{self.layer_name} expects inputs of shape (B, {self.n_visible}), "
                             f"got {tuple(x.shape)}")
        if self.hparams.loss == "cross_entropy":
            lo, hi = torch.stack(torch.aminmax(x)).tolist()  # one device-to-host read a batch
            if lo < 0 or hi > 1:
                raise ValueError(f"{self.layer_name}: loss='cross_entropy' needs inputs in [0, 1], got "
                                 f"values in [{lo:.4g}, {hi:.4g}]; rescale the data or "
                                 f"use loss='mse' with visible_unit='linear'")

    def loss_terms(self, x: torch.Tensor, *, train: bool) -> dict[str, torch.Tensor]:
        """Eq. (6) for a batch ``x`` (B, n_visible), as weighted terms and their sum ``loss``.

        Training corrupts the input (Eq. 1); evaluation reconstructs from the clean x. The
        penalties are evaluated at the clean x in both cases.
        """
        self._check_input(x)
        hp, unit = self.hparams, self.hidden_unit
        x_tilde = x
        if train and hp.corruption != "none":
            x_tilde = corrupt(x, hp.corruption, hp.corruption_level, self._generator(x.device, "train"))
        penalised = hp.contraction > 0 or hp.higher_order > 0 or hp.sparsity_l1 > 0 or hp.sparsity_kl > 0
        if x_tilde is x or penalised:
            # the clean pre-activation and code, computed once: the reconstruction (when the input
            # is not corrupted) and every penalty read them; recomputing W x for each term would cost
            # two more (B, n_visible) x (n_visible, n_hidden) products a step, forward and backward
            a = self.encoder_preactivation(x)  # (B, n_hidden)
            h = activation(unit, a)  # (B, n_hidden): Eq. (2) at the clean x
        h_tilde = h if x_tilde is x else self.encode(x_tilde)  # Eq. (2)
        z = self.decoder_preactivation(h_tilde)  # (B, n_visible), Eq. (3)
        terms = {"rec": self._reconstruction_loss(x, z, "sum") / x.shape[0]}  # Eqs. (4)-(5), clean x
        if hp.contraction > 0 or hp.higher_order > 0:
            act_grad = derivative(unit, a, h)  # (B, n_hidden): s'(a), the diagonal of J_f(x) / W
        if hp.contraction > 0:
            terms["contraction"] = hp.contraction * penalties.contraction_at(act_grad, self.W).mean()
        if hp.higher_order > 0:
            g = self._generator(x.device, "train" if train else "eval")
            terms["higher_order"] = hp.higher_order * penalties.higher_order_at(
                a, act_grad, self.W, unit, sigma=hp.higher_order_sigma, copies=hp.higher_order_copies,
                generator=g).mean()
        if hp.sparsity_l1 > 0 or hp.sparsity_kl > 0:
            sparsity = torch.zeros((), dtype=h.dtype, device=h.device)
            if hp.sparsity_l1 > 0:
                sparsity = sparsity + hp.sparsity_l1 * penalties.sparsity_l1(h).mean()
            if hp.sparsity_kl > 0:
                sparsity = sparsity + hp.sparsity_kl * penalties.sparsity_kl(h, hp.sparsity_target)
            terms["sparsity"] = sparsity
        terms["loss"] = functools.reduce(operator.add, terms.values())  # Eq. (6), no 0 + rec op
        return terms
