"""What a layer logs: each ``stage/name`` is the epoch mean of the term weighted by batch size,
summed on the device and logged once per epoch (``pretrain.layer``, Eq. 1); the RBM's
monitoring-only ``rec`` is left out of most training steps without changing the update; the
partial sums travel with a checkpoint; a non-finite loss stops before any weight is written, on an
RBM's unmonitored batches too."""
import io

import pytest
import torch
from lightning.pytorch.loggers import Logger
from torch.utils.data import DataLoader

from pipelines.data.datamodule import ArrayDataModule
from pipelines.training import make_trainer, quiet_lightning
from pretrain.autoencoder import AutoEncoder
from pretrain.module import OBJECTIVE
from pretrain.rbm import RBM

quiet_lightning()


class MemoryLogger(Logger):
    """Every ``log_metrics`` call, in order."""

    def __init__(self):
        super().__init__()
        self.rows = []

    name = "memory"
    version = 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.rows.append(dict(metrics))


def _recording(cls):
    class Recording(cls):
        """The layer, recording (stage, epoch, batch_idx, batch size, terms) of each Trainer step."""

        def step_terms(self, x, stage, batch_idx):
            terms = super().step_terms(x, stage, batch_idx)
            self.__dict__.setdefault("seen", []).append(
                (stage, self.current_epoch, batch_idx, x.shape[0], {k: v.item() for k, v in terms.items()}))
            return terms

    return Recording


def _expected(seen, stage, epoch):
    """Eq. (1) of pretrain.layer from the recorded steps: sum B_k t_k / sum B_k per term."""
    sums, counts = {}, {}
    for s, e, _, B, terms in seen:
        if (s, e) == (stage, epoch):
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + B * v
                counts[k] = counts.get(k, 0) + B
    return {k: sums[k] / counts[k] for k in sums}


def _fit(layer, X, epochs, X_val=None, logger=None, batch_size=32):
    trainer = make_trainer(None, max_epochs=epochs, logger=logger if logger is not None else False)
    trainer.fit(layer, datamodule=ArrayDataModule(X, X_val=X_val, batch_size=batch_size, seed=1))
    return trainer


def test_logged_terms_are_epoch_means_weighted_by_batch_size():
    g = torch.Generator().manual_seed(0)
    X, X_val = torch.rand(70, 12, generator=g), torch.rand(45, 12, generator=g)  # batches 32, 32, 6
    # seed 1, the datamodule's: a logger refuses differing hyperparameters of the same name
    layer = _recording(AutoEncoder)(12, 5, contraction=0.5, sparsity_l1=0.1, lr=0.5, seed=1)
    log = MemoryLogger()
    trainer = _fit(layer, X, 3, X_val, logger=log)
    for epoch in range(3):
        for stage in ("train", "val"):
            want = _expected(layer.seen, stage, epoch)
            assert set(want) == {"rec", "contraction", "sparsity", "loss"}
            rows = [r for r in log.rows if r.get("epoch") == epoch and f"{stage}/loss" in r]
            assert len(rows) == 1, rows  # logged once per epoch
            for k, v in want.items():
                assert rows[0][f"{stage}/{k}"] == pytest.approx(v, rel=1e-6), (stage, epoch, k)
    # the terms change from epoch to epoch: the sums start again at each epoch
    first, last = _expected(layer.seen, "train", 0), _expected(layer.seen, "train", 2)
    assert first["loss"] != pytest.approx(last["loss"])
    assert trainer.callback_metrics["train/rec"].item() == pytest.approx(
        _expected(layer.seen, "train", 2)["rec"], rel=1e-6)
    assert not layer._running_sums  # nothing left over once the epochs are logged


def test_rbm_monitors_rec_on_every_mth_batch_without_changing_the_update():
    X = (torch.rand(250, 8, generator=torch.Generator().manual_seed(1)) < 0.3).float()
    runs = {}
    for every in (1, 10):
        rbm = _recording(RBM)(8, 5, lr=0.1, seed=3)
        rbm.monitor_every = every
        runs[every] = (rbm, _fit(rbm, X, 2, batch_size=10))  # 25 batches an epoch
    rbm, trainer = runs[10]
    for term in ("rec", "loss"):  # the surrogate's value too is computed on the monitored batches only
        monitored = [i for s, e, i, _, t in rbm.seen if s == "train" and e == 1 and term in t]
        assert monitored == [0, 10, 20], term
        assert trainer.callback_metrics[f"train/{term}"].item() == pytest.approx(
            _expected(rbm.seen, "train", 1)[term], rel=1e-6)
    others = [t for s, e, i, _, t in rbm.seen if s == "train" and i % 10]
    assert others and all(t == {OBJECTIVE: 0.0} for t in others)  # the guard's value, not logged
    assert "train/objective" not in trainer.callback_metrics
    # the down pass of rec and the free energies draw no noise and touch no weight: the same
    # training either way, bit for bit (the gradient of the unmonitored objective is Eq. 17's)
    for name, p in runs[1][0].state_dict().items():
        assert torch.equal(p, rbm.state_dict()[name]), name


def test_partial_sums_travel_with_a_checkpoint():
    layer = AutoEncoder(6, 3, contraction=0.1, seed=0)
    x = torch.rand(9, 6, generator=torch.Generator().manual_seed(2))
    layer._accumulate("train", layer.loss_terms(x, train=True), 9)
    layer._accumulate("train", layer.loss_terms(x[:4], train=True), 4)
    ckpt = {}
    layer.on_save_checkpoint(ckpt)
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    buf.seek(0)
    fresh = AutoEncoder(6, 3, contraction=0.1, seed=0)
    fresh.on_load_checkpoint(torch.load(buf, weights_only=True))  # loads as checkpoints do
    want, got = layer._running_sums["train"], fresh._running_sums["train"]
    assert got["epoch"] == want["epoch"] == 0
    assert len(got["groups"]) == 1
    (names, sums, count), = got["groups"]
    assert names == ["rec", "contraction", "loss"] and count == 13 and sums.dtype == torch.float64
    assert torch.equal(sums, want["groups"][0][1])
    terms = [layer.loss_terms(x, train=True), layer.loss_terms(x[:4], train=True)]  # deterministic
    expect = [9 * terms[0][k].item() + 4 * terms[1][k].item() for k in names]
    torch.testing.assert_close(sums, torch.tensor(expect, dtype=torch.float64), rtol=1e-6, atol=0)


def test_non_finite_loss_stops_before_the_weights_change():
    X = torch.rand(40, 4, generator=torch.Generator().manual_seed(0))
    X[1, 1] = float("nan")  # past the datamodule's check: a plain loader, one batch
    layer = AutoEncoder(4, 3, loss="mse", visible_unit="linear", seed=0)
    layer.layer_name = "layer 2"
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    trainer = make_trainer(None, max_epochs=1)
    with pytest.raises(FloatingPointError, match=r"layer 2 \(AutoEncoder\).*loss became nan at epoch 0"):
        trainer.fit(layer, DataLoader([X], batch_size=None))
    for k, v in layer.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_rbm_guard_stops_a_nan_on_an_unmonitored_batch_before_the_weights_change():
    """Batch 1 is not monitored (no free energies): its guard value is NaN as its gradient is."""
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(10, 4, generator=g) for _ in range(3)]
    batches[1][3, 2] = float("nan")  # Gaussian units: no range check, past the datamodule's check
    rbm = RBM(4, 3, visible="gaussian", lr=0.05, seed=0)
    rbm.layer_name = "layer 1"
    with pytest.raises(FloatingPointError, match=r"layer 1 \(RBM\).*loss became nan at epoch 0, step 1"):
        make_trainer(None, max_epochs=1).fit(rbm, DataLoader(batches, batch_size=None))
    ref = RBM(4, 3, visible="gaussian", lr=0.05, seed=0)  # the first batch alone
    make_trainer(None, max_epochs=1).fit(ref, DataLoader(batches[:1], batch_size=None))
    assert torch.isfinite(rbm.W).all()
    for k, v in ref.state_dict().items():
        assert torch.equal(rbm.state_dict()[k], v), k
