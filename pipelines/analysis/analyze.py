"""What a trained autoencoder knows: its vector field and potential, its samples, its Jacobian.

- **Toy vector fields** (:func:`vector_field_analysis`). A tied autoencoder with a linear
  decoder trained on 2-D data (``pipelines.data.toy``) defines the field ``r(x) - x``, the gradient of
  its potential F (``pretrain.energy`` Eq. 2). Iterating

      (1) x_{t+1} = r(x_t)

  is gradient ascent on F with step 1; for a denoising autoencoder ``r(x) - x`` estimates
  ``sigma^2 grad log p`` (Alain & Bengio 2014), so the iteration should carry points off the
  data manifold onto it. Measured: the mean distance to the noiseless curve before and after
  ``n_steps`` iterations, and F on the data against F on a ring far from it.
- **Energy-based classification** (:class:`EnergyClassifier`). One tied autoencoder per class,

      (2) y(x) = argmax_k F_k(x)

  the class whose autoencoder gives x the highest potential (the lowest energy).
- **Samples and their Parzen log-likelihood** (:func:`sample_run`). The stack of a pipeline run
  is loaded from the stage cache, sampled (``pretrain.sampling``: the contractive chain for an
  autoencoder on top, Gibbs in the top RBM for a deep belief net), and its samples are scored
  by a Parzen window on the run's test set, sigma chosen on its validation set
  (``pipelines.analysis.parzen``).
- **The Jacobian's spectrum** (:func:`spectrum_run`). Per example, the singular values of the
  top code's Jacobian

      (3) J(x) = dh_L/dx = D_L W_L ... D_1 W_1,   D_k = diag(s_k'(a_k))      (n_L, n_visible)

  computed explicitly per batch (bounded memory: one (B, n_k, n_visible) product at a time)
  with ``torch.linalg.svdvals``. A few large values and a fast decay mean the code is sensitive
  to few directions: a low-dimensional manifold, most hidden units saturated (Rifai et al. 2011).

Figures and numbers go to files and, given a run id, to that MLflow run (under ``analysis/``),
logged through the client on the existing run, so the run's status and end time stay as the
pipeline left them.

References
----------
Kamyshanska & Memisevic, On autoencoder scoring, ICML 2013.
Alain & Bengio, What regularized auto-encoders learn from the data-generating distribution, JMLR 2014.
Rifai, Vincent, Muller, Glorot & Bengio, Contractive auto-encoders, ICML 2011.
Rifai, Bengio, Dauphin & Vincent, A generative process for sampling contractive auto-encoders,
ICML 2012.
"""
from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin

from pipelines.data import toy
from pretrain.autoencoder import AutoEncoder
from pretrain.energy import layer_potential, vector_field
from pretrain.layer import Layer
from pretrain.units import activation, derivative

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
    """Train ``layer`` on X (n, d) with a real Lightning Trainer (``make_trainer``), quietly.

    ``threads=1`` by default: the models here are tiny (2-100-2, 64-50), and on a shared
    2-core machine a second thread's spin-waiting made each step twenty times slower.
    """
    from pipelines.data.datamodule import ArrayDataModule
    from pipelines.training import make_trainer, quiet_lightning

    quiet_lightning()
    dm = ArrayDataModule(X, batch_size=batch_size, seed=seed)
    with torch_threads(threads):
        make_trainer(max_epochs=epochs, limit_val_batches=0).fit(layer, datamodule=dm)
    layer.eval()
    return layer


def toy_autoencoder(kind: str, *, n_hidden: int = 100, hidden_unit: str = "tanh", lr: float = 0.02,
                    corruption_level: float = 0.3, contraction: float = 0.1, seed: int = 0) -> AutoEncoder:
    """A 2-``n_hidden``-2 tied autoencoder with a linear decoder (squared error): ``"dae"`` with
    Gaussian corruption of std ``corruption_level``, or ``"cae"`` with contraction ``contraction``."""
    if kind == "dae":
        reg = dict(corruption="gaussian", corruption_level=corruption_level)
    elif kind == "cae":
        reg = dict(contraction=contraction)
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
    """
    from pipelines.reporting import figures

    X = toy.toy_data(data, n, noise=noise, seed=seed)  # (n, 2)
    P = torch.from_numpy(off_manifold_points(data, seed=seed + 1))  # (400, 2)
    far = torch.from_numpy(toy.noisy_circle(500, radius=3.0, noise=0.0, seed=seed + 2))  # a far ring
    xx, yy, G = toy.grid(-2.0, 2.0, grid_steps)
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
        from pipelines.files import atomic_write_text
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


# -- energy-based classification ---------------------------------------------------------------------


class EnergyClassifier(ClassifierMixin, BaseEstimator):
    """Eq. (2): one tied autoencoder per class; predict the class of the highest potential.

    Each class's autoencoder is a denoising autoencoder (masking noise) with a linear decoder,
    trained with squared error by its own Lightning Trainer on that class's examples; its
    potential is ``pretrain.energy`` Eq. (1). Potentials are unnormalised (each class has its
    own unknown log-partition), which this rule ignores, as Kamyshanska & Memisevic's does.

    Parameters
    ----------
    n_hidden, hidden_unit : each autoencoder's code size and hidden unit.
    corruption_level : masking probability of the denoising autoencoders.
    epochs, batch_size, lr : Adam training of each autoencoder.
    random_state : seeds class k's autoencoder with ``random_state + k``.

    References
    ----------
    Kamyshanska & Memisevic, On autoencoder scoring, ICML 2013.
    """

    def __init__(self, *, n_hidden: int = 50, hidden_unit: str = "tanh", corruption_level: float = 0.25,
                 epochs: int = 20, batch_size: int = 10, lr: float = 0.01, random_state: int = 0):
        self.n_hidden = n_hidden
        self.hidden_unit = hidden_unit
        self.corruption_level = corruption_level
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.random_state = random_state

    def fit(self, X, y) -> "EnergyClassifier":
        X = np.asarray(X, dtype=np.float32)
        y = np.asarray(y)
        if X.ndim != 2 or len(X) != len(y):
            raise ValueError(f"X must be (n, d) with one label per row; got X {X.shape}, y {y.shape}")
        self.classes_ = np.unique(y)
        if len(self.classes_) < 2:
            raise ValueError(f"EnergyClassifier needs at least 2 classes, got {self.classes_.tolist()}")
        self.autoencoders_ = []
        for k, label in enumerate(self.classes_):
            ae = AutoEncoder(X.shape[1], self.n_hidden, hidden_unit=self.hidden_unit,
                             visible_unit="linear", tied=True, loss="mse", corruption="masking",
                             corruption_level=self.corruption_level, optimizer="adam", lr=self.lr,
                             seed=int(self.random_state) + k)
            fit_autoencoder(ae, X[y == label], epochs=self.epochs, batch_size=self.batch_size,
                            seed=int(self.random_state) + k)
            self.autoencoders_.append(ae)
        self.n_features_in_ = X.shape[1]
        return self

    @torch.no_grad()
    def decision_function(self, X) -> np.ndarray:
        """Each class's potential F_k(x): (n, n_classes)."""
        x = torch.as_tensor(np.asarray(X, dtype=np.float32))
        return torch.stack([layer_potential(ae, x) for ae in self.autoencoders_], 1).numpy()

    def predict(self, X) -> np.ndarray:
        return self.classes_[self.decision_function(X).argmax(1)]  # Eq. (2)


# -- loading a pipeline run ----------------------------------------------------------------------------


@dataclass
class LoadedRun:
    """A pipeline run's config, trained stack and data split, read back from MLflow and the cache."""

    run_id: str
    uri: str
    cfg: Any
    stack: Any
    ds: Any
    split: Any


def cache_root(uri: str) -> Path:
    """The pipeline's root (``mlruns``) beside a local SQLite store; ``./mlruns`` otherwise."""
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).parent
    return Path("mlruns")


def _logged_digests(client, run) -> dict[int, str]:
    """``{k: digest}`` from the nested ``layer k (...)`` runs under the run's ``pretrain`` stage."""
    exp = run.info.experiment_id
    stages = client.search_runs([exp], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    out = {}
    for stage in stages:
        if stage.data.tags.get("mlflow.runName") != "pretrain":
            continue
        for child in client.search_runs([exp], f"tags.mlflow.parentRunId = '{stage.info.run_id}'"):
            p = child.data.params
            if "digest" in p and "index" in p:
                out[int(p["index"]) - 1] = p["digest"]
    return out


def load_run(run_id: str, *, uri: str | None = None, root: str | Path | None = None) -> LoadedRun:
    """Rebuild a pipeline run's stack from its logged ``config.yaml`` and the layer cache.

    Layer k is read from ``<root>/cache/layer<k>-<digest>.pt`` with the digest logged by its
    nested layer run (or, for layers the run loaded from the cache, recomputed from the config).
    """
    import mlflow
    import yaml
    from mlflow.exceptions import MlflowException

    from pipelines import tracking
    from pipelines.config import config_from_dict
    from pipelines.data.datasets import load_dataset
    from pipelines.data.splits import make_split
    from pipelines.stages.layer_cache import layer_digest, load_layer
    from pipelines.stages.pretraining import build_layers
    from pretrain.stack import Stack

    uri = tracking.resolve_uri(uri)
    tracking.check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as e:
        raise ValueError(f"run {run_id} is not in {uri} ({e.message.splitlines()[0]}); give the parent "
                         f"run id of a pipeline run (layerwise ui lists them) and --uri of its "
                         f"store") from None
    if "mlflow.parentRunId" in run.data.tags:  # a stage or layer run: config and stack are its root's
        top = run
        while "mlflow.parentRunId" in top.data.tags:  # layer -> pretrain stage -> pipeline run
            top = client.get_run(top.data.tags["mlflow.parentRunId"])
        raise ValueError(f"run {run_id} ({run.data.tags.get('mlflow.runName', '?')}) is a nested run "
                         f"of pipeline run {top.info.run_id} ({top.data.tags.get('mlflow.runName', '?')}); "
                         f"give that one: --run-id {top.info.run_id}")
    try:
        text = mlflow.artifacts.load_text(f"runs:/{run_id}/config.yaml")
    except MlflowException as e:
        raise ValueError(f"run {run_id} or its config.yaml is not in {uri} ({e.message.splitlines()[0]}); "
                         f"give the parent run id of a pipeline run (layerwise ui lists them) and "
                         f"--uri of its store") from None
    cfg = config_from_dict(yaml.safe_load(text), source=f"run {run_id}")
    root = cache_root(uri) if root is None else Path(root)
    ds = load_dataset(cfg.data.name, data_dir=cfg.data.data_dir, path=cfg.data.path, seed=cfg.seed,
                      download=False)
    split = make_split(ds, labels=cfg.finetune.labels, seed=cfg.seed, n_valid=cfg.data.n_valid,
                       valid_labels=cfg.data.valid_labels, n_test=cfg.data.n_test)
    layers = build_layers(cfg, ds.n_features)
    logged = _logged_digests(client, run)
    for k, layer in enumerate(layers):
        digest = logged.get(k) or layer_digest(cfg, k)
        path = root / "cache" / f"layer{k + 1}-{digest}.pt"
        if not path.exists():
            raise FileNotFoundError(f"layer {k + 1} of run {run_id} is not in the cache ({path} is "
                                    f"missing); re-run the pipeline with that run's config, or pass "
                                    f"--root, the folder holding cache/")
        load_layer(layer, path, digest)
        layer.layer_name = f"layer {k + 1}"
    stack = Stack(layers).eval()
    return LoadedRun(run_id=run_id, uri=uri, cfg=cfg, stack=stack, ds=ds, split=split)


def log_to_run(run_id: str, *, uri: str | None = None, figures: dict | None = None,
               metrics: dict[str, float] | None = None, texts: dict[str, str] | None = None) -> None:
    """Log figures, metrics and text artifacts to an existing run without reopening it."""
    import mlflow

    from pipelines import tracking

    uri = tracking.resolve_uri(uri)
    tracking.check_reachable(uri)
    client = mlflow.MlflowClient(uri)
    for path, fig in (figures or {}).items():
        client.log_figure(run_id, fig, path)
    for key, value in (metrics or {}).items():
        client.log_metric(run_id, key, float(value))
    for path, text in (texts or {}).items():
        client.log_text(run_id, text, path)


# -- sampling ---------------------------------------------------------------------------------------------


def draw_samples(stack, X_start, *, n_samples: int, n_chains: int = 100, burn_in: int = 10,
                 thin: int = 1, noise: float = 0.3, seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """Samples of a stack: the contractive chain (autoencoder on top) or Gibbs (RBM on top).

    ``n_chains`` chains start at rows of ``X_start`` drawn by ``seed``; each runs ``burn_in``
    discarded states, then enough kept states (every ``thin``-th step) for ``n_samples`` in all.
    ``noise`` is the std of z in the contractive chain (``pretrain.sampling`` Eq. 3); 0.3 was the
    best of {0.1, 0.2, 0.3, 0.5, 1} by validation Parzen log-likelihood for the quickstart's
    digits stack (0.1 mixes slowly, 1 leaves the manifold), and of {0.1, ..., 2} x burn-in
    {10, 100} for a 784-1000-1000 CAE+H stack on MNIST, whose chains fade to blank images over
    a hundred steps (even at noise 0: its reconstruction map loses ink).

    Returns
    -------
    ``(samples (n_samples, d), chains (n_chains, n_steps, d), sampler name)``.
    """
    from pretrain.rbm import RBM
    from pretrain.sampling import sample_cae, sample_dbn

    for name, v in (("n_samples", n_samples), ("n_chains", n_chains), ("thin", thin)):
        if isinstance(v, bool) or int(v) != v or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    if isinstance(burn_in, bool) or int(burn_in) != burn_in or burn_in < 0:
        raise ValueError(f"burn_in must be an integer >= 0, got {burn_in!r}")
    X_start = _inputs_for(stack, X_start)
    n_chains = min(int(n_chains), int(n_samples))
    rng = np.random.default_rng(seed)
    x0 = X_start[torch.from_numpy(rng.choice(len(X_start), n_chains, replace=n_chains > len(X_start)))]
    n_steps = burn_in + math.ceil(n_samples / n_chains)
    g = torch.Generator().manual_seed(seed)
    if isinstance(stack[len(stack) - 1], RBM):
        chains, sampler = sample_dbn(stack, x0, n_steps=n_steps, generator=g, thin=thin), "dbn-gibbs"
    else:
        chains = sample_cae(stack, x0, n_steps=n_steps, sigma=noise, generator=g, thin=thin)
        sampler = "cae-chain"
    samples = chains[:, burn_in:].reshape(-1, chains.shape[-1])[:n_samples]
    return samples.numpy(), chains.numpy(), sampler


def _grid(name: str, value) -> tuple:
    """A setting given as one value or a sequence of values to choose from: a non-empty tuple."""
    values = tuple(value) if isinstance(value, (list, tuple)) else (value,)
    if not values:
        raise ValueError(f"{name} is empty: give one value or several to choose from on validation")
    return values


def sample_run(run_id: str, *, uri: str | None = None, root: str | Path | None = None,
               n_samples: int = 10000, n_chains: int = 100, burn_in=10, thin: int = 1,
               noise=0.3, sigmas=None, seed: int = 0, out_dir: str | Path | None = None,
               log: bool = True) -> dict[str, Any]:
    """Sample a pipeline run's stack and score the samples by Parzen window on its test set.

    Sigma is chosen on the run's validation set. ``noise`` and ``burn_in`` may each be one value
    or a sequence: every combination is sampled (same seed, so the chains differ only by the
    setting) and the one with the highest validation log-likelihood at its best sigma is kept;
    the test set is scored once, for that choice. (``noise`` does not act on a deep belief net's
    Gibbs chain and is not searched there.) As a reference, the same estimate with ``n_samples``
    rows of the unlabeled pool as "samples" (what a perfect sampler would get, up to overfitting
    of the pool) is reported beside it. Logged to the run (``log``): the figure
    ``analysis/sample_chains.png``, metrics ``analysis/parzen_ll``, ``analysis/parzen_stderr``,
    ``analysis/parzen_sigma``, ``analysis/parzen_ll_valid``, ``analysis/parzen_ll_pool``,
    ``analysis/sample_noise``, ``analysis/sample_burn_in`` and ``analysis/parzen.md``.

    Returns
    -------
    dict with those numbers, the chosen ``noise`` and ``burn_in``, ``trials`` (one dict per
    setting tried: noise, burn_in, sigma, valid_ll), the sampler's name and the written files.
    """
    from pipelines.analysis.parzen import (
        DEFAULT_SIGMAS,
        PUBLISHED_MNIST,
        parzen_estimate,
        parzen_log_likelihood,
        select_sigma,
    )
    from pipelines.reporting import figures

    noises, burn_ins = _grid("noise", noise), _grid("burn_in", burn_in)
    r = load_run(run_id, uri=uri, root=root)
    sp = r.split
    sigmas = DEFAULT_SIGMAS if sigmas is None else tuple(sigmas)
    trials: list[dict[str, Any]] = []
    best = None  # (valid_ll, samples, chains, trial)
    for b in burn_ins:
        for z in noises:
            samples, chains, sampler = draw_samples(r.stack, sp.X_pool, n_samples=n_samples,
                                                    n_chains=n_chains, burn_in=b, thin=thin, noise=z,
                                                    seed=seed)
            sigma, scores = select_sigma(samples, sp.X_valid, sigmas)  # Eq. (3) of pipelines.analysis.parzen
            trials.append({"noise": z if sampler == "cae-chain" else None, "burn_in": b, "sigma": sigma,
                           "valid_ll": scores[sigma]})
            if best is None or scores[sigma] > best[0]:
                best = (scores[sigma], samples, chains, trials[-1])
            if sampler != "cae-chain":
                break  # the Gibbs chain has no noise setting
    valid_ll, samples, chains, chosen = best
    sigma = chosen["sigma"]
    ll = parzen_log_likelihood(samples, sp.X_test, sigma)  # (m_test,): the only look at test
    mean = float(ll.mean())
    stderr = float(ll.std()) / math.sqrt(len(ll)) if len(ll) > 1 else float("nan")
    rng = np.random.default_rng(seed + 1)
    pool = sp.X_pool[rng.choice(len(sp.X_pool), min(n_samples, len(sp.X_pool)), replace=False)]
    pool_mean, pool_stderr, pool_sigma = parzen_estimate(pool, sp.X_valid, sp.X_test, sigmas)
    out = {"sampler": sampler, "n_samples": len(samples), "n_valid": len(sp.X_valid),
           "n_test": len(sp.X_test), "noise": chosen["noise"], "burn_in": chosen["burn_in"],
           "parzen_ll": mean, "parzen_stderr": stderr, "parzen_sigma": sigma, "parzen_ll_valid": valid_ll,
           "parzen_ll_pool": pool_mean, "parzen_stderr_pool": pool_stderr,
           "parzen_sigma_pool": pool_sigma, "trials": trials, "files": []}
    setting = (f"burn-in {chosen['burn_in']}" if chosen["noise"] is None
               else f"noise {chosen['noise']:g}, burn-in {chosen['burn_in']}")
    lines = [f"# Parzen-window log-likelihood, {r.ds.name} test ({len(sp.X_test)} rows)", "",
             f"{len(samples)} samples ({sampler}, {min(n_chains, n_samples)} chains, {setting}, "
             f"thin {thin}, seed {seed}); sigma chosen on {len(sp.X_valid)} validation rows from "
             f"{', '.join(f'{s:.3g}' for s in sigmas)}.", "",
             "| samples | log-likelihood (nats) | sigma |", "|---|---|---|",
             f"| this stack | {mean:.2f} +- {stderr:.2f} | {sigma:.3g} |",
             f"| {len(pool)} pool rows (reference) | {pool_mean:.2f} +- {pool_stderr:.2f} | {pool_sigma:.3g} |"]
    if r.ds.name == "mnist":
        lines += [f"| published {k} (MNIST) | {m:g} +- {s:g} | |" for k, (m, s) in PUBLISHED_MNIST.items()]
    if len(trials) > 1:
        lines += ["", "Sampler settings tried, by validation log-likelihood (test read only for the best):",
                  "", "| noise | burn-in | sigma | validation log-likelihood |", "|---|---|---|---|"]
        lines += [f"| {'-' if t['noise'] is None else format(t['noise'], 'g')} | {t['burn_in']} | "
                  f"{t['sigma']:.3g} | {t['valid_ll']:.2f} |"
                  for t in sorted(trials, key=lambda t: -t["valid_ll"])]
    md = "\n".join(lines) + "\n"
    figs = {}
    if r.ds.image_shape is not None:
        figs["analysis/sample_chains.png"] = figures.sample_chains_figure(chains, r.ds.image_shape)
    if out_dir is not None:
        from pipelines.files import atomic_write_text
        for path, fig in figs.items():
            out["files"].append(str(figures.save_figure(fig, Path(out_dir) / Path(path).name)))
        atomic_write_text(Path(out_dir) / "parzen.md", md)
        out["files"].append(str(Path(out_dir) / "parzen.md"))
    if log:
        metrics = {f"analysis/{k}": v for k, v in out.items() if k.startswith("parzen") and math.isfinite(v)}
        metrics["analysis/sample_burn_in"] = chosen["burn_in"]
        if chosen["noise"] is not None:
            metrics["analysis/sample_noise"] = chosen["noise"]
        log_to_run(run_id, uri=r.uri, figures=figs, texts={"analysis/parzen.md": md}, metrics=metrics)
    out["markdown"] = md
    return out


# -- the Jacobian's spectrum and tangents ---------------------------------------------------------------


def _encoders(stack) -> list[tuple[torch.Tensor, torch.Tensor, str]]:
    return [(layer.encoder_weight, layer.encoder_bias, layer.hidden_unit) for layer in stack]


def batch_jacobians(stack, x: torch.Tensor) -> torch.Tensor:
    """Eq. (3), explicitly: the top code's Jacobian at each row of x; (B, n_hidden_L, n_visible)."""
    J = None
    h = x
    for W, b, unit in _encoders(stack):
        a = h @ W.T + b  # (B, n_k)
        h = activation(unit, a)
        d = derivative(unit, a, h)  # (B, n_k)
        J = d[:, :, None] * (W if J is None else torch.matmul(W, J))  # Eq. (3): (B, n_k, n_visible)
    return J


def _inputs_for(stack, X) -> torch.Tensor:
    """X as a tensor of the stack's dtype."""
    dtype = next(iter(stack)).encoder_weight.dtype
    return X.to(dtype) if isinstance(X, torch.Tensor) else torch.as_tensor(np.asarray(X), dtype=dtype)


@torch.no_grad()
def jacobian_singular_values(stack, X, *, batch_size: int = 128) -> np.ndarray:
    """Per-example singular values of Eq. (3), decreasing: (N, min(n_hidden_L, n_visible)).

    Memory is one (batch_size, n_k, n_visible) Jacobian at a time.
    """
    X = _inputs_for(stack, X)
    return torch.cat([torch.linalg.svdvals(batch_jacobians(stack, X[i:i + batch_size]))
                      for i in range(0, len(X), batch_size)]).numpy()


@torch.no_grad()
def jacobian_tangents(stack, X, k: int, *, batch_size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` leading right singular vectors of Eq. (3) per example and their singular values.

    Uses ``finetune.tangents.tangents`` when it exists, else an explicit SVD per batch.

    Returns
    -------
    ``(U (N, k, n_visible), S (N, k))``.
    """
    try:
        from finetune.tangents import tangents
    except ImportError:
        tangents = None
    X = _inputs_for(stack, X)
    if tangents is not None:
        U, S = tangents(stack, X, k)
        return np.asarray(torch.as_tensor(U).detach()), np.asarray(torch.as_tensor(S).detach())
    Us, Ss = [], []
    for i in range(0, len(X), batch_size):
        _, S, Vh = torch.linalg.svd(batch_jacobians(stack, X[i:i + batch_size]), full_matrices=False)
        Us.append(Vh[:, :k])
        Ss.append(S[:, :k])
    return torch.cat(Us).numpy(), torch.cat(Ss).numpy()


def spectrum_summary(S: np.ndarray) -> dict[str, float]:
    """Numbers of a spectrum (N, k): the mean top value, how many mean values exceed 1% and 10% of
    it, and the mean participation ratio ``(sum s^2)^2 / sum s^4`` (an effective dimension)."""
    S = np.asarray(S, dtype=np.float64)
    m = S.mean(0)
    s2 = S**2
    pr = (s2.sum(1) ** 2 / np.maximum((s2**2).sum(1), 1e-300)).mean()
    return {"top_singular_value": float(m[0]), "above_10pct": int((m > 0.1 * m[0]).sum()),
            "above_1pct": int((m > 0.01 * m[0]).sum()), "participation_ratio": float(pr)}


def spectrum_run(run_id: str, *, uri: str | None = None, root: str | Path | None = None,
                 n_examples: int = 1000, n_tangents: int = 5, n_show: int = 6, batch_size: int = 128,
                 out_dir: str | Path | None = None, log: bool = True) -> dict[str, Any]:
    """The Jacobian spectrum of a run's stack over ``n_examples`` test rows, and tangent images.

    Logged to the run: ``analysis/spectrum.png``, ``analysis/tangents.png`` (image data), and the
    metrics of :func:`spectrum_summary` under ``analysis/spectrum/``.
    """
    from pipelines.reporting import figures

    r = load_run(run_id, uri=uri, root=root)
    X = r.split.X_test[:n_examples]
    S = jacobian_singular_values(r.stack, X, batch_size=batch_size)
    out: dict[str, Any] = {**spectrum_summary(S), "n_examples": len(X), "files": []}
    figs = {"analysis/spectrum.png": figures.singular_values_figure(
        S, f"dh/dx of the {'-'.join(map(str, r.stack.sizes))} stack, {len(X)} test examples")}
    if r.ds.image_shape is not None:
        k = min(n_tangents, S.shape[1])
        U, _ = jacobian_tangents(r.stack, X[:n_show], k)
        figs["analysis/tangents.png"] = figures.tangents_figure(X[:n_show], U, r.ds.image_shape)
    if out_dir is not None:
        for path, fig in figs.items():
            out["files"].append(str(figures.save_figure(fig, Path(out_dir) / Path(path).name)))
    if log:
        log_to_run(run_id, uri=r.uri, figures=figs,
                   metrics={f"analysis/spectrum/{k}": v for k, v in out.items()
                            if k not in ("files", "n_examples")})
    out["mean_spectrum"] = S.mean(0).tolist()
    return out
