"""``layerwise bench variations``: the Larochelle et al. variation sets, beside the CAE paper's
table of stacked models (``pipelines.bench.papers``).

The sets are regenerated (``pipelines.data.variations``); SVM and the MLP on DAE-3, RBM-3,
CAE-1 and CAE-2 stacks, and the MTC on the CAE-2 stack. Each stack is pretrained once (seed 0)
on the training rows; every training row is labeled.
"""
from __future__ import annotations

from pipelines.bench.cells import Cell
from pipelines.bench.papers import VARIATION_COLUMNS, VARIATIONS_PAPER
from pipelines.bench.profiles import Profile, describe
from pipelines.bench.suites.classify import classify
from pipelines.reporting.figures import bars_figure
from pipelines.reporting.tables import pivot_markdown, summary_markdown

NAME = "variations"
KEY_NAMES = ["dataset", "method"]
FIELDS = ("vpool", "vvalid", "n_test", "hidden", "pretrain", "finetune", "tangents", "svm")
METHODS = {  # ours -> (stack, fitting method, the paper's column or None)
    "svm": (None, "svm", "SVM"), "dae3": ("dae-3", "mlp", "DAE-b-3"), "rbm3": ("rbm-3", "mlp", "RBM-3"),
    "cae1": ("cae-1", "mlp", "CAE-1"), "cae2": ("cae-2", "mlp", "CAE-2"), "mtc": ("cae-2", "mtc", None)}

run_cell = classify


def cells(p: Profile) -> list[Cell]:
    return [Cell(f"{d}-{m}-s{s}", {"dataset": d, "method": m}, s,
                 {"data": d, "stack": stack, "method": method, "labels": None, "valid_cap": p.variation_valid})
            for d in p.variations for m, (stack, method, _) in METHODS.items() for s in range(p.seeds)]


def paper(keys: dict) -> float | None:
    col, row = METHODS[keys["method"]][2], VARIATIONS_PAPER.get(keys["dataset"])
    return None if col is None or row is None else row[VARIATION_COLUMNS.index(col)]


def markdown(summaries, results, p: Profile) -> str:
    title = f"Larochelle variations, test error (%), ours (paper) ({describe(p, *FIELDS)})"
    sae = ", ".join(f"{d} {row[1]}" for d, row in VARIATIONS_PAPER.items())
    notes = ["The sets are regenerated from MNIST and by the published recipes (pipelines.data.variations), "
             "not the original files: the paper's figures are a reference, not the same test set.",
             "Paper columns: svm = SVM (RBF), dae3 = DAE-b-3, rbm3 = RBM-3 (DBN), cae1 = CAE-1, cae2 = CAE-2; "
             f"convex has no published row and mtc (on the CAE-2 stack) no column there ('-'). SAE-3, paper only: {sae}.",
             "Each stack is pretrained once (seed 0) on the training rows; every training row is labeled."]
    return "\n".join([f"### {title}", "", pivot_markdown(summaries, "dataset", "method"),
                      summary_markdown(summaries, KEY_NAMES, title="All cells", notes=notes)])


def figure(summaries, results, p: Profile):
    return bars_figure(summaries, group_key="dataset", bar_key="method", ylabel="test error (%)",
                       title=f"Larochelle variations, regenerated ({p.name} profile)")


def title(p: Profile) -> str:
    return f"Larochelle variations ({describe(p, *FIELDS)})"
