"""Scale-out through Lightning DDP: 2 CPU processes (gloo) run the same pipeline unchanged.

With the datamodule's strided shards, rank r's batch b under DDP holds rows
``perm[2 B b + r], perm[2 B b + 2 + r], ...``: the two ranks' batches together are exactly the
single-process batch b of size 2B. Averaged gradients then equal the single-process gradient up
to rounding, so for noise-free layers (ae, cae) and the MLP the results must agree closely.
"""
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch

pytestmark = pytest.mark.slow

COMMON = ["--set", "pretrain.epochs=2", "--set", "pretrain.layers=[{kind: ae, n_hidden: 16}, {kind: cae, n_hidden: 8}]",
          "--set", "finetune.epochs=3", "--set", "finetune.methods=[mlp]", "--set", "finetune.labels=100",
          "--set", "baselines.methods=[knn]", "--set", "baselines.inputs=[codes]", "--set", "threads=1"]


def _run(root: Path, *extra: str) -> subprocess.CompletedProcess:
    root.mkdir()
    return subprocess.run([sys.executable, "-m", "pipelines.cli", "run", *COMMON, *extra],
                          cwd=root, capture_output=True, text=True, timeout=900)


def _layers(root: Path) -> list[dict]:
    files = sorted((root / "mlruns" / "cache").glob("layer*-*.pt"))
    return [torch.load(f, weights_only=True)["state_dict"] for f in files]


def test_ddp_two_processes_match_single_process_and_log_one_run(tmp_path):
    single = _run(tmp_path / "single", "--set", "pretrain.batch_size=64", "--set", "finetune.batch_size=50")
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = _run(tmp_path / "ddp", "--set", "pretrain.batch_size=32", "--set", "finetune.batch_size=25",
               "--set", "trainer.devices=2", "--set", "trainer.strategy=ddp")
    assert ddp.returncode == 0, ddp.stderr[-3000:]

    a, b = _layers(tmp_path / "single"), _layers(tmp_path / "ddp")
    assert len(a) == len(b) == 2
    for la, lb in zip(a, b):
        for name in la:
            torch.testing.assert_close(lb[name], la[name], rtol=1e-4, atol=1e-5, msg=name)

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'ddp' / 'mlruns' / 'mlflow.db'}")
    try:
        runs = mlflow.search_runs(experiment_names=["layerwise"])
    finally:
        mlflow.set_tracking_uri(None)
    assert (runs["tags.layerwise.config"] == "quickstart").sum() == 1  # one run, not one per rank
    assert set(runs.status) == {"FINISHED"}
