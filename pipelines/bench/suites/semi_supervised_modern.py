"""``layerwise bench semi-supervised-modern``: the Ladder network and virtual adversarial training
on the semi-supervised suite's splits, beside their papers (``pipelines.bench.papers``) and our MTC.

The cells are those of ``semi_supervised`` (the same L, label draws, validation settings,
stack and pool), with the columns: ``nn`` (an MLP without pretraining), ``cae`` (the MLP on
the CAE+H stack), ``mtc_all`` (the MTC, penalty on labeled + unlabeled), ``ladder`` and
``vat`` from fresh weights of the same shape, ``ladder_pretrained`` and ``vat_pretrained``
from the stack's weights; ``vat_bn`` is VAT on the authors' network (every layer
batch-normalised, ReLU units; Miyato et al.'s MNIST code, at the stack's width), from fresh
weights, ``vat_bn_pretrained`` the batch-normalised network on the stack's weights, both trained
on the authors' schedule (``authors_schedule``: their batches, rate and its decay);
``ladder_relu`` is the Ladder on its authors' units (ReLU), from fresh weights of the stack's
width (on 100 labels and a 10000-image pool the paper's network reached 8.3 % validation error
after 15 epochs with ReLU units, 21.7 % with sigmoid ones). VAT and
the Ladder use the whole pool as unlabeled data, and an epoch of theirs is one pass over it
(``finetune.epoch_over: pool``), as their papers count epochs; the Ladder columns train on its
paper's schedule (``ladder_schedule``: batches, rate, its linear anneal over the last third). A
suite of its own, so that the semi-supervised suite's results folders keep their names.
"""
from __future__ import annotations

from pipelines.bench.cells import Cell
from pipelines.bench.papers import LABELS, MNIST_POOL, MNIST_VALID, MODERN_SEMI_PAPER, MODERN_SEMI_STD, SEMI_PAPER
from pipelines.bench.profiles import Profile, describe
from pipelines.bench.suites import semi_supervised
from pipelines.bench.suites.classify import classify
from pipelines.reporting.figures import lines_figure
from pipelines.reporting.tables import pivot_markdown, summary_markdown

NAME = "semi-supervised-modern"
KEY_NAMES = semi_supervised.KEY_NAMES
FIELDS = semi_supervised.FIELDS
METHODS = {"nn": ("cae_h-2", "mlp_no_pretraining"), "cae": ("cae_h-2", "mlp"),
           "mtc_all": ("cae_h-2", "mtc_all"),
           "ladder": ("cae_h-2", "ladder_no_pretraining"), "ladder_pretrained": ("cae_h-2", "ladder"),
           "vat": ("cae_h-2", "vat_no_pretraining"), "vat_pretrained": ("cae_h-2", "vat"),
           "vat_bn": ("relu-2", "vat_no_pretraining"), "vat_bn_pretrained": ("cae_h-2", "vat"),
           "ladder_relu": ("relu-2", "ladder_no_pretraining")}
#: ours -> the paper whose figure stands beside it
COLUMN = {"nn": "NN", "cae": "CAE", "mtc_all": "MTC", "ladder": "Ladder", "ladder_pretrained": "Ladder",
          "vat": "VAT", "vat_pretrained": "VAT", "vat_bn": "VAT", "vat_bn_pretrained": "VAT",
          "ladder_relu": "Ladder"}
#: the columns added after the suite's results folders existed (``Suite.added_columns``)
ADDED_COLUMNS = ("vat_bn", "vat_bn_pretrained", "ladder_relu")

#: the columns whose epochs pass over the pool, the labeled batches cycled beside it
POOL_EPOCHS = tuple(col for col, (_, method) in METHODS.items() if method.startswith(("ladder", "vat")))
#: the VAT columns, and those of them on the authors' network: every layer batch-normalised
#: (``finetune.vat_batch_norm``), ReLU units when fresh (the stack ``relu-2``)
VAT_COLUMNS = tuple(col for col, (_, method) in METHODS.items() if method.startswith("vat"))
BATCH_NORM = ("vat_bn", "vat_bn_pretrained")
#: VAT's perturbation norm for semi-supervised MNIST, the authors' (their code's semi-supervised
#: MNIST script: 0.3, against 2.1 for supervised MNIST; the config's default is 2.0): in pixel
#: units of [0, 1] images, a digit's norm being ~9
VAT_EPSILON = 0.3
#: the authors' training of their network (their semi-supervised MNIST script): Adam at lr 0.002
#: on batches of 100 labeled and 250 unlabeled images, the rate times 0.9 every 500 updates
#: (100 such epochs, 50000 updates): here the same decay per update, eta_t = 0.002 * 0.9^(t / 500),
#: applied once per pool epoch of ceil(pool / 250) updates
AUTHORS_BATCHES, AUTHORS_LR, AUTHORS_DECAY, AUTHORS_DECAY_UPDATES = (100, 250), 0.002, 0.9, 500


#: the Ladder's training in its paper (Rasmus et al. 2015, and their code's MNIST run): Adam at
#: 0.002 on batches of 100 labeled and 100 unlabeled images for 150 pool epochs, the rate
#: annealed linearly to zero over the last 50
LADDER_BATCHES, LADDER_LR, LADDER_EPOCHS, LADDER_ANNEAL_START = (100, 100), 0.002, 150, 2 / 3
LADDER_COLUMNS = ("ladder", "ladder_pretrained", "ladder_relu")


def ladder_schedule(epochs: int) -> dict:
    """The finetune settings of the Ladder paper's schedule, its 150 epochs capped at a profile's
    ``epochs``. The patience is the whole schedule, so that the anneal is trained to its end;
    the epoch kept is still the best on validation."""
    labeled, unlabeled = LADDER_BATCHES
    n = min(LADDER_EPOCHS, epochs)
    return {"batch_size": labeled, "unlabeled_batch": unlabeled, "lr": LADDER_LR, "epochs": n,
            "patience": n, "lr_anneal_start": LADDER_ANNEAL_START}


def authors_schedule(pool: int) -> dict:
    """The finetune settings of the authors' schedule for an epoch over ``pool`` images."""
    labeled, unlabeled = AUTHORS_BATCHES
    updates = -(-pool // unlabeled)
    return {"batch_size": labeled, "unlabeled_batch": unlabeled, "lr": AUTHORS_LR,
            "lr_decay": AUTHORS_DECAY ** (updates / AUTHORS_DECAY_UPDATES)}

run_cell = classify


def cells(p: Profile) -> list[Cell]:
    out = semi_supervised.cells(p, METHODS)
    for c in out:
        if c.keys["method"] in POOL_EPOCHS:
            c.task["finetune"] = {"epoch_over": "pool"}
        if c.keys["method"] in VAT_COLUMNS:
            c.task["finetune"]["vat_epsilon"] = VAT_EPSILON
        if c.keys["method"] in BATCH_NORM:
            c.task["finetune"]["vat_batch_norm"] = True
            c.task["finetune"].update(authors_schedule(p.pool or MNIST_POOL))
        if c.keys["method"] in LADDER_COLUMNS:
            c.task["finetune"].update(ladder_schedule(p.finetune_epochs))
    return out


def paper(keys: dict) -> float | None:
    col, L = COLUMN.get(keys["method"]), keys["labels"]
    if col in MODERN_SEMI_PAPER:
        return MODERN_SEMI_PAPER[col].get(L)
    return SEMI_PAPER[col][LABELS.index(L)] if col and L in LABELS else None


def markdown(summaries, results, p: Profile) -> str:
    title = f"Semi-supervised MNIST, Ladder and VAT, test error (%), ours (paper) ({describe(p, *FIELDS)})"
    parts = [f"### {title}", ""]
    for valid, what in (("paper", f"a large validation set ({p.valid_cap or MNIST_VALID} images; "
                                  f"the papers: {MNIST_VALID})"),
                        ("realistic", "a validation set of L labeled images")):
        sub = [s for s in summaries if s.keys["validation"] == valid]
        parts.append(pivot_markdown(sub, "labels", "method", title=f"selection on {what}"))
    def figure_text(name: str, L: int, v: float) -> str:
        std = MODERN_SEMI_STD.get(name, {}).get(L)
        return f"{v}" + ("" if std is None else f" ± {std}") + f" with {L} labels"

    published = "; ".join(f"{name} " + ", ".join(figure_text(name, L, v) for L, v in figs.items())
                          for name, figs in MODERN_SEMI_PAPER.items())
    notes = ["Methods: nn = MLP without pretraining; cae = MLP on the CAE+H stack; mtc_all = MTC, tangent "
             "penalty on labeled + unlabeled; ladder, vat = Ladder network, VAT from fresh weights of the "
             "stack's shape; *_pretrained = the same from the stack's weights; vat_bn = VAT on the authors' "
             "network (every layer batch-normalised, ReLU units) of the stack's width, vat_bn_pretrained = "
             "batch-normalised on the stack's weights (normalisation matched to its codes on the pool); "
             "ladder_relu = the Ladder on its authors' units (ReLU) from fresh weights of the stack's width. "
             "The Ladder's and VAT's papers stand beside all of their columns; whether pretraining helps "
             "is *_pretrained against the column without. The Ladder's and VAT's epochs pass once over the pool, the labeled batches "
             "cycled beside it (finetune.epoch_over: pool), as their papers count epochs. The Ladder columns "
             "train on its paper's schedule: batches of 100 + 100, Adam at 0.002 for at most 150 epochs (the "
             "profile's epochs where fewer), annealed linearly to 0 over the last third, no early stop; "
             "vat_bn on its authors' (batches of 100 + 250, 0.002 times 0.9 every 500 updates).",
             f"Published (permutation-invariant MNIST): {published}; their networks are larger "
             "(Ladder: 784-1000-500-250-250-250-10) and trained longer than a profile's.",
             "One stack (seed 0) is shared by every label count and seed; seeds draw the labels, the same "
             "draws as the semi-supervised suite's."]
    parts.append(summary_markdown(summaries, KEY_NAMES, title="All cells", notes=notes))
    return "\n".join(parts)


def figure(summaries, results, p: Profile):
    ref = {m: dict(MODERN_SEMI_PAPER[c]) for m, c in (("ladder", "Ladder"), ("vat", "VAT"))}
    ref.update({m: dict(zip(LABELS, SEMI_PAPER[c]))
                for m, c in (("nn", "NN"), ("cae", "CAE"), ("mtc_all", "MTC"))})
    return lines_figure(summaries, x_key="labels", line_key="method", panel_key="validation", paper=ref,
                        ylabel="test error (%)",
                        title=f"Semi-supervised MNIST, Ladder and VAT ({p.name} profile)")


def title(p: Profile) -> str:
    return f"Semi-supervised MNIST, Ladder and VAT ({describe(p, *FIELDS)})"
