"""Penalties against explicit Jacobians, exact expectations, finite differences and direct formulas.

The recurring bug of the field is a penalty that computes the wrong norm or trains nothing
(sum-then-square, the norm of the batch-mean Jacobian, floor division, a detached term);
``test_the_oracle_catches_the_classic_bugs`` shows the oracle comparison rejects each.
"""
import math

import numpy as np
import pytest
import torch
from torch.autograd.functional import jacobian

from pretrain import penalties as P
from pretrain.units import UNITS, activation

D_X, D_H, B = 7, 5, 6


def params(seed: int = 0, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, D_X, generator=g, dtype=torch.float64)
    W = (scale * torch.randn(D_H, D_X, generator=g, dtype=torch.float64)).requires_grad_(True)
    b = (0.5 * torch.randn(D_H, generator=g, dtype=torch.float64)).requires_grad_(True)
    return x, W, b


def encoder(W, b, unit):
    return lambda v: activation(unit, v @ W.T + b)


def explicit_jacobians(x, f, create_graph=False):
    """(B, d_h, d_x): one full Jacobian per example, by autograd on that example alone."""
    return torch.stack([jacobian(f, xi, create_graph=create_graph) for xi in x])


def oracle_contraction(x, W, b, unit):
    """Per-example ||J||_F^2 from the materialised Jacobian: each entry squared, then summed."""
    J = explicit_jacobians(x, encoder(W, b, unit), create_graph=True)
    return (J ** 2).sum(dim=(1, 2))


def grad(y, xs):
    """dy/dx for each x, zeros where y does not depend on x (a relu's or linear unit's bias)."""
    gs = torch.autograd.grad(y, xs, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(xs, gs)]


def matches_oracle(fn, unit="sigmoid") -> bool:
    """Value and gradient (w.r.t. W and b) of ``fn(x, W, b, unit).mean()`` equal the oracle's."""
    x, W, b = params()
    try:
        value = fn(x, W, b, unit)
        grads = torch.autograd.grad(value.mean(), (W, b), allow_unused=True)
    except RuntimeError:  # a detached result has no graph at all
        return False
    ref = oracle_contraction(x, W, b, unit)
    ref_grads = torch.autograd.grad(ref.mean(), (W, b))
    if value.shape != ref.shape or not torch.allclose(value, ref, rtol=1e-10, atol=0):
        return False
    return all(g is not None and torch.allclose(g, r, rtol=1e-10, atol=1e-14)
               for g, r in zip(grads, ref_grads))


# -- contraction ---------------------------------------------------------------------------
@pytest.mark.parametrize("unit", UNITS)
def test_contraction_equals_squared_frobenius_norm_of_the_jacobian(unit):
    x, W, b = params()
    got = P.contraction(x, W, b, unit)
    assert got.shape == (B,)
    J = explicit_jacobians(x, encoder(W, b, unit))
    torch.testing.assert_close(got, (J ** 2).sum(dim=(1, 2)), rtol=1e-10, atol=0)
    assert got.min() > 0


@pytest.mark.parametrize("unit", UNITS)
def test_contraction_gradient_equals_the_oracle_gradient_and_is_not_zero(unit):
    x, W, b = params()
    gW, gb = grad(P.contraction(x, W, b, unit).mean(), (W, b))
    rW, rb = grad(oracle_contraction(x, W, b, unit).mean(), (W, b))
    torch.testing.assert_close(gW, rW, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(gb, rb, rtol=1e-10, atol=1e-14)
    assert gW.abs().max() > 1e-3  # a detached or floored penalty has a zero gradient
    if unit in ("sigmoid", "tanh"):
        assert gb.abs().max() > 1e-3  # s'' != 0: the bias moves the penalty


@pytest.mark.parametrize("unit", ["sigmoid", "tanh"])
def test_contraction_gradient_against_finite_differences(unit):
    x, W, b = params()
    assert torch.autograd.gradcheck(lambda W, b: P.contraction(x, W, b, unit), (W, b))


def test_the_oracle_catches_the_classic_bugs():
    def sum_then_square(x, W, b, unit):  # (sum of J's entries)^2 instead of sum of squares
        h = torch.sigmoid(x @ W.T + b)
        return ((h * (1 - h)) @ W.sum(1)) ** 2

    def mean_jacobian(x, W, b, unit):  # ||mean_B J||^2, the same for every example
        h = torch.sigmoid(x @ W.T + b)
        return (h * (1 - h)).mean(0).pow(2).matmul((W ** 2).sum(1)).expand(x.shape[0])

    def floor_division(x, W, b, unit):  # the Theano tutorial's `//`: right size, no gradient
        floored = P.contraction(x, W, b, unit).sum() // 1.0
        return floored / x.shape[0] * torch.ones(x.shape[0], dtype=x.dtype)

    def detached(x, W, b, unit):
        return P.contraction(x, W, b, unit).detach()

    assert matches_oracle(P.contraction)
    for bug in (sum_then_square, mean_jacobian, floor_division, detached):
        assert not matches_oracle(bug), bug.__name__


# -- contraction by autograd --------------------------------------------------------------
@pytest.mark.parametrize("unit", UNITS)
def test_contraction_autograd_equals_the_analytic_form(unit):
    x, W, b = params()
    torch.testing.assert_close(P.contraction_autograd(x, encoder(W, b, unit)),
                               P.contraction(x, W, b, unit), rtol=1e-10, atol=0)


def test_contraction_autograd_on_a_two_layer_encoder_is_exact_and_trainable():
    x, W, b = params()
    g = torch.Generator().manual_seed(1)
    V = torch.randn(3, D_H, generator=g, dtype=torch.float64).requires_grad_(True)
    f = lambda v: torch.tanh(torch.sigmoid(v @ W.T + b) @ V.T)  # noqa: E731
    got = P.contraction_autograd(x, f)
    J = explicit_jacobians(x, f, create_graph=True)
    ref = (J ** 2).sum(dim=(1, 2))
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=0)
    grads = torch.autograd.grad(got.mean(), (W, V))
    ref_grads = torch.autograd.grad(ref.mean(), (W, V))
    for gr, r in zip(grads, ref_grads):
        torch.testing.assert_close(gr, r, rtol=1e-10, atol=1e-14)
        assert gr.abs().max() > 1e-4


def test_contraction_autograd_does_not_touch_the_callers_x():
    x, W, b = params()
    P.contraction_autograd(x, encoder(W, b, "sigmoid"))
    assert not x.requires_grad and x.grad is None


def test_row_norms_and_their_first_and_second_gradients_equal_the_plain_formula():
    # the penalties read ||W_j||^2 through a hand-written backward: it must be autograd's
    W = torch.randn(D_H, D_X, dtype=torch.float64, generator=torch.Generator().manual_seed(5),
                    requires_grad=True)
    q = torch.rand(D_H, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    got, ref = P._row_norms_sq(W), (W * W).sum(dim=1)
    torch.testing.assert_close(got, ref, rtol=1e-14, atol=0)
    (g_got,) = torch.autograd.grad(got @ q, W, create_graph=True)
    (g_ref,) = torch.autograd.grad(ref @ q, W, create_graph=True)
    torch.testing.assert_close(g_got, g_ref, rtol=1e-14, atol=0)
    (h_got,) = torch.autograd.grad((g_got ** 2).sum(), W)
    (h_ref,) = torch.autograd.grad((g_ref ** 2).sum(), W)
    torch.testing.assert_close(h_got, h_ref, rtol=1e-14, atol=0)


def test_penalties_from_the_preactivation_equal_the_penalties_from_x():
    x, W, b = params()
    a = x @ W.T + b
    for unit in ("sigmoid", "tanh"):
        s = activation(unit, a)
        act_grad = {"sigmoid": s * (1 - s), "tanh": 1 - s * s}[unit]
        torch.testing.assert_close(P.contraction_at(act_grad, W), P.contraction(x, W, b, unit),
                                   rtol=1e-12, atol=0)
        kw = dict(sigma=0.3, copies=3)
        torch.testing.assert_close(
            P.higher_order_at(a, act_grad, W, unit, generator=torch.Generator().manual_seed(1), **kw),
            P.higher_order(x, W, b, unit, generator=torch.Generator().manual_seed(1), **kw),
            rtol=1e-12, atol=0)


# -- higher order --------------------------------------------------------------------------
def exact_higher_order(x, W, b, unit, sigma):
    """E ||J(x) - J(x + eps)||_F^2 exactly: W_j . eps ~ N(0, (sigma ||W_j||)^2) per unit j, so
    the expectation is a sum of 1-D Gaussian integrals (Gauss-Hermite, 120 nodes; the
    indicator of a relu in closed form)."""
    a = (x @ W.T + b).detach().numpy()  # (B, d_h)
    w_norm = W.detach().norm(dim=1).numpy()  # (d_h,)
    s = sigma * w_norm  # std of the shift of a_j
    if unit == "relu":  # (1[a > 0] - 1[a + s z > 0])^2 = 1 with probability Phi(-|a| / s)
        flip = 0.5 * np.vectorize(math.erfc)(np.abs(a) / (s * math.sqrt(2)))
        return (flip * w_norm ** 2).sum(1)
    z, wq = np.polynomial.hermite_e.hermegauss(120)
    wq = wq / math.sqrt(2 * math.pi)  # weights of E over N(0, 1)
    d = {"sigmoid": lambda t: 0.25 / np.cosh(t / 2) ** 2,
         "tanh": lambda t: 1 / np.cosh(t) ** 2}[unit]
    shifted = d(a[..., None] + s[:, None] * z)  # (B, d_h, nodes)
    per_unit = ((d(a)[..., None] - shifted) ** 2 * wq).sum(-1)  # (B, d_h)
    return per_unit @ w_norm ** 2


@pytest.mark.parametrize("unit", ["sigmoid", "tanh"])
def test_higher_order_is_the_mean_of_explicit_jacobian_differences(unit):
    x, W, b = params()
    sigma, copies = 0.3, 5
    got = P.higher_order(x, W, b, unit, sigma=sigma, copies=copies,
                         generator=torch.Generator().manual_seed(4))
    # the same eps: corrupt() draws one (copies, B, d_x) standard normal from the generator
    eps = sigma * torch.randn(copies, B, D_X, generator=torch.Generator().manual_seed(4), dtype=x.dtype)
    f = encoder(W, b, unit)
    J = explicit_jacobians(x, f)  # (B, d_h, d_x)
    ref = torch.stack([((J - explicit_jacobians(x + e, f)) ** 2).sum(dim=(1, 2)) for e in eps]).mean(0)
    torch.testing.assert_close(got, ref.detach(), rtol=1e-10, atol=0)


@pytest.mark.parametrize("unit", ["sigmoid", "tanh", "relu"])
def test_higher_order_converges_to_the_exact_expectation(unit):
    x, W, b = params(scale=1.5)
    sigma = 0.3
    exact = torch.from_numpy(exact_higher_order(x, W, b, unit, sigma))
    assert exact.min() > 0

    def rel_error(copies, seed):
        est = P.higher_order(x, W, b, unit, sigma=sigma, copies=copies,
                             generator=torch.Generator().manual_seed(seed)).detach()
        return ((est - exact).abs() / exact).mean().item()

    few = np.mean([rel_error(4, s) for s in range(8)])
    many = rel_error(4096, 100)
    # Monte-Carlo error ~ 1/sqrt(copies): 32x smaller at 4096 copies; ask for 8x, and 5% absolute
    assert many < few / 8, (few, many)
    assert many < 0.05, many


def test_higher_order_is_unbiased_with_few_copies():
    x, W, b = params(scale=1.5)
    exact = exact_higher_order(x, W, b, "sigmoid", 0.3).mean()
    est = np.mean([P.higher_order(x, W, b, "sigmoid", sigma=0.3, copies=2,
                                  generator=torch.Generator().manual_seed(s)).mean().item()
                   for s in range(1000)])  # 2000 draws in all
    assert abs(est - exact) / exact < 0.03


def test_higher_order_is_zero_for_a_linear_unit_or_no_noise():
    x, W, b = params()
    g = torch.Generator().manual_seed(0)
    assert torch.count_nonzero(P.higher_order(x, W, b, "linear", sigma=0.5, copies=3, generator=g)) == 0
    assert torch.count_nonzero(P.higher_order(x, W, b, "sigmoid", sigma=0.0, copies=3, generator=g)) == 0


def test_higher_order_gradient_against_finite_differences_and_not_zero():
    x, W, b = params()

    def fn(W, b):  # a fresh generator per call: the same eps for every evaluation
        return P.higher_order(x, W, b, "sigmoid", sigma=0.3, copies=3,
                              generator=torch.Generator().manual_seed(2))

    assert torch.autograd.gradcheck(fn, (W, b))
    gW, = torch.autograd.grad(fn(W, b).mean(), W)
    assert gW.abs().max() > 1e-4


@pytest.mark.parametrize("kw,match", [({"copies": 0}, "copies"), ({"copies": 2.5}, "2.5"),
                                      ({"sigma": -0.1}, "-0.1"), ({"unit": "softmax"}, "softmax")])
def test_higher_order_rejects_bad_arguments(kw, match):
    x, W, b = params()
    args = {"unit": "sigmoid", "sigma": 0.1, "copies": 2, **kw}
    unit = args.pop("unit")
    with pytest.raises(ValueError, match=match):
        P.higher_order(x, W, b, unit, generator=None, **args)


# -- sparsity ------------------------------------------------------------------------------
def test_sparsity_l1_exact():
    h = torch.tensor([[-1.0, 2.0, 0.5], [0.0, 0.0, -3.0]])
    assert P.sparsity_l1(h).tolist() == [3.5, 3.0]


def test_sparsity_kl_against_the_direct_formula():
    g = torch.Generator().manual_seed(0)
    h = torch.sigmoid(torch.randn(50, 8, generator=g, dtype=torch.float64) - 2.0)
    rho = 0.05
    q = h.numpy().mean(axis=0)
    ref = np.sum(rho * np.log(rho / q) + (1 - rho) * np.log((1 - rho) / (1 - q)))
    got = P.sparsity_kl(h, rho)
    assert got.shape == ()
    assert got.item() == pytest.approx(ref, rel=1e-12)
    assert got.item() > 0


def test_sparsity_kl_is_zero_at_the_target_and_positive_elsewhere():
    at_target = torch.full((10, 4), 0.2, dtype=torch.float64)
    assert P.sparsity_kl(at_target, 0.2).item() == pytest.approx(0, abs=1e-15)
    assert P.sparsity_kl(torch.full((10, 4), 0.3, dtype=torch.float64), 0.2).item() > 0


def test_sparsity_kl_gradient_and_clamp():
    g = torch.Generator().manual_seed(1)
    h = torch.sigmoid(torch.randn(20, 5, generator=g, dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda h: P.sparsity_kl(h, 0.1), (h,))
    dead = torch.zeros(10, 3, dtype=torch.float64)  # rho_hat = 0: log(rho / 0) without the clamp
    rho, eps = 0.05, P.KL_EPS
    expected = 3 * (rho * math.log(rho / eps) + (1 - rho) * math.log((1 - rho) / (1 - eps)))
    assert P.sparsity_kl(dead, rho).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("rho", [0.0, 1.0, -0.1, 1.5])
def test_sparsity_kl_rejects_a_target_outside_the_open_interval(rho):
    with pytest.raises(ValueError, match=str(rho)):
        P.sparsity_kl(torch.rand(4, 3), rho)
