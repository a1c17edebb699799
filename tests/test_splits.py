"""Semi-supervised splits: exact class balance, disjointness, determinism, nesting, each error."""
import numpy as np
import pytest

from pipelines.data.datasets import Dataset, load_dataset
from pipelines.data.splits import make_split


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _rows(X):
    return {r.tobytes() for r in X}


def test_labeled_set_is_exactly_balanced_and_inside_the_pool(digits):
    s = make_split(digits, labels=50, seed=0)
    assert s.X_pool.shape == (1000, 64) and s.X_valid.shape == (297, 64) and s.X_test.shape == (500, 64)
    assert np.bincount(s.y_lab, minlength=10).tolist() == [5] * 10
    np.testing.assert_array_equal(s.X_lab, s.X_pool[s.lab_index])
    np.testing.assert_array_equal(s.y_lab, digits.y[s.lab_index])
    assert len(np.unique(s.lab_index)) == 50
    # the pool is X without its last n_valid rows; validation is those rows
    np.testing.assert_array_equal(s.X_pool, digits.X[:1000])
    np.testing.assert_array_equal(s.X_valid, digits.X[1000:])


def test_labeled_valid_and_test_are_disjoint():
    rng = np.random.default_rng(0)
    X = rng.random((600, 6)).astype(np.float32)  # all rows distinct
    Xt = rng.random((200, 6)).astype(np.float32)
    ds = Dataset("t", X, np.arange(600) % 4, Xt, np.arange(200) % 4, 100, None, 4, "test")
    s = make_split(ds, labels=40, seed=1, valid_labels=20, n_test=50)
    lab, val, test, pool = _rows(s.X_lab), _rows(s.X_valid), _rows(s.X_test), _rows(s.X_pool)
    assert len(lab) == 40 and len(val) == 20 and len(test) == 50
    assert not lab & val and not lab & test and not val & test
    assert lab <= pool and not val & pool  # the pool excludes the validation rows
    assert np.bincount(s.y_valid).tolist() == [5] * 4
    assert val <= _rows(X[500:])


def test_same_seed_same_split_other_seed_other_and_draws_are_nested(digits):
    a = make_split(digits, labels=100, seed=3)
    b = make_split(digits, labels=100, seed=3)
    c = make_split(digits, labels=100, seed=4)
    np.testing.assert_array_equal(a.lab_index, b.lab_index)
    assert len(set(a.lab_index) & set(c.lab_index)) < 30  # ~100 * 100/1000 expected by chance
    bigger = make_split(digits, labels=300, seed=3)
    assert set(a.lab_index) <= set(bigger.lab_index)
    # a test subsample or a validation cap never changes the labeled draw
    d = make_split(digits, labels=100, seed=3, n_test=100, valid_labels=50)
    np.testing.assert_array_equal(a.lab_index, d.lab_index)


def test_all_labels_and_stratified_test_subsample(digits):
    s = make_split(digits, labels=None, seed=0)
    assert s.X_lab.shape == (1000, 64)
    np.testing.assert_array_equal(s.y_lab, digits.y[:1000])
    t = make_split(digits, labels=None, seed=0, n_test=123, n_valid=0)
    assert len(t.y_test) == 123 and len(t.X_valid) == 0 and len(t.X_pool) == 1297
    full = np.bincount(digits.y_test, minlength=10) / len(digits.y_test)
    np.testing.assert_allclose(np.bincount(t.y_test, minlength=10), 123 * full, atol=1.0)  # largest remainders
    assert _rows(t.X_test) <= _rows(digits.X_test)


@pytest.mark.parametrize("kwargs, message", [
    (dict(labels=55), r"labels=55 is not divisible by the 10 classes of digits.*e.g. 50 or 60"),
    (dict(labels=0), r"labels must be a positive integer"),
    (dict(labels=-10), r"labels must be a positive integer"),
    (dict(labels=1000), r"100 per class asked, but class \d has only \d+ rows.*ask fewer labels"),
    (dict(labels=10, n_valid=1297), r"n_valid must be an integer in \[0, 1297\)"),
    (dict(labels=10, valid_labels=15), r"valid_labels must be a positive multiple of the 10 classes"),
    (dict(labels=10, valid_labels=300), r"valid_labels=300 exceeds the 297 validation rows"),
    (dict(labels=10, n_test=501), r"n_test must be an integer in \[1, 500\]"),
])
def test_errors_name_the_numbers_and_the_fix(digits, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_split(digits, seed=0, **kwargs)


def test_too_many_labels_names_the_short_class():
    X = np.random.default_rng(0).random((100, 3)).astype(np.float32)
    y = np.array([0] * 80 + [1] * 20)  # class 1 has 20 rows in all, 10 of them in the pool
    ds = Dataset("t", X, y, X[:10], y[:10], 10, None, 2, "test")
    with pytest.raises(ValueError, match=r"12 per class asked, but class 1 has only 10 rows.*\[80, 10\]"):
        make_split(ds, labels=24, seed=0)


def test_labels_outside_the_class_range_are_rejected():
    X = np.zeros((20, 2), np.float32)
    ds = Dataset("t", X, np.arange(20) % 3, X, np.arange(20) % 3, 5, None, 2, "test")
    with pytest.raises(ValueError, match=r"y has labels in \[0, 2\], outside 0..1"):
        make_split(ds, labels=None, seed=0)
