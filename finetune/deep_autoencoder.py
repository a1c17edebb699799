"""The deep autoencoder: a stack unrolled into encoders and mirrored decoders, fine-tuned end to end.

With the unrolled encoder f and decoder g of ``finetune.unroll`` (Eqs. 1-2 there) and a batch
of B inputs x (B, n_visible):

    (1) r = g(f(x)),  z the bottom decoder's pre-activation (r = t_1(z))
    (2) REC = 1/B sum_n L(x_n, r_n)         cross-entropy from z when the bottom visible unit is
                                            sigmoid (unroll Eq. 4), else 1/2 squared error (Eq. 5)
    (3) SE  = 1/B sum_n ||r_n - x_n||^2     squared error per image: the metric of Hinton &
                                            Salakhutdinov's tables, logged whatever the loss

Fine-tuning minimises (2) by backpropagation through all layers at once; before it, r equals
``Stack.reconstruct``. ``DeepAutoencoder.without_pretraining`` builds the same network (sizes,
units, tying) with fresh Glorot weights from a seed, the baseline that shows what pretraining
buys.

References
----------
Hinton & Salakhutdinov, Reducing the dimensionality of data with neural networks, Science 2006.
"""
from __future__ import annotations

import lightning.pytorch as L
import torch

from pretrain.layer import OPTIMIZERS, batch_input, check_positive, check_probability
from pretrain.stack import Stack
from pretrain.units import activation

from .unroll import unroll_autoencoder


class DeepAutoencoder(L.LightningModule):
    """A stack unrolled (``unroll_autoencoder``) and trained on Eq. (2).

    Parameters
    ----------
    stack : the pretrained ``pretrain.Stack`` (copied, never modified).
    untie : give tied layers their own decoder weights for fine-tuning (Hinton & Salakhutdinov).
    lr, optimizer, momentum, weight_decay : the optimizer (``"adam"`` or ``"sgd"``; momentum for SGD).
    pretrained : start from the stack's weights (True) or from fresh ones drawn from ``seed``.
    seed : seeds the fresh weights when ``pretrained=False``; unused otherwise.
    """

    def __init__(self, stack: Stack, *, untie: bool = False, lr: float = 1e-3, optimizer: str = "adam",
                 momentum: float = 0.0, weight_decay: float = 0.0, pretrained: bool = True,
                 seed: int = 0):
        super().__init__()
        check_positive("lr", lr)
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
        check_probability("momentum", momentum)
        check_positive("weight_decay", weight_decay, allow_zero=True)
        if not isinstance(pretrained, bool):
            raise ValueError(f"pretrained must be True or False, got {pretrained!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        self.encoder, self.decoder = unroll_autoencoder(stack, untie=untie)
        if not pretrained:
            g = torch.Generator().manual_seed(seed)
            self.encoder.reset_parameters(g)
            self.decoder.reset_parameters(g)
        self.save_hyperparameters(ignore=["stack"])

    @classmethod
    def without_pretraining(cls, stack: Stack, *, seed: int = 0, **hyperparameters) -> "DeepAutoencoder":
        """The same network as ``DeepAutoencoder(stack)``, its weights drawn fresh from ``seed``."""
        return cls(stack, pretrained=False, seed=seed, **hyperparameters)

    @property
    def sizes(self) -> list[int]:
        """``[n_visible, n_hidden_1, ..., n_code]``; the decoder mirrors it."""
        return self.encoder.sizes

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The code f(x): (B, n_visible) -> (B, n_code)."""
        return self.encoder(x)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Eq. (1): (B, n_visible) -> (B, n_visible)."""
        return self.decoder(self.encoder(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reconstruct(x)

    def loss_terms(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Eqs. (2)-(3) of a batch x (B, n_visible); ``loss`` is ``rec``."""
        n_visible = self.encoder.n_visible
        if x.ndim != 2 or x.shape[1] != n_visible:
            raise ValueError(f"DeepAutoencoder expects inputs of shape (B, {n_visible}), "
                             f"got {tuple(x.shape)}")
        z = self.decoder.logits(self.encoder(x))  # (B, n_visible)
        rec = self.decoder.error_from_logits(z, x).mean()  # Eq. (2)
        r = activation(self.decoder.output_unit, z.detach())  # (B, n_visible)
        squared_error = ((r - x) ** 2).sum(dim=1).mean()  # Eq. (3)
        return {"rec": rec, "squared_error": squared_error, "loss": rec}

    def _step(self, batch, stage: str) -> torch.Tensor:
        x = batch_input(batch)
        terms = self.loss_terms(x)
        loss = terms["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"DeepAutoencoder: the {stage} loss became {loss.item()} at epoch {self.current_epoch}, "
                f"step {self.global_step}. Likely cause: a learning rate too high "
                f"(lr={self.hparams.lr}); lower it or check the data for NaN/inf.")
        for name in ("rec", "squared_error"):
            self.log(f"{stage}/{name}", terms[name].detach(), on_step=False, on_epoch=True,
                     prog_bar=name == "rec", batch_size=x.shape[0], sync_dist=True)
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        return self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        return self._step(batch, "test")

    def predict_step(self, batch, batch_idx):
        return self.encode(batch_input(batch))

    def configure_optimizers(self):
        hp = self.hparams
        params = list(self.parameters())  # a tied weight appears once
        if hp.optimizer == "adam":
            return torch.optim.Adam(params, lr=hp.lr, weight_decay=hp.weight_decay)
        return torch.optim.SGD(params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
