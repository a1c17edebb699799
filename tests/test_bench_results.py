"""Committed benchmark results: the results file a suite resumes from, its time report, and the
README sections generated from the files.

A small real suite on the embedded digits (an SVM, an MLP on a one-layer CAE stack, the MTC on
it; real Trainers, real scikit-learn, a real MLflow store in tmp_path) runs once, is resumed from
its results file alone on a "new machine" (no ``mlruns/``), and is refused bad files.
"""
import csv
import io
import re
import shutil
from contextlib import redirect_stdout
from dataclasses import replace
from pathlib import Path

import pytest
from digits_suite import METHODS, SCHEMA, digits_cells, register

from pipelines import tracking
from pipelines.bench import readme, results as br
from pipelines.bench import suites as bs
from pipelines.bench.cells import Cell, CellStore, run_cells
from pipelines.bench.context import STACK_SEED, bench_config
from pipelines.bench.pretraining_file import PretrainingFile
from pipelines.bench.profiles import PROFILES
from pipelines.bench.runner import run_bench
from pipelines.bench.summary import summarize
from pipelines.bench.timing_report import Ledger, run_markdown
from pipelines.stages.layer_cache import layer_digest

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT / ".." / "shared" / "data"
HAVE_MNIST = (MNIST / "mnist" / "train-images-idx3-ubyte.gz").exists()
NAME = "digits-test"
#: the tiny profile cut to seconds a cell on the 64-pixel digits
PROFILE = replace(PROFILES["tiny"], hidden=16, pretrain_epochs=1, finetune_epochs=2, patience=1,
                  n_tangents=2, variation_pool=600, variation_valid=200, n_test=300)
_cells = digits_cells


@pytest.fixture
def suite(monkeypatch):
    """The digits suite, registered as a suite with committed results; ``calls`` lists the cells
    computed."""
    calls = []
    register(monkeypatch, NAME, lambda cell: calls.append(cell.id))
    return calls


def _run(tmp_path, root: str, results: Path, profile=PROFILE):
    return run_bench(NAME, profile=profile, root=tmp_path / root, results=results, log=lambda m: None)


def _time_rows(markdown: str) -> dict[str, list[str]]:
    """The rows of the time report under a table: ``where`` -> its other columns."""
    part = markdown[markdown.index("#### Time"):]
    return {cols[0]: cols[1:] for cols in (
        [c.strip() for c in line.strip("|").split("|")] for line in part.splitlines()
        if line.startswith("| ") and "---" not in line)}


def test_results_file_written_then_resumed_on_a_new_machine(suite, tmp_path):
    results = tmp_path / "results"
    first = _run(tmp_path, "machine1", results)
    cells = _cells(PROFILE)
    assert suite == [c.id for c in cells]
    folder = results / f"{NAME}-tiny"
    assert first.results_dir == folder
    text = (folder / "cells.csv").read_text()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == SCHEMA.header[:len(rows[0])] == [
        "method", "labels", "seed", "test_error", "valid_error", "wall_s", "commit", "hardware",
        "settings", "params"]
    assert [(r["labels"], r["method"], r["seed"]) for r in rows] == [
        (str(c.keys["labels"]), c.keys["method"], "0") for c in cells]
    by_id = {r["id"]: r for r in first.results}
    for row, cell in zip(rows, cells):
        r = by_id[cell.id]
        assert float(row["test_error"]) == pytest.approx(r["value"], abs=1e-8)
        assert float(row["valid_error"]) == pytest.approx(r["valid"], abs=1e-8)
        assert 0 < float(row["wall_s"]) == pytest.approx(r["wall_s"], abs=1e-3)
        assert row["commit"] == tracking.git_commit() and row["hardware"].startswith("cpu: ")
    svm = [r for r in first.results if r["keys"]["method"] == "svm"]
    assert all(r["value"] < 30 for r in svm)  # 10 classes: chance is 90%

    # the time report: every cell computed now, its kind's sum of wall_s; the layer trained once
    # and the tangents computed inside the MTC cells; nothing counted twice (other >= 0)
    times = _time_rows(first.markdown)
    for kind in METHODS:
        rs = [r for r in first.results if r["keys"]["method"] == kind]
        assert times[f"cells: {kind}"][:2] == [str(len(rs)), f"{sum(r['wall_s'] for r in rs):.1f}"]
        assert times[f"cells: {kind}"][2:4] == ["-", "-"]
        # beside it, its counted matmul flops and their ideal seconds: none for scikit-learn's SVM;
        # the networks' fits, on 64 pixels, far from the matmul rate
        gflop, ideal = times[f"cells: {kind}"][4:]
        if kind == "svm":
            assert (gflop, ideal) == ("-", "-") and all(r["flops"] == 0 for r in rs)
        else:
            assert all(r["flops"] > 0 for r in rs) and float(gflop) == pytest.approx(sum(r['flops'] for r in rs) / 1e9, rel=5e-3)
            assert 0 <= float(ideal) < sum(r["wall_s"] for r in rs) / 10
    mtc = [r for r in first.results if r["keys"]["method"] == "mtc"]
    cae = [r for r in first.results if r["keys"]["method"] == "cae"]
    assert all(m["flops"] > c["flops"] for m, c in zip(mtc, cae))  # the tangents and their penalty
    assert "fp32 matmul rate measured at the end of the run" in first.markdown
    assert times["pretraining (layers)"][0] == "1"  # one cae-1 stack of one layer, shared
    assert float(times["pretraining (layers)"][4]) > 0 and times["pretraining (layers)"][5] != "-"
    tangents = times["tangents (inside the cells' time)"]
    assert int(tangents[0]) == 2  # one set per MTC cell (labeled set), none cached yet
    assert float(tangents[1]) <= sum(r["wall_s"] for r in first.results if r["keys"]["method"] == "mtc")
    total = float(times["this run"][1])
    assert float(times["other (data, tracking, tables)"][1]) >= 0
    assert total > sum(r["wall_s"] for r in first.results) + float(times["pretraining (layers)"][1])

    # the stack's layer, trained once, is in pretraining.csv with the ledger's seconds and its cache
    # digest; the committed table's time section adds it to the cells'
    layers = list(csv.DictReader(io.StringIO((folder / "pretraining.csv").read_text())))
    cfg = bench_config(PROFILE, "digits", "cae-1", STACK_SEED)
    assert [(r["data"], r["stack"], r["layer"], r["what"], r["epochs"]) for r in layers] == [
        ("digits", "cae-1", "1", "cae 64-16", "1")]
    assert layers[0]["settings"] == layer_digest(cfg, 0) and layers[0]["commit"] == tracking.git_commit()
    # the file keeps 3 decimals, the report 1 of the ledger's float: equal up to both roundings
    assert float(times["pretraining (layers)"][1]) == pytest.approx(float(layers[0]["wall_s"]), abs=0.051)
    assert times["pretraining (layers)"][1] != "0.0"
    recorded = _time_rows((folder / "table.md").read_text())
    assert recorded[f"pretraining digits cae-1 (cae 64-16 {float(layers[0]['wall_s']):.0f} s)"] == [
        "1", f"{float(layers[0]['wall_s']):.1f}"]
    cells_s = sum(float(r["wall_s"]) for r in rows)
    assert (f"#### Time: {cells_s + float(layers[0]['wall_s']):.1f} s: {cells_s:.1f} s of cells and "
            f"{float(layers[0]['wall_s']):.1f} s of pretraining") in (folder / "table.md").read_text()
    pretrained = (folder / "pretraining.csv").read_text()

    # the committed table is generated from the file alone
    _, _, book = readme.open_results(folder, PROFILE)
    assert (folder / "table.md").read_text() == readme.results_table(NAME, "tiny", book)
    assert "#### Time:" in (folder / "table.md").read_text() and "Hardware: cpu: " in (folder / "table.md").read_text()

    # a new machine: no mlruns/, only the results file; nothing computed, the same table
    suite.clear()
    again = _run(tmp_path, "machine2", results)
    assert suite == [] and not list((tmp_path / "machine2" / "bench").glob("*/*.json"))
    assert [r["value"] for r in again.results] == pytest.approx([by_id[c.id]["value"] for c in cells])
    assert again.markdown.split("#### Time")[0] == first.markdown.split("#### Time")[0]
    times = _time_rows(again.markdown)
    for kind in METHODS:  # loaded: the wall time the file recorded (to 1 ms) when they ran
        rs = [r for r in rows if r["method"] == kind]
        assert times[f"cells: {kind}"] == ["-", "-", str(len(rs)), f"{sum(float(r['wall_s']) for r in rs):.1f}",
                                           "-", "-"]
    assert times["pretraining (layers)"] == ["-"] * 6  # no cell to compute: no stack
    assert (folder / "cells.csv").read_text() == text
    assert (folder / "pretraining.csv").read_text() == pretrained  # nothing trained: nothing written

    # a row removed: only that cell runs again, and its row comes back in its place
    lines = text.splitlines(keepends=True)
    (folder / "cells.csv").write_text("".join(lines[:3] + lines[4:]))  # L50-mtc-s0
    _run(tmp_path, "machine3", results)
    assert suite == ["L50-mtc-s0"]
    back = (folder / "cells.csv").read_text().splitlines()
    assert [b.split(",")[:3] for b in back] == [line.split(",")[:3] for line in text.splitlines()]
    # that machine had no cache: its stack was trained again, and its row replaced, not repeated
    again_layers = list(csv.DictReader(io.StringIO((folder / "pretraining.csv").read_text())))
    assert len(again_layers) == 1 and again_layers[0]["settings"] == layers[0]["settings"]

    # more seeds extend the file; a run with fewer keeps the extra rows
    suite.clear()
    _run(tmp_path, "machine3", results, replace(PROFILE, seeds=2))
    assert sorted(suite) == sorted(c.id for c in _cells(replace(PROFILE, seeds=2)) if c.seed == 1)
    assert len((folder / "cells.csv").read_text().splitlines()) == 1 + 2 * len(cells)
    suite.clear()
    _run(tmp_path, "machine4", results)
    assert suite == [] and len((folder / "cells.csv").read_text().splitlines()) == 1 + 2 * len(cells)


def _book(tmp_path, text: str, profile=PROFILE):
    path = tmp_path / "cells.csv"
    path.write_text(text)
    cells = _cells(profile)
    return path, lambda: br.ResultsFile(path, SCHEMA, cells, bs.Suite(
        NAME, ["labels", "method"], _cells, None, None, None, None, None).cell_digests(profile, cells))


def _good_text(profile=PROFILE) -> str:
    cells = _cells(profile)
    digests = bs.Suite(NAME, ["labels", "method"], _cells, None, None, None, None, None).cell_digests(profile, cells)
    lines = [",".join(SCHEMA.header)]
    for c in cells:
        lines.append(f"{c.keys['method']},{c.keys['labels']},0,12.5,11.0,3.2,abc,cpu: x,{digests[c.id]},{{}}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace("test_error", "error", 1), r"its header is .*another suite's file.*Move the file away"),
    (lambda t: t.replace("svm,50,", "svn,50,", 1), r"line 2 \(method=svn, labels=50, seed=0\) is no cell of this suite"),
    (lambda t: t.replace(",12.5,", ",twelve,", 1), r"line 2 .* does not parse"),
    (lambda t: t.replace(",12.5,", ",nan,", 1), r"line 2 .* a finite test_error"),
    (lambda t: t.replace("svm,50,0,", "svm,50,-1,", 1), r"line 2 .* seed >= 0"),
    (lambda t: t + t.splitlines()[1] + "\n", r"line 8 .* repeats a cell"),
    (lambda t: t.replace(",{}\n", ",{},extra\n", 1), r"line 2 has not the header's 10 fields"),
    (lambda t: t.replace(",{}\n", "\n", 1), r"line 2 has not the header's 10 fields"),
])
def test_a_results_file_that_does_not_fit_is_refused_and_kept(tmp_path, edit, message):
    path, open_ = _book(tmp_path, edit(_good_text()))
    before = path.read_bytes()
    with pytest.raises(ValueError, match=message) as e:
        open_()
    assert str(path) in str(e.value) and "Nothing was written" in str(e.value)
    assert path.read_bytes() == before


def test_rows_of_other_settings_are_refused_with_the_fix(tmp_path):
    """A row whose cell ran with other settings (here: more fine-tuning epochs) is no result of
    this code: the run stops before computing, naming the digest and the commit that wrote it."""
    text = _good_text(replace(PROFILE, finetune_epochs=3))
    path, open_ = _book(tmp_path, text)
    with pytest.raises(ValueError, match=r"line 2 .* computed with other settings.*pipelines\.bench\.readme "
                                         r"--supersede.*run the commit that wrote them \(abc\)"):
        open_()
    path, open_ = _book(tmp_path, _good_text())
    assert len(open_().rows) == len(_cells(PROFILE))  # the same settings: every row read


def test_two_runs_writing_one_results_file_keep_each_others_rows(tmp_path):
    """Two parts of a suite run at once (``--only``), each opened the file before the other
    wrote: every row lands, in the suite's order."""
    path, open_ = _book(tmp_path, ",".join(SCHEMA.header) + "\n")
    first, second = open_(), open_()
    cells = _cells(PROFILE)
    for book, cell, v in ((second, cells[3], 7.0), (first, cells[0], 5.0), (second, cells[1], 6.0)):
        book.save({"id": cell.id, "keys": cell.keys, "seed": 0, "value": v, "valid": None, "wall_s": 1.0})
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    assert [(r["method"], r["labels"], r["test_error"], r["valid_error"]) for r in rows] == [
        ("svm", "50", "5", ""), ("cae", "50", "6", ""), ("svm", "100", "7", "")]
    assert open_().load(cells[1])["value"] == 6.0 and open_().load(cells[2]) is None


def test_a_run_keeps_the_rows_another_run_wrote_with_other_settings(tmp_path):
    """One run opens the file; another, started later with values selected since, writes a cell
    the first also has: the first's next save keeps that row as it is (no error, its own result
    not lost), does not take it for its own, and a run opened afterwards with the first's
    settings is refused on that line."""
    path, open_ = _book(tmp_path, ",".join(SCHEMA.header) + "\n")
    cells = _cells(PROFILE)
    first = open_()
    selected = br.ResultsFile(path, SCHEMA, cells, {c.id: "5e1ec7ed" for c in cells})
    selected.save({"id": cells[1].id, "keys": cells[1].keys, "seed": 0, "value": 4.0, "valid": None, "wall_s": 1.0})
    first.save({"id": cells[0].id, "keys": cells[0].keys, "seed": 0, "value": 5.0, "valid": None, "wall_s": 1.0})
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    assert [(r["method"], r["test_error"], r["settings"] == "5e1ec7ed") for r in rows] == [
        ("svm", "5", False), ("cae", "4", True)]
    assert first.has(cells[0]) and not first.has(cells[1]) and first.load(cells[1]) is None
    assert selected.load(cells[1])["value"] == 4.0
    with pytest.raises(ValueError, match=r"line 3 .* computed with other settings"):
        open_()


def test_pretrain_only_caches_the_stacks_and_computes_no_cell(suite, tmp_path):
    results = tmp_path / "results"
    only = run_bench(NAME, profile=PROFILE, root=tmp_path / "root", results=results, log=lambda m: None,
                     pretrain_only=True)
    folder = results / f"{NAME}-tiny"
    assert suite == [] and only.results == [] and not (folder / "cells.csv").exists()
    layers = list(csv.DictReader(io.StringIO((folder / "pretraining.csv").read_text())))
    assert [(r["stack"], r["layer"]) for r in layers] == [("cae-1", "1")]
    times = _time_rows(only.markdown)
    assert times["pretraining (layers)"][0] == "1"  # the file's 3 decimals beside the report's 1
    assert float(times["pretraining (layers)"][1]) == pytest.approx(float(layers[0]["wall_s"]), abs=0.051)
    assert "no cell computed" in only.markdown
    # the cells then run on the cached stack: its layer is loaded, not trained again
    full = _run(tmp_path, "root", results)
    assert suite == [c.id for c in _cells(PROFILE)]
    times = _time_rows(full.markdown)
    assert times["pretraining (layers)"][:3] == ["-", "-", "1"]
    assert list(csv.DictReader(io.StringIO((folder / "pretraining.csv").read_text()))) == layers


def test_pretrain_only_and_select_exclude_each_other():
    from click.testing import CliRunner

    from pipelines.cli import main

    out = CliRunner().invoke(main, ["bench", "semi-supervised", "--profile", "tiny", "--select", "mtc",
                                    "--pretrain-only"])
    assert out.exit_code != 0 and "--select and --pretrain-only exclude each other" in out.output


_LAYER = dict(data="mnist", stack="cae_h-2", what="cae_h 784-1000", epochs=50, commit="abc", hardware="cpu: x",
              settings="d1")


def test_pretraining_file_keeps_one_row_a_layer_and_each_writers_rows(tmp_path):
    path = tmp_path / "pretraining.csv"
    a, b = PretrainingFile(path), PretrainingFile(path)  # two runs that opened the file at once
    a.save(layer=2, seconds=20.0, **_LAYER)
    b.save(layer=1, seconds=10.0, **_LAYER)
    a.save(layer=2, seconds=30.5, **{**_LAYER, "settings": "d2"})  # trained again: replaced
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    assert [(r["layer"], r["wall_s"], r["settings"]) for r in rows] == [("1", "10.000", "d1"), ("2", "30.500", "d2")]
    assert [len(v) for v in PretrainingFile(path).stacks().values()] == [2]


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace("wall_s", "seconds"), "its header is .*Move the file away"),
    (lambda t: t.replace(",10.000,", ",ten,"), "line 2 does not parse"),
    (lambda t: t.replace(",10.000,", ",-1,"), "line 2 needs .* a finite wall_s >= 0"),
    (lambda t: t.replace("cae_h-2,2,", "cae_h-2,1,"), r"line 3 \(data=mnist, stack=cae_h-2, layer=1\) repeats a layer"),
    (lambda t: t + "mnist,cae_h-2,3\n", "line 4 has not the header's 9 fields"),
])
def test_a_bad_pretraining_file_is_refused_and_kept(tmp_path, edit, message):
    path = tmp_path / "pretraining.csv"
    f = PretrainingFile(path)
    f.save(layer=1, seconds=10.0, **_LAYER)
    f.save(layer=2, seconds=20.0, **_LAYER)
    bad = edit(path.read_text())
    path.write_text(bad)
    with pytest.raises(ValueError, match=message) as e:
        PretrainingFile(path)
    assert "pretraining.csv" in str(e.value) and "Nothing was written" in str(e.value)
    assert path.read_text() == bad


def test_bad_results_file_stops_the_run_before_anything_is_written(suite, tmp_path):
    folder = tmp_path / "results" / f"{NAME}-tiny"
    folder.mkdir(parents=True)
    (folder / "cells.csv").write_text("method,labels\nsvm,50\n")
    with pytest.raises(ValueError, match="cells.csv: its header is 'method,labels'"):
        _run(tmp_path, "root", tmp_path / "results")
    assert suite == [] and not (tmp_path / "root").exists()
    assert (folder / "cells.csv").read_text() == "method,labels\nsvm,50\n"


def test_cells_from_files_written_before_wall_s_keep_their_seconds(tmp_path):
    store = CellStore(tmp_path)
    cells = [Cell("a", {"method": "svm"}, 0), Cell("b", {"method": "mtc"}, 0)]
    store.save({"id": "a", "keys": cells[0].keys, "seed": 0, "value": 1.0, "seconds": 40.0})
    results = run_cells(cells, store, lambda c: {"value": 2.0, "wall_s": 5.0}, log=lambda m: None)
    times = _time_rows(run_markdown(results, {"b"}, Ledger(), 60.0, "method"))
    assert times["cells: svm"] == ["-", "-", "1", "40.0", "-", "-"]
    assert times["cells: mtc"] == ["1", "5.0", "-", "-", "-", "-"]
    assert times["other (data, tracking, tables)"][1] == "55.0"  # Eq. (1): 60 - 5 - 0


def test_readme_sections_are_what_the_committed_files_generate():
    """Every marked section of the README, and every committed table.md, is what
    ``python -m pipelines.bench.readme`` generates from the committed results files: a number
    edited by hand fails here."""
    assert readme.update(ROOT / "README.md", ROOT / "results", check=True) == []
    text = (ROOT / "README.md").read_text()
    generated, stale = readme.tables(ROOT / "results")
    assert set(re.findall(r"<!-- results:([\w.-]+) -->", text)) <= set(generated) and stale == {}


def test_readme_update_rewrites_marked_sections_only(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(ROOT / "results", results)
    name = sorted(readme.tables(results)[0])[0]
    doc = tmp_path / "README.md"
    doc.write_text(f"intro\n\n<!-- results:{name} -->\n| typed | 1.00 |\n<!-- /results -->\n\noutro\n")
    assert readme.update(doc, results, check=True) == [f"README.md: {name}"]
    assert readme.update(doc, results) == [f"README.md: {name}"]
    assert doc.read_text() == f"intro\n\n<!-- results:{name} -->\n{readme.tables(results)[0][name]}<!-- /results -->\n\noutro\n"
    assert readme.update(doc, results, check=True) == []
    doc.write_text("<!-- results:deep-autoencoder-quick -->\nx\n<!-- /results -->\n")
    with pytest.raises(ValueError, match="deep-autoencoder-quick have no results file .* remove the markers"):
        readme.update(doc, results)
    assert doc.read_text() == "<!-- results:deep-autoencoder-quick -->\nx\n<!-- /results -->\n"
    (results / "nothing-quick").mkdir()
    (results / "nothing-quick" / "cells.csv").write_text("method\n")
    with pytest.raises(ValueError, match="'nothing-quick' names no suite with committed results"):
        readme.update(doc, results)


def test_rows_of_other_settings_are_left_out_of_the_tables_until_superseded(suite, tmp_path):
    """A row whose cell this code computes otherwise (its settings digest is not the code's) is
    not tabled, and ``--check`` fails naming the file and the fix; ``--supersede`` moves that row,
    byte for byte, to ``superseded.csv``, after which the file opens for a suite run and the
    check passes; ``--check`` with ``--supersede`` is refused, nothing moved."""
    results = tmp_path / "results"
    folder = results / f"{NAME}-tiny"
    folder.mkdir(parents=True)
    lines = _good_text(PROFILES["tiny"]).splitlines(keepends=True)
    digest = lines[2].split(",")[-2]
    old = lines[2].replace(digest, "0ddd16e57000")  # L50-cae-s0, computed by an earlier code
    (folder / "cells.csv").write_text("".join([*lines[:2], old, *lines[3:]]))
    doc = tmp_path / "README.md"
    doc.write_text(f"<!-- results:{NAME}-tiny -->\n<!-- /results -->\n")
    tables, stale = readme.tables(results)
    assert stale == {f"{NAME}-tiny": 1}
    assert tables[f"{NAME}-tiny"].startswith(f"**Partial: {len(lines) - 2} of {len(lines) - 1} cells finished.**")
    assert main_output(["--readme", str(doc), "--results", str(results), "--check"]) == (1, [
        f"{NAME}-tiny", f"README.md: {NAME}-tiny",
        f"{NAME}-tiny/cells.csv: 1 rows of other settings than this code's, left out of its table "
        "(--supersede moves them to superseded.csv)"])
    with pytest.raises(ValueError, match="give one of them"):
        readme.update(doc, results, check=True, supersede=True)
    assert not (folder / "superseded.csv").exists()
    readme.update(doc, results, supersede=True)
    assert (folder / "superseded.csv").read_text() == lines[0] + old
    assert (folder / "cells.csv").read_text() == "".join([*lines[:2], *lines[3:]])
    assert readme.update(doc, results, check=True) == [] and readme.tables(results)[1] == {}
    cells = _cells(PROFILES["tiny"])
    book = br.ResultsFile(folder / "cells.csv", SCHEMA, cells, bs.SUITES[NAME].cell_digests(PROFILES["tiny"], cells))
    assert len(book.rows) == len(lines) - 2 and not book.has(cells[1])


def main_output(argv: list[str]) -> tuple[int, list[str]]:
    """``python -m pipelines.bench.readme`` in-process: its exit status and listed items."""
    out = io.StringIO()
    with redirect_stdout(out):
        rc = readme.main(argv)
    return rc, [line.strip() for line in out.getvalue().splitlines()[1:]]


def test_a_run_keeps_the_readme_section_of_its_table_in_step(suite, tmp_path):
    """As cells land, the README beside the results folder gets the suite's section rewritten
    with the table just written; the text around it and another suite's section stay as they
    were, and a README that marks no such section is not touched."""
    results = tmp_path / "results"
    other = "<!-- results:semi-supervised-quick -->\n| typed by hand | 1.00 |\n<!-- /results -->\n"
    doc = tmp_path / "README.md"
    doc.write_text(f"intro\n\n<!-- results:{NAME}-tiny -->\nstale\n<!-- /results -->\n\n{other}outro\n")
    _run(tmp_path, "machine1", results)
    table = (results / f"{NAME}-tiny" / "table.md").read_text()
    assert "svm" in table
    assert doc.read_text() == f"intro\n\n<!-- results:{NAME}-tiny -->\n{table}<!-- /results -->\n\n{other}outro\n"
    unmarked = "no generated sections here\n"
    doc.write_text(unmarked)
    _run(tmp_path, "machine2", results)
    assert doc.read_text() == unmarked
    assert readme.update_section(tmp_path / "missing.md", f"{NAME}-tiny", table) is False


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_MNIST, reason="MNIST files not found in ../shared/data/mnist")
def test_tiny_semi_supervised_regenerates_from_its_committed_files(tmp_path, monkeypatch):
    """The committed tiny semi-supervised results, on a machine with no cell files: every cell is
    read back (none computed, no stack pretrained), the committed table comes out the same."""
    committed = ROOT / "results" / "semi-supervised-tiny"
    results = tmp_path / "results"
    shutil.copytree(committed, results / committed.name)
    spec = bs.SUITES["semi-supervised"]

    def no_cell(ctx, cell):
        raise AssertionError(f"cell {cell.id} was computed")

    monkeypatch.setitem(bs.SUITES, "semi-supervised", replace(spec, run_cell=no_cell))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    res = run_bench("semi-supervised", profile="tiny", data_dir=str(MNIST), root=tmp_path / "mlruns",
                    results=results, log=lambda m: None)
    assert len(res.results) == len(spec.cells(PROFILES["tiny"]))
    for name in ("cells.csv", "table.md"):
        assert (results / committed.name / name).read_text() == (committed / name).read_text()
    summaries = summarize(res.results, spec.paper)
    assert (committed / "table.md").read_text().startswith(spec.markdown(summaries, res.results, PROFILES["tiny"]))
