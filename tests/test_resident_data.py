"""Arrays resident on the Trainer's device: the same batches, updates and validation as arrays
held on the host, the epoch's row index copied to the device once per epoch, resume intact.

With ``resident=True`` on the CPU the fit runs the resident code path (the arrays moved to
``trainer.strategy.root_device`` in ``setup``, each epoch's index handed to the loaders'
``rows_on_device``, the batches gathered from the moved tensors); a GPU runs the same code with
a real copy."""
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from finetune.classifier import Classifier
from finetune.mtc import MTC
from finetune.unroll import UnrolledEncoder
from pipelines.data.datamodule import RESIDENT_SHARE, ArrayDataModule, PairedLoader, SliceLoader, resides
from pipelines.training import make_trainer, quiet_lightning
from pretrain.autoencoder import AutoEncoder
from pretrain.presets import make_layer
from pretrain.stack import Stack

quiet_lightning()
G = torch.Generator().manual_seed(0)
X = torch.rand(150, 12, generator=G)
Y = torch.randint(0, 3, (150,), generator=G)
U = torch.randn(150, 2, 12, generator=G)  # two "tangents" per row for the MTC's penalty
POOL = torch.rand(90, 12, generator=G)
U_POOL = torch.randn(90, 2, 12, generator=G)


class WhereHeld(Callback):
    """Records where the datamodule holds its arrays while the fit runs, and the val losses."""

    def __init__(self):
        self.devices, self.val = [], []

    def on_train_epoch_start(self, trainer, pl_module):
        self.devices.append(trainer.datamodule.resident_device)

    def on_validation_epoch_end(self, trainer, pl_module):
        self.val.append({k: v.clone() for k, v in trainer.callback_metrics.items() if k.startswith("val/")})


def _fit(module, dm, epochs, *, ckpt_path=None, callbacks=(), **flags):
    seen = WhereHeld()
    trainer = make_trainer(None, max_epochs=epochs, callbacks=[seen, *callbacks], **flags)
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    return seen


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


# -- when the arrays go to the device -----------------------------------------------------------

def test_auto_keeps_the_arrays_on_an_accelerator_only_when_they_fit_its_share():
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    free = 1000
    fits = int(RESIDENT_SHARE * free)
    assert resides("auto", cuda, fits, free) and not resides("auto", cuda, fits + 1, free)
    assert not resides("auto", cpu, 1, 10**12)  # the CPU has nothing to gain
    assert not resides("auto", cuda, 1, None)  # free memory unknown: stay on the host
    assert resides(True, cpu, 10**15, None) and not resides(False, cuda, 1, free)
    with pytest.raises(ValueError, match=r"resident=True: the arrays take .* GiB but cuda:0 has .* "
                                         r"GiB free; use resident='auto' or False"):
        resides(True, cuda, 2 * 2**30, 2**30)
    for bad in ("yes", 1, None):
        with pytest.raises(ValueError, match=f"resident must be True, False or 'auto', got {bad!r}"):
            ArrayDataModule(X, resident=bad)


def test_auto_on_the_cpu_leaves_the_arrays_where_they_are():
    dm = ArrayDataModule(X, batch_size=50)
    seen = _fit(AutoEncoder(12, 5, seed=0), dm, 1)
    assert seen.devices == [None]


# -- the same fit -------------------------------------------------------------------------------

def test_a_resident_layer_fit_equals_the_host_fit_bit_for_bit_with_validation():
    fits = {}
    for resident in (False, True):
        layer = make_layer("cae_h", 12, 5, seed=1, higher_order_copies=2)  # noise streams too
        dm = ArrayDataModule(X, None, X[:40], None, batch_size=32, val_batch_size=16, seed=4,
                             resident=resident)
        fits[resident] = (layer, _fit(layer, dm, 3), dm)
    (host, seen_host, _), (res, seen_res, dm) = fits[False], fits[True]
    assert seen_host.devices == [None] * 3 and seen_res.devices == [torch.device("cpu")] * 3
    assert dm.resident_device is None  # released by teardown
    _same_weights(host, res)
    assert len(seen_res.val) == 3 and seen_res.val == seen_host.val  # validation as before
    assert not torch.equal(host.W, make_layer("cae_h", 12, 5, seed=1, higher_order_copies=2).W)


def test_a_resident_semi_supervised_fine_tuning_equals_the_host_fit():
    # the MTC's batches carry an aligned extra (U) and a paired unlabeled pool: all of them move
    models = {}
    for resident in (False, True):
        torch.manual_seed(0)
        model = MTC(UnrolledEncoder(Stack([AutoEncoder(12, 6, seed=0)])), 3, beta=0.1,
                    optimizer="sgd", lr=0.1, momentum=0.9, seed=0)
        dm = ArrayDataModule(X, Y, X[:30], Y[:30], batch_size=40, seed=2, train_extra=(U,),
                             unlabeled=(POOL, U_POOL), unlabeled_batch_size=25, resident=resident)
        models[resident] = (model, _fit(model, dm, 3))
    _same_weights(models[False][0], models[True][0])
    assert models[False][1].val == models[True][1].val


def test_a_resident_classifier_fit_equals_the_host_fit_with_adam():
    models = []
    for resident in (False, True):
        model = Classifier(UnrolledEncoder(Stack([AutoEncoder(12, 6, seed=0)])), 3, lr=0.01, seed=0)
        _fit(model, ArrayDataModule(X, Y, batch_size=16, seed=5, resident=resident), 2)
        models.append(model)
    _same_weights(*models)


# -- the index: once per epoch ------------------------------------------------------------------

def test_the_epochs_index_goes_to_the_device_once_per_epoch_not_per_step(monkeypatch):
    calls = []

    def counted(cls):
        real = cls.rows_on_device

        def hook(self, idx):
            out = real(self, idx)
            calls.append((cls.__name__, tuple(idx.shape), out.device))
            return out
        monkeypatch.setattr(cls, "rows_on_device", hook)

    counted(SliceLoader)
    counted(PairedLoader)
    model = MTC(UnrolledEncoder(Stack([AutoEncoder(12, 6, seed=0)])), 3, beta=0.1, seed=0)
    dm = ArrayDataModule(X, Y, X[:30], Y[:30], batch_size=10, seed=2, train_extra=(U,),
                         unlabeled=(POOL, U_POOL), unlabeled_batch_size=25, resident=True)
    _fit(model, dm, 3)
    assert len(dm.train_dataloader()) == 15  # 15 steps an epoch, 45 in all
    # per epoch: the labeled permutation (150 rows) and the pool's rows (15 batches of 25);
    # the unshuffled validation batches are views and need no index at all
    assert calls == [("PairedLoader", (375,), torch.device("cpu")),
                     ("SliceLoader", (150,), torch.device("cpu"))] * 3


def test_a_resident_layer_resumed_from_its_checkpoint_equals_the_uninterrupted_fit(tmp_path):
    def fit(epochs, root, ckpt=None, resident=True):
        layer = make_layer("rbm", 12, 6, seed=1, persistent=True)  # permutation and Gibbs chains
        _fit(layer, ArrayDataModule(X, batch_size=32, seed=3, resident=resident), epochs,
             checkpointing=True, root_dir=root, ckpt_path=ckpt,
             callbacks=[ModelCheckpoint(dirpath=root, save_last=True, save_top_k=1)])
        return layer

    full = fit(4, tmp_path / "full", resident=False)
    fit(2, tmp_path / "cut")  # killed after epoch 2: last.ckpt survives
    resumed = fit(4, tmp_path / "cut", ckpt=str(tmp_path / "cut" / "last.ckpt"))
    _same_weights(full, resumed)

