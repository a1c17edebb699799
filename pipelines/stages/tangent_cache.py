"""The MTC's tangents cached on disk: computed once per (stack, inputs, k, options), read back after.

The tangents of a 50000-image pool take minutes; the MTC's cells and reruns need the same ones
again. A file ``tangents-<key>.pt`` holds U (N, k, d) and S (N, k); the key is a sha256 of
everything they depend on, so a different stack, X, k or option misses, and a file whose stored
key or shapes do not match is recomputed and overwritten.

Size: float32 tangents are stored in half precision. For MNIST's 48000-image pool with k = 15
(d = 784) that is 1.13 GB instead of 2.26 GB; recomputing them instead (one 1000-unit CAE+H
layer, 2 CPU threads) takes about 110 s (4.5 s per 2000 images), reading them back a second,
so they stay on disk. The rounding (at most 6e-5 on the unit-length tangents) is applied on
every path, the first computation included, so a run and its cached rerun train on the same
tangents; entries written in float32 before keep their keys and are rounded as they are read.
Float64 tangents (the exact path of the tests and analyses) are stored as they are.
"""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Callable

import torch

from finetune.tangents import ALGORITHM, OVERSAMPLE, RANK_TOL, check_options, encoder_params, tangents
from pretrain.stack import Stack

from pipelines import flop_count
from pipelines.files import atomic_path

#: called as ``listener(seconds, loaded)`` after every :func:`cached_tangents` call, ``loaded``
#: True when the tangents came from the cache: how a benchmark suite learns what its tangents
#: cost without a clock threaded through fine-tuning (``pipelines.bench.timing_report``)
LISTENERS: list[Callable[[float, bool], None]] = []


def _digest_tensor(h, t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def tangent_key(stack: Stack, X: torch.Tensor, k: int, **options) -> str:
    """A sha256 of everything the tangents depend on.

    The stack enters through what J depends on, each layer's unit, encoder weight and bias
    (rather than the raw state_dict, which misses the unit and, for a Gaussian RBM, sigma), and a
    convolutional layer's geometry;
    then X's bytes, k and the options of ``tangents``, and the version of the algorithm, so
    that tangents cached by an earlier version (other random starts) are recomputed.
    """
    h = hashlib.sha256(ALGORITHM.encode())
    for W, b, unit in encoder_params(stack):
        h.update(unit.encode())
        _digest_tensor(h, W)
        _digest_tensor(h, b)
    for layer in stack:  # a convolution's geometry (padding, pooling, image shape): not in W's bytes
        cmap = getattr(layer, "encoder_map", None)
        if cmap is not None:
            h.update(repr(cmap).encode())
    _digest_tensor(h, X)
    h.update(repr((k, sorted(options.items()))).encode())
    return h.hexdigest()


def cached_tangents(stack: Stack, X: torch.Tensor, k: int, cache_dir: str | os.PathLike, *,
                    oversample: int = OVERSAMPLE, block_size: int = 1, rank_tol: float = RANK_TOL,
                    batch_size: int = 512, seed: int = 0, method: str = "auto",
                    device: str | torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``tangents(...)``, stored in ``cache_dir`` and read back on the next call with the same inputs.

    ``device`` says only where they are computed: not part of the key. Files are written
    atomically and loaded with ``weights_only=True``; an unreadable one is recomputed.
    """
    options = dict(oversample=oversample, block_size=block_size, rank_tol=rank_tol,
                   batch_size=batch_size, seed=seed, method=method)
    check_options(stack, X, k, **options)  # fail before hashing
    t0 = time.perf_counter()
    key = tangent_key(stack, X, k, **options)
    path = Path(cache_dir) / f"tangents-{key[:32]}.pt"
    if path.exists():
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # unreadable (truncated by hand, older format): recompute below
            saved = None
        if (isinstance(saved, dict) and saved.get("key") == key
                and tuple(saved["U"].shape) == (len(X), k, X.shape[1])):
            U, S = _served(_stored(saved["U"]), X.dtype).to(X.device), saved["S"].to(X.device)
            _tell(time.perf_counter() - t0, loaded=True)
            return U, S
    with flop_count.counted():  # into the open flop tallies (a benchmark cell's), if any
        U, S = tangents(stack, X, k, **options, device=device)
    stored = _stored(U.cpu())
    with atomic_path(path) as tmp:
        torch.save({"key": key, "U": stored, "S": S.cpu()}, tmp)
    _tell(time.perf_counter() - t0, loaded=False)
    return _served(stored, U.dtype).to(U.device), S


def _tell(seconds: float, *, loaded: bool) -> None:
    for listener in LISTENERS:
        listener(seconds, loaded)


def _stored(U: torch.Tensor) -> torch.Tensor:
    """U as the cache keeps it: float32 in half precision, anything else unchanged."""
    return U.to(torch.float16) if U.dtype in (torch.float32, torch.float16) else U


def _served(U: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return U.to(dtype)
