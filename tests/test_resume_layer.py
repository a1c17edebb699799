"""A layer interrupted after some epochs and resumed from its Lightning checkpoint ends with
exactly the weights of an uninterrupted fit: optimizer, epoch, permutation and noise streams
(corruption, Gibbs chains) all come back."""

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from pipelines.data.datamodule import ArrayDataModule
from pipelines.training import make_trainer, quiet_lightning
from pretrain.layer import Layer
from pretrain.presets import make_layer

quiet_lightning()
X = torch.rand(120, 12, generator=torch.Generator().manual_seed(0))
KINDS = {"dae": dict(corruption_level=0.3), "cae_h": dict(higher_order_copies=2),
         "rbm": dict(persistent=True)}


def _fit(kind, epochs, root, ckpt=None):
    layer = make_layer(kind, 12, 6, seed=1, **KINDS[kind])
    trainer = make_trainer(None, max_epochs=epochs, checkpointing=True, root_dir=root,
                           callbacks=[ModelCheckpoint(dirpath=root, save_last=True, save_top_k=1)])
    trainer.fit(layer, datamodule=ArrayDataModule(X, batch_size=32, seed=3), ckpt_path=ckpt)
    return layer


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_resumed_layer_equals_uninterrupted(kind, tmp_path):
    full = _fit(kind, 4, tmp_path / "full")
    _fit(kind, 2, tmp_path / "cut")  # "killed" after epoch 2: only last.ckpt survives
    resumed = _fit(kind, 4, tmp_path / "cut", ckpt=str(tmp_path / "cut" / "last.ckpt"))
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_without_the_noise_state_a_resumed_dae_drifts(tmp_path, monkeypatch):
    # the check above can fail: drop the saved generator states and the weights differ
    monkeypatch.setattr(Layer, "on_load_checkpoint", lambda self, ckpt: None)
    full = _fit("dae", 4, tmp_path / "full")
    _fit("dae", 2, tmp_path / "cut")
    resumed = _fit("dae", 4, tmp_path / "cut", ckpt=str(tmp_path / "cut" / "last.ckpt"))
    assert not torch.equal(full.encoder_weight, resumed.encoder_weight)
