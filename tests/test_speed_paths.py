"""The closed-form updates of the RBM (pretrain.rbm Eq. 17) and of the autoencoder layer
(pretrain.autoencoder Eqs. 7-10) against references written here: the literal CD formula and
autograd of the loss, gradient by gradient and over steps of a real Trainer (an odd last batch,
momentum and weight decay); the units' second derivative and the KL penalty's gradient against
autograd; the device a speed measurement runs on."""
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from pipelines.bench.runner import run_bench
from pipelines.bench.timing.matmul import bench_device
from pipelines.training import make_trainer, quiet_lightning
from pretrain import penalties as P
from pretrain.autoencoder import AutoEncoder
from pretrain.corruption import corrupt
from pretrain.rbm import RBM
from pretrain.units import UNITS, activation, derivative, second_derivative

quiet_lightning()
D = torch.float64
no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: a second thread only adds synchronisation
    yield
    torch.set_num_threads(threads)


def _fit(layer, X, epochs, batch_size):
    """A real Trainer over ``X`` in file order (53 rows in batches of 10: the last has 3)."""
    make_trainer(None, max_epochs=epochs).fit(layer, DataLoader(TensorDataset(X), batch_size=batch_size))
    return layer


# -- the RBM ---------------------------------------------------------------------------------------
def _literal_cd1(X, W, b, c, *, seed, epochs, batch_size, lr, momentum, final_momentum, switch, wd,
                 sigma=None):
    """CD-1 as Hinton's guide writes it, with the RBM's own Gibbs stream (seed + 1): h0 = P(h|v0),
    h ~ h0, v1 ~ P(v|h) (binary, or Gaussian c + sigma W^T h + sigma noise), h1 = P(h|v1);
    dW = (h0^T v0 - h1^T v1) / B (v / sigma for Gaussian units); SGD with momentum, weight decay on W."""
    g = torch.Generator().manual_seed(seed + 1)
    params, vel = [W.clone(), b.clone(), c.clone()], [torch.zeros_like(W), torch.zeros_like(b), torch.zeros_like(c)]
    s = 1.0 if sigma is None else sigma
    for epoch in range(epochs):
        m = final_momentum if epoch >= switch else momentum
        for i in range(0, len(X), batch_size):
            W, b, c = params
            v0 = X[i:i + batch_size]
            h0 = torch.sigmoid(v0 / s @ W.T + b)
            h = (torch.rand(h0.shape, generator=g, dtype=D) < h0).to(D)
            if sigma is None:
                v1 = (torch.rand(v0.shape, generator=g, dtype=D) < torch.sigmoid(h @ W + c)).to(D)
            else:
                v1 = c + s * h @ W + s * torch.randn(v0.shape, generator=g, dtype=D)
            h1 = torch.sigmoid(v1 / s @ W.T + b)
            B = len(v0)
            ascent = [(h0.T @ (v0 / s) - h1.T @ (v1 / s)) / B, (h0 - h1).mean(0), (v0 - v1).mean(0) / s**2]
            for k, (p, up) in enumerate(zip(params, ascent)):
                vel[k] = m * vel[k] + (-up + (wd * p if k == 0 else 0.0))
                params[k] = p - lr * vel[k]
    return params


@pytest.mark.parametrize("visible", ["bernoulli", "gaussian"])
def test_rbm_trainer_steps_are_the_literal_cd1_update(visible):
    """Two epochs of 6 updates each through a Trainer (manual optimization, closed-form gradient)
    end where the literal formula ends: momentum switched after epoch 1, weight decay on W only."""
    g = torch.Generator().manual_seed(0)
    X = (torch.rand(53, 12, generator=g, dtype=D) < 0.3).to(D) if visible == "bernoulli" else \
        torch.randn(53, 12, generator=g, dtype=D)
    kw = dict(lr=0.05, momentum=0.5, final_momentum=0.9, momentum_switch_epoch=1, weight_decay=1e-3, seed=4)
    extra = {} if visible == "bernoulli" else dict(visible="gaussian", sigma=0.5)
    rbm = RBM(12, 7, **kw, **extra).double()
    W0, b0, c0 = (p.detach().clone() for p in (rbm.W, rbm.b, rbm.c))
    _fit(rbm, X, 2, 10)
    ref = _literal_cd1(X, W0, b0, c0, seed=4, epochs=2, batch_size=10, lr=0.05, momentum=0.5,
                       final_momentum=0.9, switch=1, wd=1e-3, sigma=extra.get("sigma"))
    for name, p, r in zip("Wbc", (rbm.W, rbm.b, rbm.c), ref):
        torch.testing.assert_close(p.detach(), r, rtol=1e-10, atol=1e-12, msg=name)
    assert (rbm.W.detach() - W0).abs().max() > 1e-3  # it trained


def test_rbm_loss_gradient_is_autograd_of_the_surrogate_on_the_same_chain():
    """Eq. (17) against autograd of Eq. (13) with the chain end v_k held fixed (PCD, k = 2: the
    chain end is not the sample the gradient would see under CD-1)."""
    rbm = RBM(9, 5, persistent=True, k=2, seed=1).double()
    x = (torch.rand(7, 9, generator=torch.Generator().manual_seed(2), dtype=D) < 0.5).to(D)
    rbm.loss_terms(x, train=True)  # the chains start at the data
    chains = rbm.chains.clone()
    terms = rbm.loss_terms(x, train=True)
    terms["loss"].backward()
    vk = rbm.chains  # where this update's chains ended
    assert not torch.equal(vk, chains)
    W, b, c = (p.detach().clone().requires_grad_() for p in (rbm.W, rbm.b, rbm.c))

    def fe(v):  # Eq. (2)
        return -(v @ c) - F.softplus(v @ W.T + b).sum(1)

    surrogate = fe(x).mean() - fe(vk).mean()  # Eq. (13)
    assert terms["loss"].item() == pytest.approx(surrogate.item(), rel=1e-12)
    for p, ref in zip((rbm.W, rbm.b, rbm.c), torch.autograd.grad(surrogate, (W, b, c))):
        torch.testing.assert_close(p.grad, ref, rtol=1e-12, atol=1e-14)


def test_rbm_validation_loss_carries_no_graph():
    rbm = RBM(6, 4, seed=0)
    with torch.no_grad():
        terms = rbm.loss_terms(torch.rand(5, 6), train=False)
    assert terms["loss"].grad_fn is None and "pseudo_likelihood" in terms


# -- the autoencoder -------------------------------------------------------------------------------
def _reference_loss(m: AutoEncoder, x, W, b, c, W_prime, train=True):
    """Eq. (6) of pretrain.autoencoder written from the penalties' pure functions, for autograd:
    the corruption, then the higher-order draw, from the layer's training stream (seed * 2)."""
    hp, unit = m.hparams, m.hidden_unit
    g = torch.Generator().manual_seed(2 * hp.seed)
    x_t = corrupt(x, hp.corruption, hp.corruption_level, g) if train and hp.corruption != "none" else x
    W_dec = W.T if W_prime is None else W_prime  # (n_visible, n_hidden)
    z = activation(unit, x_t @ W.T + b) @ W_dec.T + c
    if hp.loss == "cross_entropy":
        loss = F.binary_cross_entropy_with_logits(z, x, reduction="sum") / len(x)
    else:
        loss = 0.5 * ((activation(m.visible_unit, z) - x) ** 2).sum() / len(x)
    h = activation(unit, x @ W.T + b)
    if hp.contraction > 0:
        loss = loss + hp.contraction * P.contraction(x, W, b, unit).mean()
    if hp.higher_order > 0:
        loss = loss + hp.higher_order * P.higher_order(x, W, b, unit, sigma=hp.higher_order_sigma,
                                                       copies=hp.higher_order_copies, generator=g).mean()
    if hp.sparsity_l1 > 0:
        loss = loss + hp.sparsity_l1 * P.sparsity_l1(h).mean()
    if hp.sparsity_kl > 0:
        loss = loss + hp.sparsity_kl * P.sparsity_kl(h, hp.sparsity_target)
    return loss


PENALTIES = [dict(), dict(contraction=0.3), dict(higher_order=0.2, higher_order_sigma=0.3, higher_order_copies=3),
             dict(contraction=0.3, higher_order=0.2, higher_order_copies=2, sparsity_l1=0.05),
             dict(sparsity_kl=0.5, sparsity_target=0.1, sparsity_l1=0.02)]
CONFIGS = [dict(hidden_unit=u, loss=lv[0], visible_unit=lv[1], tied=t, corruption=cr, **pen)
           for u, lv, t, cr, pen in itertools.product(
               UNITS, [("cross_entropy", "sigmoid"), ("mse", "linear")], [True, False], ["none", "masking"],
               PENALTIES)
           if u == "sigmoid" or "sparsity_kl" not in pen]


@pytest.mark.parametrize("kw", CONFIGS, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_autoencoder_gradient_is_autograd_of_the_loss(kw):
    kw = {**kw, "corruption_level": 0.3 if kw["corruption"] != "none" else 0.0}
    m = AutoEncoder(10, 7, seed=3, **kw).double()
    x = torch.rand(9, 10, generator=torch.Generator().manual_seed(1), dtype=D)
    terms = m.loss_terms(x, train=True)
    terms["loss"].backward()
    params = [m.W, m.b, m.c] + ([] if m.W_prime is None else [m.W_prime])
    leaves = [p.detach().clone().requires_grad_() for p in params]
    ref = _reference_loss(m, x, *leaves[:3], leaves[3] if len(leaves) > 3 else None)
    assert terms["loss"].item() == pytest.approx(ref.item(), rel=1e-12)
    for p, r in zip(params, torch.autograd.grad(ref, leaves)):
        torch.testing.assert_close(p.grad, r, rtol=1e-10, atol=1e-13)
        assert p.grad.abs().max() > 0


def test_cae_h_trainer_steps_equal_the_autograd_loop():
    """CAE+H with momentum and weight decay, 2 epochs through a Trainer (an odd last batch of 3),
    against torch.optim.SGD on autograd of the reference loss from the same noise stream."""
    X = torch.rand(53, 12, generator=torch.Generator().manual_seed(5), dtype=D)
    kw = dict(contraction=0.1, higher_order=0.1, higher_order_sigma=0.3, higher_order_copies=4,
              lr=0.05, momentum=0.9, weight_decay=1e-3, seed=2)
    layer = AutoEncoder(12, 6, **kw).double()
    ref_layer = AutoEncoder(12, 6, **kw).double()  # its hparams and initial weights
    params = [p.detach().clone().requires_grad_() for p in (ref_layer.W, ref_layer.b, ref_layer.c)]
    _fit(layer, X, 2, 10)
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-3)
    g = torch.Generator().manual_seed(4)  # the layer's training stream: one draw per step
    for _ in range(2):
        for i in range(0, len(X), 10):
            x = X[i:i + 10]
            W, b, c = params
            a = x @ W.T + b
            loss = F.binary_cross_entropy_with_logits(torch.sigmoid(a) @ W + c, x, reduction="sum") / len(x)
            loss = loss + 0.1 * P.contraction(x, W, b, "sigmoid").mean()
            loss = loss + 0.1 * P.higher_order(x, W, b, "sigmoid", sigma=0.3, copies=4, generator=g).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    for name, p, r in zip("Wbc", (layer.W, layer.b, layer.c), params):
        torch.testing.assert_close(p.detach(), r.detach(), rtol=1e-10, atol=1e-12, msg=name)
    assert (layer.W.detach() - ref_layer.W.detach()).abs().max() > 1e-3  # it trained


def test_autoencoder_evaluation_draws_from_its_own_stream_and_builds_no_graph():
    m = AutoEncoder(10, 6, higher_order=0.1, seed=5)
    x = torch.rand(8, 10, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ev = m.loss_terms(x, train=False)
    assert ev["loss"].grad_fn is None
    g = torch.Generator().manual_seed(2 * 5 + 1)  # the eval stream
    want = 0.1 * P.higher_order(x, m.W, m.b, "sigmoid", sigma=0.1, copies=4, generator=g).mean()
    assert ev["higher_order"].item() == pytest.approx(want.item(), rel=1e-5)


# -- pieces of the closed forms --------------------------------------------------------------------
@pytest.mark.parametrize("unit", UNITS)
def test_second_derivative_is_autograd_of_the_first(unit):
    a = torch.linspace(-3, 3, 41, dtype=D).add_(0.013).requires_grad_()  # no kink at relu's 0
    d = derivative(unit, a, activation(unit, a))
    # relu's and linear's s' are piecewise constant (no graph): s'' = 0 wherever it is defined
    ref = torch.autograd.grad(d.sum(), a)[0] if d.requires_grad else torch.zeros_like(a)
    a = a.detach()
    torch.testing.assert_close(second_derivative(unit, a, activation(unit, a)), ref, rtol=1e-12, atol=1e-14)


def test_kl_gradient_is_autograd_and_zero_where_the_clamp_holds():
    h = torch.rand(6, 5, generator=torch.Generator().manual_seed(3), dtype=D) * 0.5
    h[:, 2] = 0.0  # a dead unit: rho_hat = 0 is clamped to KL_EPS
    leaf = h.clone().requires_grad_()
    (ref,) = torch.autograd.grad(P.sparsity_kl(leaf, 0.1), leaf)
    got = P.sparsity_kl_gradient(h, 0.1) / len(h)  # d/dh_bj = (d/d rho_hat_j) / B
    torch.testing.assert_close(got.expand_as(h), ref, rtol=1e-12, atol=0)
    assert got[2] == 0 and got.abs().sum() > 0


# -- the device of a measurement -------------------------------------------------------------------
def test_cpu_and_auto_measure_on_the_cpu_without_a_gpu():
    assert bench_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert bench_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="accelerator must be one of cpu, gpu, auto, got 'tpu'"):
        bench_device("tpu")


@no_gpu
def test_a_gpu_speed_run_without_a_gpu_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(ValueError, match=r"--accelerator gpu: no CUDA GPU.*use --accelerator cpu"):
        bench_device("gpu")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        run_bench("speed", profile="tiny", root=tmp_path, accelerator="gpu", log=lambda m: None)
    assert not (tmp_path / "bench").exists()  # no folder, no store, no cell


def test_higher_order_gradient_written_over_u_equals_the_one_with_temporaries():
    g = torch.Generator().manual_seed(0)
    a, u = 2 * torch.randn(5, 7, generator=g), torch.randn(3, 5, 7, generator=g)
    h = torch.sigmoid(a)
    d = derivative("sigmoid", a, h)
    curv, norms = second_derivative("sigmoid", a, h, d), torch.rand(7, generator=g) + 0.5
    fresh = P.higher_order_gradient(a, d, curv, u, norms, "sigmoid", sigma=0.3, weight=0.7)
    u_reused = u.clone()
    reused = P.higher_order_gradient(a, d, curv, u_reused, norms, "sigmoid", sigma=0.3, weight=0.7, reuse_u=True)
    for x, y in zip(fresh, reused):
        assert torch.equal(x, y)
    assert not torch.equal(u_reused, u)  # written over, as documented
    assert fresh[1].abs().max() > 1e-3 and fresh[2].abs().max() > 1e-3
