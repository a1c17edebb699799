"""What ``layerwise run`` prints: piped, one line per finished stage with its time and no
MLflow or Lightning chatter; ``--quiet``, the table only; on a terminal, a status line
rewritten in place with the epoch, the numbers and the time left."""
import io
import os
import re
import subprocess
import sys
import time

from pipelines import progress

ARGS = ["run", "--set", "pretrain.epochs=2", "--set", "pretrain.layers.0.n_hidden=8",
        "--set", "pretrain.layers.1.n_hidden=4", "--set", "finetune.methods=[mlp]",
        "--set", "finetune.epochs=3", "--set", "baselines.methods=[knn]",
        "--set", "baselines.inputs=[pixels]"]


def _cli(tmp_path, *extra):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    out = subprocess.run([sys.executable, "-m", "pipelines.cli", *ARGS, *extra], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout, out.stderr


def test_piped_one_line_per_stage_no_chatter_and_quiet_the_table_only(tmp_path):
    out, err = _cli(tmp_path)
    lines = err.splitlines()
    timed = r" \((\d+\.\d s|\d+:\d\d)\)$"
    expected = [r"loading torch, Lightning and MLflow", r"checking the config and the data \(digits\)",
                r"pretraining layer 1 of 2 \(cae_h 64-8\): 2 epochs, train/loss [\d.]+, val/loss [\d.]+",
                r"pretraining layer 2 of 2 \(cae_h 8-4\): 2 epochs, train/loss",
                r"fine-tuning mlp: 3 epochs, train/error [\d.]+%.*val/error [\d.]+%",
                r"baseline knn"]
    for pattern in expected:
        assert any(re.match(pattern + ".*" + timed, line) for line in lines), (pattern, err)
    for chatter in ("INFO", "WARNING", "Warning", "GPU available", "\r"):
        assert chatter not in err, err
    assert out.startswith("### quickstart") and "| knn | pixels |" in out and "MLflow run" in out

    quiet, err = _cli(tmp_path, "--quiet")  # the same run again, from the cache: the table only
    assert err == ""
    assert quiet.strip() == out.split("MLflow run")[0].strip()
    assert all(line.startswith(("###", "|", "Lowest")) for line in quiet.splitlines() if line)


def test_live_status_line_rewrites_in_place(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    stream = io.StringIO()
    with progress.configure("live", stream):
        with progress.stage("cell 1 of 4", total=4, unit="cell"):
            with progress.stage("pretraining layer 1 of 2", total=10):
                progress.epoch(5, 10, **{"train/loss": 1.5, "val/error": 0.25})
                progress._display.refresh(force=True)
    text = stream.getvalue()
    status = [part for part in text.split("\r\x1b[K") if "epoch 5/10" in part]
    assert status, text
    assert "cell 1 of 4, cell 0/4 > pretraining layer 1 of 2, epoch 5/10, train/loss 1.5, val/error 25.0%" \
        in status[-1]
    assert "elapsed, ~" in status[-1] and "left]" in status[-1]
    assert "pretraining layer 1 of 2: 5 epochs, train/loss 1.5, val/error 25.0% (" in text
    assert text.endswith("\r\x1b[K")  # the status line is cleared at the end


def test_mode_follows_the_stream(monkeypatch):
    for var in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(var, raising=False)
    assert progress.mode_for(True) == "quiet"
    assert progress.mode_for(False, io.StringIO()) == "lines"

    class Tty(io.StringIO):
        def isatty(self):
            return True
    assert progress.mode_for(False, Tty()) == "live"
    monkeypatch.setenv("LOCAL_RANK", "1")  # a DDP worker: rank 0 alone reports
    assert progress.mode_for(False, Tty()) == "quiet"


def test_bench_shows_cell_i_of_n_and_the_suite_time_left(tmp_path, monkeypatch):
    from pipelines.bench.cells import Cell, CellStore, run_cells

    monkeypatch.setenv("COLUMNS", "200")
    cells = [Cell(f"c{i}", {"i": i}, 0) for i in range(3)]
    CellStore(tmp_path).save({"id": "c0", "value": 1.0})  # finished before
    seen = []

    def compute(cell):
        seen.append(progress._display._status_line())
        time.sleep(0.05)
        return {"value": 2.0}

    stream = io.StringIO()
    with progress.configure("live", stream):
        run_cells(cells, CellStore(tmp_path), compute, log=progress.note)
    assert seen[0].startswith("cell 2 of 3 (c1)") and "left" not in seen[0].split("[")[0]
    assert seen[1].startswith("cell 3 of 3 (c2), 1/2 cells done, ~0:0") and "left" in seen[1]
    text = stream.getvalue()
    assert "[1/3] c0: 1.00 (finished before)\n" in text and "[3/3] c2: 2.00 (0 s)\n" in text
