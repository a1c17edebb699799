"""``layerwise bench speed``: the speed benchmarks of ``pipelines.bench.timing`` in one table, every
row on the device of ``--accelerator`` (``timing.matmul.bench_device``: ``gpu`` without one is
refused, ``auto`` falls back to the CPU) and by its clock (CPU time on the CPU, synchronized wall
time on a GPU), each beside references measured in the same run on the same device (the machines
are shared and noisy, so only ratios taken at the same moment mean much): the matmul rate at the
update's shapes, a raw PyTorch loop of the same update, scikit-learn's RBM (CPU), a plain
DataLoader (host), the explicit Jacobian's SVD. ``vat`` and ``ladder`` time a fine-tuning epoch
over the pool (``timing.pool_epoch``) of the full profile's 784-1000-1000-10 network. The runner keeps one results folder per device.
"""
from __future__ import annotations

import numpy as np
import torch

from finetune.tangents import tangents as leading_tangents
from pipelines.bench.cells import Cell
from pipelines.bench.context import Context
from pipelines.bench.papers import MNIST_POOL
from pipelines.bench.profiles import Profile, describe
from pipelines.bench.timing import autoencoder, batching, matmul, pool_epoch, rbm, tangents

NAME = "speed"
KEY_NAMES = ["benchmark"]
BENCHMARKS = ("matmul", "batching", "autoencoder", "rbm", "tangents", "vat", "ladder")
#: benchmarks added after results folders existed (``Suite.added_columns``)
ADDED_COLUMNS = ("vat", "ladder")
#: the autoencoder row: CAE+H 784-1000 (contraction and higher-order penalty), batch 100
AUTOENCODER = ("cae_h", 1000, 100)


def cells(p: Profile) -> list[Cell]:
    return [Cell(f"{b}-s{s}", {"benchmark": b}, s, {"benchmark": b}) for b in BENCHMARKS for s in range(p.seeds)]


def _timing(p: Profile) -> dict:
    """Readings per measurement (the fastest is kept) and seconds per matmul reference: a tiny
    profile checks that the rows run, the others measure."""
    return {"repeats": 1, "seconds": 0.05} if p.speed_rows <= 1000 else {"repeats": 3, "seconds": 0.3}


def run_cell(ctx: Context, cell: Cell) -> dict:
    """One speed measurement on the suite's device, beside its references measured in the same run."""
    p, name = ctx.profile, cell.task["benchmark"]
    device = matmul.bench_device(ctx.accelerator)
    clock, on = matmul.device_clock(device), f"{device.type}, {matmul.clock_name(device)}"
    ds = ctx.dataset("mnist")
    X = np.ascontiguousarray(ds.X[:p.speed_rows])
    timing = _timing(p)
    if name == "matmul":
        rate = matmul.matmul_rate(100, 784, AUTOENCODER[1], clock=clock, device=device)
        return _speed(rate, "GFLOP/s", f"fp32 (100, 784) x (784, {AUTOENCODER[1]}), {on}", [])
    if name == "batching":
        r = batching.bench_batching(X, batch_size=100, y=ds.y[:p.speed_rows], repeats=2)
        ours, ref = r["SliceLoader (ArrayDataModule)"], r["TensorDataset + DataLoader"]
        return _speed(ours["batches_per_s"], "batches/s", "SliceLoader epoch (host, wall time)",
                      [("TensorDataset + DataLoader", ref["batches_per_s"])])
    if name == "autoencoder":
        kind, hidden, batch = AUTOENCODER
        r = autoencoder.bench_autoencoder(X, n_hidden=hidden, kind=kind, batch_size=batch, device=device,
                                          **timing)
        g = r["gflops"]
        return _speed(g["lightning"], "GFLOP/s", f"{r['what']}, Lightning epoch, {on}",
                      [("matmul rate at the update's shapes", g["matmul"]), ("raw PyTorch loop", g["raw"])])
    if name == "rbm":
        r = rbm.bench_rbm(X, device, **timing)
        ips = r["images_per_s"]
        refs = [("matmul rate at the update's shapes", ips["matmul"]), ("raw PyTorch loop", ips["raw"])]
        if "sklearn" in ips:
            refs.append(("sklearn BernoulliRBM float32", ips["sklearn"]))
        return _speed(ips["lightning"], "images/s", f"{r['what']}, Lightning epoch, {on}", refs)
    if name == "tangents":
        n = min(len(X), 2000)
        Xt = torch.from_numpy(X[:n]).to(device)
        stack = tangents.build_stack(0, 0, Xt.cpu()).to(device)
        t0 = clock()
        leading_tangents(stack, Xt, tangents.K, seed=0, method="krylov", device=device)
        ours = n / (clock() - t0)
        n_ref = min(n, 100)
        t0 = clock()
        tangents.exact(stack, Xt[:n_ref], torch.float32)
        ref = n_ref / (clock() - t0)
        return _speed(ours, "images/s", f"{tangents.K} tangents, {'-'.join(map(str, tangents.SIZES))} stack, "
                      f"Krylov, {on}", [("explicit Jacobian SVD", ref)])
    if name in pool_epoch.METHODS:
        X_lab, y_lab = pool_epoch.labeled_subset(X, ds.y[:p.speed_rows])
        r = pool_epoch.bench_pool_epoch(name, X[:min(len(X), MNIST_POOL)], X_lab, y_lab,
                                        hidden=(AUTOENCODER[1],) * 2, device=device, **timing)
        g = r["gflops"]
        refs = [("matmul rate at the step's widest product", g["matmul"])]
        if "raw" in g:
            refs.append(("raw PyTorch loop", g["raw"]))
        return _speed(g["lightning"], "GFLOP/s", f"{r['what']}, Lightning, {on}", refs)
    raise ValueError(f"unknown speed benchmark {name!r}: choose one of {', '.join(BENCHMARKS)}")


def _speed(value, unit, what, references: list[tuple[str, float]]) -> dict:
    """A cell's result: ours, and its references as (name, value) in the same unit."""
    first = references[0] if references else (None, None)
    refs = [{"name": n, "value": float(v)} for n, v in references]
    return {"value": float(value), "metric": unit,
            "extra": {"what": what, "reference": first[1], "reference_name": first[0] or "-",
                      "ratio": None if not first[1] else value / first[1], "references": refs}}


def paper(keys: dict) -> None:
    return None


def markdown(summaries, results, p: Profile) -> str:
    lines = [f"### Speed, beside references measured in the same run ({describe(p, 'rows')})", "",
             "| benchmark | what | ours | unit | reference | reference value | ours / reference |",
             "|---|---|---|---|---|---|---|"]
    for s in summaries:
        rs = [r for r in results if r["keys"] == s.keys]
        e = rs[0]["extra"]
        refs = e.get("references") or [{"name": e["reference_name"], "value": e["reference"]}]
        for i, ref in enumerate(refs):
            values = [r["extra"]["references"][i]["value"] for r in rs if r["extra"].get("references")]
            value = sum(values) / len(values) if values else ref["value"]
            ratio = "-" if not value else f"{s.mean / value:.2f}x"
            head = (f"| {s.keys['benchmark']} | {e['what']} | {s.mean:.4g} | {s.metric} |" if i == 0
                    else "| | | | |")
            lines.append(f"{head} {ref['name']} | {'-' if value is None else f'{value:.4g}'} | {ratio} |")
    return "\n".join(lines) + "\n"


def figure(summaries, results, p: Profile) -> None:
    return None


def title(p: Profile) -> str:
    return f"Speed ({describe(p, 'rows')})"
