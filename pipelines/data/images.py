"""28x28 grey-level images for the variation sets: 8-bit levels, rotation, natural-image patches.

- :func:`quantize` rounds grey levels in [0, 1] to multiples of 1/255, as the original sets of
  Larochelle et al. (2007) were made from 8-bit images.
- :func:`rotate` turns images about their centre, bilinear, zeros outside the source image.
- :func:`sample_patches` draws 28x28 patches of natural grey-level photographs. Patches with
  little texture (pixel standard deviation below ``MIN_PATCH_STD``) are never drawn. The
  paper used 20 photographs from the internet; we use the two photographs scikit-learn ships
  (``china.jpg``, ``flower.jpg``), in grey levels ``0.299 R + 0.587 G + 0.114 B``, at their
  native resolution.

References
----------
Larochelle, Erhan, Courville, Bergstra and Bengio (2007), An empirical evaluation of deep
architectures on problems with many factors of variation. ICML.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
from sklearn.datasets import load_sample_images

SIDE = 28
#: patches whose pixel standard deviation (grey levels in [0, 1]) is below this are never used
MIN_PATCH_STD = 0.05


def quantize(x: np.ndarray) -> np.ndarray:
    """Round grey levels in [0, 1] to multiples of 1/255, as float32."""
    return (np.rint(np.clip(x, 0.0, 1.0) * 255.0) / 255.0).astype(np.float32)


def rotate(images: np.ndarray, angles: np.ndarray, *, chunk: int = 8192) -> np.ndarray:
    """Rotate 28x28 images about their centre, bilinear, zeros outside.

    Output pixel at offset p from the centre takes the input at R(theta)^T p, i.e. the image
    turns by theta counter-clockwise as displayed (row 0 on top).

    Parameters
    ----------
    images : (n, 784) or (n, 28, 28) grey levels.
    angles : (n,) radians.

    Returns
    -------
    rotated : float32 array of the shape of ``images``.
    """
    images = np.asarray(images, dtype=np.float32)
    angles = np.asarray(angles, dtype=np.float64)
    if len(images) != len(angles):
        raise ValueError(f"rotate: {len(images)} images but {len(angles)} angles")
    x = torch.from_numpy(np.ascontiguousarray(images.reshape(-1, 1, SIDE, SIDE)))
    out = torch.empty_like(x)
    theta_all = torch.from_numpy(angles)
    for i in range(0, len(x), chunk):
        th = theta_all[i:i + chunk]
        c, s = torch.cos(th), torch.sin(th)
        zero = torch.zeros_like(c)
        # affine_grid maps output coordinates to input ones: input = A @ output; in display
        # coordinates (x right, y down) A = [[c, -s], [s, c]] turns the image counter-clockwise
        A = torch.stack([torch.stack([c, -s, zero], 1), torch.stack([s, c, zero], 1)], 1)  # (b, 2, 3)
        xb = x[i:i + chunk]
        grid = torch.nn.functional.affine_grid(A.float(), list(xb.shape), align_corners=False)
        out[i:i + chunk] = torch.nn.functional.grid_sample(
            xb, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.numpy().reshape(images.shape)


@functools.lru_cache(maxsize=1)
def natural_images() -> tuple[np.ndarray, ...]:
    """scikit-learn's sample photographs in grey levels ``0.299 R + 0.587 G + 0.114 B`` in [0, 1]."""
    grey = []
    for im in load_sample_images().images:
        g = (im.astype(np.float64) @ np.array([0.299, 0.587, 0.114])) / 255.0
        g = np.clip(g, 0.0, 1.0).astype(np.float32)
        g.setflags(write=False)
        grey.append(g)
    return tuple(grey)


@functools.lru_cache(maxsize=4)
def _textured_positions(min_std: float) -> tuple[np.ndarray, ...]:
    """Per natural image, the flat indices of top-left corners of patches with std >= min_std."""
    out = []
    for g in natural_images():
        # summed-area tables give every window's mean and mean square in O(H W)
        S1 = np.pad(g.astype(np.float64), ((1, 0), (1, 0))).cumsum(0).cumsum(1)
        S2 = np.pad(g.astype(np.float64) ** 2, ((1, 0), (1, 0))).cumsum(0).cumsum(1)

        def window(S):
            return S[SIDE:, SIDE:] - S[:-SIDE, SIDE:] - S[SIDE:, :-SIDE] + S[:-SIDE, :-SIDE]

        m = window(S1) / SIDE**2
        var = np.maximum(window(S2) / SIDE**2 - m * m, 0.0)
        ok = np.flatnonzero(np.sqrt(var) >= min_std)
        if ok.size == 0:
            raise ValueError(f"no 28x28 patch of a natural image has std >= {min_std}; lower min_std")
        out.append(ok)  # indices into the (H - 27, W - 27) grid of corners
    return tuple(out)


def sample_patches(n: int, rng: np.random.Generator, *, min_std: float = MIN_PATCH_STD,
                   ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Draw ``n`` textured 28x28 patches of the natural images.

    The image is uniform among the photographs, the corner uniform among that image's
    corners whose patch has pixel std >= ``min_std`` (rejection sampling, done exactly).

    Returns
    -------
    patches : (n, 784) float32.
    where : ``{"image", "row", "col"}``, each (n,) int: the source image and the patch's corner.
    """
    images = natural_images()
    positions = _textured_positions(min_std)
    which = rng.integers(0, len(images), n)
    rows, cols = np.empty(n, np.int64), np.empty(n, np.int64)
    patches = np.empty((n, SIDE * SIDE), np.float32)
    for k, g in enumerate(images):
        sel = np.flatnonzero(which == k)
        flat = positions[k][rng.integers(0, len(positions[k]), len(sel))]
        r, c = np.divmod(flat, g.shape[1] - SIDE + 1)
        rows[sel], cols[sel] = r, c
        windows = np.lib.stride_tricks.sliding_window_view(g, (SIDE, SIDE))  # (H-27, W-27, 28, 28), a view
        patches[sel] = windows[r, c].reshape(-1, SIDE * SIDE)
    return patches, {"image": which, "row": rows, "col": cols}
