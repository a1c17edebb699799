"""`layerwise bench SUITE --only PATTERN`: compute a chosen part of a suite, table what is finished."""
import pytest

from pipelines.bench.cells import Cell, CellStore, run_cells, select_cells
from pipelines.bench.profiles import get_profile
from pipelines.bench.suites import SUITES


def _cells():
    return SUITES["semi-supervised"].cells(get_profile("full", 2))


def test_patterns_pick_cells_by_id():
    cells = _cells()
    pick = select_cells(cells, ["paper-*-mtc_all-*"])
    chosen = [c.id for c in cells if pick(c)]
    assert len(chosen) == 4 * 2  # 4 label counts x 2 seeds
    assert all(c.startswith("paper-") and "-mtc_all-" in c for c in chosen)
    both = select_cells(cells, ["paper-L100-*", "*-L3000-svm-s1"])
    methods = len(SUITES["semi-supervised"].cells(get_profile("full", 1))) // (2 * 4)  # per setting and L
    assert methods == 13  # svm knn nn greedy_sup cae cae_frozen cae_rec mtc mtc_all cae_joint conv psd zca_cae
    assert sum(map(both, cells)) == methods * 2 + 2
    assert all(select_cells(cells, [])(c) for c in cells)


def test_a_pattern_that_matches_nothing_is_an_error_showing_real_ids():
    with pytest.raises(ValueError, match=r"--only 'paper-L99-\*' matches no cell.*paper-L100-svm-s0"):
        select_cells(_cells(), ["paper-L100-*", "paper-L99-*"])


def test_unselected_cells_are_read_back_when_finished_and_left_out_when_not(tmp_path):
    cells = [Cell(f"c{i}", {"i": i}, 0) for i in range(4)]
    store = CellStore(tmp_path)
    computed = []

    def compute(cell):
        computed.append(cell.id)
        return {"value": 10.0 * cell.keys["i"]}

    first = run_cells(cells, store, compute, selected=lambda c: c.id in ("c1", "c3"), log=lambda s: None)
    assert [r["id"] for r in first] == ["c1", "c3"] and computed == ["c1", "c3"]
    second = run_cells(cells, store, compute, selected=lambda c: c.id == "c0", log=lambda s: None)
    assert [r["id"] for r in second] == ["c0", "c1", "c3"]  # c1, c3 read back, c2 left out
    assert computed == ["c1", "c3", "c0"]
    assert [r["value"] for r in second] == [0.0, 10.0, 30.0]
