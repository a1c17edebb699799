"""What the cells of a benchmark suite share: datasets cut to the profile, pretrained stacks,
layer and tangent caches, the MLflow store; and the pipeline config of each (dataset, stack).

Every stack is pretrained once, with seed ``STACK_SEED``, and shared by all the cells that use
it; the seeds of the cells draw the labels and the fine-tuning initialisations.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import mlflow
import numpy as np
import torch

from pipelines import flop_count, tracking
from pipelines.bench.papers import MNIST_VALID
from pipelines.bench.pretraining_file import PretrainingFile
from pipelines.bench.profiles import Profile
from pipelines.bench.timing_report import Ledger
from pipelines.config import LayerConfig, load_config
from pipelines.data.datasets import Dataset, load_dataset
from pipelines.data.splits import make_split
from pipelines.stages.layer_cache import layer_digest
from pipelines.stages.pretraining import layer_epochs, layer_label, pretrain_stack, tracked_layer_fitter

EXPERIMENT = "layerwise-bench"
STACK_SEED = 0


#: stacks trained jointly (``pretrain.joint``); every other stack is trained greedily
JOINT_STACKS = ("cae_h-2-joint",)


def stack_layers(p: Profile, stack: str) -> list[dict]:
    """The layer specs (``pretrain.layers``) of a named stack at the profile's width.

    ``conv-2``: 20 denoising 5x5 filters max-pooled 2x2 (20 maps of 12x12) under a CAE
    (``configs/mnist_conv.yaml``); ``psd-1``: PSD with the authors' lambda = alpha = 1
    (``configs/mnist_psd.yaml``); ``zca-cae``: ZCA whitening (eps 0.1) under a CAE with linear
    visible units (``configs/mnist_zca_cae.yaml``); ``cae_h-2-joint``: ``cae_h-2``'s layers
    trained jointly (``JOINT_STACKS``); ``relu-2``: two ReLU layers, the shape of a network trained
    from fresh weights (``vat_bn``).
    """
    ae = {"n_hidden": p.hidden, "optimizer": "adam", "lr": 1e-3}
    conv = {"kind": "conv_ae", "n_hidden": 20 * 12 * 12, "in_shape": [1, 28, 28], "maps": 20, "kernel": 5,
            "pool": 2, "corruption": "masking", "corruption_level": 0.25, "optimizer": "adam", "lr": 1e-3}
    table = {"cae_h-2": [{"kind": "cae_h", **ae}] * 2, "cae_h-2-joint": [{"kind": "cae_h", **ae}] * 2,
             "conv-2": [conv, {"kind": "cae", **ae}],
             "psd-1": [{"kind": "psd", **ae, "code_l1": 1.0, "prediction_weight": 1.0, "ista_steps": 50}],
             "zca-cae": [{"kind": "whiten", "n_hidden": 784, "whitening": "zca", "epsilon": 0.1},
                         {"kind": "cae", **ae, "visible_unit": "linear", "loss": "mse"}],
             # the shape and units of a fresh ReLU network (VAT's authors'), never pretrained
             "relu-2": [{"kind": "ae", **ae, "hidden_unit": "relu"}] * 2,
             "cae-1": [{"kind": "cae", **ae}],
             "cae-2": [{"kind": "cae", **ae}] * 2, "dae-3": [{"kind": "dae", **ae}] * 3,
             # CD-1 at lr 0.1 (Hinton's guide, 2010, sec. 4), for the small batches that
             # bench_config gives a variation pool cut small; centred (pretrain.rbm, Eqs. 14-16),
             # because a bright random background (mnist-bg-rand) puts the mean pixel far from 1/2
             "rbm-3": [{"kind": "rbm", "n_hidden": p.hidden, "lr": 0.1, "centred": True}] * 3,
             # Hinton & Salakhutdinov 2006: the code layer's RBM has linear (Gaussian) hidden units,
             # trained at a learning rate 100 times smaller than the logistic layers' 0.1
             "rbm-ae": [{"kind": "rbm", "n_hidden": n, "lr": 0.05} for n in p.autoencoder_sizes[:-1]]
             + [{"kind": "rbm", "n_hidden": p.autoencoder_sizes[-1], "hidden": "gaussian", "lr": 0.001}]}
    if stack not in table:
        raise ValueError(f"unknown stack {stack!r}: choose one of {', '.join(table)}")
    return [dict(d) for d in table[stack]]


def bench_config(p: Profile, data: str, stack: str, seed: int, experiment: str = EXPERIMENT,
                 accelerator: str = "cpu"):
    """The pipeline config of one (dataset, stack, seed): a shipped config with the profile's sizes.

    The MTC config (``mnist_mtc``) gives the fine-tuning settings of every classifier; the deep
    autoencoder's (``mnist_deep_autoencoder``) those of ``rbm-ae``. A variation set's pool cut
    small pretrains in smaller batches (at least 75 updates per epoch). ``accelerator`` is the
    Trainer flag (``cpu``, ``gpu``, ``auto``); on a GPU, ``deterministic`` becomes ``"warn"``
    (CUDA has no deterministic kernel for some backward passes).
    """
    cfg = load_config("mnist_deep_autoencoder" if stack == "rbm-ae" else "mnist_mtc")
    cfg.name = f"bench {data} {stack}"
    cfg.seed = seed
    cfg.data.name = data
    cfg.data.n_valid = MNIST_VALID if data == "mnist" else None  # the protocol's validation rows
    cfg.data.n_test = p.n_test
    cfg.pretrain.layers = [LayerConfig(**d) for d in stack_layers(p, stack)]
    if stack in JOINT_STACKS:
        cfg.pretrain.schedule = "joint"
    cfg.pretrain.epochs = p.pretrain_epochs
    if data != "mnist" and p.variation_pool is not None:
        # a pool cut small pretrains in batches that make >= 75 updates per epoch: in the
        # shipped batches of 100, a few hundred rows give each layer too few updates to learn
        cfg.pretrain.batch_size = max(10, min(cfg.pretrain.batch_size, p.variation_pool // 75))
    ft = cfg.finetune
    ft.epochs, ft.patience, ft.n_tangents = p.finetune_epochs, p.patience, p.n_tangents
    ft.deep_autoencoder_epochs = p.autoencoder_epochs
    cfg.tracking.experiment = experiment
    cfg.trainer.accelerator = accelerator
    if accelerator != "cpu":
        cfg.trainer.deterministic = "warn"
    return cfg


class Context:
    """What the cells of one suite run share: datasets, pretrained stacks, caches, tracking, and
    the ledger of where the run's time goes (``pipelines.bench.timing_report``)."""

    def __init__(self, profile: Profile, *, data_dir: str | None, root: Path, uri: str,
                 experiment_id: str, experiment: str, log: Callable[[str], None] = print,
                 accelerator: str = "cpu", ledger: Ledger | None = None,
                 pretraining: PretrainingFile | None = None, stamp: dict[str, str] | None = None):
        self.profile, self.data_dir, self.root = profile, data_dir, Path(root)
        self.accelerator = accelerator
        self.ledger = Ledger() if ledger is None else ledger
        #: the committed record of the layers trained (``pretraining_file``), with the commit
        #: and hardware of its rows
        self.pretraining, self.stamp = pretraining, stamp or {"commit": "", "hardware": ""}
        self.uri, self.experiment_id, self.experiment, self.log = uri, experiment_id, experiment, log
        self._datasets: dict = {}
        self._stacks: dict = {}

    def dataset(self, name: str):
        """The dataset, its pool cut to the profile's size (the validation rows stay last)."""
        if name not in self._datasets:
            ds = load_dataset(name, data_dir=self.data_dir, seed=0)
            n_valid = ds.n_valid
            pool = self.profile.pool if name == "mnist" else self.profile.variation_pool
            n_pool = len(ds.X) - n_valid if pool is None else min(pool, len(ds.X) - n_valid)
            rows = np.r_[0:n_pool, len(ds.X) - n_valid:len(ds.X)]
            ds = Dataset(ds.name, ds.X[rows], ds.y[rows], ds.X_test, ds.y_test, n_valid,
                         ds.image_shape, ds.n_classes, ds.source + f" (pool: first {n_pool} rows)")
            self._datasets[name] = ds
        return self._datasets[name]

    def split(self, name: str, *, labels: int | None, seed: int, valid_labels: int | None = None):
        ds = self.dataset(name)
        n_test = None if self.profile.n_test is None else min(self.profile.n_test, len(ds.X_test))
        return make_split(ds, labels=labels, seed=seed, valid_labels=valid_labels, n_test=n_test)

    def cache_dir(self, name: str) -> Path:
        """Layer and tangent caches; the pool size is in the name because the layer digest
        (``layer_cache.layer_digest``) does not see a pool cut outside the config."""
        ds = self.dataset(name)
        return self.root / "bench" / "cache" / f"{name}-pool{len(ds.X) - ds.n_valid}"

    def config(self, data: str, stack: str, seed: int):
        return bench_config(self.profile, data, stack, seed, self.experiment, self.accelerator)

    def stack(self, data: str, stack: str):
        """The stack pretrained on ``data``'s pool (seed ``STACK_SEED``), from the per-layer cache
        when it is there; one nested MLflow run per layer trained. The ledger gets the time of
        the layers trained, and the rest of ``pretrain_stack`` as the time of those loaded."""
        if (data, stack) in self._stacks:
            return self._stacks[(data, stack)]
        cfg = self.config(data, stack, STACK_SEED)
        ds, split = self.dataset(data), self.split(data, labels=None, seed=STACK_SEED)
        cache = self.cache_dir(data)
        fit_layer = tracked_layer_fitter(cfg, uri=self.uri, experiment_id=self.experiment_id,
                                         cache_dir=cache, image_shape=ds.image_shape, log=self.log)

        trained: dict[int, float] = {}  # layer index -> seconds (summed over a joint schedule's rounds)

        def timed_fit(k, *args, **kwargs) -> None:  # kwargs: the joint schedule's epochs=e
            t0 = time.perf_counter()
            fit_layer(k, *args, **kwargs)
            trained[k] = trained.get(k, 0.0) + time.perf_counter() - t0

        as_t = lambda a: torch.as_tensor(a, dtype=torch.float32)
        with tracking.start_run(f"pretrain {data} {stack}", experiment_id=self.experiment_id, nested=True), \
                flop_count.counting() as tally:  # the fits' flops: a loaded layer has none
            t0 = time.perf_counter()
            st, loaded = pretrain_stack(cfg, as_t(split.X_pool), as_t(split.X_valid), cache_dir=cache,
                                        fit_layer=timed_fit)
            rest = time.perf_counter() - t0 - sum(trained.values())
            mlflow.log_params({"sizes": "-".join(map(str, st.sizes)), "layers_from_cache": sum(loaded)})
        self.ledger.add("pretraining", sum(trained.values()), loaded=False, count=len(trained), flops=tally.flops)
        self.ledger.add("pretraining", rest, loaded=True, count=sum(loaded))
        if self.pretraining is not None:
            layers = list(st)
            for k, seconds in sorted(trained.items()):
                self.pretraining.save(data=data, stack=stack, layer=k + 1, what=layer_label(cfg, k, layers[k]),
                                      epochs=layer_epochs(cfg, k), seconds=seconds,
                                      settings=layer_digest(cfg, k), **self.stamp)
        self._stacks[(data, stack)] = st.eval()
        return self._stacks[(data, stack)]
