"""Figures: image grids of examples, filters and samples; what a model learned; benchmark
results beside the papers' figures; atomic saving.

Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas, never through pyplot's
global state, so they are safe in tests, threads and headless runs.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pipelines.files import atomic_path


def _figure(width: float, height: float) -> Figure:
    """An empty ``width`` x ``height`` inch figure on the Agg canvas."""
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _panels(n: int, width: float = 3.6, height: float | None = None) -> tuple[Figure, list]:
    """A figure of ``n`` panels side by side, each ``width`` x ``height`` inches (square by default)."""
    fig = _figure(width * n, width if height is None else height)
    return fig, list(fig.subplots(1, n, squeeze=False).flat)


def image_grid(images: np.ndarray, image_shape: tuple[int, int], *, ncols: int = 10,
               titles: list[str] | None = None, row_labels: list[str] | None = None,
               cmap: str = "gray", scale_each: bool = False) -> Figure:
    """A grid of images, one per axis, row-major.

    Parameters
    ----------
    images : (n, d) with d = rows * cols of ``image_shape``.
    image_shape : (rows, cols) of one image.
    ncols : images per grid row.
    titles : one title per image, or None.
    row_labels : one label per grid row (left of it), or None.
    cmap : matplotlib colormap name.
    scale_each : scale each image to its own [min, max] (filters, codes); otherwise all images
        share one scale, [0, 1] when the data lies there, else the data's [min, max].

    Returns
    -------
    fig : a Figure with an Agg canvas.
    """
    images = np.asarray(images, dtype=np.float64)
    if images.ndim != 2:
        raise ValueError(f"images must be 2-D (n, d), got shape {images.shape}")
    n, d = images.shape
    rows_px, cols_px = image_shape
    if rows_px * cols_px != d:
        raise ValueError(f"image_shape {tuple(image_shape)} holds {rows_px * cols_px} pixels, images have {d}")
    if n == 0:
        raise ValueError("images is empty: nothing to draw")
    if int(ncols) != ncols or ncols < 1:
        raise ValueError(f"ncols must be a positive integer, got {ncols!r}")
    if titles is not None and len(titles) != n:
        raise ValueError(f"{len(titles)} titles for {n} images")
    ncols = min(int(ncols), n)
    nrows = -(-n // ncols)
    if row_labels is not None and len(row_labels) != nrows:
        raise ValueError(f"{len(row_labels)} row labels for {nrows} grid rows")
    lo, hi = float(images.min()), float(images.max())
    if lo >= 0.0 and hi <= 1.0:
        lo, hi = 0.0, 1.0
    cell = 1.0 if titles is None else 1.25
    margin = 0.0 if row_labels is None else 0.2 + 0.07 * max(len(str(r)) for r in row_labels)  # inches
    width = ncols * 1.0 + margin
    fig = _figure(width, nrows * cell)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        if i >= n:
            ax.set_visible(False)
            continue
        img = images[i].reshape(rows_px, cols_px)
        vmin, vmax = (img.min(), img.max()) if scale_each else (lo, hi)
        ax.imshow(img, cmap=cmap, vmin=vmin, vmax=vmax if vmax > vmin else vmin + 1e-12,
                  interpolation="nearest")
        if titles is not None:
            ax.set_title(str(titles[i]), fontsize=8)
    if row_labels is not None:
        for r, label in enumerate(row_labels):
            axes[r, 0].set_ylabel(str(label), rotation=0, ha="right", va="center", fontsize=9)
    fig.subplots_adjust(left=max(margin / width, 0.01), right=0.99, bottom=0.01,
                        top=0.93 if titles is not None else 0.99, wspace=0.05, hspace=0.3 if titles else 0.05)
    return fig


def example_grid(ds, n_per_class: int = 10, seed: int = 0) -> Figure:
    """``n_per_class`` random training examples of each class, one grid row per class, of a
    ``pipelines.data.datasets.Dataset`` (its ``X``, ``y``, ``n_classes``, ``image_shape``)."""
    if ds.image_shape is None:
        raise ValueError(f"{ds.name} has no image shape: its rows are not images")
    if int(n_per_class) != n_per_class or n_per_class < 1:
        raise ValueError(f"n_per_class must be a positive integer, got {n_per_class!r}")
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(ds.n_classes):
        idx = np.flatnonzero(ds.y == k)
        if len(idx) < n_per_class:
            raise ValueError(f"{ds.name}: class {k} has {len(idx)} training examples, fewer than "
                             f"n_per_class={n_per_class}")
        rows.append(ds.X[np.sort(rng.choice(idx, n_per_class, replace=False))])
    return image_grid(np.concatenate(rows), ds.image_shape, ncols=n_per_class,
                      row_labels=[str(k) for k in range(ds.n_classes)])


def save_figure(fig: Figure, path: str | os.PathLike, *, dpi: int = 100) -> Path:
    """Write ``fig`` to ``path`` atomically (temporary file, then rename); format from the suffix."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if not fmt:
        raise ValueError(f"{path}: give a suffix (.png, .pdf, .svg) to choose the format")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=dpi)
    return path


# -- what a layer learned, what a classifier gets wrong -----------------------------------------

def filters_figure(W: np.ndarray, image_shape: tuple[int, int], *, n: int = 100) -> Figure:
    """The first ``n`` rows of a first-layer weight matrix W (n_hidden, n_visible) as images."""
    W = np.asarray(W)
    return image_grid(W[:n], image_shape, ncols=10, scale_each=True, cmap="gray")


def decoder_filters_figure(W: np.ndarray, W_prime: np.ndarray, image_shape: tuple[int, int], *,
                           n: int = 12) -> Figure:
    """The first ``n`` encoder filters (rows of W (n_hidden, d)) above the same units' decoder
    filters (columns of W' (d, n_hidden)): in input space, a tied layer on ZCA-whitened inputs
    has decoder filters that are its encoder filters smoothed by the input covariance."""
    n = min(n, len(W))
    cells = np.concatenate([np.asarray(W)[:n], np.asarray(W_prime)[:, :n].T])  # (2n, d)
    return image_grid(cells, image_shape, ncols=n, scale_each=True, row_labels=["encoder", "decoder"])


def reconstruction_figure(x: np.ndarray, r: np.ndarray, image_shape: tuple[int, int],
                          x_tilde: np.ndarray | None = None) -> Figure:
    """Inputs, (corrupted inputs,) and reconstructions, one grid row each; x, r: (n, d)."""
    rows, labels = [np.asarray(x)], ["input"]
    if x_tilde is not None:
        rows.append(np.asarray(x_tilde))
        labels.append("corrupted")
    rows.append(np.asarray(r))
    labels.append("reconstruction")
    return image_grid(np.concatenate(rows), image_shape, ncols=len(x), row_labels=labels)


def curves_figure(history: dict[str, list[tuple[int, float]]], title: str = "") -> Figure:
    """Per-epoch curves, one axis per metric: ``{name: [(epoch, value), ...]}``."""
    names = sorted(history)
    if not names:
        raise ValueError("no metrics to plot")
    fig = _figure(3.2 * min(len(names), 4), 2.6 * -(-len(names) // 4))
    axes = fig.subplots(-(-len(names) // 4), min(len(names), 4), squeeze=False)
    for ax, name in zip(axes.flat, names):
        steps, values = zip(*history[name]) if history[name] else ((), ())
        ax.plot(steps, values, marker=".", lw=1)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def confusion_figure(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> Figure:
    """The confusion matrix (rows: true class, columns: predicted), with counts."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true), np.asarray(y_pred)), 1)
    fig = _figure(0.45 * n_classes + 1.5, 0.45 * n_classes + 1.2)
    ax = fig.subplots()
    ax.imshow(cm, cmap="Blues")
    for i in range(n_classes):
        for j in range(n_classes):
            if cm[i, j]:
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_xticks(range(n_classes))
    ax.set_yticks(range(n_classes))
    err = 100 * float(np.mean(np.asarray(y_true) != np.asarray(y_pred)))
    ax.set_title(f"test error {err:.2f}%", fontsize=9)
    fig.tight_layout()
    return fig


def tangents_figure(X: np.ndarray, U: np.ndarray, image_shape: tuple[int, int]) -> Figure:
    """Each input (first column) beside its tangents U (n, k, d) as images, one row per input."""
    X, U = np.asarray(X), np.asarray(U)
    n, k, _ = U.shape
    cells = np.concatenate([X[:, None, :], U], axis=1).reshape(n * (k + 1), -1)
    # tangents are signed: scale each image to its own range so the structure shows
    return image_grid(cells, image_shape, ncols=k + 1, scale_each=True,
                      titles=[("x" if j == 0 else f"u{j}") if i == 0 else "" for i in range(n)
                              for j in range(k + 1)])


# -- what a trained autoencoder knows: fields, potentials, samples, spectra --------------------

def vector_field_figure(points: np.ndarray, fields: dict[str, np.ndarray], data: np.ndarray) -> Figure:
    """The field ``r(x) - x`` as arrows at grid ``points`` (n, 2), one panel per model, the data on top.

    ``fields`` maps a panel title to its (n, 2) vectors. Arrows share one scale per panel, set so
    that the median arrow is half a grid spacing; arrows longer than two spacings (far from the
    data, where the field grows linearly) are drawn at two spacings, their colour keeping the
    true length.
    """
    points, data = np.asarray(points), np.asarray(data)
    if not fields:
        raise ValueError("no fields to plot")
    fig, axes = _panels(len(fields))
    for ax, (title, v) in zip(axes, fields.items()):
        v = np.asarray(v, dtype=np.float64)
        length = np.linalg.norm(v, axis=1)
        spacing = np.sqrt(np.ptp(points[:, 0]) * np.ptp(points[:, 1]) / len(points))
        k = 0.5 * spacing / max(np.median(length), 1e-12)
        shown = v * (np.minimum(k * length, 2 * spacing) / np.maximum(length, 1e-12))[:, None]
        ax.scatter(data[:, 0], data[:, 1], s=2, c="tab:orange", alpha=0.5, lw=0, zorder=1)
        q = ax.quiver(points[:, 0], points[:, 1], shown[:, 0], shown[:, 1], length, angles="xy",
                      scale_units="xy", scale=1.0, width=0.004, cmap="viridis", zorder=2)
        fig.colorbar(q, ax=ax, shrink=0.8, label="|r(x) - x|").ax.tick_params(labelsize=6)
        ax.set_title(title, fontsize=9)
        ax.set_aspect("equal")
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    return fig


def potential_figure(xx: np.ndarray, yy: np.ndarray, potentials: dict[str, np.ndarray],
                     data: np.ndarray, levels: int = 20) -> Figure:
    """Filled contours of each model's potential F over a grid (xx, yy of equal shape), the data on top.

    The colour levels span the upper three quarters of each panel's values (the lowest quarter,
    far corners where F falls quadratically, shares the bottom colour), so the structure around
    the data shows.
    """
    data = np.asarray(data)
    if not potentials:
        raise ValueError("no potentials to plot")
    fig, axes = _panels(len(potentials))
    for ax, (title, F) in zip(axes, potentials.items()):
        F = np.asarray(F, dtype=np.float64).reshape(np.shape(xx))
        lo, hi = np.percentile(F, 25), F.max()
        cs = ax.contourf(xx, yy, np.clip(F, lo, hi), levels=np.linspace(lo, hi, levels + 1),
                         cmap="viridis")
        fig.colorbar(cs, ax=ax, shrink=0.8).ax.tick_params(labelsize=6)
        ax.scatter(data[:, 0], data[:, 1], s=1, c="w", alpha=0.4, lw=0)
        ax.set_title(title, fontsize=9)
        ax.set_aspect("equal")
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    return fig


def sample_chains_figure(chains: np.ndarray, image_shape: tuple[int, int], *, n_chains: int = 10,
                         n_steps: int = 10) -> Figure:
    """Sample chains (n_chains, n_steps, d) as images: one grid row per chain, ``n_steps`` states
    evenly spaced along it."""
    chains = np.asarray(chains)
    if chains.ndim != 3:
        raise ValueError(f"chains must be (n_chains, n_steps, d), got shape {chains.shape}")
    rows = chains[:n_chains]
    cols = np.unique(np.linspace(0, chains.shape[1] - 1, min(n_steps, chains.shape[1])).round().astype(int))
    cells = rows[:, cols].reshape(len(rows) * len(cols), -1)
    return image_grid(cells, image_shape, ncols=len(cols),
                      row_labels=[f"chain {i + 1}" for i in range(len(rows))])


def singular_values_figure(S: np.ndarray, title: str = "") -> Figure:
    """The singular value spectrum of a Jacobian: mean over examples (line) and 10-90% band.

    ``S`` is (N, k), each row sorted in decreasing order; plotted on a log scale, so a few
    large values and a long tail below show a low-dimensional manifold.
    """
    S = np.asarray(S, dtype=np.float64)
    if S.ndim != 2 or S.size == 0:
        raise ValueError(f"S must be a non-empty (N, k) array, got shape {S.shape}")
    fig = _figure(5.0, 3.4)
    ax = fig.subplots()
    i = np.arange(1, S.shape[1] + 1)
    floor = max(S.max() * 1e-8, 1e-300)  # log axis: zeros drawn at a floor, not dropped
    lo, hi = np.percentile(S, [10, 90], axis=0)
    ax.fill_between(i, np.maximum(lo, floor), np.maximum(hi, floor), alpha=0.3, lw=0, label="10-90%")
    ax.plot(i, np.maximum(S.mean(0), floor), marker=".", lw=1, label="mean")
    ax.set_yscale("log")
    ax.set_xlabel("index k", fontsize=8)
    ax.set_ylabel("singular value of dh/dx", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7)
    ax.set_title(title or f"Jacobian spectrum over {len(S)} examples", fontsize=9)
    fig.tight_layout()
    return fig


# -- benchmark results: ours (mean, std bars) beside the papers' figures -------------------------

def lines_figure(summaries, *, x_key: str, line_key: str, panel_key: str | None = None,
                 paper: dict | None = None, ylabel: str = "", title: str = "") -> Figure:
    """One line per ``line_key`` value of the summaries (``pipelines.reporting.tables``; ours: mean
    with std bars), ``x_key`` on a log axis, one panel per ``panel_key`` value; ``paper[line][x]``
    drawn as hollow squares on dashed lines."""
    panels = list(dict.fromkeys(s.keys[panel_key] for s in summaries)) if panel_key else [None]
    fig, axes = _panels(len(panels), 6.0, 4.0)
    colors = {m: f"C{i}" for i, m in enumerate(dict.fromkeys(s.keys[line_key] for s in summaries))}
    for ax, panel in zip(axes, panels):
        sub = [s for s in summaries if panel is None or s.keys[panel_key] == panel]
        for m, color in colors.items():
            pts = sorted((s.keys[x_key], s.mean, s.std or 0.0) for s in sub if s.keys[line_key] == m)
            if pts:
                xs, ys, es = zip(*pts)
                ax.errorbar(xs, ys, yerr=es, color=color, marker="o", ms=4, capsize=2, label=str(m))
            ref = sorted((paper or {}).get(m, {}).items())
            if ref:
                ax.plot(*zip(*ref), color=color, ls="--", marker="s", mfc="none", ms=5, label=f"{m} (paper)")
        ax.set_xscale("log")
        ax.set_xlabel(x_key)
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title}{'' if panel is None else f': {panel_key} {panel}'}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return fig


def bars_figure(summaries, *, group_key: str | None, bar_key: str, ylabel: str = "",
                title: str = "") -> Figure:
    """Grouped bars (ours: mean with std bars) per ``group_key`` value, one bar per ``bar_key``
    value; the paper's figure as a black tick on its bar."""
    groups = list(dict.fromkeys(s.keys[group_key] for s in summaries)) if group_key else [""]
    bars = list(dict.fromkeys(s.keys[bar_key] for s in summaries))
    fig, (ax,) = _panels(1, max(6.0, 0.5 * len(groups) * len(bars) ** 0.5 + 4), 4.0)
    width = 0.8 / len(bars)
    at = {(s.keys[group_key] if group_key else "", s.keys[bar_key]): s for s in summaries}
    labeled = False
    for j, b in enumerate(bars):
        for i, g in enumerate(groups):
            s = at.get((g, b))
            if s is None:
                continue
            x = i - 0.4 + (j + 0.5) * width
            ax.bar(x, s.mean, width, yerr=s.std or 0.0, color=f"C{j}", label=str(b) if i == 0 else None)
            if s.paper is not None:
                ax.plot([x - width / 2, x + width / 2], [s.paper] * 2, color="k", lw=2,
                        label=None if labeled else "paper")
                labeled = True
    ax.set_xticks(range(len(groups)), [str(g) for g in groups], rotation=30 if group_key else 0,
                  ha="right" if group_key else "center", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    return fig


def autoencoder_figure(originals: np.ndarray, reconstructions: dict[str, np.ndarray],
                       codes: dict[str, tuple[np.ndarray, np.ndarray]]) -> Figure:
    """Test digits (``originals``, (n, 784)) above each model's reconstructions of them, one row
    per model; right of them, per entry of ``codes`` (model -> (xy (N, 2), labels (N,))), the
    codes' first 2 principal components coloured by digit."""
    rows = [("test", np.asarray(originals)), *((m, np.asarray(r)) for m, r in reconstructions.items())]
    n_show, n_scatter = len(rows[0][1]), len(codes)
    fig = _figure(n_show * 0.8 + 4.0 * n_scatter, 0.85 * len(rows) + 0.5)
    grid = fig.add_gridspec(len(rows), n_show + n_scatter, width_ratios=[1] * n_show + [5] * n_scatter,
                            wspace=0.1)
    for i, (name, images) in enumerate(rows):
        for j in range(min(n_show, len(images))):
            ax = fig.add_subplot(grid[i, j])
            ax.imshow(images[j].reshape(28, 28), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(name, fontsize=7)
    for k, (m, (xy, y)) in enumerate(codes.items()):
        ax = fig.add_subplot(grid[:, n_show + k])
        sc = ax.scatter(xy[:, 0], xy[:, 1], c=y, cmap="tab10", s=4, vmin=-0.5, vmax=9.5)
        ax.set_title(f"{m}: codes, first 2 PCs", fontsize=8)
        ax.set_xticks([]), ax.set_yticks([])
    if codes:
        fig.colorbar(sc, ax=ax, ticks=range(10), fraction=0.05)
    return fig
