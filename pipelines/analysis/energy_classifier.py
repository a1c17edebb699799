"""Energy-based classification: one tied autoencoder per class,

    (1) y(x) = argmax_k F_k(x)

the class whose autoencoder gives x the highest potential F_k (``pretrain.energy`` Eq. 1): the
lowest energy. Each autoencoder is fitted by ``pipelines.analysis.vector_field.fit_autoencoder``.

References
----------
Kamyshanska & Memisevic, On autoencoder scoring, ICML 2013.
"""
from __future__ import annotations

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin

from pipelines.analysis.vector_field import fit_autoencoder
from pretrain.autoencoder import AutoEncoder
from pretrain.energy import layer_potential


class EnergyClassifier(ClassifierMixin, BaseEstimator):
    """Eq. (1): one tied autoencoder per class; predict the class of the highest potential.

    Each class's autoencoder is a denoising autoencoder (masking noise) with a linear decoder,
    trained with squared error by its own Lightning Trainer on that class's examples; its
    potential is ``pretrain.energy`` Eq. (1). Potentials are unnormalised (each class has its
    own unknown log-partition), which this rule ignores, as Kamyshanska & Memisevic's does.

    Parameters
    ----------
    n_hidden, hidden_unit : each autoencoder's code size and hidden unit.
    corruption_level : masking probability of the denoising autoencoders.
    epochs, batch_size, lr : Adam training of each autoencoder.
    random_state : seeds class k's autoencoder with ``random_state + k``.

    References
    ----------
    Kamyshanska & Memisevic, On autoencoder scoring, ICML 2013.
    """

    def __init__(self, *, n_hidden: int = 50, hidden_unit: str = "tanh", corruption_level: float = 0.25,
                 epochs: int = 20, batch_size: int = 10, lr: float = 0.01, random_state: int = 0):
        self.n_hidden = n_hidden
        self.hidden_unit = hidden_unit
        self.corruption_level = corruption_level
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.random_state = random_state

    def fit(self, X, y) -> EnergyClassifier:
        X = np.asarray(X, dtype=np.float32)
        y = np.asarray(y)
        if X.ndim != 2 or len(X) != len(y):
            raise ValueError(f"X must be (n, d) with one label per row; got X {X.shape}, y {y.shape}")
        self.classes_ = np.unique(y)
        if len(self.classes_) < 2:
            raise ValueError(f"EnergyClassifier needs at least 2 classes, got {self.classes_.tolist()}")
        self.autoencoders_ = []
        for k, label in enumerate(self.classes_):
            ae = AutoEncoder(X.shape[1], self.n_hidden, hidden_unit=self.hidden_unit,
                             visible_unit="linear", tied=True, loss="mse", corruption="masking",
                             corruption_level=self.corruption_level, optimizer="adam", lr=self.lr,
                             seed=int(self.random_state) + k)
            fit_autoencoder(ae, X[y == label], epochs=self.epochs, batch_size=self.batch_size,
                            seed=int(self.random_state) + k)
            self.autoencoders_.append(ae)
        self.n_features_in_ = X.shape[1]
        return self

    @torch.no_grad()
    def decision_function(self, X) -> np.ndarray:
        """Each class's potential F_k(x): (n, n_classes)."""
        x = torch.as_tensor(np.asarray(X, dtype=np.float32))
        return torch.stack([layer_potential(ae, x) for ae in self.autoencoders_], 1).numpy()

    def predict(self, X) -> np.ndarray:
        return self.classes_[self.decision_function(X).argmax(1)]  # Eq. (1)
