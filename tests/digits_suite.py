"""A small real suite on the embedded digits, registered for one test: an SVM, an MLP on a
one-layer CAE stack and the MTC on it, at 50 and 100 labels (real Trainers, real scikit-learn),
with committed results like the suites of ``pipelines.bench.results.SCHEMAS``."""
from typing import Callable

from pipelines.bench import results as br
from pipelines.bench import suites as bs
from pipelines.bench.cells import Cell
from pipelines.bench.suites.classify import classify
from pipelines.reporting.tables import summary_markdown

METHODS = {"svm": (None, "svm"), "cae": ("cae-1", "mlp"), "mtc": ("cae-1", "mtc")}
SCHEMA = br.Schema({"method": "method", "labels": "labels"}, "test_error", "test error (%)", "valid_error")


def digits_cells(p, valid_cap: int = 100) -> list[Cell]:
    """One cell per label count (50, 100), method and seed, ids ``L50-svm-s0``."""
    return [Cell(f"L{L}-{m}-s{s}", {"labels": L, "method": m}, s,
                 {"data": "digits", "stack": stack, "method": method, "labels": L, "valid_cap": valid_cap})
            for L in (50, 100) for m, (stack, method) in METHODS.items() for s in range(p.seeds)]


def register(monkeypatch, name: str, record: Callable[[Cell], None], valid_cap: int = 100) -> None:
    """Register the suite as ``name`` for the test (``record(cell)`` sees each cell computed)."""
    def run_cell(ctx, cell):
        record(cell)
        return classify(ctx, cell)

    spec = bs.Suite(name, ["labels", "method"], lambda p: digits_cells(p, valid_cap), run_cell, lambda keys: None,
                    lambda s, r, p: summary_markdown(s, ["labels", "method"], title="digits"),
                    lambda s, r, p: None, lambda p: "digits suite")
    monkeypatch.setitem(bs.SUITES, name, spec)
    monkeypatch.setitem(br.SCHEMAS, name, SCHEMA)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
