"""The potential energy of a tied-weight autoencoder (Kamyshanska & Memisevic 2013).

A tied autoencoder with encoder ``h = s(W x + b)`` (W: (n_hidden, n_visible), b: (n_hidden,))
and decoder weight ``W^T`` defines a vector field ``r(x) - x``; for the two decoders below that
field (or its pre-activation) is the gradient of a scalar potential ``F``, so the autoencoder
assigns every input a score ``F(x)``, high on the data and low away from it. With
``S`` the antiderivative of the hidden unit, ``S' = s`` (``pretrain.units.antiderivative``:
softplus for sigmoid, log cosh for tanh, max(a, 0)^2 / 2 for relu, a^2 / 2 for linear):

Real-valued inputs, LINEAR decoder ``r(x) = W^T s(W x + b) + c`` (``visible_unit="linear"``,
trained with squared error):

    (1) F_real(x)   = sum_j S(W_j x + b_j) - 1/2 ||x - c||^2
    (2) grad_x F_real(x) = W^T s(W x + b) - (x - c) = r(x) - x

Binary inputs, SIGMOID decoder ``r(x) = sigmoid(W^T s(W x + b) + c)`` (``visible_unit=
"sigmoid"``, trained with cross-entropy):

    (3) F_binary(x) = sum_j S(W_j x + b_j) + c^T x
    (4) grad_x F_binary(x) = W^T s(W x + b) + c = logit(r(x))     (the decoder's pre-activation)

For sigmoid hidden units, Eq. (3) is minus the free energy of the RBM with the same W, b, c
(``pretrain.rbm`` Eq. 2), and Eq. (1) is minus the free energy of the Gaussian RBM with
sigma = 1 (``pretrain.rbm`` Eq. 6): F = -F_RBM exactly, no constant.

Sign convention: Kamyshanska & Memisevic call F the "score" (a negative energy, an unnormalised
log-density). :func:`potential` returns F (higher = more probable); :func:`energy` returns
``E = -F`` (lower = more probable).

References
----------
Kamyshanska & Memisevic, On autoencoder scoring, ICML 2013.
Kamyshanska & Memisevic, The potential energy of an autoencoder, IEEE TPAMI 2015.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from pretrain.units import antiderivative, check_unit

VISIBLE_FORMS = ("real", "binary")


def _check_form(visible: str) -> str:
    if visible not in VISIBLE_FORMS:
        raise ValueError(f"unknown visible {visible!r}: choose 'real' (linear decoder, real-valued "
                         f"inputs) or 'binary' (sigmoid decoder, binary inputs)")
    return visible


def potential(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor, c: torch.Tensor,
              hidden_unit: str = "sigmoid", visible: str = "real") -> torch.Tensor:
    """The potential (score, negative energy) ``F(x)`` of a tied autoencoder, Eq. (1) or (3).

    Parameters
    ----------
    x : (B, n_visible) inputs.
    W : (n_hidden, n_visible) encoder weight (the decoder's is W^T); b : (n_hidden,) hidden bias;
        c : (n_visible,) visible (decoder) bias.
    hidden_unit : ``pretrain.units`` name of the hidden unit s.
    visible : ``"real"`` for a linear decoder (Eq. 1, ``grad F = r(x) - x``) or ``"binary"`` for
        a sigmoid decoder (Eq. 3, ``grad F = logit r(x)``).

    Returns
    -------
    (B,) potentials; higher means more probable under the autoencoder.

    References
    ----------
    Kamyshanska & Memisevic, On autoencoder scoring, ICML 2013.
    """
    check_unit(hidden_unit, "hidden_unit")
    _check_form(visible)
    if x.ndim != 2 or x.shape[1] != W.shape[1]:
        raise ValueError(f"x must be (B, {W.shape[1]}) for W of shape {tuple(W.shape)}, got {tuple(x.shape)}")
    a = F.linear(x, W, b)  # (B, n_hidden)
    hidden = antiderivative(hidden_unit, a).sum(1)  # (B,): sum_j S(W_j x + b_j), stable forms
    if visible == "real":
        return hidden - 0.5 * ((x - c) ** 2).sum(1)  # Eq. (1)
    return hidden + x @ c  # Eq. (3)


def energy(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor, c: torch.Tensor,
           hidden_unit: str = "sigmoid", visible: str = "real") -> torch.Tensor:
    """``E(x) = -F(x)``, minus :func:`potential`: (B,); lower means more probable."""
    return -potential(x, W, b, c, hidden_unit, visible)


def visible_form(layer) -> str:
    """Which potential belongs to ``layer``'s decoder: ``"real"`` (linear) or ``"binary"`` (sigmoid)."""
    if layer.visible_unit == "linear":
        return "real"
    if layer.visible_unit == "sigmoid":
        return "binary"
    raise ValueError(f"{layer.layer_name}: visible_unit={layer.visible_unit!r} has no potential; "
                     f"the potential exists for linear (real-valued inputs) or sigmoid (binary "
                     f"inputs) decoders")


def layer_potential(layer, x: torch.Tensor) -> torch.Tensor:
    """:func:`potential` of a tied layer (an ``AutoEncoder`` or an ``RBM``): (B, n_visible) -> (B,).

    The form follows the layer's decoder: Eq. (1) for a linear decoder, Eq. (3) for a sigmoid
    one. Untied weights define no potential (the field ``r(x) - x`` is then not a gradient) and
    are refused, as is a Gaussian RBM with sigma != 1 (its decoder weight is not W^T).
    """
    W, Wd = layer.encoder_weight, layer.decoder_weight
    if not layer.tied or Wd.shape != W.T.shape or not torch.equal(Wd, W.T):
        raise ValueError(f"{layer.layer_name}: the potential energy needs tied weights (decoder weight "
                         f"W^T); this layer is untied (tied={layer.tied}), so r(x) - x is not the "
                         f"gradient of any potential. Train it with tied=True.")
    return potential(x, W, layer.encoder_bias, layer.decoder_bias, layer.hidden_unit, visible_form(layer))


def layer_energy(layer, x: torch.Tensor) -> torch.Tensor:
    """``-layer_potential(layer, x)``: (B,)."""
    return -layer_potential(layer, x)


def vector_field(layer, x: torch.Tensor) -> torch.Tensor:
    """The reconstruction field ``r(x) - x`` of any layer: (B, n_visible) -> (B, n_visible).

    For a tied layer with a linear decoder this is ``grad_x F`` of Eq. (2); for a denoising
    autoencoder it estimates ``sigma^2 grad_x log p(x)`` (Alain & Bengio 2014).
    """
    return layer.reconstruct(x) - x
