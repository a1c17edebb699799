"""The Larochelle et al. (2007) variations: sizes, ranges, balance, seeds, and each recipe's numbers."""
import warnings
from pathlib import Path

import numpy as np
import pytest

from pipelines.data import images as I
from pipelines.data import mnist as M
from pipelines.data import variations as V
from pipelines.data.datasets import load_dataset

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
HAVE_MNIST = (SHARED / "mnist" / "train-images-idx3-ubyte.gz").is_file()
needs_mnist = pytest.mark.skipif(not HAVE_MNIST, reason="the verified MNIST files are not in ../shared/data/mnist")
SMALL = dict(n_train=300, n_valid=100, n_test=200)


@pytest.fixture(scope="module")
def mnist():
    if not HAVE_MNIST:
        pytest.skip("the verified MNIST files are not in ../shared/data/mnist")
    return M.load_mnist(SHARED)


def _small(name, mnist, seed=0):
    return V.generate_arrays(name, seed=seed, mnist=mnist if name in V.MNIST_BASED else None, **SMALL)


def _source_digits(a, mnist):
    """The MNIST digit each row of X then X_test was made from."""
    X_tr, _, X_te, _ = mnist
    s, i = a["factor_source_set"], a["factor_source_index"]
    return np.where((s == 0)[:, None], X_tr[np.where(s == 0, i, 0)], X_te[np.where(s == 1, i, 0)])


@pytest.mark.parametrize("name", V.VARIATIONS)
def test_sizes_range_balance_and_seeds(name, request):
    mnist = request.getfixturevalue("mnist") if name in V.MNIST_BASED else None
    a = _small(name, mnist)
    assert a["X"].shape == (400, 784) and a["X_test"].shape == (200, 784) and int(a["n_valid"]) == 100
    X = np.concatenate([a["X"], a["X_test"]])
    y = np.concatenate([a["y"], a["y_test"]])
    assert X.dtype == np.float32 and 0.0 <= X.min() and X.max() <= 1.0
    np.testing.assert_array_equal(X * 255, np.rint(X * 255))  # 8-bit grey levels, as the originals
    if name in V.MNIST_BASED:
        assert set(np.unique(a["y"])) == set(range(10)) and set(np.unique(a["y_test"])) == set(range(10))
    else:
        assert set(np.unique(y)) == {0, 1}
        assert 0.42 < a["y"].mean() < 0.58 and 0.38 < a["y_test"].mean() < 0.62
    again = _small(name, mnist)
    other = _small(name, mnist, seed=1)
    assert a["X"].tobytes() == again["X"].tobytes() and a["X_test"].tobytes() == again["X_test"].tobytes()
    assert (a["y"] == again["y"]).all()
    assert a["X"].tobytes() != other["X"].tobytes()


@needs_mnist
def test_digits_of_train_and_test_parts_are_disjoint(mnist):
    a = V.generate_arrays("mnist-basic", seed=3, mnist=mnist, n_train=1000, n_valid=200, n_test=12000)
    s, i = a["factor_source_set"], a["factor_source_index"]
    n = len(a["X"])
    train_pairs = set(zip(s[:n].tolist(), i[:n].tolist()))
    test_pairs = set(zip(s[n:].tolist(), i[n:].tolist()))
    assert len(train_pairs) == 1200 and len(test_pairs) == 12000 and not train_pairs & test_pairs
    assert (s[:n] == 0).all()  # train/valid digits come from the MNIST training images
    assert (s[n:] == 1).sum() == 10000  # the test part holds every official test image
    np.testing.assert_array_equal(np.concatenate([a["X"], a["X_test"]]), _source_digits(a, mnist))
    y_src = np.where(s == 0, mnist[1][np.where(s == 0, i, 0)], mnist[3][np.where(s == 1, i, 0)])
    np.testing.assert_array_equal(np.concatenate([a["y"], a["y_test"]]), y_src)


@needs_mnist
def test_rot_images_are_rotated_digits_by_the_recorded_angles(mnist):
    a = _small("mnist-rot", mnist)
    X = np.concatenate([a["X"], a["X_test"]])
    d = _source_digits(a, mnist)
    theta = a["factor_angle"]
    assert 0 <= theta.min() and theta.max() < 2 * np.pi
    assert np.histogram(theta, bins=4, range=(0, 2 * np.pi))[0].min() > 100  # of 600: uniform-ish

    def corr(u, v):
        u, v = u - u.mean(1, keepdims=True), v - v.mean(1, keepdims=True)
        return (u * v).sum(1) / np.sqrt((u * u).sum(1) * (v * v).sum(1))

    back = I.rotate(X, -theta)
    wrong = I.rotate(X, -(theta + np.pi / 2))
    assert corr(back, d).mean() > 0.9  # un-rotating restores the digit (bilinear blur aside)
    assert corr(wrong, d).mean() < 0.4
    np.testing.assert_allclose(X.sum(1), d.sum(1), rtol=0.05)  # rotation keeps the ink


@needs_mnist
def test_bg_rand_background_is_uniform_and_digit_strokes_stay_white(mnist):
    a = _small("mnist-bg-rand", mnist)
    X = np.concatenate([a["X"], a["X_test"]])
    d = _source_digits(a, mnist)
    bg = X[d == 0]
    assert abs(bg.mean() - 0.5) < 0.005 and abs(bg.std() - np.sqrt(1 / 12)) < 0.005  # U[0, 1]
    assert (X[d == 1] == 1).all() and (X >= d - 1e-6).all()  # Eq. (1): x = max(d, b)


@needs_mnist
@pytest.mark.parametrize("name", ["mnist-bg-img", "mnist-bg-img-rot"])
def test_bg_img_background_is_the_recorded_textured_patch(name, mnist):
    a = _small(name, mnist)
    X = np.concatenate([a["X"], a["X_test"]])
    d = _source_digits(a, mnist)
    if name.endswith("rot"):
        d = I.quantize(I.rotate(d, a["factor_angle"]))
    images = I.natural_images()
    off = np.arange(28)
    for i in range(len(X)):
        g = images[a["factor_patch_image"][i]]
        r, c = a["factor_patch_row"][i], a["factor_patch_col"][i]
        patch = I.quantize(g[r + off[:, None], c + off[None, :]].reshape(784))
        assert g[r:r + 28, c:c + 28].std() >= I.MIN_PATCH_STD
        np.testing.assert_allclose(X[i], np.maximum(d[i], patch), atol=1.5 / 255)
    assert set(a["factor_patch_image"].tolist()) == {0, 1}


@needs_mnist
def test_published_sizes_and_cache_round_trip_for_mnist_rot(tmp_path, monkeypatch):
    monkeypatch.delenv(M.ENV_VAR, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    data = tmp_path / "data"
    (data / "mnist").mkdir(parents=True)
    for name in M.FILES:
        (data / "mnist" / name).symlink_to((SHARED / "mnist" / name).resolve())
    ds = load_dataset("mnist-rot", data_dir=data, seed=5)
    assert ds.X.shape == (12000, 784) and ds.X_test.shape == (50000, 784) and ds.n_valid == 2000
    assert ds.n_classes == 10 and ds.image_shape == (28, 28)
    cache = tmp_path / "home" / ".cache" / "layerwise" / "variations" / "mnist-rot-seed5.npz"
    assert cache.is_file() and str(cache) in ds.source
    assert sorted(p.name for p in data.iterdir()) == ["mnist"]  # the data folder is left alone
    assert [p.name for p in cache.parent.iterdir()] == [cache.name]  # no temporary file left
    again = load_dataset("mnist-rot", data_dir=data, seed=5)  # from the cache, same bytes
    assert again.X.tobytes() == ds.X.tobytes() and again.X_test.tobytes() == ds.X_test.tobytes()
    assert (again.y == ds.y).all() and (again.y_test == ds.y_test).all()
    arrays, path = V.generate("mnist-rot", seed=5, cache_dirs=[cache.parent.parent])  # a hit: no mnist needed
    assert path == cache
    # a cache from another recipe version is regenerated, not trusted
    monkeypatch.setattr(V, "RECIPE_VERSION", V.RECIPE_VERSION + 1)
    assert V._load(cache) is None


def test_published_sizes_for_rect_and_uncachable_folder_warns(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder would go")
    with pytest.warns(UserWarning, match="could not cache rect"):
        arrays, path = V.generate("rect", seed=0, cache_dirs=[blocker])
    assert path is None
    assert arrays["X"].shape == (1200, 784) and arrays["X_test"].shape == (50000, 784)
    assert int(arrays["n_valid"]) == 200
    assert abs(arrays["y_test"].mean() - 0.5) < 0.01  # 50000 draws: 4.5 standard deviations
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, path = V.generate("rect", seed=0, cache_dirs=[blocker, tmp_path / "ok"])
    assert path == tmp_path / "ok" / "variations" / "rect-seed0.npz"


def test_load_amat_reads_the_original_format_and_rejects_bad_files(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.random((5, 784)).round(6)
    y = np.array([3, 1, 0, 9, 9])
    path = tmp_path / "mnist_background_random_test.amat"
    np.savetxt(path, np.column_stack([X, y]), fmt="%.6f")
    X2, y2 = V.load_amat(path)
    assert X2.shape == (5, 784) and X2.dtype == np.float32 and y2.dtype == np.int64
    np.testing.assert_allclose(X2, X, atol=1e-6)
    assert y2.tolist() == y.tolist()
    bad = tmp_path / "bad.amat"
    np.savetxt(bad, np.column_stack([X, y + 0.5]))
    with pytest.raises(ValueError, match="bad.amat.*integer labels"):
        V.load_amat(bad)
    bad.write_text("1 2 x\n")
    with pytest.raises(ValueError, match="bad.amat.*not a whitespace-separated table"):
        V.load_amat(bad)
