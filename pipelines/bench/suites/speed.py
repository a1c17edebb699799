"""``layerwise bench speed``: the speed benchmarks of ``pipelines.bench.timing`` in one table, each
beside a reference measured in the same run (the machines are shared and noisy, so only ratios
taken at the same moment mean much): this machine's matmul rate, a plain DataLoader, scikit-learn's
RBM, the explicit Jacobian's SVD."""
from __future__ import annotations

import time

import numpy as np
import torch

from finetune.tangents import tangents as leading_tangents
from pipelines.bench.cells import Cell
from pipelines.bench.context import Context
from pipelines.bench.profiles import Profile, describe
from pipelines.bench.timing import autoencoder, batching, matmul, rbm, tangents

NAME = "speed"
KEY_NAMES = ["benchmark"]
BENCHMARKS = ("matmul", "batching", "autoencoder", "rbm", "tangents")


def cells(p: Profile) -> list[Cell]:
    return [Cell(f"{b}-s{s}", {"benchmark": b}, s, {"benchmark": b}) for b in BENCHMARKS for s in range(p.seeds)]


def run_cell(ctx: Context, cell: Cell) -> dict:
    """One speed measurement, beside its reference measured in the same run."""
    p, name = ctx.profile, cell.task["benchmark"]
    ds = ctx.dataset("mnist")
    X = np.ascontiguousarray(ds.X[:p.speed_rows])
    if name == "matmul":
        rate = matmul.matmul_rate(100, 784, p.hidden)
        return _speed(rate, "GFLOP/s", f"fp32 (100, 784) x (784, {p.hidden})", None, "-")
    if name == "batching":
        r = batching.bench_batching(X, batch_size=100, y=ds.y[:p.speed_rows], repeats=2)
        ours, ref = r["SliceLoader (ArrayDataModule)"], r["TensorDataset + DataLoader"]
        return _speed(ours["batches_per_s"], "batches/s", "SliceLoader epoch", ref["batches_per_s"],
                      "TensorDataset + DataLoader")
    if name == "autoencoder":
        r = autoencoder.bench_autoencoder(X, n_hidden=p.hidden, kind="cae")
        return _speed(r["gflops"], "GFLOP/s", f"{r['what']}, Trainer epoch", r["matmul_gflops"], "matmul rate")
    if name == "rbm":
        # both return (model, wall seconds per epoch, ...)
        ours = rbm.train_lightning(torch.from_numpy(X), 1, 0)[1]
        ref = rbm.train_sklearn(X, 1, 0)[1]
        n = len(X)
        return _speed(n / ours, "images/s", f"RBM 784-{rbm.N_HIDDEN} CD-1, Lightning epoch", n / ref,
                      "sklearn BernoulliRBM")
    if name == "tangents":
        n = min(len(X), 2000)
        Xt = torch.from_numpy(X[:n])
        stack = tangents.build_stack(0, 0, Xt)
        t0 = time.perf_counter()
        leading_tangents(stack, Xt, tangents.K, seed=0, method="krylov")
        ours = n / (time.perf_counter() - t0)
        n_ref = min(n, 100)
        t0 = time.perf_counter()
        tangents.exact(stack, Xt[:n_ref], torch.float32)
        ref = n_ref / (time.perf_counter() - t0)
        return _speed(ours, "images/s", f"{tangents.K} tangents, {'-'.join(map(str, tangents.SIZES))} stack, "
                      "Krylov", ref, "explicit Jacobian SVD")
    raise ValueError(f"unknown speed benchmark {name!r}: choose one of {', '.join(BENCHMARKS)}")


def _speed(value, unit, what, reference, reference_name) -> dict:
    ratio = None if not reference else value / reference
    return {"value": float(value), "metric": unit,
            "extra": {"what": what, "reference": reference, "reference_name": reference_name, "ratio": ratio}}


def paper(keys: dict) -> None:
    return None


def markdown(summaries, results, p: Profile) -> str:
    lines = [f"### Speed, beside references measured in the same run ({describe(p, 'rows', 'hidden')})", "",
             "| benchmark | what | ours | unit | reference | reference value | ours / reference |",
             "|---|---|---|---|---|---|---|"]
    for s in summaries:
        rs = [r for r in results if r["keys"] == s.keys]
        e = rs[0]["extra"]
        refs = [r["extra"]["reference"] for r in rs if r["extra"]["reference"]]
        ref = sum(refs) / len(refs) if refs else None
        ratio = "-" if ref is None else f"{s.mean / ref:.2f}x"
        lines.append(f"| {s.keys['benchmark']} | {e['what']} | {s.mean:.4g} | {s.metric} | "
                     f"{e['reference_name']} | {'-' if ref is None else f'{ref:.4g}'} | {ratio} |")
    return "\n".join(lines) + "\n"


def figure(summaries, results, p: Profile) -> None:
    return None


def title(p: Profile) -> str:
    return f"Speed ({describe(p, 'rows', 'hidden')})"
