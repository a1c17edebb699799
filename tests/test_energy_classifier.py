"""The energy classifier on digits: one denoising autoencoder per class, the class of the
highest potential."""
import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from pipelines.analysis.energy_classifier import EnergyClassifier
from pretrain.energy import layer_potential


def test_energy_classifier_on_digits_beats_chance_by_far():
    """50 training digits per class, one DAE (64-50-64, tanh, linear decoder) per class, the class
    of the highest potential: chance is 90% error; measured about 4%."""
    d = load_digits()
    X, y = (d.data / 16.0).astype(np.float32), d.target
    rng = np.random.default_rng(0)
    train = np.concatenate([rng.permutation(np.flatnonzero(y == k))[:50] for k in range(10)])
    test = np.setdiff1d(np.arange(len(y)), train)
    clf = EnergyClassifier(random_state=0).fit(X[train], y[train])
    err = 1.0 - clf.score(X[test], y[test])
    assert err < 0.2, err
    F = clf.decision_function(X[test[:5]])
    assert F.shape == (5, 10)
    with torch.no_grad():
        want = layer_potential(clf.autoencoders_[3], torch.from_numpy(X[test[:5]])).numpy()
    np.testing.assert_allclose(F[:, 3], want, rtol=1e-6)
    with pytest.raises(ValueError, match="2 classes"):
        EnergyClassifier().fit(X[:10], np.zeros(10))
