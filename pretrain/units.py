"""Units of a layer: the activation s, its derivative and its antiderivative, by name.

For a pre-activation ``a = W x + b`` and code ``h = s(a)``:

    (1) h = s(a)
    (2) s'(a), written through h where the unit allows it, so the Jacobian of a layer is
        ``J = diag(s'(a)) W`` and ``J v``, ``J^T u`` are two matmuls:
            sigmoid  h (1 - h)      tanh  1 - h^2      relu  1[a > 0]      linear  1
    (3) S(a) = integral of s, the hidden term of a tied autoencoder's potential energy
        (Kamyshanska & Memisevic 2013):
            sigmoid  softplus(a)    tanh  log cosh(a)  relu  max(a, 0)^2 / 2    linear  a^2 / 2
    (4) s''(a), the slope of Eq. (2), through h, for the closed-form gradients of the Jacobian
        penalties (``pretrain.penalties``):
            sigmoid  h (1 - h) (1 - 2 h)    tanh  -2 h (1 - h^2)    relu  0 (a.e.)    linear  0

References
----------
Rifai et al., Contractive auto-encoders, ICML 2011.
Kamyshanska & Memisevic, On autoencoder scoring, ICML 2013.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pretrain.checks import check_choice
from pretrain.names import UNITS


def check_unit(name: str, what: str = "unit") -> str:
    """Return ``name`` if it is a known unit, else raise a ValueError naming it."""
    return check_choice(what, name, UNITS)


def activation(name: str, a: torch.Tensor) -> torch.Tensor:
    """Eq. (1): ``h = s(a)``."""
    if name == "sigmoid":
        return torch.sigmoid(a)
    if name == "tanh":
        return torch.tanh(a)
    if name == "relu":
        return torch.relu(a)
    if name == "linear":
        return a
    raise ValueError(check_unit(name))


def derivative(name: str, a: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Eq. (2): ``s'(a)`` elementwise, from ``h = s(a)`` where the unit allows it."""
    if name == "sigmoid":
        return torch.addcmul(h, h, h, value=-1.0)  # h - h^2 = h (1 - h), one pass
    if name == "tanh":
        return 1.0 - h * h
    if name == "relu":
        return (a > 0).to(a.dtype)
    if name == "linear":
        return torch.ones_like(a)
    raise ValueError(check_unit(name))


def second_derivative(name: str, a: torch.Tensor, h: torch.Tensor,
                      act_grad: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. (4): ``s''(a)`` elementwise, from ``h = s(a)`` and, when at hand, ``act_grad = s'(a)``."""
    if name in ("sigmoid", "tanh"):
        d = derivative(name, a, h) if act_grad is None else act_grad
        if name == "sigmoid":
            return torch.addcmul(d, d, h, value=-2.0)  # s' - 2 s' h = s' (1 - 2h), one pass
        return torch.mul(d, h).mul_(-2.0)  # -2 h s'
    if name in ("relu", "linear"):
        return torch.zeros_like(a)
    raise ValueError(check_unit(name))


def antiderivative(name: str, a: torch.Tensor) -> torch.Tensor:
    """Eq. (3): ``S(a)`` with ``S' = s``, elementwise, in stable forms."""
    if name == "sigmoid":
        return F.softplus(a)  # log(1 + e^a) without overflow
    if name == "tanh":
        # log cosh(a) = |a| + log(1 + e^{-2|a|}) - log 2: no overflow of cosh for large |a|
        return a.abs() + F.softplus(-2.0 * a.abs()) - math.log(2.0)
    if name == "relu":
        return 0.5 * torch.relu(a) ** 2
    if name == "linear":
        return 0.5 * a * a
    raise ValueError(check_unit(name))
