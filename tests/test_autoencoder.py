"""The autoencoder layer: its contract, its objective term by term, and what training does.

Training tests use real Lightning Trainers on scikit-learn's digits (X / 16, in [0, 1]) with
full-batch steps: 1797 x 64 is small, and full batches make the optimum reachable in ~150 steps.
"""
import copy
import math

import lightning.pytorch as L
import numpy as np
import pytest
import scipy.linalg
import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader

from pretrain import penalties as P
from pretrain.autoencoder import AutoEncoder, glorot_uniform
from pretrain.corruption import corrupt
from pretrain.layer import Layer


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # matrices of 64 columns: a second thread gains nothing and, when other test processes share
    # the cores, its spin-waiting made a 150-step fit ten times slower
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def digits():
    X = torch.tensor(load_digits().data / 16.0, dtype=torch.float32)  # (1797, 64) in [0, 1]
    perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(0))
    return X[perm[:1500]], X[perm[1500:]]  # train, held out


def fit(layer: Layer, x: torch.Tensor, steps: int, val: torch.Tensor | None = None) -> L.Trainer:
    """One epoch of ``steps`` full-batch steps, then a validation on ``val`` if given.

    The loader yields the whole tensor ``steps`` times (one epoch; Lightning's per-epoch
    overhead dominated when each step was an epoch).
    """
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        **({} if val is not None else {"limit_val_batches": 0}))
    loader = DataLoader([x] * steps, batch_size=None)
    val_loader = None if val is None else DataLoader([val], batch_size=None)
    trainer.fit(layer, loader, val_loader)
    return trainer


def rand(*shape, seed=0, dtype=torch.float32):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# -- the contract ------------------------------------------------------------------------
def test_shapes_and_contract():
    m = AutoEncoder(12, 5)
    x = rand(7, 12)
    assert m.encode(x).shape == (7, 5) and m.decode(m.encode(x)).shape == (7, 12)
    assert m.reconstruct(x).shape == (7, 12) and m(x).shape == (7, 5)
    assert (m.n_visible, m.n_hidden) == (12, 5)
    assert m.encoder_weight is m.W and m.encoder_bias is m.b and m.decoder_bias is m.c
    assert m.W.shape == (5, 12) and m.b.shape == (5,) and m.c.shape == (12,)
    assert m.hidden_unit == "sigmoid" and m.visible_unit == "sigmoid"
    h = m.encode(x)
    torch.testing.assert_close(h, torch.sigmoid(x @ m.W.T + m.b))
    torch.testing.assert_close(m.decode(h), torch.sigmoid(h @ m.W + m.c))


def test_tied_decoder_weight_is_w_transposed():
    m = AutoEncoder(12, 5, tied=True)
    assert m.tied and m.W_prime is None
    assert m.decoder_weight.shape == (12, 5)
    assert m.decoder_weight.data_ptr() == m.W.data_ptr()  # a view: one parameter, not a copy
    assert torch.equal(m.decoder_weight, m.W.T)
    assert {n for n, _ in m.named_parameters()} == {"W", "b", "c"}


def test_untied_has_its_own_decoder_weight():
    m = AutoEncoder(12, 5, tied=False, hidden_unit="tanh", visible_unit="linear", loss="mse")
    assert not m.tied and m.decoder_weight is m.W_prime
    assert m.W_prime.shape == (12, 5)
    assert {n for n, _ in m.named_parameters()} == {"W", "b", "c", "W_prime"}
    x = rand(3, 12)
    torch.testing.assert_close(m.decode(m.encode(x)), torch.tanh(x @ m.W.T + m.b) @ m.W_prime.T + m.c)


def test_init_depends_on_the_seed_alone_and_is_glorot_uniform():
    torch.manual_seed(123)
    before = torch.rand(1)
    a, b = AutoEncoder(64, 32, seed=3), AutoEncoder(64, 32, seed=3)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(1), before)  # the global RNG was not touched
    assert torch.equal(a.W, b.W) and not torch.equal(a.W, AutoEncoder(64, 32, seed=4).W)
    bound = math.sqrt(6 / 96)
    assert 0.95 * 4 * bound < a.W.abs().max() <= 4 * bound  # sigmoid: 4x Glorot's bound
    t = AutoEncoder(64, 32, hidden_unit="tanh", visible_unit="linear", loss="mse", seed=3)
    assert 0.95 * bound < t.W.abs().max() <= bound
    assert abs(t.W.mean().item()) < 0.05 * bound  # centred
    assert torch.count_nonzero(a.b) == 0 and torch.count_nonzero(a.c) == 0
    g = torch.Generator().manual_seed(3)
    assert torch.equal(a.W, glorot_uniform(32, 64, "sigmoid", g))


# -- the objective -------------------------------------------------------------------------
def test_cross_entropy_from_logits_equals_the_naive_formula():
    m = AutoEncoder(10, 4, seed=1).double()
    x = rand(8, 10, dtype=torch.float64)
    r = m.reconstruct(x)
    naive = -(x * torch.log(r) + (1 - x) * torch.log(1 - r)).sum(1)  # Eq. (4), moderate values
    torch.testing.assert_close(m.reconstruction_error(x), naive, rtol=1e-10, atol=0)
    terms = m.loss_terms(x, train=False)
    assert terms["rec"].item() == pytest.approx(naive.mean().item(), rel=1e-10)


def test_cross_entropy_stays_finite_where_the_naive_formula_overflows():
    m = AutoEncoder(10, 4)
    with torch.no_grad():
        m.c.fill_(40.0)  # r = sigmoid(40) rounds to 1 in float32: the naive log(1 - r) is -inf
    x = torch.zeros(2, 10)
    r = m.reconstruct(x)
    assert torch.isinf(-(torch.log(1 - r)).sum())
    rec = m.reconstruction_error(x)
    z = m.decoder_preactivation(m.encode(x)).double()  # (2, 10), all near 40
    exact = torch.log1p(torch.exp(z)).sum(1)  # Eq. (4) with x = 0, in float64 where it is finite
    torch.testing.assert_close(rec.double(), exact, rtol=1e-6, atol=0)


def test_mse_is_half_the_summed_squared_error_averaged_over_the_batch():
    m = AutoEncoder(10, 4, hidden_unit="relu", visible_unit="linear", loss="mse", tied=False)
    x = torch.randn(8, 10, generator=torch.Generator().manual_seed(0))
    expected = (0.5 * ((m.reconstruct(x) - x) ** 2).sum(1)).mean()
    assert m.loss_terms(x, train=False)["rec"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_terms_are_weighted_penalties_at_the_clean_x_and_sum_to_the_loss():
    kw = dict(contraction=0.3, higher_order=0.2, higher_order_sigma=0.2, higher_order_copies=3,
              sparsity_l1=0.01, sparsity_kl=0.5, sparsity_target=0.1)
    m = AutoEncoder(10, 6, corruption="masking", corruption_level=0.5, seed=2, **kw)
    x = rand(16, 10)
    terms = m.loss_terms(x, train=True)
    assert list(terms) == ["rec", "contraction", "higher_order", "sparsity", "loss"]
    # the corruption reaches the reconstruction only, through the training stream (seed * 2)
    x_tilde = corrupt(x, "masking", 0.5, torch.Generator().manual_seed(4))
    rec_from_x_tilde = m.reconstruction_error(x, x_tilde).mean().item()
    assert terms["rec"].item() == pytest.approx(rec_from_x_tilde, rel=1e-6)
    assert terms["rec"].item() != pytest.approx(m.reconstruction_error(x).mean().item(), rel=1e-3)
    h = m.encode(x)  # the clean code
    assert terms["contraction"].item() == pytest.approx(
        0.3 * P.contraction(x, m.W, m.b, "sigmoid").mean().item(), rel=1e-6)
    assert terms["sparsity"].item() == pytest.approx(
        0.01 * P.sparsity_l1(h).mean().item() + 0.5 * P.sparsity_kl(h, 0.1).item(), rel=1e-6)
    # higher order: the same eps as the penalty drawn right after the masking draw
    g = torch.Generator().manual_seed(4)
    corrupt(x, "masking", 0.5, g)
    expected = 0.2 * P.higher_order(x, m.W, m.b, "sigmoid", sigma=0.2, copies=3, generator=g).mean()
    assert terms["higher_order"].item() == pytest.approx(expected.item(), rel=1e-6)
    total = sum(v for k, v in terms.items() if k != "loss")
    assert terms["loss"].item() == pytest.approx(total.item(), rel=1e-6)


def test_zero_weight_penalties_are_not_computed_and_validation_is_clean():
    m = AutoEncoder(10, 6, corruption="gaussian", corruption_level=0.5)
    x = rand(16, 10)
    ev = m.loss_terms(x, train=False)
    assert list(ev) == ["rec", "loss"]
    assert ev["rec"].item() == pytest.approx(m.reconstruction_error(x).mean().item(), rel=1e-6)
    assert m.loss_terms(x, train=True)["rec"].item() != pytest.approx(ev["rec"].item(), rel=1e-3)


def test_validation_does_not_shift_the_training_noise():
    kw = dict(corruption="masking", corruption_level=0.3, higher_order=0.1)
    a, b = AutoEncoder(10, 6, seed=5, **kw), AutoEncoder(10, 6, seed=5, **kw)
    x = rand(16, 10)
    a.loss_terms(x, train=True)
    b.loss_terms(x, train=True)
    b.loss_terms(x, train=False)  # draws eps for the higher-order term from the eval stream
    ta, tb = a.loss_terms(x, train=True), b.loss_terms(x, train=True)
    assert ta["loss"].item() == tb["loss"].item()


def test_float32_and_float64_agree():
    m32 = AutoEncoder(20, 8, tied=False, contraction=0.1, sparsity_l1=0.01, sparsity_kl=0.3, seed=1)
    m64 = copy.deepcopy(m32).double()
    x = rand(32, 20, dtype=torch.float64)
    t32, t64 = m32.loss_terms(x.float(), train=False), m64.loss_terms(x, train=False)
    for k in t64:
        assert t32[k].dtype == torch.float32 and t64[k].dtype == torch.float64
        assert t32[k].item() == pytest.approx(t64[k].item(), rel=1e-5), k
    t32["loss"].backward()
    t64["loss"].backward()
    torch.testing.assert_close(m32.W.grad.double(), m64.W.grad, rtol=1e-4, atol=1e-6)


def test_gradients_reach_every_parameter():
    m = AutoEncoder(10, 6, tied=False, contraction=0.1)
    m.loss_terms(rand(8, 10), train=True)["loss"].backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().max() > 0, name


# -- bad input -------------------------------------------------------------------------------
def test_cross_entropy_rejects_inputs_outside_the_unit_interval():
    m = AutoEncoder(4, 3)
    with pytest.raises(ValueError, match="loss='mse'"):
        m.loss_terms(torch.tensor([[0.0, 0.5, 1.0, 1.5]]), train=True)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        m.loss_terms(torch.tensor([[-0.1, 0.5, 1.0, 0.5]]), train=False)
    mse = AutoEncoder(4, 3, visible_unit="linear", loss="mse")  # any real inputs
    assert torch.isfinite(mse.loss_terms(torch.tensor([[-3.0, 0.5, 1.0, 7.0]]), train=True)["loss"])


def test_wrong_input_width_is_named():
    with pytest.raises(ValueError, match=r"\(B, 4\).*\(2, 5\)"):
        AutoEncoder(4, 3).loss_terms(torch.rand(2, 5), train=True)


@pytest.mark.parametrize("kw,match", [
    ({"lr": -0.1}, "lr.*-0.1"),
    ({"contraction": -1.0}, "contraction.*-1.0"),
    ({"higher_order": -0.5}, "higher_order.*-0.5"),
    ({"sparsity_l1": -0.01}, "sparsity_l1.*-0.01"),
    ({"sparsity_kl": -3.0}, "sparsity_kl.*-3.0"),
    ({"weight_decay": -1e-4}, "weight_decay.*-0.0001"),
    ({"momentum": 1.5}, "momentum.*1.5"),
    ({"corruption": "masking", "corruption_level": 1.2}, "corruption_level.*1.2"),
    ({"corruption": "salt_pepper", "corruption_level": -0.2}, "corruption_level.*-0.2"),
    ({"corruption": "gaussian", "corruption_level": -0.2}, "corruption_level.*-0.2"),
    ({"corruption": "dropout"}, "'dropout'"),
    ({"corruption_level": 0.3}, "corruption='none'"),
    ({"sparsity_target": 0.0}, "sparsity_target.*0.0"),
    ({"sparsity_target": 1.2}, "sparsity_target.*1.2"),
    ({"higher_order_sigma": 0.0}, "higher_order_sigma.*0.0"),
    ({"higher_order_copies": 0}, "higher_order_copies.*0"),
    ({"hidden_unit": "softmax"}, "hidden_unit 'softmax'"),
    ({"visible_unit": "gelu"}, "visible_unit 'gelu'"),
    ({"loss": "hinge"}, "'hinge'"),
    ({"visible_unit": "linear"}, "visible_unit='sigmoid'"),  # cross-entropy with linear outputs
    ({"hidden_unit": "tanh", "sparsity_kl": 1.0}, "hidden_unit='tanh'"),
    ({"optimizer": "lbfgs"}, "'lbfgs'"),
    ({"tied": "yes"}, "tied.*'yes'"),
    ({"seed": 1.5}, "seed.*1.5"),
])
def test_bad_hyperparameters_raise_naming_the_value(kw, match):
    with pytest.raises(ValueError, match=match):
        AutoEncoder(10, 5, **kw)


@pytest.mark.parametrize("n_visible,n_hidden,match", [(0, 5, "n_visible.*0"), (10, -2, "n_hidden.*-2"),
                                                      (10.0, 5, "n_visible.*10.0")])
def test_bad_sizes_raise(n_visible, n_hidden, match):
    with pytest.raises(ValueError, match=match):
        AutoEncoder(n_visible, n_hidden)


# -- training ----------------------------------------------------------------------------------
@pytest.mark.parametrize("tied", [True, False])
def test_linear_autoencoder_spans_the_principal_subspace(digits, tied):
    """Seed 000's claim (Baldi & Hornik 1989): the minimum of a linear autoencoder's squared
    error is reached exactly when the decoder's columns span PCA's top-k subspace.

    Tolerance: 1 degree. Full-batch Adam reaches <= 0.17 degrees in 150 steps for seeds 0-2,
    tied and untied (0.04 tied, 0.16 untied at seed 0); a model that never found the 5th
    component (it learns the 6th, or stays at its random init) is at ~90 degrees, and
    minibatch noise at a fixed lr leaves 5-10.
    """
    X = torch.cat(digits)
    Xc = X - X.mean(0)  # centred: PCA's subspace through the origin
    k = 5
    m = AutoEncoder(64, k, hidden_unit="linear", visible_unit="linear", loss="mse", tied=tied,
                    optimizer="adam", lr=0.05, seed=0)
    fit(m, Xc, steps=150)
    _, s, Vt = np.linalg.svd(Xc.double().numpy(), full_matrices=False)
    W_dec = m.decoder_weight.detach().double().numpy()  # (64, k)
    angles = np.degrees(scipy.linalg.subspace_angles(W_dec, Vt[:k].T))
    assert angles.max() < 1.0, angles
    # and the error is PCA's: half the variance left in the discarded components, per example
    pca_error = 0.5 * (s[k:] ** 2).sum() / len(Xc)
    assert m.reconstruction_error(Xc).mean().item() == pytest.approx(pca_error, rel=1e-3)


@pytest.fixture(scope="module")
def trained(digits):
    """Three sigmoid autoencoders, same seed, same 150 full-batch Adam steps: plain, DAE, CAE."""
    train, held_out = digits
    kw = dict(optimizer="adam", lr=0.01, seed=0)
    models = {"ae": AutoEncoder(64, 64, **kw),
              "dae": AutoEncoder(64, 64, corruption="masking", corruption_level=0.25, **kw),
              "cae": AutoEncoder(64, 64, contraction=0.1, **kw)}
    trainers = {name: fit(m, train, steps=150, val=held_out) for name, m in models.items()}
    return models, trainers


def test_denoising_autoencoder_reconstructs_masked_digits_better(trained, digits):
    _, held_out = digits
    models, _ = trained
    masked = corrupt(held_out, "masking", 0.25, torch.Generator().manual_seed(1))
    with torch.no_grad():
        err = {n: models[n].reconstruction_error(held_out, masked).mean().item() for n in ("ae", "dae")}
    # measured: AE 21.26, DAE 19.50 nats per digit (8% lower); ask for 5%
    assert err["dae"] < 0.95 * err["ae"], err


def test_contractive_autoencoder_contracts_more(trained, digits):
    _, held_out = digits
    models, _ = trained
    with torch.no_grad():
        jac = {n: P.contraction(held_out, models[n].W, models[n].b, "sigmoid").mean().item()
               for n in ("ae", "cae")}
    # measured: AE 42.3, CAE 20.0; ask for a factor 1.5
    assert jac["cae"] < jac["ae"] / 1.5, jac


def test_logged_terms_are_the_layers_terms(trained, digits):
    _, held_out = digits
    models, trainers = trained
    metrics = trainers["cae"].callback_metrics
    assert metrics["train/loss"].item() == pytest.approx(
        metrics["train/rec"].item() + metrics["train/contraction"].item(), rel=1e-5)
    # the last validation ran on the final weights, with no corruption
    for name in ("cae", "dae"):
        with torch.no_grad():
            ev = models[name].loss_terms(held_out, train=False)
        for k, v in ev.items():
            logged = trainers[name].callback_metrics[f"val/{k}"].item()
            assert logged == pytest.approx(v.item(), rel=1e-5)
