"""scikit-learn baselines: SVM (RBF), k-NN and PCA+SVM, hyperparameters chosen on validation.

Each baseline picks its hyperparameters by the error on the validation set (model selection
on validation, the reported error on test), refits nothing on validation
data, and takes its randomness from ``random_state``. They run on raw inputs or on a stack's
codes alike: the caller passes the arrays.

    error(model) = mean_i 1[model(x_i) != y_i]                                   (1)
    theta* = argmin_theta error_valid(fit(theta, X_lab, y_lab))                   (2)

References
----------
Rifai et al., The manifold tangent classifier, NIPS 2011 (the NN and SVM columns).
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from sklearn.base import BaseEstimator, clone
from sklearn.decomposition import PCA
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.svm import SVC

from pretrain.checks import check_choice

BASELINES = ("svm", "knn", "pca_svm")
C_GRID = (0.1, 1.0, 10.0, 100.0)
GAMMA_FACTORS = (0.1, 0.3, 1.0, 3.0)   # times the "scale" heuristic 1 / (d * var(X))
K_GRID = (1, 3, 5, 7, 9, 15)


@dataclass
class BaselineResult:
    """A fitted baseline: its chosen hyperparameters and its errors (fractions in [0, 1])."""

    name: str
    estimator: Any
    params: dict
    valid_error: float
    test_error: float | None = None
    seconds: float = 0.0
    grid: dict = field(default_factory=dict)


def error(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Eq. (1): the fraction of misclassified examples."""
    return float(np.mean(np.asarray(y_true) != np.asarray(y_pred)))


def _check(X_lab, y_lab, X_valid, y_valid) -> None:
    if len(X_lab) != len(y_lab) or len(X_valid) != len(y_valid):
        raise ValueError(f"inputs and labels differ in length: {len(X_lab)} vs {len(y_lab)} "
                         f"(labeled), {len(X_valid)} vs {len(y_valid)} (validation)")
    if len(np.unique(y_lab)) < 2:
        raise ValueError(f"the labeled set has a single class ({np.unique(y_lab)}): a classifier "
                         f"needs examples of at least two classes")
    if X_lab.shape[1] != X_valid.shape[1]:
        raise ValueError(f"labeled inputs have {X_lab.shape[1]} features but validation inputs "
                         f"have {X_valid.shape[1]}")


def select_on_validation(estimator: BaseEstimator, grid: dict[str, list], X_lab, y_lab,
                         X_valid, y_valid) -> tuple[BaseEstimator, dict, float, dict]:
    """Eq. (2): fit ``estimator`` for each grid point on the labeled set, keep the best on valid.

    Ties go to the first grid point, so the grid's order states the preference.
    """
    _check(X_lab, y_lab, X_valid, y_valid)
    names = list(grid)
    best, best_params, best_err, scores = None, {}, np.inf, {}
    for values in itertools.product(*(grid[n] for n in names)):
        params = dict(zip(names, values))
        model = clone(estimator).set_params(**params).fit(X_lab, y_lab)
        err = error(y_valid, model.predict(X_valid))
        scores[str(params)] = err
        if err < best_err:
            best, best_params, best_err = model, params, err
    return best, best_params, best_err, scores


def _scale_gamma(X: np.ndarray) -> float:
    var = float(np.var(X))
    return 1.0 / (X.shape[1] * var) if var > 0 else 1.0


def svm(X_lab, y_lab, X_valid, y_valid, *, random_state: int = 0,
        Cs=C_GRID, gamma_factors=GAMMA_FACTORS) -> BaselineResult:
    """RBF SVM with C and gamma chosen on validation."""
    g = _scale_gamma(X_lab)
    t = time.perf_counter()
    model, params, err, scores = select_on_validation(
        SVC(kernel="rbf", random_state=random_state),
        {"C": list(Cs), "gamma": [g * f for f in gamma_factors]}, X_lab, y_lab, X_valid, y_valid)
    return BaselineResult("svm", model, params, err, seconds=time.perf_counter() - t, grid=scores)


def knn(X_lab, y_lab, X_valid, y_valid, *, ks=K_GRID, random_state: int = 0) -> BaselineResult:
    """k-NN (Euclidean) with k chosen on validation; neighbours computed once for all k."""
    _check(X_lab, y_lab, X_valid, y_valid)
    t = time.perf_counter()
    ks = [k for k in ks if k <= len(X_lab)]
    nn = KNeighborsClassifier(n_neighbors=max(ks)).fit(X_lab, y_lab)
    idx = nn.kneighbors(X_valid, return_distance=False)          # (n_valid, k_max), nearest first
    neigh = np.asarray(y_lab)[idx]
    n_classes = int(max(np.max(y_lab), np.max(y_valid))) + 1
    scores, best_k, best_err = {}, ks[0], np.inf
    for k in ks:
        votes = np.zeros((len(X_valid), n_classes))
        np.add.at(votes, (np.arange(len(X_valid))[:, None], neigh[:, :k]), 1.0)
        # scikit-learn breaks vote ties by the lowest class; argmax does the same
        err = error(y_valid, votes.argmax(1))
        scores[f"{{'n_neighbors': {k}}}"] = err
        if err < best_err:
            best_k, best_err = k, err
    model = KNeighborsClassifier(n_neighbors=best_k).fit(X_lab, y_lab)
    return BaselineResult("knn", model, {"n_neighbors": best_k}, best_err,
                          seconds=time.perf_counter() - t, grid=scores)


def pca_svm(X_lab, y_lab, X_valid, y_valid, *, n_components: int = 50, random_state: int = 0,
            Cs=C_GRID, gamma_factors=GAMMA_FACTORS) -> BaselineResult:
    """PCA (fit on the labeled inputs) followed by an RBF SVM, C and gamma chosen on validation."""
    n = min(n_components, X_lab.shape[1], len(X_lab))
    pca = PCA(n_components=n, random_state=random_state).fit(X_lab)
    g = _scale_gamma(pca.transform(X_lab))
    t = time.perf_counter()
    model, params, err, scores = select_on_validation(
        make_pipeline(PCA(n_components=n, random_state=random_state),
                      SVC(kernel="rbf", random_state=random_state)),
        {"svc__C": list(Cs), "svc__gamma": [g * f for f in gamma_factors]},
        X_lab, y_lab, X_valid, y_valid)
    params = {"n_components": n, **params}
    return BaselineResult("pca_svm", model, params, err, seconds=time.perf_counter() - t, grid=scores)


RUNNERS: dict[str, Callable[..., BaselineResult]] = {"svm": svm, "knn": knn, "pca_svm": pca_svm}


def run_baseline(name: str, X_lab, y_lab, X_valid, y_valid, X_test, y_test, *,
                 random_state: int = 0, **kwargs) -> BaselineResult:
    """Fit baseline ``name`` with selection on validation and fill in its test error (left
    None when ``X_test`` is None: a hyperparameter search never reads the test set)."""
    check_choice("baseline", name, tuple(RUNNERS))
    result = RUNNERS[name](X_lab, y_lab, X_valid, y_valid, random_state=random_state, **kwargs)
    if X_test is not None:
        result.test_error = error(y_test, result.estimator.predict(X_test))
    return result
