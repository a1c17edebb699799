"""Same config and seed on the same machine: identical numbers to the last digit; another seed
differs. Every run records package versions and the git commit."""
import mlflow
import torch

from pipelines.config import load_config
from pipelines.run import run_pipeline

TINY = ["pretrain.epochs=2", "pretrain.layers.0.n_hidden=24", "pretrain.layers.1.n_hidden=12",
        "finetune.epochs=5", "finetune.methods=[mlp]", "finetune.labels=100",
        "baselines.methods=[svm]", "baselines.inputs=[codes]"]


def _run(tmp_path, name, extra=()):
    root = tmp_path / name / "mlruns"
    cfg = load_config("quickstart", TINY + [f"tracking.uri=sqlite:///{root / 'mlflow.db'}", *extra])
    try:
        return run_pipeline(cfg, root=root)
    finally:
        mlflow.set_tracking_uri(None)


def test_same_seed_identical_other_seed_differs(tmp_path):
    a, b = _run(tmp_path, "a"), _run(tmp_path, "b")
    assert [(r.method, r.inputs, r.test, r.valid) for r in a.rows] == \
           [(r.method, r.inputs, r.test, r.valid) for r in b.rows]
    for (name, wa), (_, wb) in zip(a.stack.state_dict().items(), b.stack.state_dict().items()):
        assert torch.equal(wa, wb), name
    c = _run(tmp_path, "c", ["seed=1"])
    assert not torch.equal(a.stack[0].encoder_weight, c.stack[0].encoder_weight)
    assert [r.test for r in a.rows] != [r.test for r in c.rows] or \
           [r.valid for r in a.rows] != [r.valid for r in c.rows]

    mlflow.set_tracking_uri(a.tracking_uri)
    tags = mlflow.get_run(a.run_id).data.tags
    mlflow.set_tracking_uri(None)
    for key in ("version.torch", "version.lightning", "version.mlflow", "version.scikit-learn",
                "git_commit", "python"):
        assert tags.get(key), key
