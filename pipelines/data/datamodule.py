"""In-memory arrays as a LightningDataModule whose batches are slices, not per-sample items.

The data is held as one tensor (``X``, and ``y`` when labeled); ``pipelines.data.loaders`` cuts
it into batches (one seeded permutation an epoch, a DDP rank's shard, blocks of batches).

On an accelerator the arrays can stay on the device for a whole fit (``resident``): the module
moves them once, when the Trainer sets it up, to ``trainer.strategy.root_device``, and each
batch is gathered there. The permutation of epoch e is still drawn on the CPU from the same
seeded generator and copied to the device once per epoch (the loaders' ``rows_on_device``), so
the batches, and therefore the updates, are exactly those of arrays held on the host, and a
step copies nothing from host memory. ``resident="auto"`` keeps the arrays on the device when it
is not the CPU and they take at most ``RESIDENT_SHARE`` of its free memory (CUDA reports it;
elsewhere auto stays on the host), leaving the rest to the weights, activations and optimizer.
"""
from __future__ import annotations

import lightning.pytorch as L
import numpy as np
import torch

from pipelines.data.loaders import PairedLoader, SliceLoader, check_count, check_epoch_over

_DTYPES = {"float32": torch.float32, "float64": torch.float64}

#: the largest share of an accelerator's free memory the arrays take with ``resident="auto"``
RESIDENT_SHARE = 0.5


def free_bytes(device: torch.device) -> int | None:
    """Free memory of ``device`` in bytes where torch reports it (CUDA), else None."""
    return int(torch.cuda.mem_get_info(device)[0]) if device.type == "cuda" else None


def check_resident(resident) -> None:
    """Raise the ValueError naming a ``resident`` that is not True, False or "auto"."""
    if not (isinstance(resident, bool) or resident == "auto"):
        raise ValueError(f"resident must be True, False or 'auto', got {resident!r}")


def resides(resident: bool | str, device: torch.device, nbytes: int, free: int | None) -> bool:
    """Whether arrays of ``nbytes`` in all are held on ``device`` (with ``free`` bytes free, None
    when unknown) for a fit: always for True, never for False; for "auto" when the device is not
    the CPU and ``nbytes <= RESIDENT_SHARE * free``. True with arrays larger than the free
    memory raises the ValueError that names the sizes and the fix."""
    check_resident(resident)
    if resident is True:
        if free is not None and nbytes > free:
            raise ValueError(f"resident=True: the arrays take {nbytes / 2**30:.2f} GiB but {device} "
                             f"has {free / 2**30:.2f} GiB free; use resident='auto' or False")
        return True
    if resident is False or device.type == "cpu" or free is None:
        return False
    return nbytes <= RESIDENT_SHARE * free


def _as_tensor(a, dtype: torch.dtype, what: str) -> torch.Tensor:
    """``a`` as a contiguous tensor of ``dtype``, sharing memory when it already is one."""
    if isinstance(a, torch.Tensor):
        t = a.detach()
    else:
        arr = np.asarray(a)
        if arr.dtype.kind not in "biuf":
            raise ValueError(f"{what} must be numeric, got dtype {arr.dtype}")
        if not arr.flags.writeable:  # torch.from_numpy warns on read-only arrays
            arr = arr.copy()
        t = torch.from_numpy(arr)
    if t.is_complex():
        raise ValueError(f"{what} must be real, got {t.dtype}")
    return t.to(dtype).contiguous()


def _flat(arrays) -> list[torch.Tensor]:
    """The tensors among ``arrays`` (tensors, tuples of tensors, None)."""
    return [t for a in arrays for t in (a if isinstance(a, tuple) else (a,)) if t is not None]


def _to(a, device: torch.device):
    """A tensor, a tuple of tensors or None, on ``device``."""
    if isinstance(a, tuple):
        return tuple(t.to(device) for t in a)
    return None if a is None else a.to(device)


class ArrayDataModule(L.LightningDataModule):
    """Arrays (numpy or torch) as a DataModule with :class:`SliceLoader` batches.

    Parameters
    ----------
    X_train : (n, d) training inputs.
    y_train : (n,) integer labels, or None for unsupervised training (batches are ``x``).
    X_val, y_val : validation arrays, or None (validation is then skipped).
    batch_size : rows per batch.
    seed : seed of the per-epoch permutations.
    shuffle : permute the training rows each epoch.
    drop_last : drop the last incomplete training batch.
    dtype : ``torch.float32`` (default) or ``torch.float64`` (or their names) for X.
    train_extra : tensors aligned with X_train appended to each training batch (the tangents).
    unlabeled : tensors ``(X_u, *extra_u)`` of an unlabeled pool: each training batch becomes
        ``{"labeled": ..., "unlabeled": ...}`` (see :class:`PairedLoader`).
    unlabeled_batch_size : pool rows paired with each labeled batch.
    epoch_over : what an epoch passes over once with an unlabeled pool: ``"labeled"`` (the
        labeled rows) or ``"pool"`` (the pool, the labeled batches cycled; see :class:`PairedLoader`).
    val_batch_size : rows per validation batch (default: ``batch_size``). Validation computes no
        gradients, so a larger batch changes no result and only saves per-step overhead, which
        dominates an epoch when small training batches meet a large validation set.
    resident : hold every array on the Trainer's device for the fit and gather the batches there
        (True), on the host (False), or "auto" (the default): on the device when it is not the
        CPU and the arrays take at most ``RESIDENT_SHARE`` of its free memory. The batches are
        the same either way; ``resident_device`` tells where they were held.
    batches_per_step : K; above 1 each training step gets a ``pretrain.module.Block`` of K
        consecutive batches (for a module whose ``updates_per_step`` is K; unpaired data only).
    """

    def __init__(self, X_train, y_train=None, X_val=None, y_val=None, *, batch_size: int = 100,
                 seed: int = 0, shuffle: bool = True, drop_last: bool = False,
                 dtype: torch.dtype | str = torch.float32, train_extra=(), unlabeled=None,
                 unlabeled_batch_size: int = 100, val_batch_size: int | None = None,
                 resident: bool | str = "auto", batches_per_step: int = 1, epoch_over: str = "labeled"):
        super().__init__()
        check_count("batch_size", batch_size)
        check_count("batches_per_step", batches_per_step)
        if batches_per_step > 1 and unlabeled is not None:
            raise ValueError(f"batches_per_step={batches_per_step} is for unpaired training data; "
                             "with an unlabeled pool use batches_per_step=1")
        check_resident(resident)
        if val_batch_size is not None:
            check_count("val_batch_size", val_batch_size)
        dtype = _DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
        if (X_val is None) != (y_val is None) and y_train is not None:
            raise ValueError("X_val and y_val go together for labeled data: give both or neither")
        self.X_train = self._inputs(X_train, dtype, "X_train")
        self.y_train = None if y_train is None else self._labels(y_train, len(self.X_train), "y_train", "X_train")
        self.X_val = None if X_val is None else self._inputs(X_val, dtype, "X_val")
        self.y_val = None if y_val is None else self._labels(y_val, len(self.X_val), "y_val", "X_val")
        if self.X_val is not None and self.X_val.shape[1] != self.X_train.shape[1]:
            raise ValueError(f"X_val has {self.X_val.shape[1]} features, X_train {self.X_train.shape[1]}")
        self.batch_size, self.seed, self.shuffle, self.drop_last = int(batch_size), int(seed), shuffle, drop_last
        self.dtype = dtype
        self.train_extra = tuple(_as_tensor(e, dtype, f"train_extra[{i}]") for i, e in enumerate(train_extra))
        for i, e in enumerate(self.train_extra):
            if len(e) != len(self.X_train):
                raise ValueError(f"train_extra[{i}] has {len(e)} rows but X_train has {len(self.X_train)}")
        self.unlabeled = None if unlabeled is None else tuple(
            self._inputs(u, dtype, "unlabeled[0]") if i == 0 else _as_tensor(u, dtype, f"unlabeled[{i}]")
            for i, u in enumerate(unlabeled))
        self.unlabeled_batch_size = int(unlabeled_batch_size)
        self.epoch_over = check_epoch_over(epoch_over)
        self.val_batch_size = self.batch_size if val_batch_size is None else int(val_batch_size)
        self.resident, self.batches_per_step = resident, int(batches_per_step)
        #: the arrays on the device for the fit (``setup``), None while they are on the host
        self._on_device: dict | None = None
        self.save_hyperparameters(ignore=["X_train", "y_train", "X_val", "y_val", "train_extra",
                                          "unlabeled"])

    @staticmethod
    def _inputs(X, dtype, what: str) -> torch.Tensor:
        t = _as_tensor(X, dtype, what)
        if t.ndim != 2 or len(t) == 0:
            raise ValueError(f"{what} must be a non-empty 2-D array (n, d), got shape {tuple(t.shape)}")
        if not torch.isfinite(t).all():
            raise ValueError(f"{what} has NaN or infinite values; clean the data first")
        return t

    @staticmethod
    def _labels(y, n: int, what: str, xwhat: str) -> torch.Tensor:
        t = torch.as_tensor(np.asarray(y)) if not isinstance(y, torch.Tensor) else y.detach()
        if t.ndim != 1 or len(t) != n:
            raise ValueError(f"{what} must be 1-D with one label per row of {xwhat} ({n}), got shape "
                             f"{tuple(t.shape)}")
        if t.is_floating_point() and not torch.equal(t, t.round()):
            raise ValueError(f"{what} must hold integer class labels")
        t = t.to(torch.int64).contiguous()
        if len(t) and t.min() < 0:
            raise ValueError(f"{what} has negative labels (min {int(t.min())}); labels are 0..K-1")
        return t

    # -- where the arrays are held --------------------------------------------------------------
    def _arrays(self) -> dict:
        """Every array by name (tuples for the extras, None when absent), where it is held now."""
        if self._on_device is not None:
            return self._on_device
        return {"X_train": self.X_train, "y_train": self.y_train, "X_val": self.X_val,
                "y_val": self.y_val, "train_extra": self.train_extra, "unlabeled": self.unlabeled}

    @property
    def resident_device(self) -> torch.device | None:
        """The device the arrays are held on for the fit, None while they are on the host."""
        return None if self._on_device is None else self._on_device["X_train"].device

    def setup(self, stage: str) -> None:
        """Move the arrays once to the Trainer's device when ``resident`` says so."""
        if self.trainer is None or self._on_device is not None:
            return
        device, host = self.trainer.strategy.root_device, self._arrays()
        nbytes = sum(t.numel() * t.element_size() for t in _flat(host.values()))
        if resides(self.resident, device, nbytes, free_bytes(device)):
            self._on_device = {k: _to(v, device) for k, v in host.items()}

    def teardown(self, stage: str) -> None:
        """Free the device's copies when the Trainer is done."""
        self._on_device = None

    # -- the Trainer's view ----------------------------------------------------------------------
    def _epoch(self) -> int:
        return self.trainer.current_epoch if self.trainer is not None else 0

    def _shard(self) -> tuple[int, int]:
        t = self.trainer
        return (t.global_rank, t.world_size) if t is not None else (0, 1)

    def train_dataloader(self) -> SliceLoader | PairedLoader:
        rank, world = self._shard()
        a = self._arrays()
        labeled = SliceLoader(a["X_train"], a["y_train"], batch_size=self.batch_size,
                              shuffle=self.shuffle, drop_last=self.drop_last, seed=self.seed,
                              epoch_fn=self._epoch, rank=rank, world_size=world,
                              extra=a["train_extra"], batches_per_step=self.batches_per_step)
        if a["unlabeled"] is None:
            return labeled
        return PairedLoader(labeled, a["unlabeled"], batch_size=self.unlabeled_batch_size,
                            seed=self.seed, epoch_over=self.epoch_over)

    def val_dataloader(self) -> SliceLoader | list:
        a = self._arrays()
        if a["X_val"] is None:
            return []  # Lightning runs no validation for an empty list
        rank, world = self._shard()
        return SliceLoader(a["X_val"], a["y_val"], batch_size=self.val_batch_size, shuffle=False,
                           drop_last=False, seed=self.seed, rank=rank, world_size=world)
