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
                  methods: list[str] | None = None, evaluate_test: bool = True) -> list[Row]:
    """Rows of each baseline in ``methods`` (default: ``cfg.baselines.methods``);
    ``evaluate_test=False``: the test set is not read and the rows' ``test`` is None."""
    inputs = {"pixels": (split.X_lab, split.X_valid, split.X_test if evaluate_test else None)}
    if "codes" in cfg.baselines.inputs:
        def codes(X: np.ndarray | None) -> np.ndarray | None:
            return None if X is None else stack.transform(torch.as_tensor(X, dtype=torch.float32)).numpy()
        inputs["codes"] = (codes(split.X_lab), codes(split.X_valid), codes(inputs["pixels"][2]))
    if "pixels" not in cfg.baselines.inputs:
        inputs.pop("pixels")

    rows = []
    for method in cfg.baselines.methods if methods is None else methods:
        for where, (X_lab, X_valid, X_test) in inputs.items():
            if method == "mlp":
                if where != "pixels":
                    continue  # the MLP without pretraining is defined on the raw inputs
                row = fit_classifier(cfg, split, stack=None, method="mlp_no_pretraining",
                                     uri=uri, experiment_id=experiment_id, evaluate_test=evaluate_test)
                rows.append(row)
                continue
            kwargs = {"n_components": cfg.baselines.pca_components} if method == "pca_svm" else {}
            res = run_baseline(method, X_lab, split.y_lab, X_valid, split.y_valid, X_test,
                               split.y_test, random_state=cfg.seed, **kwargs)
            test = None if res.test_error is None else 100 * res.test_error
            rows.append(Row(method=method, inputs=where, test=test,
                            valid=100 * res.valid_error, params=res.params, seconds=res.seconds))
            if test is not None:
                mlflow.log_metric(f"test_error/{method}/{where}", test)
            mlflow.log_metric(f"valid_error/{method}/{where}", 100 * res.valid_error)
    return rows
