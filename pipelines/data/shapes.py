"""The shape sets of Larochelle et al. (2007): rectangles, rectangles on images, convex regions.

Each generator takes ``n`` and a numpy generator and returns ``X`` (n, 784) in [0, 1], labels
``y`` (n,) and the generating factors (a dict of (n,) arrays).

- ``rect`` (:func:`rectangles`): the one-pixel white outline of a rectangle on black. Height
  h and width w are integers drawn uniformly from [1, 28], pairs with |h - w| < 3 rejected
  (so no squares), the top-left corner then uniform such that the rectangle fits. Label 1
  when the rectangle is tall (h > w), 0 when wide.
- ``rect-img`` (:func:`rectangles_images`): the rectangle's inside (border included) is one
  natural image patch, the outside another. As in the paper: h, w >= 10, |h - w| >= 5, and
  the area h w between 25% and 75% of the image. Label 1 when tall.
- ``convex`` (:func:`convex_sets`): white regions on black. A convex region is the
  intersection of k ~ Geometric(0.195) half-planes, each bounded by a line through a point
  uniform in the image with a normal of uniform orientation; regions under 19 pixels are
  rejected. A non-convex region is the union of m ~ U{2, 3, 4} such regions, each with k ~
  Geometric(0.07) half-planes and at least 10 pixels, kept only when it fails the convexity
  test :func:`is_convex`: along a lattice line of direction v (all primitive v with
  components in [-3, 3]) the region's pixels must form one run. Every digitised convex region
  passes this test (a line meets a convex set in one segment), so a failing union is
  certainly non-convex; it is the paper's test "every pair of pixels", restricted to pairs
  along those 16 directions. Label 1 for convex, 0 for non-convex; half of each.

  The paper tuned its parameters so that both classes have roughly equal pixel counts. With
  the parameters above, non-convex unions are larger (mean 470 against 270 pixels: the count
  alone would classify 69% right). So the convex images are drawn with quotas: their
  histogram of pixel counts (``INK_BINS`` bins) equals that of the non-convex images, and
  the count alone tells nothing.

References
----------
Larochelle, Erhan, Courville, Bergstra and Bengio (2007), An empirical evaluation of deep
architectures on problems with many factors of variation. ICML.
"""
from __future__ import annotations

import functools

import numpy as np

from pipelines.data.images import SIDE, quantize, sample_patches

#: pixel-count bins in which the convex images copy the non-convex images' histogram
INK_BINS = 16

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

