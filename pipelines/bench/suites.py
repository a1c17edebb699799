"""The benchmark suites: the seeds' tables (DESIGN.md section 6) as cells, profiles and papers.

Suites (``layerwise bench SUITE``):

- ``semi-supervised``: MNIST with L in {100, 600, 1000, 3000} class-balanced labels drawn by
  seed; SVM, k-NN, an MLP without pretraining (``nn``), the MLP on a CAE+H stack (``cae``),
  the MTC with its tangent penalty on the labeled set (``mtc``) and on labeled + unlabeled
  (``mtc_all``). One stack (seed 0) serves every L and seed. Two validation settings: the
  paper's (the last 10000 training images) and a realistic one of L labeled images.
- ``variations``: the Larochelle et al. sets, regenerated (``pipelines.data.variations``); SVM and
  the MLP on DAE-3, RBM-3, CAE-1 and CAE-2 stacks, and the MTC on the CAE-2 stack.
- ``knowledge-free``: MNIST with every pool label; k-NN, SVM, NN, CAE, MTC.
- ``deep-autoencoder``: an RBM-pretrained autoencoder fine-tuned on reconstruction, the same
  network without pretraining, and PCA with as many components; test squared error per image.
- ``speed``: the speed benchmarks of ``pipelines.bench_*`` gathered in one table.

A profile is data (sizes, epochs, grids), never a code path: ``tiny`` (seconds per cell, for
tests), ``quick`` (each of the first two suites within about 20 minutes on 2 cores), ``full``
(the papers' sizes: 1000-unit layers, the 50000-image pool, the full test set, 5 seeds).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from finetune.baselines import C_GRID, GAMMA_FACTORS
from pipelines.bench.runner import (
    Cell,
    Summary,
    bars_figure,
    lines_figure,
    pivot_markdown,
    to_markdown,
)

# -- profiles ------------------------------------------------------------------------------------

VARIATION_SETS = ("mnist-basic", "mnist-rot", "mnist-bg-rand", "mnist-bg-img", "mnist-bg-img-rot",
                  "rect", "rect-img", "convex")


@dataclass(frozen=True)
class Profile:
    """Sizes and epochs of a benchmark run; every suite reads the fields it needs."""

    name: str
    seeds: int                      # seeds per cell (label draws, initialisations)
    pool: int | None                # MNIST pool rows kept for pretraining; None: all 50000
    valid_cap: int | None           # MNIST selection images (class-balanced, of the last 10000
                                    # training images) in the paper's setting; None: all 10000
    n_test: int | None              # test rows (seeded, class-stratified); None: the whole test set
    labels: tuple[int, ...]         # semi-supervised label counts
    hidden: int                     # units of every pretrained classifier layer
    pretrain_epochs: int
    finetune_epochs: int
    patience: int                   # early stopping on the validation error
    n_tangents: int                 # MTC tangents per example
    svm_C: tuple[float, ...]
    svm_gamma: tuple[float, ...]    # factors of the 1 / (d var X) heuristic
    variations: tuple[str, ...]
    variation_pool: int | None      # training rows kept per variation set; None: all
    variation_valid: int | None     # class-balanced validation rows kept; None: all
    autoencoder_sizes: tuple[int, ...]
    autoencoder_epochs: int
    speed_rows: int                 # MNIST rows timed by the speed suite

    def as_dict(self) -> dict:
        return asdict(self)


PROFILES: dict[str, Profile] = {
    "tiny": Profile("tiny", seeds=1, pool=2000, valid_cap=500, n_test=500, labels=(100, 200), hidden=64,
                    pretrain_epochs=1, finetune_epochs=3, patience=2, n_tangents=4, svm_C=(10.0,),
                    svm_gamma=(1.0,), variations=("mnist-basic", "mnist-rot", "rect"),
                    variation_pool=500, variation_valid=200, autoencoder_sizes=(64, 32, 30),
                    autoencoder_epochs=2, speed_rows=1000),
    "quick": Profile("quick", seeds=1, pool=10000, valid_cap=2000, n_test=2000,
                     labels=(100, 600, 1000, 3000), hidden=500, pretrain_epochs=5, finetune_epochs=60,
                     patience=10, n_tangents=8, svm_C=(1.0, 10.0), svm_gamma=(1.0, 3.0),
                     variations=VARIATION_SETS, variation_pool=1500, variation_valid=500,
                     autoencoder_sizes=(500, 250, 125, 30), autoencoder_epochs=10, speed_rows=10000),
    "full": Profile("full", seeds=5, pool=None, valid_cap=None, n_test=None,
                    labels=(100, 600, 1000, 3000), hidden=1000, pretrain_epochs=50, finetune_epochs=200,
                    patience=40, n_tangents=15, svm_C=C_GRID, svm_gamma=GAMMA_FACTORS,
                    variations=VARIATION_SETS, variation_pool=None, variation_valid=None,
                    autoencoder_sizes=(1000, 500, 250, 30), autoencoder_epochs=50, speed_rows=60000),
}


def get_profile(profile: str | Profile, seeds: int | None = None) -> Profile:
    """A profile by name (or as given), with ``seeds`` overriding its seed count."""
    if isinstance(profile, str):
        if profile not in PROFILES:
            raise ValueError(f"unknown profile {profile!r}: choose one of {', '.join(PROFILES)}")
        profile = PROFILES[profile]
    if seeds is not None:
        if isinstance(seeds, bool) or int(seeds) != seeds or seeds < 1:
            raise ValueError(f"seeds must be a positive integer, got {seeds!r}")
        profile = replace(profile, seeds=int(seeds))
    return profile


def _describe(p: Profile, *fields: str) -> str:
    """The profile's sizes as the title states them, e.g. "quick profile: pool 10000, ..."."""
    words = {
        "pool": f"pool {p.pool or 50000}",
        "valid": f"validation {p.valid_cap or 10000}" + (" of the last 10000" if p.valid_cap else ""),
        "n_test": f"test {p.n_test or 'all'}",
        "hidden": f"{p.hidden}-unit layers", "pretrain": f"{p.pretrain_epochs} pretraining epochs",
        "finetune": f"<= {p.finetune_epochs} fine-tuning epochs (patience {p.patience})",
        "tangents": f"{p.n_tangents} tangents",
        "svm": f"SVM grid {len(p.svm_C)}x{len(p.svm_gamma)}",
        "vpool": f"training rows {p.variation_pool or 'all'}",
        "vvalid": f"validation {p.variation_valid or 'all'}",
        "ae": "784-" + "-".join(map(str, p.autoencoder_sizes)),
        "ae_epochs": f"{p.autoencoder_epochs} fine-tuning epochs",
        "rows": f"{p.speed_rows} rows",
    }
    seeds = f"{p.seeds} seed{'s' if p.seeds > 1 else ''}"
    return f"{p.name} profile: " + ", ".join([*(words[f] for f in fields), seeds])


# -- the papers' figures (DESIGN.md section 6) ------------------------------------------------------

LABELS = (100, 600, 1000, 3000)
SEMI_PAPER = {  # Rifai et al. 2011 (MTC), % test error by label count
    "NN": (25.81, 11.44, 10.7, 6.04), "SVM": (23.44, 8.85, 7.77, 4.21),
    "CNN": (22.98, 7.68, 6.45, 3.35), "TSVM": (16.81, 6.16, 5.38, 3.45),
    "EmbedNN": (16.86, 5.97, 5.73, 3.59), "CAE": (13.47, 6.3, 4.77, 3.22),
    "MTC": (12.03, 5.13, 3.64, 2.57)}
SEMI_COLUMN = {"svm": "SVM", "nn": "NN", "cae": "CAE", "mtc": "MTC", "mtc_all": "MTC"}
KNOWLEDGE_FREE_PAPER = {"knn": 3.09, "nn": 1.60, "svm": 1.40, "cae": 1.04, "mtc": 0.81}
KNOWLEDGE_FREE_CONTEXT = {"DBN": 1.17, "DBM": 0.95, "CNN": 0.95}
VARIATION_COLUMNS = ("SVM", "SAE-3", "RBM-3", "DAE-b-3", "CAE-1", "CAE-2")
VARIATIONS_PAPER = {  # Rifai et al. 2011 (CAE), % test error; convex has no row there
    "mnist-basic": (3.03, 3.46, 3.11, 2.84, 2.83, 2.48),
    "mnist-rot": (11.11, 10.30, 10.30, 9.53, 11.59, 9.66),
    "mnist-bg-rand": (14.58, 11.28, 6.73, 10.30, 13.57, 10.90),
    "mnist-bg-img": (22.61, 23.00, 16.31, 16.68, 16.70, 15.50),
    "mnist-bg-img-rot": (55.18, 51.93, 47.39, 43.76, 48.10, 45.23),
    "rect": (2.15, 2.41, 2.60, 1.99, 1.48, 1.21),
    "rect-img": (24.04, 24.05, 22.50, 21.59, 21.86, 21.54)}
VARIATION_METHODS = {  # ours -> (stack, fitting method, paper column or None)
    "svm": (None, "svm", "SVM"), "dae3": ("dae-3", "mlp", "DAE-b-3"), "rbm3": ("rbm-3", "mlp", "RBM-3"),
    "cae1": ("cae-1", "mlp", "CAE-1"), "cae2": ("cae-2", "mlp", "CAE-2"), "mtc": ("cae-2", "mtc", None)}
#: Hinton & Salakhutdinov 2006, Fig. 2 caption: squared error per MNIST test image
AUTOENCODER_PAPER = {"rbm-pretrained": 3.00, "pca": 13.87}

# -- stacks and configs ---------------------------------------------------------------------------

MNIST_VALID = 10000  # the last 10000 MNIST training images validate (DESIGN.md section 6)
STACK_SEED = 0  # every stack is pretrained once, with this seed, and shared by all cells


def stack_layers(p: Profile, stack: str) -> list[dict]:
    """The layer specs (``pretrain.layers``) of a named stack at the profile's width."""
    ae = {"n_hidden": p.hidden, "optimizer": "adam", "lr": 1e-3}
    table = {"cae_h-2": [{"kind": "cae_h", **ae}] * 2, "cae-1": [{"kind": "cae", **ae}],
             "cae-2": [{"kind": "cae", **ae}] * 2, "dae-3": [{"kind": "dae", **ae}] * 3,
             # CD-1 at lr 0.1 (Hinton's guide, 2010, sec. 4), as bench_config's small variation
             # batches give it; at 0.05 the quick DBN's rect error was 9.3 % instead of 5.5 %
             # centred (pretrain.rbm, Eqs. 14-16): on mnist-bg-rand, whose bright random background
             # puts the mean pixel far from 1/2, the plain DBN stayed at 56.6 % error (quick profile)
             "rbm-3": [{"kind": "rbm", "n_hidden": p.hidden, "lr": 0.1, "centred": True}] * 3,
             "rbm-ae": [{"kind": "rbm", "n_hidden": n, "lr": 0.01 if i == len(p.autoencoder_sizes) - 1 else 0.05}
                        for i, n in enumerate(p.autoencoder_sizes)]}
    if stack not in table:
        raise ValueError(f"unknown stack {stack!r}: choose one of {', '.join(table)}")
    return [dict(d) for d in table[stack]]


def bench_config(p: Profile, data: str, stack: str, seed: int, experiment: str = "layerwise-bench",
                 accelerator: str = "cpu"):
    """The pipeline config of one (dataset, stack, seed): a shipped config with the profile's sizes.

    The MTC config (``mnist_mtc``) gives the fine-tuning settings of every classifier; the deep
    autoencoder's (``mnist_deep_autoencoder``) those of ``rbm-ae``. A variation set's pool cut
    small pretrains in smaller batches (at least 75 updates per epoch). ``accelerator`` is the
    Trainer flag (``cpu``, ``gpu``, ``auto``); on a GPU, ``deterministic`` becomes ``"warn"``
    (CUDA has no deterministic kernel for some backward passes).
    """
    from pipelines.config import LayerConfig, load_config

    cfg = load_config("mnist_deep_autoencoder" if stack == "rbm-ae" else "mnist_mtc")
    cfg.name = f"bench {data} {stack}"
    cfg.seed = seed
    cfg.data.name = data
    cfg.data.n_valid = MNIST_VALID if data == "mnist" else None  # the protocol's validation rows
    cfg.data.n_test = p.n_test
    cfg.pretrain.layers = [LayerConfig(**d) for d in stack_layers(p, stack)]
    cfg.pretrain.epochs = p.pretrain_epochs
    if data != "mnist" and p.variation_pool is not None:
        # a variation pool cut small pretrains in batches that make >= 75 updates per epoch: in
        # batches of 100 the quick profile's 1500 rows made 15 per epoch, 75 per layer, and the
        # RBMs learned next to nothing (layer 1's reconstruction error 0.99 of the mean image's
        # on rect; the DBN fine-tuned from them at chance on rect-img)
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
    """What the cells of one suite run share: datasets, pretrained stacks, caches, tracking."""

    def __init__(self, profile: Profile, *, data_dir: str | None, root: Path, uri: str,
                 experiment_id: str, experiment: str, log: Callable[[str], None] = print,
                 accelerator: str = "cpu"):
        self.profile, self.data_dir, self.root = profile, data_dir, Path(root)
        self.accelerator = accelerator
        self.uri, self.experiment_id, self.experiment, self.log = uri, experiment_id, experiment, log
        self._datasets: dict = {}
        self._stacks: dict = {}

    def dataset(self, name: str):
        """The dataset, its pool cut to the profile's size (the validation rows stay last)."""
        if name not in self._datasets:
            from pipelines.data.datasets import Dataset, load_dataset

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
        from pipelines.data.splits import make_split

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
        when it is there; one nested MLflow run per layer trained."""
        if (data, stack) in self._stacks:
            return self._stacks[(data, stack)]
        import mlflow

        from pipelines import tracking
        from pipelines.stages.pretraining import pretrain_stack, tracked_layer_fitter

        cfg = self.config(data, stack, STACK_SEED)
        ds, split = self.dataset(data), self.split(data, labels=None, seed=STACK_SEED)
        cache = self.cache_dir(data)
        fit_layer = tracked_layer_fitter(cfg, uri=self.uri, experiment_id=self.experiment_id,
                                         cache_dir=cache, image_shape=ds.image_shape, log=self.log)

        as_t = lambda a: torch.as_tensor(a, dtype=torch.float32)
        with tracking.start_run(f"pretrain {data} {stack}", experiment_id=self.experiment_id, nested=True):
            st, loaded = pretrain_stack(cfg, as_t(split.X_pool), as_t(split.X_valid), cache_dir=cache,
                                        fit_layer=fit_layer)
            mlflow.log_params({"sizes": "-".join(map(str, st.sizes)), "layers_from_cache": sum(loaded)})
        self._stacks[(data, stack)] = st.eval()
        return self._stacks[(data, stack)]


# -- running one cell -----------------------------------------------------------------------------

def prepare(ctx: Context, cell: Cell) -> None:
    """Pretrain the cell's stack (if any) before the cell's own MLflow run opens."""
    if cell.task.get("stack") and cell.task.get("method") not in ("mlp_no_pretraining", "pca"):
        ctx.stack(cell.task["data"], cell.task["stack"])


def _valid_labels(ctx: Context, data: str, cap: int | None) -> int | None:
    """``make_split``'s ``valid_labels`` for at most ``cap`` validation rows: None (all rows) when
    the cap holds them all, else a class-balanced count the rarest class can fill."""
    ds = ctx.dataset(data)
    if cap is None or cap >= ds.n_valid:
        return None
    rarest = int(np.bincount(ds.y[len(ds.y) - ds.n_valid:], minlength=ds.n_classes).min())
    return max(1, min(cap // ds.n_classes, rarest)) * ds.n_classes


def classify(ctx: Context, cell: Cell) -> dict:
    """A classification cell: a scikit-learn baseline or a fine-tuned network; % test error."""
    from finetune.baselines import run_baseline
    from pipelines.stages.finetuning import fit_classifier

    t, p = cell.task, ctx.profile
    data, method = t["data"], t["method"]
    split = ctx.split(data, labels=t["labels"], seed=cell.seed,
                      valid_labels=_valid_labels(ctx, data, t.get("valid_cap")))
    if method in ("svm", "knn"):
        grid = {"Cs": p.svm_C, "gamma_factors": p.svm_gamma} if method == "svm" else {}
        res = run_baseline(method, split.X_lab, split.y_lab, split.X_valid, split.y_valid, split.X_test,
                           split.y_test, random_state=cell.seed, **grid)
        return {"value": 100 * res.test_error, "valid": 100 * res.valid_error, "params": res.params}
    stack = None if method == "mlp_no_pretraining" else ctx.stack(data, t["stack"])
    row = fit_classifier(ctx.config(data, t["stack"], cell.seed), split, stack=stack, method=method,
                         uri=ctx.uri, experiment_id=ctx.experiment_id, cache_dir=ctx.cache_dir(data),
                         image_shape=ctx.dataset(data).image_shape)
    return {"value": row.test, "valid": row.valid, "params": row.params}


def _semi_cells(p: Profile) -> list[Cell]:
    methods = {"svm": (None, "svm"), "knn": (None, "knn"), "nn": ("cae_h-2", "mlp_no_pretraining"),
               "cae": ("cae_h-2", "mlp"), "mtc": ("cae_h-2", "mtc"), "mtc_all": ("cae_h-2", "mtc_all")}
    cells = []
    for valid in ("paper", "realistic"):
        for L in p.labels:
            for name, (stack, method) in methods.items():
                for s in range(p.seeds):
                    cells.append(Cell(f"{valid}-L{L}-{name}-s{s}", {"validation": valid, "labels": L, "method": name},
                                      s, {"data": "mnist", "stack": stack, "method": method, "labels": L,
                                          "valid_cap": L if valid == "realistic" else p.valid_cap}))
    return cells


def _semi_paper(keys: dict) -> float | None:
    col = SEMI_COLUMN.get(keys["method"])
    return SEMI_PAPER[col][LABELS.index(keys["labels"])] if col and keys["labels"] in LABELS else None


def _semi_markdown(summaries: list[Summary], results, p: Profile) -> str:
    title = f"Semi-supervised MNIST, test error (%), ours (paper) ({_describe(p, *SEMI_FIELDS)})"
    parts = [f"### {title}", ""]
    for valid, what in (("paper", f"a large validation set ({p.valid_cap or 10000} images; the paper: 10000)"),
                        ("realistic", "a validation set of L labeled images")):
        sub = [s for s in summaries if s.keys["validation"] == valid]
        parts.append(pivot_markdown(sub, "labels", "method", title=f"selection on {what}"))
    context = "; ".join(f"{c} " + "/".join(map(str, SEMI_PAPER[c])) for c in ("CNN", "TSVM", "EmbedNN"))
    notes = ["Methods: svm, knn on pixels; nn = MLP without pretraining; cae = MLP on the CAE+H stack; "
             "mtc = MTC, tangent penalty on the labeled set; mtc_all = on labeled + unlabeled. The paper's "
             "MTC figure stands beside both MTC variants; k-NN has no figure in that table.",
             f"Paper only, for context (L = {'/'.join(map(str, LABELS))}): {context}.",
             "One stack (seed 0) is shared by every label count and seed; seeds draw the labels."]
    parts.append(to_markdown(summaries, ["validation", "labels", "method"], title="All cells", notes=notes))
    return "\n".join(parts)


SEMI_FIELDS = ("pool", "valid", "n_test", "hidden", "pretrain", "finetune", "tangents", "svm")
VAR_FIELDS = ("vpool", "vvalid", "n_test", "hidden", "pretrain", "finetune", "tangents", "svm")


def _variation_cells(p: Profile) -> list[Cell]:
    return [Cell(f"{d}-{m}-s{s}", {"dataset": d, "method": m}, s,
                 {"data": d, "stack": stack, "method": method, "labels": None, "valid_cap": p.variation_valid})
            for d in p.variations for m, (stack, method, _) in VARIATION_METHODS.items() for s in range(p.seeds)]


def _variation_paper(keys: dict) -> float | None:
    col, row = VARIATION_METHODS[keys["method"]][2], VARIATIONS_PAPER.get(keys["dataset"])
    return None if col is None or row is None else row[VARIATION_COLUMNS.index(col)]


def _variation_markdown(summaries, results, p: Profile) -> str:
    title = f"Larochelle variations, test error (%), ours (paper) ({_describe(p, *VAR_FIELDS)})"
    sae = ", ".join(f"{d} {row[1]}" for d, row in VARIATIONS_PAPER.items())
    notes = ["The sets are regenerated from MNIST and by the published recipes (pipelines.data.variations), "
             "not the original files: the paper's figures are a reference, not the same test set.",
             "Paper columns: svm = SVM (RBF), dae3 = DAE-b-3, rbm3 = RBM-3 (DBN), cae1 = CAE-1, cae2 = CAE-2; "
             f"convex has no published row and mtc (on the CAE-2 stack) no column there ('-'). SAE-3, paper only: {sae}.",
             "Each stack is pretrained once (seed 0) on the training rows; every training row is labeled."]
    return "\n".join([f"### {title}", "", pivot_markdown(summaries, "dataset", "method"),
                      to_markdown(summaries, ["dataset", "method"], title="All cells", notes=notes)])


def _kf_cells(p: Profile) -> list[Cell]:
    methods = {"knn": (None, "knn"), "svm": (None, "svm"), "nn": ("cae_h-2", "mlp_no_pretraining"),
               "cae": ("cae_h-2", "mlp"), "mtc": ("cae_h-2", "mtc")}
    return [Cell(f"{m}-s{s}", {"method": m}, s, {"data": "mnist", "stack": stack, "method": method,
                                                  "labels": None, "valid_cap": p.valid_cap})
            for m, (stack, method) in methods.items() for s in range(p.seeds)]


def _kf_markdown(summaries, results, p: Profile) -> str:
    context = ", ".join(f"{k} {v}" for k, v in KNOWLEDGE_FREE_CONTEXT.items())
    title = (f"Knowledge-free MNIST, all pool labels, test error (%) "
             f"({_describe(p, 'pool', 'valid', 'n_test', 'hidden', 'pretrain', 'finetune', 'tangents', 'svm')})")
    return to_markdown(summaries, ["method"], title=title, notes=[
        "nn = MLP without pretraining, cae = MLP on the CAE+H stack, mtc = MTC on it.",
        f"Paper only, for context: {context}."])


# -- deep autoencoder -----------------------------------------------------------------------------

N_SHOW, N_CODES = 10, 1000


def _fit_autoencoder(ctx: Context, cfg, split, stack, *, pretrained: bool):
    """As ``finetuning.fit_deep_autoencoder``, with or without the pretrained weights, returning
    the fine-tuned module (selected on the validation squared error)."""
    import mlflow
    from lightning.pytorch.loggers import MLFlowLogger

    from finetune.deep_autoencoder import DeepAutoencoder
    from pipelines.data.datamodule import ArrayDataModule
    from pipelines.training import KeepBest, make_trainer

    ft = cfg.finetune
    module = DeepAutoencoder(stack, lr=ft.lr, optimizer=ft.optimizer, pretrained=pretrained, seed=cfg.seed)
    logger = MLFlowLogger(tracking_uri=ctx.uri, run_id=mlflow.active_run().info.run_id,
                          experiment_name=ctx.experiment)
    dm = ArrayDataModule(split.X_pool, None, split.X_valid, None, batch_size=ft.batch_size, seed=cfg.seed)
    keep = KeepBest("val/squared_error", "val/rec")
    make_trainer(cfg.trainer, max_epochs=ft.deep_autoencoder_epochs, logger=logger,
                 callbacks=[keep]).fit(module, datamodule=dm)
    keep.restore(module)
    return module.eval()


def autoencode(ctx: Context, cell: Cell) -> dict:
    """A deep-autoencoder cell: test squared error per image; a few reconstructions and 2-D codes."""
    from sklearn.decomposition import PCA

    split = ctx.split("mnist", labels=None, seed=cell.seed)
    X_test = split.X_test
    n_code = ctx.profile.autoencoder_sizes[-1]
    if cell.task["method"] == "pca":
        pca = PCA(n_components=n_code, random_state=cell.seed).fit(split.X_pool)
        rec, codes = pca.inverse_transform(pca.transform(X_test)), pca.transform(X_test[:N_CODES])
    else:
        cfg = ctx.config("mnist", "rbm-ae", cell.seed)
        module = _fit_autoencoder(ctx, cfg, split, ctx.stack("mnist", "rbm-ae"),
                                  pretrained=cell.task["method"] == "rbm-pretrained")
        with torch.no_grad():
            Xt = torch.as_tensor(X_test)
            rec, codes = module.reconstruct(Xt).numpy(), module.encode(Xt[:N_CODES]).numpy()
    err = float(((rec - X_test) ** 2).sum(1).mean())  # squared error per image
    centred = codes - codes.mean(0)
    codes_2d = centred @ np.linalg.svd(centred, full_matrices=False)[2][:2].T  # first 2 principal components
    return {"value": err, "metric": "squared error per image", "params": {"n_code": n_code},
            "extra": {"originals": np.round(X_test[:N_SHOW], 3).tolist(),
                      "reconstructions": np.round(rec[:N_SHOW], 3).tolist(),
                      "codes_2d": np.round(codes_2d, 4).tolist(),
                      "code_labels": split.y_test[:N_CODES].tolist()}}


def _ae_markdown(summaries, results, p: Profile) -> str:
    title = (f"Deep autoencoder on MNIST, test squared error per image "
             f"({_describe(p, 'pool', 'n_test', 'ae', 'pretrain', 'ae_epochs')})")
    return to_markdown(summaries, ["model"], title=title, notes=[
        "rbm-pretrained: a stack of RBMs unrolled and fine-tuned on reconstruction; no-pretraining: the same "
        "network from Glorot weights; pca: PCA with as many components as the code, fitted on the pool.",
        "Paper: Hinton & Salakhutdinov 2006 (784-1000-500-250-30 with a linear code layer, the full "
        "training set); our code units are logistic."])


def autoencoder_figure(summaries, results, p: Profile):
    """Test digits and their reconstructions by each model; the codes' first 2 principal components."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    first = {r["keys"]["model"]: r for r in sorted(results, key=lambda r: r["seed"])}
    models = [m for m in ("rbm-pretrained", "no-pretraining", "pca") if m in first]
    rows = [("test", np.asarray(first[models[0]]["extra"]["originals"]))]
    rows += [(m, np.asarray(first[m]["extra"]["reconstructions"])) for m in models]
    n_scatter = len(models[:2])
    fig = Figure(figsize=(N_SHOW * 0.8 + 4.0 * n_scatter, 0.85 * len(rows) + 0.5))
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(len(rows), N_SHOW + n_scatter, width_ratios=[1] * N_SHOW + [5] * n_scatter,
                            wspace=0.1)
    for i, (name, images) in enumerate(rows):
        for j in range(min(N_SHOW, len(images))):
            ax = fig.add_subplot(grid[i, j])
            ax.imshow(images[j].reshape(28, 28), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(name, fontsize=7)
    for k, m in enumerate(models[:2]):
        ax = fig.add_subplot(grid[:, N_SHOW + k])
        xy, y = np.asarray(first[m]["extra"]["codes_2d"]), np.asarray(first[m]["extra"]["code_labels"])
        sc = ax.scatter(xy[:, 0], xy[:, 1], c=y, cmap="tab10", s=4, vmin=-0.5, vmax=9.5)
        ax.set_title(f"{m}: codes, first 2 PCs", fontsize=8)
        ax.set_xticks([]), ax.set_yticks([])
    fig.colorbar(sc, ax=ax, ticks=range(10), fraction=0.05)
    return fig


# -- speed ------------------------------------------------------------------------------------------

SPEED_BENCHMARKS = ("matmul", "batching", "autoencoder", "rbm", "tangents")


def speed(ctx: Context, cell: Cell) -> dict:
    """One speed measurement, beside its reference measured in the same run."""
    import time

    p, name = ctx.profile, cell.task["benchmark"]
    ds = ctx.dataset("mnist")
    X = np.ascontiguousarray(ds.X[:p.speed_rows])
    if name == "matmul":
        from pipelines.bench.timing.autoencoder import matmul_rate

        rate = matmul_rate(100, 784, p.hidden)
        return _speed(rate, "GFLOP/s", f"fp32 (100, 784) x (784, {p.hidden})", None, "-")
    if name == "batching":
        from pipelines.bench.timing.batching import bench_batching

        r = bench_batching(X, batch_size=100, y=ds.y[:p.speed_rows], repeats=2)
        ours, ref = r["SliceLoader (ArrayDataModule)"], r["TensorDataset + DataLoader"]
        return _speed(ours["batches_per_s"], "batches/s", "SliceLoader epoch", ref["batches_per_s"],
                      "TensorDataset + DataLoader")
    if name == "autoencoder":
        from pipelines.bench.timing.autoencoder import bench_autoencoder

        r = bench_autoencoder(X, n_hidden=p.hidden, kind="cae")
        return _speed(r["gflops"], "GFLOP/s", f"{r['what']}, Trainer epoch", r["matmul_gflops"], "matmul rate")
    if name == "rbm":
        from pipelines.bench.timing import rbm as bench_rbm

        # both return (model, wall seconds per epoch, ...); the tail has changed between versions
        ours = bench_rbm.train_lightning(torch.from_numpy(X), 1, 0)[1]
        ref = bench_rbm.train_sklearn(X, 1, 0)[1]
        n = len(X)
        return _speed(n / ours, "images/s", f"RBM 784-{bench_rbm.N_HIDDEN} CD-1, Lightning epoch", n / ref,
                      "sklearn BernoulliRBM")
    if name == "tangents":
        from finetune.tangents import tangents
        from pipelines.bench.timing import tangents as bt

        n = min(len(X), 2000)
        Xt = torch.from_numpy(X[:n])
        stack = bt.build_stack(0, 0, Xt)
        t0 = time.perf_counter()
        tangents(stack, Xt, bt.K, seed=0, method="krylov")
        ours = n / (time.perf_counter() - t0)
        n_ref = min(n, 100)
        t0 = time.perf_counter()
        bt.exact(stack, Xt[:n_ref], torch.float32)
        ref = n_ref / (time.perf_counter() - t0)
        return _speed(ours, "images/s", f"{bt.K} tangents, {'-'.join(map(str, bt.SIZES))} stack, Krylov",
                      ref, "explicit Jacobian SVD")
    raise ValueError(f"unknown speed benchmark {name!r}: choose one of {', '.join(SPEED_BENCHMARKS)}")


def _speed(value, unit, what, reference, reference_name) -> dict:
    ratio = None if not reference else value / reference
    return {"value": float(value), "metric": unit,
            "extra": {"what": what, "reference": reference, "reference_name": reference_name, "ratio": ratio}}


def _speed_markdown(summaries, results, p: Profile) -> str:
    lines = [f"### Speed, beside references measured in the same run ({_describe(p, 'rows', 'hidden')})", "",
             "| benchmark | what | ours | unit | reference | reference value | ours / reference |",
             "|---|---|---|---|---|---|---|"]
    for s in summaries:
        rs = [r for r in results if r["keys"] == s.keys]
        e = rs[0]["extra"]
        refs = [r["extra"]["reference"] for r in rs if r["extra"]["reference"]]
        ref = sum(refs) / len(refs) if refs else None
        ratio = "-" if ref is None else f"{s.mean / ref:.2f}x"
        lines.append(f"| {s.keys['benchmark']} | {e['what']} | {s.mean:.4g} | {s.metric} | "
                     f"{e['reference_name']} | {'-' if ref is None else f'{ref:.4g}'} | {ratio} |")
    return "\n".join(lines) + "\n"


# -- the suites ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Suite:
    """How a suite makes its cells, runs one, finds the paper's figure, and presents the results."""

    name: str
    key_names: list[str]
    cells: Callable[[Profile], list[Cell]]
    run_cell: Callable[[Context, Cell], dict]
    paper: Callable[[dict], float | None]
    markdown: Callable[[list[Summary], list[dict], Profile], str]
    figure: Callable
    title: Callable[[Profile], str]

    def prepare(self, ctx: Context, cell: Cell) -> None:
        prepare(ctx, cell)

    def settings(self, p: Profile) -> dict:
        """What names the results folder: the profile (not its seed count), the tasks, the configs."""
        cells = [c for c in self.cells(p) if c.seed == 0]
        stacks = sorted({(c.task["data"], c.task["stack"]) for c in cells if c.task.get("stack")})
        prof = {k: v for k, v in p.as_dict().items() if k != "seeds"}
        return {"suite": self.name, "profile": prof, "tasks": [c.task for c in cells],
                "configs": {f"{d}/{s}": bench_config(p, d, s, 0).digest("data", "pretrain", "finetune", "trainer")
                            for d, s in stacks}}


def _semi_figure(summaries, results, p):
    paper = {m: dict(zip(LABELS, SEMI_PAPER[c])) for m, c in
             (("svm", "SVM"), ("nn", "NN"), ("cae", "CAE"), ("mtc", "MTC"))}
    return lines_figure(summaries, x_key="labels", line_key="method", panel_key="validation", paper=paper,
                        ylabel="test error (%)", title=f"Semi-supervised MNIST ({p.name} profile)")


SUITES: dict[str, Suite] = {
    "semi-supervised": Suite(
        "semi-supervised", ["validation", "labels", "method"], _semi_cells, classify, _semi_paper,
        _semi_markdown, _semi_figure, lambda p: f"Semi-supervised MNIST ({_describe(p, *SEMI_FIELDS)})"),
    "variations": Suite(
        "variations", ["dataset", "method"], _variation_cells, classify, _variation_paper, _variation_markdown,
        lambda s, r, p: bars_figure(s, group_key="dataset", bar_key="method", ylabel="test error (%)",
                                    title=f"Larochelle variations, regenerated ({p.name} profile)"),
        lambda p: f"Larochelle variations ({_describe(p, *VAR_FIELDS)})"),
    "knowledge-free": Suite(
        "knowledge-free", ["method"], _kf_cells, classify, lambda k: KNOWLEDGE_FREE_PAPER.get(k["method"]),
        _kf_markdown,
        lambda s, r, p: bars_figure(s, group_key=None, bar_key="method", ylabel="test error (%)",
                                    title=f"Knowledge-free MNIST ({p.name} profile)"),
        lambda p: f"Knowledge-free MNIST ({_describe(p, 'pool', 'n_test', 'hidden', 'pretrain', 'finetune')})"),
    "deep-autoencoder": Suite(
        "deep-autoencoder", ["model"],
        lambda p: [Cell(f"{m}-s{s}", {"model": m}, s, {"data": "mnist", "stack": "rbm-ae", "method": m})
                   for m in ("rbm-pretrained", "no-pretraining", "pca") for s in range(p.seeds)],
        autoencode, lambda k: AUTOENCODER_PAPER.get(k["model"]), _ae_markdown, autoencoder_figure,
        lambda p: f"Deep autoencoder ({_describe(p, 'pool', 'ae', 'pretrain', 'ae_epochs')})"),
    "speed": Suite(
        "speed", ["benchmark"],
        lambda p: [Cell(f"{b}-s{s}", {"benchmark": b}, s, {"benchmark": b})
                   for b in SPEED_BENCHMARKS for s in range(p.seeds)],
        speed, lambda k: None, _speed_markdown, lambda s, r, p: None,
        lambda p: f"Speed ({_describe(p, 'rows', 'hidden')})"),
}
