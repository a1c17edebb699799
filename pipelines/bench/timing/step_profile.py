"""Where each millisecond of a training step goes: torch's profiler over a few steps, per op and
input shapes, each product beside the time of the same product alone.

For a step made of products P_i and other ops Q_j (elementwise passes, noise, the optimizer),

    (1) t_step = sum_i t(P_i in the step) + sum_j t(Q_j) + t(Python, dispatch)
    (2) isolated: t*(P_i) = 2 m k n / R(m, k, n),  R the fp32 ``torch.mm`` rate at P_i's shape
        with warm operands (``timing.matmul.matmul_seconds``)

so ``t(P_i in the step) / t*(P_i)`` says how much slower a product runs among the step's other
work (cold operands, a busy memory system) than alone, and the ``Q_j`` rows say what the step
spends beyond its products. Times are CPU time of the profiled ops (the profiler's self time),
per step, beside the CPU time of the profiled steps (the profiler adds its own); the ops below
the costliest are one line, and the time outside any op (Python, dispatch) another.

    python -m pipelines.bench.timing.step_profile --layer cae_h --threads 1
    python -m pipelines.bench.timing.step_profile --layer rbm --hidden 500 --threads 1
"""
from __future__ import annotations

import argparse
import itertools
import time
from typing import Callable

import torch
from torch.profiler import ProfilerActivity, profile

from pipelines.bench.timing.matmul import matmul_seconds
from pretrain.module import objective
from pretrain.presets import make_layer

PRODUCTS = ("aten::mm", "aten::addmm")


def _product_shape(op: str, shapes: list) -> tuple[int, int, int] | None:
    """``(m, k, n)`` of an mm ``[(m, k), (k, n)]`` or addmm ``[bias, (m, k), (k, n), ...]``."""
    a, b = (shapes[0], shapes[1]) if op == "aten::mm" else (shapes[1], shapes[2])
    if len(a) == 2 and len(b) == 2 and a[1] == b[0]:
        return a[0], a[1], b[1]
    return None


def profile_steps(step: Callable[[], None], *, steps: int = 10, warmup: int = 3,
                  seconds: float = 0.3, rows: int = 12) -> dict:
    """Profile ``steps`` calls of ``step`` (after ``warmup`` unprofiled ones) on the CPU.

    Returns ``step_ms`` (CPU time a step, unprofiled), ``profiled_ms`` (profiled), ``rows``: the
    ``rows`` costliest (op, shapes) groups with ``ms`` a step, its ``share`` of the profiled step,
    and for a product its ``isolated_ms`` (Eq. 2) and ``slowdown`` (in the step / isolated);
    ``smaller_ms`` the other ops, ``outside_ms`` the profiled time in no op.
    """
    for _ in range(warmup):
        step()
    t0 = time.process_time()
    for _ in range(steps):
        step()
    step_ms = (time.process_time() - t0) / steps * 1e3
    t0 = time.process_time()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            step()
    profiled_ms = (time.process_time() - t0) / steps * 1e3  # the profiler's own cost included
    groups = [e for e in prof.key_averages(group_by_input_shape=True) if e.self_cpu_time_total > 0]
    groups.sort(key=lambda e: -e.self_cpu_time_total)
    ops_ms = sum(e.self_cpu_time_total for e in groups) / 1e3 / steps
    out = []
    for e in groups[:rows]:
        ms = e.self_cpu_time_total / 1e3 / steps
        row = {"op": e.key, "shapes": [list(s) for s in e.input_shapes if s], "calls": e.count // steps,
               "ms": ms, "share": ms / profiled_ms}
        shape = _product_shape(e.key, e.input_shapes) if e.key in PRODUCTS else None
        if shape is not None:
            m, k, n = shape
            alone = matmul_seconds(m, k, n, seconds, clock=time.process_time)  # warm operands
            row["isolated_ms"] = alone * 1e3 * row["calls"]
            row["slowdown"] = ms / row["isolated_ms"]
        out.append(row)
    top = sum(r["ms"] for r in out)
    return {"step_ms": step_ms, "profiled_ms": profiled_ms, "rows": out, "smaller_ms": ops_ms - top,
            "outside_ms": max(profiled_ms - ops_ms, 0.0)}


def format_profile(p: dict, what: str) -> str:
    lines = [f"{what}: {p['step_ms']:.2f} ms of CPU time a step ({p['profiled_ms']:.2f} ms profiled; the "
             f"shares are of the profiled step)", "",
             "| op | input shapes | calls | ms / step | share | alone, ms | in the step / alone |",
             "|---|---|---|---|---|---|---|"]
    for r in p["rows"]:
        shapes = " ".join("x".join(map(str, s)) for s in r["shapes"])
        alone = (f"{r['isolated_ms']:.2f} | {r['slowdown']:.2f}x" if "isolated_ms" in r else "- | -")
        lines.append(f"| {r['op']} | {shapes} | {r['calls']} | {r['ms']:.2f} | {r['share']:.0%} | {alone} |")
    for name, ms in (("the other ops", p["smaller_ms"]), ("outside the ops (Python, dispatch, profiler)",
                                                         p["outside_ms"])):
        lines.append(f"| {name} | | | {ms:.2f} | {ms / p['profiled_ms']:.0%} | - | - |")
    return "\n".join(lines)


def layer_step(kind: str, n_visible: int, n_hidden: int, batch_size: int, seed: int = 0) -> Callable[[], None]:
    """One update of a ``kind`` layer on random inputs in [0, 1], as a Trainer step takes it: the
    terms of its ``step_terms`` (the closed-form gradient attached; the RBM's monitoring terms on
    one batch in ``monitor_every``), backward, and the layer's own optimizer. The layer is the
    step's ``layer`` attribute."""
    layer = make_layer(kind, n_visible, n_hidden, seed=seed)
    opt = layer.configure_optimizers()
    opt = opt[0] if isinstance(opt, (list, tuple)) else opt
    x = torch.rand(batch_size, n_visible, generator=torch.Generator().manual_seed(seed))

    count = itertools.count()

    def step() -> None:
        terms = layer.step_terms(x, "train", next(count))
        opt.zero_grad()
        objective(terms).backward()
        opt.step()

    step.layer = layer  # the layer it trains
    return step


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", default="cae_h", help="layer kind (pretrain.presets)")
    parser.add_argument("--visible", type=int, default=784)
    parser.add_argument("--hidden", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rows", type=int, default=12)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    p = profile_steps(layer_step(args.layer, args.visible, args.hidden, args.batch_size),
                      steps=args.steps, rows=args.rows)
    print(format_profile(p, f"{args.layer} {args.visible}-{args.hidden}, batch {args.batch_size}, "
                            f"{torch.get_num_threads()} threads"))
    return p


if __name__ == "__main__":
    main()
