"""Samplers: the CAE chain's Jacobian-shaped noise (empirical covariance, rank), its determinism;
block Gibbs against the exact distribution of a 6-visible RBM; a DBN's samples against an exact
expectation by enumeration."""
import math

import pytest
import torch

from pretrain import rbm
from pretrain.autoencoder import AutoEncoder
from pretrain.rbm import RBM
from pretrain.sampling import (
    cae_step,
    decode_down,
    gibbs_chain,
    jacobian_noise,
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


@pytest.mark.parametrize("unit", ["sigmoid", "tanh"])
def test_jacobian_noise_has_covariance_sigma2_JJt_and_the_rank_of_J(unit):
    """eps = J z, z ~ N(0, sigma^2 I): Cov(eps) = sigma^2 J J^T. With 5 hidden and 3 visible
    units J J^T has rank 3, so isotropic noise in the code space (a classic mistake) fails."""
    W, b = _randn(5, 3, seed=0), _randn(5, seed=1)
    x = _randn(1, 3, seed=2)
    sigma, N = 0.7, 200_000
    eps = jacobian_noise(x.expand(N, 3), W, b, unit, sigma, _gen(3))  # (N, 5)
    f = (lambda v: torch.sigmoid(v @ W.T + b)) if unit == "sigmoid" else (lambda v: torch.tanh(v @ W.T + b))
    J = torch.autograd.functional.jacobian(f, x)[0, :, 0, :]  # (5, 3) by autograd
    C = sigma**2 * J @ J.T
    C_hat = eps.T @ eps / N  # the mean is known to be 0
    # each entry of a Gaussian sample covariance has std sqrt((C_ii C_jj + C_ij^2) / N):
    # allow 5 of them (a false alarm over 25 entries has probability < 1e-5)
    tol = 5 * torch.sqrt((torch.outer(C.diagonal(), C.diagonal()) + C**2) / N)
    assert ((C_hat - C).abs() <= tol).all(), (C_hat - C).abs() / tol
    assert eps.mean(0).abs().max() < 5 * C.diagonal().max().sqrt() / math.sqrt(N)
    eig = torch.linalg.eigvalsh(C_hat)  # ascending
    assert eig[:2].abs().max() < 1e-12 * eig[-1]  # the noise lies in the 3-D column space of J
    assert eig[2] > 1e-4 * eig[-1]


def test_cae_step_without_noise_is_encode_of_decode_and_noise_scales_with_sigma():
    ae = AutoEncoder(6, 4, seed=0).double()
    h = torch.rand(8, 4, generator=_gen(1), dtype=torch.float64)
    torch.testing.assert_close(cae_step(ae, h, 0.0, _gen(2)), ae.encode(ae.decode(h)), rtol=0, atol=0)
    d1 = cae_step(ae, h, 0.1, _gen(2)) - ae.encode(ae.decode(h))
    d2 = cae_step(ae, h, 0.2, _gen(2)) - ae.encode(ae.decode(h))
    torch.testing.assert_close(d2, 2 * d1)  # same z, twice the sigma: J z is linear in z


def test_cae_chain_is_deterministic_per_seed_stays_in_range_and_decodes_down_the_stack():
    stack = Stack([AutoEncoder(10, 6, seed=0), AutoEncoder(6, 3, seed=1)]).double()
    x0 = torch.rand(4, 10, generator=_gen(0), dtype=torch.float64)
    with torch.no_grad():
        a = sample_cae(stack, x0, n_steps=30, sigma=0.5, generator=_gen(7))
        b = sample_cae(stack, x0, n_steps=30, sigma=0.5, generator=_gen(7))
        c = sample_cae(stack, x0, n_steps=30, sigma=0.5, generator=_gen(8))
        codes = sample_cae(stack, x0, n_steps=30, sigma=0.5, generator=_gen(7), space="code")
    assert a.shape == (4, 30, 10) and codes.shape == (4, 30, 3)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert torch.isfinite(codes).all() and 0.0 <= a.min() and a.max() <= 1.0  # sigmoid decoders
    # the codes stay near the sigmoid's range: the noise J z has std <= sigma ||W||_2 / 4 per unit
    bound = 0.5 * torch.linalg.matrix_norm(stack[1].W, 2) / 4
    assert -6 * bound < codes.min() and codes.max() < 1 + 6 * bound
    torch.testing.assert_close(a, decode_down(list(stack), codes))
    # the chain moves: consecutive states differ, and sigma = 0 is the deterministic iteration
    assert (a[:, 1:] - a[:, :-1]).abs().mean() > 1e-3
    with torch.no_grad():
        det = sample_cae(stack, x0, n_steps=3, sigma=0.0, generator=_gen(0), space="code")
        h = stack.encode(x0)
        for t in range(3):
            h = stack[1].encode(stack[1].decode(h))
            torch.testing.assert_close(det[:, t], h)


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
    with pytest.raises(ValueError, match="space"):
        sample_cae([ae], x0, n_steps=1, sigma=0.1, generator=_gen(0), space="pixels")
    with pytest.raises(ValueError, match="not an RBM"):
        sample_dbn([ae], x0, n_steps=1, generator=_gen(0))
