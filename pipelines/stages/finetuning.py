"""The fine-tuning stage: unroll the stack, fine-tune the MLP and the MTC, the deep autoencoder.

Each method is a nested MLflow run with its learning curves (``MLFlowLogger``), its confusion
matrix, and the fine-tuned model (``pipelines.models.log_model``: it loads with
``mlflow.pytorch.load_model`` as a module returning probabilities). Networks are selected by early
stopping on the validation error: the weights of the best validation epoch are kept
(``KeepBest``) and the test set is evaluated once, with them.

Methods (``finetune.methods``):
- ``mlp``: the unrolled encoder plus a softmax head, cross-entropy on the labeled set, every
  layer fine-tuned.
- ``mlp_rec``: the same plus alpha times the reconstruction error of the unrolled deep
  autoencoder (``finetune.classifier`` Eq. 3), alpha = ``finetune.reconstruction``, or
  ``REC_WEIGHT`` while that is 0.
- ``mlp_frozen``: the unrolled encoder kept fixed, only the softmax head trained.
- ``mlp_greedy_supervised``: no unsupervised pretraining; each hidden layer of the stack's shape
  trained in turn with a temporary softmax on the frozen layers below it (one nested run per
  layer, ``finetune.supervised_epochs`` epochs at most, selected on the validation error), then
  the whole MLP fine-tuned (``finetune.supervised_greedy``).
- ``mtc``: the MLP with the tangent penalty of the manifold tangent classifier on the labeled
  examples, along the ``n_tangents`` leading right singular vectors of the stack's Jacobian.
- ``mtc_all``: the tangent penalty also on the unlabeled pool (it needs no labels).
- ``vat``: virtual adversarial training (``finetune.vat``) on the labeled set and the pool;
  with ``finetune.vat_batch_norm`` every layer batch-normalised (matched to the stack's codes
  on the pool, as the Ladder's), the authors' networks.
- ``ladder``: the Ladder network (``finetune.ladder``), its encoder's first layers the stack's
  (batch norm matched to the stack's codes on the pool), denoising costs on the labeled set and
  the pool.
- ``deep_autoencoder``: the stack unrolled into encoder + mirrored decoders, fine-tuned on
  reconstruction; reported as test squared error per image beside PCA with as many components.

``mtc``, ``mtc_all`` and ``vat`` add the reconstruction term too when ``finetune.reconstruction``
is > 0 (a batch-normalised ``vat`` refuses it); the other MLPs and the Ladder never do.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from functools import partial
from pathlib import Path

import mlflow
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.loggers import MLFlowLogger
from sklearn.decomposition import PCA

from finetune.batch_norm import BatchNormMLP
from finetune.classifier import Classifier
from finetune.deep_autoencoder import DeepAutoencoder
from finetune.ladder import Ladder
from finetune.mtc import MTC
from finetune.served import ProbabilityClassifier, Reconstructor
from finetune.supervised_greedy import SupervisedLayer
from finetune.unroll import UnrolledEncoder, unroll_autoencoder
from finetune.vat import VAT
from pretrain.stack import Stack

from pipelines import tracking
from pipelines.config import starts_fresh
from pipelines.data.datamodule import ArrayDataModule
from pipelines.models import log_model, register
from pipelines.reporting import figures
from pipelines.reporting.tables import Row
from pipelines.stages.pretraining import build_layers
from pipelines.stages.tangent_cache import cached_tangents
from pipelines.training import ChanceGuard, KeepBest, compute_device, make_trainer

#: rows per validation batch when fine-tuning a classifier: no gradients, so only the per-step
#: overhead depends on it (with the labeled batch of 50, validating 10000 rows took 200 steps,
#: 80% of an epoch's time on CPU)
VAL_BATCH = 1000
#: pool rows whose pre-activation statistics start a batch-normalised network on a pretrained
#: stack, the Ladder's or VAT's (``BatchNormMLP.match_mlp``)
MATCH_ROWS = 10000
#: alpha of ``mlp_rec`` while ``finetune.reconstruction`` is 0: a starting point, not a published
#: value (select it on validation with ``layerwise tune``); the reconstruction error (unroll
#: Eqs. 4-5) is summed over the inputs, so alpha = 0.01 puts it on the scale of the cross-entropy
REC_WEIGHT = 0.01


class PercentLogger(MLFlowLogger):
    """Lightning's MLflow logger with every ``*/error`` in percent, the unit of ``test/error``
    and of the results tables (the modules compute it as a fraction, Eq. 4 of
    ``finetune.classifier``; early stopping and ``KeepBest`` compare either the same way)."""

    def log_metrics(self, metrics, step=None):
        metrics = {k: 100 * float(v) if k.endswith("/error") else v for k, v in metrics.items()}
        super().log_metrics(metrics, step)


def _as_tensor(a) -> torch.Tensor:
    return torch.as_tensor(a, dtype=torch.float32)


def reconstruction_weight(ft, method: str) -> float:
    """alpha of ``finetune.classifier`` Eq. (3) for a method: ``finetune.reconstruction`` for
    ``mlp_rec`` (``REC_WEIGHT`` while it is 0) and for ``mtc``, ``mtc_all``, ``vat``; 0 for the
    other MLPs and the Ladder."""
    if method == "mlp_rec":
        return ft.reconstruction or REC_WEIGHT
    return 0.0 if method.startswith(("mlp", "ladder")) else ft.reconstruction


def fit_selected(module, dm, *, trainer_cfg, epochs: int, patience: int, y_valid, n_classes: int,
                 logger=False, callbacks=()) -> KeepBest:
    """Fit a classifier for at most ``epochs`` epochs, stopped after ``patience`` epochs without
    a lower validation error or when it diverged (``ChanceGuard``); the weights of its best
    validation epoch are put back. Returns the ``KeepBest`` that holds that epoch and score."""
    keep = KeepBest("val/error", "val/ce")
    stop = EarlyStopping(monitor="val/error", patience=patience, mode="min")
    guard = ChanceGuard(y_valid, n_classes)
    trainer = make_trainer(trainer_cfg, max_epochs=epochs, logger=logger,
                           callbacks=[keep, stop, guard, *callbacks])
    trainer.fit(module, datamodule=dm)
    keep.restore(module)
    return keep


def fit_supervised_layers(encoder: UnrolledEncoder, n_classes: int, X, y, X_valid=None, y_valid=None, *,
                          epochs: int, patience: int, batch_size: int, lr: float, optimizer: str = "adam",
                          weight_decay: float = 0.0, seed: int = 0, trainer_cfg=None,
                          phase_logger=None) -> list[int]:
    """Greedy layer-wise supervised pretraining of ``encoder`` in place: Eqs. (1)-(3) of
    ``finetune.supervised_greedy`` for k = 1..L, each phase at most ``epochs`` epochs on
    ``(X, y)`` (N, d), (N,), in batches of ``batch_size``.

    With a validation set, each phase is selected like the MLP (``fit_selected``); without one
    it keeps its last weights. ``phase_logger(k)``: a context manager that gives phase k's
    Lightning logger (None: no logging). Every layer is left trainable for the fine-tuning of
    step (4). Returns the epoch kept in each phase.
    """
    kept = []
    for k in range(1, len(encoder.layers) + 1):
        module = SupervisedLayer(encoder, k, n_classes, lr=lr, optimizer=optimizer,
                                 weight_decay=weight_decay, seed=seed)
        dm = ArrayDataModule(X, y, X_valid, y_valid, batch_size=min(batch_size, len(y)), seed=seed,
                             val_batch_size=VAL_BATCH)
        with (phase_logger(k) if phase_logger is not None else nullcontext(False)) as logger:
            if X_valid is None:
                make_trainer(trainer_cfg, max_epochs=epochs, logger=logger).fit(module, datamodule=dm)
                kept.append(epochs - 1)
                continue
            keep = fit_selected(module, dm, trainer_cfg=trainer_cfg, epochs=epochs, patience=patience,
                                y_valid=y_valid, n_classes=n_classes, logger=logger)
            kept.append(keep.best_epoch)
            if logger:
                logger.log_metrics({"best/val_error": 100 * keep.best_score[0],
                                    "best/epoch": keep.best_epoch})
    encoder.requires_grad_(True)
    return kept


@contextmanager
def _phase_run(k: int, *, cfg, uri: str, experiment_id: str):
    """Phase k of ``mlp_greedy_supervised`` as a nested MLflow run; yields its logger."""
    with tracking.start_run(f"supervised layer {k}", experiment_id=experiment_id, nested=True) as run:
        mlflow.log_params({"layer": k, "method": "mlp_greedy_supervised"})
        yield PercentLogger(tracking_uri=uri, run_id=run.info.run_id,
                            experiment_name=cfg.tracking.experiment)


@torch.no_grad()
def predict(module, X: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    module.eval()
    X = _as_tensor(X)
    return torch.cat([module(X[i:i + batch_size]).argmax(1) for i in range(0, len(X), batch_size)]).numpy()


def fit_classifier(cfg, split, *, stack, method: str, uri: str, experiment_id: str,
                   cache_dir: Path | None = None, image_shape=None,
                   register_as: str | None = None, evaluate_test: bool = True,
                   callbacks=()) -> Row:
    """Fine-tune one classifier (``mlp``, ``mlp_rec``, ``mlp_frozen``, ``mlp_greedy_supervised``
    (which ignores ``stack``), ``mtc``, ``mtc_all``, ``vat``, ``ladder``, or one of ``mlp``,
    ``vat``, ``ladder`` with ``_no_pretraining``: then ``stack`` is None).

    ``evaluate_test=False`` (a hyperparameter search's trial): no test row is read, no model
    logged; the row's ``test`` is None. ``callbacks``: extra Lightning callbacks of its Trainer.

    Its model is logged as MLflow model ``method`` (``pipelines.models``); with
    ``register_as``, also registered as a version of that registered model (``@best`` when its
    validation error is the lowest so far).
    """

    ft = cfg.finetune
    n_classes = split.n_classes
    greedy = method == "mlp_greedy_supervised"
    alpha = reconstruction_weight(ft, method)
    if stack is None or greedy:  # the same shape without pretraining: Glorot-initialised, seeded
        encoder = UnrolledEncoder(Stack(build_layers(cfg, split.X_lab.shape[1])))
        encoder.reset_parameters(torch.Generator().manual_seed(cfg.seed))
        decoder = None
    elif alpha > 0:
        encoder, decoder = unroll_autoencoder(stack)
    else:
        encoder, decoder = UnrolledEncoder(stack), None

    common = dict(lr=ft.lr, optimizer=ft.optimizer, weight_decay=ft.weight_decay, lr_decay=ft.lr_decay,
                  lr_anneal_start=ft.lr_anneal_start,
                  reconstruction=alpha if decoder is not None else 0.0,
                  decoder=decoder, seed=cfg.seed)
    train_extra, unlabeled = (), None
    if method in ("mtc", "mtc_all"):

        module = MTC(encoder, n_classes, beta=ft.beta, **common)
        device = compute_device(cfg.trainer)
        accuracy = dict(oversample=ft.tangent_oversample, rank_tol=ft.tangent_rank_tol)
        U_lab, _ = cached_tangents(stack, _as_tensor(split.X_lab), ft.n_tangents,
                                   cache_dir=cache_dir / "tangents", device=device, **accuracy)
        train_extra = (U_lab,)
        if method == "mtc_all":
            U_pool, _ = cached_tangents(stack, _as_tensor(split.X_pool), ft.n_tangents,
                                        cache_dir=cache_dir / "tangents", device=device, **accuracy)
            unlabeled = (_as_tensor(split.X_pool), U_pool)
    elif method.startswith("vat"):
        module = VAT(encoder, n_classes, alpha=ft.vat_alpha, epsilon=ft.vat_epsilon, xi=ft.vat_xi,
                     n_power=ft.vat_power_iterations, entropy=ft.vat_entropy,
                     batch_norm=ft.vat_batch_norm, **common)
        unlabeled = (_as_tensor(split.X_pool),)
    elif method.startswith("ladder"):
        module = Ladder(encoder, n_classes, noise=ft.ladder_noise, denoise=ft.ladder_denoise, lr=ft.lr,
                        optimizer=ft.optimizer, weight_decay=ft.weight_decay, lr_decay=ft.lr_decay,
                        lr_anneal_start=ft.lr_anneal_start, seed=cfg.seed)
        unlabeled = (_as_tensor(split.X_pool),)
    else:  # mlp, mlp_rec, mlp_frozen, mlp_greedy_supervised (its last step)
        module = Classifier(encoder, n_classes, freeze_hidden=method == "mlp_frozen", **common)
    if stack is not None and isinstance(module.net, BatchNormMLP):
        # the Ladder's or VAT's batch norm starts from the stack's function, not from its layers
        # on rescaled pre-activations
        module.net.match_mlp(_as_tensor(split.X_pool)[:MATCH_ROWS])

    with tracking.start_run(f"finetune {method}", experiment_id=experiment_id, nested=True) as run:
        mlflow.log_params({"method": method, "n_labels": len(split.y_lab),
                           "n_valid": len(split.y_valid), "reconstruction": common["reconstruction"]})
        logger = PercentLogger(tracking_uri=uri, run_id=run.info.run_id,
                               experiment_name=cfg.tracking.experiment)
        try:
            if greedy:  # Eqs. (1)-(3) of finetune.supervised_greedy, one nested run per layer
                layer_epochs = fit_supervised_layers(
                    encoder, n_classes, split.X_lab, split.y_lab, split.X_valid, split.y_valid,
                    epochs=ft.supervised_epochs or ft.epochs, patience=ft.patience,
                    batch_size=ft.batch_size, lr=ft.lr, optimizer=ft.optimizer,
                    weight_decay=ft.weight_decay, seed=cfg.seed, trainer_cfg=cfg.trainer,
                    phase_logger=partial(_phase_run, cfg=cfg, uri=uri, experiment_id=experiment_id))
            dm = ArrayDataModule(split.X_lab, split.y_lab, split.X_valid, split.y_valid,
                                 batch_size=min(ft.batch_size, len(split.y_lab)), seed=cfg.seed,
                                 train_extra=train_extra, unlabeled=unlabeled,
                                 unlabeled_batch_size=ft.unlabeled_batch, val_batch_size=VAL_BATCH,
                                 epoch_over=ft.epoch_over)
            keep = fit_selected(module, dm, trainer_cfg=cfg.trainer, epochs=ft.epochs,
                                patience=ft.patience, y_valid=split.y_valid, n_classes=n_classes,
                                logger=logger, callbacks=callbacks)
        except FloatingPointError as e:  # diverged: name the method and the key to change
            raise FloatingPointError(f"finetune {method} (finetune.lr={ft.lr}): {e}") from None
        valid_error, test_error = 100 * keep.best_score[0], None
        mlflow.log_metrics({"best/val_error": valid_error, "best/epoch": keep.best_epoch})
        if evaluate_test:
            y_pred = predict(module, split.X_test)
            test_error = 100 * float(np.mean(y_pred != split.y_test))
            mlflow.log_metric("test/error", test_error)
            tracking.log_figure(figures.confusion_figure(split.y_test, y_pred, n_classes),
                                "figures/confusion.png")
        tracking.log_figure(figures.curves_figure(tracking.metric_history(run.info.run_id), method),
                            "figures/learning_curves.png")
        if method.startswith("mtc") and image_shape is not None:
            n_show = min(5, len(U_lab))
            tracking.log_figure(figures.tangents_figure(split.X_lab[:n_show],
                                                        U_lab[:n_show, :min(8, ft.n_tangents)].numpy(),
                                                        image_shape), "figures/tangents.png")
        model_uri = (log_model(ProbabilityClassifier(module.net), split.X_pool, name=method)
                     if evaluate_test else None)
        if register_as is not None and model_uri is not None:
            register(model_uri, register_as, val_error=valid_error,
                     tags={"method": method, "run_id": run.info.run_id,
                           "test_error": f"{test_error:.6g}", "seed": str(cfg.seed)})
    fresh = starts_fresh(method)
    name = method.replace("_no_pretraining", ", no pretraining")
    inputs = "pixels" if fresh else "stack"
    params = {"epoch": keep.best_epoch}
    if ft.lr_decay != 1.0:
        params["lr_decay"] = ft.lr_decay
    if ft.lr_anneal_start is not None:
        params["lr_anneal_start"] = ft.lr_anneal_start
    if greedy:
        params["layer_epochs"] = "/".join(map(str, layer_epochs))
    if common["reconstruction"] > 0:
        params["reconstruction"] = common["reconstruction"]
    if method.startswith("mtc"):
        params.update(beta=ft.beta, k=ft.n_tangents)
    elif method.startswith("vat"):
        params.update(alpha=ft.vat_alpha, epsilon=ft.vat_epsilon)
        if ft.vat_batch_norm:
            params["batch_norm"] = True
    elif method.startswith("ladder"):
        params.update(noise=ft.ladder_noise)
    return Row(method=name, inputs=inputs, test=test_error, valid=valid_error, params=params)


def fit_autoencoder_module(cfg, split, stack: Stack | None, *, uri: str, run_id: str,
                           pretrained: bool = True) -> tuple[DeepAutoencoder, int]:
    """Fine-tune the unrolled deep autoencoder on ``split.X_pool`` for the config's
    ``deep_autoencoder_epochs``, logging its curves to MLflow run ``run_id``; from the stack's
    weights (``pretrained``) or from fresh ones of the same shape drawn from the config's seed,
    with the fine-tuning optimizer of every network (``finetune.lr``, ``optimizer``, ``weight_decay``).
    Without pretraining ``stack`` may be None: the untrained layers of ``cfg.pretrain.layers``
    give the shape and the unit types, so no stack is trained for a network that drops its weights.

    Returns the module with the weights of its best validation epoch (squared error per
    image), in eval mode, and that epoch.
    """
    if stack is None:
        if pretrained:
            raise ValueError("fit_autoencoder_module: pretrained=True needs the pretrained stack; "
                             "pass it, or pretrained=False to start from fresh weights")
        stack = Stack(build_layers(cfg, split.X_pool.shape[1]))
    ft = cfg.finetune
    module = DeepAutoencoder(stack, lr=ft.lr, optimizer=ft.optimizer, weight_decay=ft.weight_decay,
                             pretrained=pretrained, seed=cfg.seed)
    logger = MLFlowLogger(tracking_uri=uri, run_id=run_id, experiment_name=cfg.tracking.experiment)
    dm = ArrayDataModule(split.X_pool, None, split.X_valid, None, batch_size=ft.batch_size,
                         seed=cfg.seed)
    keep = KeepBest("val/squared_error", "val/rec")
    trainer = make_trainer(cfg.trainer, max_epochs=ft.deep_autoencoder_epochs, logger=logger,
                           callbacks=[keep])
    trainer.fit(module, datamodule=dm)
    keep.restore(module)
    return module.eval(), keep.best_epoch


def fit_deep_autoencoder(cfg, split, *, stack, uri: str, experiment_id: str,
                         evaluate_test: bool = True) -> list[Row]:
    """Fine-tune the unrolled deep autoencoder; PCA with as many components beside it.
    ``evaluate_test=False``: one row, its validation squared error, ``test`` None."""

    with tracking.start_run("finetune deep_autoencoder", experiment_id=experiment_id,
                            nested=True) as run:
        module, best_epoch = fit_autoencoder_module(cfg, split, stack, uri=uri, run_id=run.info.run_id)
        if not evaluate_test:
            X_valid = _as_tensor(split.X_valid)
            with torch.no_grad():
                valid = float(((module.reconstruct(X_valid) - X_valid) ** 2).sum(1).mean())
            return [Row("deep_autoencoder", "stack", None, valid=valid,
                        metric="squared error per image", params={"epoch": best_epoch})]
        X_test = _as_tensor(split.X_test)
        with torch.no_grad():
            err = float(((module.reconstruct(X_test) - X_test) ** 2).sum(1).mean())
        n_code = stack.n_hidden
        pca = PCA(n_components=n_code, random_state=cfg.seed).fit(split.X_pool)
        rec = pca.inverse_transform(pca.transform(split.X_test))
        pca_err = float(((rec - split.X_test) ** 2).sum(1).mean())
        mlflow.log_metrics({"test/squared_error": err, "test/pca_squared_error": pca_err})
        log_model(Reconstructor(module.encoder, module.decoder), split.X_pool, name="deep_autoencoder")
    metric = "squared error per image"
    return [Row("deep_autoencoder", "stack", err, metric=metric,
                params={"epoch": best_epoch}),
            Row(f"pca_{n_code}", "pixels", pca_err, metric=metric, params={"n_components": n_code})]
