"""MNIST from its original IDX gz files: lookup, md5 verification, optional download.

The four files (LeCun, Cortes and Burges) are looked for, in order, in

1. the ``data_dir`` argument (``--data-dir`` on the command line),
2. ``$LAYERWISE_DATA``,
3. ``~/.cache/layerwise``,

each either directly in the folder or in its ``mnist/`` subfolder. Every file is checked
against its published md5 before it is parsed, so a truncated or altered file never reaches a
model. With ``download=True`` a missing file is fetched from the usual mirrors into the first
location, written under a temporary name and renamed only once its md5 matches.

IDX format: a big-endian header ``0x00 0x00 <dtype> <ndim>`` (magic 2051 for images, 2049
for labels), ``ndim`` big-endian uint32 sizes, then ``prod(sizes)`` unsigned bytes.

References
----------
LeCun, Bottou, Bengio and Haffner (1998), Gradient-based learning applied to document
recognition. Proc. IEEE 86(11).
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import os
import urllib.request
import zlib
from pathlib import Path

import numpy as np

from pipelines.files import atomic_path

#: file name -> published md5 (the values torchvision and the dataset's authors list)
FILES: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
#: mirrors tried in order by ``download=True`` (each URL is ``mirror + file name``)
MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
DOWNLOAD_TIMEOUT_S = 10.0
MAGIC_IMAGES = 2051
MAGIC_LABELS = 2049
ENV_VAR = "LAYERWISE_DATA"


class DataFileError(ValueError):
    """A data file exists but cannot be used (corrupt, truncated, wrong md5, bad header)."""


def dataset_locations(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The folders searched for data files, in lookup order.

    ``data_dir`` (when given), then ``$LAYERWISE_DATA`` (when set), then ``~/.cache/layerwise``.
    """
    dirs = []
    if data_dir is not None:
        dirs.append(Path(data_dir).expanduser())
    env = os.environ.get(ENV_VAR)
    if env:
        dirs.append(Path(env).expanduser())
    dirs.append(Path("~/.cache/layerwise").expanduser())
    unique = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def md5sum(path: str | os.PathLike) -> str:
    """Hex md5 of a file, read in 1 MiB blocks."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_md5(path: str | os.PathLike, expected: str) -> None:
    """Raise a DataFileError naming the file, both md5s and the fix unless they match."""
    actual = md5sum(path)
    if actual != expected:
        raise DataFileError(
            f"{path}: md5 is {actual}, expected {expected}. The file is corrupt, truncated or not "
            f"the original; delete it and fetch it again (load with download=True, or copy a "
            f"verified copy into that folder).")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse an IDX file (gzip-compressed or plain) into a uint8 array of its declared shape.

    Parameters
    ----------
    path : an IDX file of unsigned bytes with magic 2051 (images, 3 dims) or 2049 (labels, 1 dim).

    Returns
    -------
    array : (n, rows, cols) for images, (n,) for labels; dtype uint8.

    Raises
    ------
    DataFileError : unreadable gzip, unknown magic, or a byte count that disagrees with the header.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(2)
        opener = gzip.open if head == b"\x1f\x8b" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as err:
        # gzip raises EOFError on truncation and BadGzipFile (an OSError) on garbage
        raise DataFileError(
            f"{path}: cannot be decompressed ({type(err).__name__}: {err}); the file is truncated "
            f"or corrupt. Delete it and fetch it again.") from err
    if len(raw) < 8:
        raise DataFileError(f"{path}: only {len(raw)} bytes, too short for an IDX header; "
                            f"delete it and fetch it again.")
    magic = int.from_bytes(raw[:4], "big")
    if magic not in (MAGIC_IMAGES, MAGIC_LABELS):
        raise DataFileError(f"{path}: IDX magic number is {magic}, expected {MAGIC_IMAGES} (images) "
                            f"or {MAGIC_LABELS} (labels); not an MNIST IDX file.")
    ndim = raw[3]
    if (magic == MAGIC_IMAGES) != (ndim == 3) or (magic == MAGIC_LABELS) != (ndim == 1):
        raise DataFileError(f"{path}: magic {magic} declares {ndim} dimensions; images have 3, "
                            f"labels 1. Delete the file and fetch it again.")
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise DataFileError(
            f"{path}: header declares shape {dims} ({expected} bytes of data) but the file holds "
            f"{len(raw) - header}; it is truncated or corrupt. Delete it and fetch it again.")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find(name: str, dirs: list[Path]) -> Path | None:
    for d in dirs:
        for candidate in (d / name, d / "mnist" / name):
            if candidate.is_file():
                return candidate
    return None


def _download(name: str, target_dir: Path) -> tuple[Path | None, list[str]]:
    """Fetch ``name`` into ``target_dir`` from the first mirror that serves the right bytes."""
    errors = []
    target = target_dir / name
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        return None, [f"cannot create {target_dir}: {err}"]
    for mirror in MIRRORS:
        url = mirror + name
        try:
            with atomic_path(target) as tmp:  # a reader never sees a half-written file
                with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as r:
                    while block := r.read(1 << 20):
                        out.write(block)
                verify_md5(tmp, FILES[name])
            return target, errors
        except (OSError, DataFileError) as err:  # URLError and timeouts are OSErrors
            errors.append(f"{url}: {err}")
    return None, errors


def find_mnist(data_dir: str | os.PathLike | None = None, *, download: bool = False) -> dict[str, Path]:
    """Locate (and optionally download) the four MNIST files; verify each md5.

    Returns
    -------
    paths : file name -> path, for the four names of ``FILES``.

    Raises
    ------
    FileNotFoundError : some file is missing (and could not be downloaded); the message names the
        four files, the folders searched and where to put them.
    DataFileError : a file is present but its md5 is wrong.
    """
    dirs = dataset_locations(data_dir)
    paths, missing, download_errors = {}, [], []
    for name in FILES:
        path = _find(name, dirs)
        if path is None and download:
            path, errs = _download(name, dirs[0])
            download_errors += errs
        if path is None:
            missing.append(name)
        else:
            paths[name] = path
    if missing:
        searched = "\n".join(f"  {d}  (and {d / 'mnist'})" for d in dirs)
        msg = (f"MNIST files not found: {', '.join(missing)}.\n"
               f"All four files are needed: {', '.join(FILES)}.\n"
               f"Folders searched, in order:\n{searched}\n"
               f"Put the four .gz files (unchanged, still compressed) in one of these folders or its "
               f"mnist/ subfolder, or point --data-dir or ${ENV_VAR} at the folder that holds them")
        if download_errors:
            msg += ".\nDownloading failed:\n" + "\n".join(f"  {e}" for e in download_errors)
        elif not download:
            msg += ", or load with download=True (--download) where a network is available."
        raise FileNotFoundError(msg)
    for name, path in paths.items():
        verify_md5(path, FILES[name])
    return paths


@functools.lru_cache(maxsize=4)
def _read_cached(path: str, mtime_ns: int, size: int) -> np.ndarray:
    array = read_idx(path)
    array.setflags(write=False)  # shared between callers: nobody may modify it
    return array


def _read(path: Path) -> np.ndarray:
    st = path.stat()
    return _read_cached(str(path.resolve()), st.st_mtime_ns, st.st_size)


def load_mnist(data_dir: str | os.PathLike | None = None, *, download: bool = False,
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The MNIST training and test sets as arrays.

    Returns
    -------
    X_train : (60000, 784) float32 in [0, 1] (bytes / 255)
    y_train : (60000,) int64 in 0..9
    X_test : (10000, 784) float32 in [0, 1]
    y_test : (10000,) int64 in 0..9
    """
    paths = find_mnist(data_dir, download=download)
    out = []
    for images, labels in (("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                           ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")):
        X = _read(paths[images])
        y = _read(paths[labels])
        if X.shape[0] != y.shape[0] or X.shape[1:] != (28, 28):
            raise DataFileError(f"{paths[images]} holds images of shape {X.shape} and {paths[labels]} "
                                f"{y.shape[0]} labels; expected (n, 28, 28) and n labels.")
        if y.max() > 9:
            raise DataFileError(f"{paths[labels]}: label {y.max()} outside 0..9.")
        out += [X.reshape(len(X), 784).astype(np.float32) / np.float32(255.0), y.astype(np.int64)]
    return tuple(out)
