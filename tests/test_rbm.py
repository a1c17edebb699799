"""RBM energies, samplers and likelihoods against brute-force enumeration; CD/PCD training."""
import math

import lightning.pytorch as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from pretrain.rbm import (
    RBM,
    energy,
    free_energy,
    gibbs_step,
    log_likelihood,
    log_partition,
    pseudo_likelihood,
    sample_h_given_v,
    sample_v_given_h,
)

D = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # these models are tiny: a second OpenMP thread only adds synchronisation, which costs
    # tens of milliseconds per op when the cores are shared with other processes
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _states(n):
    return torch.tensor([[(s >> (n - 1 - i)) & 1 for i in range(n)] for s in range(2**n)], dtype=D)


def _tiny(n_visible=6, n_hidden=4, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    W = scale * torch.randn(n_hidden, n_visible, generator=g, dtype=D)
    b = torch.randn(n_hidden, generator=g, dtype=D)
    c = torch.randn(n_visible, generator=g, dtype=D)
    return W, b, c


def _trainer(epochs, **kw):
    return L.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", **kw)


def _toy_data(n=1000, noise=0.05, seed=0):
    """Two 6-bit prototypes, each bit flipped with probability ``noise``."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.tensor([[1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]], dtype=torch.float32)
    x = protos[torch.randint(2, (n,), generator=g)]
    flip = (torch.rand(x.shape, generator=g) < noise).float()
    return (x - flip).abs()


# -- energies and exact likelihoods --------------------------------------------------------------
def test_free_energy_is_minus_log_sum_over_hidden_states():
    W, b, c = _tiny()
    v, h = _states(6), _states(4)
    E = torch.stack([energy(v, hj.expand(64, 4), W, b, c) for hj in h], 1)  # (64, 16)
    assert torch.allclose(free_energy(v, W, b, c), -torch.logsumexp(-E, 1), atol=1e-12)


@pytest.mark.parametrize("n_visible,n_hidden", [(6, 4), (4, 6)])  # enumerate h, then v
def test_log_partition_matches_joint_enumeration_and_probabilities_sum_to_one(n_visible, n_hidden):
    W, b, c = _tiny(n_visible, n_hidden)
    v, h = _states(n_visible), _states(n_hidden)
    joint = torch.stack([energy(v, hj.expand(len(v), n_hidden), W, b, c) for hj in h], 1)
    log_z = log_partition(W, b, c)
    assert torch.allclose(log_z, torch.logsumexp(-joint.flatten(), 0), atol=1e-12)
    assert math.isclose(log_likelihood(v, W, b, c).exp().sum().item(), 1.0, abs_tol=1e-12)


def test_log_partition_refuses_large_models():
    W, b, c = _tiny(30, 21)
    with pytest.raises(ValueError, match="2\\^21 hidden"):
        log_partition(W, b, c)


def test_gaussian_free_energy_against_enumerated_energy():
    W, b, c = _tiny(5, 4)
    sigma = 0.7
    v = torch.randn(8, 5, generator=torch.Generator().manual_seed(1), dtype=D)
    E = torch.stack([energy(v, hj.expand(8, 4), W, b, c, "gaussian", sigma) for hj in _states(4)], 1)
    assert torch.allclose(free_energy(v, W, b, c, "gaussian", sigma), -torch.logsumexp(-E, 1), atol=1e-12)


def test_gaussian_log_partition_against_numeric_integration():
    W, b, c = _tiny(2, 3, scale=0.5)
    sigma = 0.8
    t = torch.linspace(-9, 9, 1201, dtype=D)
    grid = torch.cartesian_prod(t, t)  # (1201^2, 2)
    step = (t[1] - t[0]).item()
    integral = torch.logsumexp(-free_energy(grid, W, b, c, "gaussian", sigma), 0) + 2 * math.log(step)
    assert math.isclose(log_partition(W, b, c, "gaussian", sigma).item(), integral.item(), abs_tol=1e-6)


def test_surrogate_gradient_with_exact_model_expectation_is_the_likelihood_gradient():
    W, b, c = _tiny()
    W.requires_grad_(True)
    v_all = _states(6)
    data = v_all[torch.tensor([3, 17, 40, 40, 63])]
    (-log_likelihood(data, W, b, c).mean()).backward()
    exact = W.grad.clone()
    W.grad = None
    p = log_likelihood(v_all, W, b, c).exp().detach()  # model distribution over all 64 states
    (free_energy(data, W, b, c).mean() - (p * free_energy(v_all, W, b, c)).sum()).backward()
    assert torch.allclose(W.grad, exact, atol=1e-12)


# -- sampling -----------------------------------------------------------------------------------
def test_sampled_hidden_means_approach_mean_field():
    W, b, c = _tiny()
    v = _states(6)[torch.tensor([5, 22, 60])]
    n = 20000
    g = torch.Generator().manual_seed(0)
    _, mean, h = sample_h_given_v(v.repeat(n, 1), W, b, generator=g)
    p = mean[:3]
    freq = h.view(n, 3, 4).mean(0)
    assert torch.all((freq - p).abs() <= 4.5 * (p * (1 - p) / n).sqrt() + 1e-9)


def test_sampled_gaussian_visibles_have_the_conditional_mean_and_sigma():
    W, b, c = _tiny(5, 4)
    sigma, n = 0.5, 20000
    h = _states(4)[torch.tensor([6])].repeat(n, 1)
    _, mean, v = sample_v_given_h(h, W, c, generator=torch.Generator().manual_seed(0),
                                  visible="gaussian", sigma=sigma)
    assert torch.allclose(mean[0], c + sigma * (h[0] @ W))
    assert torch.all((v.mean(0) - mean[0]).abs() < 4.5 * sigma / math.sqrt(n))
    assert torch.all((v.std(0) - sigma).abs() < 0.02)


def test_gibbs_chain_reaches_the_model_distribution():
    W, b, c = _tiny(4, 3, scale=0.7)
    g = torch.Generator().manual_seed(0)
    v = torch.zeros(4000, 4, dtype=D)
    for _ in range(30):
        v = gibbs_step(v, W, b, c, generator=g)
    codes = (v * torch.tensor([8.0, 4, 2, 1], dtype=D)).sum(1).long()
    freq = torch.bincount(codes, minlength=16).to(D) / len(v)
    p = log_likelihood(_states(4), W, b, c).exp()
    assert torch.all((freq - p).abs() <= 4.5 * (p * (1 - p) / len(v)).sqrt() + 1e-3)


# -- pseudo-likelihood --------------------------------------------------------------------------
def test_exact_pseudo_likelihood_matches_brute_force_conditionals():
    W, b, c = _tiny()
    v_all = _states(6)
    logp = log_likelihood(v_all, W, b, c)  # (64,)
    brute = torch.zeros(64, dtype=D)
    for i in range(6):
        flipped = (torch.arange(64) ^ (1 << (5 - i)))  # index of v with bit i flipped
        brute += logp - torch.logaddexp(logp, logp[flipped])  # log P(v_i | v_-i)
    assert torch.allclose(pseudo_likelihood(v_all, W, b, c), brute, atol=1e-12)
    # chunking the (rows, n_visible, n_hidden) tensor does not change the result
    assert torch.allclose(pseudo_likelihood(v_all, W, b, c, chunk_elements=50), brute, atol=1e-12)


def test_stochastic_pseudo_likelihood_is_unbiased():
    W, b, c = _tiny()
    v = _states(6)[torch.tensor([0, 21, 42, 63])]
    exact = pseudo_likelihood(v, W, b, c)
    m = 40000
    estimate = pseudo_likelihood(v, W, b, c, torch.Generator().manual_seed(0), n_flips=m)
    # spread of one draw n_visible * log P(v_i|v_-i), i uniform, from the exact per-bit terms
    terms = _per_bit_terms(v, W, b, c)  # (4, 6)
    sd = (6 * terms).std(1, unbiased=False)
    assert torch.all((estimate - exact).abs() <= 4.5 * sd / math.sqrt(m) + 1e-9)
    with pytest.raises(ValueError, match="Generator"):
        pseudo_likelihood(v, W, b, c, n_flips=3)


def _per_bit_terms(v, W, b, c):
    fe = free_energy(v, W, b, c)
    out = []
    for i in range(v.shape[1]):
        vf = v.clone()
        vf[:, i] = 1 - vf[:, i]
        out.append(torch.nn.functional.logsigmoid(free_energy(vf, W, b, c) - fe))
    return torch.stack(out, 1)


# -- training -----------------------------------------------------------------------------------
def _average_ll(rbm, x):
    with torch.no_grad():
        W, b, c = rbm.W.double(), rbm.b.double(), rbm.c.double()
        return log_likelihood(x.double(), W, b, c).mean().item()


@pytest.mark.parametrize("persistent", [False, True])
def test_training_raises_the_exact_log_likelihood(persistent):
    torch.manual_seed(0)
    x = _toy_data()
    # PCD oscillates at lr 0.1 with momentum 0.9 on this toy (Tieleman 2008 uses small, decaying
    # rates); CD-1 takes Hinton's settings
    lr, final = (0.05, 0.5) if persistent else (0.1, 0.9)
    rbm = RBM(6, 4, persistent=persistent, lr=lr, final_momentum=final, momentum_switch_epoch=2, seed=0)
    before = _average_ll(rbm, x)
    loader = DataLoader(TensorDataset(x), batch_size=20, shuffle=False)
    _trainer(6).fit(rbm, loader)  # 300 updates
    after = _average_ll(rbm, x)
    # entropy of the toy distribution is ~1.88 nats; the initial model is ~6 log 2 = 4.16 nats
    assert before < -4.0
    assert after > before + 1.2, (before, after)


def test_persistent_chains_are_a_checkpointed_buffer_that_validation_leaves_alone():
    x = _toy_data(n=110)
    rbm = RBM(6, 4, persistent=True, seed=3)
    loader = DataLoader(TensorDataset(x), batch_size=20)  # last batch of 10 rows
    trainer = _trainer(2)
    trainer.fit(rbm, loader)
    assert "chains" in rbm.state_dict() and rbm.chains.shape == (20, 6)
    assert set(rbm.chains.unique().tolist()) <= {0.0, 1.0}
    before = rbm.chains.clone()
    metrics = trainer.validate(rbm, loader, verbose=False)[0]
    assert torch.equal(rbm.chains, before)
    assert -6 * math.log(2) * 3 < metrics["val/pseudo_likelihood"] < 0
    clone = RBM(6, 4, persistent=True, seed=99)
    clone.load_state_dict(rbm.state_dict())
    assert torch.equal(clone.chains, rbm.chains) and torch.equal(clone.W, rbm.W)


def test_momentum_switch_and_weight_decay_on_weights_only():
    rbm = RBM(6, 4, momentum=0.5, final_momentum=0.9, momentum_switch_epoch=1, weight_decay=1e-3)
    trainer = _trainer(2)
    trainer.fit(rbm, DataLoader(TensorDataset(_toy_data(n=40)), batch_size=20))
    groups = trainer.optimizers[0].param_groups
    assert [g["momentum"] for g in groups] == [0.9, 0.9]
    assert [g["weight_decay"] for g in groups] == [1e-3, 0.0]
    assert rbm.momentum_at(0) == 0.5 and rbm.momentum_at(1) == 0.9


def test_same_seed_gives_identical_weights_and_dtypes_agree():
    x = _toy_data(n=200)
    weights = []
    for _ in range(2):
        rbm = RBM(6, 5, k=2, seed=7)
        _trainer(2).fit(rbm, DataLoader(TensorDataset(x), batch_size=25))
        weights.append(rbm.W.detach().clone())
    assert torch.equal(weights[0], weights[1])
    other = RBM(6, 5, k=2, seed=8)
    _trainer(2).fit(other, DataLoader(TensorDataset(x), batch_size=25))
    assert not torch.allclose(other.W, weights[0])
    W, b, c = _tiny(6, 5)
    v = _states(6)
    f64 = free_energy(v, W, b, c)
    f32 = free_energy(v.float(), W.float(), b.float(), c.float())
    assert torch.allclose(f32.double(), f64, rtol=1e-5, atol=1e-5)


def test_surrogate_value_and_gradient_on_a_fixed_chain_end():
    # loss = mean F(x) - mean F(v_k); its W-gradient is the CD estimate <h v>_chain - <h v>_data
    rbm = RBM(6, 4, k=1, seed=1)
    x = _toy_data(n=8)
    terms = rbm.loss_terms(x, train=True)
    terms["loss"].backward()
    g = torch.Generator().manual_seed(rbm.seed + 1)  # the chain's own generator, replayed
    h = (torch.rand(8, 4, generator=g) < torch.sigmoid(x @ rbm.W.T + rbm.b)).float()
    vk = (torch.rand(8, 6, generator=g) < torch.sigmoid(h @ rbm.W + rbm.c)).float()
    hd, hk = torch.sigmoid(x @ rbm.W.T + rbm.b), torch.sigmoid(vk @ rbm.W.T + rbm.b)
    expected = (hk.T @ vk - hd.T @ x) / 8
    assert torch.allclose(rbm.W.grad, expected.detach(), atol=1e-6)
    assert torch.allclose(rbm.c.grad, (vk - x).mean(0), atol=1e-6)
    rec = ((x - torch.sigmoid(hd @ rbm.W + rbm.c)) ** 2).sum(1).mean()
    assert math.isclose(terms["rec"].item(), rec.item(), rel_tol=1e-5)


def test_layer_contract_for_gaussian_units():
    rbm = RBM(5, 3, visible="gaussian", sigma=0.5, seed=2)
    x = torch.randn(4, 5)
    assert rbm.visible_unit == "linear" and rbm.hidden_unit == "sigmoid"
    assert torch.allclose(rbm.encode(x), torch.sigmoid(x @ rbm.encoder_weight.T + rbm.encoder_bias))
    h = rbm.encode(x)
    assert torch.allclose(rbm.decode(h), h @ rbm.decoder_weight.T + rbm.decoder_bias)
    assert rbm.decoder_weight.shape == (5, 3)
    assert "pseudo_likelihood" not in rbm.loss_terms(x, train=False)


# -- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,bad", [
    (dict(k=0), "k"), (dict(k=1.5), "k"), (dict(visible="poisson"), "visible"), (dict(lr=0.0), "lr"),
    (dict(momentum=1.2), "momentum"), (dict(weight_decay=-1e-4), "weight_decay"),
    (dict(sigma=-1.0), "sigma"), (dict(n_hidden=0), "n_hidden"), (dict(final_momentum=-0.1), "final_momentum"),
])
def test_bad_hyperparameters_name_the_value(kwargs, bad):
    args = dict(n_visible=6, n_hidden=4) | kwargs
    with pytest.raises(ValueError, match=bad) as err:
        RBM(args.pop("n_visible"), args.pop("n_hidden"), **args)
    assert repr(next(iter(kwargs.values()))) in str(err.value)


def test_inputs_outside_unit_interval_are_refused():
    rbm = RBM(6, 4)
    with pytest.raises(ValueError, match=r"\[0, 1\].*1\.5"):
        rbm.loss_terms(torch.full((3, 6), 1.5), train=True)
    with pytest.raises(ValueError, match="shape"):
        rbm.loss_terms(torch.zeros(3, 5), train=True)
