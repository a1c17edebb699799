"""The spectrum of a stack's Jacobian: how many directions its top code is sensitive to.

Per example, the singular values of the top code's Jacobian

    (1) J(x) = dh_L/dx = D_L W_L ... D_1 W_1,   D_k = diag(s_k'(a_k))      (n_L, n_visible)

formed explicitly per batch by ``finetune.tangents.explicit_jacobian`` (its Eq. 2, from the
cheaper of its forward and backward chains; bounded memory: one batch's Jacobian at a time)
and reduced with ``torch.linalg.svdvals``. A few large values and a fast decay mean the code
is sensitive to few directions: a low-dimensional manifold, most hidden units saturated (Rifai
et al. 2011). The tangent images of :func:`spectrum_run` are the leading right singular
vectors of Eq. (1), ``finetune.tangents.tangents`` by its exact (explicit SVD) method. Figures
and numbers go to files and to the run (under ``analysis/``).

References
----------
Rifai, Vincent, Muller, Glorot & Bengio, Contractive auto-encoders, ICML 2011.
Rifai, Dauphin, Vincent, Bengio & Muller, The manifold tangent classifier, NIPS 2011.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from finetune.tangents import explicit_jacobian, tangents
from pipelines.analysis.runs import load_run, log_to_run, stack_inputs
from pipelines.reporting import figures


@torch.no_grad()
def jacobian_singular_values(stack, X, *, batch_size: int = 128) -> np.ndarray:
    """Per-example singular values of Eq. (1), decreasing: (N, min(n_hidden_L, n_visible)).

    Memory is one (batch_size, n_hidden_L, n_visible) Jacobian at a time.

    References
    ----------
    Rifai, Vincent, Muller, Glorot & Bengio, Contractive auto-encoders, ICML 2011.
    """
    X = stack_inputs(stack, X)
    return torch.cat([torch.linalg.svdvals(explicit_jacobian(stack, X[i:i + batch_size]))  # Eq. (1)
                      for i in range(0, len(X), batch_size)]).numpy()


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

    The tangents of the first ``n_show`` rows are the ``n_tangents`` leading right singular
    vectors of Eq. (1), exact (``finetune.tangents.tangents``, ``method="explicit"``). Logged to
    the run: ``analysis/spectrum.png``, ``analysis/tangents.png`` (image data), and the metrics
    of :func:`spectrum_summary` under ``analysis/spectrum/``.
    """
    r = load_run(run_id, uri=uri, root=root)
    X = r.split.X_test[:n_examples]
    S = jacobian_singular_values(r.stack, X, batch_size=batch_size)
    out: dict[str, Any] = {**spectrum_summary(S), "n_examples": len(X), "files": []}
    figs = {"analysis/spectrum.png": figures.singular_values_figure(
        S, f"dh/dx of the {'-'.join(map(str, r.stack.sizes))} stack, {len(X)} test examples")}
    if r.ds.image_shape is not None:
        k = min(n_tangents, S.shape[1])
        U, _ = tangents(r.stack, stack_inputs(r.stack, X[:n_show]), k, method="explicit")  # (n_show, k, d)
        figs["analysis/tangents.png"] = figures.tangents_figure(X[:n_show], U.numpy(), r.ds.image_shape)
    if out_dir is not None:
        for path, fig in figs.items():
            out["files"].append(str(figures.save_figure(fig, Path(out_dir) / Path(path).name)))
    if log:
        log_to_run(run_id, uri=r.uri, figures=figs,
                   metrics={f"analysis/spectrum/{k}": v for k, v in out.items()
                            if k not in ("files", "n_examples")})
    out["mean_spectrum"] = S.mean(0).tolist()
    return out
