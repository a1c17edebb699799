"""The convolutional autoencoder layer (``conv_ae``): its closed-form contraction against
autograd's Jacobian (borders, both paddings, pooling), shapes and clear errors, training on the
digits, unrolling into a CNN, the MTC's tangents through a conv + dense stack, resume, and a
``layerwise run`` into a real MLflow store."""
import mlflow
import pytest
import torch
from click.testing import CliRunner
from lightning.pytorch.callbacks import ModelCheckpoint

from finetune import tangents as tg
from finetune.tangent_prop import tangent_penalty
from finetune.unroll import UnrolledEncoder, unroll_autoencoder, unroll_mlp
from pipelines.cli import main
from pipelines.config import load_config
from pipelines.data.datamodule import ArrayDataModule
from pipelines.data.datasets import load_dataset
from pipelines.stages.pretraining import build_layers
from pipelines.training import fit_layer, make_trainer, quiet_lightning
from pretrain import conv_autoencoder as cae
from pretrain.conv_maps import conv_shape, convolve, reach_norms
from pretrain.penalties import contraction_autograd
from pretrain.presets import make_layer
from pretrain.stack import Stack

quiet_lightning()

# (in_shape, kernel, padding, pool): odd and even filters, one and two channels, both paddings
GEOMETRIES = [((1, 7, 7), 3, "valid", 1), ((1, 7, 7), 3, "same", 1), ((2, 6, 5), 4, "valid", 1),
              ((2, 6, 5), 4, "same", 1), ((1, 7, 7), 3, "same", 2), ((2, 6, 5), 3, "valid", 2)]


def _layer(in_shape, kernel, padding, pool, maps=3, seed=1, **kw):
    g = conv_shape(in_shape, maps, kernel, padding, pool)
    return make_layer("conv_ae", g.n_in, g.n_out, in_shape=in_shape, maps=maps, kernel=kernel,
                      padding=padding, pool=pool, seed=seed, **kw)


def _dense_matrix(W, geom):
    """The unpooled convolution as an explicit (n_conv, n_in) matrix: its images of the unit vectors."""
    eye = torch.eye(geom.n_in, dtype=W.dtype)
    return convolve(eye, W, None, geom).reshape(geom.n_in, -1).T


@pytest.mark.parametrize("in_shape, kernel, padding, pool", GEOMETRIES)
def test_reach_norms_are_the_row_norms_of_the_convolution(in_shape, kernel, padding, pool):
    layer = _layer(in_shape, kernel, padding, pool).double()
    A = _dense_matrix(layer.W, layer.geom)  # (M H_c W_c, C H W), brute force
    N = reach_norms(layer.W, layer.geom).reshape(-1)
    torch.testing.assert_close(N, (A * A).sum(1), rtol=1e-12, atol=1e-12)
    if padding == "same":  # the corner sees only part of the filter: less than the full norm
        full = (layer.W ** 2).sum(dim=(1, 2, 3))
        assert (reach_norms(layer.W, layer.geom)[:, 0, 0] < full - 1e-3).all()


@pytest.mark.parametrize("in_shape, kernel, padding, pool", GEOMETRIES)
def test_closed_form_contraction_equals_autograd_jacobian(in_shape, kernel, padding, pool):
    layer = _layer(in_shape, kernel, padding, pool).double()
    with torch.no_grad():
        layer.b.normal_(generator=torch.Generator().manual_seed(0))
    x = torch.rand(5, layer.n_visible, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    closed = cae.contraction(x, layer.W, layer.b, layer.geom, "sigmoid")
    exact = contraction_autograd(x, layer.encode)  # every row of J_f(x) by a reverse pass
    torch.testing.assert_close(closed, exact, rtol=1e-10, atol=1e-12)
    # the same from the layer's training objective, and its gradient in W
    layer.hparams.contraction = 1.0
    term = layer.loss_terms(x, train=False)["contraction"]
    torch.testing.assert_close(term, exact.mean(), rtol=1e-10, atol=1e-12)
    g_closed, = torch.autograd.grad(closed.sum(), layer.W)
    g_exact, = torch.autograd.grad(contraction_autograd(x, layer.encode).sum(), layer.W)
    torch.testing.assert_close(g_closed, g_exact, rtol=1e-8, atol=1e-10)
    if padding == "same":  # the full filter norm at every position would be wrong at the borders
        a, _ = layer.encoder_preactivation(x)
        s = torch.sigmoid(a) * (1 - torch.sigmoid(a))
        full = (layer.W ** 2).sum(dim=(1, 2, 3)).repeat_interleave(layer.n_hidden // layer.geom.maps)
        assert ((s * s * full).sum(1) - exact).abs().min() > 1e-3


def test_shapes_and_the_decoder_upsamples_the_pooled_codes():
    layer = _layer((2, 7, 6), 3, "valid", 2, maps=4)  # conv 5x4, pooled 2x2 (a row dropped)
    assert layer.out_shape == (4, 2, 2) and layer.n_hidden == 16 and layer.n_visible == 84
    x = torch.rand(3, 84)
    h = layer.encode(x)
    assert h.shape == (3, 16) and layer.decode(h).shape == (3, 84)
    assert layer.encoder_map.shape == (16, 84)
    # tied: the decoder is the adjoint of the encoder's linear part without pooling
    flat = _layer((1, 6, 6), 3, "same", 1, maps=2).double()
    u, v = torch.randn(4, 72, dtype=torch.float64), torch.randn(4, 36, dtype=torch.float64)
    with torch.no_grad():
        flat.b.zero_(), flat.c.zero_()
        Av = convolve(v, flat.W, None, flat.geom).reshape(4, -1)
        torch.testing.assert_close((u * Av).sum(1), (flat.decoder_preactivation(u) * v).sum(1))


@pytest.mark.parametrize("kwargs, match", [
    ({"in_shape": (1, 7, 7)}, r"in_shape=\(1, 7, 7\) holds 49 values but the layer has n_visible=64"),
    ({"in_shape": None}, r"needs in_shape.*in_shape=\(1, 8, 8\)"),
    ({"n_hidden": 10}, r"set n_hidden=72"),
    ({"kernel": 9}, r"9x9 kernel does not fit 8x8 images"),
    ({"padding": "full"}, r"unknown padding .full.: choose one of valid, same"),
    ({"pool": 7}, r"pool=7 is larger than the 6x6 maps"),
])
def test_bad_geometry_is_one_clear_error(kwargs, match):
    args = {"n_visible": 64, "n_hidden": 72, "in_shape": (1, 8, 8), "maps": 2, "kernel": 3, **kwargs}
    n_visible, n_hidden = args.pop("n_visible"), args.pop("n_hidden")
    with pytest.raises(ValueError, match=match):
        make_layer("conv_ae", n_visible, n_hidden, **args)


def test_dense_only_penalties_are_refused_by_name():
    with pytest.raises(ValueError, match="does not accept 'higher_order'"):
        _layer((1, 8, 8), 3, "valid", 1, higher_order=0.1)


def test_config_chains_maps_and_names_the_layer_without_in_shape():
    conv = "kind: conv_ae, n_hidden: 36, maps: 4, kernel: 3, pool: 2"
    layers = (f"pretrain.layers=[{{{conv}, in_shape: [1, 8, 8]}}, "
              "{kind: conv_ae, n_hidden: 8, maps: 2, kernel: 2}, {kind: cae, n_hidden: 5}]")
    cfg = load_config("quickstart", [layers])
    _, second, top = build_layers(cfg, 64)  # the second reads the first's 4 maps of 3x3
    assert second.geom.in_shape == (4, 3, 3) and second.out_shape == (2, 2, 2) and top.n_visible == 8
    cfg = load_config("quickstart", [f"pretrain.layers=[{{{conv}}}]"])
    with pytest.raises(ValueError, match=r"pretrain.layers.0 \(conv_ae\): .*needs in_shape"):
        build_layers(cfg, 64)
    with pytest.raises(ValueError, match="padding"):
        load_config("quickstart", ["pretrain.layers.0.padding=full"])


def test_denoising_contractive_layer_learns_the_digits():
    ds = load_dataset("digits")
    X = torch.as_tensor(ds.X[:1200])
    X_val = torch.as_tensor(ds.X[1200:])
    layer = _layer((1, 8, 8), 3, "same", 2, maps=8, seed=0, corruption="masking",
                   corruption_level=0.25, contraction=0.01, sparsity_l1=0.01, optimizer="adam", lr=0.01)
    before = layer.reconstruction_error(X_val).mean().item()
    fit_layer(layer, X, epochs=8, batch_size=64, seed=0)
    with torch.no_grad():
        after = layer.reconstruction_error(X_val).mean().item()
        terms = layer.loss_terms(X_val, train=False)
    assert after < 0.6 * before, (before, after)
    assert terms["contraction"] > 0 and terms["sparsity"] > 0


def _conv_dense_stack(pool: int, seed: int = 0) -> Stack:
    torch.manual_seed(seed)
    conv = _layer((1, 8, 8), 3, "same", pool, maps=3, seed=seed)
    conv2 = make_layer("conv_ae", conv.n_hidden, 2 * (conv.out_shape[1] - 1) ** 2,
                       in_shape=conv.out_shape, maps=2, kernel=2, seed=seed + 1)
    dense = make_layer("cae", conv2.n_hidden, 6, seed=seed + 2)
    stack = Stack([conv, conv2, dense]).double()
    with torch.no_grad():  # biases off zero, so that slopes differ between units
        for layer in stack:
            layer.b.normal_(0, 0.5, generator=torch.Generator().manual_seed(seed))
    return stack


@pytest.mark.parametrize("pool", [1, 2])
def test_unrolled_cnn_and_deep_autoencoder_equal_the_stack(pool):
    stack = _conv_dense_stack(pool)
    x = torch.rand(7, 64, dtype=torch.float64)
    encoder = UnrolledEncoder(stack)
    torch.testing.assert_close(encoder(x), stack.encode(x), rtol=0, atol=1e-12)
    mlp = unroll_mlp(stack, 10)
    torch.testing.assert_close(mlp(x), mlp.head(stack.encode(x)), rtol=0, atol=1e-12)
    enc, dec = unroll_autoencoder(stack)
    torch.testing.assert_close(dec(enc(x)), stack.reconstruct(x), rtol=0, atol=1e-12)
    assert dec.layers[-1].W is enc.layers[0].weight  # tied: one Parameter, stays tied
    enc_u, dec_u = unroll_autoencoder(stack, untie=True)
    assert dec_u.layers[-1].weight is not enc_u.layers[0].weight
    torch.testing.assert_close(dec_u(enc_u(x)), stack.reconstruct(x), rtol=0, atol=1e-12)
    # a fresh, not pretrained, CNN of the same shape: new filters, same shapes
    enc.reset_parameters(torch.Generator().manual_seed(3))
    dec.reset_parameters(torch.Generator().manual_seed(3))
    assert enc.layers[0].weight.shape == stack[0].W.shape
    assert not torch.allclose(enc.layers[0].weight, stack[0].W)


def _jacobian(stack, x):
    """(B, n_L, d) by autograd, one example at a time."""
    return torch.stack([torch.autograd.functional.jacobian(stack.encode, xi[None])[0, :, 0] for xi in x])


@pytest.mark.parametrize("pool", [1, 2])
def test_tangents_through_conv_layers_match_the_explicit_jacobian(pool):
    stack = _conv_dense_stack(pool)
    g = torch.Generator().manual_seed(5)
    x = torch.rand(4, 64, dtype=torch.float64, generator=g)
    J = _jacobian(stack, x)  # (4, 6, 64)
    V = torch.randn(4, 64, 3, dtype=torch.float64, generator=g)
    h, JV = tg.jvp(stack, x, V)
    torch.testing.assert_close(h, stack.encode(x), rtol=0, atol=1e-12)
    torch.testing.assert_close(JV, J @ V, rtol=1e-10, atol=1e-12)
    U = torch.randn(4, 6, 2, dtype=torch.float64, generator=g)
    torch.testing.assert_close(tg.vjp(stack, x, U), J.transpose(1, 2) @ U, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(tg.explicit_jacobian(stack, x), J, rtol=1e-10, atol=1e-12)
    _, S_ref, Vh = torch.linalg.svd(J, full_matrices=False)
    k = 3
    for method in ("krylov", "explicit"):
        Uk, S = tg.tangents(stack, x, k, method=method)
        torch.testing.assert_close(S, S_ref[:, :k], rtol=1e-8, atol=1e-10)
        overlap = torch.linalg.matrix_norm(Uk @ Vh[:, :k].transpose(1, 2)) ** 2  # k for the same span
        torch.testing.assert_close(overlap, torch.full((4,), float(k), dtype=torch.float64),
                                   rtol=1e-8, atol=1e-8)
    # the MTC's tangent propagation through the unrolled CNN: ||J u||^2 summed over tangents
    Uk, _ = tg.tangents(stack, x, k)
    omega = tangent_penalty(UnrolledEncoder(stack), x, Uk)
    torch.testing.assert_close(omega, ((J @ Uk.transpose(1, 2)) ** 2).sum(dim=(1, 2)), rtol=1e-10, atol=1e-12)


def _fit_for_resume(epochs, root, ckpt=None):
    X = torch.rand(120, 49, generator=torch.Generator().manual_seed(0))
    layer = _layer((1, 7, 7), 3, "same", 1, maps=2, corruption="masking", corruption_level=0.3,
                   contraction=0.1)
    trainer = make_trainer(None, max_epochs=epochs, checkpointing=True, root_dir=root,
                           callbacks=[ModelCheckpoint(dirpath=root, save_last=True, save_top_k=1)])
    trainer.fit(layer, datamodule=ArrayDataModule(X, batch_size=32, seed=3), ckpt_path=ckpt)
    return layer


def test_resumed_conv_layer_equals_uninterrupted(tmp_path):
    full = _fit_for_resume(4, tmp_path / "full")
    _fit_for_resume(2, tmp_path / "cut")  # "killed" after epoch 2: only last.ckpt survives
    resumed = _fit_for_resume(4, tmp_path / "cut", ckpt=str(tmp_path / "cut" / "last.ckpt"))
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_layerwise_run_with_a_conv_layer_finishes_into_mlflow(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the run's caches go to ./mlruns: fresh, so every layer trains
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    layers = ("[{kind: conv_ae, n_hidden: 72, in_shape: [1, 8, 8], maps: 8, kernel: 3, pool: 2, "
              "contraction: 0.01, optimizer: adam, lr: 0.01}, {kind: cae, n_hidden: 20}]")
    sets = [f"pretrain.layers={layers}", "pretrain.epochs=2", "finetune.epochs=3",
            "finetune.methods=[mlp,mtc]", "finetune.n_tangents=3", "baselines.methods=[knn]",
            "baselines.inputs=[codes]", f"tracking.uri={uri}", "tracking.experiment=conv"]
    res = CliRunner().invoke(main, ["run", "mnist_conv", "--set", "data.name=digits", "--quiet",
                                    *[a for s in sets for a in ("--set", s)]])
    assert res.exit_code == 0, res.output
    assert "| mtc | stack |" in res.output and "| knn | codes |" in res.output
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["conv"])
    assert set(runs.status) == {"FINISHED"}
    layer1 = runs[runs["tags.mlflow.runName"] == "layer 1 (conv_ae 64-72)"].iloc[0]
    assert layer1["params.kind"] == "conv_ae"
    hist = mlflow.MlflowClient().get_metric_history(layer1.run_id, "train/contraction")
    assert len(hist) == 2 and all(m.value > 0 for m in hist)
    files = {f.path for f in mlflow.MlflowClient().list_artifacts(layer1.run_id, "figures")}
    assert {"figures/filters.png", "figures/reconstructions.png"} <= files
