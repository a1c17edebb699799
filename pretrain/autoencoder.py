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

The gradient of J is written out rather than taken by autograd (``loss.backward()`` gives it
all the same): with ``W'`` the decoder weight (W^T when tied), ``a~ = W x~ + b`` and ``a = W x + b``,

    (7)  delta_z   = dJ/dz = (sigmoid(z) - x) / B  for (4),   (r - x) s_v'(z) / B  for (5)    (B, n_visible)
    (8)  delta_rec = (delta_z W') * s_h'(a~)                                               (B, n_hidden)
    (9)  delta_pen = dOmega/da at the clean a, delta_u = dOmega/du for u_c = W eps_c
                     (penalties Eqs. 6-8; L1: beta_1 sign(h) s_h'(a) / B)
    (10) dJ/dW  = delta_rec^T x~ + delta_pen^T x + sum_c delta_u_c^T eps_c + h~^T delta_z (tied)
                  + 2 diag(dOmega/dn) W,      n_j = ||W_j||^2
         dJ/db  = sum_rows (delta_rec + delta_pen),    dJ/dc = sum_rows delta_z,
         dJ/dW' = delta_z^T h~ (untied)

The products of (10) are one matmul over the rows stacked ``[x~; x; eps_1..C; delta_z]`` against
``[delta_rec; delta_pen; delta_u; h~]`` (x~ and x share a block when nothing corrupts x), and the
forward products ``W x~``, ``W x`` and ``W eps`` are one matmul over the same rows: the update
costs 2 (2 + C) + 1 products of B x n_visible x n_hidden (C = 0 without the higher-order term).

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
from pretrain.module import scales_gradient
from pretrain.names import LOSSES
from pretrain.units import activation, check_unit, derivative, second_derivative


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
        # seed * 2 (+1): layers seeded s and s + 1 never share a stream
        return self.generator(stream, device, 2 * self.hparams.seed + (stream == "eval"))

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 2 or x.shape[1] != self.n_visible:
            raise ValueError(f"{self.layer_name} expects inputs of shape (B, {self.n_visible}), "
                             f"got {tuple(x.shape)}")
        if self.hparams.loss == "cross_entropy":
            self.check_unit_interval(x, "loss='cross_entropy'",
                                     "rescale the data or use loss='mse' with visible_unit='linear'")

    def _reconstruction_delta(self, x: torch.Tensor, z: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Eq. (7) without the 1/B: ``dL/dz`` of Eq. (4) or (5) for the target ``x``, into ``out``."""
        r = torch.sigmoid(z, out=out) if self.visible_unit == "sigmoid" else activation(self.visible_unit, z)
        if self.hparams.loss == "cross_entropy":
            return out.sub_(x)  # sigmoid(z) - x
        return torch.mul(r - x, derivative(self.visible_unit, z, r), out=out)

    def loss_terms(self, x: torch.Tensor, *, train: bool) -> dict[str, torch.Tensor]:
        """Eq. (6) for a batch ``x`` (B, n_visible), as weighted terms and their sum ``loss``.

        Training corrupts the input (Eq. 1); evaluation reconstructs from the clean x. The
        penalties are evaluated at the clean x in both cases. ``loss`` carries the gradient of
        Eq. (10) with respect to the layer's parameters (not with respect to ``x``).
        """
        self._check_input(x)
        hp, unit = self.hparams, self.hidden_unit
        x_tilde = x
        if train and hp.corruption != "none":
            x_tilde = corrupt(x, hp.corruption, hp.corruption_level, self._generator(x.device, "train"))
        W, W_dec = self.W, self.decoder_weight  # (n_hidden, n_visible), (n_visible, n_hidden)
        grad = torch.is_grad_enabled() and W.requires_grad
        with torch.no_grad():
            terms, parts = self._terms(x, x_tilde, train, W.detach(), W_dec.detach(), unit, grad)
        loss = functools.reduce(operator.add, terms.values())  # Eq. (6), no 0 + rec op
        if grad:
            loss = _AutoencoderGradient.apply(loss, parts, W, self.b, self.c, self.W_prime)
        terms["loss"] = loss
        return terms

    def _terms(self, x, x_tilde, train, W, W_dec, unit, grad):
        """The weighted terms of Eq. (6) and, when ``grad``, the blocks of Eq. (10)."""
        hp, (B, n_visible), n_hidden = self.hparams, x.shape, W.shape[0]
        jacobian = hp.contraction > 0 or hp.higher_order > 0
        sparse = hp.sparsity_l1 > 0 or hp.sparsity_kl > 0
        C = hp.higher_order_copies if hp.higher_order > 0 else 0
        clean = x_tilde is not x and (jacobian or sparse)  # the penalties read the clean x: its own block
        n_x = 2 * B if clean else B  # rows of x~ (and x)
        n_in = n_x + C * B
        R = x.new_empty(n_in + (B if grad else 0), n_visible)  # [x~; x; eps_1..C; delta_z]
        R[:B] = x_tilde
        if clean:
            R[B:n_x] = x
        if C:  # the same (C, B, n_visible) standard normal draw as penalties.higher_order_at
            torch.randn((C * B, n_visible), generator=self._generator(x.device, "train" if train else "eval"),
                        dtype=x.dtype, device=x.device, out=R[n_x:n_in])
        A = torch.mm(R[:n_in], W.T)  # (n_in, n_hidden): W x~, W x, W eps_c in one product
        A[:n_x].add_(self.b)
        a_tilde = A[:B]  # Eq. (2) before the unit, at x~
        h_tilde = activation(unit, a_tilde)
        a, h = (A[B:n_x], activation(unit, A[B:n_x])) if clean else (a_tilde, h_tilde)
        z = torch.addmm(self.c, h_tilde, W_dec.T)  # (B, n_visible), Eq. (3)
        terms = {"rec": self._reconstruction_loss(x, z, "sum") / B}  # Eqs. (4)-(5), clean x
        L = x.new_empty(R.shape[0], n_hidden) if grad else None  # [delta_rec; delta_pen; delta_u; h~]
        delta_pen = x.new_zeros(B, n_hidden) if grad else None
        grad_n = x.new_zeros(n_hidden) if grad else None  # dOmega/dn of Eq. (10)
        act_grad = derivative(unit, a, h) if jacobian or sparse else None  # s'(a), the diagonal of J_f(x) / W
        if jacobian:
            curv, norms = second_derivative(unit, a, h, act_grad), penalties.row_norms_sq(W)
        if hp.contraction > 0:
            value, g_a, g_n = penalties.contraction_gradient(act_grad, curv, norms, weight=hp.contraction / B)
            terms["contraction"] = value
            if grad:
                delta_pen.add_(g_a)
                grad_n.add_(g_n)
        if hp.higher_order > 0:
            value, g_a, _, g_n = penalties.higher_order_gradient(
                a, act_grad, curv, A[n_x:].view(C, B, n_hidden), norms, unit, sigma=hp.higher_order_sigma,
                weight=hp.higher_order / B, out=L[n_x:n_in].view(C, B, n_hidden) if grad else None,
                reuse_u=True)  # W eps is read once: its block of A takes the copies' units
            terms["higher_order"] = value
            if grad:
                delta_pen.add_(g_a)
                grad_n.add_(g_n)
        if sparse:
            sparsity, g_h = torch.zeros((), dtype=h.dtype, device=h.device), 0.0
            if hp.sparsity_l1 > 0:
                sparsity = sparsity + hp.sparsity_l1 * penalties.sparsity_l1(h).mean()
                g_h = torch.sign(h).mul_(hp.sparsity_l1 / B)  # (B, n_hidden)
            if hp.sparsity_kl > 0:
                sparsity = sparsity + hp.sparsity_kl * penalties.sparsity_kl(h, hp.sparsity_target)
                g_h = g_h + penalties.sparsity_kl_gradient(h, hp.sparsity_target) * (hp.sparsity_kl / B)
            terms["sparsity"] = sparsity
            if grad:
                delta_pen.addcmul_(g_h, act_grad)  # through h = s(a)
        if not grad:
            return terms, None
        delta_z = self._reconstruction_delta(x, z, out=R[n_in:]).div_(B)  # Eq. (7)
        # s'(a~) is s'(a) when nothing corrupts x (the same block)
        s_prime = act_grad if act_grad is not None and not clean else derivative(unit, a_tilde, h_tilde)
        delta_rec = torch.mm(delta_z, W_dec, out=L[:B]).mul_(s_prime)  # Eq. (8)
        if clean:
            L[B:n_x] = delta_pen
        else:
            delta_rec.add_(delta_pen)
        L[n_in:] = h_tilde
        return terms, (L, R, grad_n, n_x, n_in)


class _AutoencoderGradient(torch.autograd.Function):
    """The loss value with the gradient of Eq. (10) attached: the blocks ``L`` (rows, n_hidden) and
    ``R`` (rows, n_visible) come from the forward computation; their product is formed only when a
    backward pass asks for it (an evaluation step never pays for it)."""

    @staticmethod
    def forward(ctx, loss, parts, W, b, c, W_prime):
        ctx.parts, ctx.W, ctx.tied = parts, W.detach(), W_prime is None
        return loss.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, scale):
        L, R, grad_n, n_x, n_in = ctx.parts
        delta_z, h_tilde = R[n_in:], L[n_in:]  # (B, n_visible), (B, n_hidden)
        rows = R.shape[0] if ctx.tied else n_in  # tied: the decoder's h~^T delta_z joins the product
        g_W = torch.mm(L[:rows].T, R[:rows])  # (n_hidden, n_visible), Eq. (10) in one product
        g_W.addcmul_(ctx.W, grad_n.unsqueeze(1), value=2.0)  # + 2 diag(dOmega/dn) W
        grads = [g_W, L[:n_x].sum(0), delta_z.sum(0)]  # dJ/dW, dJ/db, dJ/dc
        if not ctx.tied:
            grads.append(torch.mm(delta_z.T, h_tilde))  # dJ/dW' (n_visible, n_hidden)
        if scales_gradient(scale):
            grads = [g * scale for g in grads]
        return None, None, *grads, *([None] if ctx.tied else [])
