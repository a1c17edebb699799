"""``layerwise bench knowledge-free``: MNIST with every pool label, beside the MTC paper's
knowledge-free MNIST table (``pipelines.bench.papers``): k-NN, SVM, an MLP without pretraining
(``nn``), the same MLP after greedy layer-wise supervised pretraining (``greedy_sup``), the MLP
on a CAE+H stack (``cae``; hidden layers frozen, ``cae_frozen``; with the reconstruction term,
``cae_rec``) and the MTC on it; and the deep belief net (``dbn``: the MLP on a stack of three
RBMs, ``rbm-3``)."""
from __future__ import annotations

from pipelines.bench.cells import Cell
from pipelines.bench.papers import KNOWLEDGE_FREE_CONTEXT, KNOWLEDGE_FREE_PAPER
from pipelines.bench.profiles import Profile, describe
from pipelines.bench.suites.classify import classify
from pipelines.reporting.figures import bars_figure
from pipelines.reporting.tables import summary_markdown

NAME = "knowledge-free"
KEY_NAMES = ["method"]
#: the columns added after the suite's results folders existed (``Suite.added_columns``)
ADDED_COLUMNS = ("greedy_sup", "cae_frozen", "cae_rec", "dbn")
METHODS = {"knn": (None, "knn"), "svm": (None, "svm"), "nn": ("cae_h-2", "mlp_no_pretraining"),
           "greedy_sup": ("cae_h-2", "mlp_greedy_supervised"), "cae": ("cae_h-2", "mlp"),
           "cae_frozen": ("cae_h-2", "mlp_frozen"), "cae_rec": ("cae_h-2", "mlp_rec"),
           "mtc": ("cae_h-2", "mtc"), "dbn": ("rbm-3", "mlp")}

run_cell = classify


def cells(p: Profile) -> list[Cell]:
    return [Cell(f"{m}-s{s}", {"method": m}, s, {"data": "mnist", "stack": stack, "method": method,
                                                  "labels": None, "valid_cap": p.valid_cap})
            for m, (stack, method) in METHODS.items() for s in range(p.seeds)]


def paper(keys: dict) -> float | None:
    return KNOWLEDGE_FREE_PAPER.get(keys["method"])


def markdown(summaries, results, p: Profile) -> str:
    context = ", ".join(f"{k} {v}" for k, v in KNOWLEDGE_FREE_CONTEXT.items())
    title = (f"Knowledge-free MNIST, all pool labels, test error (%) "
             f"({describe(p, 'pool', 'valid', 'n_test', 'hidden', 'pretrain', 'finetune', 'tangents', 'svm')})")
    return summary_markdown(summaries, KEY_NAMES, title=title, notes=[
        "nn = MLP without pretraining, greedy_sup = the same MLP after greedy layer-wise supervised "
        "pretraining, cae = MLP on the CAE+H stack (cae_frozen: hidden layers frozen; cae_rec: plus "
        "the reconstruction term), mtc = MTC on it; dbn = the MLP on a stack of three RBMs "
        "(rbm-3, centred CD-1); greedy_sup, cae_frozen and cae_rec have no "
        "figure in that table.",
        f"Paper only, for context: {context}."])


def figure(summaries, results, p: Profile):
    return bars_figure(summaries, group_key=None, bar_key="method", ylabel="test error (%)",
                       title=f"Knowledge-free MNIST ({p.name} profile)")


def title(p: Profile) -> str:
    return f"Knowledge-free MNIST ({describe(p, 'pool', 'n_test', 'hidden', 'pretrain', 'finetune')})"
