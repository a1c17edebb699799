"""The MTC's tangents cached on disk: computed once per (stack, inputs, k, options), read back after.

The tangents of a 50000-image pool take minutes; the MTC's cells and reruns need the same ones
again. A file ``tangents-<key>.pt`` holds U (N, k, d) and S (N, k); the key is a sha256 of
everything they depend on, so a different stack, X, k or option misses, and a file whose stored
key or shapes do not match is recomputed and overwritten.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from finetune.tangents import ALGORITHM, OVERSAMPLE, RANK_TOL, check_options, encoder_params, tangents
from pretrain.stack import Stack

from pipelines.files import atomic_path


def _digest_tensor(h, t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def tangent_key(stack: Stack, X: torch.Tensor, k: int, **options) -> str:
    """A sha256 of everything the tangents depend on.

    The stack enters through what J depends on, each layer's unit, encoder weight and bias
    (rather than the raw state_dict, which misses the unit and, for a Gaussian RBM, sigma);
    then X's bytes, k and the options of ``tangents``, and the version of the algorithm, so
    that tangents cached by an earlier version (other random starts) are recomputed.
    """
    h = hashlib.sha256(ALGORITHM.encode())
    for W, b, unit in encoder_params(stack):
        h.update(unit.encode())
        _digest_tensor(h, W)
        _digest_tensor(h, b)
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
    key = tangent_key(stack, X, k, **options)
    path = Path(cache_dir) / f"tangents-{key[:32]}.pt"
    if path.exists():
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # unreadable (truncated by hand, older format): recompute below
            saved = None
        if (isinstance(saved, dict) and saved.get("key") == key
                and tuple(saved["U"].shape) == (len(X), k, X.shape[1])):
            return saved["U"].to(X.device), saved["S"].to(X.device)
    U, S = tangents(stack, X, k, **options, device=device)
    with atomic_path(path) as tmp:
        torch.save({"key": key, "U": U.cpu(), "S": S.cpu()}, tmp)
    return U, S
