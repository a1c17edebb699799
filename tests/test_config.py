"""Configs: every shipped config parses; errors name the dotted key; overrides apply."""
from pathlib import Path

import pytest

from pipelines.config import (
    ConfigError,
    PipelineConfig,
    config_from_dict,
    load_config,
    resolve_config_path,
    shipped_configs,
)


@pytest.mark.parametrize("name", sorted(shipped_configs()))
def test_every_shipped_config_parses(name):
    cfg = load_config(name)
    assert isinstance(cfg, PipelineConfig)
    assert cfg.pretrain.layers, f"{name} has no layers"


def test_default_is_quickstart_on_digits():
    cfg = load_config(None)
    assert cfg.name == "quickstart" and cfg.data.name == "digits"


def test_unknown_key_named_by_dotted_path():
    with pytest.raises(ConfigError, match=r"pretrain\.layers\.1\.n_hiden: unknown key"):
        config_from_dict({"pretrain": {"layers": [{"kind": "ae", "n_hidden": 5},
                                                  {"kind": "ae", "n_hiden": 5}]}})


def test_bad_value_named_by_dotted_path_with_value():
    with pytest.raises(ConfigError, match=r"finetune\.labels: .*greater than or equal to 1.*-3"):
        config_from_dict({"finetune": {"labels": -3}})
    with pytest.raises(ConfigError, match=r"pretrain\.layers\.0\.kind: unknown layer kind 'vae'"):
        config_from_dict({"pretrain": {"layers": [{"kind": "vae", "n_hidden": 5}]}})
    with pytest.raises(ConfigError, match=r"pretrain\.layers\.0\.corruption_level: .*-0\.5"):
        config_from_dict({"pretrain": {"layers": [{"kind": "dae", "n_hidden": 5,
                                                   "corruption_level": -0.5}]}})


def test_overrides_typed_nested_and_indexed():
    cfg = load_config("quickstart", ["finetune.labels=100", "seed=3",
                                     "pretrain.layers.0.kind=dae", "finetune.methods=[mlp]",
                                     "data.n_test=null"])
    assert cfg.finetune.labels == 100 and isinstance(cfg.finetune.labels, int)
    assert cfg.seed == 3 and cfg.pretrain.layers[0].kind == "dae"
    assert cfg.finetune.methods == ["mlp"] and cfg.data.n_test is None


@pytest.mark.parametrize("override, message", [
    ("finetune.labls=100", r"finetune\.labls: unknown key"),
    ("labels", "not of the form key.path=value"),
    ("pretrain.layers.7.kind=ae", "not an index of a list"),
    ("seed.x=1", "seed is a value, not a section"),
    ("finetune.labels=[1", "not valid YAML"),
])
def test_bad_overrides(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("quickstart", [override])


def test_bad_yaml_file_names_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("seed: 1\npretrain:\n  layers: [\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d+"):
        load_config(p)


def test_yaml_is_safe_loaded(tmp_path):
    p = tmp_path / "evil.yaml"
    p.write_text("seed: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)


def test_missing_config_lists_shipped():
    with pytest.raises(ConfigError, match="quickstart"):
        load_config("no_such_config")


def test_digest_changes_with_config_and_flat_params():
    a = load_config("quickstart")
    b = load_config("quickstart", ["pretrain.layers.0.n_hidden=7"])
    assert a.digest() != b.digest()
    assert a.digest("data") == b.digest("data")
    flat = a.flat()
    assert flat["data.name"] == "digits"
    assert flat["pretrain.layers.0.kind"] == a.pretrain.layers[0].kind


def test_layer_kwargs_only_set_fields():
    cfg = config_from_dict({"pretrain": {"layers": [{"kind": "cae", "n_hidden": 9,
                                                     "contraction": 0.3, "epochs": 2}]}})
    assert cfg.pretrain.layers[0].layer_kwargs() == {"contraction": 0.3}


def test_shipped_files_by_name_or_package_path_and_a_real_file_wins(tmp_path, monkeypatch):
    """Configs and search spaces are found by one resolver: a shipped name, a path into the
    package from elsewhere, and a file that exists before either; a folder is refused."""
    from pipelines.search.space import resolve_space_path, shipped_spaces

    monkeypatch.chdir(tmp_path)
    assert resolve_config_path("mnist_mtc") == shipped_configs()["mnist_mtc"]
    assert resolve_config_path(None) == shipped_configs()["quickstart"]
    assert resolve_space_path("elsewhere/configs/spaces/mtc.yaml") == shipped_spaces()["mtc"]
    with pytest.raises(ConfigError, match="not found"):  # a space's name under the configs' folder
        resolve_space_path("elsewhere/configs/mtc.yaml")
    Path("mtc").write_text("objective: x\n")
    assert resolve_space_path("mtc") == Path("mtc")
    Path("d").mkdir()
    with pytest.raises(ConfigError, match="space 'd' is a folder: give a YAML file with 'objective'"):
        resolve_space_path("d")
    with pytest.raises(ConfigError, match=r"config 'd' is a folder: give a YAML file \(e.g. d/quickstart.yaml\)"):
        resolve_config_path("d")
    with pytest.raises(ConfigError, match="space 'nope' not found: .* shipped spaces: cae, dbn, ladder, mtc, sda, vat"):
        resolve_space_path("nope")
