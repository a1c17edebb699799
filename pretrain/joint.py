"""Joint training of a stack: all layers advance together, each on the current codes below it.

With layers ``f_1 .. f_L``, parameters ``theta_k`` and epoch budgets ``E_k``, round
``e = 1 .. E`` (``E = max_k E_k``) runs the layers bottom up:

    (1) h_0^(e) = x
    (2) theta_k^(e) = one more epoch of layer k's loss on {h_{k-1}^(e)(x) : x in X}, from
        theta_k^(e-1) (its optimizer, epoch count and noise streams carried on), when e <= E_k;
        else theta_k^(e) = theta_k^(e-1)
    (3) h_k^(e) = f_k(h_{k-1}^(e); theta_k^(e))

so layer k always sees its input layer's latest codes, and with L = 1 the schedule is exactly
greedy training (``pretrain.stack``, Eq. 3). Layer k's weights depend on layers 1..k only, as in
the greedy schedule, but through the whole path of layer k-1's codes, not just its end.

Training is delegated to the ``fit_layer`` callback of ``GreedyStack.fit``, called as
``fit_layer(k, layer, codes, val_codes, epochs=e)``: it must take the layer to ``e`` epochs in
total, going on from where its previous call left it (the pipeline's callback resumes the
layer's Lightning checkpoint), because layers never build a Trainer.

References
----------
Hinton, Osindero & Teh, A fast learning algorithm for deep belief nets, Neural Computation 2006.
Bengio, Lamblin, Popovici & Larochelle, Greedy layer-wise training of deep networks, NIPS 2007.
"""
from __future__ import annotations

from typing import Protocol, Sequence

import torch

from .layer import Layer
from .stack import GreedyStack, Stack, encode_all


class FitLayerTo(Protocol):
    def __call__(self, k: int, layer: Layer, codes: torch.Tensor, val_codes: torch.Tensor | None,
                 *, epochs: int) -> None: ...


class JointStack(GreedyStack):
    """Joint pretraining of a list of layers of any mix of kinds, Eqs. (1)-(3).

    Parameters
    ----------
    layers : untrained layers, bottom-up, with chaining sizes (checked as for ``Stack``).

    Examples
    --------
    >>> stack = JointStack(layers).fit(X, fit_layer, epochs=[10, 10])
    """

    def fit(self, X: torch.Tensor, fit_layer: FitLayerTo, X_val: torch.Tensor | None = None, *,
            epochs: Sequence[int]) -> Stack:
        """Eqs. (1)-(3): ``max(epochs)`` rounds; layer k trains in rounds 1..``epochs[k]``."""
        epochs = [int(n) for n in epochs]
        if len(epochs) != len(self.stack) or min(epochs) < 1:
            raise ValueError(f"epochs must give each of the {len(self.stack)} layers at least one "
                             f"epoch, got {epochs}")
        for e in range(1, max(epochs) + 1):
            codes, val_codes = X, X_val                            # Eq. (1)
            for k, layer in enumerate(self.stack):
                if e <= epochs[k]:
                    fit_layer(k, layer, codes, val_codes, epochs=e)  # Eq. (2)
                if k + 1 < len(self.stack):                        # Eq. (3)
                    codes = encode_all(layer, codes)
                    val_codes = None if val_codes is None else encode_all(layer, val_codes)
        return self.stack
