"""Logistic PCA (``finetune.logistic_pca``): the loss, its split into row and column problems
and their Newton terms against independent evaluations; optimality of the fit and of the codes;
recovery of a planted model; and the claim of Hinton & Salakhutdinov's Fig. 2 in miniature
(logistic PCA reconstructs digits better than PCA)."""
import itertools

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression

from finetune.logistic_pca import LogisticPCA, cross_entropy, newton, newton_terms, objective


def _sigmoid(t):
    return 1 / (1 + np.exp(-t))


def _row_ce(X, theta):
    """Eq. (3) the long way, per row: -sum_i [x log p + (1 - x) log(1 - p)] (numpy float64),
    with log p = -log(1 + e^-theta) and log(1 - p) = -log(1 + e^theta) by numpy's logaddexp."""
    return (X * np.logaddexp(0, -theta) + (1 - X) * np.logaddexp(0, theta)).sum(1)


def _mean_ce(X, theta):
    return float(_row_ce(X, theta).mean())


def _entropy(X):
    """The least cross-entropy soft targets allow: sum_i H(x_i), averaged over rows."""
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(np.where(X > 0, X * np.log(X), 0) + np.where(X < 1, (1 - X) * np.log1p(-X), 0))
    return float(h.sum(1).mean())


def _J(U, V, mu, X, l2):
    """Eq. (4) in torch, written from the equations (autograd differentiates it)."""
    theta = U @ V.T + mu
    zero = torch.zeros((), dtype=theta.dtype)
    L = (X * torch.logaddexp(zero, -theta) + (1 - X) * torch.logaddexp(zero, theta)).sum() / len(X)
    return L + l2 / 2 * ((U ** 2).sum() / len(X) + (V ** 2).sum())


def _planted(N=2000, d=100, k=2, seed=0):
    """X ~ Bernoulli(sigmoid(U0 V0^T + mu0)) and (U0, V0, mu0)."""
    rng = np.random.default_rng(seed)
    U, V, mu = rng.normal(0, 2, (N, k)), rng.normal(0, 1, (d, k)), rng.normal(0, 0.5, d)
    return (rng.random((N, d)) < _sigmoid(U @ V.T + mu)).astype(np.float64), (U, V, mu)


@pytest.fixture(scope="module")
def digits():
    return load_digits().data / 16.0                                        # (1797, 64) in [0, 1]


@pytest.fixture(scope="module")
def planted_fit():
    X, truth = _planted()
    model = LogisticPCA(2, max_iter=60, tol=1e-14, random_state=0)
    return X, truth, model, model.fit_transform(X)


def test_the_loss_is_the_cross_entropy_computed_the_long_way():
    rng = np.random.default_rng(1)
    theta, X = rng.normal(0, 8, (50, 20)), rng.random((50, 20))
    ours = cross_entropy(torch.from_numpy(theta), torch.from_numpy(X)).numpy()
    assert np.allclose(ours, _row_ce(X, theta), rtol=1e-12, atol=0)
    small = theta.clip(-5, 5)                              # where the textbook form is exact enough
    p = _sigmoid(small)
    textbook = -(X * np.log(p) + (1 - X) * np.log(1 - p)).sum(1)
    assert np.allclose(cross_entropy(torch.from_numpy(small), torch.from_numpy(X)).numpy(), textbook,
                       rtol=1e-12, atol=0)
    # far in the tails the textbook form gives inf or nan; this one the exact value
    big = torch.tensor([[-800.0, 800.0, 50.0]], dtype=torch.float64)
    assert cross_entropy(big, torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64)).item() == 50.0


def test_the_rows_and_the_columns_add_up_to_eq_4():
    rng = np.random.default_rng(2)
    N, d, k, l2 = 40, 12, 3, 0.3
    X, U, V, mu = rng.random((N, d)), rng.normal(0, 1, (N, k)), rng.normal(0, 1, (d, k)), rng.normal(0, 1, d)
    NJ = N * (_mean_ce(X, U @ V.T + mu) + l2 / 2 * ((U ** 2).sum() / N + (V ** 2).sum()))
    t = torch.from_numpy
    rows = objective(t(U), t(V), t(mu), t(X), torch.full((k,), l2, dtype=torch.float64))       # Eq. (5)
    cols = objective(t(np.c_[V, mu]), t(np.c_[U, np.ones(N)]), torch.zeros((), dtype=torch.float64),
                     t(X.T.copy()), t(np.r_[np.full(k, N * l2), 0.0]))                           # Eq. (6)
    assert rows.sum().item() + N * l2 / 2 * (V ** 2).sum() == pytest.approx(NJ, rel=1e-12)
    assert cols.sum().item() + l2 / 2 * (U ** 2).sum() == pytest.approx(NJ, rel=1e-12)


def test_the_hand_written_loss_gradient_and_hessian_are_autograds():
    rng = np.random.default_rng(3)
    M, m, q = 4, 15, 3
    W, B, b, Y = (torch.from_numpy(rng.normal(0, 1, s)) for s in ((M, q), (m, q), (m,), (M, m)))
    Y, c = Y.sigmoid(), torch.tensor([0.5, 2.0, 0.0], dtype=torch.float64)

    def h(w, y):                                            # Eq. (7) for one row, from its definition
        t = B @ w + b
        return (torch.logaddexp(torch.zeros(()), t) - y * t).sum() + 0.5 * (c * w * w).sum()

    h_rows, grad, hess = newton_terms(W, B, b, Y, c)
    for n in range(M):
        g_auto = torch.autograd.functional.jacobian(lambda w, y=Y[n]: h(w, y), W[n])
        H_auto = torch.autograd.functional.hessian(lambda w, y=Y[n]: h(w, y), W[n])
        assert torch.allclose(grad[n], g_auto, rtol=1e-10, atol=1e-12)
        assert torch.allclose(hess[n], H_auto, rtol=1e-10, atol=1e-12)
        assert h_rows[n].item() == pytest.approx(h(W[n], Y[n]).item(), rel=1e-12)
    assert torch.allclose(objective(W, B, b, Y, c), h_rows, rtol=1e-14)


def test_newton_finds_the_l2_logistic_regression_of_scikit_learn():
    # Eq. (7) with binary targets, b = 0 and c = 1 / C is scikit-learn's l2 logistic regression
    # without intercept (its objective times C)
    rng = np.random.default_rng(4)
    B = rng.normal(0, 1, (300, 5))
    ys = (rng.random((300, 3)) < _sigmoid(B @ rng.normal(0, 2, (5, 3)))).T.astype(np.float64)  # (3, 300)
    C = 0.7
    args = (torch.from_numpy(B), torch.zeros((), dtype=torch.float64), torch.from_numpy(ys),
            torch.full((5,), 1 / C, dtype=torch.float64))
    W, h = newton(torch.zeros(3, 5, dtype=torch.float64), *args, 50, 1e-14)
    for n, y in enumerate(ys):
        ref = LogisticRegression(C=C, fit_intercept=False, tol=1e-12, max_iter=10000).fit(B, y).coef_[0]
        assert np.allclose(W[n].numpy(), ref, rtol=1e-6, atol=1e-8)
    assert torch.allclose(h, objective(W, *args), rtol=1e-14)


def test_each_sweep_lowers_the_loss(digits):
    X = digits[:300]
    losses = [LogisticPCA(3, max_iter=n, tol=1e-12, random_state=0).fit(X).loss_ for n in (1, 2, 4, 8, 16)]
    assert all(b < a for a, b in itertools.pairwise(losses)), losses


def test_the_fit_is_a_stationary_point_and_its_loss_is_eq_4(planted_fit):
    X, _, model, U = planted_fit
    V, mu = model.components_.T, model.offset_
    assert model.loss_ == pytest.approx(_mean_ce(X, U @ V.T + mu) + model.l2 / 2 * (
        (U ** 2).sum() / len(X) + (V ** 2).sum()), rel=1e-12)
    Ut, Vt, mut = (torch.tensor(a).requires_grad_() for a in (U, V, mu))
    _J(Ut, Vt, mut, torch.from_numpy(X), model.l2).backward()
    # N dJ/du_n is the gradient of row n's problem (5), solved last; V and mu take one step a
    # sweep, and their largest gradient falls slowly: 0.09 after 1 sweep, 2e-4 after 10, 8e-5 after 60
    assert np.abs(len(X) * Ut.grad.numpy()).max() < 1e-6
    assert np.abs(Vt.grad.numpy()).max() < 2e-4 and np.abs(mut.grad.numpy()).max() < 2e-4


def test_a_planted_model_is_recovered_better_than_by_pca(planted_fit):
    X, (U0, V0, mu0), model, U = planted_fit
    truth = _sigmoid(U0 @ V0.T + mu0)
    err = np.mean((model.inverse_transform(U) - truth) ** 2)
    pca = PCA(2).fit(X)
    err_pca = np.mean((np.clip(pca.inverse_transform(pca.transform(X)), 0, 1) - truth) ** 2)
    assert err < 0.6 * err_pca, (err, err_pca)
    # on its training data the fit beats the truth, by about its parameter count over 2N
    # (N k + d (k + 1)) / (2 N) = 1.075 nats a row: at least half of it, or it is not the optimum
    fitted, true = _mean_ce(X, U @ model.components_ + model.offset_), _mean_ce(X, U0 @ V0.T + mu0)
    assert true - 1.5 < fitted < true - 0.5, (fitted, true)


def test_transform_of_the_training_data_gives_back_the_fitted_codes(planted_fit):
    X, _, model, U = planted_fit
    Z = model.transform(X)
    V, mu = model.components_.T, model.offset_
    assert _mean_ce(X, Z @ V.T + mu) == pytest.approx(_mean_ce(X, U @ V.T + mu), rel=1e-9)
    assert np.abs(Z - U).max() < 1e-6 * np.abs(U).max()        # Eq. (5) is strictly convex
    assert model.score(X) == pytest.approx(-_mean_ce(X, Z @ V.T + mu), rel=1e-12)


def test_the_codes_of_new_rows_solve_eq_5(planted_fit):
    _, _, model, _ = planted_fit
    X_new, _ = _planted(N=300, seed=5)
    X_new[0], X_new[1] = 1.0, 0.0                                 # saturating rows too
    Z = torch.from_numpy(model.transform(X_new)).requires_grad_()
    V, mu = torch.from_numpy(model.components_.T), torch.from_numpy(model.offset_)
    (len(X_new) * _J(Z, V, mu, torch.from_numpy(X_new), model.l2)).backward()  # sum_n h(u_n) + const
    # Newton stops at delta / 2 <= tol mean(h), |grad| <= sqrt(2 tol mean(h) |Hess|) ~ 4e-6 here
    assert Z.grad.abs().max().item() < 1e-5


def test_more_components_fit_better(digits):
    X = digits[:300]
    kl = {k: -LogisticPCA(k, random_state=0).fit(X).score(X) - _entropy(X)
          for k in (1, 2, 4, 63)}                     # cross-entropy above the targets' own entropy
    assert kl[1] > kl[2] > kl[4] > kl[63] > 0, kl
    assert kl[63] < 0.05 * kl[1], kl


def test_the_same_seed_gives_the_same_bits_and_the_input_is_left_alone(digits):
    X = digits[:200].copy()
    before = X.copy()
    a = LogisticPCA(3, random_state=7).fit(X)
    b = clone(a).fit(X)
    assert np.array_equal(a.components_, b.components_) and np.array_equal(a.offset_, b.offset_)
    assert np.array_equal(a.transform(X), b.transform(X)) and a.n_iter_ == b.n_iter_
    assert np.array_equal(X, before)


def test_float32_input_fits_in_float32_to_the_same_loss(digits):
    X = digits[:300]
    m64 = LogisticPCA(3, random_state=0).fit(X)
    m32 = LogisticPCA(3, random_state=0).fit(X.astype(np.float32))
    assert m32.components_.dtype == np.float32 and m32.transform(X).dtype == np.float32
    assert m32.inverse_transform(m32.transform(X)).dtype == np.float32
    assert m32.loss_ == pytest.approx(m64.loss_, rel=1e-5)


def test_a_pixel_that_is_always_zero_keeps_finite_parameters(digits):
    X = digits[:300].copy()
    X[:, 5] = 0.0                                          # (pixel 0 of the digits is always 0 too)
    model = LogisticPCA(4, max_iter=100, tol=1e-12, random_state=0)
    U = model.fit_transform(X)
    assert all(np.isfinite(a).all() for a in (model.components_, model.offset_, U))
    assert model.offset_[5] < -6 and model.offset_[0] < -6
    assert np.abs(model.components_[:, 5]).max() < 1e-3        # the offset alone carries the pixel
    assert np.all(model.inverse_transform(model.transform(X))[:, 5] < 1e-3)


def test_logistic_pca_reconstructs_held_out_digits_better_than_pca(digits):
    # Fig. 2 of Hinton & Salakhutdinov in miniature: squared error per test image, 10 codes
    train, test = digits[:1200], digits[1200:]
    model = LogisticPCA(10, random_state=0).fit(train)
    se = np.mean(((test - model.inverse_transform(model.transform(test))) ** 2).sum(1))
    pca = PCA(10, random_state=0).fit(train)
    se_pca = np.mean(((test - pca.inverse_transform(pca.transform(test))) ** 2).sum(1))
    assert se < 0.75 * se_pca, (se, se_pca)                                 # 0.885 against 1.313


BAD_X = [
    (np.zeros(5), "2-D array.*reshape"),
    (np.zeros((2, 3, 4)), "2-D array.*reshape"),
    (np.zeros((0, 4)), "non-empty.*reshape"),
    (np.zeros((1, 4)), "1 row, and a fit needs at least 2: pass more data"),
    (np.array([[0.5, np.nan], [0.1, 0.2]]), "NaN or infinity.*impute"),
    (np.array([[0.5, np.inf], [0.1, 0.2]]), "NaN or infinity.*impute"),
    (np.array([[0.5, 255.0], [0.1, 0.2]]), r"\[0, 1\].*255.*rescale"),
    (np.array([[0.5, -0.1], [0.1, 0.2]]), r"\[0, 1\].*-0.1.*rescale"),
    (np.array([["a", "b"], ["c", "d"]]), "numbers.*convert"),
]


@pytest.mark.parametrize("X, message", BAD_X)
def test_bad_data_is_refused_with_the_fix(X, message):
    with pytest.raises(ValueError, match=message):
        LogisticPCA(1).fit(X)


@pytest.mark.parametrize("params, message", [
    ({"n_components": 0}, "n_components must be an integer from 1 to .* = 5, got 0: choose"),
    ({"n_components": 6}, "n_components .* = 5, got 6: choose one in that range"),
    ({"n_components": 2.0}, "n_components .* got 2.0"),
    ({"n_components": True}, "n_components .* got True"),
    ({"max_iter": 0}, "max_iter must be an integer >= 1, got 0"),
    ({"tol": 0.0}, r"tol must be a number in \(0, inf\), got 0.0"),
    ({"tol": "small"}, "tol must be a number .* got 'small'"),
    ({"l2": 0.0}, r"l2 must be a number in \(0, inf\), got 0.0"),
    ({"l2": float("nan")}, "l2 must be a number .* got nan"),
])
def test_bad_hyperparameters_are_refused_with_the_value(params, message):
    X = np.random.default_rng(0).random((8, 5))
    with pytest.raises(ValueError, match=message):
        LogisticPCA(**{"n_components": 2, **params}).fit(X)


def test_misuse_of_a_fitted_or_unfitted_model_is_refused():
    X = np.random.default_rng(0).random((20, 5))
    with pytest.raises(NotFittedError):
        LogisticPCA(2).transform(X)
    model = LogisticPCA(2, max_iter=5).fit(X)
    with pytest.raises(ValueError, match="X has 4 features, but the model was fitted on 5: pass data"):
        model.transform(X[:, :4])
    with pytest.raises(ValueError, match=r"Z must be .* \(n_samples, 2\), got shape \(20, 3\): pass"):
        model.inverse_transform(np.zeros((20, 3)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model.score(X * 2)
