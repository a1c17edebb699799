"""Semi-supervised splits: unlabeled pool, class-balanced labeled subset, validation, test.

From a ``Dataset`` whose training part ``X`` has its validation rows last (for MNIST the
last 10000 of the 60000 training images, the validation set of the semi-supervised protocol
of Rifai et al. 2011):

- ``X_valid`` = the last ``n_valid`` rows of ``X`` (optionally a class-balanced subset of
  ``valid_labels`` of them: a validation set no larger than the labeled set);
- ``X_pool`` = the other rows, for unsupervised pretraining: all of them, or the first
  ``pool`` (``data.pool``: a smaller unlabeled set, e.g. for a quick run on a large file);
- ``X_lab`` = ``labels / n_classes`` rows of each class drawn from the pool by ``seed``;
- ``X_test`` = the test set (optionally a seeded class-stratified subsample of ``n_test``).

Draws are nested: for one seed, the 100-label set is inside the 600-label set (each class's
pool rows are permuted once per seed and the first L/K taken). The labeled, validation and
test draws use independent streams, so asking a smaller test set never changes the labels.

References
----------
Rifai, Dauphin, Vincent, Bengio and Muller (2011), The manifold tangent classifier. NIPS.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.data.datasets import Dataset


@dataclass(frozen=True)
class Split:
    """The arrays of one split. ``lab_index`` are the labeled rows' indices into ``X_pool``."""

    X_pool: np.ndarray  # (n_pool, d) unlabeled pool: X without the validation rows
    X_lab: np.ndarray  # (L, d) the labeled subset, L / n_classes per class
    y_lab: np.ndarray  # (L,)
    X_valid: np.ndarray  # (n_valid, d)
    y_valid: np.ndarray  # (n_valid,)
    X_test: np.ndarray  # (n_test, d)
    y_test: np.ndarray  # (n_test,)
    lab_index: np.ndarray | None = None  # (L,) rows of X_pool that are labeled

    @property
    def n_classes(self) -> int:
        return int(max(self.y_lab.max(initial=-1), self.y_test.max(initial=-1),
                       self.y_valid.max(initial=-1))) + 1


def _stream(seed: int, purpose: int) -> np.random.Generator:
    # independent streams per purpose: 0 labeled, 1 validation, 2 test
    return np.random.default_rng([int(seed), purpose])


def _balanced(y: np.ndarray, per_class: int, n_classes: int, rng: np.random.Generator,
              what: str, fix: str) -> np.ndarray:
    """Sorted indices of ``per_class`` rows of each class, each class's rows permuted by ``rng``."""
    chosen = []
    for k in range(n_classes):
        rows = np.flatnonzero(y == k)
        if len(rows) < per_class:
            counts = np.bincount(y, minlength=n_classes)
            raise ValueError(f"{what}: {per_class} per class asked, but class {k} has only {len(rows)} "
                             f"rows (counts per class: {counts.tolist()}); {fix}")
        chosen.append(rows[rng.permutation(len(rows))[:per_class]])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


def _stratified(y: np.ndarray, n: int, n_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``n`` rows with class proportions of ``y`` (largest remainders)."""
    counts = np.bincount(y, minlength=n_classes)
    quota = counts * n / counts.sum()
    take = np.floor(quota).astype(np.int64)
    rest = n - take.sum()
    take[np.argsort(-(quota - take), kind="stable")[:rest]] += 1
    chosen = [np.flatnonzero(y == k)[rng.permutation(counts[k])[:take[k]]] for k in range(n_classes)]
    return np.sort(np.concatenate(chosen))


def make_split(ds: Dataset, *, labels: int | None, seed: int, n_valid: int | None = None,
               valid_labels: int | None = None, n_test: int | None = None,
               pool: int | None = None) -> Split:
    """Split a dataset for semi-supervised learning.

    Parameters
    ----------
    ds : the dataset; its last ``n_valid`` training rows are the validation set.
    labels : size L of the labeled subset, L / n_classes per class, drawn from the pool by seed;
        None for all pool labels (the knowledge-free setting).
    seed : seed of the draws.
    n_valid : validation rows; ``ds.n_valid`` when None.
    valid_labels : keep only a class-balanced subset of this many validation rows.
    n_test : keep a seeded class-stratified subsample of this many test rows.
    pool : keep only the first this many rows of the unlabeled pool (the labeled subset is
        drawn from them); None keeps all ``len(ds.X) - n_valid``.

    Raises
    ------
    ValueError : naming the numbers and the fix (labels not positive, not divisible by the number
        of classes, more per class than the pool holds, n_valid too large, labels out of range).
    """
    K = ds.n_classes
    for what, y in (("y", ds.y), ("y_test", ds.y_test)):
        if len(y) and (y.min() < 0 or y.max() >= K):
            raise ValueError(f"{ds.name}: {what} has labels in [{y.min()}, {y.max()}], outside "
                             f"0..{K - 1} (n_classes={K}); relabel to 0..{K - 1}")
    n = len(ds.X)
    n_valid = ds.n_valid if n_valid is None else n_valid
    if int(n_valid) != n_valid or not 0 <= n_valid < n:
        raise ValueError(f"n_valid must be an integer in [0, {n}) for {ds.name} ({n} training rows), "
                         f"got {n_valid!r}; leave rows for the pool")
    n_valid = int(n_valid)
    n_pool = n - n_valid
    if pool is not None:
        if int(pool) != pool or not 0 < pool <= n_pool:
            raise ValueError(f"data.pool must be an integer in [1, {n_pool}] for {ds.name} ({n} training "
                             f"rows, {n_valid} of them validation), got {pool!r}; ask at most {n_pool}")
        n_pool = int(pool)
    X_pool, y_pool = ds.X[:n_pool], ds.y[:n_pool]
    X_valid, y_valid = ds.X[n - n_valid:], ds.y[n - n_valid:]

    if labels is None:
        lab = np.arange(n_pool)
    else:
        if int(labels) != labels or labels <= 0:
            raise ValueError(f"labels must be a positive integer (or None for all {n_pool} pool labels), "
                             f"got {labels!r}")
        labels = int(labels)
        if labels % K:
            lo = labels // K * K
            raise ValueError(f"labels={labels} is not divisible by the {K} classes of {ds.name}: the labeled "
                             f"set is class-balanced; use a multiple of {K}, e.g. {max(lo, K)} or {lo + K}")
        lab = _balanced(y_pool, labels // K, K, _stream(seed, 0), f"labels={labels} on {ds.name}'s pool "
                        f"of {n_pool} rows", "ask fewer labels or a smaller n_valid")

    if valid_labels is not None:
        if int(valid_labels) != valid_labels or valid_labels <= 0 or valid_labels % K:
            raise ValueError(f"valid_labels must be a positive multiple of the {K} classes, got "
                             f"{valid_labels!r}; e.g. {K * max(1, int(valid_labels or 0) // K)}")
        if valid_labels > n_valid:
            raise ValueError(f"valid_labels={valid_labels} exceeds the {n_valid} validation rows; "
                             f"ask at most {n_valid // K * K}")
        keep = _balanced(y_valid, int(valid_labels) // K, K, _stream(seed, 1),
                         f"valid_labels={valid_labels} of {n_valid} validation rows",
                         "ask fewer validation labels or a larger n_valid")
        X_valid, y_valid = X_valid[keep], y_valid[keep]

    X_test, y_test = ds.X_test, ds.y_test
    if n_test is not None:
        if int(n_test) != n_test or not 0 < n_test <= len(X_test):
            raise ValueError(f"n_test must be an integer in [1, {len(X_test)}] (the test set's size), "
                             f"got {n_test!r}")
        keep = _stratified(y_test, int(n_test), K, _stream(seed, 2))
        X_test, y_test = X_test[keep], y_test[keep]

    X_lab, y_lab = (X_pool, y_pool) if labels is None else (X_pool[lab], y_pool[lab])
    return Split(X_pool=X_pool, X_lab=X_lab, y_lab=y_lab, X_valid=X_valid, y_valid=y_valid,
                 X_test=X_test, y_test=y_test, lab_index=lab)
