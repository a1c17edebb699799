"""PCA and ZCA whitening (``pretrain.whitening``): identity covariance, the whitening closest to
the identity, exact inverse, statistics of the training rows only, one epoch's result for any
number of epochs, resume and cache, unrolling, tangents, the layer above, the estimators, and a
``layerwise run`` of the shipped config that logs its figures."""
import subprocess
import sys

import mlflow
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA

from finetune.tangents import explicit_jacobian, jvp, vjp
from finetune.unroll import unroll_autoencoder, unroll_mlp
from pipelines.cli import main
from pipelines.config import ConfigError, config_from_dict
from pipelines.estimators import MTCClassifier, StackedPretrainer
from pipelines.reporting import figures
from pipelines.stages.checks import check_before_writing
from pipelines.stages.layer_cache import load_layer, save_layer
from pipelines.training import fit_layer, quiet_lightning
from pretrain.autoencoder import AutoEncoder
from pretrain.presets import make_layer
from pretrain.stack import Stack
from pretrain.whitening import whitening_matrices

quiet_lightning()
N, D = 400, 8
MSE = {"visible_unit": "linear", "loss": "mse"}


def _correlated(n=N, d=D, seed=0, shift=3.0):
    """Rows with a full, far-from-diagonal covariance (variances 0.01 to ~20) and mean ``shift``."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(d, d, generator=g) * torch.logspace(-1, 0.6, d)[:, None]
    return torch.randn(n, d, generator=g) @ A + shift


def _numpy_whitening(X, whitening, eps=0.0, k=None):
    """The whitening from numpy's SVD of the centred rows, independent of the layer's eigh."""
    X = np.asarray(X, dtype=np.float64)
    Xc = X - X.mean(0)
    _, S, Vt = np.linalg.svd(Xc, full_matrices=False)  # Sigma = Vt.T diag(S^2 / N) Vt
    scale = 1.0 / np.sqrt(S**2 / len(X) + eps)
    if whitening == "pca":
        return (scale[:, None] * Vt)[:k]  # rows up to sign
    return Vt.T @ np.diag(scale) @ Vt


def _fit(whitening="zca", n_hidden=D, X=None, X_val=None, epochs=1, eps=0.0, **kw):
    layer = make_layer("whiten", D, n_hidden, whitening=whitening, epsilon=eps)
    trainer = fit_layer(layer, _correlated() if X is None else X, X_val, epochs=epochs,
                        batch_size=64, seed=0, **kw)
    return layer, trainer


def _state(layer):
    return {k: v.clone() for k, v in layer.state_dict().items()}


def _assert_same_state(a, b):
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)


# -- the transform ----------------------------------------------------------------------------
@pytest.mark.parametrize("whitening", ["zca", "pca"])
def test_whitened_codes_have_identity_covariance(whitening):
    X = _correlated()
    layer, _ = _fit(whitening, X=X)
    assert int(layer.n_fitted) == N  # every row of the last, smaller batch too (400 = 6 x 64 + 16)
    h = layer.encode(X).double()
    cov = torch.cov(h.T, correction=0)
    torch.testing.assert_close(cov, torch.eye(D, dtype=torch.float64), rtol=0, atol=2e-5)
    assert h.mean(0).abs().max() < 1e-4
    # the unwhitened rows are far from it: the test could fail
    assert (torch.cov(X.T.double(), correction=0) - torch.eye(D)).abs().max() > 1


def test_zca_is_symmetric_matches_numpy_and_is_the_whitening_closest_to_the_identity():
    X = _correlated()
    zca, _ = _fit("zca", X=X)
    W = zca.W.detach().double()
    torch.testing.assert_close(W, W.T, rtol=0, atol=1e-5)
    np.testing.assert_allclose(W.numpy(), _numpy_whitening(X, "zca"), rtol=1e-4, atol=1e-5)
    # every whitening matrix is Q W_zca with Q orthogonal: among them (PCA's, random
    # rotations') ZCA's codes stay closest to the centred rows (Kessy et al. 2018)
    Xc = X.double() - X.double().mean(0)
    distance = lambda M: ((Xc @ M.T - Xc) ** 2).sum(1).mean().item()
    pca, _ = _fit("pca", X=X)
    rotations = [torch.linalg.qr(torch.randn(D, D, generator=torch.Generator().manual_seed(s),
                                             dtype=torch.float64))[0] for s in range(5)]
    others = [pca.W.detach().double()] + [Q @ W for Q in rotations]
    assert all(distance(W) < distance(M) - 1e-3 for M in others)


def test_pca_whitening_matches_scikit_learn():
    X = _correlated()
    layer, _ = _fit("pca", n_hidden=5, X=X)
    ref = PCA(n_components=5, whiten=True).fit(X.numpy())
    # scikit-learn divides by the unbiased variance, Sigma with 1 / (N - 1); signs: the same rule
    ours = layer.encode(X).detach().numpy()
    np.testing.assert_allclose(ours, ref.transform(X.numpy()) * np.sqrt(N / (N - 1)), rtol=1e-3, atol=2e-4)
    np.testing.assert_allclose(layer.variances[:5].numpy(), ref.explained_variance_ * (N - 1) / N, rtol=1e-4)


@pytest.mark.parametrize("whitening,eps", [("zca", 0.0), ("zca", 0.5), ("pca", 0.0), ("pca", 0.5)])
def test_decode_inverts_encode_at_full_rank(whitening, eps):
    X = _correlated()
    layer, _ = _fit(whitening, X=X, eps=eps)
    x = _correlated(50, seed=9)  # rows it was not fitted on
    torch.testing.assert_close(layer.decode(layer.encode(x)), x, rtol=0, atol=2e-4)
    if eps > 0:  # Eq. (7): eps damps the low-variance directions, Cov(h) = diag(s / (s + eps))
        s = layer.variances.double()
        cov = torch.cov(layer.encode(X).double().T, correction=0)
        if whitening == "pca":
            torch.testing.assert_close(cov, torch.diag(s / (s + eps)), rtol=0, atol=2e-5)
        assert torch.linalg.eigvalsh(cov).min() < 0.2  # the smallest direction, 0.01 / (0.01 + 0.5)


def test_pca_with_fewer_components_reconstructs_the_projection_and_logs_the_left_out_variance():
    X = _correlated()
    layer, trainer = _fit("pca", n_hidden=3, X=X, X_val=X)
    Xc = X.double() - X.double().mean(0)
    _, _, Vt = torch.linalg.svd(Xc, full_matrices=False)
    projection = Xc @ Vt[:3].T @ Vt[:3] + X.double().mean(0)
    torch.testing.assert_close(layer.decode(layer.encode(X)).double(), projection, rtol=0, atol=2e-4)
    left_out = 0.5 * layer.variances[3:].double().sum().item()  # Eq. (8) on the training rows
    assert left_out > 1
    assert trainer.callback_metrics["val/rec"].item() == pytest.approx(left_out, rel=1e-4)


# -- fitting ----------------------------------------------------------------------------------
def test_the_statistics_come_from_the_training_rows_only():
    X = _correlated()
    a, _ = _fit(X=X, X_val=_correlated(100, seed=5, shift=-7.0))
    b, _ = _fit(X=X, X_val=10 * _correlated(60, seed=6))
    _assert_same_state(_state(a), _state(b))
    np.testing.assert_allclose(a.W.detach().numpy(), _numpy_whitening(X, "zca"), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a.mu, X.mean(0), rtol=0, atol=1e-5)


def test_more_epochs_give_the_whitening_of_one_and_stop_after_it():
    one, _ = _fit(epochs=1)
    five, trainer = _fit(epochs=5)
    _assert_same_state(_state(one), _state(five))
    assert trainer.current_epoch == 1  # fitted after the first epoch, then stopped


def test_a_resumed_fit_and_a_cached_layer_keep_the_whitening(tmp_path):
    first, _ = _fit(epochs=1, ckpt_dir=tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "last.ckpt").exists()
    # resumed from the checkpoint on other rows: the fitted whitening is kept, not refitted
    resumed, _ = _fit(epochs=3, X=_correlated(seed=4), ckpt_dir=tmp_path / "ckpt")
    _assert_same_state(_state(first), _state(resumed))
    save_layer(first, tmp_path / "layer1.pt", "abc")
    loaded = make_layer("whiten", D, D)
    load_layer(loaded, tmp_path / "layer1.pt", "abc")
    _assert_same_state(_state(first), _state(loaded))
    assert loaded.fitted and not make_layer("whiten", D, D).fitted


def test_an_unfitted_layer_is_a_coordinate_projection():
    layer = make_layer("whiten", D, 3, whitening="pca")
    x = _correlated(5)
    torch.testing.assert_close(layer.encode(x), x[:, :3], rtol=0, atol=0)


@pytest.mark.parametrize("kwargs,message", [
    (dict(n_hidden=5),
     r"n_hidden must equal n_visible=8, got n_hidden=5; set n_hidden=8, or whitening='pca'"),
    (dict(n_hidden=9, whitening="pca"), r"at most n_visible=8 components, got n_hidden=9"),
    (dict(whitening="zka"), r"unknown whitening 'zka': choose one of zca, pca"),
    (dict(epsilon=-0.1), r"epsilon must be a number in \[0.0, inf\), got -0.1"),
    (dict(lr=0.1), r"layer kind 'whiten' does not accept 'lr'; it accepts whitening, epsilon, seed"),
])
def test_bad_settings_are_named(kwargs, message):
    n_hidden = kwargs.pop("n_hidden", D)
    with pytest.raises(ValueError, match=message):
        make_layer("whiten", D, n_hidden, **kwargs)


def test_zero_variance_without_epsilon_and_non_finite_rows_are_refused():
    X = _correlated()
    X[:, 2] = 0.5  # a constant input (as MNIST's border pixels)
    with pytest.raises(ValueError, match=r"1 of the 8 directions .* zero variance .* set epsilon > 0"):
        _fit("zca", X=X)
    with pytest.raises(ValueError, match=r"set epsilon > 0 \(e.g. 0.1\) or n_hidden <= 7"):
        _fit("pca", X=X)
    layer, _ = _fit("pca", n_hidden=7, X=X)  # the constant direction left out: fine
    assert torch.isfinite(layer.W).all()
    with pytest.raises(ValueError, match="NaN or inf"):
        whitening_matrices(2, torch.tensor([1.0, float("nan")], dtype=torch.float64),
                           torch.eye(2, dtype=torch.float64), whitening="zca", epsilon=0.1,
                           n_components=2)


# -- what is built on it --------------------------------------------------------------------
def _whitened_stack():
    """A fitted ZCA below a tied sigmoid autoencoder with linear visible units, in float64."""
    whitening, _ = _fit("zca", eps=0.1)
    above = AutoEncoder(D, 5, visible_unit="linear", loss="mse", seed=2)
    return Stack([whitening, above]).double()


def test_the_unrolled_networks_start_with_the_whitening():
    stack = _whitened_stack()
    whitening = stack[0]
    x = _correlated(20, seed=3).double()
    mlp = unroll_mlp(stack, 3)
    first = mlp.encoder.layers[0]
    torch.testing.assert_close(first.weight, whitening.W, rtol=0, atol=0)
    torch.testing.assert_close(first.bias, -whitening.W @ whitening.mu, rtol=0, atol=0)
    torch.testing.assert_close(first(x), whitening.encode(x), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(mlp.encoder(x), stack.encode(x), rtol=1e-10, atol=1e-10)
    encoder, decoder = unroll_autoencoder(stack)
    bottom = decoder.layers[-1]
    assert not bottom.shared and decoder.output_unit == "linear"
    torch.testing.assert_close(bottom.weight, whitening.W_plus, rtol=0, atol=0)
    torch.testing.assert_close(decoder(encoder(x)), stack.reconstruct(x), rtol=1e-10, atol=1e-10)


def test_tangents_pass_through_the_whitening_exactly():
    stack = _whitened_stack()
    x = _correlated(4, seed=3).double()
    full = torch.autograd.functional.jacobian(stack.encode, x)  # (B, 5, B, D)
    J = full[torch.arange(4), :, torch.arange(4)]  # (B, 5, D)
    assert J.abs().max() > 1e-2
    g = torch.Generator().manual_seed(1)
    V = torch.randn(4, D, 3, generator=g, dtype=torch.float64)
    U = torch.randn(4, 5, 2, generator=g, dtype=torch.float64)
    h, JV = jvp(stack, x, V)
    torch.testing.assert_close(h, stack.encode(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(JV, J @ V, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(vjp(stack, x, U), J.transpose(1, 2) @ U, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(explicit_jacobian(stack, x), J, rtol=1e-10, atol=1e-12)


def test_decoder_filters_of_a_tied_layer_on_zca_are_its_encoder_filters_smoothed():
    X = _correlated()
    stack = _whitened_stack()
    whitening, above = stack[0], stack[1]
    enc, dec = whitening.input_filters(above)  # Eq. (9): (5, D), (D, 5)
    sigma = torch.cov(X.double().T, correction=0)
    torch.testing.assert_close(enc, above.W @ whitening.W, rtol=0, atol=1e-12)
    torch.testing.assert_close(dec, (sigma + 0.1 * torch.eye(D, dtype=torch.float64)) @ enc.T,
                               rtol=1e-4, atol=1e-4)
    fig = figures.decoder_filters_figure(enc.detach().numpy(), dec.detach().numpy(), (2, 4), n=3)
    assert sum(ax.get_visible() for ax in fig.axes) == 6  # 3 encoder above 3 decoder filters


def test_figures_draw_zca_rows_by_their_input_variance_and_pca_components_in_order():
    X = _correlated()
    X[:, 5] = 0.25  # a constant input, as an image's border: its row last
    zca, _ = _fit("zca", X=X, eps=0.1)
    expected = torch.argsort(X.double().var(0), descending=True, stable=True)
    assert zca.filter_order().tolist() == expected.tolist() and expected[-1] == 5
    pca, _ = _fit("pca", n_hidden=4, X=X, eps=0.1)
    assert pca.filter_order().tolist() == [0, 1, 2, 3]


def _config(*layers):
    return config_from_dict({"pretrain": {"layers": list(layers)}, "finetune": {"methods": ["mlp"]}})


@pytest.mark.parametrize("above,fix", [
    ({"kind": "cae", "n_hidden": 4},
     r"--set pretrain.layers.1.visible_unit=linear --set pretrain.layers.1.loss=mse"),
    ({"kind": "ae", "n_hidden": 4, "loss": "mse"}, r"visible_unit='sigmoid'.*visible_unit=linear"),
    ({"kind": "rbm", "n_hidden": 4}, r"--set pretrain.layers.1.kind=grbm"),
])
def test_a_layer_with_bounded_reconstructions_on_whitening_is_refused_with_the_fix(above, fix):
    cfg = _config({"kind": "whiten", "n_hidden": D}, above)
    with pytest.raises(ConfigError, match=r"pretrain.layers.1 \(\w+\) is stacked on the whitening of "
                                          r"pretrain.layers.0, whose codes are real-valued.*" + fix):
        check_before_writing(cfg, D)


def test_linear_layers_on_whitening_and_a_sigmoid_layer_below_it_pass_the_check():
    check_before_writing(_config({"kind": "whiten", "n_hidden": D}, {"kind": "cae", "n_hidden": 4, **MSE}), D)
    check_before_writing(_config({"kind": "whiten", "n_hidden": D}, {"kind": "grbm", "n_hidden": 4}), D)
    check_before_writing(_config({"kind": "cae", "n_hidden": 4}, {"kind": "whiten", "n_hidden": 4}), D)


# -- the scikit-learn estimators and the command line ------------------------------------------
@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return (X / 16.0).astype(np.float32), y


def test_the_pretrainer_fits_a_whitening_first_layer_and_transforms_through_it(digits):
    X, _ = digits
    est = StackedPretrainer(layers=[("whiten", 64), ("cae", 20)], layer_params=[{}, MSE], epochs=2,
                            random_state=0).fit(X)
    whitening, above = est.stack_[0], est.stack_[1]
    np.testing.assert_allclose(whitening.W.detach().numpy(), _numpy_whitening(X, "zca", eps=0.1),
                               rtol=1e-3, atol=1e-4)
    W1, mu = whitening.W.detach().double().numpy(), whitening.mu.double().numpy()
    W2, b2 = above.W.detach().double().numpy(), above.b.detach().double().numpy()
    by_hand = 1.0 / (1.0 + np.exp(-((X - mu) @ W1.T @ W2.T + b2)))
    np.testing.assert_allclose(est.transform(X[:100]), by_hand[:100], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"layers\[1\].*needs inputs in \[0, 1\].*loss='mse' with "
                                         r"visible_unit='linear'"):
        StackedPretrainer(layers=[("whiten", 64), ("cae", 20)], epochs=1).fit(X)
    # lr reaches the layers that have one; the whitening layer is fitted in closed form
    fast = StackedPretrainer(layers=[("whiten", 64), ("cae", 20)], layer_params=[{}, MSE], epochs=1,
                             lr=0.5, random_state=0).fit(X)
    assert fast.stack_[1].hparams.lr == 0.5
    np.testing.assert_array_equal(fast.stack_[0].W.detach().numpy(), whitening.W.detach().numpy())


def test_the_mtc_classifier_predicts_through_a_whitening_first_layer(digits):
    X, y = digits
    clf = MTCClassifier(layers=[("whiten", 64), ("cae", 32)], layer_params=[{}, MSE], pretrain_epochs=3,
                        epochs=20, lr=0.003, n_tangents=5, random_state=0).fit(X[:300], y[:300])
    # the fine-tuned network starts with the (fine-tuned) whitening: 64-64, then the CAE's 64-32
    assert clf.stack_[0].fitted
    assert [lin.weight.shape for lin in clf.module_.net.encoder.layers] == [(64, 64), (32, 64)]
    accuracy = (clf.predict(X[1000:]) == y[1000:]).mean()
    assert accuracy > 0.75, accuracy  # chance is 0.1


def test_layerwise_run_with_the_shipped_config_logs_the_figures(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # no fine-tuning (its model logging is most of a run's time): k-NN on the stack's codes
    sets = ["data.name=digits", "pretrain.layers.0.n_hidden=64", "pretrain.layers.1.n_hidden=16",
            "pretrain.epochs=2", "finetune.methods=[]", "baselines.methods=[knn]",
            "baselines.inputs=[codes]", "threads=1"]
    try:
        args = ["run", "mnist_zca_cae", "-q"] + [a for s in sets for a in ("--set", s)]
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 0, res.output
        assert "| knn | codes |" in res.output
        runs = mlflow.search_runs(experiment_names=["layerwise"])
        client = MlflowClient()
        for name in ("layer 1 (whiten 64-64)", "layer 2 (cae 64-16)"):
            run = runs[runs["tags.mlflow.runName"] == name]
            assert len(run) == 1, name
            logged = {a.path for a in client.list_artifacts(run["run_id"].iloc[0], "figures")}
            assert {"figures/filters.png", "figures/decoder_filters.png",
                    "figures/reconstructions.png"} <= logged, (name, logged)
    finally:
        mlflow.set_tracking_uri(None)


@pytest.mark.slow
def test_two_ddp_processes_fit_the_whitening_of_one(tmp_path):
    """Under DDP (2 CPU processes, gloo) the ranks' sums are added: the same W as one process."""
    sets = ["data.name=digits", "pretrain.layers.0.n_hidden=64", "pretrain.layers.1.n_hidden=16",
            "pretrain.epochs=1", "finetune.methods=[]", "baselines.methods=[knn]",
            "baselines.inputs=[codes]", "threads=1"]
    layers = []
    for name, extra in (("single", []), ("ddp", ["trainer.devices=2", "trainer.strategy=ddp"])):
        root = tmp_path / name
        root.mkdir()
        args = [a for s in sets + extra for a in ("--set", s)]
        done = subprocess.run([sys.executable, "-m", "pipelines.cli", "run", "mnist_zca_cae", *args],
                              cwd=root, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        (path,) = (root / "mlruns" / "cache").glob("layer1-*.pt")
        layers.append(torch.load(path, weights_only=True)["state_dict"])
    assert int(layers[1]["n_fitted"]) == int(layers[0]["n_fitted"]) > 0  # every pool row, once
    for name in layers[0]:
        torch.testing.assert_close(layers[1][name], layers[0][name], rtol=1e-5, atol=1e-6, msg=name)
