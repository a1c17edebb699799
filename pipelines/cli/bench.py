"""``layerwise bench SUITE``: the papers' tables, resumable, and the selection of a suite's
hyperparameters on validation (``--select``)."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from pipelines.cli.errors import fail


@click.group()
def bench() -> None:
    """Benchmarks: the papers' tables, and speed against this machine's own matmul rate."""


BENCH_SUITES = {
    "semi-supervised": "MNIST with 100-3000 labels: SVM, k-NN, NN, CAE, MTC beside the MTC paper.",
    "semi-supervised-modern": "The same splits: Ladder and VAT, fresh and pretrained, beside their "
                              "papers and our MTC.",
    "variations": "The Larochelle variation sets (regenerated): SVM, DAE-3, RBM-3, CAE-1, CAE-2, MTC.",
    "knowledge-free": "MNIST with all labels: k-NN, SVM, NN, CAE, MTC beside the MTC paper.",
    "deep-autoencoder": "784-1000-500-250-30 RBM-pretrained autoencoder, without pretraining, and PCA.",
    "speed": "The speed benchmarks in one table, beside references measured in the same run.",
}


def _bench_command(suite: str, summary: str) -> None:
    @bench.command(suite, help=f"{summary} Resumes from the cells it finished.")
    @click.option("--profile", type=click.Choice(["tiny", "quick", "full"]), default="quick",
                  show_default=True, help="Sizes and epochs: quick (minutes a column on 2 cores), full (the papers').")
    @click.option("--seeds", type=int, default=None, help="Seeds per cell (default: the profile's).")
    @click.option("--data-dir", default=None, help="Where to look for the MNIST files first.")
    @click.option("--root", default="mlruns", show_default=True,
                  help="Folder for cell results and caches (bench/ inside it).")
    @click.option("--threads", type=int, default=None,
                  help="torch threads (default: torch's); 1 is faster on a busy machine.")
    @click.option("--accelerator", type=click.Choice(["cpu", "gpu", "auto"]), default="cpu",
                  show_default=True, help="Lightning's accelerator flag for every network.")
    @click.option("--only", multiple=True, metavar="PATTERN",
                  help="Compute only the cells whose id matches (shell-style, repeatable), "
                       "e.g. 'paper-*-mtc_all-*'; the table shows the finished ones.")
    @click.option("--results", default="results", show_default=True, help="Folder of the committed "
                  "results (<suite>-<profile>/cells.csv, table.md) to resume from and update; '' for none.")
    @click.option("--select", "method", default=None, help="Instead: select METHOD's fine-tuning values "
                  "on validation per label count (--space, --trials) into <suite>-<profile>/selected.csv.")
    @click.option("--space", default=None, help="With --select: a space name or file (its finetune.* keys).")
    @click.option("--trials", type=int, default=20, show_default=True, help="With --select: trials per group.")
    @click.option("--pretrain-only", is_flag=True, help="Pretrain (or load) the stacks of the cells "
                  "left to compute into the layer cache under --root, and compute no cell.")
    @click.option("--pruner", type=click.Choice(["median", "none"]), default="median", show_default=True,
                  help="With --select: stop a trial whose validation error lags the median's.")
    def command(profile: str, seeds: int | None, data_dir: str | None, root: str, threads: int | None,
                accelerator: str, only: tuple[str, ...], results: str, method, space, trials, pretrain_only,
                pruner) -> None:
        from pipelines.bench.runner import run_bench

        if threads is not None:
            import torch

            torch.set_num_threads(max(1, threads))
        from pipelines import progress
        from pipelines.interrupts import Interrupted, signals_raise

        try:
            with progress.configure(progress.mode_for(False)), signals_raise():
                if method is not None and pretrain_only:
                    raise ValueError("--select and --pretrain-only exclude each other: pretrain first "
                                     "(--pretrain-only), then select (--select) on the cached stacks")
                if method is not None:
                    return _select(suite, method, space, trials, pruner, profile, data_dir, root,
                                   results, only, accelerator)
                res = run_bench(suite, profile=profile, seeds=seeds, data_dir=data_dir, root=root,
                                log=progress.note, accelerator=accelerator,
                                only=only, results=results or None, pretrain_only=pretrain_only)
        except (ValueError, FileNotFoundError, ConnectionError, FloatingPointError, RuntimeError) as e:
            fail(str(e))
        except Interrupted as e:
            click.echo(f"error: {e}; the runs are marked KILLED. Run the same command again to "
                       f"resume from the finished cells.", err=True)
            sys.exit(e.exit_code)
        click.echo(res.markdown)
        if pretrain_only:
            click.echo(f"layers cached under {Path(root) / 'bench' / 'cache'}; MLflow run {res.run_id} in "
                       f"{res.tracking_uri}")
            return
        figure = f", figure {res.figure_path}" if res.figure_path else ""
        kept = f"; results file and table in {res.results_dir}" if res.results_dir else ""
        click.echo(f"tables in {res.directory}{figure}{kept}; MLflow run {res.run_id} in {res.tracking_uri}")


def _select(suite, method, space, trials, pruner, profile, data_dir, root, results, only, accelerator) -> None:
    from pipelines import progress
    from pipelines.selection import select

    if space is None or not results:
        fail("--select needs --space (a space name or file) and a --results folder")
    for s in select(suite, method, space, trials=trials, pruner=pruner, profile=profile, data_dir=data_dir,
                    root=root, results=results, only=only, accelerator=accelerator, log=progress.note):
        click.echo(f"{s.group}: {s.values}, valid error {s.valid_error:.2f}% ({s.trials} trials)")
    click.echo(f"selected values in {Path(results) / f'{suite}-{profile}' / 'selected.csv'}; "
               f"'layerwise bench {suite} --profile {profile}' fine-tunes with them")


for _suite, _summary in BENCH_SUITES.items():
    _bench_command(_suite, _summary)
