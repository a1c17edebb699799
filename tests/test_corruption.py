"""Corruption processes: rates and moments against their definitions, purity, determinism."""
import math

import pytest
import torch

from pretrain.corruption import CORRUPTIONS, check_corruption, corrupt

N = 200_000  # draws per statistic: binomial std of a rate p is sqrt(p (1 - p) / N) <= 0.0012


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def binomial_tol(p: float, n: int = N) -> float:
    return 5.0 * math.sqrt(p * (1.0 - p) / n)  # 5 standard deviations


def test_kinds():
    assert CORRUPTIONS == ("none", "gaussian", "masking", "salt_pepper")


@pytest.mark.parametrize("p", [0.1, 0.25, 0.5])
def test_masking_zeroes_a_fraction_p_and_keeps_the_rest(p):
    x = 0.5 + torch.rand(N, generator=gen(1))  # no zeros in x, so a zero in x~ is a masked input
    x_tilde = corrupt(x, "masking", p, gen())
    zero = x_tilde == 0
    assert abs(zero.double().mean().item() - p) < binomial_tol(p)
    assert torch.equal(x_tilde[~zero], x[~zero])  # kept inputs are untouched, not rescaled


@pytest.mark.parametrize("sigma", [0.1, 1.0, 2.5])
def test_gaussian_noise_has_std_sigma_and_mean_zero(sigma):
    x = torch.linspace(-1, 1, N, dtype=torch.float64)
    eps = corrupt(x, "gaussian", sigma, gen()) - x
    # std of the sample std is sigma / sqrt(2N); of the sample mean sigma / sqrt(N)
    assert abs(eps.std().item() - sigma) < 5 * sigma / math.sqrt(2 * N)
    assert abs(eps.mean().item()) < 5 * sigma / math.sqrt(N)


@pytest.mark.parametrize("p", [0.2, 0.6])
def test_salt_pepper_fraction_and_balance(p):
    x = torch.full((N,), 0.5)  # neither 0 nor 1: every changed entry is visible
    x_tilde = corrupt(x, "salt_pepper", p, gen())
    changed = x_tilde != 0.5
    assert abs(changed.double().mean().item() - p) < binomial_tol(p)
    values = x_tilde[changed]
    assert set(values.unique().tolist()) <= {0.0, 1.0}
    n = changed.sum().item()
    assert abs((values == 1).double().mean().item() - 0.5) < binomial_tol(0.5, n)


@pytest.mark.parametrize("kind,level", [("gaussian", 0.3), ("masking", 0.3), ("salt_pepper", 0.3)])
def test_input_not_mutated_and_same_seed_same_output(kind, level):
    x = torch.rand(64, 20, generator=gen(5))
    before = x.clone()
    a = corrupt(x, kind, level, gen(7))
    assert torch.equal(x, before)
    assert a.data_ptr() != x.data_ptr()
    assert torch.equal(a, corrupt(x, kind, level, gen(7)))
    assert not torch.equal(a, corrupt(x, kind, level, gen(8)))
    assert a.shape == x.shape and a.dtype == x.dtype


def test_generator_state_advances_between_calls():
    g = gen(3)
    x = torch.rand(100, 10)
    assert not torch.equal(corrupt(x, "masking", 0.5, g), corrupt(x, "masking", 0.5, g))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_kept(dtype):
    x = torch.rand(10, 4, dtype=dtype)
    for kind in CORRUPTIONS[1:]:
        assert corrupt(x, kind, 0.3, gen()).dtype == dtype


def test_none_and_zero_level_are_the_identity():
    x = torch.rand(10, 4)
    assert corrupt(x, "none", 0.0, None) is x
    for kind in CORRUPTIONS[1:]:
        assert torch.equal(corrupt(x, kind, 0.0, gen()), x)


def test_full_masking_zeroes_everything():
    assert torch.count_nonzero(corrupt(torch.rand(50, 8) + 0.1, "masking", 1.0, gen())) == 0


@pytest.mark.parametrize("kind,level,match", [
    ("dropout", 0.1, "'dropout'"),
    ("masking", 1.5, "1.5"),
    ("masking", -0.1, "-0.1"),
    ("salt_pepper", 2.0, "2.0"),
    ("gaussian", -1.0, "-1.0"),
    ("gaussian", float("nan"), "nan"),
    ("none", 0.3, "0.3"),
])
def test_bad_kind_or_level_raises_naming_the_value(kind, level, match):
    with pytest.raises(ValueError, match=match):
        corrupt(torch.rand(3, 3), kind, level, gen())
    with pytest.raises(ValueError, match=match):
        check_corruption(kind, level)
