"""``pipelines.flop_count``: the matmul flops of the fits inside a block, Eq. (1) there, against
an exact trace of every op of the same fits (torch's ``FlopCounterMode`` around the whole fit)."""
import pytest
import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode
from torch.utils.flop_counter import FlopCounterMode

from pipelines import flop_count, training
from pretrain.presets import make_layer
from pretrain.rbm import RBM


def _data(n: int, d: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, d, generator=torch.Generator().manual_seed(seed))


def _fit(layer, X, X_val, batch_size):
    training.fit_layer(layer, X, X_val, epochs=2, batch_size=batch_size, seed=0)


def _traced(make, X, X_val, batch_size) -> float:
    """Every op of the fit counted (no tally open, so no estimate runs beside it)."""
    with FlopCounterMode(display=False) as mode:
        _fit(make(), X, X_val, batch_size)
    return float(mode.get_total_flops())


@pytest.mark.parametrize("make", [
    lambda: make_layer("cae_h", 12, 5, seed=0),
    lambda: RBM(12, 5, seed=0),  # 10 updates a Lightning step
], ids=["cae_h", "rbm"])
def test_equal_batches_give_the_exact_count(make):
    X, X_val = _data(200), _data(40, seed=1)  # 200 / 20: 10 equal batches; validation 2 of 20
    with flop_count.counting() as tally:
        _fit(make(), X, X_val, 20)
    exact = _traced(make, X, X_val, 20)
    assert exact > 0 and tally.flops == pytest.approx(exact, rel=1e-12)


def test_a_smaller_last_batch_is_counted_as_a_full_one():
    make = lambda: make_layer("cae", 12, 5, seed=0)
    X, X_val = _data(210), _data(45, seed=1)  # a last batch of 10 (training) and 5 (validation)
    with flop_count.counting() as tally:
        _fit(make(), X, X_val, 20)
    exact = _traced(make, X, X_val, 20)
    with flop_count.counting() as full:
        _fit(make(), _data(220), _data(60, seed=1), 20)  # every batch full: the bound
    assert exact < tally.flops == pytest.approx(full.flops, rel=1e-12)


def test_only_an_open_count_adds_the_callback_and_nested_counts_both_see_a_fit():
    assert not any(isinstance(c, flop_count.StepFlops) for c in training.make_trainer(max_epochs=1).callbacks)
    with flop_count.counting() as outer:
        with flop_count.counting() as inner:
            assert any(isinstance(c, flop_count.StepFlops) for c in training.make_trainer(max_epochs=1).callbacks)
            _fit(make_layer("dae", 12, 5, seed=0), _data(40), None, 20)
        first = outer.flops
        _fit(make_layer("dae", 12, 5, seed=0), _data(40), None, 20)
    assert inner.flops == first > 0 and outer.flops == pytest.approx(2 * first)
    with flop_count.counting() as a:
        with flop_count.counted():
            torch.mm(torch.ones(3, 4), torch.ones(4, 5))
    assert a.flops == 2 * 3 * 4 * 5


def test_a_fit_that_raises_leaves_no_counter_running():
    layer = make_layer("cae", 12, 5, seed=0)
    bad = _data(40) * 300  # outside [0, 1]: the cross-entropy layer refuses it in its first step
    with flop_count.counting():
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            _fit(layer, bad, None, 20)
    assert _get_current_dispatch_mode() is None
