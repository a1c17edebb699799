"""The contractive chain on a manifold whose answer is known: a square patch of a 2-D plane in R^10.

A CAE (tanh codes, linear reconstruction, squared error) is trained with the project's own
Trainer on points drawn uniformly from the patch ``x = c + a Q u``, u uniform on [-1, 1]^2, Q
(10, 2) orthonormal; the chain of ``pretrain.sampling`` (Rifai et al. 2012, Algorithm 1) then
starts 200 chains at the patch's centre. A right sampler steps along the plane (the Jacobian's
two leading right singular vectors) and its reconstruction keeps it there, so its states stay
near the plane while they spread over the patch; a wrong one leaves the plane (isotropic steps
of the same size), or does not move (no noise, or noise the decoder ignores).
"""
import numpy as np
import pytest
import torch
from scipy.stats import kstest

from pipelines.training import fit_layer, quiet_lightning
from pretrain.presets import make_layer
from pretrain.sampling import sample_cae

D, A = 10, 0.3  # ambient dimension; half-width of the patch


@pytest.fixture(scope="module")
def plane_cae():
    quiet_lightning()
    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.standard_normal((D, 2)))  # (10, 2) orthonormal: the plane's directions
    c = np.full(D, 0.5)
    X = (c + A * rng.uniform(-1, 1, (2000, 2)) @ Q.T).astype(np.float32)  # (2000, 10)
    layer = make_layer("cae", D, 50, contraction=0.003, hidden_unit="tanh", visible_unit="linear",
                       loss="mse", optimizer="adam", lr=0.003, seed=0)
    fit_layer(layer, X, epochs=30, batch_size=50, seed=0)
    return layer, Q, c


def _coords(x, Q, c):
    """Patch coordinates u (n, 2) and distance to the plane (n,) of points x (n, 10)."""
    y = x - c
    along = y @ Q  # (n, 2)
    return along / A, np.linalg.norm(y - along @ Q.T, axis=1)


def _chains(layer, c, sigma, n_steps=100):
    x0 = torch.from_numpy(np.tile(c.astype(np.float32), (200, 1)))  # every chain at the centre
    return sample_cae([layer], x0, n_steps=n_steps, sigma=sigma, generator=torch.Generator().manual_seed(1)).numpy()


def test_cae_chain_steps_along_the_plane_and_spreads_over_the_patch(plane_cae):
    layer, Q, c = plane_cae
    chains = _chains(layer, c, sigma=0.05, n_steps=150)  # (200, 150, 10)
    u, off = _coords(chains.reshape(-1, D), Q, c)
    steps = np.diff(chains, axis=1).reshape(-1, D)  # (200 * 149, 10)
    step = np.linalg.norm(steps, axis=1)
    spread = A * np.sqrt(2 / 3)  # rms distance of the data from the centre
    # near the plane: the mean distance is a small fraction of the data's spread, and far below
    # the normal part of an isotropic step of the same length, step sqrt(8/10)
    iso_off = step.mean() * np.sqrt((D - 2) / D)
    print(f"distance to plane {off.mean():.4f}, spread {spread:.3f}, step {step.mean():.4f}, isotropic {iso_off:.4f}")
    assert off.mean() < 0.1 * spread  # measured 0.013 against 0.245
    assert off.mean() < 0.35 * iso_off  # measured 0.26 of it
    # the steps lie in the plane: the plane's share of a step's length (sqrt(2/10) = 0.45 for
    # isotropic steps)
    share = np.linalg.norm(steps @ Q, axis=1) / step
    print(f"plane share of a step {np.median(share):.3f}")
    assert np.median(share) > 0.9  # measured 0.98
    # spread along it: from one start, the last states cover most of the patch. The data's law is
    # uniform; the CAE's chain is not quite (its reconstruction shrinks towards the centre, and
    # larger noise carries chains past the edge, where the CAE extends the plane): measured KS
    # 0.28 and 21 of 25 cells, against 0.5 and 1 cell for chains that stay at the centre
    u_end, _ = _coords(chains[:, -1], Q, c)
    ks = max(kstest(u_end[:, k], "uniform", args=(-1, 2)).statistic for k in range(2))
    cells = len(np.unique(np.clip(np.floor((u_end + 1) * 2.5), 0, 4).astype(int), axis=0))
    print(f"KS {ks:.3f}, cells {cells}/25, mean |u| {np.abs(u_end).mean(0)}")
    assert ks < 0.35
    assert cells >= 15
    assert np.abs(u_end).mean() > 0.2  # uniform: 0.5; the start: 0; measured 0.25
    assert step.mean() > 0.1 * spread  # the chain moves


def test_without_noise_the_chain_collapses_near_the_start(plane_cae):
    """sigma = 0 is x <- g(f(x)): the same tests see it stay at the centre (the coverage and
    spread checks above are not passed by a chain that does not move)."""
    layer, Q, c = plane_cae
    chains = _chains(layer, c, sigma=0.0, n_steps=30)
    u_end, _ = _coords(chains[:, -1], Q, c)
    cells = len(np.unique(np.clip(np.floor((u_end + 1) * 2.5), 0, 4).astype(int), axis=0))
    assert cells == 1 and np.abs(u_end).max() < 0.2
