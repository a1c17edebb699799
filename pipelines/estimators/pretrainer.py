"""``StackedPretrainer``: layer-wise pretraining as a scikit-learn transformer, greedy or joint,
and the hyperparameter checks the classifiers share (see ``pipelines.estimators`` for the
conventions)."""
from __future__ import annotations

import numbers
import tempfile
import warnings
from pathlib import Path

import lightning.pytorch as L
import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from pretrain.checks import check_choice, check_float, check_int
from pretrain.joint import JointStack
from pretrain.names import KINDS, OPTIMIZERS
from pretrain.presets import accepted_keys, make_layer
from pretrain.stack import GreedyStack

from pipelines.training import fit_layer, quiet_lightning

#: how the layers are trained: each on the final codes of the one below (``pretrain.stack``), or
#: all together, one epoch a round on the current codes below (``pretrain.joint``)
SCHEDULES = ("greedy", "joint")


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


def _fit_jointly(layers: list, X: torch.Tensor, *, epochs: int, batch_size: int, seed: int):
    """``pretrain.joint``: ``epochs`` rounds; in round e each layer goes on to e epochs from the
    Lightning checkpoint its previous round left (its optimizer, epoch count and noise streams
    carried on), in a folder removed when the fit ends."""
    with tempfile.TemporaryDirectory(prefix="layerwise-joint-") as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Checkpoint directory .* exists and is not empty")

        def fit_to(k, layer, codes, val_codes, *, epochs):
            fit_layer(layer, codes, epochs=epochs, batch_size=batch_size, seed=seed * 100 + k,
                      ckpt_dir=Path(tmp) / f"layer{k + 1}", where=f"layers[{k}]")

        return JointStack(layers).fit(X, fit_to, epochs=[epochs] * len(layers))


# -- the transformer ----------------------------------------------------------------------------
class StackedPretrainer(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Layer-wise pretraining as a scikit-learn transformer: Eq. (1).

    Parameters
    ----------
    layers : sequence of ``(kind, n_hidden)`` pairs, bottom-up; kinds of ``pretrain.presets.KINDS``.
    epochs : training epochs per layer (>= 0; 0 leaves each layer at its seeded initialisation).
    batch_size : rows per batch.
    lr : learning rate of every layer that has one (a whitening layer is fitted in closed form),
        or None for each kind's default.
    optimizer : ``"sgd"`` or ``"adam"`` for the autoencoder kinds, or None for their default;
        RBMs keep their contrastive-divergence SGD and do not take it.
    random_state : int, None or ``numpy.random.RandomState``; see the module docstring.
    layer_params : None, or one dict per layer of ``make_layer`` overrides (they win over
        ``lr`` and ``optimizer``).
    schedule : ``"greedy"`` (layer k trained for ``epochs`` on the codes of the trained layer
        k - 1) or ``"joint"`` (``epochs`` rounds, each one more epoch of every layer bottom-up
        on the current codes below, ``pretrain.joint``); one layer, or one epoch, trains the same
        under both.

    Attributes
    ----------
    stack_ : the trained ``pretrain.stack.Stack``.
    n_features_in_ : number of input features d.

    Inputs must lie in the range the bottom layer's loss expects: [0, 1] for the default
    cross-entropy reconstruction (scale pixels by their maximum); for real-valued inputs give
    the bottom layer ``{"loss": "mse", "visible_unit": "linear"}`` in ``layer_params``.
    scikit-learn's ``check_estimator`` feeds unbounded data, so the default settings fail the
    checks that fit on it, each with the ValueError that names the range, and pass them all
    with that ``layer_params`` (both run in ``tests/test_estimators.py``).

    Output: ``set_output(transform="pandas")`` (or a pipeline's) makes ``transform`` return a
    DataFrame with the input's index and the columns of ``get_feature_names_out()``,
    ``stackedpretrainer0 .. stackedpretrainer<n_hidden_L - 1>``, one per top-layer unit.
    """

    def __init__(self, layers=(("cae", 100),), *, epochs=10, batch_size=64, lr=None,
                 optimizer=None, random_state=0, layer_params=None, schedule="greedy"):
        self.layers = layers
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.optimizer = optimizer
        self.random_state = random_state
        self.layer_params = layer_params
        self.schedule = schedule

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
            if self.lr is not None and "lr" in accepted_keys(kind):
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
        schedule = check_choice("schedule", self.schedule, SCHEDULES)
        seed = _seed(self.random_state)
        layers = self._build_layers(X.shape[1], seed)
        _quiet_seed(seed)
        if schedule == "joint" and epochs > 0:
            self.stack_ = _fit_jointly(layers, _tensor(X), epochs=epochs, batch_size=batch_size,
                                       seed=seed).eval()
        else:
            def fit(k, layer, codes, val_codes):  # as the pipeline's pretraining stage
                fit_layer(layer, codes, epochs=epochs, batch_size=batch_size, seed=seed * 100 + k,
                          where=f"layers[{k}]")

            self.stack_ = GreedyStack(layers).fit(_tensor(X), fit).eval()
        self._n_features_out = self.stack_.n_hidden  # for get_feature_names_out
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


