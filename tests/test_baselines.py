"""scikit-learn baselines: selection on validation, errors against direct computation."""
import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.neighbors import KNeighborsClassifier
from sklearn.svm import SVC

from finetune.baselines import (
    error,
    knn,
    pca_svm,
    run_baseline,
    select_on_validation,
    svm,
)


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    rng = np.random.default_rng(0)
    i = rng.permutation(len(X))
    X, y = X[i], y[i]
    return X[:300], y[:300], X[300:800], y[300:800], X[800:], y[800:]


def test_knn_choice_matches_sklearn_on_each_k(digits):
    Xl, yl, Xv, yv, Xt, yt = digits
    res = knn(Xl, yl, Xv, yv)
    for k_str, err in res.grid.items():
        k = int(k_str.split(":")[1].strip(" }"))
        ref = error(yv, KNeighborsClassifier(n_neighbors=k).fit(Xl, yl).predict(Xv))
        assert err == pytest.approx(ref, abs=1 / len(yv) + 1e-12)  # ties may break differently
    assert res.valid_error == pytest.approx(min(res.grid.values()))


def test_svm_selects_the_best_valid_point_and_beats_chance(digits):
    Xl, yl, Xv, yv, Xt, yt = digits
    res = run_baseline("svm", Xl, yl, Xv, yv, Xt, yt)
    assert res.valid_error == min(res.grid.values())
    direct = error(yt, SVC(kernel="rbf", **res.params).fit(Xl, yl).predict(Xt))
    assert res.test_error == pytest.approx(direct)
    assert res.test_error < 0.10  # 300 labeled digits: an RBF SVM is near 95% accurate


def test_pca_svm_runs_with_fewer_components_than_asked(digits):
    Xl, yl, Xv, yv, _, _ = digits
    res = pca_svm(Xl[:40], yl[:40], Xv, yv, n_components=500)
    assert res.params["n_components"] == 40
    assert res.valid_error < 0.5


def test_grid_ties_go_to_first_point():
    X = np.array([[0.0], [1.0], [0.1], [0.9]])
    y = np.array([0, 1, 0, 1])
    _, params, err, _ = select_on_validation(SVC(), {"C": [1.0, 10.0]}, X, y, X, y)
    assert err == 0 and params == {"C": 1.0}


def test_bad_inputs_are_clear_errors(digits):
    Xl, yl, Xv, yv, Xt, yt = digits
    with pytest.raises(ValueError, match="single class"):
        svm(Xl, np.zeros_like(yl), Xv, yv)
    with pytest.raises(ValueError, match="differ in length"):
        knn(Xl, yl[:-1], Xv, yv)
    with pytest.raises(ValueError, match="unknown baseline 'rf'"):
        run_baseline("rf", Xl, yl, Xv, yv, Xt, yt)
