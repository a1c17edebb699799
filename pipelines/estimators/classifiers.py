"""``StackedMLPClassifier`` and ``MTCClassifier``: pretrain, unroll, fine-tune with early
stopping (Eqs. 2-3 of ``pipelines.estimators``); the MLP also with greedy supervised instead of
unsupervised pretraining (``finetune.supervised_greedy``), frozen hidden layers, or the
reconstruction term (``finetune.classifier`` Eq. 3)."""
from __future__ import annotations

import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import train_test_split
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from finetune.classifier import Classifier
from finetune.mtc import MTC
from finetune.tangent_defaults import OVERSAMPLE, RANK_TOL
from finetune.tangents import tangents
from finetune.unroll import UnrolledDecoder, UnrolledEncoder
from pretrain.checks import check_bool, check_choice, check_float, check_int

from pipelines.data.datamodule import ArrayDataModule
from pipelines.estimators.pretrainer import StackedPretrainer, _check_layers, _quiet_seed, _seed, _tensor
from pipelines.stages.finetuning import fit_supervised_layers
from pipelines.training import KeepBest, make_trainer

#: how ``StackedMLPClassifier`` pretrains: greedy unsupervised (the stack's layers) or greedy
#: supervised (each layer with a temporary softmax, ``finetune.supervised_greedy``)
PRETRAININGS = ("unsupervised", "supervised")


# -- the classifiers ----------------------------------------------------------------------------
class _StackedClassifier(ClassifierMixin, BaseEstimator):
    """Pretrain, unroll, fine-tune with early stopping (Eqs. 2-3); subclasses pick the module."""

    def _check_params(self, n_visible: int) -> dict:
        return {
            "pretrain_epochs": check_int("pretrain_epochs", self.pretrain_epochs, 0),
            "epochs": check_int("epochs", self.epochs, 1),
            "batch_size": check_int("batch_size", self.batch_size, 1),
            "lr": check_float("lr", self.lr, low=0.0, low_open=True),
            "validation_fraction": check_float("validation_fraction", self.validation_fraction,
                                               low=0.0, high=1.0),
            "patience": check_int("patience", self.patience, 1),
            "seed": _seed(self.random_state),
        }

    def _module(self, encoder, n_classes: int, p: dict, X_train: torch.Tensor):
        """The LightningModule to fine-tune and the extra tensors of each training batch."""
        raise NotImplementedError

    def fit(self, X, y):
        """Pretrain on ``X`` (N, d), fine-tune on ``(X, y)``; returns ``self``."""
        X, y = validate_data(self, X, y, dtype=np.float32, ensure_min_samples=2)
        check_classification_targets(y)
        p = self._check_params(X.shape[1])
        classes, y_enc = np.unique(y, return_inverse=True)
        y_enc = y_enc.reshape(-1).astype(np.int64)  # labels as 0..K-1, in sorted order
        K = len(classes)
        if K < 2:
            raise ValueError(f"y has a single class ({classes[0]!r}): a classifier needs "
                             f"examples of at least two classes")
        self.classes_ = classes

        supervised = p.get("pretraining") == "supervised"  # layers left as initialised here
        self.pretrainer_ = StackedPretrainer(self.layers, epochs=0 if supervised else p["pretrain_epochs"],
                                             batch_size=p["batch_size"], random_state=p["seed"],
                                             layer_params=self.layer_params, schedule=self.schedule).fit(X)
        self.stack_ = self.pretrainer_.stack_

        idx = np.arange(len(X))
        i_tr, i_val = idx, idx[:0]  # no validation set: no early stopping
        if p["validation_fraction"] > 0:
            try:
                i_tr, i_val = train_test_split(idx, test_size=p["validation_fraction"],
                                               stratify=y_enc, random_state=p["seed"])
            except ValueError as e:
                raise ValueError(f"validation_fraction={self.validation_fraction!r} cannot hold "
                                 f"out a stratified validation set of these {len(X)} examples "
                                 f"in {K} classes ({e}); give more examples per class or "
                                 f"validation_fraction=0 (no early stopping)") from None
        X_tr = _tensor(X[i_tr])
        _quiet_seed(p["seed"])
        validate = len(i_val) > 0
        encoder = UnrolledEncoder(self.stack_)
        if supervised and p["pretrain_epochs"] > 0:
            fit_supervised_layers(encoder, K, X_tr, y_enc[i_tr], X[i_val] if validate else None,
                                  y_enc[i_val] if validate else None, epochs=p["pretrain_epochs"],
                                  patience=p["patience"], batch_size=p["batch_size"], lr=p["lr"],
                                  seed=p["seed"])
        module, extra = self._module(encoder, K, p, X_tr)
        dm = ArrayDataModule(X_tr, y_enc[i_tr], X[i_val] if validate else None,
                             y_enc[i_val] if validate else None,
                             batch_size=min(p["batch_size"], len(i_tr)), seed=p["seed"],
                             train_extra=extra)
        keep = KeepBest("val/error", "val/ce")
        stop = EarlyStopping(monitor="val/error", patience=p["patience"], mode="min")
        trainer = make_trainer(max_epochs=p["epochs"], callbacks=[keep, stop] if validate else [])
        trainer.fit(module, datamodule=dm)
        if validate:
            keep.restore(module)
            self.best_epoch_, self.best_validation_error_ = keep.best_epoch, keep.best_score[0]
        else:
            self.best_epoch_, self.best_validation_error_ = trainer.current_epoch - 1, None
        self.n_epochs_ = trainer.current_epoch
        module.trainer = None  # the fitted estimator keeps no Trainer (pickles, clones)
        self.module_ = module.eval()
        return self

    def predict_proba(self, X) -> np.ndarray:
        """p(y | x) of every row: (N, d) -> (N, K), columns in the order of ``classes_``."""
        check_is_fitted(self, "module_")
        X = validate_data(self, X, dtype=np.float32, reset=False)
        x = _tensor(X)
        proba = [self.module_.predict_proba(x[i:i + 4096]) for i in range(0, len(x), 4096)]
        return torch.cat(proba).double().numpy()  # (N, K); validate_data rejects N = 0

    def predict(self, X) -> np.ndarray:
        """The most probable class of every row, as a value of ``classes_``: (N, d) -> (N,)."""
        proba = self.predict_proba(X)  # checks that the estimator is fitted first
        return self.classes_[np.argmax(proba, axis=1)]


class StackedMLPClassifier(_StackedClassifier):
    """A pretrained stack unrolled into an MLP and fine-tuned on cross-entropy: Eq. (2).

    Parameters
    ----------
    layers : sequence of ``(kind, n_hidden)`` pairs, as for ``StackedPretrainer``.
    pretrain_epochs : pretraining epochs per layer (>= 0; 0: no pretraining, seeded init).
    pretraining : ``"unsupervised"`` (the stack's layers, greedily, on ``X``) or
        ``"supervised"`` (greedy layer-wise supervised pretraining of the MLP's layers on the
        training part of ``(X, y)``, each selected on the validation part,
        ``finetune.supervised_greedy``).
    freeze_hidden : fine-tune the softmax head only, the hidden layers kept as pretrained.
    reconstruction : alpha of ``finetune.classifier`` Eq. (3), the weight of the deep
        autoencoder's reconstruction error during fine-tuning (>= 0; 0: cross-entropy alone).
    epochs : at most this many fine-tuning epochs.
    batch_size : rows per batch, in pretraining and fine-tuning.
    lr : Adam's learning rate in fine-tuning.
    validation_fraction : share of ``(X, y)`` held out, stratified, for early stopping, in
        [0, 1); 0 trains on everything for ``epochs`` epochs and keeps the last weights.
    patience : epochs without a lower validation error before stopping.
    random_state : int, None or ``numpy.random.RandomState``.
    layer_params : None, or one dict per layer of ``make_layer`` overrides, as for
        ``StackedPretrainer`` (e.g. ``{"loss": "mse", "visible_unit": "linear"}`` for inputs
        outside [0, 1]).
    schedule : ``"greedy"`` or ``"joint"`` unsupervised pretraining, as for ``StackedPretrainer``.

    Attributes
    ----------
    classes_ : the sorted distinct labels; ``predict`` returns values of it.
    stack_ : the pretrained stack (left as pretrained: fine-tuning trains a copy); with
        ``pretraining="supervised"``, its layers as initialised (the phases train the copy).
    pretrainer_ : the fitted ``StackedPretrainer`` that holds ``stack_``.
    module_ : the fine-tuned ``finetune.classifier.Classifier``.
    best_epoch_, best_validation_error_ : the epoch whose weights were kept and its error.
    n_epochs_ : fine-tuning epochs run.
    n_features_in_ : number of input features d.
    """

    def __init__(self, layers=(("cae", 100),), *, pretrain_epochs=10, pretraining="unsupervised",
                 freeze_hidden=False, reconstruction=0.0, epochs=50, batch_size=32,
                 lr=0.003, validation_fraction=0.2, patience=20, random_state=0,
                 layer_params=None, schedule="greedy"):
        self.layers = layers
        self.pretrain_epochs = pretrain_epochs
        self.pretraining = pretraining
        self.freeze_hidden = freeze_hidden
        self.reconstruction = reconstruction
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.random_state = random_state
        self.layer_params = layer_params
        self.schedule = schedule

    def _check_params(self, n_visible: int) -> dict:
        p = super()._check_params(n_visible)
        p["pretraining"] = check_choice("pretraining", self.pretraining, PRETRAININGS)
        p["freeze_hidden"] = check_bool("freeze_hidden", self.freeze_hidden)
        p["reconstruction"] = check_float("reconstruction", self.reconstruction, low=0.0)
        return p

    def _module(self, encoder, n_classes, p, X_train):
        alpha = p["reconstruction"]
        decoder = UnrolledDecoder(self.stack_, encoder) if alpha > 0 else None  # shares tied weights
        return Classifier(encoder, n_classes, lr=p["lr"], optimizer="adam", reconstruction=alpha,
                          decoder=decoder, freeze_hidden=p["freeze_hidden"], seed=p["seed"]), ()


class MTCClassifier(_StackedClassifier):
    """The manifold tangent classifier: a pretrained stack unrolled into an MLP and fine-tuned
    on cross-entropy plus ``beta`` times the tangent penalty: Eq. (3).

    Parameters
    ----------
    layers, pretrain_epochs, epochs, batch_size, lr, validation_fraction, patience,
    random_state, layer_params, schedule : as for ``StackedMLPClassifier``.
    beta : weight of the tangent penalty (>= 0; 0 is ``StackedMLPClassifier``).
    n_tangents : tangents per example, the leading right singular vectors of the pretrained
        stack's Jacobian (``finetune.tangents``), ``1 <= n_tangents <= min(d, n_hidden_L)``.
    tangent_oversample, tangent_rank_tol : their accuracy, ``oversample`` and ``rank_tol`` of
        ``finetune.tangents.tangents`` (Krylov vectors beyond n_tangents; the share of the first
        layer's squared Frobenius norm the search may leave out, 0 for none).

    Attributes
    ----------
    classes_, stack_, best_epoch_, best_validation_error_, n_epochs_, n_features_in_ :
        as for ``StackedMLPClassifier``.
    module_ : the fine-tuned ``finetune.mtc.MTC``.

    References
    ----------
    Rifai, Dauphin, Vincent, Bengio & Muller, The manifold tangent classifier, NIPS 2011.
    """

    def __init__(self, layers=(("cae", 100),), *, pretrain_epochs=10, epochs=50, batch_size=32,
                 lr=0.003, beta=1.0, n_tangents=10, tangent_oversample=OVERSAMPLE,
                 tangent_rank_tol=RANK_TOL, validation_fraction=0.2, patience=20, random_state=0,
                 layer_params=None, schedule="greedy"):
        self.layers = layers
        self.pretrain_epochs = pretrain_epochs
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.beta = beta
        self.n_tangents = n_tangents
        self.tangent_oversample = tangent_oversample
        self.tangent_rank_tol = tangent_rank_tol
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.random_state = random_state
        self.layer_params = layer_params
        self.schedule = schedule

    def _check_params(self, n_visible: int) -> dict:
        p = super()._check_params(n_visible)
        p["beta"] = check_float("beta", self.beta, low=0.0)
        top = _check_layers(self.layers)[-1][1]
        k = check_int("n_tangents", self.n_tangents, 1)
        if k > min(n_visible, top):
            raise ValueError(f"n_tangents={self.n_tangents!r} exceeds min(n_features={n_visible}, "
                             f"top layer n_hidden={top}): the Jacobian has at most "
                             f"{min(n_visible, top)} non-zero singular values")
        p["n_tangents"] = k
        p["tangent_oversample"] = check_int("tangent_oversample", self.tangent_oversample, 0)
        p["tangent_rank_tol"] = check_float("tangent_rank_tol", self.tangent_rank_tol, low=0.0,
                                            high=1.0)
        return p

    def _module(self, encoder, n_classes, p, X_train):
        U, _ = tangents(self.stack_, X_train, p["n_tangents"], oversample=p["tangent_oversample"],
                        rank_tol=p["tangent_rank_tol"], seed=p["seed"])  # (N, k, d)
        module = MTC(encoder, n_classes, beta=p["beta"], lr=p["lr"], optimizer="adam",
                     seed=p["seed"])
        return module, (U,)
