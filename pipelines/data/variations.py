"""The Larochelle et al. (2007) benchmark variations, generated from MNIST by their recipes.

Every set is 28x28 grey levels in [0, 1], stored as multiples of 1/255 (as the originals,
made from 8-bit images). Each set is seeded: the same seed gives the same bytes.

MNIST-based sets (10 classes; 10000 train / 2000 valid / 50000 test):

- ``mnist-basic``: the digits unchanged.
- ``mnist-rot``: each digit rotated about the image centre by an angle theta ~ U[0, 2 pi),
  bilinear interpolation, zeros outside the source image.
- ``mnist-bg-rand``: background pixels b ~ U[0, 1] i.i.d.; the image is

      x = max(d, b)                                              (1)

  with d the digit. The paper says only that the background was "inserted"; Eq. (1) keeps
  the stroke at full intensity and shows the background wherever the digit is darker.
- ``mnist-bg-img``: b is a random 28x28 patch of a natural grey-level image, composited by
  Eq. (1). Patches with little texture (pixel standard deviation below ``MIN_PATCH_STD``) are
  never drawn. The paper used 20 photographs from the internet; we use the two photographs
  scikit-learn ships (``china.jpg``, ``flower.jpg``), in grey levels
  ``0.299 R + 0.587 G + 0.114 B``, at their native resolution.
- ``mnist-bg-img-rot``: rotation as in ``mnist-rot``, then the image background.

The digits: the paper drew its 62000 examples from the 70000 MNIST images. Here the 12000
train/valid digits are drawn (by seed) from the 60000 MNIST training images, and the test set
is all 10000 MNIST test images plus 40000 further training images disjoint from the first
12000, shuffled together (with fewer than 10000 test examples asked, they all come from the
MNIST test images). No digit image is in both the training part and the test part. For one
seed all five MNIST sets use the same digits, differently perturbed.

Shape sets (2 classes):

- ``rect`` (1000/200/50000): the one-pixel white outline of a rectangle on black. Height
  h and width w are integers drawn uniformly from [1, 28], pairs with |h - w| < 3 rejected
  (so no squares), the top-left corner then uniform such that the rectangle fits. Label 1
  when the rectangle is tall (h > w), 0 when wide.
- ``rect-img`` (10000/2000/50000): the rectangle's inside (border included) is one natural
  image patch, the outside another. As in the paper: h, w >= 10, |h - w| >= 5, and the
  area h w between 25% and 75% of the image. Label 1 when tall.
- ``convex`` (6000/2000/50000): white regions on black. A convex region is the intersection
  of k ~ Geometric(0.195) half-planes, each bounded by a line through a point uniform in the
  image with a normal of uniform orientation; regions under 19 pixels are rejected. A
  non-convex region is the union of m ~ U{2, 3, 4} such regions, each with k ~
  Geometric(0.07) half-planes and at least 10 pixels, kept only when it fails the
  convexity test: along a lattice line of direction v (all primitive v with components in
  [-3, 3]) the region's pixels must form one run. Every digitised convex region passes
  this test (a line meets a convex set in one segment), so a failing union is certainly
  non-convex; it is the paper's test "every pair of pixels", restricted to pairs along
  those 16 directions. Label 1 for convex, 0 for non-convex; each split is half and half.
  The paper tuned its parameters so that both classes have roughly equal pixel counts; as
  we read the recipe, non-convex unions come out larger (mean 470 against 270 pixels: the
  count alone would classify 69% right). So the convex images are drawn with quotas: their
  histogram of pixel counts (``INK_BINS`` bins) equals that of the split's non-convex images,
  and the count alone tells nothing.

The original ``.amat`` files, for users who have them, load with :func:`load_amat`.

References
----------
Larochelle, Erhan, Courville, Bergstra and Bengio (2007), An empirical evaluation of deep
architectures on problems with many factors of variation. ICML.
"""
from __future__ import annotations

import functools
import os
import warnings
import zlib
from pathlib import Path

import numpy as np
import torch

from pipelines.files import atomic_path

#: name -> (n_train, n_valid, n_test), the published split sizes
SIZES: dict[str, tuple[int, int, int]] = {
    "mnist-basic": (10000, 2000, 50000),
    "mnist-rot": (10000, 2000, 50000),
    "mnist-bg-rand": (10000, 2000, 50000),
    "mnist-bg-img": (10000, 2000, 50000),
    "mnist-bg-img-rot": (10000, 2000, 50000),
    "rect": (1000, 200, 50000),
    "rect-img": (10000, 2000, 50000),
    "convex": (6000, 2000, 50000),
}
VARIATIONS: tuple[str, ...] = tuple(SIZES)
MNIST_BASED: tuple[str, ...] = tuple(n for n in VARIATIONS if n.startswith("mnist-"))
#: the names of the original archives (``<name>.zip`` holding ``.amat`` files)
ORIGINAL_NAMES: dict[str, str] = {
    "mnist-basic": "mnist",
    "mnist-rot": "mnist_rotation_new",
    "mnist-bg-rand": "mnist_background_random",
    "mnist-bg-img": "mnist_background_images",
    "mnist-bg-img-rot": "mnist_rotation_back_image_new",
    "rect": "rectangles",
    "rect-img": "rectangles_images",
    "convex": "convex",
}
#: bumped whenever a recipe changes, so that stale caches are regenerated
RECIPE_VERSION = 2
#: patches whose pixel standard deviation (grey levels in [0, 1]) is below this are never used
MIN_PATCH_STD = 0.05
SIDE = 28


# -- shared pieces ------------------------------------------------------------------------------
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
    from sklearn.datasets import load_sample_images

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
        H, W = g.shape
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


def _stream(seed: int, name: str) -> np.random.Generator:
    """An independent numpy stream per (seed, purpose): changing one set never shifts another."""
    return np.random.default_rng([int(seed), zlib.crc32(name.encode())])


# -- MNIST-based sets -------------------------------------------------------------------------
def _draw_digits(mnist, n_trainvalid: int, n_test: int, seed: int):
    """Indices of the source digits: (set, index) pairs for the training part and for the test part.

    ``set`` is 0 for the MNIST training images, 1 for the MNIST test images.
    """
    X_tr, _, X_te, _ = mnist
    n_pool, n_pool_test = len(X_tr), len(X_te)
    rng = _stream(seed, "digits")
    perm = rng.permutation(n_pool)
    extra = max(0, n_test - n_pool_test)
    if n_trainvalid + extra > n_pool:
        raise ValueError(f"{n_trainvalid} train/valid and {n_test} test digits need "
                         f"{n_trainvalid + extra} MNIST training images; there are {n_pool}")
    tv = perm[:n_trainvalid]
    if n_test <= n_pool_test:
        te_set = np.ones(n_test, np.int64)
        te_idx = rng.permutation(n_pool_test)[:n_test]
    else:
        te_set = np.concatenate([np.ones(n_pool_test, np.int64), np.zeros(extra, np.int64)])
        te_idx = np.concatenate([np.arange(n_pool_test), perm[n_trainvalid:n_trainvalid + extra]])
        order = rng.permutation(n_test)
        te_set, te_idx = te_set[order], te_idx[order]
    return (np.zeros(n_trainvalid, np.int64), tv), (te_set, te_idx)


def _perturb_digits(name: str, d: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Apply the recipe of ``name`` to digits ``d`` (n, 784)."""
    n = len(d)
    factors: dict[str, np.ndarray] = {}
    if name in ("mnist-rot", "mnist-bg-img-rot"):
        angle = rng.uniform(0.0, 2.0 * np.pi, n)
        d = rotate(d, angle)
        factors["angle"] = angle
    if name == "mnist-bg-rand":
        background = rng.uniform(0.0, 1.0, d.shape).astype(np.float32)
        d = np.maximum(d, background)  # Eq. (1)
    elif name in ("mnist-bg-img", "mnist-bg-img-rot"):
        background, where = sample_patches(n, rng)
        d = np.maximum(d, background)  # Eq. (1)
        factors.update({f"patch_{k}": v for k, v in where.items()})
    return quantize(d), factors


# -- shape sets -------------------------------------------------------------------------------
_ROW = np.arange(SIDE)[:, None]
_COL = np.arange(SIDE)[None, :]


def _rectangle_sizes(n: int, rng: np.random.Generator, *, lo: int, min_diff: int,
                     area: tuple[float, float] | None) -> tuple[np.ndarray, np.ndarray]:
    """Integer (h, w) uniform on [lo, 28]^2, rejecting |h - w| < min_diff and areas outside ``area``."""
    hs, ws, have = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], 0
    while have < n:
        h = rng.integers(lo, SIDE + 1, 2 * n + 16)
        w = rng.integers(lo, SIDE + 1, 2 * n + 16)
        ok = np.abs(h - w) >= min_diff
        if area is not None:
            ok &= (h * w >= area[0] * SIDE**2) & (h * w <= area[1] * SIDE**2)
        hs.append(h[ok]); ws.append(w[ok]); have += int(ok.sum())
    return np.concatenate(hs)[:n], np.concatenate(ws)[:n]


def _place(h: np.ndarray, w: np.ndarray, rng: np.random.Generator):
    """Top-left corners uniform such that the rectangle fits; the filled and outline masks."""
    top = (rng.random(len(h)) * (SIDE - h + 1)).astype(np.int64)
    left = (rng.random(len(w)) * (SIDE - w + 1)).astype(np.int64)
    t, l_, b, r = (v[:, None, None] for v in (top, left, top + h - 1, left + w - 1))
    inside = (_ROW >= t) & (_ROW <= b) & (_COL >= l_) & (_COL <= r)  # (n, 28, 28)
    outline = inside & ((_ROW == t) | (_ROW == b) | (_COL == l_) | (_COL == r))
    return top, left, inside.reshape(-1, SIDE * SIDE), outline.reshape(-1, SIDE * SIDE)


def rectangles(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict]:
    """``n`` rectangle outlines; label 1 when tall (h > w). Returns X (n, 784), y (n,), factors."""
    h, w = _rectangle_sizes(n, rng, lo=1, min_diff=3, area=None)
    top, left, _, outline = _place(h, w, rng)
    y = (h > w).astype(np.int64)
    return outline.astype(np.float32), y, {"top": top, "left": left, "height": h, "width": w}


def rectangles_images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict]:
    """``n`` rectangles cut from one natural patch over another; label 1 when tall."""
    h, w = _rectangle_sizes(n, rng, lo=10, min_diff=5, area=(0.25, 0.75))
    top, left, inside, _ = _place(h, w, rng)
    fg, where_fg = sample_patches(n, rng)
    bg, where_bg = sample_patches(n, rng)
    X = quantize(np.where(inside, fg, bg))
    factors = {"top": top, "left": left, "height": h, "width": w}
    factors.update({f"inside_{k}": v for k, v in where_fg.items()})
    factors.update({f"outside_{k}": v for k, v in where_bg.items()})
    return X, (h > w).astype(np.int64), factors


def _convex_regions(n: int, rng: np.random.Generator, *, p: float, min_pixels: int,
                    chunk: int = 8192) -> np.ndarray:
    """``n`` intersections of k ~ Geometric(p) random half-planes with >= min_pixels pixels.

    A half-plane is {q : (q - a) . u >= 0}, a uniform in the 28x28 square, u uniform on the
    circle. Returns (n, 784) bool.
    """
    centres = np.arange(SIDE, dtype=np.float32) + 0.5  # pixel centres along x (columns) and y (rows)
    found, have, drawn = [np.zeros((0, SIDE * SIDE), bool)], 0, 0
    while have < n:
        # draw about as many candidates as the acceptance rate so far says are needed
        rate = max(have / drawn, 0.05) if drawn else 0.2
        m = int(min(chunk, 1.1 * (n - have) / rate + 64))
        drawn += m
        k = rng.geometric(p, m)
        inside = np.ones((m, SIDE, SIDE), bool)  # (b, y, x)
        index = np.arange(m)
        kept_index, kept = [], []
        j = 0
        while len(k):
            a = rng.uniform(0.0, SIDE, (len(k), 2)).astype(np.float32)
            phi = rng.uniform(0.0, 2.0 * np.pi, len(k))
            cos, sin = np.cos(phi).astype(np.float32), np.sin(phi).astype(np.float32)
            # q . u >= a . u with q = (x, y): x cos + (y sin - a . u) >= 0, as an outer sum (b, 28, 28)
            row = sin[:, None] * centres - (a[:, 0] * cos + a[:, 1] * sin)[:, None]  # (b, 28) over y
            inside &= row[:, :, None] >= -(cos[:, None] * centres)[:, None, :]
            j += 1
            # an intersection only shrinks: drop candidates already too small, set aside finished ones
            big = inside.reshape(len(k), -1).view(np.uint8).sum(1, dtype=np.int32) >= min_pixels
            finished = big & (k <= j)
            kept_index.append(index[finished])
            kept.append(inside[finished].reshape(-1, SIDE * SIDE))
            going = big & ~finished
            inside, k, index = inside[going], k[going], index[going]
        # accepted candidates in the order they were drawn, as plain rejection sampling gives them
        order = np.argsort(np.concatenate(kept_index), kind="stable")
        found.append(np.concatenate(kept)[order])
        have += len(order)
    return np.concatenate(found)[:n]


def _directions(max_step: int = 3) -> list[tuple[int, int]]:
    """Primitive lattice directions (dx, dy) with |dx|, |dy| <= max_step, one per +/- pair."""
    out = []
    for dx in range(0, max_step + 1):
        for dy in range(-max_step, max_step + 1):
            if (dx, dy) == (0, 0) or np.gcd(dx, dy) != 1 or (dx == 0 and dy < 0):
                continue
            out.append((dx, dy))
    return out


@functools.lru_cache(maxsize=1)
def _line_ids() -> tuple[tuple[tuple[int, int], np.ndarray, int], ...]:
    """Per direction (dx, dy): each pixel's lattice-line number (784,) and the number of lines."""
    y, x = np.divmod(np.arange(SIDE * SIDE), SIDE)  # pixel p is at row y, column x
    out = []
    for dx, dy in _directions():
        line = dy * x - dx * y  # constant along the direction (dx, dy)
        ids, number = np.unique(line, return_inverse=True)
        out.append(((dx, dy), number.ravel(), len(ids)))
    return tuple(out)


def is_convex(masks: np.ndarray) -> np.ndarray:
    """Whether each pixel set is one run along every lattice line of the ``_directions()``.

    Parameters
    ----------
    masks : (n, 784) bool.

    Returns
    -------
    convex : (n,) bool. False means certainly non-convex: some lattice line leaves the set and
        re-enters it, so the segment between two of its pixels holds a pixel outside it.
    """
    m = np.asarray(masks, bool).reshape(-1, SIDE, SIDE)
    n = len(m)
    ok = np.ones(n, bool)
    for (dx, dy), line, n_lines in _line_ids():
        # a run starts at q when q is in the set and q - (dx, dy) is not (or is off the image)
        prev = np.zeros_like(m)
        ys, yd = slice(max(dy, 0), SIDE + min(dy, 0)), slice(max(-dy, 0), SIDE + min(-dy, 0))
        xs, xd = slice(max(dx, 0), SIDE + min(dx, 0)), slice(max(-dx, 0), SIDE + min(-dx, 0))
        prev[:, ys, xs] = m[:, yd, xd]
        image, pixel = np.nonzero((m & ~prev).reshape(n, SIDE * SIDE))
        runs = np.bincount(image * n_lines + line[pixel], minlength=n * n_lines)  # runs per (image, line)
        ok &= (runs.reshape(n, n_lines) <= 1).all(1)
    return ok


#: pixel-count bins in which the convex images copy the non-convex images' histogram
INK_BINS = 16


def _largest_remainders(weights: np.ndarray, total: int) -> np.ndarray:
    """Integer quotas proportional to ``weights`` summing to ``total``."""
    quota = weights * total / max(weights.sum(), 1)
    take = np.floor(quota).astype(np.int64)
    take[np.argsort(-(quota - take), kind="stable")[:total - take.sum()]] += 1
    return take


def _convex_with_ink(target_counts: np.ndarray, n: int, rng: np.random.Generator,
                     max_rounds: int = 1000) -> np.ndarray:
    """``n`` convex regions whose pixel-count histogram (``INK_BINS`` bins) matches ``target_counts``'.

    Candidates come from the convex recipe in order; one is kept when its bin's quota is not
    yet full. Returns (n, 784) bool, in random order.
    """
    edges = np.linspace(0, SIDE * SIDE + 1, INK_BINS + 1)
    quota = _largest_remainders(np.histogram(target_counts, edges)[0].astype(float), n)
    kept = [np.zeros((0, SIDE * SIDE), bool)]
    for _ in range(max_rounds):
        if not quota.any():
            break
        cand = _convex_regions(max(256, int(quota.sum())), rng, p=0.195, min_pixels=19)
        bins = np.digitize(np.count_nonzero(cand, axis=1), edges) - 1
        for b in np.flatnonzero(quota):
            take = np.flatnonzero(bins == b)[:quota[b]]
            kept.append(cand[take])
            quota[b] -= len(take)
    else:
        raise RuntimeError(f"convex: could not fill the pixel-count quotas {quota.tolist()}")
    out = np.concatenate(kept)
    return out[rng.permutation(len(out))]


def convex_sets(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict]:
    """``n`` convex / non-convex white regions, half each (label 1 = convex), in random order."""
    y = rng.permutation(np.arange(n) % 2).astype(np.int64)
    n_convex = int(y.sum())
    n_non = n - n_convex
    non, n_sets, have = [np.zeros((0, SIDE * SIDE), bool)], [np.zeros(0, np.int64)], 0
    while have < n_non:
        m = rng.integers(2, 5, n_non - have + 32)  # number of convex parts, U{2, 3, 4}
        parts = _convex_regions(int(m.sum()), rng, p=0.07, min_pixels=10)
        group = np.repeat(np.arange(len(m)), m)
        union = np.zeros((len(m), SIDE * SIDE), bool)
        np.logical_or.at(union, group, parts)
        ok = ~is_convex(union)
        non.append(union[ok]); n_sets.append(m[ok]); have += int(ok.sum())
    non_convex = np.concatenate(non)[:n_non]
    # the paper balanced convex and non-convex pixel counts; quotas make the histograms equal
    reference = np.count_nonzero(non_convex, axis=1) if n_non else np.zeros(0)
    convex = _convex_with_ink(reference, n_convex, rng) if n_non else _convex_regions(n_convex, rng, p=0.195,
                                                                                        min_pixels=19)
    X = np.empty((n, SIDE * SIDE), np.float32)
    X[y == 1] = convex
    X[y == 0] = non_convex
    parts = np.ones(n, np.int64)
    parts[y == 0] = np.concatenate(n_sets)[:n_non]
    return X, y, {"n_sets": parts}


# -- assembly, cache --------------------------------------------------------------------------
def _split_sizes(name, n_train, n_valid, n_test):
    d = SIZES[name]
    sizes = (d[0] if n_train is None else n_train, d[1] if n_valid is None else n_valid,
             d[2] if n_test is None else n_test)
    for what, v in zip(("n_train", "n_valid", "n_test"), sizes):
        if int(v) != v or v < 0:
            raise ValueError(f"{what} must be a non-negative integer, got {v!r}")
    if sizes[0] + sizes[1] == 0:
        raise ValueError(f"{name}: n_train + n_valid must be > 0")
    return tuple(int(v) for v in sizes)


def generate_arrays(name: str, *, seed: int = 0, mnist=None, n_train: int | None = None,
                    n_valid: int | None = None, n_test: int | None = None) -> dict[str, np.ndarray]:
    """Generate one variation set in memory (no cache).

    Parameters
    ----------
    name : one of ``VARIATIONS``.
    seed : the seed; same seed, same bytes.
    mnist : ``(X_train, y_train, X_test, y_test)`` as from ``pipelines.data.mnist.load_mnist``;
        needed by the ``mnist-*`` sets only.
    n_train, n_valid, n_test : split sizes; the published ones when None.

    Returns
    -------
    arrays : ``X`` (n_train + n_valid, 784) with the validation part last, ``y``, ``X_test``,
        ``y_test``, ``n_valid`` (0-d), and ``factor_<name>`` arrays of the generating factors
        over the rows of X then X_test (e.g. ``factor_angle``, ``factor_source_index``).
    """
    if name not in SIZES:
        raise ValueError(f"unknown variation {name!r}: choose one of {', '.join(VARIATIONS)}")
    n_tr, n_va, n_te = _split_sizes(name, n_train, n_valid, n_test)
    n_tv = n_tr + n_va
    if name in MNIST_BASED:
        if mnist is None:
            raise ValueError(f"{name} is made from MNIST digits: pass mnist=load_mnist(...)")
        X_tr, y_tr, X_te, y_te = mnist
        (s_tv, i_tv), (s_te, i_te) = _draw_digits(mnist, n_tv, n_te, seed)
        src_set = np.concatenate([s_tv, s_te])
        src_idx = np.concatenate([i_tv, i_te])
        digits = np.empty((len(src_idx), SIDE * SIDE), np.float32)
        labels = np.empty(len(src_idx), np.int64)
        for k, (pool_X, pool_y) in enumerate(((X_tr, y_tr), (X_te, y_te))):
            sel = src_set == k
            digits[sel] = pool_X[src_idx[sel]]
            labels[sel] = pool_y[src_idx[sel]]
        X_all, factors = _perturb_digits(name, digits, _stream(seed, name))
        factors.update(source_set=src_set, source_index=src_idx)
        y_all = labels
    else:
        rng = _stream(seed, name)
        make = {"rect": rectangles, "rect-img": rectangles_images, "convex": convex_sets}[name]
        # each split generated on its own so that split proportions (e.g. half convex) hold per split
        parts = [make(k, rng) for k in (n_tv, n_te)]
        X_all = quantize(np.concatenate([p[0] for p in parts]))
        y_all = np.concatenate([p[1] for p in parts])
        factors = {k: np.concatenate([p[2][k] for p in parts]) for k in parts[0][2]}
    out = {"X": X_all[:n_tv], "y": y_all[:n_tv], "X_test": X_all[n_tv:], "y_test": y_all[n_tv:],
           "n_valid": np.asarray(n_va)}
    out.update({f"factor_{k}": v for k, v in factors.items()})
    return out


def cache_path(cache_dir: str | os.PathLike, name: str, seed: int) -> Path:
    """``<cache_dir>/variations/<name>-seed<seed>.npz``."""
    return Path(cache_dir) / "variations" / f"{name}-seed{seed}.npz"


def _save(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write the arrays atomically (temporary name, then rename); images as uint8 levels."""
    payload = dict(arrays)
    payload["X"] = np.rint(arrays["X"] * 255).astype(np.uint8)
    payload["X_test"] = np.rint(arrays["X_test"] * 255).astype(np.uint8)
    payload["recipe_version"] = np.asarray(RECIPE_VERSION)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: savez adds no suffix
        np.savez(f, **payload)


def _load(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays of a cache file, or None when it is from another recipe version or unreadable."""
    try:
        with np.load(path) as z:
            if int(z["recipe_version"]) != RECIPE_VERSION:
                return None
            out = {k: z[k] for k in z.files if k != "recipe_version"}
    except (OSError, ValueError, KeyError, EOFError, zlib.error):
        return None
    out["X"] = out["X"].astype(np.float32) / np.float32(255)
    out["X_test"] = out["X_test"].astype(np.float32) / np.float32(255)
    return out


def generate(name: str, *, seed: int = 0, mnist=None, n_train: int | None = None,
             n_valid: int | None = None, n_test: int | None = None,
             cache_dirs: list[str | os.PathLike] | None = None,
             write_dirs: list[str | os.PathLike] | None = None) -> tuple[dict[str, np.ndarray], Path | None]:
    """Like :func:`generate_arrays`, through the cache when the published sizes are asked.

    The cache file ``<dir>/variations/<name>-seed<seed>.npz`` is read from the first of
    ``cache_dirs`` that has a current one, and written (atomically) to the first writable one
    of ``write_dirs`` (default: ``cache_dirs``, in that order).
    ``mnist`` may be a zero-argument callable, called only when the set must be generated.

    Returns
    -------
    arrays : as :func:`generate_arrays`.
    path : the cache file read or written, None when none was.
    """
    published = _split_sizes(name, n_train, n_valid, n_test) == SIZES.get(name)
    dirs = [Path(d) for d in (cache_dirs or [])] if published else []
    for d in dirs:
        p = cache_path(d, name, seed)
        if p.is_file() and (arrays := _load(p)) is not None:
            return arrays, p
    if callable(mnist):
        mnist = mnist() if name in MNIST_BASED else None
    arrays = generate_arrays(name, seed=seed, mnist=mnist, n_train=n_train, n_valid=n_valid, n_test=n_test)
    errors = []
    for d in ([Path(d) for d in write_dirs] if published and write_dirs is not None else dirs):
        p = cache_path(d, name, seed)
        try:
            _save(p, arrays)
            return arrays, p
        except OSError as err:
            errors.append(f"{p}: {err}")
    if errors:
        warnings.warn(f"could not cache {name} (it will be generated again next time): " + "; ".join(errors),
                      stacklevel=2)
    return arrays, None


# -- the original files -------------------------------------------------------------------------
def load_amat(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read one of the original ``.amat`` files of Larochelle et al. (2007).

    The format is whitespace-separated text, one example per row: 784 grey levels in [0, 1]
    then the label in the last column. The archives (e.g. ``mnist_rotation_new.zip``) hold a
    ``*_train.amat`` (or ``*_train_valid.amat``: the last 2000 rows, 200 for rectangles, are the
    validation set) and a ``*_test.amat``. Note that the images of the original rotation sets
    are stored transposed (column-major) relative to MNIST.

    Returns
    -------
    X : (n, n_features) float32.
    y : (n,) int64.
    """
    path = Path(path)
    try:
        data = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except ValueError as err:
        raise ValueError(f"{path}: not a whitespace-separated table of numbers ({err})") from err
    if data.shape[0] == 0 or data.shape[1] < 2:
        raise ValueError(f"{path}: expected rows of features then a label, got shape {data.shape}")
    X, y = data[:, :-1], data[:, -1]
    if not np.isfinite(data).all():
        raise ValueError(f"{path}: holds NaN or infinite values")
    if (y != np.rint(y)).any() or y.min() < 0:
        raise ValueError(f"{path}: the last column must hold non-negative integer labels")
    return X.astype(np.float32), y.astype(np.int64)
