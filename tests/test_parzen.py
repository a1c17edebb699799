"""Parzen-window log-likelihood: exact against a naive double loop, close to the true mean
log-density of a Gaussian, float32 blocks against float64, sigma selection, speed."""
import math
import time

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from pipelines.analysis.parzen import (
    DEFAULT_SIGMAS,
    PUBLISHED_MNIST,
    parzen_estimate,
    parzen_log_likelihood,
    parzen_log_likelihoods,
    select_sigma,
)


def naive(samples, X, sigma):
    """Eq. (1) with two plain loops, in float64."""
    n, d = samples.shape
    out = []
    for x in X:
        terms = [-float(((x - s) ** 2).sum()) / (2 * sigma**2) for s in samples]
        out.append(logsumexp(terms) - math.log(n) - d / 2 * math.log(2 * math.pi * sigma**2))
    return np.array(out)


def test_matches_a_naive_double_loop_with_any_blocking():
    rng = np.random.default_rng(0)
    S, X = rng.normal(size=(7, 3)) + 5.0, rng.normal(size=(5, 3)) + 5.0  # offset: the centring matters
    for sigma in (0.3, 1.0, 4.0):
        want = naive(S, X, sigma)
        for batch_size, sample_batch in ((1000, 10000), (2, 3), (1, 1)):
            got = parzen_log_likelihood(S, X, sigma, batch_size, sample_batch).numpy()
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)


def test_a_grid_of_widths_from_shared_distances_matches_the_naive_loop_per_width():
    """One distance block serves every sigma: each row of the grid is Eq. (1) at its own width,
    with any blocking, and select_sigma's scores are those rows' means."""
    rng = np.random.default_rng(3)
    S, X = rng.normal(size=(9, 4)) + 3.0, rng.normal(size=(6, 4)) + 3.0
    sigmas = (0.2, 0.7, 2.5)
    for batch_size, sample_batch in ((1000, 10000), (4, 2), (1, 1)):
        got = parzen_log_likelihoods(S, X, sigmas, batch_size, sample_batch).numpy()
        assert got.shape == (3, 6)
        for k, sigma in enumerate(sigmas):
            np.testing.assert_allclose(got[k], naive(S, X, sigma), rtol=0, atol=1e-10)
    # the widths differ by far more than the tolerance: a row computed at the wrong width fails
    assert np.abs(naive(S, X, 0.2) - naive(S, X, 0.7)).min() > 1.0
    best, scores = select_sigma(S, X, sigmas)
    assert scores == pytest.approx({s: naive(S, X, s).mean() for s in sigmas}, abs=1e-10)
    assert best == max(scores, key=scores.get)


def test_far_points_do_not_underflow_to_minus_infinity():
    """A naive exp would give log(0) = -inf 50 sigmas away; the logsumexp keeps the exact value."""
    S = np.zeros((3, 2))
    X = np.array([[50.0, 0.0]])
    got = parzen_log_likelihood(S, X, 1.0).item()
    assert got == pytest.approx(-1250.0 - math.log(2 * math.pi), abs=1e-9)


def test_estimate_is_close_to_the_true_mean_log_density_of_a_gaussian():
    """10000 samples of N(mu, Sigma) in 2-D: the Parzen estimate on 1000 held-out points is
    within 0.05 nats of their true mean log-density (its bias at the selected sigma ~ 0.2 is
    about 0.01 here; the same test points are used on both sides, so their sampling noise
    cancels)."""
    rng = np.random.default_rng(1)
    mu, cov = np.array([1.0, -2.0]), np.array([[1.0, 0.6], [0.6, 0.8]])
    S = rng.multivariate_normal(mu, cov, 10000)
    X_valid = rng.multivariate_normal(mu, cov, 500)
    X_test = rng.multivariate_normal(mu, cov, 1000)
    truth = multivariate_normal(mu, cov).logpdf(X_test).mean()
    sigmas = np.logspace(-2, 0, 9)
    sigma, scores = select_sigma(S, X_valid, sigmas)
    assert sigmas[0] < sigma < sigmas[-1]  # an interior optimum, not an edge of the grid
    # a too-narrow window overfits the samples, a too-wide one blurs: both score worse
    assert scores[sigmas[0]] < scores[sigma] - 0.3 and scores[sigmas[-1]] < scores[sigma] - 0.2
    mean, stderr, chosen = parzen_estimate(S, X_valid, X_test, [sigma])
    assert chosen == sigma
    assert abs(mean - truth) < 0.05, (mean, truth)
    assert stderr == pytest.approx(parzen_log_likelihood(S, X_test, sigma).numpy().std(ddof=1)
                                   / math.sqrt(1000), rel=1e-9)


def test_float32_blocks_agree_with_float64_on_image_like_data():
    rng = np.random.default_rng(2)
    S = (rng.random((3000, 784)) < 0.15).astype(np.float32) * rng.random((3000, 784), dtype=np.float32)
    X = S[:200] + 0.05 * rng.standard_normal((200, 784)).astype(np.float32)
    for sigma in (0.1, 0.3):
        a = parzen_log_likelihood(S, X, sigma)
        b = parzen_log_likelihood(S, X, sigma, dtype=torch.float64)
        assert a.dtype == torch.float64
        # squared distances ~ 100 with float32 rounding ~1e-4, divided by 2 sigma^2 = 0.02
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=0.02)


def test_bad_inputs_are_refused():
    S = np.zeros((3, 2))
    with pytest.raises(ValueError, match="sigma"):
        parzen_log_likelihood(S, S, 0.0)
    with pytest.raises(ValueError, match="columns"):
        parzen_log_likelihood(S, np.zeros((2, 3)), 1.0)
    with pytest.raises(ValueError, match="NaN"):
        parzen_log_likelihood(S, np.full((1, 2), np.nan), 1.0)
    with pytest.raises(ValueError, match="sigmas"):
        select_sigma(S, S, [])
    with pytest.raises(ValueError, match="sigma"):
        parzen_log_likelihoods(S, S, [0.5, -1.0])


def test_published_figures_and_grid():
    assert PUBLISHED_MNIST == {"DBN": (138.0, 2.0), "stacked CAE": (121.0, 1.6)}
    assert len(DEFAULT_SIGMAS) == 10 and DEFAULT_SIGMAS[0] == pytest.approx(0.1) and DEFAULT_SIGMAS[-1] == pytest.approx(1.0)


@pytest.mark.slow
def test_mnist_sized_evaluation_runs_in_seconds():
    """10000 samples x 10000 points x 784 dimensions: one 7.8e10-flop matmul plus the exps."""
    g = torch.Generator().manual_seed(0)
    S, X = torch.rand(10000, 784, generator=g), torch.rand(10000, 784, generator=g)
    t = time.perf_counter()
    ll = parzen_log_likelihood(S, X, 0.2)
    elapsed = time.perf_counter() - t
    assert torch.isfinite(ll).all()
    assert elapsed < 60, elapsed
