"""The tangent cache: hits, misses on every input, damaged files, and keys stable across releases."""
import copy
import os

import torch

import pipelines.stages.tangent_cache as tc
from finetune.tangents import tangents
from pipelines.stages.tangent_cache import cached_tangents
from pretrain.autoencoder import AutoEncoder
from pretrain.stack import Stack


def _stack(sizes, units, seed=0, dtype=torch.float64):
    layers = [AutoEncoder(a, c, hidden_unit=u, seed=seed + i)
              for i, (a, c, u) in enumerate(zip(sizes[:-1], sizes[1:], units))]
    return Stack(layers).to(dtype)


def _x(n, d, seed=0, dtype=torch.float64):
    return torch.rand(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_cache_round_trip_and_misses(tmp_path, monkeypatch):
    stack = _stack((64, 30, 12), ("sigmoid", "sigmoid"))
    X = _x(6, 64)
    U, S = cached_tangents(stack, X, 4, tmp_path, oversample=2)
    files = sorted(tmp_path.iterdir())
    assert len(files) == 1 and files[0].suffix == ".pt"  # no temporary file left behind
    U_ref, S_ref = tangents(stack, X, 4, oversample=2)
    assert torch.equal(U, U_ref) and torch.equal(S, S_ref)

    calls = []
    real = tc.tangents
    monkeypatch.setattr(tc, "tangents", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    U2, S2 = cached_tangents(stack, X, 4, tmp_path, oversample=2)
    assert calls == [] and torch.equal(U2, U) and torch.equal(S2, S)  # a hit: nothing computed

    other = _stack((64, 30, 12), ("sigmoid", "sigmoid"))
    with torch.no_grad():
        other[1].W[0, 0] += 1e-3
    cached_tangents(other, X, 4, tmp_path, oversample=2)  # another stack misses
    X2 = X.clone()
    X2[0, 0] += 1e-6
    cached_tangents(stack, X2, 4, tmp_path, oversample=2)  # another X misses
    cached_tangents(stack, X, 3, tmp_path, oversample=2)  # another k misses
    tanh_top = copy.deepcopy(stack)  # same weights, another unit
    tanh_top[1].hidden_unit = "tanh"
    cached_tangents(tanh_top, X, 4, tmp_path, oversample=2)
    assert len(calls) == 4 and len(list(tmp_path.iterdir())) == 5

    files[0].write_bytes(b"truncated")  # a damaged cache file is recomputed, not trusted
    U3, _ = cached_tangents(stack, X, 4, tmp_path, oversample=2)
    assert len(calls) == 5 and torch.equal(U3, U)
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]



def test_the_cache_key_changes_with_the_algorithm_version(monkeypatch):
    stack = _stack((64, 30, 12), ("sigmoid", "sigmoid"))
    X = _x(3, 64)
    key = tc.tangent_key(stack, X, 4, oversample=2)
    assert tc.tangent_key(stack, X, 4, oversample=2) == key
    monkeypatch.setattr(tc, "ALGORITHM", tc.ALGORITHM + " next")
    assert tc.tangent_key(stack, X, 4, oversample=2) != key



def test_a_key_written_by_an_earlier_release_is_found():
    # computed with the release before the cache moved to pipelines.stages: the same stack,
    # inputs and options must name the same file, or every cached pool's tangents are lost
    st = Stack([AutoEncoder(6, 4, seed=0), AutoEncoder(4, 3, seed=1)]).eval()
    X = torch.linspace(0, 1, 5 * 6).reshape(5, 6)
    assert tc.tangent_key(st, X, 2, oversample=2) == (
        "0c675a32edd0aea9a7e56119839470c53b8ed5e31bb67c2dcc85010e2ad95032")


def test_the_key_of_a_convolutional_stack_covers_its_geometry():
    # the same filter bytes under another padding or pooling are another Jacobian
    from pretrain.presets import make_layer

    X = _x(3, 36, dtype=torch.float32)
    keys = set()
    for padding, pool, n_hidden in (("valid", 1, 2 * 4 * 4), ("same", 1, 2 * 6 * 6), ("valid", 2, 2 * 2 * 2)):
        layer = make_layer("conv_ae", 36, n_hidden, in_shape=(1, 6, 6), maps=2, kernel=3,
                           padding=padding, pool=pool, seed=0)
        keys.add(tc.tangent_key(Stack([layer]), X, 2, oversample=2))
    assert len(keys) == 3
