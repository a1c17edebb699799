"""Datasets by name: one ``Dataset`` record (training part, test set, default validation size).

Names:

- ``digits``: scikit-learn's 8x8 digits (embedded, no download), grey levels / 16, shuffled
  once with a fixed generator (seed 0, whatever the run's seed); 1297 training rows (the last
  297 the default validation part) and 500 test rows.
- ``mnist``: the 60000 MNIST training images (the last 10000 the default validation part)
  and the 10000 official test images; see ``pipelines.data.mnist`` for lookup and verification.
- the Larochelle et al. (2007) variations (``pipelines.data.variations.VARIATIONS``), generated
  from MNIST by seed and cached.
- ``npz``: a user's ``.npz`` file (``path=``) with arrays ``X`` and ``y``, optionally
  ``X_test``/``y_test``, ``X_valid``/``y_valid`` and ``image_shape``; see :func:`load_npz`.

Image shape: the dataset's own (MNIST and its variations 28x28, digits 8x8, an ``.npz`` of 3-D
``X`` or with ``image_shape``), else the one given (``image_shape=``, ``data.image_shape``),
else 28x28 for rows of 784 values (MNIST's format); other data has none and gets no image
figures.

Every ``X`` is float32 in [0, 1], one row per example; labels are int64 in 0..n_classes-1.
"""
from __future__ import annotations

import dataclasses
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

from pipelines.data import mnist as _mnist
from pipelines.data import variations as _variations

DATASETS: tuple[str, ...] = ("digits", "mnist", *_variations.VARIATIONS, "npz")
DIGITS_TEST = 500
DIGITS_VALID = 297
MNIST_VALID = 10000
#: fraction held out as test (and then as validation) from an .npz without those arrays
NPZ_HOLDOUT = 0.2
#: rows of this many values are taken for 28x28 images when no shape is known or given
FLAT_IMAGES = {784: (28, 28)}


@dataclass(frozen=True)
class Dataset:
    """A dataset: a training part (train then validation rows) and a test set.

    Attributes
    ----------
    name : the dataset's name.
    X : (n, d) float32 in [0, 1], the training part; its last ``n_valid`` rows are the default
        validation set.
    y : (n,) int64 in [0, n_classes).
    X_test : (n_test, d) float32 in [0, 1].
    y_test : (n_test,) int64.
    n_valid : size of the default validation part (the last rows of ``X``).
    image_shape : (rows, cols) of an image, or None for non-image data.
    n_classes : number of classes.
    source : where the data came from (paths, or the generating function), for run tracking.
    """

    name: str
    X: np.ndarray
    y: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    n_valid: int
    image_shape: tuple[int, int] | None
    n_classes: int
    source: str

    def __post_init__(self):
        n, d = self.X.shape if self.X.ndim == 2 else (None, None)
        if n is None or self.X_test.ndim != 2 or self.X_test.shape[1] != d:
            raise ValueError(f"{self.name}: X must be (n, d) and X_test (n_test, d); got "
                             f"{self.X.shape} and {self.X_test.shape}")
        if self.y.shape != (n,) or self.y_test.shape != (len(self.X_test),):
            raise ValueError(f"{self.name}: y {self.y.shape} / y_test {self.y_test.shape} do not match "
                             f"X {self.X.shape} / X_test {self.X_test.shape}")
        if not 0 <= self.n_valid < n:
            raise ValueError(f"{self.name}: n_valid must be in [0, {n}), got {self.n_valid}")
        if self.image_shape is not None and int(np.prod(self.image_shape)) != d:
            raise ValueError(f"{self.name}: image_shape {self.image_shape} does not hold {d} pixels")

    @property
    def n_features(self) -> int:
        return self.X.shape[1]


def load_dataset(name: str, *, data_dir: str | os.PathLike | None = None,
                 path: str | os.PathLike | None = None, seed: int = 0,
                 download: bool = False, image_shape: tuple[int, int] | None = None) -> Dataset:
    """Load a dataset by name.

    Parameters
    ----------
    name : one of ``DATASETS``.
    data_dir : folder searched first for data files (then ``$LAYERWISE_DATA``, then
        ``~/.cache/layerwise``). Generated variation sets (about 400 MB for the eight) are read
        from any of them but written to the last two first: a data folder, often shared and
        holding verified files only, receives them only when neither is writable.
    path : the ``.npz`` file, for ``name="npz"``.
    seed : seed of the generated variation sets (other datasets do not depend on it).
    download : fetch missing MNIST files from the usual mirrors.
    image_shape : (rows, cols) of one image, for data that does not carry its own (see the
        module docstring); rows * cols must be the number of features.
    """
    ds = _load(name, data_dir=data_dir, path=path, seed=seed, download=download)
    if image_shape is not None:
        rows_cols = tuple(int(v) for v in image_shape)
        if len(rows_cols) != 2 or min(rows_cols) < 1 or rows_cols[0] * rows_cols[1] != ds.n_features:
            raise ValueError(f"data.image_shape={list(image_shape)} does not fit {ds.name}'s "
                             f"{ds.n_features} features: give [rows, cols] with rows * cols = "
                             f"{ds.n_features}, or leave it unset")
        return dataclasses.replace(ds, image_shape=rows_cols)
    if ds.image_shape is None and ds.n_features in FLAT_IMAGES:
        return dataclasses.replace(ds, image_shape=FLAT_IMAGES[ds.n_features])
    return ds


def _load(name: str, *, data_dir, path, seed: int, download: bool) -> Dataset:
    if name == "digits":
        return _digits()
    if name == "mnist":
        paths = _mnist.find_mnist(data_dir, download=download)
        X, y, X_test, y_test = _mnist.load_mnist(data_dir)
        return Dataset("mnist", X, y, X_test, y_test, MNIST_VALID, (28, 28), 10,
                       source=", ".join(str(p) for p in paths.values()))
    if name in _variations.VARIATIONS:
        return _variation(name, data_dir=data_dir, seed=seed, download=download)
    if name == "npz":
        if path is None:
            raise ValueError("dataset 'npz' needs path=<file.npz> (a file with arrays X and y)")
        return load_npz(path)
    raise ValueError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")


def _digits() -> Dataset:
    digits = load_digits()
    X = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(X))  # fixed: the same split for every run
    X, y = X[order], y[order]
    n = len(X) - DIGITS_TEST
    return Dataset("digits", X[:n], y[:n], X[n:], y[n:], DIGITS_VALID, (8, 8), 10,
                   source="sklearn.datasets.load_digits")


def _variation(name: str, *, data_dir, seed: int, download: bool) -> Dataset:
    dirs = _mnist.dataset_locations(data_dir)
    mine = _mnist.dataset_locations(None)  # $LAYERWISE_DATA, ~/.cache/layerwise
    arrays, cache = _variations.generate(
        name, seed=seed, mnist=lambda: _mnist.load_mnist(data_dir, download=download), cache_dirs=dirs,
        write_dirs=mine + [d for d in dirs if d not in mine])
    n_classes = 10 if name in _variations.MNIST_BASED else 2
    source = f"pipelines.data.variations recipe {_variations.RECIPE_VERSION}, seed {seed}"
    if name in _variations.MNIST_BASED:
        source += ", from MNIST"
    if cache is not None:
        source += f" (cache {cache})"
    return Dataset(name, arrays["X"], arrays["y"], arrays["X_test"], arrays["y_test"],
                   int(arrays["n_valid"]), (28, 28), n_classes, source=source)


# -- user arrays --------------------------------------------------------------------------------
def _check_X(X: np.ndarray, what: str, path: Path) -> tuple[np.ndarray, tuple[int, int] | None]:
    X = np.asarray(X)
    shape = None
    if X.ndim == 3:  # images (n, rows, cols): flatten, remember the shape
        shape = (int(X.shape[1]), int(X.shape[2]))
        X = X.reshape(len(X), -1)
    if X.ndim != 2:
        raise ValueError(f"{path}: {what} must be 2-D (n_examples, n_features) or 3-D images "
                         f"(n, rows, cols); got shape {X.shape}. Reshape it, e.g. {what} = "
                         f"{what}.reshape(len({what}), -1)")
    if not (np.issubdtype(X.dtype, np.number) or X.dtype == bool):
        raise ValueError(f"{path}: {what} must be numeric, got dtype {X.dtype}")
    X = X.astype(np.float32)
    if len(X) == 0:
        raise ValueError(f"{path}: {what} has no rows")
    if not np.isfinite(X).all():
        bad = int((~np.isfinite(X)).any(1).sum())
        raise ValueError(f"{path}: {what} has NaN or infinite values in {bad} rows; remove or impute "
                         f"them first, e.g. keep = np.isfinite({what}).all(1)")
    lo, hi = float(X.min()), float(X.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"{path}: {what} has values outside [0, 1] (min {lo:g}, max {hi:g}): scale it "
                         f"first, e.g. X = (X - X.min()) / (X.max() - X.min()), using the training "
                         f"X's min and max for X_test too")
    return X, shape


def _check_y(y: np.ndarray, n: int, what: str, xwhat: str, path: Path) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"{path}: {what} must be 1-D class labels, got shape {y.shape} "
                         f"(one-hot labels? use {what}.argmax(1))")
    if len(y) != n:
        raise ValueError(f"{path}: {xwhat} has {n} rows but {what} has {len(y)} labels; they must match")
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating) or y.dtype == bool):
        raise ValueError(f"{path}: {what} must hold integer class labels, got dtype {y.dtype}; map them "
                         f"to 0..K-1, e.g. classes, {what} = np.unique({what}, return_inverse=True)")
    yf = y.astype(np.float64)
    if not np.isfinite(yf).all() or (yf != np.rint(yf)).any():
        raise ValueError(f"{path}: {what} must hold integer class labels 0..K-1; found non-integer values")
    if yf.min() < 0:
        raise ValueError(f"{path}: {what} has negative labels (min {int(yf.min())}); labels must be "
                         f"0..K-1, e.g. classes, {what} = np.unique({what}, return_inverse=True)")
    return yf.astype(np.int64)


def load_npz(path: str | os.PathLike) -> Dataset:
    """A user's arrays from an ``.npz`` file, validated.

    The file holds ``X`` (n, d) or (n, rows, cols) with values in [0, 1] and ``y`` (n,) integer
    labels 0..K-1 (every class present in ``y``). Optional: ``X_test``/``y_test`` (otherwise
    the last ``NPZ_HOLDOUT`` of the rows, after a fixed shuffle, is the test set) and
    ``X_valid``/``y_valid`` (appended after ``X`` as the validation part; otherwise the last
    ``NPZ_HOLDOUT`` of the shuffled training rows), and ``image_shape`` = ``(rows, cols)``
    when the rows of a 2-D ``X`` are images (a 3-D ``X`` gives its own; rows of 784 values are
    28x28 without it). The shuffle uses a fixed seed (0), so the split is the same for every
    run, and a file sorted by class still gives mixed parts.

    Raises
    ------
    ValueError : naming the file, the problem and the fix (shape, NaN/inf, range, labels).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (dataset 'npz' needs an existing .npz file)")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise ValueError(f"{path}: cannot be read as an .npz archive ({err}); it may be truncated: "
                         f"save it again with np.savez(path, X=X, y=y)") from None
    for key in ("X", "y"):
        if key not in arrays:
            raise ValueError(f"{path}: no array named {key!r} (found {sorted(arrays)}); save it with "
                             f"np.savez(path, X=X, y=y[, X_test=..., y_test=...])")
    for a, b in (("X_test", "y_test"), ("X_valid", "y_valid")):
        if (a in arrays) != (b in arrays):
            raise ValueError(f"{path}: has {a if a in arrays else b} without "
                             f"{b if a in arrays else a}; give both or neither")
    X, shape = _check_X(arrays["X"], "X", path)
    y = _check_y(arrays["y"], len(X), "y", "X", path)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(X))  # fixed: files sorted by class still give mixed splits
    X, y = X[order], y[order]
    if "X_test" in arrays:
        X_test, shape_t = _check_X(arrays["X_test"], "X_test", path)
        y_test = _check_y(arrays["y_test"], len(X_test), "y_test", "X_test", path)
    else:
        n_test = int(round(NPZ_HOLDOUT * len(X)))
        if n_test == 0 or n_test == len(X):
            raise ValueError(f"{path}: {len(X)} rows are too few to hold out {NPZ_HOLDOUT:.0%} as a test "
                             f"set; add rows or give X_test and y_test")
        X, y, X_test, y_test, shape_t = X[:-n_test], y[:-n_test], X[-n_test:], y[-n_test:], shape
    if X_test.shape[1] != X.shape[1]:
        raise ValueError(f"{path}: X has {X.shape[1]} features but X_test has {X_test.shape[1]}")
    if "X_valid" in arrays:
        X_valid, _ = _check_X(arrays["X_valid"], "X_valid", path)
        y_valid = _check_y(arrays["y_valid"], len(X_valid), "y_valid", "X_valid", path)
        if X_valid.shape[1] != X.shape[1]:
            raise ValueError(f"{path}: X has {X.shape[1]} features but X_valid has {X_valid.shape[1]}")
        X, y, n_valid = np.concatenate([X, X_valid]), np.concatenate([y, y_valid]), len(X_valid)
    else:
        n_valid = int(round(NPZ_HOLDOUT * len(X)))
    n_classes = int(max(y.max(), y_test.max())) + 1
    missing = sorted(set(range(n_classes)) - set(np.unique(y).tolist()))
    if missing:
        raise ValueError(f"{path}: labels must be 0..K-1 with every class in the training rows; classes "
                         f"{missing} of 0..{n_classes - 1} never occur in y. Relabel, e.g. classes, y = "
                         f"np.unique(y, return_inverse=True)")
    if n_valid >= len(X):
        raise ValueError(f"{path}: the validation part ({n_valid} rows) leaves no training rows")
    if shape_t != shape:
        shape = None
    if "image_shape" in arrays:
        given = np.asarray(arrays["image_shape"]).reshape(-1)
        if (len(given) != 2 or not np.issubdtype(given.dtype, np.integer) or given.min() < 1
                or int(given[0]) * int(given[1]) != X.shape[1]):
            raise ValueError(f"{path}: image_shape {given.tolist()} must be two positive integers "
                             f"(rows, cols) with rows * cols = {X.shape[1]}, the features of X")
        shape = (int(given[0]), int(given[1]))
    return Dataset("npz", X, y, X_test, y_test, n_valid, shape, n_classes, source=str(path.resolve()))
