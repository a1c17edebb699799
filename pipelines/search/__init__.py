"""Hyperparameter search: the space, the Optuna study, one trial, the MLflow records (``pipelines.tune`` runs them)."""
