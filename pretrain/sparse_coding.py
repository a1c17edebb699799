"""Sparse coding: the LASSO codes of a batch of inputs in a dictionary, by FISTA.

For inputs x (B, n_visible), a dictionary D (n_visible, n_hidden) whose columns are the atoms,
and codes z (B, n_hidden):

    (1) E(z) = ||x - D z||^2 + lambda ||z||_1                          the sparse-coding energy
    (2) z* = argmin_z E(z)                                            the codes
    (3) grad f(z) = 2 D^T (D z - x) = 2 (G z - D^T x),  G = D^T D      f = ||x - D z||^2
    (4) L = 2 lambda_max(G)                                           Lipschitz constant of grad f
    (5) shrink(v, t) = sign(v) max(|v| - t, 0)                         proximal map of t ||.||_1
    (6) FISTA (Beck & Teboulle 2009), from z_0, with y_1 = z_0, t_1 = 1, k = 1, 2, ...:
            z_k = shrink(y_k - grad f(y_k) / L, lambda / L)
            t_{k+1} = (1 + sqrt(1 + 4 t_k^2)) / 2
            y_{k+1} = z_k + ((t_k - 1) / t_{k+1}) (z_k - z_{k-1})
    (7) stop when ||z_k - z_{k-1}|| <= tol ||z_k|| for every row, or after max_iter iterations
    (8) z* = 0 exactly when ||2 D^T x||_inf <= lambda                 (0 is in the subdifferential)

The whole batch runs at once, on the device D is on: each iteration of (6) is one
(B, n_hidden) x (n_hidden, n_hidden) product with the Gram matrix G, formed once per call, so
the dictionary's n_visible enters only through G and D^T x. lambda_max(G) comes from power
iteration (Eq. 9), from a fixed seeded start so that the same D gives the same L. Power
iteration's Rayleigh quotients rise to lambda_max from below; a step 1/L with L a little too
small can make (6) diverge, so L is taken 1% above the estimate, which costs FISTA at most 1%
of its step. Convergence is checked every ``CHECK_EVERY`` iterations, each check one read
from the device.

    (9) v_{i+1} = G v_i / ||G v_i||,  mu_i = v_i^T G v_i;  stop when |mu_i - mu_{i-1}| <= tol mu_i

With lambda = 0, (2) is least squares and (6) converges to its solution (the one nearest z_0
when D has dependent columns).

References
----------
Beck & Teboulle, A fast iterative shrinkage-thresholding algorithm for linear inverse
problems, SIAM J. Imaging Sciences 2(1), 2009.
Kavukcuoglu, Ranzato & LeCun, Fast inference in sparse coding algorithms with applications to
object recognition, CBLL-TR-2008-12-01 (arXiv 1010.3467), 2008.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pretrain.checks import check_float, check_int

#: iterations between two convergence checks of Eqs. (7) and (9) (each a device-to-host read)
CHECK_EVERY = 5
#: L of Eq. (4) is this factor above the power-iteration estimate (a lower bound)
LIPSCHITZ_MARGIN = 1.01


def energy(x: torch.Tensor, D: torch.Tensor, z: torch.Tensor, lam: float) -> torch.Tensor:
    """Eq. (1) per row: x (B, n_visible), D (n_visible, n_hidden), z (B, n_hidden) -> (B,)."""
    r = z @ D.T  # (B, n_visible): D z for every row
    return ((x - r) ** 2).sum(dim=1) + lam * z.abs().sum(dim=1)  # Eq. (1)


@torch.no_grad()
def largest_eigenvalue(G: torch.Tensor, *, tol: float = 1e-6, max_iter: int = 500) -> torch.Tensor:
    """lambda_max of a symmetric positive semi-definite G (n, n) by power iteration, Eq. (9).

    Returns a 0-d tensor on G's device (a lower bound of lambda_max, within ``tol`` when it
    converged). The start vector is seeded, so the same G gives the same estimate.
    """
    g = torch.Generator(device=G.device).manual_seed(0)
    v = torch.randn(G.shape[0], generator=g, device=G.device, dtype=G.dtype)
    v = v / v.norm()
    mu = G.new_zeros(())
    for i in range(1, max_iter + 1):
        w = G @ v
        mu_prev, mu = mu, v @ w  # Rayleigh quotient of the unit v, Eq. (9)
        if i % CHECK_EVERY == 0 and bool((mu - mu_prev).abs() <= tol * mu):
            break
        v = w / w.norm().clamp_min(torch.finfo(w.dtype).tiny)  # G v = 0: v = 0 and mu stays 0
    return mu


def check_solver(lam: float, tol: float, max_iter: int,
                 names: tuple[str, str, str] = ("lam", "tol", "max_iter")) -> None:
    """Raise the ValueError naming the first bad setting of ``fista``, if any; ``names`` are
    the names the caller knows the three by (a layer's hyperparameters)."""
    check_float(names[0], lam, low=0, meaning="the weight lambda of the codes' L1 norm")
    check_float(names[1], tol, low=0, meaning="the relative change of the codes that stops FISTA")
    check_int(names[2], max_iter, 1)


@torch.no_grad()
def fista(x: torch.Tensor, D: torch.Tensor, lam: float, *, z0: torch.Tensor | None = None,
          tol: float = 1e-4, max_iter: int = 100) -> tuple[torch.Tensor, int]:
    """The codes z* of Eq. (2) for every row of ``x``, by FISTA, Eq. (6).

    Parameters
    ----------
    x : (B, n_visible) inputs.
    D : (n_visible, n_hidden) dictionary, one atom per column (any norm; unit for PSD).
    lam : lambda >= 0, the weight of the L1 norm.
    z0 : (B, n_hidden) start (a warm start, e.g. a predictor's codes); zeros by default.
    tol : the relative change of Eq. (7) that stops the iterations.
    max_iter : at most this many iterations of Eq. (6).

    Returns
    -------
    z : (B, n_hidden) the codes, detached, on D's device.
    iterations : the iterations run.

    References
    ----------
    Beck & Teboulle, SIAM J. Imaging Sciences 2009.
    """
    check_solver(lam, tol, max_iter)
    if x.ndim != 2 or D.ndim != 2 or x.shape[1] != D.shape[0]:
        raise ValueError(f"x must have shape (B, {D.shape[0]}) to match the dictionary D "
                         f"{tuple(D.shape)}, got {tuple(x.shape)}")
    B, n_hidden = x.shape[0], D.shape[1]
    z = x.new_zeros(B, n_hidden) if z0 is None else z0.detach().to(dtype=x.dtype).clone()
    if z.shape != (B, n_hidden):
        raise ValueError(f"z0 must have shape ({B}, {n_hidden}), got {tuple(z.shape)}")
    if B == 0:
        return z, 0
    G = D.T @ D  # (n_hidden, n_hidden), Eq. (3)
    L = 2.0 * LIPSCHITZ_MARGIN * float(largest_eigenvalue(G))  # Eq. (4)
    if L == 0.0:  # an all-zero dictionary: every code is 0
        return torch.zeros_like(z), 0
    step, threshold = 2.0 / L, lam / L
    c = step * (x @ D)  # (B, n_hidden): the constant part of -grad f / L, (2 / L) D^T x
    y, t = z, 1.0
    for k in range(1, max_iter + 1):
        v = torch.addmm(y + c, y, G, alpha=-step)  # y - grad f(y) / L, Eq. (3)
        z_prev, z = z, F.softshrink(v, threshold)  # Eq. (5)-(6)
        t_next = (1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0
        y = torch.lerp(z, z_prev, -(t - 1.0) / t_next)  # z + ((t - 1) / t_next) (z - z_prev), Eq. (6)
        t = t_next
        if k % CHECK_EVERY == 0 or k == max_iter:
            change = (z - z_prev).norm(dim=1)  # (B,)
            if bool((change <= tol * z.norm(dim=1)).all()):  # Eq. (7)
                return z, k
    return z, max_iter
