"""The baselines stage: scikit-learn SVM, k-NN, PCA+SVM and an MLP without pretraining,
on raw inputs and on the stack's codes, each with hyperparameters chosen on validation."""
from __future__ import annotations

import mlflow
import numpy as np
import torch

from finetune.baselines import run_baseline
from pipelines.reporting.tables import Row
from pipelines.stages.finetuning import fit_classifier


def run_baselines(cfg, stack, split, *, uri: str, experiment_id: str,
                  methods: list[str] | None = None) -> list[Row]:
    """Rows of each baseline in ``methods`` (default: ``cfg.baselines.methods``)."""
    inputs = {"pixels": (split.X_lab, split.X_valid, split.X_test)}
    if "codes" in cfg.baselines.inputs:
        def codes(X: np.ndarray) -> np.ndarray:
            return stack.transform(torch.as_tensor(X, dtype=torch.float32)).numpy()
        inputs["codes"] = (codes(split.X_lab), codes(split.X_valid), codes(split.X_test))
    if "pixels" not in cfg.baselines.inputs:
        inputs.pop("pixels")

    rows = []
    for method in cfg.baselines.methods if methods is None else methods:
        for where, (X_lab, X_valid, X_test) in inputs.items():
            if method == "mlp":
                if where != "pixels":
                    continue  # the MLP without pretraining is defined on the raw inputs
                row = fit_classifier(cfg, split, stack=None, method="mlp_no_pretraining",
                                     uri=uri, experiment_id=experiment_id)
                rows.append(row)
                continue
            kwargs = {"n_components": cfg.baselines.pca_components} if method == "pca_svm" else {}
            res = run_baseline(method, X_lab, split.y_lab, X_valid, split.y_valid, X_test,
                               split.y_test, random_state=cfg.seed, **kwargs)
            rows.append(Row(method=method, inputs=where, test=100 * res.test_error,
                            valid=100 * res.valid_error, params=res.params, seconds=res.seconds))
            mlflow.log_metric(f"test_error/{method}/{where}", 100 * res.test_error)
            mlflow.log_metric(f"valid_error/{method}/{where}", 100 * res.valid_error)
    return rows
