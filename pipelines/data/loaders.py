"""The loaders of ``ArrayDataModule``: batches that are slices of one tensor, not per-sample items.

The data is held as one tensor (``X``, and ``y`` when labeled). Each epoch draws one
permutation ``pi = randperm(n)`` from a ``torch.Generator`` seeded by (seed, epoch); batch
``b`` is rows ``pi[b B : (b + 1) B]`` gathered in one indexing call. No ``__getitem__`` per
example, no collate. The epoch number comes from the Trainer (``trainer.current_epoch``), so
a run resumed at epoch e sees exactly the permutation an uninterrupted run saw at epoch e.

Under DDP (``trainer.world_size > 1``) rank r takes the strided shard ``pi[r::world_size]`` of
the padded permutation: like ``DistributedSampler``, the permutation is first extended with its
own head to a multiple of ``world_size`` (or cut to one with ``drop_last``), so every rank has
the same number of batches and the shards together cover every example.

With ``batches_per_step`` K > 1 the training loader yields blocks (``pretrain.module.Block``) of
K consecutive batches of the same order, the rows of a block gathered in one indexing call and
cut into its batches (the last block holds what is left): a layer that takes several updates
per training step sees every batch it would see with K = 1, in the same order.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
import torch

from pretrain.checks import check_positive
from pretrain.module import Block


#: what an epoch of ``PairedLoader`` passes over once
EPOCH_OVER = ("labeled", "pool")


def _epoch_seed(seed: int, epoch: int) -> int:
    """A well-mixed 63-bit seed for (seed, epoch): nearby pairs give unrelated streams."""
    return int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def check_count(name: str, value) -> None:
    """Raise the ValueError naming ``name`` unless ``value`` is a positive integer."""
    check_positive(name, value)
    if int(value) != value:
        raise ValueError(f"{name} must be an integer, got {value!r}")


def check_epoch_over(value) -> str:
    """``value`` if it is one of ``EPOCH_OVER``; the ValueError naming the choices otherwise."""
    if value not in EPOCH_OVER:
        raise ValueError(f"epoch_over must be one of {', '.join(EPOCH_OVER)}, got {value!r}")
    return value


class SliceLoader:
    """Iterable of batches that are slices of a per-epoch permutation of one tensor.

    Parameters
    ----------
    X : (n, d) tensor.
    y : (n,) tensor or None; batches are ``x`` alone when None, else ``(x, y)``.
    extra : tensors aligned with X (n, ...), appended to each batch: ``(x, y, *extra)`` (e.g. the
        tangents of each example for the MTC).
    batch_size : rows per batch (the last batch may be smaller unless ``drop_last``).
    shuffle : permute each epoch; else the natural order.
    drop_last : drop the last incomplete batch (and, across ranks, cut instead of pad).
    seed : the permutation of epoch e is ``randperm(n)`` from a generator seeded by (seed, e).
    epoch : the epoch when ``epoch_fn`` is None; ``set_epoch`` changes it.
    epoch_fn : called at the start of each pass to read the epoch (e.g. from a Trainer).
    rank, world_size : this process's shard, ``pi[rank::world_size]`` of the padded permutation.
    batches_per_step : K; above 1 the loader yields ``Block``s of K consecutive batches.
    """

    def __init__(self, X: torch.Tensor, y: torch.Tensor | None = None, *, batch_size: int = 100,
                 shuffle: bool = True, drop_last: bool = False, seed: int = 0, epoch: int = 0,
                 epoch_fn: Callable[[], int] | None = None, rank: int = 0, world_size: int = 1,
                 extra: tuple[torch.Tensor, ...] = (), batches_per_step: int = 1):
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        check_count("batches_per_step", batches_per_step)
        if int(world_size) != world_size or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank!r}, world_size={world_size!r}")
        if y is not None and len(y) != len(X):
            raise ValueError(f"X has {len(X)} rows but y has {len(y)}")
        for i, e in enumerate(extra):
            if len(e) != len(X):
                raise ValueError(f"X has {len(X)} rows but extra tensor {i} has {len(e)}")
        self.X, self.y, self.extra = X, y, tuple(extra)
        self.batch_size, self.shuffle, self.drop_last = int(batch_size), bool(shuffle), bool(drop_last)
        self.seed, self._epoch, self.epoch_fn = int(seed), int(epoch), epoch_fn
        self.rank, self.world_size = int(rank), int(world_size)
        self.batches_per_step = int(batches_per_step)

    # -- which rows ----------------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        return int(self.epoch_fn()) if self.epoch_fn is not None else self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch used when no ``epoch_fn`` is given."""
        self._epoch = int(epoch)

    @property
    def num_rows(self) -> int:
        """Rows this rank visits per epoch (padded or cut to a multiple of world_size)."""
        n = len(self.X)
        if self.world_size == 1:
            return n
        return n // self.world_size if self.drop_last else math.ceil(n / self.world_size)

    def indices(self, epoch: int | None = None) -> torch.Tensor:
        """Row indices of this rank for ``epoch`` (default: the current one), in batch order."""
        n = len(self.X)
        epoch = self.epoch if epoch is None else int(epoch)
        if self.shuffle:
            g = torch.Generator().manual_seed(_epoch_seed(self.seed, epoch))
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        if self.world_size > 1:
            total = self.num_rows * self.world_size
            if total > n:  # pad with the permutation's own head, as DistributedSampler does
                order = torch.cat([order, order[:total - n]])
            order = order[:total][self.rank::self.world_size]
        return order

    @property
    def num_batches(self) -> int:
        """Batches of this rank per epoch."""
        rows = self.num_rows
        return rows // self.batch_size if self.drop_last else math.ceil(rows / self.batch_size)

    def __len__(self) -> int:
        """Items per epoch: batches, or blocks of ``batches_per_step`` batches."""
        return math.ceil(self.num_batches / self.batches_per_step)

    def rows_on_device(self, idx: torch.Tensor) -> torch.Tensor:
        """The epoch's row indices (CPU) on the device of the data: one host-to-device copy per
        epoch when the data is resident on an accelerator, none on the CPU."""
        return idx.to(self.X.device)

    def __iter__(self) -> Iterator:
        return self._batches()

    def batches(self, epoch: int) -> Iterator:
        """The batches of ``epoch``'s permutation, whatever the current epoch (a pool epoch of
        ``PairedLoader`` cycles through several)."""
        return self._batches(epoch)

    def _batches(self, epoch: int | None = None) -> Iterator:
        # a generator: the epoch is read at the first next(), after the Trainer has advanced it
        contiguous = not self.shuffle and self.world_size == 1
        idx = None if contiguous else self.rows_on_device(self.indices(epoch))
        B, K, n = self.batch_size, self.batches_per_step, self.num_batches
        tensors = (self.X,) + (() if self.y is None else (self.y,)) + self.extra
        for first in range(0, n, K):
            k = min(K, n - first)  # batches in this block (one when K = 1)
            if contiguous:  # views, no copy
                sl = slice(first * B, (first + k) * B)
                parts = tuple(t[sl] for t in tensors)
            else:
                rows = idx[first * B:(first + k) * B]  # a view of the index, on the data's device
                parts = tuple(t.index_select(0, rows) for t in tensors)  # one gather per tensor
            if K == 1:
                yield parts[0] if len(parts) == 1 else parts
                continue
            batches = tuple(tuple(t[j * B:(j + 1) * B] for t in parts) for j in range(k))  # views
            yield Block(first, first + k == n, tuple(b[0] if len(b) == 1 else b for b in batches))


class PairedLoader:
    """Labeled batches, each paired with a batch drawn from an unlabeled pool.

    Yields ``{"labeled": <labeled batch>, "unlabeled": (x_u, *extra_u)}``. In epoch e the
    unlabeled rows are the head of a permutation of the pool drawn from a generator seeded by
    (seed, e) (cycled when the pool is smaller than the epoch needs), so a resumed run sees what
    an uninterrupted run saw. Under DDP each rank takes its strided share of those rows.

    ``epoch_over`` says what an epoch passes over once:

    - ``"labeled"``: the labeled loader, S = len(labeled) steps, beside a fresh sample of S B_u
      pool rows;
    - ``"pool"``: the pool, S = ceil(n_u / (B_u world_size)) steps, the labeled loader cycled
      beside it: with R = ceil(S / len(labeled)) passes an epoch, pass r of epoch e takes the
      labeled permutation of epoch e R + r (cut short when S < len(labeled)), as the Ladder's and
      VAT's papers count epochs with few labels.
    """

    def __init__(self, labeled: SliceLoader, unlabeled: tuple[torch.Tensor, ...], *,
                 batch_size: int, seed: int = 0, epoch_over: str = "labeled"):
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"unlabeled batch_size must be a positive integer, got {batch_size!r}")
        check_epoch_over(epoch_over)
        n = len(unlabeled[0])
        if n == 0 or any(len(t) != n for t in unlabeled):
            raise ValueError(f"unlabeled tensors must be non-empty and aligned, got lengths "
                             f"{[len(t) for t in unlabeled]}")
        self.labeled, self.unlabeled = labeled, tuple(unlabeled)
        self.batch_size, self.seed, self.epoch_over = int(batch_size), int(seed), epoch_over

    def __len__(self) -> int:
        """S, the steps of an epoch."""
        if self.epoch_over == "labeled":
            return len(self.labeled)
        return math.ceil(len(self.unlabeled[0]) / (self.batch_size * self.labeled.world_size))

    def unlabeled_indices(self, epoch: int) -> torch.Tensor:
        n = len(self.unlabeled[0])
        world, rank = self.labeled.world_size, self.labeled.rank
        need = len(self) * self.batch_size * world
        g = torch.Generator().manual_seed(_epoch_seed(self.seed + 7919, epoch))  # apart from labeled
        order = torch.randperm(n, generator=g)
        if need > n:
            order = order.repeat(math.ceil(need / n))
        return order[:need][rank::world]

    def rows_on_device(self, idx: torch.Tensor) -> torch.Tensor:
        """The epoch's pool rows (CPU) on the device of the pool, once per epoch."""
        return idx.to(self.unlabeled[0].device)

    def __iter__(self) -> Iterator:
        return self._batches()

    def labeled_batches(self, epoch: int) -> Iterator:
        """The S labeled batches of ``epoch``: one pass, or R passes cycled (``epoch_over``)."""
        if self.epoch_over == "labeled":
            yield from self.labeled.batches(epoch)
            return
        S = len(self)
        R = math.ceil(S / len(self.labeled))
        for b, lab in enumerate(lab for r in range(R) for lab in self.labeled.batches(epoch * R + r)):
            if b == S:
                return
            yield lab

    def _batches(self) -> Iterator:
        epoch = self.labeled.epoch
        idx = self.rows_on_device(self.unlabeled_indices(epoch))
        B = self.batch_size
        for b, lab in enumerate(self.labeled_batches(epoch)):
            rows = idx[b * B:(b + 1) * B]
            yield {"labeled": lab, "unlabeled": tuple(t.index_select(0, rows) for t in self.unlabeled)}
