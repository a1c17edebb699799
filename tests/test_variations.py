"""The Larochelle et al. (2007) variations: sizes, ranges, balance, seeds, and each recipe's numbers."""
import warnings
from pathlib import Path

import numpy as np
import pytest

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


def test_rotate_turns_counter_clockwise_and_preserves_mass():
    img = np.zeros((1, 28, 28), np.float32)
    img[0, 14, 20] = 1.0  # right of the centre (13.5, 13.5)
    up = V.rotate(img, np.array([np.pi / 2]))[0]
    r, c = np.unravel_index(up.argmax(), up.shape)
    assert (r, c) == (7, 14)  # counter-clockwise as displayed: right -> top
    assert abs(up.sum() - 1.0) < 1e-5
    blob = np.zeros((1, 28, 28), np.float32)
    blob[0, 8:16, 10:18] = 1.0  # an 8x8 square off the centre
    turned = V.rotate(np.repeat(blob, 8, 0), np.linspace(0, 2 * np.pi, 8, endpoint=False))
    np.testing.assert_allclose(turned.sum((1, 2)), 64.0, rtol=0.03)  # bilinear keeps the mass
    np.testing.assert_allclose(turned[4], blob[0, ::-1, ::-1], atol=1e-5)  # pi: a point reflection


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

    back = V.rotate(X, -theta)
    wrong = V.rotate(X, -(theta + np.pi / 2))
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
        d = V.quantize(V.rotate(d, a["factor_angle"]))
    images = V.natural_images()
    off = np.arange(28)
    for i in range(len(X)):
        g = images[a["factor_patch_image"][i]]
        r, c = a["factor_patch_row"][i], a["factor_patch_col"][i]
        patch = V.quantize(g[r + off[:, None], c + off[None, :]].reshape(784))
        assert g[r:r + 28, c:c + 28].std() >= V.MIN_PATCH_STD
        np.testing.assert_allclose(X[i], np.maximum(d[i], patch), atol=1.5 / 255)
    assert set(a["factor_patch_image"].tolist()) == {0, 1}


def _measured_boxes(X):
    on = X.reshape(-1, 28, 28) > 0.5
    rows, cols = on.any(2), on.any(1)
    h = 28 - rows.argmax(1) - rows[:, ::-1].argmax(1)
    w = 28 - cols.argmax(1) - cols[:, ::-1].argmax(1)
    return h, w, on


def test_rect_labels_agree_with_the_measured_outline():
    a = V.generate_arrays("rect", seed=0, n_train=800, n_valid=200, n_test=1000)
    X = np.concatenate([a["X"], a["X_test"]])
    y = np.concatenate([a["y"], a["y_test"]])
    h, w, on = _measured_boxes(X)
    np.testing.assert_array_equal(y, (h > w).astype(int))
    assert (np.abs(h - w) >= 3).all()  # no squares, nor near-squares
    thin = (h == 1) | (w == 1)
    # an outline, not a filled rectangle: 2 (h + w) - 4 pixels
    np.testing.assert_array_equal(on.sum((1, 2))[~thin], (2 * (h + w) - 4)[~thin])
    np.testing.assert_array_equal(h, a["factor_height"])


def test_rect_img_inside_and_outside_are_two_recorded_patches():
    a = V.generate_arrays("rect-img", seed=0, n_train=150, n_valid=50, n_test=100)
    X = np.concatenate([a["X"], a["X_test"]])
    y = np.concatenate([a["y"], a["y_test"]])
    h, w = a["factor_height"], a["factor_width"]
    assert (h >= 10).all() and (w >= 10).all() and (np.abs(h - w) >= 5).all()
    assert (h * w >= 196).all() and (h * w <= 588).all()  # 25% to 75% of the image
    np.testing.assert_array_equal(y, (h > w).astype(int))
    images = V.natural_images()
    off = np.arange(28)
    for i in range(len(X)):
        img = X[i].reshape(28, 28)
        t, l_ = a["factor_top"][i], a["factor_left"][i]
        inside = np.zeros((28, 28), bool)
        inside[t:t + h[i], l_:l_ + w[i]] = True
        for part, mask in (("inside", inside), ("outside", ~inside)):
            g = images[a[f"factor_{part}_image"][i]]
            r, c = a[f"factor_{part}_row"][i], a[f"factor_{part}_col"][i]
            patch = V.quantize(g[r + off[:, None], c + off[None, :]])
            np.testing.assert_array_equal(img[mask], patch[mask])


def test_is_convex_on_known_shapes():
    yy, xx = np.mgrid[0:28, 0:28]
    disk = (yy - 13.2) ** 2 + (xx - 14.1) ** 2 <= 60
    triangle = (xx >= 3) & (yy >= 2) & (xx + 2 * yy <= 40)
    ell = ((yy > 3) & (yy < 20) & (xx > 3) & (xx < 7)) | ((yy > 16) & (yy < 20) & (xx > 3) & (xx < 22))
    two = ((yy < 5) & (xx < 5)) | ((yy > 20) & (xx > 20))
    notch = disk & ~((yy == 13) & (xx == 14))  # one pixel missing inside
    got = V.is_convex(np.stack([disk, triangle, ell, two, notch]).reshape(5, 784))
    assert got.tolist() == [True, True, False, False, False]


def test_convex_labels_agree_with_a_brute_force_hull_test():
    from scipy.spatial import ConvexHull

    a = V.generate_arrays("convex", seed=0, n_train=100, n_valid=20, n_test=80)
    X = np.concatenate([a["X"], a["X_test"]]) > 0.5
    y = np.concatenate([a["y"], a["y_test"]])
    grid = np.stack(np.mgrid[0:28, 0:28], -1).reshape(784, 2).astype(float)
    for mask, label in zip(X, y):
        pts = grid[mask]
        hull = ConvexHull(pts)
        # lattice points inside the hull of the set's pixels but not in the set
        inside = (grid @ hull.equations[:, :2].T + hull.equations[:, 2] <= 1e-9).all(1)
        holes = int((inside & ~mask).sum())
        assert (holes == 0) == bool(label)
        assert mask.sum() >= (19 if label else 10)
    assert set(a["factor_n_sets"][y == 0].tolist()) <= {2, 3, 4} and (a["factor_n_sets"][y == 1] == 1).all()
    # the pixel count tells nothing: per split, both classes have the same histogram of counts
    edges = np.linspace(0, 785, V.INK_BINS + 1)
    for Xs, ys in ((a["X"], a["y"]), (a["X_test"], a["y_test"])):
        ink = Xs.sum(1)
        h1, h0 = np.histogram(ink[ys == 1], edges)[0], np.histogram(ink[ys == 0], edges)[0]
        np.testing.assert_array_equal(h1, h0)


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
