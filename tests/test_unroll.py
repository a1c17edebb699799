"""Unrolling: before fine-tuning the unrolled networks are the stack; weights are copies."""
import pytest
import torch

from finetune.unroll import (
    MLP,
    UnrolledDecoder,
    UnrolledEncoder,
    unroll_autoencoder,
    unroll_mlp,
)
from pretrain.autoencoder import AutoEncoder
from pretrain.rbm import RBM
from pretrain.stack import Stack

TOL = {torch.float32: 1e-6, torch.float64: 1e-12}


def ae_stack(dtype=torch.float64):
    """64-32 tied sigmoid, 32-16 untied tanh/linear, 16-8 tied relu/sigmoid: mixed units and tying."""
    layers = [AutoEncoder(64, 32, seed=1),
              AutoEncoder(32, 16, hidden_unit="tanh", visible_unit="linear", tied=False, loss="mse", seed=2),
              AutoEncoder(16, 8, hidden_unit="relu", visible_unit="sigmoid", seed=3)]
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # non-zero biases so that a dropped or swapped bias shows
        for layer in layers:
            layer.b.copy_(0.5 * torch.randn(layer.b.shape, generator=g))
            layer.c.copy_(0.5 * torch.randn(layer.c.shape, generator=g))
    return Stack(layers).to(dtype)


def rbm_stack(dtype=torch.float64):
    layers = [RBM(64, 24, visible="gaussian", sigma=0.5, seed=1), RBM(24, 10, seed=2)]
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in layers:
            for p in layer.parameters():
                p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return Stack(layers).to(dtype)


def inputs(dtype, n=32):
    return torch.rand(n, 64, generator=torch.Generator().manual_seed(5)).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("untie", [False, True])
def test_unrolled_autoencoder_equals_the_stack(dtype, untie):
    stack = ae_stack(dtype)
    x = inputs(dtype)
    encoder, decoder = unroll_autoencoder(stack, untie=untie)
    with torch.no_grad():
        h = encoder(x)
        assert h.dtype == dtype and h.shape == (32, 8)
        assert (h - stack.encode(x)).abs().max() <= TOL[dtype]
        assert (decoder(h) - stack.reconstruct(x)).abs().max() <= TOL[dtype]
    assert encoder.sizes == [64, 32, 16, 8] and decoder.sizes == [8, 16, 32, 64]
    assert encoder.units == ["sigmoid", "tanh", "relu"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_unrolled_rbm_stack_equals_the_stack(dtype):
    stack = rbm_stack(dtype)
    x = inputs(dtype)
    encoder, decoder = unroll_autoencoder(stack)
    with torch.no_grad():
        assert (encoder(x) - stack.encode(x)).abs().max() <= TOL[dtype]
        assert (decoder(encoder(x)) - stack.reconstruct(x)).abs().max() <= TOL[dtype]
    assert decoder.output_unit == "linear"
    assert decoder.layers[0].W is encoder.layers[1].weight  # Bernoulli RBM: W' = W^T, shared
    assert not decoder.layers[1].shared  # Gaussian, sigma = 0.5: W' = sigma^2 W_enc^T, a copy


def test_tied_decoder_shares_the_encoder_weight_and_untie_copies_it():
    stack = ae_stack()
    encoder, decoder = unroll_autoencoder(stack)
    # top-down: layers[0] decodes layer 3 (tied), layers[1] layer 2 (untied), layers[2] layer 1 (tied)
    assert decoder.layers[0].W is encoder.layers[2].weight
    assert decoder.layers[2].W is encoder.layers[0].weight
    assert not decoder.layers[1].shared
    with torch.no_grad():
        encoder.layers[0].weight.add_(1.0)
    assert torch.equal(decoder.layers[2].weight, encoder.layers[0].weight.T)  # stays tied
    n_shared = sum(p.numel() for p in encoder.parameters()) + sum(p.numel() for p in decoder.parameters())
    both = torch.nn.ModuleList([encoder, decoder])
    assert sum(p.numel() for p in both.parameters()) == n_shared - 64 * 32 - 16 * 8  # counted once

    encoder, decoder = unroll_autoencoder(stack, untie=True)
    assert all(not d.shared for d in decoder.layers)
    with torch.no_grad():
        encoder.layers[0].weight.add_(1.0)
    assert torch.allclose(decoder.layers[2].weight, stack[0].W.T)  # untied: a copy, unchanged


def test_training_the_unrolled_nets_leaves_the_stack_unchanged():
    stack = ae_stack()
    before = {k: v.clone() for k, v in stack.state_dict().items()}
    encoder, decoder = unroll_autoencoder(stack)
    mlp = unroll_mlp(stack, 10)
    x = inputs(torch.float64)
    params = list(torch.nn.ModuleList([encoder, decoder, mlp]).parameters())
    opt = torch.optim.SGD(params, lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        loss = decoder.reconstruction_error(encoder(x), x).mean() + mlp(x).logsumexp(1).mean()
        loss.backward()
        opt.step()
    assert (encoder(x) - stack.encode(x)).abs().max() > 1e-3  # the unrolled net did move
    for k, v in stack.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_reconstruction_error_is_cross_entropy_from_logits_or_half_squared_error():
    stack = ae_stack()
    x = inputs(torch.float64)
    encoder, decoder = unroll_autoencoder(stack)
    h = encoder(x)
    r = stack.reconstruct(x)
    ce = -(x * r.log() + (1 - x) * (1 - r).log()).sum(1)
    assert decoder.output_unit == "sigmoid"
    assert torch.allclose(decoder.reconstruction_error(h, x), ce, rtol=1e-10)
    with pytest.raises(ValueError, match=r"inputs in \[0, 1\]"):
        decoder.reconstruction_error(h, x + 1.0)

    linear = Stack([AutoEncoder(64, 8, visible_unit="linear", loss="mse", seed=0)]).double()
    encoder, decoder = unroll_autoencoder(linear)
    r = linear.reconstruct(x)
    assert torch.allclose(decoder.reconstruction_error(encoder(x), x), 0.5 * ((r - x) ** 2).sum(1))


def test_mlp_head_is_seeded_small_and_outputs_logits():
    stack = ae_stack(torch.float32)
    rng = torch.random.get_rng_state()
    a, b, c = unroll_mlp(stack, 10, seed=0), unroll_mlp(stack, 10, seed=0), unroll_mlp(stack, 10, seed=1)
    assert torch.equal(torch.random.get_rng_state(), rng)  # no global RNG drawn
    assert isinstance(a, MLP) and isinstance(a.encoder, UnrolledEncoder)
    assert torch.equal(a.head.weight, b.head.weight) and not torch.equal(a.head.weight, c.head.weight)
    assert 0.005 < a.head.weight.std() < 0.02 and torch.all(a.head.bias == 0)
    x = inputs(torch.float32)
    logits = a(x)
    assert logits.shape == (32, 10)
    assert torch.allclose(logits, stack.encode(x) @ a.head.weight.T, atol=1e-6)


def test_bad_stacks_and_arguments_raise():
    with pytest.raises(ValueError, match="no layers"):
        UnrolledEncoder([])
    with pytest.raises(ValueError, match="n_hidden=32 but layer 2 has n_visible=16"):
        UnrolledEncoder([AutoEncoder(64, 32), AutoEncoder(16, 8)])
    with pytest.raises(ValueError, match="n_classes"):
        unroll_mlp(ae_stack(), 1)
    encoder = UnrolledEncoder(Stack([AutoEncoder(64, 8)]))
    with pytest.raises(ValueError, match="same stack"):
        UnrolledDecoder(ae_stack(), encoder)
    stack = ae_stack()
    _, decoder = unroll_autoencoder(stack)
    with pytest.raises(ValueError, match="not this encoder's"):
        decoder.check_encoder(UnrolledEncoder(stack))


def test_reset_parameters_forgets_pretraining_reproducibly():
    stack = ae_stack(torch.float32)
    e1, d1 = unroll_autoencoder(stack)
    e2, d2 = unroll_autoencoder(stack)
    for e, d in ((e1, d1), (e2, d2)):
        g = torch.Generator().manual_seed(7)
        e.reset_parameters(g)
        d.reset_parameters(g)
    assert not torch.equal(e1.layers[0].weight, stack[0].W)
    for p, q in zip(torch.nn.ModuleList([e1, d1]).parameters(), torch.nn.ModuleList([e2, d2]).parameters()):
        assert torch.equal(p, q)
    assert d1.layers[2].W is e1.layers[0].weight  # still tied after the reset
    assert torch.all(e1.layers[0].bias == 0) and torch.all(d1.layers[0].c == 0)
