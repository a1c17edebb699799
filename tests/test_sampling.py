"""Samplers: the CAE chain's noise J J^T eps (against autograd's Jacobian; its covariance and rank),
the chain's determinism;
block Gibbs against the exact distribution of a 6-visible RBM; a DBN's samples against an exact
expectation by enumeration."""
import math

import pytest
import torch

from pretrain import rbm
from pretrain.autoencoder import AutoEncoder
from pretrain.rbm import RBM
from pretrain.psd import PSD
from pretrain.sampling import (
    cae_step,
    decode_down,
    gibbs_chain,
    jacobian_gain,
    jjt_noise,
    perturbed_code,
    sample_cae,
    sample_dbn,
)
from pretrain.stack import Stack


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _randn(*shape, seed=0, scale=1.0):
    return scale * torch.randn(*shape, generator=_gen(seed), dtype=torch.float64)


def _all_binary(n):
    return torch.tensor([[(i >> k) & 1 for k in range(n)] for i in range(2**n)], dtype=torch.float64)


def _rbm(n_visible, n_hidden, seed, scale=1.0) -> RBM:
    layer = RBM(n_visible, n_hidden, seed=seed).double()
    with torch.no_grad():
        layer.W.copy_(_randn(n_hidden, n_visible, seed=seed, scale=scale))
        layer.b.copy_(_randn(n_hidden, seed=seed + 1, scale=0.5))
        layer.c.copy_(_randn(n_visible, seed=seed + 2, scale=0.5))
    return layer


def _encoder(layer):
    return lambda v: layer.encode(v)


@pytest.mark.parametrize("unit", ["sigmoid", "tanh"])
def test_jjt_noise_equals_J_J_transpose_eps_with_J_by_autograd(unit):
    """Eq. (6), matrix-free, against the explicit Jacobian of the encoder: exact to rounding."""
    layer = AutoEncoder(7, 5, hidden_unit=unit, seed=0).double()
    x = torch.rand(4, 7, generator=_gen(1), dtype=torch.float64)
    eps = _randn(4, 5, seed=2)
    got = jjt_noise(jacobian_gain(layer, x), layer.encoder_weight, eps)  # (4, 5)
    for i in range(4):
        J = torch.autograd.functional.jacobian(_encoder(layer), x[i:i + 1])[0, :, 0, :]  # (5, 7)
        torch.testing.assert_close(got[i], J @ J.T @ eps[i], rtol=1e-12, atol=1e-14)


def test_jacobian_gain_includes_the_layers_code_scale():
    """A layer with h = g * s(W x + b) (PSD's predictor) has J = diag(g s'(a)) W."""
    layer = PSD(6, 4, seed=0).double()
    with torch.no_grad():
        layer.encoder_scale.copy_(torch.tensor([0.5, 2.0, 1.5, 3.0], dtype=torch.float64))
    x = torch.rand(1, 6, generator=_gen(1), dtype=torch.float64)
    J = torch.autograd.functional.jacobian(_encoder(layer), x)[0, :, 0, :]  # (4, 6)
    eps = _randn(1, 4, seed=3)
    torch.testing.assert_close(jjt_noise(jacobian_gain(layer, x), layer.encoder_weight, eps)[0],
                               J @ J.T @ eps[0], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("unit", ["sigmoid", "tanh"])
def test_code_noise_has_covariance_sigma2_JJt_squared_and_the_rank_of_J(unit):
    """h~ - f(x) = J J^T eps, eps ~ N(0, sigma^2 I): Cov = sigma^2 (J J^T)^2, weights s_i^2 along
    the left singular vectors. With 5 hidden and 3 visible units it has rank 3, so isotropic noise
    in code space fails; the covariance sigma^2 J J^T of the noise J z (weights s_i) fails too."""
    layer = AutoEncoder(3, 5, hidden_unit=unit, seed=0).double()
    x = torch.rand(1, 3, generator=_gen(2), dtype=torch.float64)
    sigma, N = 0.7, 200_000
    with torch.no_grad():
        noise = perturbed_code(layer, x.expand(N, 3), sigma, _gen(3)) - layer.encode(x)  # (N, 5)
    J = torch.autograd.functional.jacobian(_encoder(layer), x)[0, :, 0, :]  # (5, 3) by autograd
    JJt = J @ J.T
    C = sigma**2 * JJt @ JJt
    C_hat = noise.T @ noise / N  # the mean is known to be 0
    # each entry of a Gaussian sample covariance has std sqrt((C_ii C_jj + C_ij^2) / N):
    # allow 5 of them (a false alarm over 25 entries has probability < 1e-5)
    tol = 5 * torch.sqrt((torch.outer(C.diagonal(), C.diagonal()) + C**2) / N)
    assert ((C_hat - C).abs() <= tol).all(), (C_hat - C).abs() / tol
    assert not ((C_hat - sigma**2 * JJt).abs() <= tol).all()  # the s_i-weighted noise is refused
    assert noise.mean(0).abs().max() < 5 * C.diagonal().max().sqrt() / math.sqrt(N)
    eig = torch.linalg.eigvalsh(C_hat)  # ascending
    assert eig[:2].abs().max() < 1e-12 * eig[-1]  # the noise lies in the 3-D column space of J
    assert eig[2] > 1e-6 * eig[-1]


def test_cae_step_without_noise_is_decode_of_encode_and_the_code_noise_scales_with_sigma():
    ae = AutoEncoder(6, 4, seed=0).double()
    x = torch.rand(8, 6, generator=_gen(1), dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(cae_step(ae, x, 0.0, _gen(2)), ae.decode(ae.encode(x)), rtol=0, atol=0)
        d1 = perturbed_code(ae, x, 0.1, _gen(2)) - ae.encode(x)
        d2 = perturbed_code(ae, x, 0.2, _gen(2)) - ae.encode(x)
        torch.testing.assert_close(d2, 2 * d1)  # same eps, twice the sigma: J J^T eps is linear in eps
        torch.testing.assert_close(cae_step(ae, x, 0.1, _gen(2)), ae.decode(ae.encode(x) + d1))  # Eq. (5)


def test_cae_chain_is_deterministic_per_seed_stays_in_range_and_decodes_down_the_stack():
    stack = Stack([AutoEncoder(10, 6, seed=0), AutoEncoder(6, 3, seed=1)]).double()
    x0 = torch.rand(4, 10, generator=_gen(0), dtype=torch.float64)
    a = sample_cae(stack, x0, n_steps=30, sigma=0.5, generator=_gen(7))
    b = sample_cae(stack, x0, n_steps=30, sigma=0.5, generator=_gen(7))
    c = sample_cae(stack, x0, n_steps=30, sigma=0.5, generator=_gen(8))
    assert a.shape == (4, 30, 10)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert 0.0 <= a.min() and a.max() <= 1.0  # sigmoid decoders
    # the chain moves: consecutive states differ
    assert (a[:, 1:] - a[:, :-1]).abs().mean() > 1e-3
    # the chain lives on the top layer's input, x_t, each state decoded by the layers below;
    # sigma = 0 is the deterministic iteration x <- g_2(f_2(x)) there
    with torch.no_grad():
        det = sample_cae(stack, x0, n_steps=3, sigma=0.0, generator=_gen(0), thin=2)
        x = stack[0].encode(x0)
        for t in range(3):
            for _ in range(2):
                x = stack[1].decode(stack[1].encode(x))
            torch.testing.assert_close(det[:, t], decode_down(list(stack)[:1], x))
        # the noisy chain, replayed step by step with the same generator, Eqs. (1)-(5)
        g, x = _gen(7), stack[0].encode(x0)
        for t in range(30):
            x = cae_step(stack[1], x, 0.5, g)
            torch.testing.assert_close(a[:, t], stack[0].decode(x))


def test_gibbs_chain_matches_the_exact_distribution_of_a_6_visible_rbm():
    """Visible-state frequencies of long Gibbs chains vs p(v) by enumeration of the 64 states.

    100000 draws (4000 chains x 25 states, 4 Gibbs steps apart, after 20 burn-in steps) give a
    total variation of about 0.01 for a correct sampler; the distribution is far from uniform
    (TV > 0.3), so a sampler that ignored W or a bias would miss by far more than 0.04.
    """
    layer = _rbm(6, 4, seed=0, scale=1.2)
    W, b, c = layer.W.detach(), layer.b.detach(), layer.c.detach()
    states = _all_binary(6)
    p = rbm.log_likelihood(states, W, b, c).exp()  # (64,)
    torch.testing.assert_close(p.sum(), torch.tensor(1.0, dtype=torch.float64))
    v0 = (torch.rand(4000, 6, generator=_gen(1)) < 0.5).double()
    burn = gibbs_chain(W, b, c, v0, n_steps=1, thin=20, generator=_gen(2))[:, -1]
    chain = gibbs_chain(W, b, c, burn, n_steps=25, thin=4, generator=_gen(3))  # (4000, 25, 6)
    codes = (chain.reshape(-1, 6) * (2 ** torch.arange(6, dtype=torch.float64))).sum(1).long()
    freq = torch.bincount(codes, minlength=64).double() / len(codes)
    tv = 0.5 * (freq - p).abs().sum()
    assert tv < 0.04, tv
    assert 0.5 * (p - 1 / 64).abs().sum() > 0.3  # the test can tell a wrong sampler
    # means=True keeps E[v|h]: averaged over the chain, it estimates the same visible marginals
    means = gibbs_chain(W, b, c, burn, n_steps=25, thin=4, generator=_gen(3), means=True)
    torch.testing.assert_close(means.reshape(-1, 6).mean(0), p @ states, atol=0.01, rtol=0)


def test_dbn_samples_match_the_exact_expected_image():
    """E[r] = sum_h P(h) g_1(sigmoid(W_2^T h + c_2)) with P(h) the top RBM's hidden marginal,
    enumerated over its 2^3 hidden states; the sampler's average must agree."""
    bottom, top = _rbm(8, 5, seed=10, scale=1.0), _rbm(5, 3, seed=20, scale=1.5)
    stack = Stack([bottom, top])
    H = _all_binary(3)  # (8, 3)
    with torch.no_grad():
        W2, b2, c2 = top.W, top.b, top.c
        log_p_h = H @ b2 + torch.nn.functional.softplus(H @ W2 + c2).sum(1)  # Eq. (9)'s terms
        p_h = torch.softmax(log_p_h, 0)  # (8,)
        expected = p_h @ bottom.decode(torch.sigmoid(H @ W2 + c2))  # (8,)
        x0 = torch.rand(2000, 8, generator=_gen(4), dtype=torch.float64)
        burn = sample_dbn(stack, x0, n_steps=1, thin=1, generator=_gen(5))  # shape check on a short run
        r = sample_dbn(stack, x0, n_steps=30, thin=2, generator=_gen(5))  # (2000, 30, 8)
        again = sample_dbn(stack, x0, n_steps=30, thin=2, generator=_gen(5))
    assert burn.shape == (2000, 1, 8) and r.shape == (2000, 30, 8)
    assert torch.equal(r, again)
    assert 0.0 <= r.min() and r.max() <= 1.0
    # each image is an average of bounded terms: the mean of 50000 draws (the first 5 states
    # discarded) is within 0.01 for chains that mix in a few steps
    torch.testing.assert_close(r[:, 5:].reshape(-1, 8).mean(0), expected, atol=0.01, rtol=0)
    assert (expected - bottom.decode(torch.full((1, 5), 0.5, dtype=torch.float64))[0]).abs().max() > 0.03


def test_bad_arguments_are_refused():
    ae = AutoEncoder(4, 3)
    x0 = torch.rand(2, 4)
    with pytest.raises(ValueError, match="n_steps"):
        sample_cae([ae], x0, n_steps=0, sigma=0.1, generator=_gen(0))
    with pytest.raises(ValueError, match="sigma"):
        sample_cae([ae], x0, n_steps=1, sigma=-1.0, generator=_gen(0))
    with pytest.raises(ValueError, match="not an RBM"):
        sample_dbn([ae], x0, n_steps=1, generator=_gen(0))
