"""MNIST IDX reading, md5 verification, lookup order and (offline) download."""
import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipelines.data import mnist as M

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
MNIST_DIR = SHARED / "mnist"
needs_mnist = pytest.mark.skipif(not (MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
                                 reason="the verified MNIST files are not in ../shared/data/mnist")


@pytest.fixture
def no_env(monkeypatch, tmp_path):
    """No $LAYERWISE_DATA and an empty home, so only the folders a test names are searched."""
    monkeypatch.delenv(M.ENV_VAR, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path


@needs_mnist
def test_shared_files_parse_with_published_shapes_counts_and_md5(no_env):
    X, y, X_test, y_test = M.load_mnist(SHARED)
    assert X.shape == (60000, 784) and X_test.shape == (10000, 784)
    assert X.dtype == np.float32 and y.dtype == np.int64
    assert 0.0 == X.min() and X.max() == 1.0 and 0.0 == X_test.min() and X_test.max() == 1.0
    # the published class counts of the MNIST training and test sets
    assert np.bincount(y).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(y_test).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert y[:5].tolist() == [5, 0, 4, 1, 9]  # the well-known first training labels
    for name, md5 in M.FILES.items():
        assert M.md5sum(MNIST_DIR / name) == md5
    raw = M.read_idx(MNIST_DIR / "t10k-images-idx3-ubyte.gz")
    assert raw.shape == (10000, 28, 28) and raw.dtype == np.uint8
    np.testing.assert_array_equal(raw.reshape(10000, 784) / np.float32(255), X_test)


def _write_idx(path, array, magic):
    dims = b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    header = int(magic).to_bytes(4, "big") + dims
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_read_idx_round_trip_and_header_checks(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (7, 28, 28)).astype(np.uint8)
    _write_idx(tmp_path / "a.gz", a, 2051)
    np.testing.assert_array_equal(M.read_idx(tmp_path / "a.gz"), a)
    _write_idx(tmp_path / "bad.gz", a, 2052)
    with pytest.raises(M.DataFileError, match=r"bad.gz.*magic number is 2052"):
        M.read_idx(tmp_path / "bad.gz")
    # header says 7 images, data holds 6: the count check catches it
    with gzip.open(tmp_path / "short.gz", "wb") as f:
        f.write((2051).to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in (7, 28, 28))
                + a[:6].tobytes())
    with pytest.raises(M.DataFileError, match=r"short.gz.*\(7, 28, 28\).*5488 bytes.*holds 4704"):
        M.read_idx(tmp_path / "short.gz")


@needs_mnist
def test_truncated_gz_names_the_file_and_says_to_refetch(tmp_path):
    src = (MNIST_DIR / "t10k-labels-idx1-ubyte.gz").read_bytes()
    bad = tmp_path / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(src[: len(src) // 2])
    with pytest.raises(M.DataFileError) as err:
        M.read_idx(bad)
    assert str(bad) in str(err.value) and "truncated" in str(err.value) and "fetch it again" in str(err.value)


@needs_mnist
def test_wrong_md5_names_file_expected_actual_and_fix(no_env):
    d = no_env / "data"
    d.mkdir()
    for name in M.FILES:
        shutil.copy(MNIST_DIR / name, d / name)
    bad = d / "train-labels-idx1-ubyte.gz"
    bad.write_bytes(b"not the labels" * 10)
    with pytest.raises(M.DataFileError) as err:
        M.load_mnist(d)
    msg = str(err.value)
    assert str(bad) in msg
    assert M.FILES["train-labels-idx1-ubyte.gz"] in msg and M.md5sum(bad) in msg
    assert "delete it" in msg


def test_missing_files_one_clear_error_naming_all_four_and_the_folders(no_env):
    d = no_env / "empty"
    with pytest.raises(FileNotFoundError) as err:
        M.load_mnist(d, download=False)
    msg = str(err.value)
    for name in M.FILES:
        assert name in msg
    assert str(d) in msg and str(no_env / "home" / ".cache" / "layerwise") in msg
    assert "--data-dir" in msg and M.ENV_VAR in msg and "download=True" in msg


@needs_mnist
def test_lookup_order_data_dir_then_env_then_home(no_env, monkeypatch):
    env_dir, arg_dir = no_env / "env", no_env / "arg"
    (env_dir / "mnist").mkdir(parents=True)
    arg_dir.mkdir()
    for name in M.FILES:
        (env_dir / "mnist" / name).symlink_to(MNIST_DIR / name)  # in the mnist/ subfolder
    monkeypatch.setenv(M.ENV_VAR, str(env_dir))
    assert M.dataset_locations(arg_dir) == [arg_dir, env_dir, no_env / "home" / ".cache" / "layerwise"]
    paths = M.find_mnist(arg_dir)
    assert all(p.parent == env_dir / "mnist" for p in paths.values())
    # a file in the explicit data dir wins over the one in $LAYERWISE_DATA
    (arg_dir / "t10k-labels-idx1-ubyte.gz").symlink_to(MNIST_DIR / "t10k-labels-idx1-ubyte.gz")
    paths = M.find_mnist(arg_dir)
    assert paths["t10k-labels-idx1-ubyte.gz"].parent == arg_dir
    assert paths["train-images-idx3-ubyte.gz"].parent == env_dir / "mnist"


@needs_mnist
def test_download_verifies_md5_skips_bad_mirror_and_writes_atomically(no_env, monkeypatch):
    bad_mirror = no_env / "bad"
    bad_mirror.mkdir()
    for name in M.FILES:
        (bad_mirror / name).write_bytes(b"garbage")
    monkeypatch.setattr(M, "MIRRORS", (bad_mirror.as_uri() + "/", MNIST_DIR.as_uri() + "/"))
    target = no_env / "dl"
    X, y, X_test, y_test = M.load_mnist(target, download=True)
    assert X.shape == (60000, 784) and len(y_test) == 10000
    assert sorted(p.name for p in target.iterdir()) == sorted(M.FILES)  # no .part left behind
    for name, md5 in M.FILES.items():
        assert M.md5sum(target / name) == md5


def test_download_failure_reports_every_mirror_and_leaves_nothing(no_env, monkeypatch):
    monkeypatch.setattr(M, "MIRRORS", ((no_env / "nowhere").as_uri() + "/",))
    target = no_env / "dl"
    with pytest.raises(FileNotFoundError) as err:
        M.load_mnist(target, download=True)
    msg = str(err.value)
    tried = msg.split("Downloading failed:\n")[1].splitlines()
    assert len(tried) == 4 and all("nowhere" in line for line in tried)  # one line per file
    assert list(target.iterdir()) == []
