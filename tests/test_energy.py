"""The potential energy of a tied autoencoder: its gradient is the reconstruction field, and for
sigmoid units it is minus an RBM's free energy (checked on all 2^6 binary vectors)."""
import math

import pytest
import torch

from pretrain import rbm
from pretrain.autoencoder import AutoEncoder
from pretrain.energy import (
    energy,
    layer_energy,
    layer_potential,
    potential,
    vector_field,
)
from pretrain.rbm import RBM
from pretrain.units import UNITS


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _autoencoder(unit, visible_unit="linear", seed=0, n_visible=7, n_hidden=5) -> AutoEncoder:
    loss = "mse" if visible_unit == "linear" else "cross_entropy"
    ae = AutoEncoder(n_visible, n_hidden, hidden_unit=unit, visible_unit=visible_unit, tied=True,
                     loss=loss, seed=seed).double()
    with torch.no_grad():  # non-zero biases, so a bias dropped from the formula shows
        ae.b.copy_(0.5 * _rand(n_hidden, seed=seed + 1))
        ae.c.copy_(0.5 * _rand(n_visible, seed=seed + 2))
    return ae


def _all_binary(n):
    return torch.tensor([[(i >> k) & 1 for k in range(n)] for i in range(2**n)], dtype=torch.float64)


@pytest.mark.parametrize("unit", UNITS)
def test_gradient_of_real_potential_is_the_reconstruction_field(unit):
    """Eq. (2): grad_x F(x) = r(x) - x for a tied autoencoder with a linear decoder (float64)."""
    ae = _autoencoder(unit)
    x = (2.0 * _rand(32, 7, seed=5)).requires_grad_(True)
    (grad,) = torch.autograd.grad(layer_potential(ae, x).sum(), x)
    with torch.no_grad():
        field = vector_field(ae, x)
    torch.testing.assert_close(grad, field, rtol=1e-10, atol=1e-10)
    assert field.abs().max() > 0.1  # not a trivially zero field


@pytest.mark.parametrize("unit", ["sigmoid", "tanh", "relu"])
def test_gradient_of_binary_potential_is_the_decoder_logit(unit):
    """Eq. (4): for a sigmoid decoder, grad_x F(x) = W^T s(W x + b) + c = logit r(x)."""
    ae = _autoencoder(unit, visible_unit="sigmoid", seed=3)
    x = torch.rand(16, 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64).requires_grad_(True)
    (grad,) = torch.autograd.grad(layer_potential(ae, x).sum(), x)
    with torch.no_grad():
        torch.testing.assert_close(grad, ae.decoder_preactivation(ae.encode(x)), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(torch.sigmoid(grad), ae.reconstruct(x), rtol=1e-10, atol=1e-12)


def test_binary_potential_is_minus_the_rbm_free_energy_on_every_state():
    """Sigmoid hidden units, Eq. (3): F(v) = -F_RBM(v) exactly on all 64 states of 6 visible units."""
    W, b, c = 1.5 * _rand(4, 6, seed=0), _rand(4, seed=1), _rand(6, seed=2)
    v = _all_binary(6)  # (64, 6)
    F = potential(v, W, b, c, "sigmoid", visible="binary")
    torch.testing.assert_close(F, -rbm.free_energy(v, W, b, c), rtol=0, atol=1e-12)
    # so F is an unnormalised log-probability: softmax over the states is the RBM's p(v)
    torch.testing.assert_close(torch.log_softmax(F, 0), rbm.log_likelihood(v, W, b, c), rtol=0, atol=1e-12)
    assert F.max() - F.min() > 3.0  # the states differ: an all-equal potential would also "match" up to a constant


def test_rbm_layer_potential_matches_its_free_energy_binary_and_gaussian():
    for visible in ("bernoulli", "gaussian"):
        layer = RBM(6, 4, visible=visible, seed=0).double()
        with torch.no_grad():
            layer.W.mul_(100.0)  # N(0, 1) weights instead of N(0, 0.01^2)
            layer.b.copy_(_rand(4, seed=1))
            layer.c.copy_(_rand(6, seed=2))
        v = _all_binary(6) if visible == "bernoulli" else _rand(10, 6, seed=3)
        torch.testing.assert_close(layer_potential(layer, v), -layer.free_energy(v), rtol=0, atol=1e-12)


def test_energy_is_minus_potential_and_forms_are_checked():
    W, b, c = _rand(3, 4), _rand(3, seed=1), _rand(4, seed=2)
    x = _rand(5, 4, seed=3)
    for form in ("real", "binary"):
        torch.testing.assert_close(energy(x, W, b, c, "tanh", form), -potential(x, W, b, c, "tanh", form))
    with pytest.raises(ValueError, match="visible"):
        potential(x, W, b, c, "tanh", visible="gaussian")
    with pytest.raises(ValueError, match="hidden_unit"):
        potential(x, W, b, c, "softsign")
    with pytest.raises(ValueError, match=r"\(B, 4\)"):
        potential(x[:, :3], W, b, c)


def test_potential_is_finite_for_huge_inputs():
    """Stable forms: cosh and exp would overflow at |a| ~ 1e3 in float64 (float32: ~90)."""
    W, b, c = torch.ones(2, 3), torch.zeros(2), torch.zeros(3)
    x = torch.full((1, 3), 1e3)
    for unit in UNITS:
        for form in ("real", "binary"):
            assert torch.isfinite(potential(x, W, b, c, unit, form)).all(), (unit, form)
    # log cosh(a) = |a| - log 2 + O(e^{-2|a|}) for large |a|
    F = potential(x, W, b, c, "tanh", "binary")
    assert abs(F.item() - 2 * (3e3 - math.log(2.0))) < 1e-2


def test_untied_or_decoderless_layers_are_refused():
    untied = AutoEncoder(4, 3, tied=False, visible_unit="linear", loss="mse")
    with pytest.raises(ValueError, match="tied"):
        layer_potential(untied, torch.zeros(2, 4))
    tanh_decoder = AutoEncoder(4, 3, visible_unit="tanh", loss="mse")
    with pytest.raises(ValueError, match="visible_unit='tanh'"):
        layer_potential(tanh_decoder, torch.zeros(2, 4))
    grbm = RBM(4, 3, visible="gaussian", sigma=0.5)  # decoder sigma W^T, encoder W / sigma
    with pytest.raises(ValueError, match="tied"):
        layer_energy(grbm, torch.zeros(2, 4))


def test_potential_ranks_data_above_noise_for_a_linear_autoencoder():
    """A linear tied AE (S(a) = a^2 / 2) whose W spans the data's direction: F is a Gaussian
    log-density up to a constant, higher along the spanned direction than off it."""
    u = torch.tensor([[0.6, 0.8]], dtype=torch.float64)  # (1, 2) unit vector
    W, b, c = 0.9 * u, torch.zeros(1, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    on = torch.tensor([[0.6, 0.8]], dtype=torch.float64)
    off = torch.tensor([[0.8, -0.6]], dtype=torch.float64)  # same norm, orthogonal to u
    F = potential(torch.cat([on, off]), W, b, c, "linear", "real")
    # F(x) = 0.81/2 (u.x)^2 - ||x||^2 / 2: 0.405 - 0.5 on u, -0.5 off it
    torch.testing.assert_close(F, torch.tensor([0.405 - 0.5, -0.5], dtype=torch.float64))
