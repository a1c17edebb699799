"""The Larochelle et al. (2007) benchmark variations, generated from MNIST by their recipes.

Every set is 28x28 grey levels in [0, 1], stored as multiples of 1/255 (as the originals,
made from 8-bit images). Each set is seeded: the same seed gives the same bytes. This module
holds the registry of sets and their published split sizes, the MNIST-based recipes, the
assembly of the splits (:func:`generate_arrays`), the cache (:func:`generate`) and the
reader of the original ``.amat`` files (:func:`load_amat`); the image operations are in
``pipelines.data.images``, the shape sets in ``pipelines.data.shapes``.

MNIST-based sets (10 classes; 10000 train / 2000 valid / 50000 test):

- ``mnist-basic``: the digits unchanged.
- ``mnist-rot``: each digit rotated about the image centre by an angle theta ~ U[0, 2 pi),
  bilinear interpolation, zeros outside the source image.
- ``mnist-bg-rand``: background pixels b ~ U[0, 1] i.i.d.; the image is

      x = max(d, b)                                              (1)

  with d the digit. The paper says only that the background was "inserted"; Eq. (1) keeps
  the stroke at full intensity and shows the background wherever the digit is darker.
- ``mnist-bg-img``: b is a random textured 28x28 patch of a natural grey-level image
  (:func:`pipelines.data.images.sample_patches`), composited by Eq. (1).
- ``mnist-bg-img-rot``: rotation as in ``mnist-rot``, then the image background.

The digits: the paper drew its 62000 examples from the 70000 MNIST images. Here the 12000
train/valid digits are drawn (by seed) from the 60000 MNIST training images, and the test set
is all 10000 MNIST test images plus 40000 further training images disjoint from the first
12000, shuffled together (with fewer than 10000 test examples asked, they all come from the
MNIST test images). No digit image is in both the training part and the test part. For one
seed all five MNIST sets use the same digits, differently perturbed.

Shape sets (2 classes; recipes in ``pipelines.data.shapes``): ``rect`` (1000/200/50000),
``rect-img`` (10000/2000/50000) and ``convex`` (6000/2000/50000). Each split is generated on
its own, so that each is half and half in ``convex``.

The original ``.amat`` files, for users who have them, load with :func:`load_amat`.

References
----------
Larochelle, Erhan, Courville, Bergstra and Bengio (2007), An empirical evaluation of deep
architectures on problems with many factors of variation. ICML.
"""
from __future__ import annotations

import os
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np

from pipelines.data.images import SIDE, quantize, rotate, sample_patches
from pipelines.data.shapes import convex_sets, rectangles, rectangles_images
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
#: bumped whenever a recipe changes (here, in ``images`` or in ``shapes``), so that stale caches
#: are regenerated
RECIPE_VERSION = 2


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
    except (OSError, ValueError, KeyError, EOFError, zlib.error, zipfile.BadZipFile):
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
