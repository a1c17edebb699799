"""2-D toy data on 1-D manifolds, to look at what an autoencoder learns about its data.

    (1) noisy circle:  x = r (cos t, sin t) + e,            t ~ U[0, 2 pi),  e ~ N(0, noise^2 I)
    (2) spiral:        x = (a + b t)(cos t, sin t) + e,      t ~ U[0, 2 pi turns)

Both are seeded (numpy ``default_rng(seed)``) and float32, shape (n, 2).
"""
from __future__ import annotations

import numpy as np

#: the toy data by name
TOY = ("circle", "spiral")


def _check(n: int, noise: float) -> None:
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    if not noise >= 0:
        raise ValueError(f"noise must be >= 0, got {noise!r}")


def noisy_circle(n: int = 1000, *, radius: float = 1.0, noise: float = 0.05, seed: int = 0) -> np.ndarray:
    """Eq. (1): n points near the circle of ``radius`` around the origin; (n, 2) float32."""
    _check(n, noise)
    if not radius > 0:
        raise ValueError(f"radius must be > 0, got {radius!r}")
    rng = np.random.default_rng(seed)
    t = rng.uniform(0.0, 2 * np.pi, int(n))
    x = radius * np.stack([np.cos(t), np.sin(t)], 1) + noise * rng.standard_normal((int(n), 2))  # Eq. (1)
    return x.astype(np.float32)


def distance_to_circle(x: np.ndarray, radius: float = 1.0) -> np.ndarray:
    """Euclidean distance of each point (n, 2) to the circle of ``radius``: ``| ||x|| - radius |``."""
    return np.abs(np.linalg.norm(np.asarray(x, dtype=np.float64), axis=1) - radius)


def spiral(n: int = 1000, *, turns: float = 1.5, start: float = 0.2, growth: float | None = None,
           noise: float = 0.03, seed: int = 0) -> np.ndarray:
    """Eq. (2): n points near an Archimedean spiral; (n, 2) float32.

    The radius grows from ``start`` to about 1 over ``turns`` turns (``growth`` = b overrides).
    """
    _check(n, noise)
    if not turns > 0:
        raise ValueError(f"turns must be > 0, got {turns!r}")
    rng = np.random.default_rng(seed)
    t_max = 2 * np.pi * turns
    b = (1.0 - start) / t_max if growth is None else growth
    t = rng.uniform(0.0, t_max, int(n))
    r = start + b * t
    x = r[:, None] * np.stack([np.cos(t), np.sin(t)], 1) + noise * rng.standard_normal((int(n), 2))  # Eq. (2)
    return x.astype(np.float32)


def grid(lo: float = -2.0, hi: float = 2.0, steps: int = 25) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A square grid over [lo, hi]^2: ``(xx, yy, points)`` with points (steps^2, 2) float32."""
    ax = np.linspace(lo, hi, int(steps))
    xx, yy = np.meshgrid(ax, ax)
    return xx, yy, np.stack([xx.ravel(), yy.ravel()], 1).astype(np.float32)


def curve(name: str, n: int = 20000) -> np.ndarray:
    """A dense noiseless sample of the curve under ``name`` ("circle" or "spiral"), for distances."""
    if name == "circle":
        return noisy_circle(n, noise=0.0, seed=0)
    if name == "spiral":
        return spiral(n, noise=0.0, seed=0)
    raise ValueError(f"unknown toy data {name!r}: choose 'circle' or 'spiral'")


def distance_to_points(x: np.ndarray, points: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Distance of each row of x (n, 2) to its nearest row of ``points`` (m, 2), in batches."""
    x, points = np.asarray(x, dtype=np.float64), np.asarray(points, dtype=np.float64)
    p_sq = (points**2).sum(1)  # (m,)
    out = np.empty(len(x))
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        d2 = (xb**2).sum(1, keepdims=True) - 2.0 * xb @ points.T + p_sq  # (b, m): one matmul
        out[i:i + batch_size] = np.sqrt(np.maximum(d2.min(1), 0.0))
    return out


def toy_data(name: str, n: int = 2000, *, noise: float = 0.05, seed: int = 0) -> np.ndarray:
    """``noisy_circle`` or ``spiral`` by name: (n, 2) float32."""
    if name == "circle":
        return noisy_circle(n, noise=noise, seed=seed)
    if name == "spiral":
        return spiral(n, noise=noise, seed=seed)
    raise ValueError(f"unknown toy data {name!r}: choose one of {', '.join(TOY)}")


def distance(name: str, x: np.ndarray) -> np.ndarray:
    """Distance of each point (n, 2) to the noiseless curve of ``name``: exact for the circle, to
    the nearest of 5000 curve points for the spiral (their spacing is below 0.002)."""
    if name == "circle":
        return distance_to_circle(x)
    return distance_to_points(x, curve(name, 5000))
