"""Sparse coding and PSD: FISTA against scikit-learn's LASSO, the layer's objective and training on
the digits, its gain through the unrolled networks and the tangents, resume, config and CLI."""
import itertools

import mlflow
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from sklearn.linear_model import Lasso
from sklearn.svm import SVC

from finetune.tangents import encoder_params, explicit_jacobian, jvp, vjp
from finetune.unroll import unroll_autoencoder, unroll_mlp
from pipelines.cli import main
from pipelines.config import ConfigError, load_config
from pipelines.data.datamodule import ArrayDataModule
from pipelines.data.datasets import load_dataset
from pipelines.estimators import StackedPretrainer
from pipelines.training import fit_layer, make_trainer, quiet_lightning
from pretrain import sparse_coding as sc
from pretrain.autoencoder import AutoEncoder
from pretrain.presets import make_layer
from pretrain.psd import PSD
from pretrain.stack import Stack

quiet_lightning()
F64 = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _problem(n_visible, n_hidden, B, seed=0):
    """x (B, n_visible) and a dictionary D (n_visible, n_hidden) of random unit atoms."""
    D = torch.randn(n_visible, n_hidden, generator=_gen(seed), dtype=F64)
    x = torch.randn(B, n_visible, generator=_gen(seed + 1), dtype=F64)
    return x, D / D.norm(dim=0, keepdim=True)


def _lasso(x, D, lam):
    """scikit-learn's codes: Lasso minimises 1/(2n) ||x - D z||^2 + a |z|_1 with n = n_visible
    rows of D, so a = lambda / (2 n) gives the minimiser of ||x - D z||^2 + lambda |z|_1."""
    a = lam / (2 * D.shape[0])
    return torch.tensor(np.array([
        Lasso(alpha=a, fit_intercept=False, tol=1e-14, max_iter=10**6).fit(D.numpy(), row.numpy()).coef_
        for row in x]), dtype=F64)


# -- the solver ---------------------------------------------------------------------------------
@pytest.mark.parametrize("n_visible,n_hidden,B,lam", [
    (20, 40, 6, 0.5),   # overcomplete
    (30, 10, 5, 2.0),   # undercomplete
    (5, 12, 4, 0.1),    # few inputs, small lambda: many active atoms
    (8, 8, 1, 1.0),     # a batch of one
])
def test_fista_reaches_the_lasso_optimum_of_scikit_learn(n_visible, n_hidden, B, lam):
    x, D = _problem(n_visible, n_hidden, B)
    z, iterations = sc.fista(x, D, lam, tol=1e-13, max_iter=200000)
    assert iterations < 200000  # stopped by the tolerance
    z_sk = _lasso(x, D, lam)
    torch.testing.assert_close(z, z_sk, rtol=0, atol=1e-6)
    torch.testing.assert_close(sc.energy(x, D, z, lam), sc.energy(x, D, z_sk, lam), rtol=1e-10, atol=0)
    assert torch.equal(z == 0, z_sk == 0)  # the same support
    # a warm start changes the path, not the optimum
    z0 = torch.randn(B, n_hidden, generator=_gen(5), dtype=F64)
    torch.testing.assert_close(sc.fista(x, D, lam, z0=z0, tol=1e-13, max_iter=200000)[0], z,
                               rtol=0, atol=1e-6)


def test_zero_lambda_is_least_squares():
    x, D = _problem(20, 8, 5)  # full column rank: one least-squares solution
    z, _ = sc.fista(x, D, 0.0, tol=1e-14, max_iter=100000)
    z_ls = torch.linalg.lstsq(D, x.T).solution.T
    torch.testing.assert_close(z, z_ls, rtol=0, atol=1e-9)


def test_codes_are_zero_from_the_known_threshold_on():
    x, D = _problem(16, 32, 6)
    thresholds = (2 * x @ D).abs().amax(dim=1)  # ||2 D^T x||_inf per row: Eq. (8)
    z, iterations = sc.fista(x, D, float(thresholds.max()), tol=1e-10, max_iter=10000)
    assert torch.equal(z, torch.zeros_like(z)) and iterations == sc.CHECK_EVERY
    just_below = 0.99 * float(thresholds.max())
    z, _ = sc.fista(x, D, just_below, tol=1e-12, max_iter=100000)
    row = int(thresholds.argmax())
    assert z[row].abs().sum() > 0  # the row whose threshold is above lambda has a code
    assert torch.equal(z[thresholds <= just_below], torch.zeros_like(z[thresholds <= just_below]))


def test_power_iteration_finds_the_largest_eigenvalue():
    _, D = _problem(30, 60, 1)
    G = D.T @ D
    exact = torch.linalg.eigvalsh(G)[-1]
    est = sc.largest_eigenvalue(G, tol=1e-9, max_iter=5000)
    assert est <= exact * (1 + 1e-12) and (exact - est) / exact < 1e-6  # a lower bound, close
    assert float(sc.largest_eigenvalue(torch.zeros(4, 4, dtype=F64))) == 0.0


def test_bad_solver_arguments_are_named():
    x, D = _problem(6, 4, 3)
    with pytest.raises(ValueError, match=r"lam must be a number in \[0.*weight lambda.*got -1.0"):
        sc.fista(x, D, -1.0)
    with pytest.raises(ValueError, match="max_iter must be an integer >= 1, got 0"):
        sc.fista(x, D, 1.0, max_iter=0)
    with pytest.raises(ValueError, match="tol must be a number in"):
        sc.fista(x, D, 1.0, tol=float("inf"))
    with pytest.raises(ValueError, match=r"x must have shape \(B, 6\)"):
        sc.fista(x[:, :5], D, 1.0)
    with pytest.raises(ValueError, match=r"z0 must have shape \(3, 4\)"):
        sc.fista(x, D, 1.0, z0=torch.zeros(3, 5, dtype=F64))
    z, iterations = sc.fista(x[:0], D, 1.0)  # an empty batch: no codes, no iterations
    assert z.shape == (0, 4) and iterations == 0


# -- the layer ------------------------------------------------------------------------------------
def test_loss_terms_are_eq_3_at_the_inferred_codes_with_their_gradients():
    layer = PSD(10, 14, code_l1=0.3, prediction_weight=0.7, ista_steps=40, seed=2).double()
    x = torch.rand(9, 10, generator=_gen(0), dtype=F64)
    terms = layer.loss_terms(x, train=True)
    assert list(terms) == ["rec", "l1", "prediction", "loss", "iterations"]
    with torch.no_grad():
        p = layer.g * torch.tanh(x @ layer.W.T + layer.b)  # F(x), Eq. (1)
    z, iterations = sc.fista(x, layer.D.detach(), 0.3, z0=p, tol=1e-4, max_iter=40)
    torch.testing.assert_close(layer.encode(x, infer=True), z)
    torch.testing.assert_close(terms["rec"], ((x - z @ layer.D.T) ** 2).sum() / 9)
    torch.testing.assert_close(terms["l1"], 0.3 * z.abs().sum() / 9)
    torch.testing.assert_close(terms["prediction"], 0.7 * ((z - p) ** 2).sum() / 9)
    assert terms["iterations"].item() == iterations
    terms["loss"].backward()
    # z* is held fixed: dL/dD = -2 (x - D z) z^T / B, from the reconstruction term alone
    torch.testing.assert_close(layer.D.grad, -2 * (x - z @ layer.D.T).T @ z / 9)
    # and the predictor gets the prediction term's gradient: dL/dg = -2 alpha (z - F) tanh(a) / B
    tanh_a = torch.tanh(x @ layer.W.T + layer.b).detach()
    torch.testing.assert_close(layer.g.grad, -2 * 0.7 * ((z - p) * tanh_a).sum(0) / 9)


def test_the_predictor_is_the_encoder_and_decode_is_the_dictionary():
    layer = PSD(6, 9, seed=0).double()
    with torch.no_grad():
        layer.g.uniform_(0.5, 2.0, generator=_gen(1))
    x = torch.rand(4, 6, generator=_gen(0), dtype=F64)
    torch.testing.assert_close(layer.encode(x), layer.g * torch.tanh(x @ layer.W.T + layer.b))
    h = torch.randn(4, 9, generator=_gen(2), dtype=F64)
    torch.testing.assert_close(layer.decode(h), h @ layer.D.T)
    assert (layer.hidden_unit, layer.visible_unit, layer.tied) == ("tanh", "linear", False)
    assert layer.encoder_scale is layer.g
    assert layer.encoder_weight.shape == (9, 6) and layer.decoder_weight.shape == (6, 9)
    torch.testing.assert_close(layer.D.norm(dim=0), torch.ones(9, dtype=F64))  # unit atoms at init
    with pytest.raises(ValueError, match=r"expects inputs of shape \(B, 6\)"):
        layer.loss_terms(torch.rand(4, 5, dtype=F64), train=True)


@pytest.mark.parametrize("kwargs,message", [
    ({"code_l1": -0.5}, r"code_l1 must be a number in \[0"),
    ({"prediction_weight": float("nan")}, r"prediction_weight must be a number in \[0"),
    ({"ista_steps": 0}, "ista_steps must be an integer >= 1, got 0"),
    ({"ista_steps": 2.5}, "ista_steps must be an integer >= 1, got 2.5"),
    ({"ista_tol": -1e-3}, r"ista_tol must be a number in \[0"),
    ({"lr": 0}, "lr must be > 0"),
])
def test_bad_hyperparameters_give_one_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_layer("psd", 8, 4, **kwargs)


def test_keys_psd_does_not_take_and_bad_config_values_are_named():
    with pytest.raises(ValueError, match="'hidden_unit'.*it accepts.*code_l1"):
        make_layer("psd", 8, 4, hidden_unit="sigmoid")
    with pytest.raises(ConfigError, match="pretrain.layers.0.code_l1"):
        load_config("mnist_psd", ["pretrain.layers.0.code_l1=-1"])
    with pytest.raises(ConfigError, match="pretrain.layers.0.ista_steps"):
        load_config("mnist_psd", ["pretrain.layers.0.ista_steps=0"])


# -- training on the digits -----------------------------------------------------------------------
DIGITS = torch.tensor(load_dataset("digits").X[:600])


class _Record(Callback):
    """The relative error of the predictor against the inferred codes, before training and after
    every epoch: ||z* - F(x)|| / ||z*|| over 300 digits."""

    def __init__(self):
        self.relerr = []

    def _append(self, layer):
        with torch.no_grad():
            z, p = layer.encode(DIGITS[:300], infer=True), layer.encode(DIGITS[:300])
        self.relerr.append(float((z - p).norm() / z.norm()))

    def on_train_start(self, trainer, layer):
        self._append(layer)

    def on_train_epoch_end(self, trainer, layer):
        self._append(layer)


@pytest.fixture(scope="module")
def trained():
    layer = make_layer("psd", 64, 48, seed=0, optimizer="adam", lr=0.003)
    D0 = layer.D.detach().clone()
    record = _Record()
    fit_layer(layer, DIGITS, epochs=12, batch_size=50, seed=0, callbacks=[record])
    return layer, D0, record.relerr


def _objective(layer):
    """Eq. (3) over the data at the layer's current parameters, its codes inferred."""
    with torch.no_grad():
        return float(layer.loss_terms(DIGITS, train=False)["loss"])


def test_the_objective_decreases_over_epochs_on_the_digits():
    layer = make_layer("psd", 64, 48, seed=0, optimizer="adam", lr=0.003)
    losses = [_objective(layer)]
    for _ in range(4):
        fit_layer(layer, DIGITS, epochs=2, batch_size=50, seed=0)
        losses.append(_objective(layer))
    assert all(b < a for a, b in itertools.pairwise(losses)), losses
    assert losses[-1] < 0.5 * losses[0], losses


def test_the_predictor_approaches_the_inferred_codes(trained):
    _, _, relerr = trained  # before training, then after each epoch
    assert relerr[0] > 0.9  # a random predictor: no better than predicting 0
    assert relerr[-1] < 0.8 * relerr[0], relerr
    assert np.mean(relerr[-3:]) < np.mean(relerr[1:4]), relerr  # still falling after the first epochs


def test_dictionary_columns_stay_unit_norm_while_they_move(trained):
    layer, D0, _ = trained
    torch.testing.assert_close(layer.D.norm(dim=0), torch.ones(48), rtol=0, atol=1e-5)
    assert (layer.D.detach() - D0).norm() > 1.0  # the atoms were learned, not left at the init


def _fit(epochs, root, ckpt=None):
    layer = make_layer("psd", 64, 20, seed=1, ista_steps=20)
    trainer = make_trainer(None, max_epochs=epochs, checkpointing=True, root_dir=root,
                           callbacks=[ModelCheckpoint(dirpath=root, save_last=True, save_top_k=1)])
    trainer.fit(layer, datamodule=ArrayDataModule(DIGITS[:200], batch_size=32, seed=3), ckpt_path=ckpt)
    return layer


def test_resumed_psd_equals_uninterrupted(tmp_path):
    full = _fit(4, tmp_path / "full")
    _fit(2, tmp_path / "cut")  # "killed" after epoch 2: only last.ckpt survives
    resumed = _fit(4, tmp_path / "cut", ckpt=str(tmp_path / "cut" / "last.ckpt"))
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert not torch.equal(full.D, make_layer("psd", 64, 20, seed=1).D)  # it trained


# -- stacking: unrolled networks and tangents ------------------------------------------------------
def _psd(n_visible, n_hidden, seed):
    """A PSD layer whose gain and bias are far from their init (g = 1 would hide a missing g)."""
    layer = PSD(n_visible, n_hidden, seed=seed)
    with torch.no_grad():
        layer.g.uniform_(-2.0, 2.0, generator=_gen(seed + 10))
        layer.b.uniform_(-0.5, 0.5, generator=_gen(seed + 20))
    return layer


STACKS = {
    "psd": lambda: [_psd(10, 7, 0)],
    "psd on a cae": lambda: [AutoEncoder(10, 8, contraction=0.1, seed=1), _psd(8, 6, 2)],
    "cae on a psd": lambda: [_psd(10, 8, 3), AutoEncoder(8, 5, hidden_unit="tanh", seed=4)],
    "psd on a psd": lambda: [_psd(10, 9, 5), _psd(9, 6, 6)],
}


@pytest.mark.parametrize("name", sorted(STACKS))
def test_unrolled_networks_equal_the_stack_through_psd(name):
    stack = Stack(STACKS[name]()).double()
    x = torch.rand(7, 10, generator=_gen(0), dtype=F64)
    encoder, decoder = unroll_autoencoder(stack)
    with torch.no_grad():
        torch.testing.assert_close(encoder(x), stack.encode(x), rtol=0, atol=1e-12)
        torch.testing.assert_close(decoder(encoder(x)), stack.reconstruct(x), rtol=0, atol=1e-12)
        mlp = unroll_mlp(stack, 3)
        torch.testing.assert_close(mlp.encoder(x), stack.encode(x), rtol=0, atol=1e-12)
    # the gains are the encoder's own parameters: fine-tuned with it, the stack untouched
    assert len(encoder.scales) == sum(isinstance(layer, PSD) for layer in stack)
    assert all(g.requires_grad for g in encoder.scales.values())
    encoder.reset_parameters(_gen(0))
    assert all(torch.equal(g, torch.ones_like(g)) for g in encoder.scales.values())


@pytest.mark.parametrize("name", sorted(STACKS))
def test_tangents_jvp_and_vjp_match_autograd_through_psd(name):
    stack = Stack(STACKS[name]()).double()
    x = torch.rand(5, 10, generator=_gen(1), dtype=F64)
    full = torch.autograd.functional.jacobian(stack.encode, x)  # (B, n_L, B, d)
    J = full[torch.arange(5), :, torch.arange(5)]  # (B, n_L, d): the per-example blocks
    V = torch.randn(5, 10, 3, generator=_gen(2), dtype=F64)
    U = torch.randn(5, stack.n_hidden, 4, generator=_gen(3), dtype=F64)
    with torch.no_grad():
        h, JV = jvp(stack, x, V)
        torch.testing.assert_close(h, stack.encode(x), rtol=0, atol=1e-12)
        torch.testing.assert_close(JV, J @ V, rtol=0, atol=1e-12)
        torch.testing.assert_close(vjp(stack, x, U), J.transpose(1, 2) @ U, rtol=0, atol=1e-12)
        torch.testing.assert_close(explicit_jacobian(stack, x), J, rtol=0, atol=1e-12)
    assert all(unit in ("sigmoid", "tanh", "relu", "linear") for _, _, unit in encoder_params(stack))


# -- the estimator and the command line -------------------------------------------------------------
def test_the_scikit_learn_pretrainer_takes_psd():
    ds = load_dataset("digits")
    X, y = ds.X[:800], ds.y[:800]
    pre = StackedPretrainer(layers=[("psd", 40)], epochs=3, batch_size=50, optimizer="adam", lr=0.003,
                            random_state=0, layer_params=[{"ista_steps": 30}]).fit(X)
    layer = pre.stack_[0]
    assert isinstance(layer, PSD) and layer.hparams.ista_steps == 30
    codes = pre.transform(X[600:])
    with torch.no_grad():
        expected = layer.encode(torch.tensor(X[600:])).numpy()
    np.testing.assert_allclose(codes, expected, rtol=0, atol=1e-6)
    # the predictor's codes carry the classes: an SVM on them is far above chance (10%)
    assert SVC().fit(pre.transform(X[:600]), y[:600]).score(codes, y[600:]) > 0.85


def test_layerwise_run_with_a_psd_layer_logs_its_terms(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    res = CliRunner().invoke(main, [
        "run", "mnist_psd", "-q", "--set", "data.name=digits", "--set", f"tracking.uri={uri}",
        "--set", "pretrain.epochs=3", "--set", "pretrain.layers.0.n_hidden=32",
        "--set", "pretrain.layers.0.ista_steps=20", "--set", "finetune.epochs=3",
        "--set", "finetune.labels=100", "--set", "finetune.methods=[mlp]",
        "--set", "baselines.methods=[knn]", "--set", "baselines.inputs=[codes]"])
    assert res.exit_code == 0, res.output
    assert "| knn | codes |" in res.output
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["layerwise"])
    layer = runs[runs["tags.mlflow.runName"] == "layer 1 (psd 64-32)"].run_id.item()
    client = mlflow.MlflowClient()
    for term in ("rec", "l1", "prediction", "loss", "iterations"):
        hist = client.get_metric_history(layer, f"train/{term}")
        assert len(hist) == 3 and all(np.isfinite(m.value) and m.value > 0 for m in hist), term
    loss = [m.value for m in sorted(client.get_metric_history(layer, "train/loss"), key=lambda m: m.step)]
    assert loss[-1] < loss[0]


def test_a_convolutional_layer_above_psd_is_refused_by_the_tangents():
    from finetune.tangents import jvp
    from pretrain.stack import Stack

    stack = Stack([make_layer("psd", 10, 16, seed=0),
                   make_layer("conv_ae", 16, 8, in_shape=(1, 4, 4), maps=2, kernel=3, seed=1)])
    x = torch.rand(3, 10)
    with pytest.raises(ValueError, match="convolutional above a layer with a per-unit gain"):
        jvp(stack, x, torch.randn(3, 10, 2))
