"""The pretraining stage's cache: keys that follow the weights, atomic saves, refused mismatches."""
import pytest
import torch

from pipelines.config import load_config
from pipelines.stages.layer_cache import CheckpointMismatch, layer_digest, load_layer, save_layer
from pipelines.stages.pretraining import build_layers


def test_digest_follows_what_determines_the_weights():
    a = load_config("quickstart")
    same = load_config("quickstart", ["finetune.labels=100", "data.n_test=50", "data.valid_labels=20",
                                      "baselines.methods=[knn]", "tracking.experiment=x"])
    assert [layer_digest(a, k) for k in (0, 1)] == [layer_digest(same, k) for k in (0, 1)]
    above = load_config("quickstart", ["pretrain.layers.1.n_hidden=7"])
    assert layer_digest(above, 0) == layer_digest(a, 0)  # a change above layer 1 keeps layer 1
    assert layer_digest(above, 1) != layer_digest(a, 1)
    for change in ("seed=1", "pretrain.epochs=2", "data.n_valid=100", "pretrain.layers.0.lr=0.5"):
        assert layer_digest(load_config("quickstart", [change]), 0) != layer_digest(a, 0), change


def test_build_layers_chains_sizes_and_names_bad_layer():
    cfg = load_config("quickstart")
    layers = build_layers(cfg, 64)
    assert [(l.n_visible, l.n_hidden) for l in layers] == [(64, 200), (200, 100)]
    bad = load_config("quickstart", ["pretrain.layers.0.corruption=masking",
                                     "pretrain.layers.0.corruption_level=1.5"])
    with pytest.raises(ValueError, match=r"pretrain\.layers\.0 \(cae_h\): .*1\.5"):
        build_layers(bad, 64)
    with pytest.raises(ValueError, match="pretrain.layers is empty"):
        build_layers(load_config("quickstart", ["pretrain.layers=[]"]), 64)


def test_save_load_roundtrip_and_refusals(tmp_path):
    cfg = load_config("quickstart")
    layer, fresh = build_layers(cfg, 64)[0], build_layers(load_config("quickstart", ["seed=9"]), 64)[0]
    path = tmp_path / "layer1.pt"
    save_layer(layer, path, "abc")
    assert [p.name for p in tmp_path.iterdir()] == ["layer1.pt"]  # no temporary left behind
    load_layer(fresh, path, "abc")
    torch.testing.assert_close(fresh.encoder_weight, layer.encoder_weight, rtol=0, atol=0)
    with pytest.raises(CheckpointMismatch, match="saved by another config"):
        load_layer(fresh, path, "other")
    path.write_bytes(path.read_bytes()[:100])  # truncated / tampered
    with pytest.raises(CheckpointMismatch, match="cannot be read.*delete it"):
        load_layer(fresh, path, "abc")


def test_layer_keys_written_by_an_earlier_release_are_found():
    # computed with the release before the move to pipelines.stages: cached stacks stay found
    cfg = load_config("quickstart")
    assert [layer_digest(cfg, k) for k in range(2)] == ["1c2cfb896f91f659", "8d6e27edf345f545"]
    assert layer_digest(load_config("mnist_mtc"), 0) == "537f19fc9e161010"
