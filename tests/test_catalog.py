"""The dataset catalog: one row per dataset, where MNIST is found and where a variation is cached."""
from pathlib import Path

import pytest

from pipelines.data import mnist as M
from pipelines.data.catalog import catalog
from pipelines.data.datasets import DATASETS
from pipelines.data.variations import cache_path

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
HAVE_MNIST = (SHARED / "mnist" / "train-images-idx3-ubyte.gz").is_file()


@pytest.fixture
def no_env(monkeypatch, tmp_path):
    """No $LAYERWISE_DATA and an empty home, so only the folders a test names are searched."""
    monkeypatch.delenv(M.ENV_VAR, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path


def test_without_mnist_the_mnist_sets_need_it_and_a_cache_is_found(no_env):
    data = no_env / "data"
    cached = cache_path(no_env / "home" / ".cache" / "layerwise", "rect", 0)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")
    rows = {r.name: r for r in catalog(data)}
    assert list(rows) == list(DATASETS)
    assert rows["mnist"].path is None and rows["mnist"].status.startswith("not usable: MNIST files not found")
    assert rows["mnist-rot"].status == "needs MNIST (see above)" and rows["mnist-rot"].path is None
    assert rows["rect"].path == cached
    assert rows["rect"].status == f"generated from its recipe (no download), cached at {cached}"
    assert rows["convex"].status == "generated from its recipe (no download) on first use"
    assert rows["digits"].status == "embedded (scikit-learn's 8x8 digits)"
    assert rows["npz"].path is None and "data.path=FILE.npz" in rows["npz"].status


@pytest.mark.skipif(not HAVE_MNIST, reason="the verified MNIST files are not in ../shared/data/mnist")
def test_mnist_found_and_verified(no_env):
    rows = {r.name: r for r in catalog(SHARED)}
    assert rows["mnist"].path == SHARED / "mnist"
    assert rows["mnist"].status == f"found in {SHARED / 'mnist'} (md5 verified)"
    assert rows["mnist-basic"].status == "generated from MNIST on first use"
