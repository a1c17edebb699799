"""Results tables: Markdown and CSV carry every row; the verdict line compares with SVM/k-NN;
summaries over seeds are tabled beside the paper's figure."""
import csv
import io
from types import SimpleNamespace

from pipelines.reporting.tables import (
    Row,
    fmt,
    mean_std,
    summary_csv,
    summary_markdown,
    to_csv,
    to_markdown,
    verdict,
)

ROWS = [Row("mtc_all", "stack", 8.6, 9.43, params={"beta": 1.0}), Row("svm", "pixels", 11.6, 9.4),
        Row("svm", "codes", 10.2), Row("knn", "pixels", 13.8), Row("deep_autoencoder", "stack", 3.1,
                                                                    metric="squared error per image")]


def test_markdown_and_csv_hold_every_row():
    md = to_markdown(ROWS, "title")
    assert md.count("\n| ") == len(ROWS) + 1  # header + rows
    assert "| mtc_all | stack | test error (%) | 8.60 | 9.43 | beta=1 |" in md
    back = list(csv.DictReader(io.StringIO(to_csv(ROWS))))
    assert [(r["method"], float(r["test"])) for r in back] == [(r.method, r.test) for r in ROWS]


def test_verdict_compares_best_mtc_with_best_svm_and_knn():
    line = verdict(ROWS)
    assert "Lowest test error: mtc_all on stack, 8.60%" in line
    assert "below svm (codes, 10.20%)" in line and "below knn (pixels, 13.80%)" in line
    worse = [Row("mtc", "stack", 12.0), Row("svm", "pixels", 11.6), Row("knn", "pixels", 13.8)]
    assert "not below svm (pixels, 11.60%) and below knn" in verdict(worse)
    assert verdict([Row("deep_autoencoder", "stack", 3.0, metric="squared error per image")]) == ""


def test_summary_tables_take_any_summary_like_object():
    s = SimpleNamespace(keys={"method": "mtc"}, metric="test error (%)", mean=1.0, std=None, n=1,
                        paper=1.5, difference=-0.5)
    assert mean_std(s) == "1.00" and fmt(None) == "-" and fmt(float("nan")) == "-" and fmt(0.5, 1, sign=True) == "+0.5"
    assert "| mtc | 1.00 | 1 | 1.50 | -0.50 |" in summary_markdown([s], ["method"])
    assert summary_csv([s], ["method"]).splitlines()[1] == "mtc,test error (%),1,,1,1.5,-0.5"
