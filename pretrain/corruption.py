"""Corruption processes q(x_tilde | x) of a denoising autoencoder.

For an input ``x`` (any shape) and a level ``nu``:

    (1) gaussian     x_tilde = x + nu * eps,                eps ~ N(0, I)
    (2) masking      x_tilde = x * m,                       m_i ~ Bernoulli(1 - nu)
    (3) salt_pepper  x_tilde_i = s_i with prob. nu, else x_i,  s_i ~ Bernoulli(1/2) in {0, 1}

``none`` returns ``x`` itself. Every draw goes through an explicit ``torch.Generator`` so that
the same generator state gives the same ``x_tilde``; the input is never modified in place.

References
----------
Vincent et al., Extracting and composing robust features with denoising autoencoders, ICML 2008.
Vincent et al., Stacked denoising autoencoders, JMLR 2010 (section 4.2, the three noises).
"""
from __future__ import annotations

import torch

from pretrain.checks import check_choice, check_positive, check_probability
from pretrain.names import CORRUPTIONS


def check_corruption(kind: str, level: float, *, name: str = "corruption_level") -> tuple[str, float]:
    """Validate a corruption ``kind`` and its ``level``; return them or raise a ValueError.

    ``gaussian`` takes a standard deviation ``level >= 0``; ``masking`` and ``salt_pepper`` a
    probability in [0, 1]; ``none`` only ``level == 0`` (a non-zero level with no corruption is
    almost certainly a configuration mistake, so it is refused rather than ignored).
    """
    check_choice("corruption", kind, CORRUPTIONS)
    level = float(level)
    if kind == "gaussian":
        check_positive(name, level, allow_zero=True)
    elif kind in ("masking", "salt_pepper"):
        check_probability(name, level)
    elif level != 0.0:
        raise ValueError(f"{name}={level!r} was given with corruption='none': choose a "
                         f"corruption kind ({', '.join(CORRUPTIONS[1:])}) or set the level to 0")
    return kind, level


def _uniform(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def corrupt(x: torch.Tensor, kind: str, level: float,
            generator: torch.Generator | None) -> torch.Tensor:
    """Draw ``x_tilde ~ q(x_tilde | x)``, Eqs. (1)-(3).

    Parameters
    ----------
    x : tensor of any shape, not modified.
    kind : one of ``CORRUPTIONS``.
    level : Gaussian standard deviation, or the probability that an input is destroyed.
    generator : the source of randomness, on ``x``'s device. Layers always pass their own;
        ``None`` draws from torch's global generator (interactive use only).

    Returns
    -------
    x_tilde : tensor shaped like ``x`` (``x`` itself for ``none`` or a zero level).
    """
    kind, level = check_corruption(kind, level, name="level")
    if kind == "none" or level == 0.0:
        return x
    if kind == "gaussian":
        eps = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        return x + level * eps  # Eq. (1)
    if kind == "masking":
        keep = _uniform(x, generator) >= level  # P(keep) = 1 - level
        return x * keep  # Eq. (2)
    # salt_pepper: two draws, one for "is this input destroyed", one for "to 0 or to 1"
    destroyed = _uniform(x, generator) < level
    salt = (_uniform(x, generator) < 0.5).to(x.dtype)
    return torch.where(destroyed, salt, x)  # Eq. (3)
