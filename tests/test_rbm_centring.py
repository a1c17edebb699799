"""Centred RBMs (pretrain.rbm, Eqs. 14-16): the gradient against autograd in centred coordinates,
the step a Trainer takes, checkpointed offsets, invariance to flipped data, bad settings."""
import copy

import lightning.pytorch as L
import pytest
import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

from pretrain.rbm import RBM, centred_gradients, free_energy

D = torch.float64


def _trainer(epochs, **kw):
    return L.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", **kw)


def test_centred_gradient_is_the_gradient_in_centred_coordinates():
    """Eq. (16) against autograd: write b, c as functions of the centred biases (Eq. 14) and
    differentiate the CD surrogate with respect to (W, b_o, c_o)."""
    g = torch.Generator().manual_seed(0)
    n_v, n_h, B = 7, 5, 9
    W = torch.randn(n_h, n_v, generator=g, dtype=D)
    b, c = torch.randn(n_h, generator=g, dtype=D), torch.randn(n_v, generator=g, dtype=D)
    mu, lam = torch.rand(n_v, generator=g, dtype=D), torch.rand(n_h, generator=g, dtype=D)
    v0 = (torch.rand(B, n_v, generator=g, dtype=D) < 0.3).to(D)  # data
    vk = (torch.rand(B, n_v, generator=g, dtype=D) < 0.6).to(D)  # a chain end

    def surrogate(W, b, c):  # Eq. (13)
        return free_energy(v0, W, b, c).mean() - free_energy(vk, W, b, c).mean()

    Wu, bu, cu = (t.clone().requires_grad_() for t in (W, b, c))
    gW, gb, gc = torch.autograd.grad(surrogate(Wu, bu, cu), (Wu, bu, cu))

    Wo = W.clone().requires_grad_()
    bo = (b + W @ mu).requires_grad_()  # Eq. (14): b = b_o - W mu
    co = (c + W.T @ lam).requires_grad_()  # c = c_o - W^T lambda
    gWo, gbo, gco = torch.autograd.grad(surrogate(Wo, bo - Wo @ mu, co - Wo.T @ lam), (Wo, bo, co))
    # a step -eta g_o on (W, b_o, c_o) moves b by -eta (g_bo - g_Wo mu), c by -eta (g_co - g_Wo^T lam)
    expected = (gWo, gbo - gWo @ mu, gco - gWo.T @ lam)

    got = centred_gradients(gW, gb, gc, mu, lam)
    for e, r in zip(expected, got):
        torch.testing.assert_close(r, e, rtol=1e-12, atol=1e-12)
    assert (got[0] - gW).abs().max() > 0.1  # the offsets matter here
    zero = centred_gradients(gW, gb, gc, torch.zeros(n_v, dtype=D), torch.zeros(n_h, dtype=D))
    for e, r in zip((gW, gb, gc), zero):  # zero offsets: the plain gradient
        torch.testing.assert_close(r, e, rtol=0, atol=0)


def test_a_trainer_step_of_a_centred_rbm_is_the_centred_sgd_step_and_offsets_move():
    x = (torch.rand(20, 6, generator=torch.Generator().manual_seed(1)) < 0.8).float()
    rbm = RBM(6, 4, centred=True, lr=0.5, momentum=0.0, weight_decay=0.0, centring_rate=0.25, seed=2)
    ref = copy.deepcopy(rbm)
    _trainer(1).fit(rbm, DataLoader(TensorDataset(x), batch_size=20))  # one update

    ref.loss_terms(x, train=True)["loss"].backward()  # same seed: the same Gibbs draws
    mu, lam = x.mean(0), torch.full((4,), 0.5)  # the offsets before the step
    gW, gb, gc = centred_gradients(ref.W.grad, ref.b.grad, ref.c.grad, mu, lam)
    torch.testing.assert_close(rbm.W, ref.W - 0.5 * gW)
    torch.testing.assert_close(rbm.b, ref.b - 0.5 * gb)
    torch.testing.assert_close(rbm.c, ref.c - 0.5 * gc)
    plain = ref.W - 0.5 * ref.W.grad
    assert (rbm.W - plain).abs().max() > 1e-3  # not the uncentred step
    h_mean = torch.sigmoid(x @ ref.W.T + ref.b).mean(0)
    torch.testing.assert_close(rbm.offset_v, mu)  # mu starts at the batch mean and stays there
    torch.testing.assert_close(rbm.offset_h, lam + 0.25 * (h_mean.detach() - lam))


def test_offsets_are_checkpointed_and_an_uncentred_state_has_none():
    x = (torch.rand(40, 6, generator=torch.Generator().manual_seed(3)) < 0.7).float()
    rbm = RBM(6, 4, centred=True, seed=0)
    _trainer(2).fit(rbm, DataLoader(TensorDataset(x), batch_size=20))
    state = rbm.state_dict()
    assert state["offset_v"].shape == (6,) and state["offset_h"].shape == (4,)
    clone = RBM(6, 4, centred=True, seed=9)  # offset_v not created yet: loaded lazily
    clone.load_state_dict(state)
    assert torch.equal(clone.offset_v, rbm.offset_v) and torch.equal(clone.offset_h, rbm.offset_h)
    assert not {"offset_v", "offset_h"} & set(RBM(6, 4).state_dict())  # old caches still load


def test_centring_makes_training_invariant_to_flipped_data():
    """Digits (ink ~ 0.3 of the pixels) and their negatives 1 - x: the plain RBM learns the
    negatives much worse; the centred one learns both alike (Melchior et al. 2016), and better."""
    X = torch.tensor(load_digits().data / 16.0, dtype=torch.float32)

    def rec(x, centred):
        rbm = RBM(64, 32, centred=centred, lr=0.1, seed=0)
        _trainer(5).fit(rbm, DataLoader(TensorDataset(x), batch_size=20))
        with torch.no_grad():
            return ((rbm.decode(rbm.encode(x)) - x) ** 2).sum(1).mean().item()

    plain, plain_flipped = rec(X, False), rec(1 - X, False)
    centred, centred_flipped = rec(X, True), rec(1 - X, True)
    # measured: plain 2.97 / 4.96, centred 2.75 / 2.65
    assert plain_flipped > 1.3 * plain, (plain, plain_flipped)
    assert abs(centred_flipped - centred) < 0.15 * centred, (centred, centred_flipped)
    assert centred_flipped < 0.75 * plain_flipped and centred < plain


@pytest.mark.parametrize("kwargs,match", [
    (dict(centred=True, visible="gaussian"), "centred=True needs binary"),
    (dict(centred="yes"), "centred must be True or False, got 'yes'"),
    (dict(centred=True, centring_rate=0.0), r"centring_rate must be in \(0, 1\], got 0"),
    (dict(centred=True, centring_rate=1.5), "centring_rate"),
])
def test_bad_centring_settings_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RBM(6, 4, **kwargs)


#: the layer fields that existed when the first stacks were cached: every field added since is
#: left out of the digest while unset (``LayerConfig.DIGEST_WHEN_SET``)
ORIGINAL_LAYER_FIELDS = {
    "kind", "n_hidden", "epochs", "batch_size", "lr", "optimizer", "momentum", "weight_decay",
    "hidden_unit", "visible_unit", "tied", "loss", "corruption", "corruption_level", "contraction",
    "higher_order", "higher_order_sigma", "higher_order_copies", "sparsity_l1", "sparsity_kl",
    "sparsity_target", "k", "persistent", "sigma"}


def test_centring_fields_enter_the_layer_digest_only_when_set():
    """Stacks cached before the fields existed keep their digest; setting one makes a new layer."""
    import hashlib
    import json

    from pipelines.config import load_config
    from pipelines.stages.layer_cache import layer_digest

    cfg = load_config("mnist_dbn")
    dump = cfg.model_dump(mode="json")["pretrain"]
    for layer in dump["layers"]:  # what the digest hashed before the fields existed
        for key in set(layer) - ORIGINAL_LAYER_FIELDS:
            assert layer.pop(key) is None, key
    assert dump.pop("schedule") == "greedy"  # added later too, out of the digest at its default
    before = hashlib.sha256(json.dumps({"pretrain": dump}, sort_keys=True).encode()).hexdigest()[:16]
    assert cfg.digest("pretrain") == before
    centred = load_config("mnist_dbn", overrides=["pretrain.layers.0.centred=true"])
    rate = load_config("mnist_dbn", overrides=["pretrain.layers.0.centring_rate=0.05"])
    assert len({layer_digest(cfg, 0), layer_digest(centred, 0), layer_digest(rate, 0)}) == 3
    assert layer_digest(centred, 1) != layer_digest(cfg, 1)  # the layers above change with it
