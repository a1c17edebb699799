"""A non-editable install ships every sub-package and the shipped configs, and runs."""
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pretrain", "finetune", "pipelines")


def _source_copy(tmp_path: Path) -> Path:
    """The project's files as a fresh checkout has them (no build/ or egg-info left behind)."""
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "mlruns")
    for name in PACKAGES:
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    return src


def _wheel(tmp_path: Path) -> Path:
    src = _source_copy(tmp_path)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    str(src), "-w", str(tmp_path / "dist")], check=True, capture_output=True, timeout=300)
    return next((tmp_path / "dist").glob("layerwise-*.whl"))


def test_the_wheel_ships_every_package_and_config(tmp_path):
    names = set(zipfile.ZipFile(_wheel(tmp_path)).namelist())
    expected = {str(p.relative_to(ROOT)) for name in PACKAGES for p in (ROOT / name).rglob("*.py")
                if "__pycache__" not in p.parts}
    # the shipped configs and, under configs/spaces/, the shipped search spaces
    expected |= {str(p.relative_to(ROOT)) for p in (ROOT / "pipelines" / "configs").rglob("*.yaml")}
    assert expected - names == set()
    assert {n for n in names if n.endswith(".py")} - expected == set()  # nothing stale either
    assert "pipelines/configs/quickstart.yaml" in names
    assert {"pipelines/configs/spaces/mtc.yaml", "pipelines/configs/spaces/sda.yaml",
            "pipelines/configs/spaces/dbn.yaml"} <= names


@pytest.mark.slow
def test_layerwise_run_works_from_a_non_editable_install(tmp_path):
    wheel = _wheel(tmp_path)
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                    str(wheel)], check=True, capture_output=True, timeout=300)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI")}
    where = subprocess.run([str(python), "-c", "import pipelines.bench.suites, pipelines; print(pipelines.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert where.returncode == 0, where.stderr
    assert str(env_dir) in where.stdout  # the installed copy, not the source tree
    out = subprocess.run([str(env_dir / "bin" / "layerwise"), "run", "--set", "pretrain.epochs=1",
                          "--set", "finetune.epochs=2", "--set", "finetune.methods=[mlp]",
                          "--set", "baselines.methods=[knn]"],
                         cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "| mlp | stack |" in out.stdout and "| knn | pixels |" in out.stdout
