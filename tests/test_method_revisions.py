"""A method's revision (``pipelines.config.METHOD_REVISIONS``) enters the digests of what it
computes, and only of that: a fix bumps it, and the stage results and bench rows of the earlier
code are no longer read back as this code's, while every other method's keep their keys."""
from pipelines import config as pc
from pipelines.bench import suites as bs
from pipelines.bench.profiles import PROFILES
from pipelines.config import load_config


def _cfg(methods):
    return load_config("quickstart", overrides=[f"finetune.methods=[{','.join(methods)}]"])


def test_a_revision_changes_the_digests_of_its_method_only(monkeypatch):
    ladder, mlp = _cfg(["ladder"]), _cfg(["mlp"])
    revised = {name: cfg.digest() for name, cfg in (("ladder", ladder), ("mlp", mlp))}
    stack = ladder.digest("pretrain")
    assert pc.revisions(["ladder", "mlp", "vat"]) == {"ladder": 2}
    monkeypatch.setattr(pc, "METHOD_REVISIONS", {})  # the code before any revision
    assert pc.revisions(["ladder"]) == {}
    assert ladder.digest() != revised["ladder"]
    assert mlp.digest() == revised["mlp"]  # a method never revised keeps its digest
    assert ladder.digest("pretrain") == stack  # the stack's too: the layer cache is still found


def test_a_revision_makes_the_committed_rows_of_its_cells_stale(monkeypatch):
    spec, p = bs.SUITES["semi-supervised-modern"], PROFILES["tiny"]
    cells = spec.cells(p)
    now = spec.cell_digests(p, cells)
    monkeypatch.setitem(pc.METHOD_REVISIONS, "ladder_no_pretraining", 3)
    bumped = spec.cell_digests(p, cells)
    revised = {c.id for c in cells if c.task.get("method") == "ladder_no_pretraining"}
    assert {c.keys["method"] for c in cells if c.id in revised} == {"ladder", "ladder_relu"}
    # the cells of the columns running ladder_no_pretraining change, and no other
    assert {c.id for c in cells if now[c.id] != bumped[c.id]} == revised

