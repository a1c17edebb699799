"""The house rules as tests: arrows point down, no import cycles, small modules, imports on top.

The arrows are import-linter contracts in ``pyproject.toml`` (``lint-imports``): ``pipelines``
above ``finetune`` above ``pretrain``; inside ``pipelines`` the cli above the entry points above
the stages above training and tracking above the leaves; inside ``bench`` the runner above the
suites above what they share. A wrong arrow fails here, and so in CI.
"""
import ast
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pretrain", "finetune", "pipelines")
LINT_IMPORTS = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
MAX_LINES = 400


def _lint(cwd: Path) -> subprocess.CompletedProcess:
    # the copy's packages before the installed ones; wide enough that no contract name wraps
    env = {**os.environ, "PYTHONPATH": str(cwd), "COLUMNS": "400"}
    return subprocess.run([LINT_IMPORTS, "--no-cache"], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def _modules(package: str):
    for path in sorted((ROOT / package).rglob("*.py")):
        yield path, ".".join(path.relative_to(ROOT).with_suffix("").parts)


def test_the_contracts_hold():
    out = _lint(ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout


def _contracts() -> dict[str, str]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return {c["id"]: c["name"] for c in tomllib.load(f)["tool"]["importlinter"]["contracts"]}


@pytest.mark.parametrize("where, wrong, broken", [
    ("pretrain/stack.py", "import pipelines.config", {"packages", "models"}),
    ("finetune/mtc.py", "import mlflow", {"models"}),
    ("pipelines/data/splits.py", "import pipelines.stages.pretraining", {"pipelines"}),
    ("pipelines/stages/baselines.py", "import pipelines.run", {"pipelines"}),
    ("pipelines/reporting/tables.py", "import pipelines.data.datasets", {"pipelines"}),
    ("pipelines/bench/cells.py", "import pipelines.bench.runner", {"bench"}),
])
def test_a_wrong_arrow_breaks_a_contract(tmp_path, where, wrong, broken):
    for name in PACKAGES:
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / where
    target.write_text(target.read_text() + f"\n{wrong}  # the wrong arrow\n")
    out = _lint(tmp_path)
    assert out.returncode != 0, out.stdout[-2000:]
    names = _contracts()
    assert {i for i, name in names.items() if f"{name} BROKEN" in out.stdout} == broken
    assert {i for i, name in names.items() if f"{name} KEPT" in out.stdout} == set(names) - broken


def _cycles(graph, packages=PACKAGES) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), i.e. import cycles."""
    modules = sorted(m for m in graph.modules if m.split(".")[0] in packages)
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.find_modules_directly_imported_by(v)):
            if w.split(".")[0] not in packages:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))
    for m in modules:
        if m not in index:
            visit(m)
    return out


def test_no_import_cycle_anywhere():
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)  # a stale cache hides a new cycle
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle(tmp_path, monkeypatch):
    pkg = tmp_path / "cyclic"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("import cyclic.b\n")
    (pkg / "b.py").write_text("import cyclic.c\n")
    (pkg / "c.py").write_text("from cyclic import a\n")
    (pkg / "d.py").write_text("import cyclic.a\n")  # imports the cycle, is not in it
    monkeypatch.syspath_prepend(str(tmp_path))
    graph = grimp.build_graph("cyclic", cache_dir=None)
    assert _cycles(graph, ("cyclic",)) == [["cyclic.a", "cyclic.b", "cyclic.c"]]


def test_no_module_of_pipelines_is_over_the_size_limit():
    sizes = {name: len(path.read_text().splitlines()) for path, name in _modules("pipelines")}
    assert {m: n for m, n in sizes.items() if n > MAX_LINES} == {}


def _local_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                if isinstance(inner, (ast.Import, ast.ImportFrom)):
                    found.append(f"{path.relative_to(ROOT)}:{inner.lineno}")
    return found


def test_imports_are_at_the_top_of_modules():
    # the cli imports lazily on purpose: `layerwise --help` must not load torch or MLflow
    lazy = [hit for package in PACKAGES for path, name in _modules(package)
            if name.split(".")[:2] != ["pipelines", "cli"] for hit in _local_imports(path)]
    assert lazy == []


def test_the_project_points_to_no_document_outside_it():
    hits = [f"{path.relative_to(ROOT)}" for package in (*PACKAGES, "tests")
            for path in (ROOT / package).rglob("*.py")
            if "DESIGN" + ".md" in path.read_text()]
    hits += [name for name in ("README.md", "pyproject.toml", "Makefile")
             if "DESIGN" + ".md" in (ROOT / name).read_text()]
    assert hits == []
