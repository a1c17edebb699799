"""The pool-epoch speed benchmark measures what it says: its raw VAT loop is the module's update
(weights equal after an epoch through a Trainer), its ideal counts the update's products exactly
(Eq. 2 of ``pipelines.bench.timing.pool_epoch`` against torch's flop counter), and its rows run."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines.bench.timing import pool_epoch as pe

D = torch.float64
CPU = torch.device("cpu")


def _data(n_pool=23, n_lab=7, d=12, seed=0):
    g = np.random.default_rng(seed)
    X = g.random((n_pool, d))
    y = np.arange(n_pool) % 3
    return X, X[:n_lab], y[:n_lab]


def test_raw_vat_loop_is_the_trainers_update():
    """One pool epoch (23 rows in batches of 4: an odd last batch; 7 labeled rows in batches of 3,
    cycled), float64: the raw loop's weights equal the Trainer's bit for bit, and both moved."""
    X, X_lab, y_lab = _data()
    module, ref = pe.build("vat", 12, (8, 6)).to(D), pe.build("vat", 12, (8, 6)).to(D)
    init = [p.detach().clone() for p in module.parameters()]
    dm = lambda: pe.data_module(X, X_lab, y_lab, batch_size=3, pool_batch=4, dtype=D)
    torch.manual_seed(3)
    pe.fit_epoch(module, dm(), CPU)
    torch.manual_seed(3)
    raw, _ = pe.train_raw_vat(ref, dm(), CPU)
    trained = [p.detach() for p in module.parameters()]
    for a, b in zip(trained, raw):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    assert min((a - b).abs().max().item() for a, b in zip(trained, init)) > 1e-3  # it trained


def test_raw_vat_loop_follows_the_random_directions():
    """Another seed of the directions gives other weights: the loops agree because they draw the
    same directions, not because the penalty does nothing."""
    X, X_lab, y_lab = _data()
    dm = lambda: pe.data_module(X, X_lab, y_lab, batch_size=3, pool_batch=4, dtype=D)
    out = []
    for seed in (3, 4):
        torch.manual_seed(seed)
        out.append(pe.train_raw_vat(pe.build("vat", 12, (8, 6)).to(D), dm(), CPU)[0])
    assert max((a - b).abs().max().item() for a, b in zip(*out)) > 1e-8


@pytest.mark.parametrize("n_lab,pool_batch", [(7, 4), (9, 5)])
def test_vat_step_flops_are_eq_2(n_lab, pool_batch):
    X, X_lab, y_lab = _data(n_lab=n_lab)
    counted = pe.step_flops("vat", X, X_lab, y_lab, hidden=(8, 6), pool_batch=pool_batch)
    assert counted == pe.vat_flops(n_lab, n_lab + pool_batch, [12, 8, 6, pe.N_CLASSES])


@pytest.mark.parametrize("n_lab,pool_batch", [(7, 4), (9, 5)])
def test_ladder_step_flops_are_eq_3(n_lab, pool_batch):
    X, X_lab, y_lab = _data(n_lab=n_lab)
    counted = pe.step_flops("ladder", X, X_lab, y_lab, hidden=(8, 6), pool_batch=pool_batch)
    assert counted == pe.ladder_flops(n_lab + pool_batch, [12, 8, 6, pe.N_CLASSES])


def test_bench_pool_epoch_rows_and_unknown_method():
    X, X_lab, y_lab = _data(n_pool=200, d=20)
    r = pe.bench_pool_epoch("vat", X.astype(np.float32), X_lab.astype(np.float32), y_lab, hidden=(16, 16),
                            repeats=1, seconds=0.05)
    assert set(r["seconds_per_epoch"]) == {"lightning", "raw", "matmul"}
    assert r["steps"] == 2 and all(v > 0 for v in r["seconds_per_epoch"].values())
    assert r["gflop_per_step"] * 1e9 == pytest.approx(pe.vat_flops(7, 107, [20, 16, 16, pe.N_CLASSES]))
    r = pe.bench_pool_epoch("ladder", X.astype(np.float32), X_lab.astype(np.float32), y_lab, hidden=(16, 16),
                            repeats=1, seconds=0.05)
    assert set(r["seconds_per_epoch"]) == {"lightning", "matmul"}
    with pytest.raises(ValueError, match="unknown pool-epoch method 'mtc'.*vat, ladder"):
        pe.build("mtc", 12)
