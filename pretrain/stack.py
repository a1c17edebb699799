"""Greedy layer-wise stacking: layer k is trained on the codes of layers 1..k-1.

With layers ``f_1 .. f_L`` (encoders) and ``g_1 .. g_L`` (decoders):

    (1) h_0 = x,   h_k = f_k(h_{k-1})                      the stack's code is h_L
    (2) r = g_1(g_2(... g_L(h_L)))                          decoding runs the layers in reverse
    (3) layer k minimises its own loss on {h_{k-1}(x) : x in X}, with layers < k frozen

The codes of (3) are computed once per layer, in batches, never through the stack per batch:
``GreedyStack.fit`` encodes the whole training set after each layer and hands the codes to the
next. Training itself is delegated to a ``fit_layer`` callback, because layers never build a
Trainer (``pipelines`` does, with tracking and checkpoints).

References
----------
Bengio, Lamblin, Popovici & Larochelle, Greedy layer-wise training of deep networks, NIPS 2007.
Hinton & Salakhutdinov, Reducing the dimensionality of data with neural networks, Science 2006.
"""
from __future__ import annotations

from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from .layer import Layer


class Stack(nn.Module):
    """Trained layers, bottom-up, that encode and decode through all of them.

    Parameters
    ----------
    layers : layers whose sizes chain: ``layers[k].n_hidden == layers[k + 1].n_visible``.
    """

    def __init__(self, layers: Sequence[Layer]):
        super().__init__()
        layers = list(layers)
        if not layers:
            raise ValueError("a stack needs at least one layer: add layers under pretrain.layers")
        for k in range(len(layers) - 1):
            below, above = layers[k], layers[k + 1]
            if below.n_hidden != above.n_visible:
                raise ValueError(
                    f"layer {k + 2} has n_visible={above.n_visible} but layer {k + 1} below it "
                    f"has n_hidden={below.n_hidden}: they must match to stack")
        self.layers = nn.ModuleList(layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[Layer]:
        return iter(self.layers)

    def __getitem__(self, k: int) -> Layer:
        return self.layers[k]

    @property
    def n_visible(self) -> int:
        return self.layers[0].n_visible

    @property
    def n_hidden(self) -> int:
        return self.layers[-1].n_hidden

    @property
    def sizes(self) -> list[int]:
        """``[n_visible, n_hidden_1, ..., n_hidden_L]``."""
        return [self.n_visible] + [layer.n_hidden for layer in self.layers]

    def encode(self, x: torch.Tensor, depth: int | None = None) -> torch.Tensor:
        """Eq. (1): the code of the first ``depth`` layers (all by default). (B, n_visible) -> (B, n_hidden)."""
        for layer in self.layers[:depth]:
            x = layer.encode(x)
        return x

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        """Eq. (2): decode a top code down through every layer. (B, n_hidden) -> (B, n_visible)."""
        for layer in reversed(self.layers):
            h = layer.decode(h)
        return h

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x)

    @torch.no_grad()
    def transform(self, X: torch.Tensor, depth: int | None = None, batch_size: int = 4096) -> torch.Tensor:
        """Codes of a whole array, in batches, in eval mode: (N, n_visible) -> (N, n_hidden)."""
        was = self.training
        self.eval()
        try:
            return torch.cat([self.encode(X[i:i + batch_size], depth)
                              for i in range(0, len(X), batch_size)]) if len(X) else X[:, :0]
        finally:
            self.train(was)


@torch.no_grad()
def encode_all(layer: Layer, X: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """One layer's codes of a whole array, in batches, in eval mode."""
    was = layer.training
    layer.eval()
    try:
        return torch.cat([layer.encode(X[i:i + batch_size]) for i in range(0, len(X), batch_size)])
    finally:
        layer.train(was)


FitLayer = Callable[[int, Layer, torch.Tensor, "torch.Tensor | None"], None]


class GreedyStack:
    """Greedy layer-wise pretraining of a list of layers of any mix of kinds.

    Parameters
    ----------
    layers : untrained layers, bottom-up, with chaining sizes (checked as for ``Stack``).

    Examples
    --------
    >>> stack = GreedyStack(layers).fit(X, fit_layer)   # fit_layer(k, layer, codes, val_codes)
    """

    def __init__(self, layers: Sequence[Layer]):
        self.stack = Stack(layers)  # validates sizes before any training
        for k, layer in enumerate(self.stack):
            layer.layer_name = f"layer {k + 1}"

    def fit(self, X: torch.Tensor, fit_layer: FitLayer, X_val: torch.Tensor | None = None,
            start: int = 0) -> Stack:
        """Eq. (3): train each layer on the codes of the layers below; return the stack.

        ``start`` skips layers already trained (their weights loaded by the caller): their codes
        are still computed, so a resumed run feeds the next layer exactly what it would have.
        """
        codes, val_codes = X, X_val
        for k, layer in enumerate(self.stack):
            if k >= start:
                fit_layer(k, layer, codes, val_codes)
            if k + 1 < len(self.stack):
                codes = encode_all(layer, codes)
                val_codes = None if val_codes is None else encode_all(layer, val_codes)
        return self.stack
