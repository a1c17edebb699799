"""Image operations of the variation sets: rotation."""
import numpy as np

from pipelines.data import images as I


def test_rotate_turns_counter_clockwise_and_preserves_mass():
    img = np.zeros((1, 28, 28), np.float32)
    img[0, 14, 20] = 1.0  # right of the centre (13.5, 13.5)
    up = I.rotate(img, np.array([np.pi / 2]))[0]
    r, c = np.unravel_index(up.argmax(), up.shape)
    assert (r, c) == (7, 14)  # counter-clockwise as displayed: right -> top
    assert abs(up.sum() - 1.0) < 1e-5
    blob = np.zeros((1, 28, 28), np.float32)
    blob[0, 8:16, 10:18] = 1.0  # an 8x8 square off the centre
    turned = I.rotate(np.repeat(blob, 8, 0), np.linspace(0, 2 * np.pi, 8, endpoint=False))
    np.testing.assert_allclose(turned.sum((1, 2)), 64.0, rtol=0.03)  # bilinear keeps the mass
    np.testing.assert_allclose(turned[4], blob[0, ::-1, ::-1], atol=1e-5)  # pi: a point reflection
