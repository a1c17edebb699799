"""The caches: a cached rerun says so; ``cache list`` sizes; ``cache clear``; tangents in half."""
import os
import re
import time

import mlflow
import pytest
import torch
from click.testing import CliRunner

import pipelines.stages.tangent_cache as tc
from finetune.tangents import tangents
from pipelines.caches import clear, parse_age, summarize
from pipelines.cli import main
from pretrain.autoencoder import AutoEncoder
from pretrain.stack import Stack

TINY = ["pretrain.epochs=1", "pretrain.layers.0.n_hidden=16", "pretrain.layers.1.n_hidden=8",
        "finetune.epochs=2", "finetune.methods=[mlp]", "finetune.labels=100",
        "baselines.methods=[knn]", "baselines.inputs=[pixels]"]


def _sizes(folder):
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_a_cached_rerun_says_so_and_the_caches_are_listed_and_cleared(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    args = ["run", "quickstart"] + [a for s in TINY for a in ("--set", s)]
    try:
        first = CliRunner().invoke(main, args)
        assert first.exit_code == 0, first.output
        assert "not computed" not in first.output
        again = CliRunner().invoke(main, args)
        assert again.exit_code == 0, again.output
        assert ("from the cache, not computed: layer 1, layer 2, finetune mlp, baselines knn"
                in again.stderr)  # on standard error, with the progress: the table is the same
        assert again.stdout.split("MLflow run")[0] == first.stdout.split("MLflow run")[0]
        runs = mlflow.search_runs(experiment_names=["layerwise"], order_by=["start_time DESC"])
        parents = runs[runs["tags.layerwise.config"] == "quickstart"]
        assert list(parents["tags.layerwise.from_cache"]) == [
            "layer 1, layer 2, finetune mlp, baselines knn", "none"]
    finally:
        mlflow.set_tracking_uri(None)

    root = tmp_path / "mlruns"
    listed = {s.kind: s for s in summarize(root)}
    assert listed["layers"].files == 2 and listed["results"].files == 2
    assert listed["checkpoints"].files >= 2  # a layer's resume checkpoints, kept after it
    assert sum(s.size for s in listed.values()) == _sizes(root / "cache")  # the locks are empty
    out = CliRunner().invoke(main, ["cache", "list", "--root", str(root)]).output
    assert re.search(r"^layers +2 files", out, re.M) and re.search(r"^results +2 files", out, re.M)

    res = CliRunner().invoke(main, ["cache", "clear", "--root", str(root), "--older-than", "1h"])
    assert res.exit_code == 0 and "removed 0 files" in res.output  # nothing that old
    res = CliRunner().invoke(main, ["cache", "clear", "--root", str(root), "--kind", "results",
                                    "--dry-run"])
    assert "would remove 2 files" in res.output and len(list((root / "cache" / "results").iterdir())) == 2
    res = CliRunner().invoke(main, ["cache", "clear", "--root", str(root), "--kind", "results"])
    assert "removed 2 files" in res.output and not (root / "cache" / "results").exists()
    assert {s.kind: s.files for s in summarize(root)}["layers"] == 2
    res = CliRunner().invoke(main, ["cache", "clear", "--root", str(root), "--older-than", "soon"])
    assert res.exit_code == 2 and "--older-than 'soon' is not an age" in res.output


def test_clear_older_than_keeps_what_is_newer(tmp_path):
    cache = tmp_path / "cache"
    (cache / "tangents").mkdir(parents=True)
    old, new = cache / "layer1-aaaa.pt", cache / "tangents" / "tangents-bbbb.pt"
    partial = cache / ".layer2-cccc.pt.x1y2.tmp"
    for f in (old, new, partial):
        f.write_bytes(b"x" * 100)
    now = time.time()
    os.utime(old, (now - 8 * 86400, now - 8 * 86400))
    assert parse_age("7d") == 7 * 86400 and parse_age("90s") == 90 and parse_age("1.5h") == 5400
    removed = clear(tmp_path, older_than=parse_age("7d"), now=now)
    assert [f.path for f in removed] == [old]
    assert new.exists() and partial.exists()
    assert [f.kind for f in clear(tmp_path, kinds=("partial",))] == ["partial"]
    with pytest.raises(ValueError, match="unknown cache kind 'cells'"):
        clear(tmp_path, kinds=("cells",))


def test_tangents_are_stored_in_half_precision_and_a_rerun_gets_the_same(tmp_path):
    stack = Stack([AutoEncoder(64, 20, seed=0)])
    X = torch.rand(50, 64, generator=torch.Generator().manual_seed(0))
    U, S = tc.cached_tangents(stack, X, 5, tmp_path)
    exact, _ = tangents(stack, X, 5)
    assert U.dtype == torch.float32 and (U - exact).abs().max() < 1e-3  # fp16: ~5e-4 relative
    (path,) = tmp_path.iterdir()
    saved = torch.load(path, weights_only=True)
    assert saved["U"].dtype == torch.float16
    assert path.stat().st_size < 0.6 * exact.numel() * 4
    again, _ = tc.cached_tangents(stack, X, 5, tmp_path)
    assert torch.equal(again, U)  # a cached rerun trains on exactly the tangents of the first run
    # an entry written in float32 before (same key, same file) is read and rounded the same way
    torch.save({**saved, "U": exact}, path)
    old, _ = tc.cached_tangents(stack, X, 5, tmp_path)
    assert torch.equal(old, U)
