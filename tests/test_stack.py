"""The greedy stack: encoding equals layer by layer, sizes are checked, codes feed the next layer."""
import pytest
import torch

from pretrain.autoencoder import AutoEncoder
from pretrain.presets import make_layer
from pretrain.stack import GreedyStack, Stack


def _layers(dtype=torch.float32):
    layers = [AutoEncoder(20, 12, seed=1), AutoEncoder(12, 6, hidden_unit="tanh", loss="mse",
                                                        seed=2), make_layer("rbm", 6, 4, seed=3)]
    return [layer.to(dtype) for layer in layers]


def test_stack_encoding_equals_layer_by_layer():
    layers = _layers(torch.float64)
    stack = Stack(layers)
    x = torch.rand(7, 20, dtype=torch.float64)
    h = x
    for layer in layers:
        h = layer.encode(h)
    torch.testing.assert_close(stack.encode(x), h, rtol=0, atol=0)
    torch.testing.assert_close(stack.encode(x, depth=2), layers[1].encode(layers[0].encode(x)))
    r = layers[0].decode(layers[1].decode(layers[2].decode(h)))
    torch.testing.assert_close(stack.reconstruct(x), r, rtol=0, atol=0)
    assert stack.sizes == [20, 12, 6, 4] and stack.n_visible == 20 and stack.n_hidden == 4


def test_transform_in_batches_equals_full():
    stack = Stack(_layers(torch.float64))
    X = torch.rand(50, 20, dtype=torch.float64)
    torch.testing.assert_close(stack.transform(X, batch_size=7), stack.encode(X))


def test_float32_and_float64_agree():
    s32, s64 = Stack(_layers(torch.float32)), Stack(_layers(torch.float64))
    x = torch.rand(9, 20, dtype=torch.float64)
    torch.testing.assert_close(s32.encode(x.float()).double(), s64.encode(x), rtol=1e-5, atol=1e-6)


def test_mismatched_sizes_are_a_clear_error():
    with pytest.raises(ValueError, match=r"layer 2 has n_visible=11 but layer 1 below it has n_hidden=12"):
        Stack([AutoEncoder(20, 12), AutoEncoder(11, 6)])
    with pytest.raises(ValueError, match="at least one layer"):
        Stack([])


def test_greedy_fit_feeds_each_layer_the_codes_below():
    layers = _layers(torch.float64)
    X = torch.rand(30, 20, dtype=torch.float64)
    seen = []

    def fit_layer(k, layer, codes, val_codes):
        seen.append((k, codes.clone(), None if val_codes is None else val_codes.clone()))
        with torch.no_grad():  # a stand-in for training: change the weights
            layer.encoder_weight.mul_(1.5)

    stack = GreedyStack(layers).fit(X, fit_layer, X_val=X[:5])
    assert [k for k, _, _ in seen] == [0, 1, 2]
    torch.testing.assert_close(seen[1][1], layers[0].encode(X))  # codes of the trained layer 1
    torch.testing.assert_close(seen[2][1], layers[1].encode(layers[0].encode(X)))
    torch.testing.assert_close(seen[2][2], stack.encode(X[:5], depth=2))
    assert layers[0].layer_name == "layer 1"


def test_greedy_fit_start_skips_trained_layers_but_computes_their_codes():
    layers = _layers(torch.float64)
    X = torch.rand(10, 20, dtype=torch.float64)
    fitted = []
    GreedyStack(layers).fit(X, lambda k, layer, c, v: fitted.append((k, c)), start=2)
    assert [k for k, _ in fitted] == [2]
    torch.testing.assert_close(fitted[0][1], layers[1].encode(layers[0].encode(X)))
