"""The accelerator flag reaches every network and the work outside the Trainer (tangents)."""
import pytest
import torch
from click.testing import CliRunner

from pipelines.bench.context import bench_config
from pipelines.bench.profiles import get_profile
from pipelines.cli import main
from pipelines.config import load_config
from pipelines.stages.layer_cache import layer_digest
from pipelines.training import compute_device

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")


def test_cpu_flag_computes_on_the_cpu():
    cfg = load_config("quickstart")
    assert compute_device(cfg.trainer) == torch.device("cpu")
    assert compute_device(None) == torch.device("cpu")


@no_gpu
@pytest.mark.parametrize("flag", ["auto", "gpu", "cuda"])
def test_gpu_flags_fall_back_to_the_cpu_without_a_gpu(flag):
    cfg = load_config("quickstart")
    cfg.trainer.accelerator = flag
    assert compute_device(cfg.trainer) == torch.device("cpu")


def test_bench_config_carries_the_accelerator_into_the_trainer_and_the_layer_digest():
    p = get_profile("tiny")
    cpu = bench_config(p, "mnist", "cae_h-2", 0)
    auto = bench_config(p, "mnist", "cae_h-2", 0, accelerator="auto")
    assert (cpu.trainer.accelerator, cpu.trainer.deterministic) == ("cpu", True)
    assert (auto.trainer.accelerator, auto.trainer.deterministic) == ("auto", "warn")
    # layers trained under other numerics are other layers: their caches must not be shared
    assert layer_digest(cpu, 0) != layer_digest(auto, 0)


def test_deterministic_accepts_warn_and_rejects_other_words():
    from pipelines.config import ConfigError

    assert load_config("quickstart", ["trainer.deterministic=warn"]).trainer.deterministic == "warn"
    assert load_config("quickstart", ["trainer.deterministic=false"]).trainer.deterministic is False
    with pytest.raises(ConfigError, match="trainer.deterministic"):
        load_config("quickstart", ["trainer.deterministic=sometimes"])


def test_bench_cli_rejects_an_unknown_accelerator():
    res = CliRunner().invoke(main, ["bench", "semi-supervised", "--profile", "tiny", "--accelerator", "tpu9"])
    assert res.exit_code != 0 and "accelerator" in res.output
