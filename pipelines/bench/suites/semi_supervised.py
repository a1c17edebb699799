"""``layerwise bench semi-supervised``: MNIST with L in {100, 600, 1000, 3000} labels, beside the
MTC paper's semi-supervised table (``pipelines.bench.papers``).

L class-balanced labels are drawn by seed from the pool; SVM, k-NN, an MLP without pretraining
(``nn``), the same MLP after greedy layer-wise supervised pretraining (``greedy_sup``), the MLP
on a CAE+H stack (``cae``; with its hidden layers frozen, ``cae_frozen``; with the
reconstruction term, ``cae_rec``), the MTC with its tangent penalty on the labeled
set (``mtc``) and on labeled + unlabeled (``mtc_all``); and the MLP on the other stacks of
``pipelines.bench.context.stack_layers``: the CAE+H stack trained jointly (``cae_joint``), a
convolutional stack unrolled into a CNN (``conv``), PSD (``psd``), a CAE on ZCA-whitened pixels
(``zca_cae``). One stack per kind (seed 0) serves every L and seed. Two validation settings: the paper's (the last 10000 training images, capped by the
profile) and a realistic one of L labeled images.
"""
from __future__ import annotations

from pipelines.bench.cells import Cell
from pipelines.bench.papers import LABELS, MNIST_VALID, SEMI_PAPER
from pipelines.bench.profiles import Profile, describe
from pipelines.bench.suites.classify import classify
from pipelines.reporting.figures import lines_figure
from pipelines.reporting.tables import pivot_markdown, summary_markdown

NAME = "semi-supervised"
KEY_NAMES = ["validation", "labels", "method"]
FIELDS = ("pool", "valid", "n_test", "hidden", "pretrain", "finetune", "tangents", "svm")
#: the columns added after the suite's results folders existed (``Suite.added_columns``)
ADDED_COLUMNS = ("greedy_sup", "cae_frozen", "cae_rec", "cae_joint", "conv", "psd", "zca_cae")
METHODS = {"svm": (None, "svm"), "knn": (None, "knn"), "nn": ("cae_h-2", "mlp_no_pretraining"),
           "greedy_sup": ("cae_h-2", "mlp_greedy_supervised"), "cae": ("cae_h-2", "mlp"),
           "cae_frozen": ("cae_h-2", "mlp_frozen"), "cae_rec": ("cae_h-2", "mlp_rec"),
           "mtc": ("cae_h-2", "mtc"), "mtc_all": ("cae_h-2", "mtc_all"),
           "cae_joint": ("cae_h-2-joint", "mlp"), "conv": ("conv-2", "mlp"), "psd": ("psd-1", "mlp"),
           "zca_cae": ("zca-cae", "mlp")}
#: ours -> the paper's row beside it (the paper's CNN is supervised only: beside our pretrained one)
COLUMN = {"svm": "SVM", "nn": "NN", "cae": "CAE", "mtc": "MTC", "mtc_all": "MTC", "conv": "CNN"}

run_cell = classify


def cells(p: Profile, methods: dict | None = None) -> list[Cell]:
    """One cell per validation setting, label count, method of ``methods`` (default: ``METHODS``)
    and seed; the cell ids name all four (``paper-L100-mtc-s0``)."""
    out = []
    for valid in ("paper", "realistic"):
        for L in p.labels:
            for name, (stack, method) in (METHODS if methods is None else methods).items():
                for s in range(p.seeds):
                    out.append(Cell(f"{valid}-L{L}-{name}-s{s}", {"validation": valid, "labels": L, "method": name},
                                    s, {"data": "mnist", "stack": stack, "method": method, "labels": L,
                                        "valid_cap": L if valid == "realistic" else p.valid_cap}))
    return out


def paper(keys: dict) -> float | None:
    col = COLUMN.get(keys["method"])
    return SEMI_PAPER[col][LABELS.index(keys["labels"])] if col and keys["labels"] in LABELS else None


def markdown(summaries, results, p: Profile) -> str:
    title = f"Semi-supervised MNIST, test error (%), ours (paper) ({describe(p, *FIELDS)})"
    parts = [f"### {title}", ""]
    for valid, what in (("paper", f"a large validation set ({p.valid_cap or MNIST_VALID} images; "
                                  f"the paper: {MNIST_VALID})"),
                        ("realistic", "a validation set of L labeled images")):
        sub = [s for s in summaries if s.keys["validation"] == valid]
        parts.append(pivot_markdown(sub, "labels", "method", title=f"selection on {what}"))
    context = "; ".join(f"{c} " + "/".join(map(str, SEMI_PAPER[c])) for c in ("TSVM", "EmbedNN"))
    notes = ["Methods: svm, knn on pixels; nn = MLP without pretraining; greedy_sup = the same MLP after "
             "greedy layer-wise supervised pretraining (Bengio et al. 2007); cae = MLP on the CAE+H stack, "
             "cae_frozen = its hidden layers frozen (softmax only), cae_rec = plus the reconstruction term; "
             "mtc = MTC, tangent penalty on the labeled set; mtc_all = on labeled + unlabeled; cae_joint "
             "= the MLP on the same CAE+H layers trained jointly (every layer one epoch a round on the "
             "current codes below); conv = a CNN unrolled from a stack of 20 denoising 5x5 filters, "
             "max-pooled 2x2, under a CAE; psd = the MLP on a PSD predictor (FISTA codes, lambda = "
             "alpha = 1); zca_cae = on a CAE over ZCA-whitened pixels. The paper's MTC figure stands "
             "beside both MTC variants, its supervised CNN beside conv; k-NN, greedy_sup, cae_frozen, "
             "cae_rec, cae_joint, psd and zca_cae have no figure in that table.",
             f"Paper only, for context (L = {'/'.join(map(str, LABELS))}): {context}.",
             "One stack per kind (seed 0) is shared by every label count and seed; seeds draw the labels."]
    parts.append(summary_markdown(summaries, KEY_NAMES, title="All cells", notes=notes))
    return "\n".join(parts)


def figure(summaries, results, p: Profile):
    ref = {m: dict(zip(LABELS, SEMI_PAPER[c])) for m, c in
           (("svm", "SVM"), ("nn", "NN"), ("cae", "CAE"), ("mtc", "MTC"), ("conv", "CNN"))}
    return lines_figure(summaries, x_key="labels", line_key="method", panel_key="validation", paper=ref,
                        ylabel="test error (%)", title=f"Semi-supervised MNIST ({p.name} profile)")


def title(p: Profile) -> str:
    return f"Semi-supervised MNIST ({describe(p, *FIELDS)})"
