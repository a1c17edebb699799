"""Tangent propagation: the penalty against finite differences and the explicit Jacobian."""
import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

from finetune.tangent_prop import tangent_penalty

B, D, K = 5, 20, 4


@pytest.fixture
def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(D, 16), nn.Sigmoid(), nn.Linear(16, 10)).double()


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, D, generator=g, dtype=torch.float64)
    U = torch.linalg.qr(torch.randn(B, D, K, generator=g, dtype=torch.float64))[0].transpose(1, 2)
    return x, U  # U (B, K, D) orthonormal rows, as the MTC's tangents


def _output(mlp):
    return lambda x: torch.softmax(mlp(x), dim=-1)  # the MTC penalises the class probabilities


def _explicit(f, x, U):
    """sum_u ||J_f(x) u||^2 through the (B, n_out, d) Jacobian."""
    J = vmap(jacrev(lambda xi: f(xi[None])[0]))(x)
    return ((J @ U.transpose(1, 2)) ** 2).sum((1, 2))


def test_penalty_equals_central_finite_differences(mlp):
    f = _output(mlp)
    x, U = _data()
    eps = 1e-5
    with torch.no_grad():
        fd = sum((((f(x + eps * U[:, i]) - f(x - eps * U[:, i])) / (2 * eps)) ** 2).sum(-1)
                 for i in range(K))
        omega = tangent_penalty(f, x, U)
    assert omega.min() > 1e-6  # not trivially zero
    torch.testing.assert_close(omega, fd, rtol=1e-6, atol=0)


def test_penalty_and_its_gradient_equal_the_explicit_jacobian_form(mlp):
    f = _output(mlp)
    x, U = _data(1)
    params = list(mlp.parameters())
    omega = tangent_penalty(f, x, U)
    ref = _explicit(f, x, U)
    torch.testing.assert_close(omega, ref, rtol=1e-12, atol=0)
    grads = torch.autograd.grad(omega.sum(), params)
    ref_grads = torch.autograd.grad(ref.sum(), params)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-14)
    assert min(r.abs().max() for r in ref_grads) > 1e-6  # every layer is reached
    # the comparison above would catch a penalty computed with detached parameters: its
    # gradient with respect to the weights vanishes
    frozen = {n: p.detach() for n, p in mlp.named_parameters()}
    detached = tangent_penalty(lambda z: torch.softmax(functional_call(mlp, frozen, (z,)), -1), x, U)
    assert not detached.requires_grad
    torch.testing.assert_close(detached, omega.detach(), rtol=1e-12, atol=0)


def test_penalty_on_the_logits_is_another_quantity(mlp):
    x, U = _data(2)
    on_logits = tangent_penalty(mlp, x, U)
    torch.testing.assert_close(on_logits, _explicit(mlp, x, U), rtol=1e-12, atol=0)
    assert (on_logits - tangent_penalty(_output(mlp), x, U)).abs().min() > 1e-6


def test_zero_along_directions_the_function_ignores():
    A = torch.randn(3, 10, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    f = lambda x: torch.softmax(x[:, :3] @ A, dim=-1)  # noqa: E731 - depends on x_0..x_2 only
    x, _ = _data(3)
    others = torch.eye(D, dtype=torch.float64)[3:3 + K].expand(B, K, D)  # e_3 .. e_6
    assert tangent_penalty(f, x, others).abs().max() < 1e-15
    first = torch.eye(D, dtype=torch.float64)[:K].expand(B, K, D)  # e_0 .. e_3
    assert tangent_penalty(f, x, first).min() > 1e-4


def test_scales_quadratically_and_adds_over_tangents(mlp):
    f = _output(mlp)
    x, U = _data(4)
    both = tangent_penalty(f, x, U)
    torch.testing.assert_close(tangent_penalty(f, x, 3 * U), 9 * both, rtol=1e-12, atol=0)
    parts = tangent_penalty(f, x, U[:, :1]) + tangent_penalty(f, x, U[:, 1:])
    torch.testing.assert_close(parts, both, rtol=1e-12, atol=0)


def test_bad_shapes_raise(mlp):
    x, U = _data()
    with pytest.raises(ValueError, match=r"U must have shape \(5, k, 20\)"):
        tangent_penalty(_output(mlp), x, U[:, :, :10])
    with pytest.raises(ValueError, match=r"x must have shape \(B, d\)"):
        tangent_penalty(_output(mlp), x[0], U)
