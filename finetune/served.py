"""Trained networks in the form they are saved and served in: plain ``nn.Module`` s, no trainer.

A fine-tuned ``Classifier`` (or ``MTC``) is a LightningModule whose ``forward`` returns logits;
what a user of a saved model wants is what ``predict_proba`` gives. ``ProbabilityClassifier``
holds the same network (the unrolled encoder and the softmax head, shared, not copied) and

    (1) forward(x) = p(y | x) = softmax(V h_L(x) + a)          (B, d) -> (B, K), rows sum to 1

so that any caller of ``forward`` (a serving layer, MLflow's pyfunc ``predict``) gets the
probabilities; ``predict`` gives the most probable class. ``Reconstructor`` holds a deep
autoencoder's encoder and decoder, ``forward(x) = r(x)`` (B, d) -> (B, d).

Both keep ``eval()``/``train()``, ``state_dict`` and ``.to(device)``: they are ordinary modules.
"""
from __future__ import annotations

import torch
from torch import nn

from .unroll import MLP, UnrolledDecoder, UnrolledEncoder


class ProbabilityClassifier(nn.Module):
    """Eq. (1): the classifier's network returning class probabilities.

    Parameters
    ----------
    net : the ``finetune.unroll.MLP`` of a trained ``Classifier`` (``classifier.net``).
    """

    def __init__(self, net: MLP):
        super().__init__()
        if not isinstance(net, MLP):
            raise ValueError(f"net must be a finetune.unroll.MLP (a Classifier's .net), got "
                             f"{type(net).__name__}")
        self.net = net

    @property
    def n_features(self) -> int:
        return self.net.encoder.n_visible

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Eq. (1): (B, d) -> (B, K) probabilities."""
        return torch.softmax(self.net(x), dim=1)

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Eq. (1) without gradients: (B, d) -> (B, K)."""
        return self(x)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The most probable class: (B, d) -> (B,) int64."""
        return self.net(x).argmax(dim=1)


class Reconstructor(nn.Module):
    """A deep autoencoder's reconstruction r(x) = g(f(x)): (B, d) -> (B, d); ``encode`` gives f(x)."""

    def __init__(self, encoder: UnrolledEncoder, decoder: UnrolledDecoder):
        super().__init__()
        decoder.check_encoder(encoder)
        self.encoder, self.decoder = encoder, decoder

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))
