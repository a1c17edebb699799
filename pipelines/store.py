"""Checks of the tracking store before a run writes to it: the URI's form, the local folder and
the SQLite file in it. Each failure is one :class:`StoreError` naming the URI or the file, where
the URI came from (``tracking.uri``, ``$MLFLOW_TRACKING_URI``) and the fix, instead of a
traceback from deep inside MLflow or SQLAlchemy after minutes of retrying.
"""
from __future__ import annotations

import os
import sqlite3
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

#: the schemes MLflow tracks to, besides a plain folder (its retired file store)
SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks")
SQLITE_HEADER = b"SQLite format 3\x00"


class StoreError(ValueError):
    """A tracking store that cannot be used; the message names it and the fix."""


def uri_origin(explicit: str | None) -> str:
    """Where the URI in force comes from, as the fix must name it."""
    if explicit:
        return "tracking.uri"
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return "MLFLOW_TRACKING_URI"
    return "the default store"


def check_uri(uri: str, origin: str) -> None:
    """Refuse a URI MLflow cannot track to: a plain folder path (MLflow 3 refuses its file
    store unless ``MLFLOW_ALLOW_FILE_STORE`` is set) or an unknown scheme."""
    scheme = urlsplit(uri).scheme.lower()
    if scheme in SCHEMES or scheme.split("+")[0] in SCHEMES:  # postgresql+psycopg2://
        return
    if scheme in ("", "file") or len(scheme) == 1:  # a path (a Windows drive letter too)
        if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() in ("1", "true"):
            return
        folder = Path(uri.removeprefix("file://").removeprefix("file:")).resolve()
        raise StoreError(
            f"{origin}={uri!r} is a folder path, which MLflow 3 reads as its retired file store: "
            f"give a database URI instead, e.g. sqlite:///{folder / 'mlflow.db'} (the store "
            f"layerwise keeps in that folder), or unset it to track in ./mlruns")
    raise StoreError(f"{origin}={uri!r} has the unknown scheme {scheme!r}: use "
                     f"sqlite:///path/mlflow.db, http://host:port of a tracking server, or a "
                     f"database URI (postgresql://, mysql://)")


def sqlite_path(uri: str) -> Path | None:
    """The database file of a local SQLite store, else None."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def _writable(folder: Path) -> str | None:
    """None if a file can be created in ``folder`` (the nearest existing folder above it when it
    does not exist yet), else the reason."""
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        return f"{folder} is a file, not a folder"
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".layerwise-probe-")
    except OSError as e:
        return f"{folder} is not writable ({e.strerror})"
    os.close(fd)
    os.unlink(probe)
    return None


def check_local_store(uri: str) -> None:
    """For a local SQLite store: its folder can be written, and the file (if there) is an
    SQLite database whose schema can be read."""
    db = sqlite_path(uri)
    if db is None:
        return
    reason = _writable(db.parent)
    if reason:
        raise StoreError(f"the tracking store {db} cannot be written: {reason}. Fix the "
                         f"folder's permissions, or set tracking.uri / MLFLOW_TRACKING_URI to a "
                         f"store you can write")
    if not db.exists():
        return
    if db.is_dir():
        raise StoreError(f"the tracking store {db} is a folder, not a database file: move it "
                         f"away, or set tracking.uri to sqlite:///{db / 'mlflow.db'}")
    if not os.access(db, os.W_OK):
        raise StoreError(f"the tracking store {db} is read-only: make it writable "
                         f"(chmod u+w), or set tracking.uri / MLFLOW_TRACKING_URI to another store")
    with open(db, "rb") as f:
        header = f.read(len(SQLITE_HEADER))
    if header and header != SQLITE_HEADER:
        raise damaged(db, "not an SQLite database")
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
        try:
            con.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            con.close()
    except sqlite3.DatabaseError as e:
        if "locked" not in str(e):  # another run writing is not damage
            raise damaged(db, str(e)) from None


def damaged(db: Path, reason: str) -> StoreError:
    return StoreError(f"the tracking store {db} is damaged ({reason}): move it away to start a "
                      f"fresh store there, or restore it from a backup")


def store_failure(uri: str, exc: BaseException) -> StoreError | None:
    """The :class:`StoreError` for an exception MLflow raised while opening a local store (a file
    damaged or made read-only after the checks), else None."""
    db = sqlite_path(uri)
    text = str(exc)
    if isinstance(exc, ImportError):  # postgresql:// without psycopg2, and the like
        return StoreError(f"the tracking store {uri.split('@')[-1]} needs the Python package "
                          f"{exc.name or text}: pip install it, or set tracking.uri / "
                          f"MLFLOW_TRACKING_URI to a sqlite:/// store")
    if db is None:
        return None
    if "readonly" in text or "read-only" in text:
        return StoreError(f"the tracking store {db} is read-only: make it and its folder "
                          f"writable, or set tracking.uri / MLFLOW_TRACKING_URI to another store")
    for sign in ("malformed", "not a database", "file is encrypted", "disk I/O error"):
        if sign in text:
            return damaged(db, sign)
    return None
