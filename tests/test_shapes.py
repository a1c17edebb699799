"""The shape sets: rectangle outlines and sizes, rectangles of two patches, the convexity test and
the convex set's labels and pixel counts."""
import numpy as np
from scipy.spatial import ConvexHull

from pipelines.data import images as I
from pipelines.data import shapes as S
from pipelines.data import variations as V


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
    images = I.natural_images()
    off = np.arange(28)
    for i in range(len(X)):
        img = X[i].reshape(28, 28)
        t, l_ = a["factor_top"][i], a["factor_left"][i]
        inside = np.zeros((28, 28), bool)
        inside[t:t + h[i], l_:l_ + w[i]] = True
        for part, mask in (("inside", inside), ("outside", ~inside)):
            g = images[a[f"factor_{part}_image"][i]]
            r, c = a[f"factor_{part}_row"][i], a[f"factor_{part}_col"][i]
            patch = I.quantize(g[r + off[:, None], c + off[None, :]])
            np.testing.assert_array_equal(img[mask], patch[mask])


def test_is_convex_on_known_shapes():
    yy, xx = np.mgrid[0:28, 0:28]
    disk = (yy - 13.2) ** 2 + (xx - 14.1) ** 2 <= 60
    triangle = (xx >= 3) & (yy >= 2) & (xx + 2 * yy <= 40)
    ell = ((yy > 3) & (yy < 20) & (xx > 3) & (xx < 7)) | ((yy > 16) & (yy < 20) & (xx > 3) & (xx < 22))
    two = ((yy < 5) & (xx < 5)) | ((yy > 20) & (xx > 20))
    notch = disk & ~((yy == 13) & (xx == 14))  # one pixel missing inside
    got = S.is_convex(np.stack([disk, triangle, ell, two, notch]).reshape(5, 784))
    assert got.tolist() == [True, True, False, False, False]


def test_convex_labels_agree_with_a_brute_force_hull_test():
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
    edges = np.linspace(0, 785, S.INK_BINS + 1)
    for Xs, ys in ((a["X"], a["y"]), (a["X_test"], a["y_test"])):
        ink = Xs.sum(1)
        h1, h0 = np.histogram(ink[ys == 1], edges)[0], np.histogram(ink[ys == 0], edges)[0]
        np.testing.assert_array_equal(h1, h0)
