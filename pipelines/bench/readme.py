"""The committed results as tables: each suite's ``table.md`` and the README's result sections.

A suite's committed table is a function of its results file alone
(``<results>/<suite>-<profile>/cells.csv``, ``pipelines.bench.results``): the suite's own
Markdown of the rows, summarised over seeds beside the papers, then the cells' recorded wall
time. The README holds such tables between marker comments::

    <!-- results:semi-supervised-quick -->
    (generated: do not edit)
    <!-- /results -->

A suite run keeps both in step as its cells land: ``table.md`` and, when the README beside the
results folder (``<results>/../README.md``) marks the suite's section, that section
(:func:`update_section`). ``python -m pipelines.bench.readme`` rewrites every marked section (and every ``table.md``) from
the files; ``--check`` only says which differ (exit status 1), as the tests do, so that a number
edited by hand fails.

A table holds only the rows this code would compute again: a row whose settings digest is not
the code's (the code changed what its cell computes) is left out, ``--check`` fails while the
file holds it, and ``--supersede`` moves such rows to ``superseded.csv`` beside the file, where
they are kept, not tabled; the next suite run computes those cells.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from pipelines.bench.cells import Cell
from pipelines.bench.context import bench_config
from pipelines.bench.pretraining_file import FILE as PRETRAINING, PretrainingFile
from pipelines.bench.profiles import Profile, get_profile
from pipelines.bench.results import FILE, SCHEMAS, TABLE, ResultsFile
from pipelines.bench.selected import FILE as SELECTED, SelectionFile
from pipelines.bench.suites import SUITES
from pipelines.bench.summary import summarize
from pipelines.bench.timing_report import recorded_markdown
from pipelines.files import atomic_write_text, file_lock

MARKER = re.compile(r"(<!-- results:(?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /results -->)", re.S)


def split_name(name: str) -> tuple[str, str]:
    """``semi-supervised-quick`` -> (``semi-supervised``, ``quick``); an error names the known ones."""
    suite, _, profile = name.rpartition("-")
    if suite not in SCHEMAS:
        raise ValueError(f"results folder {name!r} names no suite with committed results: use "
                         f"<suite>-<profile> with a suite of {', '.join(SCHEMAS)}")
    get_profile(profile)
    return suite, profile


def results_table(suite: str, profile: str, book: ResultsFile) -> str:
    """The committed table of one suite and profile, from its results file's rows (and the
    values selected on validation, ``selected.csv`` beside it, when there is one)."""
    spec = SUITES[suite]
    seeds = 1 + max((int(row["seed"]) for row in book.rows.values()), default=0)
    prof = get_profile(profile, seeds)
    cells = spec.cells(prof)
    results = [r for r in (book.load(c) for c in cells) if r is not None]
    if not results:
        return f"No finished cells of {suite} ({profile} profile) yet.\n"
    summaries = summarize(results, spec.paper)
    markdown = spec.markdown(summaries, results, prof)
    if len(results) < len(cells):
        markdown = f"**Partial: {len(results)} of {len(cells)} cells finished.**\n\n" + markdown
    chosen = SelectionFile(book.path.with_name(SELECTED), SCHEMAS[suite]).markdown()
    stacks = PretrainingFile(book.path.with_name(PRETRAINING)).stacks()
    return (markdown + "\n" + (chosen + "\n" if chosen else "")
            + recorded_markdown(results, spec.kind_key, stacks))


def with_selection(suite: str, prof: Profile, cells: list[Cell], folder: Path) -> list[Cell]:
    """``cells`` with the values of ``folder``'s ``selected.csv`` in their tasks (a file of
    values selected under other settings is refused)."""
    spec = SUITES[suite]
    return SelectionFile(folder / SELECTED, SCHEMAS[suite]).apply(
        cells, spec.cell_digests(prof, cells),
        lambda c: bench_config(prof, c.task["data"], c.task["stack"], c.seed).finetune.model_dump())


def open_results(directory: Path, profile: Profile | None = None) -> tuple[str, str, ResultsFile]:
    """The suite, profile and results file of a folder ``<suite>-<profile>``, read for tables:
    its rows checked against this code's settings digests (those of the folder's selected
    values, under ``profile``, by default the one the folder names), a row of other settings
    kept in the file, listed by ``stale`` and not tabled."""
    suite, name = split_name(directory.name)
    spec, prof = SUITES[suite], profile or get_profile(name)
    cells = with_selection(suite, prof, spec.cells(prof), directory)
    return suite, name, ResultsFile(directory / FILE, SCHEMAS[suite], cells, spec.cell_digests(prof, cells),
                                       refuse_stale=False)


def tables(results: str | Path, *, supersede: bool = False) -> tuple[dict[str, str], dict[str, int]]:
    """Per results folder name (``semi-supervised-quick``), its table generated from its file,
    and per folder whose file holds rows of other settings, how many (with ``supersede``: how
    many were moved to ``superseded.csv``)."""
    out, stale = {}, {}
    for path in sorted(Path(results).glob(f"*/{FILE}")):
        suite, profile, book = open_results(path.parent)
        if n := (book.supersede_stale() if supersede else len(book.stale())):
            stale[path.parent.name] = n
        out[path.parent.name] = results_table(suite, profile, book)
    return out, stale


def update(readme: str | Path, results: str | Path, *, check: bool = False,
           supersede: bool = False) -> list[str]:
    """Rewrite the marked sections of ``readme`` and each ``table.md`` under ``results`` from the
    results files; with ``check``, write nothing; with ``supersede``, first move the rows of
    other settings to ``superseded.csv``. Returns what differed (or would have), and the files
    that hold rows of other settings."""
    if check and supersede:
        raise ValueError("--check writes nothing and --supersede moves rows: give one of them")
    readme = Path(readme)
    generated, stale = tables(results, supersede=supersede)
    text = readme.read_text()
    unknown = [m["name"] for m in MARKER.finditer(text) if m["name"] not in generated]
    if unknown:
        raise ValueError(f"{readme}: marked sections {', '.join(unknown)} have no results file under "
                         f"{results}: remove the markers or commit <results>/<name>/{FILE}")
    changed = [name for name, table in generated.items()
               if not _same(Path(results) / name / TABLE, table)]
    changed += [f"{readme.name}: {m['name']}" for m in MARKER.finditer(text)
                if m["body"] != generated[m["name"]]]
    changed += [f"{name}/{FILE}: {n} rows of other settings " +
                ("moved to superseded.csv" if supersede else
                 "than this code's, left out of its table (--supersede moves them to superseded.csv)")
                for name, n in stale.items()]
    if not check:
        for name, table in generated.items():
            atomic_write_text(Path(results) / name / TABLE, table)
        for name in {m["name"] for m in MARKER.finditer(text)}:
            update_section(readme, name, generated[name])  # each under the lock a suite run holds
    return changed


def update_section(readme: str | Path, name: str, table: str) -> bool:
    """Rewrite the section marked ``name`` in ``readme`` with ``table``, under a lock beside the
    file (two suites landing cells at once each keep the other's section); a README that is
    missing or marks no such section is left alone. Returns whether the file changed."""
    readme = Path(readme)
    if not readme.is_file():
        return False
    with file_lock(readme.with_name(f".{readme.name}.lock")):
        text = readme.read_text()
        new = MARKER.sub(lambda m: m[1] + table + m[4] if m["name"] == name else m[0], text)
        if new == text:
            return False
        atomic_write_text(readme, new)
        return True


def _same(path: Path, text: str) -> bool:
    return path.is_file() and path.read_text() == text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--readme", default="README.md", help="the Markdown file with marked sections")
    ap.add_argument("--results", default="results", help="the folder of <suite>-<profile>/cells.csv")
    ap.add_argument("--check", action="store_true",
                    help="write nothing; exit 1 when a table differs or a file holds rows of other settings")
    ap.add_argument("--supersede", action="store_true",
                    help="move the rows computed with other settings than this code's to superseded.csv")
    args = ap.parse_args(argv)
    try:
        changed = update(args.readme, args.results, check=args.check, supersede=args.supersede)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    verb = "tables or files differ from the results files" if args.check else "tables or files rewritten"
    print(f"{len(changed)} {verb}" + "".join(f"\n  {c}" for c in changed))
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    sys.exit(main())
