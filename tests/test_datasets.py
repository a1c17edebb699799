"""Datasets by name: digits, mnist, user .npz files (each bad input's error), and example figures."""
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from pipelines.data import datasets as D
from pipelines.reporting.figures import example_grid, image_grid, save_figure

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
HAVE_MNIST = (SHARED / "mnist" / "train-images-idx3-ubyte.gz").is_file()


def test_digits_split_is_fixed_scaled_and_complete():
    ds = D.load_dataset("digits", seed=7)
    assert (ds.X.shape, ds.X_test.shape, ds.n_valid) == ((1297, 64), (500, 64), 297)
    assert ds.image_shape == (8, 8) and ds.n_classes == 10 and ds.X.dtype == np.float32
    assert ds.X.min() == 0.0 and ds.X.max() == 1.0
    again = D.load_dataset("digits", seed=0)  # the split does not depend on the run's seed
    np.testing.assert_array_equal(ds.X, again.X)
    # a permutation of all 1797 digits: every original row appears once, scaled by 1/16
    raw = load_digits()
    ours = np.concatenate([ds.X, ds.X_test]) * 16
    np.testing.assert_array_equal(np.bincount(np.concatenate([ds.y, ds.y_test])), np.bincount(raw.target))
    assert {r.tobytes() for r in ours} == {r.tobytes() for r in raw.data.astype(np.float32)}
    assert set(np.unique(ds.y[-297:])) == set(range(10))  # the validation rows are shuffled


@pytest.mark.skipif(not HAVE_MNIST, reason="the verified MNIST files are not in ../shared/data/mnist")
def test_mnist_by_name():
    ds = D.load_dataset("mnist", data_dir=SHARED)
    assert (ds.X.shape, ds.X_test.shape, ds.n_valid, ds.n_classes) == ((60000, 784), (10000, 784), 10000, 10)
    assert "train-images-idx3-ubyte.gz" in ds.source


def test_unknown_name_lists_the_names():
    with pytest.raises(ValueError, match=r"unknown dataset 'mnsit'.*digits, mnist, mnist-basic"):
        D.load_dataset("mnsit")
    with pytest.raises(ValueError, match="needs path="):
        D.load_dataset("npz")


def _save(tmp_path, **arrays):
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return path


def test_npz_round_trip_with_test_and_valid_arrays(tmp_path):
    rng = np.random.default_rng(0)
    X, y = rng.random((90, 5)), np.arange(90) % 3
    Xt, yt = rng.random((20, 5)), np.arange(20) % 3
    Xv, yv = rng.random((12, 5)), np.arange(12) % 3
    ds = D.load_dataset("npz", path=_save(tmp_path, X=X, y=y, X_test=Xt, y_test=yt, X_valid=Xv, y_valid=yv))
    assert ds.X.shape == (102, 5) and ds.n_valid == 12 and ds.n_classes == 3 and ds.image_shape is None
    np.testing.assert_allclose(ds.X[-12:], Xv.astype(np.float32))  # validation rows last, as given
    np.testing.assert_allclose(ds.X_test, Xt.astype(np.float32))
    # the training rows are a fixed permutation of X (with their labels)
    order = np.lexsort(ds.X[:90].T[::-1])
    ref = np.lexsort(X.astype(np.float32).T[::-1])
    np.testing.assert_allclose(ds.X[:90][order], X[ref].astype(np.float32))
    np.testing.assert_array_equal(ds.y[:90][order], y[ref])
    assert ds.source == str((tmp_path / "data.npz").resolve())


def test_npz_without_test_holds_out_a_shuffled_fifth(tmp_path):
    X = np.linspace(0, 1, 200 * 4).reshape(200, 4)
    y = np.repeat(np.arange(4), 50)  # sorted by class: a plain tail cut would be one class
    ds = D.load_dataset("npz", path=_save(tmp_path, X=X.reshape(200, 2, 2), y=y))
    assert ds.X.shape == (160, 4) and ds.X_test.shape == (40, 4) and ds.n_valid == 32
    assert ds.image_shape == (2, 2)
    assert set(ds.y_test.tolist()) == {0, 1, 2, 3} and set(ds.y[-32:].tolist()) == {0, 1, 2, 3}
    rows = {r.tobytes() for r in np.concatenate([ds.X, ds.X_test])}
    assert rows == {r.tobytes() for r in X.astype(np.float32)}


@pytest.mark.parametrize("arrays, message", [
    (dict(X=np.full((10, 3), 7.0), y=np.zeros(10)),
     r"X has values outside \[0, 1\] \(min 7, max 7\): scale it first, e.g. X = \(X - X.min\(\)\)"),
    (dict(X=np.array([[0.5, np.nan]] * 10), y=np.zeros(10)), r"X has NaN or infinite values in 10 rows"),
    (dict(X=np.zeros((10, 3)), y=np.zeros(9)), r"X has 10 rows but y has 9 labels"),
    (dict(X=np.zeros((10, 3)), y=np.arange(10) + 0.5), r"y must hold integer class labels 0..K-1"),
    (dict(X=np.zeros((10, 3)), y=np.arange(10) - 1), r"y has negative labels \(min -1\)"),
    (dict(X=np.zeros((10, 3)), y=np.arange(10) % 2 * 2), r"classes \[1\] of 0..2 never occur in y"),
    (dict(X=np.zeros(10), y=np.zeros(10)), r"X must be 2-D \(n_examples, n_features\)"),
    (dict(X=np.zeros((10, 3)), y=np.zeros((10, 2))), r"y must be 1-D class labels.*argmax"),
    (dict(X=np.zeros((10, 3))), r"no array named 'y'"),
    (dict(X=np.zeros((10, 3)), y=np.zeros(10), X_test=np.zeros((4, 3))), r"has X_test without y_test"),
    (dict(X=np.zeros((10, 3)), y=np.zeros(10), X_test=np.zeros((4, 2)), y_test=np.zeros(4)),
     r"X has 3 features but X_test has 2"),
    (dict(X=np.zeros((10, 3)), y=np.zeros(10), X_test=-np.ones((4, 3)), y_test=np.zeros(4)),
     r"X_test has values outside \[0, 1\] \(min -1, max -1\)"),
    (dict(X=np.zeros((2, 3)), y=np.zeros(2)), r"2 rows are too few to hold out 20%"),
])
def test_npz_bad_inputs_name_the_file_the_problem_and_the_fix(tmp_path, arrays, message):
    path = _save(tmp_path, **arrays)
    with pytest.raises(ValueError, match=message) as err:
        D.load_npz(path)
    assert str(path) in str(err.value)


def test_npz_unreadable_and_missing_files(tmp_path):
    bad = tmp_path / "x.npz"
    bad.write_bytes(b"not an archive")
    with pytest.raises(ValueError, match=r"x.npz: cannot be read as an .npz archive"):
        D.load_npz(bad)
    with pytest.raises(FileNotFoundError, match="nothere.npz"):
        D.load_npz(tmp_path / "nothere.npz")


def test_dataset_record_checks_its_shapes():
    X = np.zeros((10, 4), np.float32)
    with pytest.raises(ValueError, match="image_shape"):
        D.Dataset("t", X, np.zeros(10, np.int64), X, np.zeros(10, np.int64), 2, (3, 3), 2, "here")
    with pytest.raises(ValueError, match="n_valid"):
        D.Dataset("t", X, np.zeros(10, np.int64), X, np.zeros(10, np.int64), 10, None, 2, "here")


def test_example_grid_has_one_row_per_class_and_saves_atomically(tmp_path):
    ds = D.load_dataset("digits")
    fig = example_grid(ds, n_per_class=4, seed=1)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 40
    assert [fig.axes[4 * k].get_ylabel() for k in range(10)] == [str(k) for k in range(10)]
    for k in range(10):  # row k shows class k
        shown = np.stack([ax.get_images()[0].get_array().data.ravel() for ax in fig.axes[4 * k: 4 * k + 4]])
        members = {r.tobytes() for r in ds.X[ds.y == k].astype(np.float64)}
        assert all(r.tobytes() in members for r in shown)
    path = save_figure(fig, tmp_path / "sub" / "digits.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["digits.png"]


def test_image_grid_layout_and_errors():
    imgs = np.random.default_rng(0).random((7, 6))
    fig = image_grid(imgs, (2, 3), ncols=3, titles=list("abcdefg"), scale_each=True)
    assert len(fig.axes) == 9 and sum(ax.get_visible() for ax in fig.axes) == 7
    assert fig.axes[6].get_title() == "g"
    lo, hi = fig.axes[0].get_images()[0].get_clim()
    assert (lo, hi) == (imgs[0].min(), imgs[0].max())
    with pytest.raises(ValueError, match=r"image_shape \(2, 2\) holds 4 pixels, images have 6"):
        image_grid(imgs, (2, 2))
    with pytest.raises(ValueError, match="2 row labels for 3 grid rows"):
        image_grid(imgs, (2, 3), ncols=3, row_labels=["a", "b"])
