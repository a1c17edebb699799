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

import torch

from pretrain.checks import check_bool, check_int
from pretrain.module import Module, batch_input
from pretrain.stack import Stack
from pretrain.units import activation

from .unroll import unroll_autoencoder


class DeepAutoencoder(Module):
    """A stack unrolled (``unroll_autoencoder``) and trained on Eq. (2); logs ``stage/rec``
    and ``stage/squared_error``.

    Parameters
    ----------
    stack : the pretrained ``pretrain.Stack`` (copied, never modified).
    untie : give tied layers their own decoder weights for fine-tuning (Hinton & Salakhutdinov).
    lr, optimizer, momentum, weight_decay : the optimizer (``"adam"`` or ``"sgd"``; momentum for SGD).
    pretrained : start from the stack's weights (True) or from fresh ones drawn from ``seed``.
    seed : seeds the fresh weights when ``pretrained=False``; unused otherwise.
    """

    logged_terms = ("rec", "squared_error")
    progress_terms = ("rec",)

    def __init__(self, stack: Stack, *, untie: bool = False, lr: float = 1e-3, optimizer: str = "adam",
                 momentum: float = 0.0, weight_decay: float = 0.0, pretrained: bool = True,
                 seed: int = 0):
        super().__init__(lr=lr, optimizer=optimizer, momentum=momentum, weight_decay=weight_decay)
        check_bool("pretrained", pretrained)
        seed = check_int("seed", seed)
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

    def batch_terms(self, batch, stage: str, batch_idx: int) -> dict[str, torch.Tensor]:
        return self.loss_terms(batch_input(batch))

    def predict_step(self, batch, batch_idx):
        return self.encode(batch_input(batch))
