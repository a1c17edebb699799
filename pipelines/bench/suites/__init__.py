"""The benchmark suites (``layerwise bench SUITE``), by name.

Each suite is one module of this package, holding its cells, the paper's figure for a group of
cells, its Markdown table, its figure and its title; the modules are named for the suites
(``semi_supervised``, ``semi_supervised_modern``, ``variations``, ``knowledge_free``,
``deep_autoencoder``, ``speed``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from pipelines.config import revisions
from pipelines.bench.cells import Cell, settings_digest
from pipelines.bench.context import Context, bench_config
from pipelines.bench.profiles import Profile
from pipelines.bench.suites import (deep_autoencoder, knowledge_free, semi_supervised,
                                    semi_supervised_modern, speed, variations)
from pipelines.bench.suites.classify import prepare
from pipelines.bench.summary import Summary


@dataclass(frozen=True)
class Suite:
    """How a suite makes its cells, runs one, finds the paper's figure, and presents the results."""

    name: str
    key_names: list[str]
    cells: Callable[[Profile], list[Cell]]
    run_cell: Callable[[Context, Cell], dict]
    paper: Callable[[dict], float | None]
    markdown: Callable[[list[Summary], list[dict], Profile], str]
    figure: Callable
    title: Callable[[Profile], str]
    #: columns (values of ``kind_key``) added after results folders existed: their cells are
    #: left out of the folder's name, so that a suite's finished cells are found again when a
    #: column is added
    added_columns: tuple[str, ...] = ()

    def prepare(self, ctx: Context, cell: Cell) -> None:
        prepare(ctx, cell)

    @property
    def kind_key(self) -> str:
        """The key that names a cell's kind in the time report: the last, the method column."""
        return self.key_names[-1]

    def cell_digests(self, p: Profile, cells: list[Cell]) -> dict[str, str]:
        """Per cell id, a digest of what its result depends on: the profile (not its seed count),
        its task and its stack's config; a results file's row holds it (``pipelines.bench.results``),
        so that a cell whose settings changed is not read back, while the others are."""
        prof = {k: v for k, v in p.as_dict().items() if k != "seeds"}
        configs: dict[tuple, str] = {}
        out = {}
        for c in cells:
            stack = (c.task["data"], c.task["stack"]) if c.task.get("stack") else None
            if stack is not None and stack not in configs:
                configs[stack] = bench_config(p, *stack, 0).digest("data", "pretrain", "finetune", "trainer")
            settings = {"suite": self.name, "profile": prof, "task": c.task, "config": configs.get(stack)}
            revised = revisions([c.task["method"]]) if "method" in c.task else {}
            if revised:  # a method revised since its rows were written: they are stale
                settings["revisions"] = revised
            out[c.id] = settings_digest(settings)
        return out

    def settings(self, p: Profile) -> dict:
        """What names the results folder: the profile (not its seed count), the tasks (but those of
        ``added_columns``), the configs of their stacks."""
        cells = [c for c in self.cells(p) if c.seed == 0 and c.keys[self.kind_key] not in self.added_columns]
        stacks = sorted({(c.task["data"], c.task["stack"]) for c in cells if c.task.get("stack")})
        prof = {k: v for k, v in p.as_dict().items() if k != "seeds"}
        return {"suite": self.name, "profile": prof, "tasks": [c.task for c in cells],
                "configs": {f"{d}/{s}": bench_config(p, d, s, 0).digest("data", "pretrain", "finetune", "trainer")
                            for d, s in stacks}}


SUITES: dict[str, Suite] = {
    m.NAME: Suite(m.NAME, m.KEY_NAMES, m.cells, m.run_cell, m.paper, m.markdown, m.figure, m.title,
                  getattr(m, "ADDED_COLUMNS", ()))
    for m in (semi_supervised, semi_supervised_modern, variations, knowledge_free, deep_autoencoder,
              speed)}
