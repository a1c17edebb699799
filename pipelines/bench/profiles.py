"""Benchmark profiles: the sizes, epochs and grids of a suite run, as data.

A profile is never a code path: ``tiny`` (seconds per cell, for tests), ``quick`` (a few minutes a
column on 2 cores: the semi-supervised suite's 13 columns took about an hour of cell time on a
busy machine, ``results/semi-supervised-quick``), ``full`` (the
papers' sizes: 1000-unit layers, the 50000-image pool, the full test set, 5 seeds).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from finetune.baselines import C_GRID, GAMMA_FACTORS
from pipelines.bench.papers import MNIST_POOL, MNIST_VALID

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
                    # 200 fine-tuning epochs of the deep autoencoder: Hinton & Salakhutdinov's
                    autoencoder_sizes=(1000, 500, 250, 30), autoencoder_epochs=200, speed_rows=60000),
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


def describe(p: Profile, *fields: str) -> str:
    """The profile's sizes as a table's title states them, e.g. "quick profile: pool 10000, ..."."""
    words = {
        "pool": f"pool {p.pool or MNIST_POOL}",
        "valid": f"validation {p.valid_cap or MNIST_VALID}" + (f" of the last {MNIST_VALID}" if p.valid_cap else ""),
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
