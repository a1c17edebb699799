"""Samples of a pipeline run's stack, scored by their Parzen-window log-likelihood.

The stack of a pipeline run is loaded from the stage cache (``pipelines.analysis.runs``),
sampled (``pretrain.sampling``: the contractive chain for an autoencoder on top, Gibbs in the
top RBM for a deep belief net; :func:`draw_samples`), and its samples are scored by a Parzen
window on the run's test set, sigma chosen on its validation set (``pipelines.analysis.parzen``
Eqs. 1-4; :func:`sample_run`). The chains' figure, the numbers and a markdown table go to files
and to the run (under ``analysis/``).

References
----------
Rifai, Bengio, Dauphin & Vincent, A generative process for sampling contractive auto-encoders,
ICML 2012.
Breuleux, Bengio & Vincent, Quickly generating representative samples from an RBM-derived
process, Neural Comp. 2011.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipelines.analysis.parzen import (
    DEFAULT_SIGMAS,
    PUBLISHED_MNIST,
    parzen_estimate,
    parzen_log_likelihood,
    select_sigma,
)
from pipelines.analysis.runs import load_run, log_to_run, stack_inputs
from pipelines.files import atomic_write_text
from pipelines.reporting import figures
from pretrain.rbm import RBM
from pretrain.sampling import sample_cae, sample_dbn


def draw_samples(stack, X_start, *, n_samples: int, n_chains: int = 100, burn_in: int = 10,
                 thin: int = 1, noise: float = 0.3, seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """Samples of a stack: the contractive chain (autoencoder on top) or Gibbs (RBM on top).

    ``n_chains`` chains start at rows of ``X_start`` drawn by ``seed``; each runs ``burn_in``
    discarded states, then enough kept states (every ``thin``-th step) for ``n_samples`` in all.
    ``noise`` is the std of the code-space noise eps of the contractive chain (``pretrain.sampling``
    Eqs. 3-4: the step is ``J J^T eps``). On a 784-500-200 CAE stack on MNIST (15 epochs a layer)
    validation chose noise 0.1 and burn-in 1 of {0, 0.03, 0.1, 0.3, 1, 3} x {1, 10, 100}, 0.3
    a close second (``results/sampling/mnist-parzen.md``); that stack's chains fade over a
    hundred steps even at noise 0 (its reconstruction map loses ink), so choose both on
    validation (``sample_run``) rather than trust a default.

    Returns
    -------
    ``(samples (n_samples, d), chains (n_chains, n_steps, d), sampler name)``.

    References
    ----------
    Rifai, Bengio, Dauphin & Vincent, A generative process for sampling contractive
    auto-encoders, ICML 2012.
    """
    for name, v in (("n_samples", n_samples), ("n_chains", n_chains), ("thin", thin)):
        if isinstance(v, bool) or int(v) != v or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    if isinstance(burn_in, bool) or int(burn_in) != burn_in or burn_in < 0:
        raise ValueError(f"burn_in must be an integer >= 0, got {burn_in!r}")
    X_start = stack_inputs(stack, X_start)
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

    References
    ----------
    Breuleux, Bengio & Vincent, Quickly generating representative samples from an RBM-derived
    process, Neural Comp. 2011.
    """
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
    stderr = float(ll.std()) / math.sqrt(len(ll)) if len(ll) > 1 else float("nan")  # Eq. (4), parzen
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
             (f"{len(samples)} samples ({sampler}, {min(n_chains, n_samples)} chains, {setting}, "
              f"thin {thin}, seed {seed}); sigma chosen on {len(sp.X_valid)} validation rows from "
              f"{', '.join(f'{s:.3g}' for s in sigmas)}."), "",
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
