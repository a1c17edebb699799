"""Regularisers of an autoencoder's code, as pure functions of tensors.

For an encoder ``h = f(x) = s(a)``, ``a = W x + b`` (W: (n_hidden, n_visible)), the Jacobian is
``J_f(x) = diag(s'(a)) W``, so its squared Frobenius norm needs no (B, n_hidden, n_visible)
tensor:

    (1) ||J_f(x)||_F^2 = sum_j s'(a_j)^2 ||W_j||^2                       (W_j: row j of W)
    (2) ||J_f(x) - J_f(x~)||_F^2 = sum_j (s'(a_j) - s'(a~_j))^2 ||W_j||^2,  a~ = W x~ + b
    (3) higher order: E_eps ||J_f(x) - J_f(x + eps)||_F^2, eps ~ N(0, sigma^2 I),
        estimated by the mean of (2) over ``copies`` draws of eps
    (4) L1 sparsity: sum_j |h_j|
    (5) KL sparsity: sum_j KL(rho || rho_hat_j)
            = sum_j rho log(rho / rho_hat_j) + (1 - rho) log((1 - rho) / (1 - rho_hat_j)),
        rho_hat_j = mean of h_j over the batch

Per-example penalties return shape (B,); the caller averages over the batch. The norm is the
square of each Jacobian entry summed (never the square of a sum, never a norm of the mean
Jacobian over the batch).

A layer's update takes the gradients of the penalties written out rather than through autograd
(a dozen elementwise passes over (copies, B, n_hidden) tensors fewer). With ``n_j = ||W_j||^2``,
``s''`` the unit's second derivative (``pretrain.units`` Eq. 4) and the batch sums

    T_1 = sum_{b,j} s'(a_bj)^2 n_j                                   (Eq. 1 summed over the batch)
    T_3 = (1/C) sum_{c,b,j} (s'(a_bj) - s'(a~_cbj))^2 n_j,  a~_c = a + sigma u_c,  u_c = W eps_c

    (6) dT_1/da_bj = 2 s'(a_bj) s''(a_bj) n_j              dT_1/dn_j = sum_b s'(a_bj)^2
    (7) dT_3/du_cbj = -(2 sigma / C) (s'(a_bj) - s'(a~_cbj)) s''(a~_cbj) n_j
        dT_3/da_bj  = (2 / C) s''(a_bj) n_j sum_c (s'(a_bj) - s'(a~_cbj)) + (1 / sigma) sum_c dT_3/du_cbj
        dT_3/dn_j   = (1 / C) sum_{c,b} (s'(a_bj) - s'(a~_cbj))^2
    (8) d/d rho_hat_j of Eq. (5): (1 - rho) / (1 - rho_hat_j) - rho / rho_hat_j (zero where the clamp
        holds rho_hat_j)

and ``dn_j/dW_j = 2 W_j``.

A layer that has the pre-activation ``a`` and ``s'(a)`` at hand (it needs them for the code)
passes them to :func:`contraction_at` and :func:`higher_order_at` instead of paying for
``W x`` again: the perturbed pre-activations of Eq. (3) are ``a~ = a + W eps``, one
(copies * B, n_visible) x (n_visible, n_hidden) product for all copies.

References
----------
Rifai et al., Contractive auto-encoders: explicit invariance during feature extraction, ICML 2011.
Rifai et al., Higher order contractive auto-encoder, ECML PKDD 2011.
Ng, Sparse autoencoder, CS294A lecture notes, 2011 (the KL sparsity penalty).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from pretrain.checks import check_int, check_positive
from pretrain.units import activation, check_unit, derivative, second_derivative

#: rho_hat is clamped to [KL_EPS, 1 - KL_EPS] before the logs of Eq. (5); see sparsity_kl
KL_EPS = 1e-6


def _act_grad(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor, unit: str) -> torch.Tensor:
    """``s'(a)`` at ``a = x W^T + b``: (..., n_visible) -> (..., n_hidden)."""
    a = F.linear(x, W, b)  # (..., n_hidden)
    return derivative(unit, a, activation(unit, a))


class _RowNormsSq(torch.autograd.Function):
    """``||W_j||^2`` of each row, (n_hidden, n_visible) -> (n_hidden,), with its gradient
    ``2 g_j W_j`` written out: one pass over W each way, where autograd's ``(W * W).sum(1)``
    spends a product forward and two more backward (a third of a CAE step's elementwise time)."""

    @staticmethod
    def forward(ctx, W: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(W)
        return torch.linalg.vecdot(W, W, dim=1)  # each entry squared, then summed

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:
        (W,) = ctx.saved_tensors
        return W * (2.0 * g).unsqueeze(1)  # (n_hidden, n_visible); differentiable again


def _row_norms_sq(W: torch.Tensor) -> torch.Tensor:
    """``||W_j||^2`` of each row: (n_hidden, n_visible) -> (n_hidden,)."""
    return _RowNormsSq.apply(W)


def contraction(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor, unit: str) -> torch.Tensor:
    """Per-example ``||J_f(x)||_F^2`` of ``f(x) = s(W x + b)`` in closed form, Eq. (1).

    Parameters
    ----------
    x : (B, n_visible) inputs.
    W : (n_hidden, n_visible) encoder weight.
    b : (n_hidden,) encoder bias.
    unit : hidden unit name (``pretrain.units.UNITS``).

    Returns
    -------
    (B,) squared Frobenius norms, differentiable with respect to ``W``, ``b`` and ``x``.

    References
    ----------
    Rifai et al., ICML 2011, Eq. (7) for the sigmoid; pylearn2's ``dot(sqr(act_grad), sqr(W).sum(0))``.
    """
    check_unit(unit, "hidden unit")
    return contraction_at(_act_grad(x, W, b, unit), W)


def contraction_at(act_grad: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """Eq. (1) from the slopes ``act_grad = s'(a)`` (B, n_hidden) at hand: (B,).

    The same number as :func:`contraction` of the ``x`` that gave ``a = W x + b``.
    """
    return (act_grad * act_grad) @ _row_norms_sq(W)  # Eq. (1)


def contraction_autograd(x: torch.Tensor,
                         encode: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Per-example ``||J_f(x)||_F^2`` of any encoder, through autograd, Eq. (1) by definition.

    One reverse pass per code unit j gives row j of every example's Jacobian (the encoder must
    treat examples independently: no batch statistics). The graph is kept
    (``create_graph=True``), so the result trains the encoder's parameters. This is the oracle
    for :func:`contraction` and the penalty for encoders that are not ``s(W x + b)``.

    Parameters
    ----------
    x : (B, n_visible) inputs.
    encode : callable (B, n_visible) -> (B, n_hidden).

    Returns
    -------
    (B,) squared Frobenius norms.
    """
    if not x.requires_grad:
        x = x.detach().requires_grad_(True)
    h = encode(x)  # (B, n_hidden)
    total = torch.zeros(x.shape[0], dtype=h.dtype, device=h.device)  # (B,)
    for j in range(h.shape[1]):
        (row,) = torch.autograd.grad(h[:, j].sum(), x, create_graph=True)  # (B, n_visible): dh_j/dx
        total = total + (row * row).sum(dim=1)
    return total


def higher_order(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor, unit: str, *, sigma: float,
                 copies: int, generator: torch.Generator | None) -> torch.Tensor:
    """Per-example Monte-Carlo estimate of ``E ||J_f(x) - J_f(x + eps)||_F^2``, Eqs. (2)-(3).

    Parameters
    ----------
    x : (B, n_visible) inputs (the clean training points).
    W, b, unit : the encoder, as in :func:`contraction`.
    sigma : standard deviation of the Gaussian perturbation eps (>= 0).
    copies : number of perturbed copies of each example averaged (>= 1).
    generator : source of eps, on ``x``'s device (``None``: torch's global generator).

    Returns
    -------
    (B,) estimates; zero for a linear unit, whose Jacobian does not depend on x.

    References
    ----------
    Rifai et al., Higher order contractive auto-encoder, ECML PKDD 2011, section 3.
    """
    check_unit(unit, "hidden unit")
    a = F.linear(x, W, b)  # (B, n_hidden)
    return higher_order_at(a, derivative(unit, a, activation(unit, a)), W, unit, sigma=sigma,
                           copies=copies, generator=generator)


def higher_order_at(a: torch.Tensor, act_grad: torch.Tensor, W: torch.Tensor, unit: str, *,
                    sigma: float, copies: int, generator: torch.Generator | None) -> torch.Tensor:
    """Eqs. (2)-(3) from the pre-activation ``a = W x + b`` (B, n_hidden) and its slopes
    ``act_grad = s'(a)`` at hand: (B,).

    The same number as :func:`higher_order` of that ``x`` with the same generator: eps is the
    same (copies, B, n_visible) standard normal draw, and ``W (x + sigma eps) + b = a + sigma W eps``.
    """
    check_unit(unit, "hidden unit")
    check_positive("sigma", sigma, allow_zero=True)
    check_int("copies", copies, 1)
    if sigma == 0.0:  # x + eps = x: no difference, and no noise drawn
        return torch.zeros(a.shape[:-1], dtype=a.dtype, device=a.device)
    B, n_visible = a.shape[0], W.shape[1]
    eps = torch.randn((int(copies), B, n_visible), generator=generator, dtype=a.dtype,
                      device=a.device)  # (C, B, n_visible), ~ N(0, I); the perturbation is sigma eps
    a_tilde = torch.add(a, F.linear(eps, W), alpha=sigma)  # (C, B, n_hidden): a + sigma W eps, one matmul
    act_grad_tilde = derivative(unit, a_tilde, activation(unit, a_tilde))  # (C, B, n_hidden)
    diff = act_grad - act_grad_tilde  # (C, B, n_hidden): diagonal of J(x) - J(x~), per row
    return (diff * diff).mean(dim=0) @ _row_norms_sq(W)  # Eq. (2) per copy, Eq. (3) mean over copies


def row_norms_sq(W: torch.Tensor) -> torch.Tensor:
    """``n_j = ||W_j||^2`` of each row without a graph: (n_hidden, n_visible) -> (n_hidden,)."""
    return torch.linalg.vector_norm(W, dim=1).square_()  # one pass over W, vectorised


def contraction_gradient(act_grad: torch.Tensor, act_curv: torch.Tensor, norms: torch.Tensor, *,
                         weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``weight * T_1`` (Eq. 1 summed over the batch) and its gradients, Eq. (6).

    Parameters
    ----------
    act_grad, act_curv : (B, n_hidden) ``s'(a)`` and ``s''(a)`` at the pre-activation ``a``.
    norms : (n_hidden,) ``||W_j||^2`` (:func:`row_norms_sq`).
    weight : the factor of the total (lambda / B for a batch mean).

    Returns
    -------
    ``(value, d value/da (B, n_hidden), d value/dn (n_hidden,))``.
    """
    q = torch.linalg.vecdot(act_grad, act_grad, dim=0)  # (n_hidden,): sum_b s'(a_bj)^2
    grad_a = torch.mul(act_grad, act_curv).mul_(norms * (2.0 * weight))  # Eq. (6)
    return weight * (q @ norms), grad_a, weight * q


def higher_order_gradient(a: torch.Tensor, act_grad: torch.Tensor, act_curv: torch.Tensor,
                          u: torch.Tensor, norms: torch.Tensor, unit: str, *, sigma: float,
                          weight: float = 1.0, out: torch.Tensor | None = None, reuse_u: bool = False
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``weight * T_3`` (Eq. 3 summed over the batch, with the copies' draws at hand) and its
    gradients, Eq. (7).

    Parameters
    ----------
    a, act_grad, act_curv : (B, n_hidden) the clean pre-activation ``a = W x + b``, ``s'(a)``, ``s''(a)``.
    u : (C, B, n_hidden) ``W eps_c`` of the C standard normal draws (:func:`higher_order_at`
        draws them): the copies' pre-activations are ``a + sigma u``.
    norms : (n_hidden,) ``||W_j||^2``; unit : the hidden unit; sigma : the std of the perturbation (> 0).
    weight : the factor of the total (gamma / B for a batch mean).
    out : (C, B, n_hidden) where to write ``d value/du`` (default: a new tensor).
    reuse_u : overwrite ``u`` with the copies' pre-activations and units (sigmoid units): two
        (C, B, n_hidden) temporaries fewer, for a caller that needs ``u`` no more.

    Returns
    -------
    ``(value, d value/da (B, n_hidden), d value/du (C, B, n_hidden), d value/dn (n_hidden,))``.
    """
    C = u.shape[0]
    if reuse_u and unit == "sigmoid":  # s' and s'' read h~ alone: a~, h~, then s''(a~) over u
        h_tilde = torch.add(a, u, alpha=sigma, out=u).sigmoid_()
        d_tilde = derivative(unit, h_tilde, h_tilde)  # s'(a~)
        curv_tilde = torch.addcmul(d_tilde, d_tilde, h_tilde, value=-2.0, out=h_tilde)  # s''(a~) = s'(1 - 2h~)
    else:
        a_tilde = torch.add(a, u, alpha=sigma)  # (C, B, n_hidden)
        h_tilde = activation(unit, a_tilde)
        d_tilde = derivative(unit, a_tilde, h_tilde)  # s'(a~)
        curv_tilde = second_derivative(unit, a_tilde, h_tilde, d_tilde)  # s''(a~)
    diff = torch.sub(act_grad, d_tilde, out=d_tilde)  # (C, B, n_hidden): s'(a) - s'(a~), d~ no longer needed
    rows = diff.view(-1, diff.shape[-1])  # (C B, n_hidden)
    q = torch.linalg.vecdot(rows, rows, dim=0)  # (n_hidden,): sum_{c,b} diff^2
    grad_u = torch.mul(diff, curv_tilde, out=out).mul_(norms * (-2.0 * sigma * weight / C))  # Eq. (7)
    grad_a = diff.sum(0).mul_(act_curv).mul_(norms * (2.0 * weight / C))
    grad_a.add_(grad_u.sum(0), alpha=1.0 / sigma)
    return (weight / C) * (q @ norms), grad_a, grad_u, (weight / C) * q


def sparsity_l1(h: torch.Tensor) -> torch.Tensor:
    """Per-example ``sum_j |h_j|``, Eq. (4). ``h``: (B, n_hidden) -> (B,)."""
    return h.abs().sum(dim=1)  # Eq. (4)


def sparsity_kl(h: torch.Tensor, rho: float) -> torch.Tensor:
    """``sum_j KL(rho || rho_hat_j)`` between Bernoulli rates, Eq. (5); a scalar for the batch.

    Parameters
    ----------
    h : (B, n_hidden) codes in [0, 1], read as firing probabilities: sigmoid units only (the
        autoencoder refuses this penalty for other hidden units).
    rho : target mean activation, in the open interval (0, 1).

    Returns
    -------
    scalar tensor.

    Notes
    -----
    ``rho_hat`` is clamped to ``[KL_EPS, 1 - KL_EPS]``: a unit silent (or saturated) over a whole
    batch gives ``log(rho / 0) = inf`` and an infinite gradient that would turn every weight to
    NaN; the clamp keeps the penalty finite at the price of no gradient beyond the clamp.
    """
    if not 0.0 < rho < 1.0:
        raise ValueError(f"sparsity target rho must be in (0, 1), got {rho!r}")
    rho_hat = h.mean(dim=0).clamp(KL_EPS, 1.0 - KL_EPS)  # (n_hidden,)
    kl = rho * torch.log(rho / rho_hat) + (1.0 - rho) * torch.log((1.0 - rho) / (1.0 - rho_hat))
    return kl.sum()  # Eq. (5)


def sparsity_kl_gradient(h: torch.Tensor, rho: float) -> torch.Tensor:
    """Eq. (8): the derivative of :func:`sparsity_kl` with respect to each ``rho_hat_j``, zero
    where the clamp holds it; (B, n_hidden) -> (n_hidden,). Times ``1 / B`` it is the gradient
    with respect to each ``h_bj``."""
    rho_hat = h.mean(dim=0)  # (n_hidden,)
    inside = (rho_hat >= KL_EPS) & (rho_hat <= 1.0 - KL_EPS)  # where the clamp passes the gradient
    grad = (1.0 - rho) / (1.0 - rho_hat) - rho / rho_hat  # Eq. (8)
    return torch.where(inside, grad, torch.zeros_like(grad))
