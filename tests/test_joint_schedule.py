"""The joint pretraining schedule: greedy for one layer, moving codes for two, its own cache keys,
a resumed killed run, one tracked run per layer with its metrics of every round."""
import mlflow
import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from pipelines import tracking
from pipelines.config import ConfigError, load_config
from pipelines.stages.layer_cache import layer_digest, layer_path
from pipelines.stages.pretraining import pretrain_stack, tracked_layer_fitter
from pretrain.joint import JointStack
from pretrain.presets import make_layer

EPOCHS = 4
LAYERS = ("[{kind: dae, n_hidden: 32, optimizer: sgd, lr: 0.5},"
          " {kind: ae, n_hidden: 16, optimizer: sgd, lr: 0.5}]")


@pytest.fixture(scope="module")
def X():
    x = load_digits().data.astype(np.float32) / 16.0  # (1797, 64) in [0, 1]
    return torch.from_numpy(x[:600])


def _cfg(schedule: str, layers: str = LAYERS):
    return load_config("quickstart", [f"pretrain.schedule={schedule}", f"pretrain.epochs={EPOCHS}",
                                      f"pretrain.layers={layers}", "pretrain.batch_size=50"])


def _pretrain(cfg, X, root, cache="cache"):
    uri = tracking.default_uri(root / "mlruns")
    experiment_id = tracking.setup(uri, "joint")
    fit_layer = tracked_layer_fitter(cfg, uri=uri, experiment_id=experiment_id,
                                     cache_dir=root / cache, image_shape=None)
    with tracking.start_run("parent", experiment_id=experiment_id) as parent:
        stack, loaded = pretrain_stack(cfg, X, None, cache_dir=root / cache, fit_layer=fit_layer)
    return stack, loaded, uri, parent.info.run_id


def _rec_error(stack, X) -> float:
    """Mean squared reconstruction error of the whole stack, Eq. (2) of ``pretrain.stack``."""
    with torch.no_grad():
        return float(((stack.eval().reconstruct(X) - X) ** 2).sum(1).mean())


def test_schedule_is_validated_and_out_of_the_digest_while_greedy():
    with pytest.raises(ConfigError, match=r"pretrain\.schedule: Input should be 'greedy' or 'joint'"):
        load_config("quickstart", ["pretrain.schedule=jointly"])
    cfg = load_config("quickstart")
    assert cfg.pretrain.schedule == "greedy"
    # the keys cached stacks were saved under (test_pretraining_stage) stay as they were
    assert layer_digest(cfg, 0) == "1c2cfb896f91f659"
    joint = load_config("quickstart", ["pretrain.schedule=joint"])
    assert [layer_digest(joint, k) for k in (0, 1)] != [layer_digest(cfg, k) for k in (0, 1)]


def test_one_layer_joint_equals_greedy_bit_for_bit(X, tmp_path):
    one = "[{kind: dae, n_hidden: 32, optimizer: sgd, lr: 0.5}]"
    greedy, _, _, _ = _pretrain(_cfg("greedy", one), X, tmp_path / "g")
    joint, loaded, _, _ = _pretrain(_cfg("joint", one), X, tmp_path / "j")
    assert loaded == [False]
    for (name, a), (_, b) in zip(greedy.state_dict().items(), joint.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    # trained at all: a fresh layer's weights are not these
    fresh = make_layer("dae", 64, 32, seed=_cfg("joint", one).seed * 100)
    assert (joint[0].encoder_weight - fresh.encoder_weight).abs().max() > 1e-2


def test_two_layers_joint_sees_moving_codes_and_reconstructs_as_well(X, tmp_path):
    greedy, _, _, _ = _pretrain(_cfg("greedy"), X, tmp_path / "g")
    joint, loaded, uri, parent = _pretrain(_cfg("joint"), X, tmp_path / "j")
    assert loaded == [False, False]
    # layer 1 sees the same pixels in both schedules, so it is the same layer
    torch.testing.assert_close(joint[0].encoder_weight, greedy[0].encoder_weight, rtol=0, atol=0)
    # layer 2 saw layer 1's codes of every epoch, not only the last ones
    gap = (joint[1].encoder_weight - greedy[1].encoder_weight).abs().max()
    assert gap > 1e-3, gap
    e_greedy, e_joint = _rec_error(greedy, X), _rec_error(joint, X)
    mean_only = float(((X - X.mean(0)) ** 2).sum(1).mean())  # ~ the error of the mean image
    assert e_greedy < 0.6 * mean_only and e_joint < 0.6 * mean_only, (e_greedy, e_joint, mean_only)
    assert abs(e_joint - e_greedy) < 0.25 * e_greedy, (e_greedy, e_joint)
    # one nested run per layer, with its loss at every epoch of every round
    client = mlflow.MlflowClient(uri)
    children = client.search_runs([client.get_run(parent).info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent}'")
    assert sorted(r.info.run_name for r in children) == ["layer 1 (dae 64-32)", "layer 2 (ae 32-16)"]
    for run in children:
        assert run.info.status == "FINISHED"
        steps = {m.step for m in client.get_metric_history(run.info.run_id, "epoch")}
        assert len(steps) == EPOCHS, (run.info.run_name, steps)


def test_cache_reloads_a_joint_stack_and_a_killed_run_resumes_exactly(X, tmp_path):
    cfg = _cfg("joint")
    full, _, _, _ = _pretrain(cfg, X, tmp_path / "a")
    again, loaded, _, _ = _pretrain(cfg, X, tmp_path / "a")
    assert loaded == [True, True]
    torch.testing.assert_close(again[1].encoder_weight, full[1].encoder_weight, rtol=0, atol=0)
    # a greedy run in the same folder does not read the joint stack back
    _, loaded, _, _ = _pretrain(_cfg("greedy", LAYERS[:LAYERS.index("}") + 1] + "]"), X, tmp_path / "a")
    assert loaded == [False]

    # killed in round 2, after layer 1's epoch 2 and before layer 2's: each layer's checkpoint
    # is where the kill left it, and the rerun goes on from there
    class Killed(Exception):
        pass

    root = tmp_path / "b"
    uri = tracking.default_uri(root / "mlruns")
    inner = tracked_layer_fitter(cfg, uri=uri, experiment_id=tracking.setup(uri, "joint"),
                                 cache_dir=root / "cache", image_shape=None)

    def dies_in_round_2(k, layer, codes, val_codes, epochs):
        if (k, epochs) == (1, 2):
            raise Killed
        inner(k, layer, codes, val_codes, epochs=epochs)

    with pytest.raises(Killed), tracking.start_run("parent", experiment_id=tracking.setup(uri, "joint")):
        pretrain_stack(cfg, X, None, cache_dir=root / "cache", fit_layer=dies_in_round_2)
    assert not layer_path(root / "cache", cfg, 0).exists()
    ckpts = {p.parent.name.split("-")[0]: torch.load(p, weights_only=True)["epoch"]
             for p in (root / "cache").glob("*-ckpt/last.ckpt")}
    assert ckpts == {"layer1": 1, "layer2": 0}  # 0-based epochs: 2 and 1 finished
    resumed, loaded, _, _ = _pretrain(cfg, X, root)
    assert loaded == [False, False]
    for a, b in zip(resumed.state_dict().values(), full.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_joint_stack_checks_the_epoch_budgets(X):
    stack = JointStack([make_layer("ae", 64, 8, seed=0)])
    with pytest.raises(ValueError, match="each of the 1 layers at least one epoch"):
        stack.fit(X, lambda *a, **k: None, epochs=[0])
