"""RBMs with Gaussian (linear, unit-variance) hidden units, pretrain.rbm Eqs. (18)-(20): the free
energy against numerical integration over h, exact likelihoods, the conditional, the CD gradient
against autograd of Eq. (13), training, the layer contract and the refusals."""
import math

import lightning.pytorch as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from finetune.unroll import unroll_autoencoder
from pretrain.rbm import (
    RBM,
    energy,
    free_energy,
    gibbs_step,
    log_likelihood,
    log_partition,
    pseudo_likelihood,
    sample_h_given_v,
)
from pretrain.stack import Stack

D = torch.float64
G = "gaussian"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _states(n):
    return torch.tensor([[(s >> (n - 1 - i)) & 1 for i in range(n)] for s in range(2**n)], dtype=D)


def _tiny(n_visible=5, n_hidden=2, seed=0, scale=0.5):
    g = torch.Generator().manual_seed(seed)
    W = scale * torch.randn(n_hidden, n_visible, generator=g, dtype=D)
    b = torch.randn(n_hidden, generator=g, dtype=D)
    c = torch.randn(n_visible, generator=g, dtype=D)
    return W, b, c


def test_free_energy_is_minus_log_integral_of_the_joint_over_h():
    W, b, c = _tiny()
    v = _states(5)[torch.tensor([0, 7, 19, 31])]
    t = torch.linspace(-12, 12, 1601, dtype=D)
    grid = torch.cartesian_prod(t, t)  # (1601^2, 2): h over R^2
    step = (t[1] - t[0]).item()
    for row in v:
        E = energy(row.expand(len(grid), 5), grid, W, b, c, hidden=G)  # Eq. (18)
        integral = -(torch.logsumexp(-E, 0) + 2 * math.log(step))
        assert math.isclose(free_energy(row[None], W, b, c, hidden=G).item(), integral.item(), abs_tol=1e-8)


def test_exact_likelihood_sums_to_one_and_matches_the_joint_integral():
    W, b, c = _tiny(4, 3)
    v = _states(4)
    logp = log_likelihood(v, W, b, c, hidden=G)
    assert math.isclose(logp.exp().sum().item(), 1.0, abs_tol=1e-12)
    # log Z from the joint: integrate h numerically per unit (the joint factorises over j given v)
    t = torch.linspace(-14, 14, 4001, dtype=D)
    step = (t[1] - t[0]).item()
    a = v @ W.T + b  # (16, 3)
    per_unit = torch.logsumexp(-0.5 * (t - b[:, None]) ** 2 + (a - b)[:, :, None] * t, 2) + math.log(step)
    log_z = torch.logsumexp(v @ c + per_unit.sum(1), 0)
    assert math.isclose(log_partition(W, b, c, hidden=G).item(), log_z.item(), abs_tol=1e-8)


def test_hidden_conditional_is_a_unit_variance_normal_at_the_preactivation():
    W, b, c = _tiny(5, 3)
    v = _states(5)[torch.tensor([11])].repeat(40000, 1)
    a, mean, h = sample_h_given_v(v, W, b, generator=torch.Generator().manual_seed(0), hidden=G)
    assert torch.equal(mean, a) and torch.allclose(a[0], W @ v[0] + b)
    assert torch.all((h.mean(0) - a[0]).abs() < 4.5 / math.sqrt(len(v)))
    assert torch.all((h.std(0) - 1.0).abs() < 0.02)


def test_gibbs_chain_reaches_the_model_distribution():
    W, b, c = _tiny(4, 2, scale=0.7)
    g = torch.Generator().manual_seed(0)
    v = torch.zeros(4000, 4, dtype=D)
    for _ in range(30):
        v = gibbs_step(v, W, b, c, generator=g, hidden=G)
    codes = (v * torch.tensor([8.0, 4, 2, 1], dtype=D)).sum(1).long()
    freq = torch.bincount(codes, minlength=16).to(D) / len(v)
    p = log_likelihood(_states(4), W, b, c, hidden=G).exp()
    assert torch.all((freq - p).abs() <= 4.5 * (p * (1 - p) / len(v)).sqrt() + 1e-3)


def test_pseudo_likelihood_matches_brute_force_conditionals():
    W, b, c = _tiny(5, 3)
    v_all = _states(5)
    logp = log_likelihood(v_all, W, b, c, hidden=G)
    brute = torch.zeros(32, dtype=D)
    for i in range(5):
        flipped = torch.arange(32) ^ (1 << (4 - i))
        brute += logp - torch.logaddexp(logp, logp[flipped])
    assert torch.allclose(pseudo_likelihood(v_all, W, b, c, hidden=G), brute, atol=1e-12)


def test_cd_gradient_is_autograd_of_the_surrogate_on_a_fixed_chain_end():
    # Eq. (17) with the means of Eq. (20): the b of dF/db = -(a - b) cancels between the two halves
    rbm = RBM(6, 3, hidden=G, k=1, seed=4)
    with torch.no_grad():
        rbm.b.copy_(torch.tensor([0.5, -1.0, 2.0]))  # a bias that would show if it did not cancel
    x = (torch.rand(8, 6, generator=torch.Generator().manual_seed(1)) < 0.5).float()
    terms = rbm.loss_terms(x, train=True)
    terms["loss"].backward()
    g = torch.Generator().manual_seed(rbm.seed + 1)  # the chain's own generator, replayed
    with torch.no_grad():
        h = torch.randn(8, 3, generator=g) + (x @ rbm.W.T + rbm.b)
        vk = (torch.rand(8, 6, generator=g) < torch.sigmoid(h @ rbm.W + rbm.c)).float()
    W, b, c = (p.detach().clone().requires_grad_(True) for p in (rbm.W, rbm.b, rbm.c))
    surrogate = free_energy(x, W, b, c, hidden=G).mean() - free_energy(vk, W, b, c, hidden=G).mean()
    surrogate.backward()
    assert math.isclose(terms["loss"].item(), surrogate.item(), rel_tol=1e-5, abs_tol=1e-5)
    for mine, ref in ((rbm.W, W), (rbm.b, b), (rbm.c, c)):
        torch.testing.assert_close(mine.grad, ref.grad, rtol=1e-5, atol=1e-6)


def test_training_raises_the_exact_log_likelihood():
    g = torch.Generator().manual_seed(0)
    protos = torch.tensor([[1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]], dtype=torch.float32)
    x = protos[torch.randint(2, (1000,), generator=g)]
    x = (x - (torch.rand(x.shape, generator=g) < 0.05).float()).abs()

    def ll(rbm):
        with torch.no_grad():
            return log_likelihood(x.double(), rbm.W.double(), rbm.b.double(), rbm.c.double(), hidden=G).mean().item()

    rbm = RBM(6, 2, hidden=G, lr=0.02, seed=0)
    before = ll(rbm)
    L.Trainer(max_epochs=6, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, accelerator="cpu").fit(rbm, DataLoader(TensorDataset(x), batch_size=20))
    after = ll(rbm)
    assert before < -4.0  # ~ 6 log 2 = 4.16 nats at the start
    assert after > before + 1.2, (before, after)


def test_layer_contract_gives_a_linear_code_that_unrolls_linear():
    rbm = RBM(6, 3, hidden=G, seed=2)
    x = torch.rand(4, 6)
    assert rbm.hidden_unit == "linear" and rbm.visible_unit == "sigmoid"
    torch.testing.assert_close(rbm.encode(x), x @ rbm.W.T + rbm.b)
    bottom = RBM(5, 6, seed=3)
    encoder, decoder = unroll_autoencoder(Stack([bottom, rbm]))
    v = torch.rand(4, 5)
    code = encoder(v)
    torch.testing.assert_close(code, torch.sigmoid(v @ bottom.W.T + bottom.b) @ rbm.W.T + rbm.b)
    h = torch.sigmoid(code @ rbm.W + rbm.c)
    torch.testing.assert_close(decoder(code), torch.sigmoid(h @ bottom.W + bottom.c))


@pytest.mark.parametrize("kwargs,bad", [
    (dict(hidden="poisson"), "hidden"),
    (dict(hidden=G, visible="gaussian"), "visible='bernoulli'"),
    (dict(hidden=G, centred=True), "centred"),
])
def test_bad_settings_are_refused_with_the_fix(kwargs, bad):
    with pytest.raises(ValueError, match=bad):
        RBM(6, 3, **kwargs)


def test_functions_refuse_gaussian_hidden_with_gaussian_visible():
    W, b, c = _tiny(4, 2)
    with pytest.raises(ValueError, match="Gaussian-Gaussian"):
        free_energy(torch.zeros(1, 4, dtype=D), W, b, c, "gaussian", 1.0, hidden=G)
    with pytest.raises(ValueError, match="Gaussian-Gaussian"):
        log_partition(W, b, c, "gaussian", 1.0, hidden=G)
