"""Layer kinds by name: each preset builds the configuration it names; bad keys are named."""
import pytest
import torch

from pretrain import penalties as P
from pretrain.autoencoder import AutoEncoder
from pretrain.corruption import corrupt
from pretrain.presets import KINDS, PRESETS, accepted_keys, make_layer

AE_KINDS = ("ae", "dae", "cae", "cae_h", "sparse")


def test_every_kind_has_a_preset():
    assert KINDS == ("ae", "dae", "cae", "cae_h", "sparse", "rbm", "grbm", "conv_ae", "whiten", "psd")
    assert set(PRESETS) == set(KINDS)


@pytest.mark.parametrize("kind", KINDS)
def test_presets_use_only_keys_their_class_accepts(kind):
    if kind in ("rbm", "grbm"):
        pytest.importorskip("pretrain.rbm")
    assert set(PRESETS[kind]) <= set(accepted_keys(kind))


@pytest.mark.parametrize("kind,expected", [
    ("ae", dict(corruption="none", corruption_level=0.0, contraction=0.0, higher_order=0.0,
                sparsity_l1=0.0, sparsity_kl=0.0)),
    ("dae", dict(corruption="masking", corruption_level=0.25, contraction=0.0, higher_order=0.0)),
    ("cae", dict(corruption="none", contraction=0.1, higher_order=0.0)),
    ("cae_h", dict(contraction=0.1, higher_order=0.1, higher_order_sigma=0.3, higher_order_copies=4)),
    ("sparse", dict(sparsity_kl=3.0, sparsity_target=0.05, contraction=0.0)),
])
def test_autoencoder_presets_configure_the_layer(kind, expected):
    layer = make_layer(kind, 64, 32, seed=7)
    assert type(layer) is AutoEncoder
    assert (layer.n_visible, layer.n_hidden) == (64, 32)
    assert layer.hparams.seed == 7
    for key, value in expected.items():
        assert layer.hparams[key] == value, key


@pytest.mark.parametrize("kind,terms", [
    ("ae", ["rec", "loss"]), ("dae", ["rec", "loss"]), ("cae", ["rec", "contraction", "loss"]),
    ("cae_h", ["rec", "contraction", "higher_order", "loss"]), ("sparse", ["rec", "sparsity", "loss"]),
])
def test_each_preset_trains_on_its_own_terms(kind, terms):
    layer = make_layer(kind, 16, 8)
    x = torch.rand(32, 16, generator=torch.Generator().manual_seed(0))
    got = layer.loss_terms(x, train=True)
    assert list(got) == terms
    if kind == "cae":
        assert got["contraction"].item() == pytest.approx(
            0.1 * P.contraction(x, layer.W, layer.b, "sigmoid").mean().item(), rel=1e-6)
    if kind == "sparse":
        assert got["sparsity"].item() == pytest.approx(
            3.0 * P.sparsity_kl(layer.encode(x), 0.05).item(), rel=1e-6)
    if kind == "dae":  # a quarter of the inputs masked, from the layer's training stream
        x_tilde = corrupt(x, "masking", 0.25, torch.Generator().manual_seed(0))
        rec_from_x_tilde = layer.reconstruction_error(x, x_tilde).mean().item()
        assert got["rec"].item() == pytest.approx(rec_from_x_tilde, rel=1e-6)
        assert (x_tilde == 0).float().mean().item() == pytest.approx(0.25, abs=0.05)


def test_overrides_win_over_the_preset():
    layer = make_layer("dae", 64, 32, corruption="salt_pepper", corruption_level=0.1,
                       hidden_unit="tanh", tied=False, lr=0.01, optimizer="adam")
    hp = layer.hparams
    assert (hp.corruption, hp.corruption_level, hp.hidden_unit, hp.tied, hp.lr, hp.optimizer) == \
        ("salt_pepper", 0.1, "tanh", False, 0.01, "adam")
    assert make_layer("cae", 8, 4, contraction=0.5).hparams.contraction == 0.5


def test_same_seed_same_layer():
    assert torch.equal(make_layer("cae", 20, 10, seed=3).W, make_layer("cae", 20, 10, seed=3).W)


def test_unknown_kind_lists_the_kinds():
    with pytest.raises(ValueError, match="'vae'.*ae, dae, cae, cae_h, sparse, rbm, grbm, conv_ae, whiten, psd"):
        make_layer("vae", 10, 5)


@pytest.mark.parametrize("kind,key", [("ae", "k"), ("cae", "persistent"), ("sparse", "sparsity"),
                                      ("dae", "n_visible")])
def test_a_key_the_kind_does_not_accept_is_named(kind, key):
    with pytest.raises(ValueError, match=f"'{key}'.*accepts.*corruption_level"):
        make_layer(kind, 10, 5, **{key: 1})


def test_a_bad_value_is_named_by_the_layer():
    with pytest.raises(ValueError, match="contraction.*-1"):
        make_layer("cae", 10, 5, contraction=-1.0)


@pytest.mark.parametrize("kind,visible", [("rbm", "bernoulli"), ("grbm", "gaussian")])
def test_rbm_kinds_build_rbms(kind, visible):
    rbm = pytest.importorskip("pretrain.rbm")
    layer = make_layer(kind, 12, 6, k=2, seed=1)
    assert isinstance(layer, rbm.RBM)
    assert (layer.n_visible, layer.n_hidden) == (12, 6)
    assert layer.hparams.visible == visible and layer.hparams.k == 2 and layer.hparams.seed == 1
    with pytest.raises(ValueError, match="'contraction'"):
        make_layer(kind, 12, 6, contraction=0.1)
