"""The vector field and potential of a small autoencoder trained on 2-D toy data.

A tied autoencoder with a linear decoder trained on 2-D data (``pipelines.data.toy``) defines
the field ``r(x) - x``, the gradient of its potential F (``pretrain.energy`` Eq. 2). Iterating

    (1) x_{t+1} = r(x_t)

is gradient ascent on F with step 1; for a denoising autoencoder ``r(x) - x`` estimates
``sigma^2 grad log p`` (Alain & Bengio 2014), so the iteration should carry points off the
data manifold onto it. Measured (:func:`vector_field_analysis`): the mean distance to the
noiseless curve before and after ``n_steps`` iterations, and F on the data against F on a ring
far from it. Figures and numbers go to files and, given a run id, to that MLflow run (under
``analysis/``, through ``pipelines.analysis.runs.log_to_run``).

The small autoencoders here and in ``pipelines.analysis.energy_classifier`` are fitted by
:func:`fit_autoencoder`: the pipeline's ``pipelines.training.fit_layer``, on one thread.

References
----------
Alain & Bengio, What regularized auto-encoders learn from the data-generating distribution, JMLR 2014.
Kamyshanska & Memisevic, On autoencoder scoring, ICML 2013.
"""
from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipelines.analysis.runs import log_to_run
from pipelines.data import toy
from pipelines.files import atomic_write_text
from pipelines.reporting import figures
from pipelines.training import fit_layer, quiet_lightning
from pretrain.autoencoder import AutoEncoder
from pretrain.energy import layer_potential, vector_field
from pretrain.layer import Layer


# -- training small autoencoders -------------------------------------------------------------------
@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` intra-op threads (None: unchanged), then restore the count."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fit_autoencoder(layer: Layer, X, *, epochs: int, batch_size: int, seed: int,
                    threads: int | None = 1) -> Layer:
    """Train ``layer`` on X (n, d) with ``pipelines.training.fit_layer``, quietly; return it in
    eval mode.

    ``threads=1`` by default: the models here are tiny (2-100-2, 64-50), and on a shared
    2-core machine a second thread's spin-waiting made each step twenty times slower.
    """
    quiet_lightning()
    with torch_threads(threads):
        fit_layer(layer, X, epochs=epochs, batch_size=batch_size, seed=seed)
    layer.eval()
    return layer


# -- the toy vector field --------------------------------------------------------------------------
def toy_autoencoder(kind: str, *, n_hidden: int = 100, hidden_unit: str = "tanh", lr: float = 0.02,
                    corruption_level: float = 0.3, contraction: float = 0.1, seed: int = 0) -> AutoEncoder:
    """A 2-``n_hidden``-2 tied autoencoder with a linear decoder (squared error): ``"dae"`` with
    Gaussian corruption of std ``corruption_level``, or ``"cae"`` with contraction ``contraction``."""
    if kind == "dae":
        reg = {"corruption": "gaussian", "corruption_level": corruption_level}
    elif kind == "cae":
        reg = {"contraction": contraction}
    else:
        raise ValueError(f"unknown kind {kind!r}: choose 'dae' or 'cae'")
    return AutoEncoder(2, n_hidden, hidden_unit=hidden_unit, visible_unit="linear", tied=True,
                       loss="mse", optimizer="adam", lr=lr, seed=seed, **reg)


@torch.no_grad()
def iterate_reconstruction(layer: Layer, x: torch.Tensor, n_steps: int) -> torch.Tensor:
    """Eq. (1): the trajectories ``x_0 = x, x_{t+1} = r(x_t)``; (n_steps + 1, B, d)."""
    out = [x]
    for _ in range(int(n_steps)):
        out.append(layer.reconstruct(out[-1]))  # Eq. (1)
    return torch.stack(out)


def off_manifold_points(data: str, n: int = 400, *, lo: float = -2.0, hi: float = 2.0,
                        min_distance: float = 0.3, seed: int = 0) -> np.ndarray:
    """``n`` points uniform in [lo, hi]^2 at least ``min_distance`` from the toy curve ``data``;
    (n, 2) float32."""
    rng = np.random.default_rng(seed)
    kept: list[np.ndarray] = []
    while sum(len(k) for k in kept) < n:
        p = rng.uniform(lo, hi, (4 * n, 2))
        kept.append(p[toy.distance(data, p) >= min_distance])
    return np.concatenate(kept)[:n].astype(np.float32)


def vector_field_analysis(out_dir: str | Path | None = None, *, data: str = "circle", n: int = 2000,
                          noise: float = 0.05, kinds: tuple[str, ...] = ("dae", "cae"),
                          n_hidden: int = 100, hidden_unit: str = "tanh", epochs: int = 30,
                          batch_size: int = 100, lr: float = 0.02, corruption_level: float = 0.3,
                          contraction: float = 0.1, n_steps: int = 50, grid_steps: int = 21,
                          seed: int = 0, run_id: str | None = None, uri: str | None = None) -> dict[str, Any]:
    """Train a DAE and a CAE on 2-D toy data; plot their fields and potentials; measure Eq. (1).

    Parameters
    ----------
    out_dir : where ``vector_field.png``, ``potential.png`` and ``vector_field.json`` go (None:
        no files).
    data, n, noise : the toy data (``pipelines.data.toy``: "circle" or "spiral"), seeded by ``seed``.
    kinds : which autoencoders, from ("dae", "cae").
    n_hidden, hidden_unit, epochs, batch_size, lr, corruption_level, contraction : the models.
    n_steps : iterations of Eq. (1) from 400 points at least 0.3 off the curve.
    grid_steps : arrows per side of the [-2, 2]^2 grid.
    run_id, uri : an MLflow run to log the figures and numbers to, and its tracking URI.

    Returns
    -------
    ``{kind: {"distance_start", "distance_end", "distance_ratio", "potential_data",
    "potential_far", "reconstruction_error"}, "files": [...]}``; ``distance_ratio`` is end / start
    (below 1: the iteration moves points onto the data).

    References
    ----------
    Alain & Bengio, What regularized auto-encoders learn from the data-generating distribution, JMLR 2014.
    """
    X = toy.toy_data(data, n, noise=noise, seed=seed)  # (n, 2)
    P = torch.from_numpy(off_manifold_points(data, seed=seed + 1))  # (400, 2)
    far = torch.from_numpy(toy.noisy_circle(500, radius=3.0, noise=0.0, seed=seed + 2))  # a far ring
    _, _, G = toy.grid(-2.0, 2.0, grid_steps)  # (grid_steps^2, 2) arrow tails
    xf, yf, Gf = toy.grid(-2.0, 2.0, 81)  # finer grid for the contours
    Xt = torch.from_numpy(X)
    out: dict[str, Any] = {}
    fields, potentials = {}, {}
    for kind in kinds:
        ae = toy_autoencoder(kind, n_hidden=n_hidden, hidden_unit=hidden_unit, lr=lr,
                             corruption_level=corruption_level, contraction=contraction, seed=seed)
        fit_autoencoder(ae, X, epochs=epochs, batch_size=batch_size, seed=seed)
        with torch.no_grad():
            traj = iterate_reconstruction(ae, P, n_steps)  # (n_steps + 1, 400, 2)
            d0 = toy.distance(data, traj[0].numpy()).mean()
            d1 = toy.distance(data, traj[-1].numpy()).mean()
            out[kind] = {
                "distance_start": float(d0), "distance_end": float(d1), "distance_ratio": float(d1 / d0),
                "potential_data": float(layer_potential(ae, Xt).mean()),
                "potential_far": float(layer_potential(ae, far).mean()),
                "reconstruction_error": float(ae.reconstruction_error(Xt).mean()),
            }
            label = f"{kind.upper()} {2}-{n_hidden}-2 ({hidden_unit})"
            fields[label] = vector_field(ae, torch.from_numpy(G)).numpy()
            potentials[label] = layer_potential(ae, torch.from_numpy(Gf)).numpy().reshape(xf.shape)
    figs = {"vector_field.png": figures.vector_field_figure(G, fields, X),
            "potential.png": figures.potential_figure(xf, yf, potentials, X)}
    files = []
    if out_dir is not None:
        out_dir = Path(out_dir)
        for name, fig in figs.items():
            files.append(str(figures.save_figure(fig, out_dir / name)))
        atomic_write_text(out_dir / "vector_field.json", json.dumps(out, indent=2))
        files.append(str(out_dir / "vector_field.json"))
    if run_id is not None:
        metrics = {f"analysis/{kind}/{k}": v for kind in kinds for k, v in out[kind].items()}
        log_to_run(run_id, uri=uri, figures={f"analysis/{k}": f for k, f in figs.items()},
                   metrics=metrics, texts={"analysis/vector_field.json": json.dumps(out, indent=2)})
    out["files"] = files
    return out
