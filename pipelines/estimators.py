"""scikit-learn estimators over the layer-wise pipeline: a pretrainer and two classifiers.

``StackedPretrainer`` is a transformer: ``fit`` pretrains a stack greedily (``pretrain.stack``
Eq. 3, one Lightning Trainer per layer) and ``transform`` returns the top code

    (1) h_L(x) = f_L(... f_1(x))                                  (N, d) -> (N, n_hidden_L)

so that it goes into ``make_pipeline(StackedPretrainer(...), SVC())`` and ``GridSearchCV``.

``StackedMLPClassifier`` and ``MTCClassifier`` pretrain a stack on the inputs given to ``fit``
(no labels used), unroll it into an MLP (``finetune.unroll`` Eq. 3) and fine-tune it on

    (2) CE(x, y)                                                  ``finetune.classifier``
    (3) CE(x, y) + beta * ||(do/dx) U(x)||^2                      ``finetune.mtc``, U(x) the
                                                                  ``n_tangents`` tangents of x

with early stopping on a stratified ``validation_fraction`` of ``(X, y)``: the weights of the
epoch with the lowest validation error are kept (``pipelines.training.KeepBest``). Labels may
be any sortable values; they are mapped to ``0..K-1`` through ``classes_ = np.unique(y)``.

Conventions of scikit-learn: ``__init__`` stores its arguments untouched, ``fit`` validates
them (a ValueError naming the parameter and its value), learned state ends in ``_``, and all
randomness comes from ``random_state``: layer ``k`` is seeded ``seed * 100 + k`` and its batches
by the same number (as in the pipeline's pretraining stage), the head and the tangents by
``seed``, and Lightning's global seed by ``seed``.

References
----------
Bengio, Lamblin, Popovici & Larochelle, Greedy layer-wise training of deep networks, NIPS 2007.
Rifai, Dauphin, Vincent, Bengio & Muller, The manifold tangent classifier, NIPS 2011.
"""
from __future__ import annotations

import numbers

import lightning.pytorch as L
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from finetune.classifier import Classifier
from finetune.mtc import MTC
from finetune.tangent_defaults import OVERSAMPLE, RANK_TOL
from finetune.tangents import tangents
from finetune.unroll import UnrolledEncoder
from pretrain.checks import check_float, check_int
from pretrain.names import KINDS, OPTIMIZERS
from pretrain.presets import accepted_keys, make_layer
from pretrain.stack import GreedyStack

from pipelines.data.datamodule import ArrayDataModule
from pipelines.training import KeepBest, fit_layer, make_trainer, quiet_lightning

__all__ = ["StackedPretrainer", "StackedMLPClassifier", "MTCClassifier"]


# -- validation of hyperparameters (in fit, never in __init__) ----------------------------------
def _seed(random_state) -> int:
    """An integer seed: ``random_state`` itself when it is a non-negative int, else one drawn
    from it (``None`` or a ``RandomState``), as scikit-learn's ``check_random_state`` reads it."""
    if isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        if random_state < 0:
            raise ValueError(f"random_state must be a non-negative integer, None or a "
                             f"numpy RandomState, got {random_state!r}")
        return int(random_state)
    try:
        rng = check_random_state(random_state)
    except ValueError:
        raise ValueError(f"random_state must be a non-negative integer, None or a numpy "
                         f"RandomState, got {random_state!r}") from None
    return int(rng.randint(0, 2**31 - 1))


def _check_layers(layers) -> list[tuple[str, int]]:
    """``layers`` as a list of ``(kind, n_hidden)``; a ValueError naming ``layers`` otherwise."""
    try:
        specs = [tuple(spec) for spec in layers]
    except TypeError:
        specs = None
    if not specs:
        raise ValueError(f"layers must be a non-empty sequence of (kind, n_hidden) pairs, e.g. "
                         f"[('cae', 100)], got {layers!r}")
    out = []
    for k, spec in enumerate(specs):
        if len(spec) != 2:
            raise ValueError(f"layers[{k}] must be a (kind, n_hidden) pair, got {spec!r}")
        kind, n_hidden = spec
        if kind not in KINDS:
            raise ValueError(f"layers[{k}] has unknown kind {kind!r}: choose one of "
                             f"{', '.join(KINDS)}")
        out.append((kind, check_int(f"layers[{k}] n_hidden", n_hidden, 1)))
    return out


def _quiet_seed(seed: int) -> None:
    """Lightning's global seed, for any code below that draws from torch's or numpy's global
    RNG (the layers, the head and the tangents take their own seeded generators)."""
    quiet_lightning()
    L.seed_everything(seed, workers=False, verbose=False)


def _tensor(X: np.ndarray) -> torch.Tensor:
    """A float32 tensor that owns its memory: training never writes into the caller's array."""
    return torch.tensor(X, dtype=torch.float32)


# -- the transformer ----------------------------------------------------------------------------
class StackedPretrainer(TransformerMixin, BaseEstimator):
    """Greedy layer-wise pretraining as a scikit-learn transformer: Eq. (1).

    Parameters
    ----------
    layers : sequence of ``(kind, n_hidden)`` pairs, bottom-up; kinds of ``pretrain.presets.KINDS``.
    epochs : training epochs per layer (>= 0; 0 leaves each layer at its seeded initialisation).
    batch_size : rows per batch.
    lr : learning rate of every layer, or None for each kind's default.
    optimizer : ``"sgd"`` or ``"adam"`` for the autoencoder kinds, or None for their default;
        RBMs keep their contrastive-divergence SGD and do not take it.
    random_state : int, None or ``numpy.random.RandomState``; see the module docstring.
    layer_params : None, or one dict per layer of ``make_layer`` overrides (they win over
        ``lr`` and ``optimizer``).

    Attributes
    ----------
    stack_ : the trained ``pretrain.stack.Stack``.
    n_features_in_ : number of input features d.

    Inputs must lie in the range the bottom layer's loss expects: [0, 1] for the default
    cross-entropy reconstruction (scale pixels by their maximum).
    """

    def __init__(self, layers=(("cae", 100),), *, epochs=10, batch_size=64, lr=None,
                 optimizer=None, random_state=0, layer_params=None):
        self.layers = layers
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.optimizer = optimizer
        self.random_state = random_state
        self.layer_params = layer_params

    def _build_layers(self, n_visible: int, seed: int) -> list:
        specs = _check_layers(self.layers)
        if self.lr is not None:
            check_float("lr", self.lr, low=0.0, low_open=True)
        if self.optimizer is not None and self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be None or one of {', '.join(OPTIMIZERS)}, "
                             f"got {self.optimizer!r}")
        params = self.layer_params
        if params is None:
            params = [{}] * len(specs)
        elif (not isinstance(params, (list, tuple)) or len(params) != len(specs)
              or not all(isinstance(p, dict) for p in params)):
            raise ValueError(f"layer_params must be None or a list of {len(specs)} dicts (one per "
                             f"layer), got {params!r}")
        built, n_in = [], n_visible
        for k, ((kind, n_hidden), overrides) in enumerate(zip(specs, params)):
            kwargs = {"seed": seed * 100 + k}
            if self.lr is not None:
                kwargs["lr"] = self.lr
            if self.optimizer is not None and "optimizer" in accepted_keys(kind):
                kwargs["optimizer"] = self.optimizer
            kwargs.update(overrides)
            try:
                built.append(make_layer(kind, n_in, n_hidden, **kwargs))
            except (TypeError, ValueError) as e:
                raise ValueError(f"layers[{k}] ({kind}, layer_params[{k}]={overrides!r}): "
                                 f"{e}") from None
            n_in = n_hidden
        return built

    def fit(self, X, y=None):
        """Pretrain the stack on ``X`` (N, d); ``y`` is ignored. Returns ``self``."""
        X = validate_data(self, X, dtype=np.float32, ensure_min_samples=2)
        epochs = check_int("epochs", self.epochs, 0)
        batch_size = check_int("batch_size", self.batch_size, 1)
        seed = _seed(self.random_state)
        greedy = GreedyStack(self._build_layers(X.shape[1], seed))
        _quiet_seed(seed)

        def fit(k, layer, codes, val_codes):  # as the pipeline's pretraining stage
            fit_layer(layer, codes, epochs=epochs, batch_size=batch_size, seed=seed * 100 + k,
                      where=f"layers[{k}]")

        self.stack_ = greedy.fit(_tensor(X), fit).eval()
        return self

    def transform(self, X) -> np.ndarray:
        """Eq. (1): the stack's top code of every row, (N, d) -> (N, n_hidden) float32."""
        check_is_fitted(self, "stack_")
        X = validate_data(self, X, dtype=np.float32, reset=False)
        return self.stack_.transform(_tensor(X)).numpy()  # Eq. (1)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]  # codes are float32 for any input
        return tags


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

        self.pretrainer_ = StackedPretrainer(self.layers, epochs=p["pretrain_epochs"],
                                             batch_size=p["batch_size"], random_state=p["seed"],
                                             layer_params=self.layer_params).fit(X)
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
        module, extra = self._module(UnrolledEncoder(self.stack_), K, p, X_tr)
        validate = len(i_val) > 0
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

    Attributes
    ----------
    classes_ : the sorted distinct labels; ``predict`` returns values of it.
    stack_ : the pretrained stack (left as pretrained: fine-tuning trains a copy).
    pretrainer_ : the fitted ``StackedPretrainer`` that holds ``stack_``.
    module_ : the fine-tuned ``finetune.classifier.Classifier``.
    best_epoch_, best_validation_error_ : the epoch whose weights were kept and its error.
    n_epochs_ : fine-tuning epochs run.
    n_features_in_ : number of input features d.
    """

    def __init__(self, layers=(("cae", 100),), *, pretrain_epochs=10, epochs=50, batch_size=32,
                 lr=0.003, validation_fraction=0.2, patience=20, random_state=0,
                 layer_params=None):
        self.layers = layers
        self.pretrain_epochs = pretrain_epochs
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.random_state = random_state
        self.layer_params = layer_params

    def _module(self, encoder, n_classes, p, X_train):
        return Classifier(encoder, n_classes, lr=p["lr"], optimizer="adam", seed=p["seed"]), ()


class MTCClassifier(_StackedClassifier):
    """The manifold tangent classifier: a pretrained stack unrolled into an MLP and fine-tuned
    on cross-entropy plus ``beta`` times the tangent penalty: Eq. (3).

    Parameters
    ----------
    layers, pretrain_epochs, epochs, batch_size, lr, validation_fraction, patience,
    random_state, layer_params : as for ``StackedMLPClassifier``.
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
                 layer_params=None):
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
