"""Argument checks: each returns the value or raises a ``ValueError`` that names the argument,
the values it accepts and the value it got (``lr must be > 0, got -1``).

Free of torch, so that the config and the scikit-learn estimators check their arguments with
the same words as the layers.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Sequence


def check_positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    """``value`` if it is > 0 (or >= 0 with ``allow_zero``); NaN is refused."""
    ok = value >= 0 if allow_zero else value > 0
    if not ok or value != value:  # value != value catches NaN
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value!r}")
    return value


def check_probability(name: str, value: float) -> float:
    """``value`` if ``0 <= value <= 1``."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return value


def check_int(name: str, value, low: int | None = None) -> int:
    """``value`` as a plain int if it is an integer (not a bool; numpy integers too) and, when
    ``low`` is given, ``>= low``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or (low is not None and value < low):
        bound = "" if low is None else f" >= {low}"
        raise ValueError(f"{name} must be an integer{bound}, got {value!r}")
    return int(value)


def check_float(name: str, value, *, low: float, high: float = math.inf, low_open: bool = False,
                high_open: bool = True, meaning: str = "") -> float:
    """``value`` as a float if it is a finite real number (not a bool) in the interval from
    ``low`` to ``high``, each end open or closed; ``meaning`` follows the interval in the message."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        ok = above and below
    if not ok:
        lo, hi = "(" if low_open else "[", ")" if high_open else "]"
        raise ValueError(f"{name} must be a number in {lo}{low}, {high}{hi}{', ' + meaning if meaning else ''}, "
                         f"got {value!r}")
    return float(value)


def check_bool(name: str, value) -> bool:
    """``value`` if it is True or False (not 0, 1 or a string)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def check_choice(what: str, value, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``; the message reads ``unknown <what> 'x': choose one of ...``."""
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}: choose one of {', '.join(choices)}")
    return value
