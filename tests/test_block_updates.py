"""Several updates per Lightning step (``updates_per_step``, ``pretrain.module.Block``): the loader
gives every batch of K = 1 in the same order, and an RBM trained K batches a step ends bit for bit
where one trained a batch a step ends: weights, Gibbs chains, noise streams, optimizer steps,
logged epoch means, a resumed fit, the non-finite guard's step."""
import lightning.pytorch as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from pipelines.data.datamodule import ArrayDataModule, SliceLoader
from pipelines.training import fit_layer, make_trainer, quiet_lightning
from pretrain.autoencoder import AutoEncoder
from pretrain.module import Block
from pretrain.rbm import RBM

quiet_lightning()
# 1050 rows in batches of 32: 33 batches, the last of 26 rows; K = 4 leaves a last block of 1 batch
X = torch.rand(1050, 20, generator=torch.Generator().manual_seed(0))
X_VAL = torch.rand(64, 20, generator=torch.Generator().manual_seed(1))


def _flatten(loader):
    """The batches a loader yields, blocks opened, with each block's (first, last)."""
    out, marks = [], []
    for item in loader:
        if isinstance(item, Block):
            marks.append((item.first, item.last))
            out.extend(item.batches)
        else:
            out.append(item)
    return out, marks


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("K", [2, 4, 33, 50])
def test_blocks_hold_the_batches_of_one_a_step_in_order(shuffle, K):
    y = torch.arange(len(X))
    one = SliceLoader(X, y, batch_size=32, shuffle=shuffle, seed=3, epoch=2)
    blocks = SliceLoader(X, y, batch_size=32, shuffle=shuffle, seed=3, epoch=2, batches_per_step=K)
    a, _ = _flatten(one)
    b, marks = _flatten(blocks)
    assert len(one) == 33 and len(blocks) == -(-33 // K)
    assert len(a) == len(b) == 33 and len(b[-1][0]) == 26
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert [m[0] for m in marks] == list(range(0, 33, K))
    assert [m[1] for m in marks] == [False] * (len(marks) - 1) + [True]


def test_drop_last_blocks_drop_the_same_batch():
    one = _flatten(SliceLoader(X, batch_size=32, drop_last=True, seed=0))[0]
    blocks = _flatten(SliceLoader(X, batch_size=32, drop_last=True, seed=0, batches_per_step=4))[0]
    assert len(one) == len(blocks) == 32
    assert all(torch.equal(a, b) for a, b in zip(one, blocks))


def _fit(K, epochs=3, root=None, ckpt=None, callbacks=(), **kw):
    rbm = RBM(20, 8, seed=1, **kw)
    rbm.updates_per_step = K
    trainer = None if ckpt is not None else fit_layer(rbm, X, X_VAL, epochs=epochs, batch_size=32, seed=5,
                                                      ckpt_dir=root, callbacks=callbacks)
    if ckpt is not None:  # resume by hand from a given checkpoint
        trainer = make_trainer(None, max_epochs=epochs, checkpointing=True, root_dir=root,
                               callbacks=[ModelCheckpoint(dirpath=root, save_last=True, save_top_k=1)])
        trainer.fit(rbm, datamodule=ArrayDataModule(X, None, X_VAL, batch_size=32, seed=5, batches_per_step=K),
                    ckpt_path=ckpt)
    return rbm, trainer


def _same_state(a, b):
    for (name, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(p, q), name
    assert a._generators.keys() == b._generators.keys()
    for k in a._generators:
        assert torch.equal(a._generators[k].get_state(), b._generators[k].get_state()), k


@pytest.mark.parametrize("kw", [{}, {"persistent": True}, {"centred": True}], ids=["cd", "pcd", "centred"])
@pytest.mark.parametrize("K", [3, 4])
def test_rbm_k_a_step_equals_one_a_step_bit_for_bit(kw, K):
    one, t1 = _fit(1, **kw)
    many, tk = _fit(K, **kw)
    _same_state(one, many)
    assert not torch.equal(one.W, RBM(20, 8, seed=1, **kw).W)  # it trained
    assert t1.global_step == tk.global_step == 3 * 33  # one optimizer step per update
    assert t1.num_training_batches == 33 and tk.num_training_batches == -(-33 // K)
    m1, mk = t1.callback_metrics, tk.callback_metrics
    assert set(m1) == set(mk) >= {"train/loss", "train/rec", "val/loss", "val/pseudo_likelihood"}
    for name in m1:
        assert torch.equal(m1[name], mk[name]), name


def test_fit_layer_gives_the_rbm_its_blocks():
    rbm, trainer = _fit(RBM.updates_per_step, epochs=1)
    assert RBM.updates_per_step > 1 and trainer.num_training_batches == -(-33 // RBM.updates_per_step)


def test_a_fit_resumed_with_blocks_equals_an_uninterrupted_one(tmp_path):
    full, _ = _fit(1, epochs=4, persistent=True)
    _fit(4, epochs=2, root=tmp_path, persistent=True)  # "killed" after epoch 2: last.ckpt survives
    resumed, t = _fit(4, epochs=4, root=tmp_path, ckpt=str(tmp_path / "last.ckpt"), persistent=True)
    _same_state(full, resumed)
    assert t.global_step == 4 * 33


class _EpochEnds(L.Callback):
    def __init__(self):
        self.count = 0

    def on_train_epoch_end(self, trainer, pl_module):
        self.count += 1


def test_the_sync_free_guard_stops_at_the_same_batch(monkeypatch):
    # the guard reads its record at the epoch's last batch, the last of the last block: there it
    # raises, naming the first bad step, before the epoch ends
    monkeypatch.setattr(RBM, "sync_free_guard", True)
    messages = []
    for K in (1, 4):
        ends = _EpochEnds()
        with pytest.raises(FloatingPointError) as e:
            _fit(K, lr=1e30, callbacks=[ends])
        messages.append(str(e.value))
        assert ends.count == 0
    assert messages[0] == messages[1] and "epoch 0, step" in messages[0]


def test_a_block_for_automatic_optimization_is_refused():
    ae = AutoEncoder(20, 8)
    with pytest.raises(ValueError, match="manual optimization"):
        ae.training_step(Block(0, True, (X[:32],)), 0)


def test_bad_batches_per_step_is_refused():
    with pytest.raises(ValueError, match="batches_per_step"):
        ArrayDataModule(X, batches_per_step=0)
    with pytest.raises(ValueError, match="unlabeled pool"):
        ArrayDataModule(X, torch.zeros(len(X)), unlabeled=(X,), batches_per_step=4)
