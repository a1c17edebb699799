"""Benchmarks: resumable cells, tables over seeds beside the papers, and each suite end to end."""
import json
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from pipelines.bench import papers
from pipelines.bench import suites as bs
from pipelines.bench.cells import Cell, CellStore, run_cells, settings_digest
from pipelines.bench.context import bench_config, stack_layers
from pipelines.bench.profiles import PROFILES, get_profile
from pipelines.bench.runner import run_bench
from pipelines.bench.suites import semi_supervised, speed, variations
from pipelines.bench.summary import summarize
from pipelines.reporting.tables import mean_std, pivot_markdown, summary_csv, summary_markdown

MNIST = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
HAVE_MNIST = (MNIST / "mnist" / "train-images-idx3-ubyte.gz").exists()


def _cells(n=4):
    return [Cell(f"c{i}", {"method": "m", "labels": i}, 0, {"i": i}) for i in range(n)]


# -- resumption -------------------------------------------------------------------------------------

def test_finished_cell_skipped_half_written_temp_ignored(tmp_path):
    store = CellStore(tmp_path)
    cells = _cells(3)
    store.save({"id": "c0", "value": 7.5, "keys": cells[0].keys, "seed": 0})
    # what a kill during atomic_write_text leaves: a temporary name, half a JSON document
    (tmp_path / ".c1.json.x1y2.tmp").write_text('{"id": "c1", "val')
    calls = []
    results = run_cells(cells, store, lambda c: calls.append(c.id) or {"value": 10.0 + c.task["i"]},
                        log=lambda m: None)
    assert calls == ["c1", "c2"]  # c0 read back, c1 computed despite its temp file
    assert [r["value"] for r in results] == [7.5, 11.0, 12.0]
    saved = json.loads((tmp_path / "c1.json").read_text())
    assert saved["value"] == 11.0 and saved["keys"] == cells[1].keys and saved["task"] == {"i": 1}


def test_interrupted_suite_resumes_at_first_missing_cell(tmp_path):
    store, cells, calls = CellStore(tmp_path), _cells(4), []

    def flaky(cell):
        calls.append(cell.id)
        if cell.id == "c2":
            raise KeyboardInterrupt  # stopped mid-suite
        return {"value": float(cell.task["i"])}

    with pytest.raises(KeyboardInterrupt):
        run_cells(cells, store, flaky, log=lambda m: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c0.json", "c1.json"]
    calls.clear()
    results = run_cells(cells, store, lambda c: calls.append(c.id) or {"value": float(c.task["i"])},
                        log=lambda m: None)
    assert calls == ["c2", "c3"] and [r["value"] for r in results] == [0.0, 1.0, 2.0, 3.0]


def test_unreadable_or_foreign_cell_file_is_recomputed(tmp_path):
    store = CellStore(tmp_path)
    (tmp_path / "c0.json").write_text("not json")
    (tmp_path / "c1.json").write_text(json.dumps({"id": "other", "value": 1.0}))
    calls = []
    run_cells(_cells(2), store, lambda c: calls.append(c.id) or {"value": 3.0}, log=lambda m: None)
    assert calls == ["c0", "c1"]


def test_a_cell_file_of_another_task_is_recomputed(tmp_path):
    """The same cell id with another task (values selected for it since) is not read back."""
    store = CellStore(tmp_path)
    first = Cell("c0", {"k": 0}, 0, {"method": "mtc", "labels": 100})
    run_cells([first], store, lambda c: {"value": 1.0}, log=lambda m: None)
    assert store.has(first) and store.load(first)["value"] == 1.0
    tuned = Cell("c0", {"k": 0}, 0, {"method": "mtc", "labels": 100, "finetune": {"beta": 0.5}})
    assert not store.has(tuned)
    calls = []
    out = run_cells([tuned], store, lambda c: calls.append(c.id) or {"value": 2.0}, log=lambda m: None)
    assert calls == ["c0"] and out[0]["value"] == 2.0 and store.load(tuned)["value"] == 2.0
    assert not store.has(first)  # the file now holds the tuned cell's result


def test_duplicate_cell_ids_and_missing_value_refused(tmp_path):
    with pytest.raises(ValueError, match="unique"):
        run_cells([Cell("a", {}, 0), Cell("a", {}, 1)], CellStore(tmp_path), lambda c: {"value": 1.0})
    with pytest.raises(ValueError, match="numeric 'value'"):
        run_cells([Cell("a", {}, 0)], CellStore(tmp_path), lambda c: {"valid": 1.0}, log=lambda m: None)
    assert not (tmp_path / "a.json").exists()


def test_results_folder_named_by_profile_sizes_not_seed_count():
    suite, quick = bs.SUITES["semi-supervised"], PROFILES["quick"]
    d = settings_digest(suite.settings(quick))
    assert d == settings_digest(suite.settings(get_profile("quick", seeds=5)))  # more seeds extend
    assert d != settings_digest(suite.settings(replace(quick, pretrain_epochs=6)))
    assert d != settings_digest(bs.SUITES["knowledge-free"].settings(quick))


def test_a_pca_cells_settings_do_not_follow_the_autoencoders_config(monkeypatch):
    """A new weight decay for the deep autoencoder's fine-tuning recomputes its network cells
    and leaves the rows of PCA and logistic PCA, which never read that config, standing."""
    suite, full = bs.SUITES["deep-autoencoder"], PROFILES["full"]
    before = suite.cell_digests(full, suite.cells(full))
    real = bs.bench_config

    def heavier(*args, **kwargs):
        cfg = real(*args, **kwargs)
        cfg.finetune.weight_decay = 1e-3
        return cfg

    monkeypatch.setattr(bs, "bench_config", heavier)
    after = suite.cell_digests(full, suite.cells(full))
    changed = sorted({c.rsplit("-s", 1)[0] for c in before if before[c] != after[c]})
    assert changed == ["no-pretraining", "rbm-pretrained"]


@pytest.mark.parametrize("suite, profile, digest", [
    ("semi-supervised", "tiny", "fe14901aa7db"), ("semi-supervised", "quick", "0bbd14f46ee9"),
    # full: renamed when the full profile's deep autoencoder took Hinton & Salakhutdinov's 200
    # fine-tuning epochs (a profile's fields are in every suite's name; no full results were
    # committed before)
    ("semi-supervised", "full", "88e34b29d957"), ("variations", "tiny", "dd349020e25e"),
    ("variations", "quick", "0f050096a944"), ("knowledge-free", "tiny", "4318b4efd1a5"),
    ("knowledge-free", "quick", "31c8050278e6"),
    # renamed when the code layer's RBM got linear (Gaussian) hidden units, as the paper's, and
    # logistic PCA joined, then when fine-tuning got a weight decay (the full profile's cells were
    # computed again) and the PCA cells stopped naming the autoencoder's stack
    ("deep-autoencoder", "tiny", "91af88bd4763"), ("deep-autoencoder", "quick", "80c59a7d25e8"),
    ("speed", "tiny", "26e41f35af23"),
    ("speed", "quick", "a3a4ea39fd23"),
    # added with the suite (issue 18), renamed when its Ladder and VAT cells came to count epochs
    # over the pool (no results of the earlier folders were committed), and when its VAT cells
    # took their authors' epsilon (the committed rows of before are in superseded.csv), and when
    # its Ladder cells took their paper's schedule (the quick rows of before go to superseded.csv
    # when the quick profile runs again; no full Ladder cell had finished)
    ("semi-supervised-modern", "tiny", "9ed243472ecb"), ("semi-supervised-modern", "quick", "01d52368339b")])
def test_results_folders_keep_their_names(suite, profile, digest):
    """The digests that name existing results folders, so that a finished run is found again."""
    assert settings_digest(bs.SUITES[suite].settings(PROFILES[profile])) == digest


# -- tables ----------------------------------------------------------------------------------------

def _synthetic():
    rows = []
    for L, vals in ((100, (12.0, 13.0, 14.0)), (600, (5.5,))):
        for m in ("mtc", "knn"):
            for s, v in enumerate(vals):
                rows.append({"id": f"{L}-{m}-{s}", "keys": {"validation": "paper", "labels": L, "method": m},
                             "seed": s, "value": v + (m == "knn"), "metric": "test error (%)"})
    return rows


def test_summaries_mean_std_and_difference_to_paper():
    sums = summarize(_synthetic(), bs.SUITES["semi-supervised"].paper)
    assert [(s.keys["labels"], s.keys["method"], s.n) for s in sums] == [
        (100, "mtc", 3), (100, "knn", 3), (600, "mtc", 1), (600, "knn", 1)]
    mtc100 = sums[0]
    assert mtc100.mean == pytest.approx(13.0) and mtc100.std == pytest.approx(1.0)  # sample std, n - 1
    assert mtc100.paper == 12.03 and mtc100.difference == pytest.approx(0.97)
    assert sums[1].paper is None and sums[1].difference is None  # k-NN: no figure in that table
    assert sums[2].std is None and sums[2].paper == 5.13 and sums[2].difference == pytest.approx(0.37)
    assert mean_std(mtc100) == "13.00 ± 1.00" and mean_std(sums[2]) == "5.50"


def test_markdown_csv_and_pivot():
    sums = summarize(_synthetic(), bs.SUITES["semi-supervised"].paper)
    md = summary_markdown(sums, ["labels", "method"], title="T", notes=["a note"])
    lines = md.splitlines()
    assert lines[0] == "### T" and "| labels | method | ours (mean ± std) | seeds | paper | ours - paper |" in lines
    assert "| 100 | mtc | 13.00 ± 1.00 | 3 | 12.03 | +0.97 |" in lines
    assert "| 100 | knn | 14.00 ± 1.00 | 3 | - | - |" in lines
    assert "| 600 | mtc | 5.50 | 1 | 5.13 | +0.37 |" in lines and lines[-1] == "a note"
    table = [line for line in lines if line.startswith("| ") and "---" not in line]
    assert len(table) == 1 + len(sums)  # header + one row per group
    csv_rows = [r.split(",") for r in summary_csv(sums, ["labels", "method"]).strip().splitlines()]
    assert csv_rows[0] == ["labels", "method", "metric", "mean", "std", "seeds", "paper", "difference"]
    assert csv_rows[1][:2] == ["100", "mtc"] and float(csv_rows[1][3]) == 13.0
    assert float(csv_rows[1][7]) == pytest.approx(0.97) and csv_rows[2][6] == ""
    assert pivot_markdown([], "labels", "method", title="selection") == "#### selection\n\nNo finished cells yet.\n"
    piv = pivot_markdown(sums, "labels", "method").splitlines()
    assert piv[0] == "| labels | mtc | knn |"
    assert piv[2] == "| 100 | 13.00 ± 1.00 (12.03) | 14.00 ± 1.00 (-) |"
    assert piv[3] == "| 600 | 5.50 (5.13) | 6.50 (-) |"


def test_modern_suite_shares_the_semi_supervised_draws_and_cites_its_papers():
    """The Ladder/VAT columns run on the semi-supervised suite's cells (same ids, so the same
    label draws and validation sets), beside the published 1.06 and 1.36 with 100 labels."""
    modern, semi = bs.SUITES["semi-supervised-modern"], bs.SUITES["semi-supervised"]
    full = PROFILES["full"]
    tasks = {c.id: c.task for c in semi.cells(full)}
    cells = modern.cells(full)
    assert {c.keys["method"] for c in cells} >= {"ladder", "ladder_pretrained", "vat", "vat_pretrained"}
    for c in cells:
        if c.keys["method"] in ("nn", "cae", "mtc_all"):
            assert tasks[c.id] == c.task  # the same cell as the semi-supervised suite's
        elif c.keys["method"].startswith("ladder"):  # epochs over the pool, as their papers count
            # them, on the Ladder paper's schedule: 150 epochs, annealed over the last 50, no stop
            assert c.task["finetune"] == {"epoch_over": "pool", "batch_size": 100, "unlabeled_batch": 100,
                                          "lr": 0.002, "epochs": 150, "patience": 150,
                                          "lr_anneal_start": 2 / 3}, c.id
            fresh = c.keys["method"] != "ladder_pretrained"
            assert c.task["method"] == ("ladder_no_pretraining" if fresh else "ladder"), c.id
            relu = c.keys["method"] == "ladder_relu"  # the authors' units, of the stack's width
            assert {d.get("hidden_unit") for d in stack_layers(full, c.task["stack"])} == ({"relu"} if relu else {None})
        elif c.keys["method"].startswith("vat_bn"):  # and the authors' batch-normalised network
            # trained as the authors train it: batches 100 + 250, lr 0.002 times 0.9 every 500 updates
            assert c.task["finetune"] == {"epoch_over": "pool", "vat_epsilon": 0.3, "vat_batch_norm": True,
                                          "batch_size": 100, "unlabeled_batch": 250, "lr": 0.002,
                                          "lr_decay": 0.9 ** (200 / 500)}, c.id
            fresh = c.keys["method"] == "vat_bn"
            assert c.task["method"] == ("vat_no_pretraining" if fresh else "vat"), c.id
            assert {d.get("hidden_unit") for d in stack_layers(full, c.task["stack"])} == ({"relu"} if fresh else {None})
        else:  # VAT with its authors' semi-supervised MNIST epsilon, not the config's default 2.0
            assert c.task["finetune"] == {"epoch_over": "pool", "vat_epsilon": 0.3}, c.id
    # the decay is per update: 500 updates of any pool's epochs give the factor 0.9, a last short
    # batch counting as an update (10001 images: 41 updates an epoch)
    from pipelines.bench.suites.semi_supervised_modern import authors_schedule
    for pool, updates in ((50000, 200), (10000, 40), (10001, 41), (100, 1)):
        assert authors_schedule(pool)["lr_decay"] ** (500 / updates) == pytest.approx(0.9, rel=1e-12), pool
    quick = {c.id: c.task.get("finetune") for c in modern.cells(PROFILES["quick"])}
    assert quick["paper-L100-vat_bn-s0"]["lr_decay"] == pytest.approx(0.9 ** (40 / 500), abs=1e-6)
    # a profile of fewer epochs than the paper's 150 runs its own, annealed over their last third
    assert (quick["paper-L100-ladder-s0"]["epochs"], quick["paper-L100-ladder-s0"]["patience"]) == (60, 60)
    key = lambda m, L=100: {"validation": "paper", "labels": L, "method": m}
    assert modern.paper(key("ladder")) == modern.paper(key("ladder_pretrained")) == modern.paper(key("ladder_relu")) == 1.06
    assert modern.paper(key("vat")) == modern.paper(key("vat_pretrained")) == modern.paper(key("vat_bn")) == 1.36
    assert modern.paper(key("vat", 600)) is None and modern.paper(key("mtc_all")) == 12.03
    assert papers.MODERN_SEMI_STD["Ladder"][100] == 0.37


def test_paper_figures_where_published():
    semi, var = bs.SUITES["semi-supervised"].paper, bs.SUITES["variations"].paper
    assert [semi({"method": "svm", "labels": L}) for L in papers.LABELS] == [23.44, 8.85, 7.77, 4.21]
    assert semi({"method": "mtc_all", "labels": 3000}) == 2.57 and semi({"method": "cae", "labels": 200}) is None
    assert var({"dataset": "mnist-bg-img-rot", "method": "dae3"}) == 43.76
    assert var({"dataset": "rect", "method": "cae2"}) == 1.21
    assert var({"dataset": "convex", "method": "svm"}) is None and var({"dataset": "rect", "method": "mtc"}) is None
    kf = bs.SUITES["knowledge-free"].paper
    assert [kf({"method": m}) for m in ("knn", "nn", "svm", "cae", "mtc")] == [3.09, 1.60, 1.40, 1.04, 0.81]


def test_semi_supervised_stacks_build_and_the_joint_one_differs_only_in_its_schedule():
    """Every stack of the semi-supervised columns builds at the profiles' sizes (the sizes chain:
    the conv layer's 20 maps of 12x12 feed the CAE), ``cae_joint`` trains ``cae``'s layers jointly,
    and ``conv`` stands beside the paper's (supervised) CNN."""
    from pipelines.stages.pretraining import build_layers

    semi = bs.SUITES["semi-supervised"]
    for p in (PROFILES["tiny"], PROFILES["full"]):
        for stack in {s for s, _ in semi_supervised.METHODS.values() if s}:
            cfg = bench_config(p, "mnist", stack, 0)
            layers = build_layers(cfg, 784)
            assert layers[-1].n_hidden == p.hidden and len(layers) == len(cfg.pretrain.layers), stack
    greedy, joint = (bench_config(PROFILES["full"], "mnist", s, 0) for s in ("cae_h-2", "cae_h-2-joint"))
    assert (greedy.pretrain.schedule, joint.pretrain.schedule) == ("greedy", "joint")
    assert greedy.pretrain.layers == joint.pretrain.layers and greedy.finetune == joint.finetune
    assert greedy.digest("pretrain") != joint.digest("pretrain")  # cached apart
    key = lambda m, L: {"validation": "realistic", "labels": L, "method": m}
    assert [semi.paper(key("conv", L)) for L in papers.LABELS] == [22.98, 7.68, 6.45, 3.35]
    assert semi.paper(key("psd", 100)) is None and semi.paper(key("cae_joint", 100)) is None


def test_quick_title_states_its_sizes():
    title = bs.SUITES["semi-supervised"].title(PROFILES["quick"])
    for words in ("quick profile", "pool 10000", "validation 2000 of the last 10000", "test 2000", "1 seed",
                  "5 pretraining epochs", "500-unit layers"):
        assert words in title
    assert "5 seeds" in bs.SUITES["variations"].title(PROFILES["full"])


# -- pretraining settings of the quick variations ------------------------------------------------------

def test_quick_variation_stacks_get_hundreds_of_pretraining_updates():
    """The quick variation pools (1000-1500 rows) pretrain in batches small enough for every
    layer to get hundreds of updates in its 5 epochs."""
    from pipelines.data.variations import SIZES

    p = PROFILES["quick"]
    for data in p.variations:
        rows = min(p.variation_pool, SIZES[data][0])
        for stack in {s for s, _, _ in variations.METHODS.values() if s}:
            cfg = bench_config(p, data, stack, 0)
            updates = cfg.pretrain.epochs * math.ceil(rows / cfg.pretrain.batch_size)
            assert updates >= 250, (data, stack, cfg.pretrain.batch_size, updates)
    full = PROFILES["full"]  # the papers' pools keep the shipped batch
    assert bench_config(full, "rect-img", "rbm-3", 0).pretrain.batch_size == 100
    assert bench_config(p, "mnist", "cae_h-2", 0).pretrain.batch_size == 100


def test_quick_rbm_settings_learn_rectangle_outlines():
    """The first RBM of the quick ``rbm-3`` stack, trained as the bench trains it (its config's
    Trainer, epochs and batch) on 1000 rect images, reconstructs them far better than the mean
    image does."""
    import torch

    from pipelines.data.datamodule import ArrayDataModule
    from pipelines.data.shapes import rectangles
    from pipelines.stages.pretraining import build_layers
    from pipelines.training import make_trainer, quiet_lightning

    quiet_lightning()
    p = PROFILES["quick"]
    cfg = bench_config(p, "rect", "rbm-3", 0)
    X = torch.from_numpy(rectangles(1000, np.random.default_rng(0))[0])  # (1000, 784) binary outlines
    torch.manual_seed(0)
    rbm = build_layers(cfg, X.shape[1])[0]
    dm = ArrayDataModule(X, batch_size=cfg.pretrain.batch_size, seed=0)
    make_trainer(cfg.trainer, max_epochs=cfg.pretrain.epochs).fit(rbm, datamodule=dm)
    with torch.no_grad():
        h = rbm.encode(X)  # (1000, 500)
        rec = ((rbm.decode(h) - X) ** 2).sum(1).mean()
    base = ((X - X.mean(0)) ** 2).sum(1).mean()  # predicting the mean image
    assert rec / base < 0.5, (rec / base).item()
    assert h.std(0).mean() > 0.1  # hidden units that tell the images apart


def test_unknown_suite_profile_and_bad_seeds():
    with pytest.raises(ValueError, match="unknown benchmark suite 'semi'"):
        run_bench("semi")
    with pytest.raises(ValueError, match="unknown profile 'fast'"):
        get_profile("fast")
    with pytest.raises(ValueError, match="seeds must be a positive integer, got 0"):
        get_profile("quick", seeds=0)


def test_run_bench_tracks_and_resumes(tmp_path, monkeypatch):
    """The runner with a synthetic suite: one parent run, a nested run per computed cell, the
    table logged; a second run computes nothing and gives the same table (its time report
    counts the cells as loaded)."""
    import mlflow

    calls = []

    def run_cell(ctx, cell):
        calls.append(cell.id)
        return {"value": 10.0 + cell.seed + cell.keys["labels"] / 100}

    fake = bs.Suite("fake", ["labels", "method"],
                    lambda p: [Cell(f"L{L}-s{s}", {"labels": L, "method": "mtc"}, s, {"L": L})
                               for L in (100, 600) for s in range(p.seeds)],
                    run_cell, bs.SUITES["semi-supervised"].paper,
                    lambda s, r, p: summary_markdown(s, ["labels", "method"], title="fake"), lambda s, r, p: None,
                    lambda p: "fake suite")
    monkeypatch.setitem(bs.SUITES, "fake", fake)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    first = run_bench("fake", profile="tiny", seeds=2, root=tmp_path, log=lambda m: None)
    assert calls == ["L100-s0", "L100-s1", "L600-s0", "L600-s1"]
    assert "| 100 | mtc | 11.50 ± 0.71 | 2 | 12.03 | -0.53 |" in first.markdown
    again = run_bench("fake", profile="tiny", seeds=2, root=tmp_path, log=lambda m: None)
    table = lambda res: res.markdown.split("#### Time")[0]
    assert len(calls) == 4 and table(again) == table(first) and again.directory == first.directory
    assert "| cells: mtc | 4 |" in first.markdown and "| cells: mtc | - | - | 4 |" in again.markdown
    assert (first.directory / "table.csv").read_text() == first.csv
    mlflow.set_tracking_uri(first.tracking_uri)
    runs = mlflow.search_runs(experiment_names=["layerwise-bench"])
    nested = runs[runs["tags.mlflow.parentRunId"] == first.run_id]
    assert sorted(nested["tags.mlflow.runName"]) == ["L100-s0", "L100-s1", "L600-s0", "L600-s1"]
    assert set(runs.status) == {"FINISHED"}
    assert mlflow.artifacts.load_text(f"runs:/{again.run_id}/results/table.md") == again.markdown
    mlflow.set_tracking_uri(None)


# -- every suite on the tiny profile -------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.skipif(not HAVE_MNIST, reason="MNIST files not found in ../shared/data/mnist")
@pytest.mark.parametrize("suite", list(bs.SUITES))
def test_suite_tiny_end_to_end(suite, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    t0 = time.perf_counter()
    res = run_bench(suite, profile="tiny", data_dir=str(MNIST), root=tmp_path, log=lambda m: None)
    cells = bs.SUITES[suite].cells(PROFILES["tiny"])
    keys = bs.SUITES[suite].key_names
    assert len(res.results) == len(cells) and len(res.summaries) == len(cells)  # one seed: a row per cell
    rows = [r for r in res.csv.strip().splitlines()[1:]]
    assert len(rows) == len(cells)
    assert res.csv.splitlines()[0].startswith(",".join(keys))
    values = [r["value"] for r in res.results]
    assert all(math.isfinite(v) for v in values)
    if suite in ("semi-supervised", "semi-supervised-modern", "variations", "knowledge-free"):
        assert "| paper |" in res.markdown and any(s.paper is not None for s in res.summaries)
        assert all(0 <= v <= 100 for v in values)
        for s in res.summaries:  # the SVM is far better than chance on every set
            if s.keys["method"] == "svm":
                chance = 50.0 if s.keys.get("dataset") in ("rect", "rect-img", "convex") else 90.0
                assert s.mean < 0.8 * chance, s
    elif suite == "deep-autoencoder":
        assert all(v > 0 for v in values) and "| paper |" in res.markdown
        err = {s.keys["model"]: s.mean for s in res.summaries}
        assert err["pca"] < 20  # 30 components keep most of a digit (predicting the mean image: ~52)
        assert err["logistic-pca"] < err["pca"]  # Hinton & Salakhutdinov's ordering: 8.01 < 13.87
    else:
        assert all(v > 0 for v in values)
        assert {r["keys"]["benchmark"] for r in res.results} == set(speed.BENCHMARKS)
        assert "-cpu-" in res.directory.name  # CPU and GPU timings never share a folder
        refs = {r["keys"]["benchmark"]: [x["name"] for x in r["extra"]["references"]] for r in res.results}
        assert refs["rbm"] == ["matmul rate at the update's shapes", "raw PyTorch loop",
                               "sklearn BernoulliRBM float32"]
        assert refs["autoencoder"] == ["matmul rate at the update's shapes", "raw PyTorch loop"]
        assert refs["vat"] == ["matmul rate at the step's widest product", "raw PyTorch loop"]
        assert refs["ladder"] == ["matmul rate at the step's widest product"]
    if suite != "speed":
        assert res.figure_path is not None and res.figure_path.stat().st_size > 10000
    print(f"{suite}: {time.perf_counter() - t0:.0f} s")


@pytest.mark.skipif(not HAVE_MNIST, reason="MNIST files not found in ../shared/data/mnist")
def test_a_network_without_pretraining_trains_no_stack(tmp_path, monkeypatch):
    """The deep autoencoder's no-pretraining cell takes its shape from the config: no layer is
    pretrained (none cached) for it, while the rbm-pretrained cell of the same call needs them."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    res = run_bench("deep-autoencoder", profile="tiny", data_dir=str(MNIST), root=tmp_path,
                    log=lambda m: None, only=["no-pretraining-s0"])
    assert [r["keys"]["model"] for r in res.results] == ["no-pretraining"]
    assert res.results[0]["value"] > 0
    cache = tmp_path / "bench" / "cache"
    assert not cache.exists() or not any(cache.rglob("layer*")), sorted(cache.rglob("*"))


@pytest.mark.parametrize("task, reads", [
    ({"stack": "cae_h-2", "method": "mlp"}, True), ({"stack": "cae_h-2", "method": "mtc_all"}, True),
    ({"stack": "rbm-ae", "method": "rbm-pretrained"}, True),
    ({"stack": "cae_h-2", "method": "mlp_no_pretraining"}, False),
    ({"stack": "cae_h-2", "method": "vat_no_pretraining"}, False),
    ({"stack": "rbm-ae", "method": "no-pretraining"}, False),
    ({"stack": "cae_h-2", "method": "mlp_greedy_supervised"}, False),  # trains its own layers
    ({"stack": "cae_h-2", "method": "pca"}, False), ({"method": "svm"}, False), ({"stack": None, "method": "mlp"}, False),
])
def test_which_cells_read_their_stacks_weights(task, reads):
    from pipelines.bench.suites.classify import uses_pretraining
    assert uses_pretraining(task) is reads
