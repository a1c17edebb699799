"""Slice batching: coverage per epoch, seeded permutations, DDP shards, real Trainer fits and resumes."""
import lightning.pytorch as L
import numpy as np
import pytest
import torch

from pipelines.bench.timing.batching import bench_batching
from pipelines.data.datamodule import ArrayDataModule, PairedLoader, SliceLoader

N, D = 250, 3


def _data(n=N):
    X = torch.rand(n, D)
    X[:, 0] = torch.arange(n, dtype=torch.float32)  # column 0 names the row
    return X, torch.arange(n) % 4


def _ids(batches):
    return torch.cat([(b[0] if isinstance(b, tuple) else b)[:, 0] for b in batches]).long()


def test_every_row_once_per_epoch_with_labels_kept_aligned():
    X, y = _data()
    loader = SliceLoader(X, y, batch_size=100, seed=0)
    batches = list(loader)
    assert len(loader) == len(batches) == 3
    assert [len(b[0]) for b in batches] == [100, 100, 50]
    ids = _ids(batches)
    assert sorted(ids.tolist()) == list(range(N))
    assert torch.equal(torch.cat([b[1] for b in batches]), y[ids])  # each x keeps its own label
    assert not torch.equal(ids, torch.arange(N))  # shuffled
    # a batch is rows indices()[b B:(b + 1) B] of X
    assert torch.equal(batches[1][0], X[loader.indices()[100:200]])
    assert len(SliceLoader(X, batch_size=100, drop_last=True)) == 2
    assert sum(len(b) for b in SliceLoader(X, batch_size=100, drop_last=True)) == 200


def test_permutation_depends_on_seed_and_epoch_only():
    X, _ = _data()
    a = SliceLoader(X, seed=5)
    first = _ids(a)
    a.set_epoch(1)
    second = _ids(a)
    assert not torch.equal(first, second)
    b = SliceLoader(X, seed=5, epoch=1)
    assert torch.equal(_ids(b), second)  # same (seed, epoch): same order, a fresh object
    assert torch.equal(_ids(a), second)  # iterating again does not advance anything
    assert not torch.equal(_ids(SliceLoader(X, seed=6, epoch=1)), second)
    assert torch.equal(_ids(SliceLoader(X, seed=5, epoch_fn=lambda: 1)), second)


def test_unshuffled_batches_are_views_in_order_and_unlabeled_batches_are_tensors():
    X, _ = _data()
    batches = list(SliceLoader(X, batch_size=64, shuffle=False))
    assert all(isinstance(b, torch.Tensor) for b in batches)
    assert torch.equal(_ids(batches), torch.arange(N))
    assert batches[1].data_ptr() == X[64:].data_ptr()  # a slice, no copy


@pytest.mark.parametrize("drop_last", [False, True])
def test_ddp_shards_are_equal_disjoint_and_cover_the_epoch(drop_last):
    X, _ = _data()
    world = 3
    shards = [SliceLoader(X, batch_size=10, seed=2, epoch=4, rank=r, world_size=world, drop_last=drop_last)
              for r in range(world)]
    idx = [s.indices() for s in shards]
    assert len({len(i) for i in idx}) == 1 and len({len(s) for s in shards}) == 1
    counts = torch.bincount(torch.cat(idx), minlength=N)
    if drop_last:  # cut to 249 rows: every row at most once
        assert len(idx[0]) == 83 and counts.max() == 1 and counts.sum() == 249
    else:  # padded to 252 rows with the permutation's head: all rows, two of them twice
        assert len(idx[0]) == 84 and counts.min() == 1 and (counts == 2).sum() == 2
    one = SliceLoader(X, seed=2, epoch=4).indices()
    for r in range(world):  # the strided shard of the single-process permutation
        n = len(idx[r])
        assert torch.equal(idx[r], torch.cat([one, one])[r::world][:n])
    seen = _ids(shards[0])  # drop_last also drops the shard's last incomplete batch
    assert torch.equal(seen, idx[0][:80] if drop_last else idx[0])


class _Recorder(L.LightningModule):
    """A tiny classifier that records which rows it saw in each epoch."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(D, 4)
        self.seen: dict[int, list[torch.Tensor]] = {}
        self.val_batches = 0

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.seen.setdefault(self.current_epoch, []).append(x[:, 0].long().clone())
        return torch.nn.functional.cross_entropy(self.net(x[:, 1:].repeat(1, 2)[:, :D]), y)

    def validation_step(self, batch, batch_idx):
        self.val_batches += 1

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _trainer(max_epochs, **kw):
    return L.Trainer(max_epochs=max_epochs, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, **kw)


def test_trainer_sees_the_seeded_permutation_of_each_epoch_and_validates():
    X, y = _data()
    dm = ArrayDataModule(X.numpy(), y.numpy(), X[:30].numpy(), y[:30].numpy(), batch_size=100, seed=9)
    model = _Recorder()
    _trainer(3).fit(model, datamodule=dm)
    assert sorted(model.seen) == [0, 1, 2]
    for epoch, ids in model.seen.items():
        assert torch.equal(torch.cat(ids), SliceLoader(X, seed=9, epoch=epoch).indices())
    assert model.val_batches == 1 + 3  # the sanity check, then one 30-row batch per epoch
    assert dm.hparams.batch_size == 100 and dm.hparams.seed == 9


def test_validation_batches_have_their_own_size_and_cover_every_row_in_order():
    X, y = _data()
    Xv, yv = X[:130].numpy(), y[:130].numpy()
    dm = ArrayDataModule(X.numpy(), y.numpy(), Xv, yv, batch_size=20, val_batch_size=60)
    assert [len(b[0]) for b in dm.val_dataloader()] == [60, 60, 10]
    assert [len(b[0]) for b in ArrayDataModule(X, y, Xv, yv, batch_size=20).val_dataloader()] == [20] * 6 + [10]
    assert torch.equal(_ids(dm.val_dataloader()), torch.arange(130))  # every row once, in order
    with pytest.raises(ValueError, match="val_batch_size must be > 0, got 0"):
        ArrayDataModule(X, y, Xv, yv, val_batch_size=0)
    with pytest.raises(ValueError, match="val_batch_size must be an integer, got 2.5"):
        ArrayDataModule(X, y, Xv, yv, val_batch_size=2.5)


def test_no_validation_data_skips_validation():
    X, y = _data()
    model = _Recorder()
    _trainer(1).fit(model, datamodule=ArrayDataModule(X, y, batch_size=50))
    assert model.val_batches == 0 and len(model.seen[0]) == 5


def test_resumed_run_sees_the_same_permutations(tmp_path):
    X, y = _data()
    full = _Recorder()
    _trainer(3).fit(full, datamodule=ArrayDataModule(X, y, batch_size=100, seed=1))
    first = _Recorder()
    t = _trainer(1)
    t.fit(first, datamodule=ArrayDataModule(X, y, batch_size=100, seed=1))
    t.save_checkpoint(tmp_path / "epoch1.ckpt")
    resumed = _Recorder()
    _trainer(3).fit(resumed, datamodule=ArrayDataModule(X, y, batch_size=100, seed=1),
                    ckpt_path=tmp_path / "epoch1.ckpt", weights_only=False)
    assert sorted(resumed.seen) == [1, 2]
    for epoch in (1, 2):
        assert torch.equal(torch.cat(resumed.seen[epoch]), torch.cat(full.seen[epoch]))


def test_dtype_conversion_and_input_checks():
    X, y = _data()
    dm = ArrayDataModule(X.numpy().astype(np.float32), y.numpy(), dtype="float64")
    x0, y0 = next(iter(dm.train_dataloader()))
    assert x0.dtype == torch.float64 and y0.dtype == torch.int64 and x0.shape == (100, D)
    ro = X.numpy().copy()
    ro.setflags(write=False)
    assert ArrayDataModule(ro).X_train.dtype == torch.float32  # read-only arrays are fine
    with pytest.raises(ValueError, match="batch_size must be > 0, got 0"):
        ArrayDataModule(X, batch_size=0)
    with pytest.raises(ValueError, match=r"y_train must be 1-D with one label per row of X_train \(250\)"):
        ArrayDataModule(X, y[:10])
    bad = X.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="X_train has NaN or infinite values"):
        ArrayDataModule(bad)
    with pytest.raises(ValueError, match="X_train must be a non-empty 2-D array"):
        ArrayDataModule(X[:, 0])
    with pytest.raises(ValueError, match="dtype must be float32 or float64"):
        ArrayDataModule(X, dtype=torch.int32)
    with pytest.raises(ValueError, match="need 0 <= rank < world_size, got rank=3"):
        SliceLoader(X, rank=3, world_size=3)


# -- aligned extras and the paired unlabeled stream (the MTC's batches) ----------------------------

def test_extra_tensors_stay_aligned_with_rows():
    X = torch.arange(20, dtype=torch.float32).reshape(10, 2)
    y = torch.arange(10)
    U = X[:, None, :] * 10  # (10, 1, 2): row i's extra is 10 * row i
    dm = ArrayDataModule(X, y, batch_size=3, seed=1, train_extra=(U,))
    seen = []
    for x, yb, Ub in dm.train_dataloader():
        torch.testing.assert_close(Ub[:, 0, :], x * 10)
        torch.testing.assert_close(x[:, 0], 2 * yb.float())
        seen += yb.tolist()
    assert sorted(seen) == list(range(10))


def test_paired_loader_draws_fresh_pool_rows_each_epoch_deterministically():
    X, y = torch.rand(8, 3), torch.arange(8)
    pool = torch.arange(50, dtype=torch.float32)[:, None].repeat(1, 3)
    mk = lambda e: PairedLoader(SliceLoader(X, y, batch_size=4, seed=0, epoch=e), (pool, pool * 2),
                                batch_size=5, seed=0)
    b0 = list(mk(0))
    assert len(b0) == 2 and set(b0[0]) == {"labeled", "unlabeled"}
    xu, eu = b0[0]["unlabeled"]
    assert xu.shape == (5, 3)
    torch.testing.assert_close(eu, xu * 2)  # the pool's extra stays aligned
    rows0 = torch.cat([b["unlabeled"][0][:, 0] for b in b0])
    assert len(set(rows0.tolist())) == 10  # no repeats within an epoch when the pool is larger
    rows0_again = torch.cat([b["unlabeled"][0][:, 0] for b in mk(0)])
    rows1 = torch.cat([b["unlabeled"][0][:, 0] for b in mk(1)])
    assert torch.equal(rows0, rows0_again) and not torch.equal(rows0, rows1)


def test_paired_loader_cycles_a_small_pool():
    X, y = torch.rand(12, 2), torch.arange(12)
    pool = torch.arange(4, dtype=torch.float32)[:, None]
    batches = list(PairedLoader(SliceLoader(X, y, batch_size=3), (pool,), batch_size=4))
    assert len(batches) == 4
    rows = torch.cat([b["unlabeled"][0][:, 0] for b in batches])
    assert sorted(set(rows.tolist())) == [0.0, 1.0, 2.0, 3.0] and len(rows) == 16


def _pool_epoch(e, *, n_lab=10, n_pool=100, B=4, B_u=10, rank=0, world=1):
    X = torch.arange(n_lab, dtype=torch.float32)[:, None]
    pool = 1000 + torch.arange(n_pool, dtype=torch.float32)[:, None]
    lab = SliceLoader(X, torch.arange(n_lab), batch_size=B, seed=3, epoch=e, rank=rank, world_size=world)
    return PairedLoader(lab, (pool,), batch_size=B_u, seed=3, epoch_over="pool")


def test_a_pool_epoch_passes_over_the_pool_once_and_cycles_the_labels():
    """S = ceil(100 / 10) = 10 steps; the 10 labels in batches of 4 make 3 batches a pass, so
    R = 4 passes an epoch, cut at 10 batches: three whole permutations of the labels, then the
    first batch of the fourth; pass r of epoch e is the labeled loader's epoch 4 e + r."""
    loader = _pool_epoch(2)
    batches = list(loader)
    assert len(loader) == len(batches) == 10
    pool_rows = torch.cat([b["unlabeled"][0][:, 0] for b in batches])
    assert sorted(pool_rows.tolist()) == [1000.0 + i for i in range(100)]  # every pool row once
    lab = [b["labeled"][0][:, 0] for b in batches]
    for r in range(3):
        assert sorted(torch.cat(lab[3 * r:3 * r + 3]).tolist()) == [float(i) for i in range(10)]
        expect = [x for x, _ in loader.labeled.batches(2 * 4 + r)]
        assert all(torch.equal(a, b[:, 0]) for a, b in zip(lab[3 * r:3 * r + 3], expect))
    assert torch.equal(lab[9], next(loader.labeled.batches(2 * 4 + 3))[0][:, 0])
    assert [len(x) for x in lab] == [4, 4, 2] * 3 + [4]
    again = [b["labeled"][0] for b in _pool_epoch(2)]  # a resumed epoch sees the same batches
    assert all(torch.equal(a[:, None], b) for a, b in zip(lab, again))
    assert not torch.equal(torch.cat(lab), torch.cat([b["labeled"][0][:, 0] for b in _pool_epoch(3)]))


def test_a_pool_epoch_smaller_than_the_labels_is_cut_short_and_shards_under_ddp():
    short = list(_pool_epoch(0, n_lab=40, n_pool=20, B=4, B_u=10))  # S = 2 < 10 labeled batches
    assert len(short) == 2 and [len(b["labeled"][0]) for b in short] == [4, 4]
    ranks = [_pool_epoch(1, n_pool=95, B_u=10, rank=r, world=2) for r in range(2)]
    assert [len(r) for r in ranks] == [5, 5]  # ceil(95 / (10 * 2))
    rows = torch.cat([b["unlabeled"][0][:, 0] for r in ranks for b in r])
    assert set(rows.tolist()) == {1000.0 + i for i in range(95)} and len(rows) == 100  # padded
    with pytest.raises(ValueError, match="epoch_over must be one of labeled, pool, got 'unlabeled'"):
        PairedLoader(SliceLoader(torch.rand(4, 1)), (torch.rand(4, 1),), batch_size=2, epoch_over="unlabeled")
    with pytest.raises(ValueError, match="epoch_over must be one of labeled, pool"):
        ArrayDataModule(torch.rand(4, 1), torch.zeros(4), epoch_over="all")


def test_bench_batching_times_one_epoch_of_each_loader():
    X, y = _data(1000)
    results = bench_batching(X.numpy(), 100, y=y.numpy(), repeats=1)
    assert set(results) == {"SliceLoader (ArrayDataModule)", "TensorDataset + DataLoader"}
    for r in results.values():
        assert r["batches"] == 10 and r["batches_per_s"] > 0
        assert abs(r["rows_per_s"] - 100 * r["batches_per_s"]) < 1e-6 * r["rows_per_s"]
