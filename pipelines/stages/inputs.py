"""The dataset and the split a config names: what every entry point (run, tune, the analyses of a
finished run) reads before any stage, so that all of them see the same rows."""
from __future__ import annotations

from pipelines.config import PipelineConfig
from pipelines.data.datasets import Dataset, load_dataset
from pipelines.data.splits import Split, make_split


def config_dataset(cfg: PipelineConfig, *, download: bool | None = None) -> Dataset:
    """The dataset that ``cfg.data`` names (``download`` overrides ``cfg.data.download``)."""
    return load_dataset(cfg.data.name, data_dir=cfg.data.data_dir, path=cfg.data.path, seed=cfg.seed,
                        download=cfg.data.download if download is None else download,
                        image_shape=cfg.data.image_shape)


def config_split(ds: Dataset, cfg: PipelineConfig) -> Split:
    """The labeled / pool / validation / test split of ``ds`` that ``cfg`` asks for."""
    return make_split(ds, labels=cfg.finetune.labels, seed=cfg.seed, n_valid=cfg.data.n_valid,
                      valid_labels=cfg.data.valid_labels, n_test=cfg.data.n_test, pool=cfg.data.pool)
