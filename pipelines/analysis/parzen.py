"""Parzen-window log-likelihood of a generative model's samples (Breuleux, Bengio & Vincent 2011).

A Gaussian kernel density is fitted on n samples ``s_i`` (d dimensions) of a model, and
held-out data ``x`` is scored under it:

    (1) log p_sigma(x) = logsumexp_i( -||x - s_i||^2 / (2 sigma^2) ) - log n - d/2 log(2 pi sigma^2)
    (2) ||x - s||^2 = ||x||^2 - 2 x.s + ||s||^2                      (one matmul per block)
    (3) sigma* = argmax_sigma mean_{x in valid} log p_sigma(x)          (chosen on validation)
    (4) report mean_{x in test} log p_sigma*(x) +- std / sqrt(m_test)   (standard error)

Eq. (1) is computed in blocks of rows of X and of samples, with a running logsumexp over the
sample blocks, so memory stays at two (batch_size, sample_batch) blocks. The matmul of Eq. (2)
and the per-block logsumexp run in the samples' dtype (float32 for float32 samples, after both
sets are centred on the samples' mean to limit cancellation: the rounding error of a squared
distance is about 1e-4, i.e. below 0.01 nats at sigma = 0.1); the running logsumexp across
blocks is accumulated in float64. Pass ``dtype=torch.float64`` for a float64 computation.

Published figures on MNIST test, 10000 samples, sigma chosen on validation (Bengio, Mesnil,
Dauphin & Rifai 2013, as tabled by Goodfellow et al. 2014): deep belief net 138 +- 2, stacked
contractive autoencoder 121 +- 1.6 (nats; higher is better). The estimate is biased and
high-variance in high dimension (Theis, van den Oord & Bethge 2016): compare models only under
the same protocol.

References
----------
Breuleux, Bengio & Vincent, Quickly generating representative samples from an RBM-derived
process, Neural Comp. 2011.
Bengio, Mesnil, Dauphin & Rifai, Better mixing via deep representations, ICML 2013.
Goodfellow et al., Generative adversarial nets, NIPS 2014.
Theis, van den Oord & Bethge, A note on the evaluation of generative models, ICLR 2016.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

#: the published Parzen log-likelihoods on MNIST (nats): (mean, standard error)
PUBLISHED_MNIST = {"DBN": (138.0, 2.0), "stacked CAE": (121.0, 1.6)}
#: the sigma grid of Goodfellow et al.'s evaluation script: 10 values log-spaced in [0.1, 1]
DEFAULT_SIGMAS = tuple(float(s) for s in np.logspace(-1, 0, 10))


def _as_tensor(a, dtype: torch.dtype | None, what: str) -> torch.Tensor:
    t = a.detach() if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a))
    if not t.is_floating_point():
        t = t.to(torch.float32)
    if dtype is not None:
        t = t.to(dtype)
    if t.ndim != 2 or len(t) == 0:
        raise ValueError(f"{what} must be a non-empty 2-D array (n, d), got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{what} has NaN or infinite values")
    return t


def _check_sigma(sigma: float) -> float:
    if not (sigma > 0 and math.isfinite(sigma)):
        raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")
    return float(sigma)


def _logsumexp_(a: torch.Tensor) -> torch.Tensor:
    """``logsumexp(a, dim=1)`` in float64, overwriting ``a`` (B, n).

    Terms more than 80 below the row's maximum are raised to ``e^-80`` before ``exp``: they
    weigh less than ``n e^-80`` against the maximum's 1 (nothing, for any n), and it keeps
    float32 ``exp`` out of subnormal numbers, which ran three times slower.
    """
    m = a.amax(dim=1, keepdim=True)  # (B, 1)
    total = a.sub_(m).clamp_min_(-80.0).exp_().sum(dim=1, dtype=torch.float64)  # (B,)
    return total.log_() + m[:, 0].double()


def parzen_log_likelihood(samples, X, sigma: float, batch_size: int = 1000,
                          sample_batch: int = 10000, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Eq. (1) for every row of X under the Parzen window of ``samples``.

    Parameters
    ----------
    samples : (n, d) model samples (the kernel centres).
    X : (m, d) points to score.
    sigma : the kernel's standard deviation.
    batch_size : rows of X per block; sample_batch : samples per block.
    dtype : dtype of the distance matmul; None keeps the samples' (float32 for float32 inputs).

    Returns
    -------
    (m,) float64 log-densities.
    """
    return parzen_log_likelihoods(samples, X, [sigma], batch_size, sample_batch, dtype)[0]


def parzen_log_likelihoods(samples, X, sigmas: Sequence[float], batch_size: int = 1000,
                           sample_batch: int = 10000, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Eq. (1) for every row of X at each kernel width of ``sigmas``: (len(sigmas), m) float64.

    The squared distances of Eq. (2) are computed once per block and shared by all widths: the
    matmul is half the cost of one width on MNIST, so a 10-width grid (Eq. 3) runs about twice
    as fast as 10 calls of :func:`parzen_log_likelihood`.
    """
    sigmas = [_check_sigma(s) for s in sigmas]
    if not sigmas:
        raise ValueError("sigmas is empty: give at least one kernel width")
    for name, v in (("batch_size", batch_size), ("sample_batch", sample_batch)):
        if isinstance(v, bool) or int(v) != v or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    S = _as_tensor(samples, dtype, "samples")
    X = _as_tensor(X, S.dtype, "X")
    n, d = S.shape
    if X.shape[1] != d:
        raise ValueError(f"X has {X.shape[1]} columns but the samples have {d}")
    # translating both sets leaves the distances unchanged and shrinks the norms that Eq. (2)
    # subtracts from each other: less cancellation in float32
    mu = S.double().mean(0).to(S.dtype)  # (d,)
    S, X = S - mu, X - mu
    s_sq = (S * S).sum(1)  # (n,)
    out = torch.empty(len(sigmas), len(X), dtype=torch.float64)
    for i in range(0, len(X), batch_size):
        x = X[i:i + batch_size]  # (bx, d)
        x_sq = (x * x).sum(1, keepdim=True)  # (bx, 1)
        acc = torch.full((len(sigmas), len(x)), -math.inf, dtype=torch.float64)
        for j in range(0, n, sample_batch):
            # Eq. (2) on one (bx, bs) block: ||s||^2 - 2 x.s, + ||x||^2, >= 0
            d2 = torch.addmm(s_sq[j:j + sample_batch], x, S[j:j + sample_batch].T, alpha=-2.0)
            d2.add_(x_sq).clamp_min_(0.0)
            a = torch.empty_like(d2)  # reused by every width: the exps overwrite it
            for k, sigma in enumerate(sigmas):
                torch.mul(d2, -0.5 / sigma**2, out=a)
                acc[k] = torch.logaddexp(acc[k], _logsumexp_(a))  # float64 running logsumexp
        for k, sigma in enumerate(sigmas):
            const = -math.log(n) - 0.5 * d * math.log(2 * math.pi * sigma**2)  # Eq. (1)
            out[k, i:i + batch_size] = acc[k] + const
    return out


def select_sigma(samples, X_valid, sigmas: Sequence[float] = DEFAULT_SIGMAS, *, batch_size: int = 1000,
                 dtype: torch.dtype | None = None) -> tuple[float, dict[float, float]]:
    """Eq. (3): the sigma of ``sigmas`` with the highest mean validation log-likelihood.

    Returns
    -------
    ``(sigma, {sigma: mean log-likelihood})``.
    """
    sigmas = [float(s) for s in sigmas]
    ll = parzen_log_likelihoods(samples, X_valid, sigmas, batch_size, dtype=dtype)  # (k, m_valid)
    scores = dict(zip(sigmas, ll.mean(1).tolist()))
    return max(scores, key=scores.get), scores  # Eq. (3)


def parzen_estimate(samples, X_valid, X_test, sigmas: Sequence[float] = DEFAULT_SIGMAS, *,
                    batch_size: int = 1000, dtype: torch.dtype | None = None) -> tuple[float, float, float]:
    """Eqs. (3)-(4): sigma chosen on ``X_valid``, then the test mean and its standard error.

    Returns
    -------
    ``(mean, standard error, sigma)`` of the test log-likelihood, in nats.
    """
    sigma, _ = select_sigma(samples, X_valid, sigmas, batch_size=batch_size, dtype=dtype)
    ll = parzen_log_likelihood(samples, X_test, sigma, batch_size, dtype=dtype)  # (m_test,)
    stderr = float(ll.std()) / math.sqrt(len(ll)) if len(ll) > 1 else float("nan")  # Eq. (4)
    return float(ll.mean()), stderr, sigma
