"""``timing.step_profile``: a step's ops, each product beside the same product alone."""
import pytest
import torch

from pipelines.bench.timing import step_profile as sp
from pretrain.presets import make_layer


def test_products_are_read_from_mm_and_addmm_shapes():
    assert sp._product_shape("aten::mm", [[100, 784], [784, 500]]) == (100, 784, 500)
    assert sp._product_shape("aten::mm", [[100, 784], [784, 500], [100, 500]]) == (100, 784, 500)  # out=
    assert sp._product_shape("aten::addmm", [[500], [100, 784], [784, 500], [], []]) == (100, 784, 500)
    assert sp._product_shape("aten::mm", [[100, 784], [500, 784]]) is None


def test_a_step_of_two_known_products_is_found_and_set_beside_them_alone():
    a, b, c = torch.rand(64, 96), torch.rand(96, 80), torch.rand(80, 32)
    p = sp.profile_steps(lambda: torch.mm(torch.mm(a, b), c), steps=5, warmup=1, seconds=0.05, rows=6)
    products = {tuple(map(tuple, r["shapes"][:2])): r for r in p["rows"] if "isolated_ms" in r}
    assert set(products) == {((64, 96), (96, 80)), ((64, 80), (80, 32))}
    for r in products.values():
        assert r["calls"] == 1 and r["isolated_ms"] > 0 and r["slowdown"] == pytest.approx(r["ms"] / r["isolated_ms"])
    assert sum(r["share"] for r in p["rows"]) <= 1.0 + 1e-9
    assert "| aten::mm | 64x96 96x80 | 1 |" in sp.format_profile(p, "two products")


def test_a_layer_step_is_the_layers_update():
    step = sp.layer_step("cae", 12, 5, batch_size=20)
    W = step.layer.W
    before = W.detach().clone()
    step()
    assert not torch.equal(before, W.detach())
    same = make_layer("cae", 12, 5, seed=0)
    assert torch.equal(before, same.W.detach())  # from the preset's seeded initial weights
