"""Trained networks as MLflow models: logged so that they load as the module they were, and
registered so that the best one has a name.

A fine-tuned classifier is logged as a ``finetune.served.ProbabilityClassifier`` (the trained
network, ``forward`` = class probabilities), a deep autoencoder as a ``Reconstructor``; both
with MLflow's pytorch flavour in its pickle format, because an exported (``pt2``) program
loads as a ``GraphModule`` that has no ``eval()`` and none of the module's methods. Then

    model = mlflow.pytorch.load_model(uri)       # the ProbabilityClassifier, in eval mode
    proba = model(torch.as_tensor(X, dtype=torch.float32))   # (N, K), rows sum to 1
    labels = model.predict(...)                  # or proba.argmax(1)

and ``mlflow.pyfunc.load_model(uri).predict(X)`` gives the same probabilities as an array.
Each model carries a signature (float32 (-1, d) in, (-1, K) out), an input example of 5 rows,
its pip requirements and the ``pretrain``/``finetune`` sources it unpickles with; it is named
for the method that made it (``mlp``, ``mtc_all``, ``deep_autoencoder``).

Registration: every classifier a run fine-tunes becomes a version of a registered model named
for the data it learned (``digits-L50``: dataset and labels; :func:`registered_name`), tagged
with its method, run and errors; the alias ``best`` moves to a new version only when its
validation error is lower than that of the version it points to, so ``models:/digits-L50@best``
is the best model over every run, seed and method on that data.
"""
from __future__ import annotations

import contextlib
import io
import logging
import re
from importlib.metadata import version
from pathlib import Path

import mlflow
import mlflow.pytorch
import numpy as np
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

import finetune
import pretrain

from pipelines import progress

#: the alias of the registered version with the lowest validation error
BEST = "best"
#: rows of the input example (a batch-1 example would suggest the model takes one row only)
EXAMPLE_ROWS = 5


def _pip_requirements() -> list[str]:
    """What unpickling needs: torch, and Lightning, which the ``pretrain`` modules import."""
    return [f"torch=={version('torch').split('+')[0]}", f"lightning=={version('lightning')}",
            f"numpy=={version('numpy')}", f"mlflow=={version('mlflow')}"]


def _code_paths() -> list[str]:
    return [str(Path(pretrain.__file__).parent), str(Path(finetune.__file__).parent)]


def log_model(model: torch.nn.Module, X_example: np.ndarray, name: str) -> str:
    """Log ``model`` (moved to the CPU, in eval mode) as MLflow model ``name`` of the active run,
    with a signature inferred from its output on ``X_example[:5]``; return its model URI."""
    model = model.cpu().eval()
    example = np.ascontiguousarray(X_example[:EXAMPLE_ROWS], dtype=np.float32)
    with torch.no_grad():
        out = model(torch.as_tensor(example)).numpy()
    flavour_log = logging.getLogger("mlflow.pytorch")  # its warning on every pickled model: the
    level = flavour_log.level                          # choice is deliberate (module docstring)
    flavour_log.setLevel(logging.ERROR)
    try:
        info = mlflow.pytorch.log_model(model, name=name, input_example=example,
                                        signature=infer_signature(example, out),
                                        serialization_format="pickle",
                                        pip_requirements=_pip_requirements(), code_paths=_code_paths())
    finally:
        flavour_log.setLevel(level)
    return info.model_uri


def registered_name(dataset: str, labels: int | None) -> str:
    """The registered model of one dataset and label count: ``digits-L50``, ``fashion-npz-Lall``."""
    return re.sub(r"[^\w.-]+", "_", f"{dataset}-L{'all' if labels is None else labels}")


def _best_error(client: MlflowClient, name: str) -> float | None:
    try:
        current = client.get_model_version_by_alias(name, BEST)
    except MlflowException:
        return None  # no registered model of that name yet, or no alias
    value = current.tags.get("val_error")
    return float(value) if value is not None else None


def register(model_uri: str, name: str, *, val_error: float, tags: dict[str, str]) -> tuple[str, bool]:
    """Register ``model_uri`` as a new version of ``name`` tagged ``val_error`` (percent) and
    ``tags``; point the alias ``best`` at it when no version holds it yet or its validation
    error is lower. Returns the version and whether it is now ``@best``."""
    client = MlflowClient()
    with contextlib.redirect_stderr(io.StringIO()):  # MLflow prints lines of its own; ours below
        mv = mlflow.register_model(model_uri, name, tags={**tags, "val_error": f"{val_error:.6g}"})
    best = _best_error(client, name)
    is_best = best is None or val_error < best
    if is_best:
        client.set_registered_model_alias(name, BEST, mv.version)
    progress.note(f"registered {name} version {mv.version}" + (f" (@{BEST})" if is_best else ""))
    return mv.version, is_best
