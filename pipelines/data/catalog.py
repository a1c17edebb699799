"""The catalog of datasets: which exist, and where each is found, cached or made.

One row per name of ``pipelines.data.datasets.DATASETS``, looked up without loading any data:
MNIST's four files are located and their md5 checked (``pipelines.data.mnist.find_mnist``),
a variation set is reported by its cache file for seed 0 in the folders of
``pipelines.data.mnist.dataset_locations`` (the first found), ``digits`` is embedded in
scikit-learn and ``npz`` is the user's own file.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pipelines.data.datasets import DATASETS
from pipelines.data.mnist import dataset_locations, find_mnist
from pipelines.data.variations import MNIST_BASED, cache_path


@dataclass(frozen=True)
class Entry:
    """One dataset: its name, where it is (a file or folder, None when nowhere yet) and a line
    saying how it is found or made."""

    name: str
    path: Path | None
    status: str


def catalog(data_dir: str | os.PathLike | None = None) -> list[Entry]:
    """The datasets in the order of ``DATASETS``, each with where it is found or cached.

    ``data_dir`` is searched first, as by ``load_dataset`` (then ``$LAYERWISE_DATA``, then
    ``~/.cache/layerwise``).
    """
    try:
        mnist = find_mnist(data_dir)
        mnist_dir = next(iter(mnist.values())).parent
        mnist_status = f"found in {mnist_dir} (md5 verified)"
    except (FileNotFoundError, ValueError) as e:  # missing, or a DataFileError (corrupt)
        mnist_dir, mnist_status = None, f"not usable: {str(e).splitlines()[0]}"
    dirs = dataset_locations(data_dir)
    rows = []
    for name in DATASETS:
        path = None
        if name == "digits":
            status = "embedded (scikit-learn's 8x8 digits)"
        elif name == "mnist":
            path, status = mnist_dir, mnist_status
        elif name == "npz":
            status = "your own file: --set data.name=npz --set data.path=FILE.npz"
        else:
            path = next((p for p in (cache_path(d, name, 0) for d in dirs) if p.exists()), None)
            base = "MNIST" if name in MNIST_BASED else "its recipe (no download)"
            status = (f"generated from {base}, cached at {path}" if path is not None else
                      "needs MNIST (see above)" if name in MNIST_BASED and mnist_dir is None else
                      f"generated from {base} on first use")
        rows.append(Entry(name, path, status))
    return rows
