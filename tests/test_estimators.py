"""The scikit-learn interface: pipelines, grid search, exact transforms, accuracy, bad input."""
import pickle
import tempfile
import warnings

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.svm import SVC
from sklearn.preprocessing import MinMaxScaler
from sklearn.utils.estimator_checks import (
    check_estimator,
    check_global_output_transform_pandas,
    check_set_output_transform,
    check_set_output_transform_pandas,
)

from pipelines.estimators import MTCClassifier, StackedMLPClassifier, StackedPretrainer
from pretrain.presets import make_layer

# small classifier settings: the whole file stays in the default (fast) run
FAST = dict(layers=[("cae", 32)], pretrain_epochs=3, epochs=30, lr=0.01)
MSE = [{"loss": "mse", "visible_unit": "linear"}]  # for check_estimator's unbounded inputs


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return (X / 16.0), y  # pixels in [0, 1], as the cross-entropy reconstruction needs


@pytest.fixture(scope="module")
def labeled(digits):
    """200 labeled digits (class-balanced, random writers) and the other 1597 for testing."""
    X, y = digits
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, train_size=200, stratify=y, random_state=0)
    return X_tr, y_tr, X_te, y_te


@pytest.fixture(scope="module")
def mlp(labeled):
    X_tr, y_tr, _, _ = labeled
    return StackedMLPClassifier(**FAST).fit(X_tr, y_tr)


@pytest.fixture(scope="module")
def mtc(labeled):
    X_tr, y_tr, _, _ = labeled
    return MTCClassifier(**FAST, n_tangents=5).fit(X_tr, y_tr)


def _rec_error(stack, X) -> float:
    x = torch.as_tensor(X, dtype=torch.float32)
    with torch.no_grad():
        return float(((stack.reconstruct(x) - x) ** 2).sum(1).mean())


# -- the transformer ------------------------------------------------------------------------
def test_pipeline_with_svc_classifies_digits(digits):
    X, y = digits
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, train_size=500, stratify=y, random_state=0)
    pipe = make_pipeline(StackedPretrainer(layers=[("cae", 32)], epochs=3), SVC()).fit(X_tr, y_tr)
    acc = pipe.score(X_te, y_te)
    print(f"StackedPretrainer(cae 32, 3 epochs) + SVC, 500 digits: test accuracy {acc:.4f}")
    assert acc > 0.85  # zeros, shuffled rows or a constant code fall far below
    # fit trained the layer: 3 epochs cut the reconstruction error of the seeded initialisation
    untrained = StackedPretrainer(layers=[("cae", 32)], epochs=0).fit(X_tr)
    trained = pipe.named_steps["stackedpretrainer"]
    assert _rec_error(trained.stack_, X_te) < 0.6 * _rec_error(untrained.stack_, X_te)


def test_grid_search_clone_and_set_params(digits):
    X, y = digits
    est = StackedPretrainer(layers=[("cae", 16)], epochs=1, batch_size=32)
    search = GridSearchCV(make_pipeline(est, SVC()), {"svc__C": [1, 10]}, cv=2)
    search.fit(X[:300], y[:300])
    assert search.best_params_["svc__C"] in (1, 10)
    assert len(search.cv_results_["mean_test_score"]) == 2
    assert search.best_score_ > 0.7
    assert search.score(X[300:], y[300:]) > 0.7

    twin = clone(est)
    assert twin.get_params() == est.get_params() and twin is not est
    assert not hasattr(twin, "stack_")
    # set_params(epochs=0) takes effect: the fitted layer is exactly its seeded initialisation
    twin.set_params(epochs=0).fit(X[:300])
    assert twin.get_params()["epochs"] == 0
    init = make_layer("cae", 64, 16, seed=0)  # layer k is seeded random_state * 100 + k
    assert torch.equal(twin.stack_[0].encoder_weight, init.encoder_weight)
    twin.set_params(epochs=2).fit(X[:300])
    assert not torch.allclose(twin.stack_[0].encoder_weight, init.encoder_weight, atol=1e-3)


def test_transform_is_the_stack_code_and_reproducible(digits):
    X, _ = digits
    X_fit, X_new = X[:300], X[300:400]
    kw = dict(layers=[("cae", 24), ("dae", 8)], epochs=2)
    est = StackedPretrainer(**kw, random_state=0).fit(X_fit)
    codes = est.transform(X_new)
    assert codes.dtype == np.float32 and codes.shape == (100, 8)
    with torch.no_grad():
        ref = est.stack_.encode(torch.as_tensor(X_new, dtype=torch.float32)).numpy()
    np.testing.assert_array_equal(codes, ref)
    assert est.n_features_in_ == 64

    again = StackedPretrainer(**kw, random_state=0).fit(X_fit).transform(X_new)
    np.testing.assert_array_equal(again, codes)
    other = StackedPretrainer(**kw, random_state=1).fit(X_fit).transform(X_new)
    assert np.abs(other - codes).max() > 1e-2
    np.testing.assert_array_equal(est.fit_transform(X_fit), est.transform(X_fit))


def _weights(est, k: int) -> dict:
    return {n: t.clone() for n, t in est.stack_[k].state_dict().items()}


def test_joint_schedule_trains_every_layer_on_the_current_codes_below(digits, tmp_path, monkeypatch):
    """Joint: layer 1 trains exactly as greedily (its input never changes; each round goes on
    from the checkpoint of the last), layer 2 differs (it saw layer 1's codes of every round);
    with one epoch both schedules are the same stack. The checkpoints go with the fit."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    X = digits[0][:400]
    layers, kw = [("cae", 16), ("dae", 8)], dict(batch_size=50, random_state=3)
    greedy = StackedPretrainer(layers, epochs=3, **kw).fit(X)
    joint = StackedPretrainer(layers, epochs=3, schedule="joint", **kw).fit(X)
    for name, w in _weights(greedy, 0).items():
        assert torch.equal(w, _weights(joint, 0)[name]), name
    assert all((w - _weights(joint, 1)[n]).abs().max() > 1e-3 for n, w in _weights(greedy, 1).items())
    assert _rec_error(joint.stack_, X) < _rec_error(StackedPretrainer(layers, epochs=0, **kw).fit(X).stack_, X)
    one = [StackedPretrainer(layers, epochs=1, schedule=s, **kw).fit(X).transform(X) for s in ("greedy", "joint")]
    np.testing.assert_array_equal(*one)
    assert list(tmp_path.iterdir()) == []  # the rounds' checkpoints were removed


# -- the classifiers ------------------------------------------------------------------------
def test_classifier_pretrains_jointly_when_asked(labeled):
    X_tr, y_tr, X_te, y_te = labeled
    layers = [("cae", 24), ("cae", 16)]
    est = StackedMLPClassifier(**{**FAST, "layers": layers}, schedule="joint").fit(X_tr, y_tr)
    ref = StackedPretrainer(layers, epochs=FAST["pretrain_epochs"], batch_size=32, schedule="joint").fit(X_tr)
    for k in range(2):
        for name, w in _weights(ref, k).items():
            assert torch.equal(w, _weights(est, k)[name]), (k, name)
    assert est.score(X_te, y_te) > 0.8


@pytest.mark.parametrize("name", ["mlp", "mtc"])
def test_classifier_accuracy_and_probabilities(name, request, labeled):
    clf = request.getfixturevalue(name)
    _, _, X_te, y_te = labeled
    acc = clf.score(X_te, y_te)
    print(f"{type(clf).__name__}(cae 32), 200 labels: test accuracy {acc:.4f}, "
          f"best epoch {clf.best_epoch_} of {clf.n_epochs_}")
    assert acc > 0.8
    proba = clf.predict_proba(X_te)
    assert proba.shape == (len(X_te), 10)
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-5)
    assert (proba >= 0).all()
    np.testing.assert_array_equal(clf.predict(X_te), clf.classes_[proba.argmax(1)])
    np.testing.assert_array_equal(clf.classes_, np.arange(10))
    # fine-tuning trained a copy: stack_ is still what the same pretraining alone gives
    X_tr = labeled[0]
    alone = StackedPretrainer(FAST["layers"], epochs=3, batch_size=32, random_state=0).fit(X_tr)
    np.testing.assert_array_equal(clf.pretrainer_.transform(X_te), alone.transform(X_te))
    W_tuned = clf.module_.encoder.layers[0].weight.detach()
    assert (W_tuned - clf.stack_[0].encoder_weight).abs().max() > 1e-3
    restored = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(restored.predict_proba(X_te[:50]), proba[:50])


def test_string_labels_round_trip(labeled, mlp):
    """Labels are mapped to 0..K-1 by sorting: strings in the digits' order give the same model."""
    X_tr, y_tr, X_te, _ = labeled
    names = np.array([f"digit {d}" for d in range(10)])
    clf = StackedMLPClassifier(**FAST).fit(X_tr, names[y_tr])
    np.testing.assert_array_equal(clf.classes_, names)
    pred = clf.predict(X_te)
    assert pred.dtype.kind == "U"
    np.testing.assert_array_equal(pred, names[mlp.predict(X_te)])


def test_mtc_with_beta_zero_is_the_mlp(labeled):
    """Same seeds: beta = 0 gives the MLP's probabilities exactly; beta > 0 changes them."""
    X_tr, y_tr, X_te, _ = labeled
    small = dict(layers=[("cae", 16)], pretrain_epochs=1, epochs=5, lr=0.01)
    p_mlp = StackedMLPClassifier(**small).fit(X_tr, y_tr).predict_proba(X_te)
    p_0 = MTCClassifier(**small, beta=0.0, n_tangents=3).fit(X_tr, y_tr).predict_proba(X_te)
    p_1 = MTCClassifier(**small, beta=1.0, n_tangents=3).fit(X_tr, y_tr).predict_proba(X_te)
    np.testing.assert_array_equal(p_0, p_mlp)
    assert np.abs(p_1 - p_mlp).max() > 1e-3


def test_without_validation_trains_every_epoch(labeled):
    X_tr, y_tr, X_te, y_te = labeled
    clf = StackedMLPClassifier(**{**FAST, "epochs": 12}, validation_fraction=0).fit(X_tr, y_tr)
    assert clf.n_epochs_ == 12 and clf.best_validation_error_ is None
    assert clf.score(X_te, y_te) > 0.7


# -- bad input ------------------------------------------------------------------------------
def test_wrong_feature_count_at_transform_and_predict(digits, mlp):
    X, _ = digits
    est = StackedPretrainer(layers=[("cae", 8)], epochs=1).fit(X[:100])
    with pytest.raises(ValueError, match=r"10 features.*64"):
        est.transform(X[:5, :10])
    with pytest.raises(ValueError, match=r"10 features.*64"):
        mlp.predict(X[:5, :10])


@pytest.mark.parametrize("make, fit_y", [
    (lambda: StackedPretrainer(epochs=1), False),
    (lambda: StackedMLPClassifier(**FAST), True),
    (lambda: MTCClassifier(**FAST), True),
])
def test_nan_in_x_is_rejected(digits, make, fit_y):
    X, y = digits
    X = X[:100].copy()
    X[3, 7] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        make().fit(X, y[:100]) if fit_y else make().fit(X)


@pytest.mark.parametrize("cls", [StackedMLPClassifier, MTCClassifier])
def test_single_class_is_rejected(digits, cls):
    X, _ = digits
    with pytest.raises(ValueError, match="single class"):
        cls(**FAST).fit(X[:50], np.full(50, 4))


@pytest.mark.parametrize("est, name", [
    (StackedPretrainer(epochs=-1), "epochs"),
    (StackedPretrainer(batch_size=0), "batch_size"),
    (StackedPretrainer(lr=-0.1), "lr"),
    (StackedPretrainer(optimizer="rmsprop"), "optimizer"),
    (StackedPretrainer(layers=[("vae", 10)]), "vae"),
    (StackedPretrainer(layers=[("cae", 0)]), r"layers\[0\] n_hidden"),
    (StackedPretrainer(layers=[]), "layers"),
    (StackedPretrainer(layer_params=[{}, {}]), "layer_params"),
    (StackedPretrainer(layer_params=[{"contraction": -1.0}]), "contraction"),
    (StackedPretrainer(random_state=-3), "random_state"),
    (StackedPretrainer(schedule="layerwise"), "schedule 'layerwise'"),
    (MTCClassifier(schedule="Joint"), "schedule"),
    (StackedMLPClassifier(epochs=-5), "epochs"),
    (StackedMLPClassifier(pretrain_epochs=-1), "pretrain_epochs"),
    (StackedMLPClassifier(lr=0), "lr"),
    (StackedMLPClassifier(validation_fraction=1.0), "validation_fraction"),
    (StackedMLPClassifier(patience=0), "patience"),
    (MTCClassifier(beta=-1.0), "beta"),
    (MTCClassifier(layers=[("cae", 8)], n_tangents=9), "n_tangents"),
    (MTCClassifier(tangent_oversample=-1), "tangent_oversample"),
    (MTCClassifier(tangent_rank_tol=1.0), "tangent_rank_tol"),
])
def test_bad_hyperparameter_is_named_at_fit(digits, est, name):
    X, y = digits
    with pytest.raises(ValueError, match=name):
        est.fit(X[:60], y[:60])


def test_the_tangent_accuracy_parameters_reach_the_tangents(labeled, monkeypatch):
    import finetune.tangents as tg
    import pipelines.estimators.classifiers as estimators

    X_tr, y_tr, _, _ = labeled
    calls = []
    real = tg.tangents
    monkeypatch.setattr(estimators, "tangents", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    clf = MTCClassifier(layers=[("cae", 8)], pretrain_epochs=1, epochs=1, n_tangents=2)
    assert (clf.tangent_oversample, clf.tangent_rank_tol) == (tg.OVERSAMPLE, tg.RANK_TOL)
    clf.set_params(tangent_oversample=3, tangent_rank_tol=0.2).fit(X_tr, y_tr)
    assert [(c["oversample"], c["rank_tol"]) for c in calls] == [(3, 0.2)]


def test_inputs_outside_the_loss_range_are_named(digits):
    X, _ = digits
    with pytest.raises(ValueError, match=r"layers\[0\].*\[0, 1\]"):
        StackedPretrainer(layers=[("cae", 8)], epochs=1).fit(X[:50] * 16)


def test_too_few_examples_for_a_stratified_validation_set(digits):
    X, y = digits
    with pytest.raises(ValueError, match="validation_fraction"):
        StackedMLPClassifier(**FAST).fit(X[:12], y[:12])  # classes with a single example


def test_inputs_are_not_mutated(labeled):
    X_tr, y_tr, X_te, _ = labeled
    for X in (X_tr.copy(), X_tr.astype(np.float32)):  # float32: no conversion copy on the way in
        before, y_before = X.copy(), y_tr.copy()
        est = StackedPretrainer(layers=[("dae", 8)], epochs=1).fit(X)
        est.transform(X)
        clf = MTCClassifier(layers=[("cae", 8)], pretrain_epochs=1, epochs=2, n_tangents=2)
        clf.fit(X, y_tr).predict(X)
        np.testing.assert_array_equal(X, before)
        np.testing.assert_array_equal(y_tr, y_before)


# -- scikit-learn's output API ----------------------------------------------------------------
def test_set_output_pandas_gives_a_dataframe_with_the_feature_names(digits):
    pd = pytest.importorskip("pandas")
    X, _ = digits
    frame = pd.DataFrame(X[:200] * 16, columns=[f"pixel{i}" for i in range(64)],
                         index=np.arange(1000, 1200))
    pipe = make_pipeline(MinMaxScaler(), StackedPretrainer(layers=[("cae", 6)], epochs=1))
    out = pipe.set_output(transform="pandas").fit(frame).transform(frame)
    assert isinstance(out, pd.DataFrame)
    assert list(out.columns) == [f"stackedpretrainer{i}" for i in range(6)]
    assert list(out.columns) == list(pipe.get_feature_names_out())
    assert (out.index == frame.index).all()
    est = pipe.named_steps["stackedpretrainer"]
    scaled = pipe.named_steps["minmaxscaler"].transform(frame)
    np.testing.assert_array_equal(out.to_numpy(), est.set_output(transform="default").transform(scaled))
    assert est.feature_names_in_.tolist() == [f"pixel{i}" for i in range(64)]
    with pytest.raises(ValueError, match="input_features"):
        est.get_feature_names_out(["a", "b"])


def test_scikit_learns_set_output_checks():
    est = StackedPretrainer(layers=[("ae", 3)], epochs=1, layer_params=MSE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the checks mix fitting with and without column names
        for check in (check_set_output_transform, check_set_output_transform_pandas,
                      check_global_output_transform_pandas):
            check("StackedPretrainer", est)


# -- scikit-learn's own estimator checks ------------------------------------------------------
#: the checks that fit the default StackedPretrainer (cross-entropy bottom layer, inputs in
#: [0, 1]) on scikit-learn's unbounded data: each fails with the ValueError naming the range
DEFAULT_EXPECTED_FAILURES = {name: "the default bottom layer needs inputs in [0, 1]" for name in (
    "check_estimators_overwrite_params", "check_dont_overwrite_parameters",
    "check_estimators_fit_returns_self", "check_readonly_memmap_input",
    "check_n_features_in_after_fitting", "check_positive_only_tag_during_fit",
    "check_estimators_dtypes", "check_pipeline_consistency", "check_estimators_pickle",
    "check_f_contiguous_array_estimator", "check_transformer_data_not_an_array",
    "check_transformer_general", "check_transformer_preserve_dtypes",
    "check_methods_sample_order_invariance", "check_methods_subset_invariance",
    "check_fit2d_1feature", "check_dict_unchanged", "check_fit_idempotent",
    "check_fit_check_is_fitted", "check_n_features_in", "check_fit2d_predict1d")}


def _check(est, expected_failed_checks=None) -> list[dict]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the array-API check skips without SciPy's flag
        results = check_estimator(est, on_fail=None, expected_failed_checks=expected_failed_checks)
    failed = [f"{r['check_name']}: {r['exception']!r}" for r in results if r["status"] == "failed"]
    assert not failed, "\n".join(failed)
    return results


def test_check_estimator_pretrainer():
    # check_estimator's data is not in [0, 1]: a real-valued bottom layer (MSE, linear units)
    results = _check(StackedPretrainer(layers=[("ae", 3)], epochs=1, layer_params=MSE))
    assert not [r for r in results if r["status"] == "xfail"]


def test_check_estimator_pretrainer_defaults_fail_only_as_documented():
    """The defaults fail exactly the checks that fit on unbounded data, each for that reason."""
    results = _check(StackedPretrainer(layers=[("ae", 3)], epochs=1),
                     expected_failed_checks=DEFAULT_EXPECTED_FAILURES)
    xfailed = {r["check_name"] for r in results if r["status"] == "xfail"}
    assert xfailed == set(DEFAULT_EXPECTED_FAILURES)  # none of them passes unnoticed
    for r in results:
        if r["status"] == "xfail":
            e, chain = r["exception"], ""
            while e is not None:  # a check may wrap the ValueError in an AssertionError
                chain, e = chain + str(e), e.__cause__ or e.__context__
            assert "[0, 1]" in chain, (r["check_name"], r["exception"])
    assert sum(r["status"] == "passed" for r in results) >= 20


@pytest.mark.slow
@pytest.mark.parametrize("est", [
    StackedMLPClassifier(layers=[("ae", 16)], pretrain_epochs=1, epochs=8, lr=0.05,
                         validation_fraction=0, layer_params=MSE),
    MTCClassifier(layers=[("ae", 16)], pretrain_epochs=1, epochs=8, lr=0.05, n_tangents=1,
                  layer_params=MSE),
])
def test_check_estimator_classifiers(est):  # about 13 s each on one core
    _check(est)
