"""The caches under a root folder (``mlruns`` by default): what they hold, their sizes, clearing.

Every cache is derived data: deleting any of it costs only the time to compute it again.

- ``layers``: trained layers, ``<root>/cache/layer<k>-<digest>.pt`` (``stages.layer_cache``);
- ``checkpoints``: a layer's Lightning checkpoints, ``<root>/cache/layer<k>-<digest>-ckpt/``,
  from which an interrupted layer resumes (of no use once its ``.pt`` is written);
- ``tangents``: the MTC's tangents, ``<root>/cache/tangents/tangents-<key>.pt``
  (``stages.tangent_cache``; about 1.1 GB for MNIST's 48000-image pool with k = 15);
- ``results``: finished stages' rows, ``<root>/cache/results/<digest>-<stage>-<method>.json``;
- ``bench``: the benchmarks' shared stacks and tangents, ``<root>/bench/cache/<data>-pool<n>/``
  (the benchmark cells' results, ``<root>/bench/<suite>-...``, are results, not a cache, and
  are never listed or cleared here);
- ``partial``: temporary files a killed process left (``.<name>.*.tmp``), never read.

Lock files (``.<name>.lock``, empty) are neither listed nor removed: a running process may
hold one.

Age is the time since a file was last written; ``clear(older_than=...)`` removes the files of
that age or more, so a cache in use now is kept.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

KINDS = ("layers", "checkpoints", "tangents", "results", "bench", "partial")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass(frozen=True)
class CacheFile:
    kind: str
    path: Path
    size: int       # bytes
    modified: float  # seconds since the epoch


@dataclass(frozen=True)
class Summary:
    kind: str
    folder: Path
    files: int
    size: int
    oldest: float | None
    newest: float | None


def _kind(root: Path, path: Path) -> str | None:
    if path.name.endswith(".lock"):
        return None
    if path.name.startswith(".") and path.name.endswith(".tmp"):
        return "partial"
    rel = path.relative_to(root).parts
    if rel[:2] == ("bench", "cache"):
        return "bench"
    if len(rel) == 3 and rel[0] == "cache" and rel[1].endswith("-ckpt") and path.suffix == ".ckpt":
        return "checkpoints"
    if rel[:1] != ("cache",):
        return None
    if len(rel) == 2 and path.suffix == ".pt" and path.name.startswith("layer"):
        return "layers"
    if rel[1:2] == ("tangents",) and path.suffix == ".pt":
        return "tangents"
    if rel[1:2] == ("results",) and path.suffix == ".json":
        return "results"
    return None


def folders(root: str | Path) -> dict[str, Path]:
    """Where each kind lives under ``root`` (``partial`` files are found in any of them)."""
    root = Path(root)
    return {"layers": root / "cache", "checkpoints": root / "cache" / "layer*-ckpt",
            "tangents": root / "cache" / "tangents",
            "results": root / "cache" / "results", "bench": root / "bench" / "cache",
            "partial": root / "cache"}


def cache_files(root: str | Path) -> list[CacheFile]:
    """Every cache file under ``root``, sorted by kind, then oldest first."""
    root = Path(root)
    found = []
    for top in (root / "cache", root / "bench" / "cache"):
        if not top.is_dir():
            continue
        for path in top.rglob("*"):
            kind = _kind(root, path) if path.is_file() else None
            if kind is not None:
                st = path.stat()
                found.append(CacheFile(kind, path, st.st_size, st.st_mtime))
    return sorted(found, key=lambda f: (KINDS.index(f.kind), f.modified, str(f.path)))


def summarize(root: str | Path) -> list[Summary]:
    """One line of numbers per kind, empty kinds included (0 files)."""
    files = cache_files(root)
    out = []
    for kind, folder in folders(root).items():
        mine = [f for f in files if f.kind == kind]
        out.append(Summary(kind, folder, len(mine), sum(f.size for f in mine),
                           min((f.modified for f in mine), default=None),
                           max((f.modified for f in mine), default=None)))
    return out


def parse_age(text: str) -> float:
    """``"90s"``, ``"30m"``, ``"12h"``, ``"7d"``, ``"2w"`` (a number, then a unit) in seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", str(text))
    if not m:
        raise ValueError(f"--older-than {text!r} is not an age: write a number and a unit of "
                         f"s, m, h, d or w, e.g. 7d or 12h")
    return float(m.group(1)) * _UNITS[m.group(2)]


def clear(root: str | Path, *, older_than: float | None = None, kinds: tuple[str, ...] = KINDS,
          dry_run: bool = False, now: float | None = None) -> list[CacheFile]:
    """Remove the cache files of ``kinds`` under ``root`` at least ``older_than`` seconds old
    (all when None); return them. ``dry_run`` removes nothing. Emptied folders are removed."""
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown cache kind {unknown[0]!r}: choose from {', '.join(KINDS)}")
    now = time.time() if now is None else now
    chosen = [f for f in cache_files(root) if f.kind in kinds
              and (older_than is None or now - f.modified >= older_than)]
    if not dry_run:
        for f in chosen:
            f.path.unlink(missing_ok=True)
        for top in (Path(root) / "cache", Path(root) / "bench" / "cache"):
            if top.is_dir():  # deepest first: a folder emptied by the removals goes too
                for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                    if not any(d.iterdir()):
                        d.rmdir()
    return chosen


def human_size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # pragma: no cover


def human_age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"
