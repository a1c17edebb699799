"""The quickstart's promise: on digits with 50 labels, the manifold tangent classifier beats the
SVM and the k-NN on the same split, and it is the tangent penalty that does it: the same run
with beta = 0 (a broken or absent penalty) is worse by a clear margin."""
import mlflow
import pytest

from pipelines.config import load_config
from pipelines.run import run_pipeline


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("quick") / "mlruns"
    base = ["finetune.methods=[mtc_all]", "baselines.methods=[svm,knn]", "baselines.inputs=[pixels]",
            f"tracking.uri=sqlite:///{root / 'mlflow.db'}"]
    try:
        with_penalty = run_pipeline(load_config("quickstart", base), root=root)
        without = run_pipeline(load_config("quickstart", base + ["finetune.beta=0"]), root=root)
    finally:
        mlflow.set_tracking_uri(None)
    assert without.layers_loaded == [True, True]  # the same stack: only beta differs
    err = lambda res, m: next(r.test for r in res.rows if r.method == m)
    return {"mtc": err(with_penalty, "mtc_all"), "beta0": err(without, "mtc_all"),
            "svm": err(with_penalty, "svm"), "knn": err(with_penalty, "knn"),
            "table": with_penalty.table_markdown}


def test_mtc_beats_svm_and_knn_on_the_same_split(results):
    assert results["mtc"] < results["svm"], results
    assert results["mtc"] < results["knn"], results
    assert "is below svm" in results["table"] and "below knn" in results["table"]


def test_the_tangent_penalty_is_what_helps(results):
    # measured: 8.6% with beta = 1 against 13.2% with beta = 0 (500 test digits)
    assert results["mtc"] + 2.0 < results["beta0"], results
