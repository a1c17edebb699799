"""Atomic file writes: a file is either absent or whole, never half-written.

Every file the tool writes that a later run reads (cached layers and tangents, cell results,
tables, figures, downloaded and generated data) goes through :func:`atomic_path`: the content
is written under a temporary name in the same folder, then renamed over the target with
``os.replace`` (atomic on POSIX and Windows within one file system). A process killed mid-write
leaves at most a hidden ``.<name>.*.tmp`` file, which no reader takes for the real one.

Work that two runs in one folder must not do at the same moment (creating the tracking store,
training the same cached layer) is serialised by :func:`file_lock`, an advisory lock that the
operating system releases when its process ends, however it ends.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed over ``path`` when the block ends
    without an error, removed when it raises (the parent folder is created if needed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created, with its folder, if missing) for the block;
    a second process blocks until the first leaves it or dies. Without ``fcntl`` (Windows) the
    block runs unlocked."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        if fcntl is not None:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
