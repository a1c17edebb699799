"""The mechanism under a suite's committed CSV files (``cells.csv``, ``selected.csv``,
``pretraining.csv`` in ``<results>/<suite>-<profile>/``): a fixed header, one row per key,
every row checked when the file is read, and each save a locked, atomic rewrite.

A file that does not fit (another header, a row with more or fewer fields than the header, a
row its owner's check refuses, a key given twice) raises one ``ValueError`` that names the
file, the line and the fix, before anything is written. A save re-reads the file under an
advisory lock and merges its row into what another process (a suite run with ``--only``
another part) wrote since, so that two runs of one suite never lose each other's rows; the
lock lives in the temporary folder, so that no lock file lands among the committed files.
"""
from __future__ import annotations

import csv
import hashlib
import io
import tempfile
from pathlib import Path
from typing import Callable, Hashable

from pipelines.files import atomic_write_text, file_lock


class CsvFile:
    """One committed CSV: ``header`` its columns; ``check(line, row) -> key`` validates a row
    read back (raising :meth:`refuse`'s error) and gives the key that identifies it;
    ``what`` names one row in the message about a repeated key (``"cell"``, ``"group"``), and
    ``named_by`` the columns that message quotes."""

    def __init__(self, path: str | Path, header: list[str], check: Callable[[int, dict], Hashable], *,
                 what: str, named_by: list[str], foreign_fix: str = "Move the file away."):
        self.path, self.header, self._check, self._what = Path(path), list(header), check, what
        self._named_by = list(named_by)
        self._foreign_fix = foreign_fix
        name = hashlib.sha256(str(self.path.resolve()).encode()).hexdigest()[:16]
        self._lock = Path(tempfile.gettempdir()) / f"layerwise-{self.path.stem}-{name}.lock"

    def refuse(self, problem: str, fix: str) -> ValueError:
        return ValueError(f"{self.path}: {problem}. {fix} Nothing was written.")

    def read(self, check: Callable[[int, dict], Hashable] | None = None) -> dict[Hashable, dict[str, str]]:
        """The file's rows by key, each checked (by ``check`` if given, else the file's own
        check); none when there is no file."""
        check = check or self._check
        rows: dict[Hashable, dict[str, str]] = {}
        if not self.path.is_file():
            return rows
        reader = csv.DictReader(io.StringIO(self.path.read_text()))
        if reader.fieldnames != self.header:
            raise self.refuse(f"its header is {','.join(reader.fieldnames or [])!r} where this suite "
                              f"writes {','.join(self.header)!r}: it holds another suite's file or was "
                              "edited", self._foreign_fix)
        for line, row in enumerate(reader, 2):
            if None in row or None in row.values():  # csv's marks of a row longer or shorter than the header
                raise self.refuse(f"line {line} has not the header's {len(self.header)} fields",
                                  "Fix or delete that line.")
            key = check(line, row)
            if key in rows:
                described = ", ".join(f"{c}={row[c]}" for c in self._named_by)
                raise self.refuse(f"line {line} ({described}) repeats a {self._what}",
                                  "Delete one of the two lines.")
            rows[key] = row
        return rows

    def save(self, key: Hashable, row: dict[str, str], order: Callable[[Hashable], object], *,
             check: Callable[[int, dict], Hashable] | None = None) -> dict:
        """Add (or replace) the row of ``key``, merged with the rows on disk now (read with
        ``check``, as :meth:`read`), and rewrite the file atomically, its rows sorted by
        ``order(key)``. Returns the rows written."""
        return self.update({key: row}, order, check=check)

    def update(self, add: dict[Hashable, dict[str, str]], order: Callable[[Hashable], object], *,
               remove: Callable[[Hashable, dict[str, str]], bool] = lambda key, row: False,
               check: Callable[[int, dict], Hashable] | None = None) -> dict:
        """:meth:`save` for several rows: the rows on disk now (read with ``check``) less those
        for which ``remove(key, row)`` holds, plus ``add``, in one locked, atomic rewrite.
        Returns the rows written."""
        with file_lock(self._lock):
            rows = {k: r for k, r in self.read(check).items() if not remove(k, r)}
            rows.update(add)
            atomic_write_text(self.path, self.text(rows, order))
        return rows

    def text(self, rows: dict[Hashable, dict[str, str]], order: Callable[[Hashable], object]) -> str:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=self.header, lineterminator="\n")
        w.writeheader()
        for key in sorted(rows, key=order):
            w.writerow(rows[key])
        return buf.getvalue()
