"""``layerwise bench deep-autoencoder``: an RBM-pretrained autoencoder fine-tuned on
reconstruction, the same network without pretraining, and PCA with as many components as the
code, and logistic PCA (``finetune.logistic_pca``) with as many; the value is the test squared
error per image, beside Hinton & Salakhutdinov 2006
(``pipelines.bench.papers``). Each cell keeps a few reconstructions and the codes' first two
principal components for the figure."""
from __future__ import annotations

import mlflow
import numpy as np
import torch
from sklearn.decomposition import PCA

from finetune.logistic_pca import LogisticPCA
from pipelines.bench.cells import Cell
from pipelines.bench.context import Context
from pipelines.bench.papers import AUTOENCODER_PAPER
from pipelines.bench.profiles import Profile, describe
from pipelines.bench.suites.classify import uses_pretraining
from pipelines.reporting.figures import autoencoder_figure
from pipelines.reporting.tables import summary_markdown
from pipelines.stages.finetuning import fit_autoencoder_module

NAME = "deep-autoencoder"
KEY_NAMES = ["model"]
MODELS = ("rbm-pretrained", "no-pretraining", "pca", "logistic-pca")
N_SHOW, N_CODES = 10, 1000  # test images shown reconstructed; test images whose codes are drawn


def cells(p: Profile) -> list[Cell]:
    """One cell per model and seed; the PCA cells name no stack, so that their settings (and
    their committed rows) do not change with the autoencoder's config."""
    return [Cell(f"{m}-s{s}", {"model": m}, s,
                 {"data": "mnist", "method": m, **({} if "pca" in m else {"stack": "rbm-ae"})})
            for m in MODELS for s in range(p.seeds)]


def run_cell(ctx: Context, cell: Cell) -> dict:
    """A deep-autoencoder cell: test squared error per image; a few reconstructions and 2-D codes."""
    split = ctx.split("mnist", labels=None, seed=cell.seed)
    X_test = split.X_test
    n_code = ctx.profile.autoencoder_sizes[-1]
    if cell.task["method"] in ("pca", "logistic-pca"):
        model = (PCA if cell.task["method"] == "pca" else LogisticPCA)(n_code, random_state=cell.seed)
        z = model.fit(split.X_pool).transform(X_test)  # logistic PCA: each code fitted, Eq. (5) there
        rec, codes = model.inverse_transform(z), z[:N_CODES]
    else:
        cfg = ctx.config("mnist", "rbm-ae", cell.seed)
        stack = ctx.stack("mnist", "rbm-ae") if uses_pretraining(cell.task) else None
        module, _ = fit_autoencoder_module(cfg, split, stack, uri=ctx.uri,
                                           run_id=mlflow.active_run().info.run_id,
                                           pretrained=cell.task["method"] == "rbm-pretrained")
        with torch.no_grad():
            Xt = torch.as_tensor(X_test)
            rec, codes = module.reconstruct(Xt).numpy(), module.encode(Xt[:N_CODES]).numpy()
    err = float(((rec - X_test) ** 2).sum(1).mean())  # squared error per image
    centred = codes - codes.mean(0)
    codes_2d = centred @ np.linalg.svd(centred, full_matrices=False)[2][:2].T  # first 2 principal components
    return {"value": err, "metric": "squared error per image", "params": {"n_code": n_code},
            "extra": {"originals": np.round(X_test[:N_SHOW], 3).tolist(),
                      "reconstructions": np.round(rec[:N_SHOW], 3).tolist(),
                      "codes_2d": np.round(codes_2d, 4).tolist(),
                      "code_labels": split.y_test[:N_CODES].tolist()}}


def paper(keys: dict) -> float | None:
    return AUTOENCODER_PAPER.get(keys["model"])


def markdown(summaries, results, p: Profile) -> str:
    title = (f"Deep autoencoder on MNIST, test squared error per image "
             f"({describe(p, 'pool', 'n_test', 'ae', 'pretrain', 'ae_epochs')})")
    return summary_markdown(summaries, KEY_NAMES, title=title, notes=[
        "rbm-pretrained: a stack of RBMs unrolled and fine-tuned on reconstruction; no-pretraining: the same "
        "network from Glorot weights; pca: PCA with as many components as the code, fitted on the pool; "
        "logistic-pca: logistic PCA with as many (Collins et al. 2001; Schein et al. 2003), each test "
        "code fitted to its image.",
        "Paper: Hinton & Salakhutdinov 2006 (784-1000-500-250-30, the full training set of 60000 "
        "images; here the 50000-image pool). Both have a linear code layer: the top RBM's hidden "
        "units are Gaussian (pretrain.rbm, Eqs. 18-20)."])


def figure(summaries, results, p: Profile):
    """The test digits and their reconstructions by each model (of the highest seed each); the
    codes of the first two models in their first 2 principal components. None when no cell has
    its images (cells read back from a results file keep only their numbers)."""
    first = {r["keys"]["model"]: r for r in sorted(results, key=lambda r: r["seed"]) if "extra" in r}
    models = [m for m in MODELS if m in first]
    if not models:
        return None
    return autoencoder_figure(
        np.asarray(first[models[0]]["extra"]["originals"]),
        {m: np.asarray(first[m]["extra"]["reconstructions"]) for m in models},
        {m: (np.asarray(first[m]["extra"]["codes_2d"]), np.asarray(first[m]["extra"]["code_labels"]))
         for m in models[:2]})


def title(p: Profile) -> str:
    return f"Deep autoencoder ({describe(p, 'pool', 'ae', 'pretrain', 'ae_epochs')})"
