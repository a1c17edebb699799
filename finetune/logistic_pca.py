"""Logistic PCA, the baseline of Hinton & Salakhutdinov's Fig. 2: a low-rank model of the logits
of data X (N, d) in [0, 1], with codes U (N, k), loadings V (d, k) and offsets mu (d,):

    (1) Theta = U V^T + 1 mu^T                                                       (N, d)
    (2) P(x_ni = 1) = sigmoid(Theta_ni)
    (3) L = -1/N sum_{n,i} [x_ni log sigmoid(Theta_ni) + (1 - x_ni) log sigmoid(-Theta_ni)]
          =  1/N sum_{n,i} [softplus(Theta_ni) - x_ni Theta_ni]         (cross-entropy to soft targets)
    (4) J = L + l2/2 (||U||_F^2 / N + ||V||_F^2)

The penalty fixes the scale ambiguity U V^T = (U A)(V A^-T)^T and keeps U, V finite where L alone
sends them off (a row the codes separate); mu is free (a pixel always 0 takes a large negative
one). N J is a sum of convex problems, one per row of X, or for fixed U one per column:

    (5) N J = sum_n h(u_n; B = V, b = mu, y = x_n, c = l2 1) + N l2/2 ||V||_F^2
    (6) N J = sum_i h((v_i, mu_i); B = [U 1], b = 0, y = x_.i, c = (N l2 1, 0)) + l2/2 ||U||_F^2
    (7) h(w) = sum_j [softplus(t_j) - y_j t_j] + 1/2 sum_q c_q w_q^2,   t = B w + b,   s = sigmoid(t)
        grad h = B^T (s - y) + c w,   Hess h = B^T diag(s (1 - s)) B + diag(c)
    (8) w <- w - a Hess^-1 grad,  a = 1, 1/2, ... until h falls by a delta / 4,
        delta = grad^T Hess^-1 grad           (Newton with Armijo halving; delta / 2 ~ h - min h)

A sweep of the fit is one step (8) on every problem (5), then on every problem (6), each never
raising J; the sweeps stop when one lowers J by less than tol J, and (5) is then solved, as
``transform`` solves it for new rows from u = 0. They start from PCA of the centred data,
X ~ 1 m^T + Z W (scores Z (N, k) of variances s (k,), components W (k, d)), scaled from pixels
to logits by 4 = 1 / sigmoid'(0) and split evenly between U and V:

    (9) U_0 = 2 Z diag(s)^(-1/4),   V_0 = 2 W^T diag(s)^(1/4),   mu_0 = logit(clip(m, 0.001, 0.999))

References
----------
Collins, Dasgupta & Schapire, A generalization of principal components analysis to the
exponential family, NIPS 2001.
Schein, Saul & Ungar, A generalized linear model for principal component analysis of binary
data, AISTATS 2003.
Hinton & Salakhutdinov, Reducing the dimensionality of data with neural networks, Science 2006.
"""
from __future__ import annotations

import numbers

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.decomposition import PCA
from sklearn.utils.validation import check_is_fitted

from pretrain.checks import check_float, check_int


def _check_data(X, width: int | None = None) -> np.ndarray:
    """``X`` (n, d) in [0, 1] as a new float32 (if given so) or float64 array."""
    X = np.asarray(X)
    if X.dtype.kind not in "biuf":
        raise ValueError(f"X must hold numbers, got dtype {X.dtype}: convert it with np.asarray(X, float)")
    if X.ndim != 2 or X.size == 0:
        raise ValueError(f"X must be a non-empty 2-D array (n_samples, n_features), got shape {X.shape}: "
                         f"reshape a single sample with X.reshape(1, -1)")
    if not np.isfinite(X).all():
        raise ValueError("X contains NaN or infinity: impute or drop those entries first")
    if X.min() < 0 or X.max() > 1:
        raise ValueError(f"X must lie in [0, 1], got values in [{X.min()}, {X.max()}]: rescale it, "
                         f"e.g. X / 255 for 8-bit images")
    if width is not None and X.shape[1] != width:
        raise ValueError(f"X has {X.shape[1]} features, but the model was fitted on {width}: pass "
                         f"data with the training columns")
    return np.array(X, dtype=np.float32 if X.dtype == np.float32 else np.float64)


def cross_entropy(t: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """Eq. (3) summed over each row, not averaged: (M,) from logits t and targets Y (M, m)."""
    # below -80 softplus is under 2e-35 and its exp a slow subnormal; above 40 it is t itself
    return F.softplus(t.clamp(min=-80.0), threshold=40.0).addcmul_(Y, t, value=-1.0).sum(1)


def objective(W, B, b, Y, c) -> torch.Tensor:
    """Eq. (7), h (M,), at rows W (M, q) with targets Y (M, m); B (m, q), b (m,) or 0-d, c (q,)."""
    return cross_entropy(torch.addmm(b, W, B.T), Y) + 0.5 * (W.square() * c).sum(1)


def newton_terms(W, B, b, Y, c) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eq. (7) at rows W (M, q): h (M,), grad h (M, q) and Hess h (M, q, q)."""
    t, q = torch.addmm(b, W, B.T), B.shape[1]                                           # (M, m)
    h = cross_entropy(t, Y) + 0.5 * (W.square() * c).sum(1)
    s = torch.sigmoid(t.clamp_(min=-80.0))                           # clamped: s (1 - s) not subnormal
    BB = (B[:, :, None] * B[:, None, :]).reshape(len(B), q * q)                          # (m, q^2)
    hess = ((s * (1 - s)) @ BB).view(len(W), q, q) + torch.diag(c)
    return h, torch.addcmul((s - Y) @ B, W, c), hess


def newton(W, B, b, Y, c, max_iter: int, tol: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. (8) from W (M, q), row by row, until each has delta / 2 <= tol mean(h) (the total excess
    is then about tol times the total) or no lower h at float precision; returns W (M, q), h (M,)."""
    W, h, rows = W.clone(), W.new_empty(len(W)), torch.arange(len(W))            # rows still moving

    def take(T):  # no copy of Y while every row moves
        return T if len(rows) == len(W) else T[rows]

    for _ in range(max_iter):
        h[rows], grad, hess = newton_terms(take(W), B, b, take(Y), c)
        step = torch.cholesky_solve(grad[:, :, None], torch.linalg.cholesky_ex(hess)[0])[:, :, 0]
        delta = (grad * step).sum(1)                                                     # Eq. (8)
        keep = delta > 2 * tol * h.mean()                                                # False for NaN
        rows, step, delta = rows[keep], step[keep], delta[keep]
        if len(rows) == 0:
            break
        a, Wr, Yr = torch.ones_like(delta), take(W), take(Y)
        h_new = objective(Wr - step, B, b, Yr, c)
        bad = ~(h_new <= h[rows] - a * delta / 4)                                        # Eq. (8)
        for _ in range(30):  # only the rows that fail are evaluated again
            if not bad.any():
                break
            a = torch.where(bad, a / 2, a)
            h_new[bad] = objective(Wr[bad] - a[bad, None] * step[bad], B, b, Yr[bad], c)
            bad = ~(h_new <= h[rows] - a * delta / 4)
        rows, step, a, h_new = rows[~bad], step[~bad], a[~bad], h_new[~bad]
        W[rows] -= a[:, None] * step
        h[rows] = h_new
    return W, h


class LogisticPCA(TransformerMixin, BaseEstimator):
    """Logistic PCA, Eqs. (1)-(4), fitted by alternating Newton steps, Eqs. (5)-(8).

    Parameters
    ----------
    n_components : k, from 1 to min(n_samples, n_features).
    max_iter : the most sweeps of the fit, and the most Newton steps of a code.
    tol : the fit stops when a sweep lowers J by less than ``tol`` J, the codes when Eq. (8)'s
        delta / 2 puts them within ``tol`` times their mean h of the minimum of Eq. (5).
    l2 : the weight of the penalty in Eq. (4), > 0.
    random_state : seeds the PCA of Eq. (9) when scikit-learn picks its randomized solver.

    Attributes
    ----------
    components_, offset_ : V^T (k, d) (not orthonormal, unlike PCA's components) and mu (d,).
    n_iter_, loss_, n_features_in_ : the sweeps of the fit, J (Eq. 4) at its end, and d.

    A float32 X is fitted in float32 (1.6 times as fast, to the same J), and so are its model's codes.
    """

    def __init__(self, n_components: int = 2, *, max_iter: int = 30, tol: float = 1e-4,
                 l2: float = 1e-4, random_state=None):
        self.n_components = n_components
        self.max_iter = max_iter
        self.tol = tol
        self.l2 = l2
        self.random_state = random_state

    def _check_params(self) -> tuple[int, float, float]:
        return (check_int("max_iter", self.max_iter, 1), check_float("tol", self.tol, low=0, low_open=True),
                check_float("l2", self.l2, low=0, low_open=True))

    def fit(self, X, y=None):
        """Fit Eq. (4) to ``X`` (N, d) in [0, 1]; ``y`` is ignored."""
        self.fit_transform(X)
        return self

    def fit_transform(self, X, y=None) -> np.ndarray:
        """Fit Eq. (4) to ``X`` (N, d) in [0, 1]; returns its codes U (N, k)."""
        X = _check_data(X)
        max_iter, tol, l2 = self._check_params()
        (N, d), k = X.shape, self.n_components
        if N < 2:
            raise ValueError(f"X has {N} row, and a fit needs at least 2: pass more data")
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k <= min(N, d):
            raise ValueError(f"n_components must be an integer from 1 to min(n_samples, n_features) = "
                             f"{min(N, d)}, got {k!r}: choose one in that range or pass more data")
        pca = PCA(k, random_state=self.random_state).fit(X)
        quarter = np.maximum(pca.explained_variance_, 1e-12) ** 0.25                     # s^(1/4) (k,)
        m = np.clip(pca.mean_, 1e-3, 1 - 1e-3)
        Xt = torch.from_numpy(X)
        Xc, dt = torch.from_numpy(X.T.copy()), Xt.dtype                                  # X^T (d, N)
        U, Vm = (torch.as_tensor(a, dtype=dt) for a in (                                 # Eq. (9)
            2 * pca.transform(X) / quarter, np.c_[2 * pca.components_.T * quarter, np.log(m / (1 - m))]))
        zero, one = torch.zeros((), dtype=dt), torch.ones(N, 1, dtype=dt)
        c_row = torch.full((k,), l2, dtype=dt)                                           # c of Eq. (5)
        c_col = torch.cat([c_row * N, zero[None]])                                       # c of Eq. (6)
        self.loss_, self.n_iter_ = np.inf, 0
        while self.n_iter_ < max_iter:
            U = newton(U, Vm[:, :k], Vm[:, k], Xt, c_row, 1, tol)[0]                    # Eq. (5)
            Vm, h = newton(Vm, torch.cat([U, one], 1), zero, Xc, c_col, 1, tol)          # Eq. (6)
            before, self.n_iter_ = self.loss_, self.n_iter_ + 1
            self.loss_ = float(h.sum() + l2 / 2 * U.square().sum()) / N                  # Eq. (6)
            if before - self.loss_ < tol * self.loss_:
                break
        U, h = newton(U, Vm[:, :k], Vm[:, k], Xt, c_row, max_iter, tol)                  # Eq. (5) solved
        self.loss_ = float(h.sum() + N * l2 / 2 * Vm[:, :k].square().sum()) / N          # Eq. (5)
        self.components_, self.offset_ = Vm[:, :k].T.numpy().copy(), Vm[:, k].numpy().copy()
        self.n_features_in_ = d
        return U.numpy()

    def _model(self) -> tuple[torch.Tensor, torch.Tensor]:
        check_is_fitted(self, "components_")  # NotFittedError, a ValueError, before fit
        return torch.from_numpy(self.components_.T), torch.from_numpy(self.offset_)      # V (d, k), mu (d,)

    def transform(self, X) -> np.ndarray:
        """The codes U (M, k) of ``X`` (M, d) in [0, 1]: Eq. (5) solved from u = 0."""
        (V, mu), (max_iter, tol, l2) = self._model(), self._check_params()
        X = torch.from_numpy(_check_data(X, len(V)).astype(self.components_.dtype, copy=False))
        c, U = torch.full((V.shape[1],), l2, dtype=V.dtype), torch.zeros(len(X), V.shape[1], dtype=V.dtype)
        return newton(U, V, mu, X, c, max_iter, tol)[0].numpy()

    def inverse_transform(self, Z) -> np.ndarray:
        """The probabilities sigmoid(Z V^T + mu) (M, d) of codes ``Z`` (M, k), Eqs. (1)-(2)."""
        (V, mu), Z = self._model(), np.asarray(Z, dtype=self.components_.dtype)
        if Z.ndim != 2 or Z.shape[1] != V.shape[1] or not np.isfinite(Z).all():
            raise ValueError(f"Z must be a finite 2-D array of codes (n_samples, {V.shape[1]}), got shape "
                             f"{Z.shape}: pass the output of transform")
        return torch.sigmoid(torch.addmm(mu, torch.tensor(Z), V.T)).numpy()

    def score(self, X, y=None) -> float:
        """Minus Eq. (3) at the codes of ``X`` (M, d): the mean log-likelihood of a row."""
        (V, mu), U = self._model(), torch.from_numpy(self.transform(X))
        X = torch.from_numpy(_check_data(X).astype(self.components_.dtype, copy=False))
        return -float(cross_entropy(torch.addmm(mu, U, V.T), X).mean())                  # Eq. (3)
