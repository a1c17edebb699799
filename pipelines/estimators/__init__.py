"""scikit-learn estimators over the layer-wise pipeline: a pretrainer and two classifiers.

The transformer is in ``pipelines.estimators.pretrainer``, the classifiers in
``pipelines.estimators.classifiers``; both are imported here.

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

from pipelines.estimators.classifiers import MTCClassifier, StackedMLPClassifier
from pipelines.estimators.pretrainer import StackedPretrainer

__all__ = ["StackedPretrainer", "StackedMLPClassifier", "MTCClassifier"]
