"""The sync-free non-finite guard (an accelerator's, selected here on the CPU with
``sync_free_guard = True``): no NaN reaches the weights, the immediate guard's error names the
same epoch and step, at the end of the epoch; a finite fit is bit-identical under either guard;
and a step reads nothing back from the device."""
import collections
import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils.data import DataLoader

from finetune.classifier import Classifier
from finetune.unroll import UnrolledEncoder
from pipelines.data.datamodule import ArrayDataModule
from pipelines.training import make_trainer, quiet_lightning
from pretrain.autoencoder import AutoEncoder
from pretrain.presets import make_layer
from pretrain.stack import Stack

quiet_lightning()
G = torch.Generator().manual_seed(0)
X = torch.rand(160, 6, generator=G)
Y = torch.randint(0, 3, (160,), generator=G)


class EpochBatches:
    """A loader whose epoch e yields the batches ``epochs[e]`` of ``module``'s fit (so that a
    NaN sits in one epoch); the epoch is read at the first batch, as ``SliceLoader`` does."""

    def __init__(self, epochs, module):
        self.epochs, self.module = epochs, module

    def __len__(self):
        return len(self.epochs[0])

    def __iter__(self):
        yield from self.epochs[self.module.trainer.current_epoch]


def _layer(sync_free):
    layer = AutoEncoder(6, 4, loss="mse", visible_unit="linear", seed=0)  # plain SGD, lr 0.1
    layer.layer_name = "layer 1"
    layer.sync_free_guard = sync_free
    return layer


def _batches(n, nan_at=None):
    out = [X[16 * i:16 * (i + 1)].clone() for i in range(n)]
    if nan_at is not None:
        out[nan_at][3, 2] = float("nan")
    return out


class FinishedSteps(L.Callback):
    """The global step after each training batch that finished (its update done)."""

    def __init__(self):
        self.steps = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps.append(trainer.global_step)


def _fit_until_error(layer, loader, **flags):
    finished = FinishedSteps()
    with pytest.raises(FloatingPointError) as err:
        make_trainer(None, max_epochs=3, callbacks=[finished], **flags).fit(layer, loader)
    return str(err.value), finished.steps


def test_a_nan_batch_leaves_the_weights_where_the_immediate_guard_stops_them():
    # epoch 1, batch 3 of 5 (global step 8) has a NaN: the immediate guard stops in that step,
    # the sync-free one at the epoch's last batch, with every update from step 8 on set to 0
    runs = {}
    for sync_free in (False, True):
        layer = _layer(sync_free)
        loader = EpochBatches([_batches(5), _batches(5, nan_at=3), _batches(5)], layer)
        runs[sync_free] = (layer, *_fit_until_error(layer, loader))
    (imm, msg_imm, done_imm), (free, msg_free, done_free) = runs[False], runs[True]
    assert msg_free == msg_imm
    assert "layer 1 (AutoEncoder): the train loss became nan at epoch 1, step 8." in msg_free
    assert "step 8. Likely cause: a learning rate too high (lr=0.1) or inputs" in msg_free
    assert done_imm == list(range(1, 9))  # stopped in step 8
    assert done_free == list(range(1, 10))  # step 9 ran too (its update zeroed); the last raised
    for name, w in free.state_dict().items():
        assert torch.isfinite(w).all(), name
        assert torch.equal(w, imm.state_dict()[name]), name  # plain SGD: unchanged from step 8 on
    assert not torch.equal(free.W, _layer(True).W)  # the 8 good steps did train


def test_the_error_names_the_first_bad_step_of_several():
    layer = _layer(True)
    batches = _batches(5, nan_at=1)
    batches[3][0, 0] = float("inf")  # a later bad step is not the one named
    msg, _ = _fit_until_error(layer, EpochBatches([batches] * 3, layer))
    assert "the train loss became nan at epoch 0, step 1." in msg


def test_an_epoch_cut_short_by_max_steps_still_raises():
    layer = _layer(True)
    msg, done = _fit_until_error(layer, EpochBatches([_batches(5, nan_at=1)] * 3, layer),
                                 max_steps=3)
    assert done == [1, 2, 3] and "the train loss became nan at epoch 0, step 1." in msg


def test_a_nan_validation_batch_gets_the_same_error_under_either_guard():
    msgs = []
    for sync_free in (False, True):
        layer = _layer(sync_free)
        val = DataLoader(_batches(3, nan_at=1), batch_size=None)
        with pytest.raises(FloatingPointError) as err:
            make_trainer(None, max_epochs=2).fit(layer, DataLoader(_batches(4), batch_size=None), val)
        msgs.append(str(err.value))
    assert msgs[0] == msgs[1] and "the val loss became nan at epoch 0, step 4." in msgs[1]


def test_without_a_trainer_the_sync_free_guard_raises_in_the_step():
    layer = _layer(True)
    with pytest.raises(FloatingPointError, match="the train loss became nan at epoch 0, step 0"):
        layer.training_step(_batches(1, nan_at=0)[0], 0)


def test_the_guard_follows_the_device_unless_set():
    layer = AutoEncoder(6, 4, seed=0)
    assert layer.sync_free_guard is None and not layer.uses_sync_free_guard()  # the CPU
    assert layer.to("meta").uses_sync_free_guard()  # any other device


# -- finite fits: the same weights ------------------------------------------------------------

@pytest.mark.parametrize("kind", ["layer", "classifier"])
def test_a_finite_fit_is_bit_identical_under_either_guard(kind):
    models = []
    for sync_free in (False, True):
        if kind == "layer":
            model = make_layer("cae_h", 6, 4, seed=1, higher_order_copies=2, momentum=0.9)
            dm = ArrayDataModule(X, None, X[:32], None, batch_size=16, seed=2)
        else:
            model = Classifier(UnrolledEncoder(Stack([AutoEncoder(6, 5, seed=0)])), 3, lr=0.01, seed=0)
            dm = ArrayDataModule(X, Y, X[:32], Y[:32], batch_size=16, seed=2)
        model.sync_free_guard = sync_free
        make_trainer(None, max_epochs=3).fit(model, datamodule=dm)
        models.append(model)
    a, b = (m.state_dict() for m in models)
    for name in a:
        assert torch.equal(a[name], b[name]), name


# -- host reads ---------------------------------------------------------------------------------

class HostReads(TorchFunctionMode):
    """Counts the calls that read a tensor's value back to Python (a device-to-host copy and a
    stall of the queue on an accelerator), Lightning's included."""

    READS = frozenset({"item", "tolist", "__bool__", "__float__", "__int__", "__index__", "nonzero",
                       "cpu", "numpy"})

    def __init__(self):
        super().__init__()
        self.count = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in self.READS or (name == "__getitem__" and len(args) > 1
                                  and isinstance(args[1], torch.Tensor) and args[1].dtype == torch.bool):
            self.count[name] += 1
        return func(*args, **(kwargs or {}))


def _reads_per_step(build, data):
    """Reads per training step: the difference of two fits of 2 epochs, 5 and 15 steps each."""
    totals = []
    for batch_size in (32, 11):
        model = build()
        with HostReads() as reads:
            make_trainer(None, max_epochs=2).fit(model, datamodule=data(batch_size))
        totals.append(sum(reads.count.values()))
    return (totals[1] - totals[0]) / (2 * (15 - 5))


@pytest.mark.parametrize("sync_free", [False, True])
def test_a_layer_step_reads_nothing_back_under_the_sync_free_guard(sync_free):
    def build():
        layer = AutoEncoder(6, 4, loss="mse", visible_unit="linear", contraction=0.1, seed=0)
        layer.sync_free_guard = sync_free
        return layer
    per_step = _reads_per_step(build, lambda b: ArrayDataModule(X, batch_size=b, seed=2))
    assert per_step == (0 if sync_free else 1)  # the immediate guard's `if`: one read a step


def test_the_sync_free_guard_removes_the_classifiers_read_of_the_loss():
    # what else a classifier step reads (its label check) is the classifier's own business:
    # here only the guard's share is asserted
    def per_step(sync_free):
        def build():
            model = Classifier(UnrolledEncoder(Stack([AutoEncoder(6, 5, seed=0)])), 3,
                               optimizer="sgd", lr=0.1, seed=0)
            model.sync_free_guard = sync_free
            return model
        return _reads_per_step(build, lambda b: ArrayDataModule(X, Y, batch_size=b, seed=2))
    assert per_step(False) - per_step(True) == 1


# -- DDP: a bad rank stops every rank ------------------------------------------------------------

DDP_SCRIPT = '''
import sys
import torch
from torch.utils.data import DataLoader
from pipelines.training import make_trainer, quiet_lightning
from pretrain.autoencoder import AutoEncoder


class OwnBatches(AutoEncoder):
    """Each rank its own 5 batches; rank 1's third (global step 2) holds a NaN."""
    sync_free_guard = True

    def train_dataloader(self):
        g = torch.Generator().manual_seed(self.trainer.global_rank)
        batches = [torch.rand(8, 6, generator=g) for _ in range(5)]
        if self.trainer.global_rank == 1:
            batches[2][0, 0] = float("nan")
        return DataLoader(batches, batch_size=None)


if __name__ == "__main__":
    quiet_lightning()
    layer = OwnBatches(6, 4, loss="mse", visible_unit="linear", seed=0)
    trainer = make_trainer(None, max_epochs=2, accelerator="cpu", devices=2, strategy="ddp",
                           use_distributed_sampler=False)
    try:
        trainer.fit(layer)
        msg = None
    except FloatingPointError as e:
        msg = str(e)
    torch.save({"msg": msg, "state": layer.state_dict()}, f"{sys.argv[1]}/rank{trainer.global_rank}.pt")
'''


@pytest.mark.slow
def test_under_ddp_a_nan_on_one_rank_zeroes_the_update_and_stops_every_rank(tmp_path):
    script = tmp_path / "fit.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], cwd=tmp_path, timeout=600,
                          capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert "the train loss became nan at epoch 0, step 2." in ranks[1]["msg"]
    assert "the train loss became non-finite on another rank at epoch 0, step 2." in ranks[0]["msg"]
    for name, w in ranks[0]["state"].items():  # the averaged NaN gradient was zeroed on both
        assert torch.isfinite(w).all() and torch.equal(w, ranks[1]["state"][name]), name
