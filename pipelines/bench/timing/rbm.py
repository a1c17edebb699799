"""Speed benchmark: one epoch of a 784-500 binary RBM (CD-1, batch 100) on MNIST.

Three trainers on the same 60000 training images (float32, bytes / 255, in file order):

(a) ``pretrain.rbm.RBM`` through a Lightning Trainer (max_epochs=1, no logger, no checkpoints);
    the layer logs its terms once per epoch and computes the monitoring-only reconstruction
    error on every ``RBM.monitor_every``-th batch;
(b) the same module's update in a plain loop (``loss_terms`` -> backward -> SGD step), with
    the same monitored batches;
(c) scikit-learn's ``BernoulliRBM(n_components=500, batch_size=100, n_iter=1,
    learning_rate=0.1, random_state=0)``.

Throughput counts the useful flops only: 2 * B * n_visible * n_hidden per (B, n_visible) x
(n_visible, n_hidden)-sized matmul, times the five matmuls a CD-1 update needs (2 up-passes,
1 down-pass, 2 weight-gradient products; scikit-learn's PCD-1 update does the same five). Our
monitoring down-pass is not counted. The rate is set beside this machine's own fp32
``torch.mm`` rate on the same shapes, measured in the same run; the "ideal" epoch is the time
of the update's five matmuls alone at those rates.

Quality: the exact log pseudo-likelihood, Eq. (11) of ``pretrain.rbm``, of the trained models
on the 10000 test images binarized at 0.5; beside it, the one-bit-flip estimate of
scikit-learn's ``score_samples`` on the grey-level test images, with the same flipped bits for
every model. All BLAS pools (torch's and numpy's) are limited to ``--threads``.

    python -m pipelines.bench.timing.rbm [--data-dir DIR] [--epochs 1] [--threads N] [--n-train N]
"""
from __future__ import annotations

import argparse
import os
import time

import lightning.pytorch as L
import numpy as np
import torch
from sklearn.neural_network import BernoulliRBM
from threadpoolctl import threadpool_limits

from pipelines.bench.timing.matmul import epoch_timer, matmul_seconds
from pipelines.data.mnist import load_mnist
from pipelines.training import make_trainer, quiet_lightning
from pretrain.rbm import RBM, pseudo_likelihood

N_HIDDEN, BATCH, LR = 500, 100, 0.1


class _Slices(torch.utils.data.Sampler):
    """Contiguous batches as slices: a batch is a view of the data tensor, no per-sample Python."""

    def __init__(self, n: int, batch_size: int):
        self.n, self.batch_size = n, batch_size

    def __iter__(self):
        return (slice(i, min(i + self.batch_size, self.n)) for i in range(0, self.n, self.batch_size))

    def __len__(self):
        return -(-self.n // self.batch_size)


def loader(X: torch.Tensor, batch_size: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X), batch_size=None,
                                       sampler=_Slices(len(X), batch_size))


def ideal_epoch(n_batches: int, n_visible: int, clock=time.perf_counter) -> float:
    """Seconds of an epoch's useful matmuls alone, five a CD-1 update, each timed on its own shape
    with fp32 ``torch.mm`` on ``clock`` (wall, or ``time.process_time`` for CPU time)."""
    up = matmul_seconds(BATCH, n_visible, N_HIDDEN, clock=clock)
    down = matmul_seconds(BATCH, N_HIDDEN, n_visible, clock=clock)
    outer = matmul_seconds(N_HIDDEN, BATCH, n_visible, clock=clock)
    return n_batches * (2 * up + down + 2 * outer)


# each trainer returns (model, wall seconds per epoch, CPU seconds per epoch); CPU time is the
# steadier figure when other processes share the cores (it counts every thread of this process)
def train_lightning(X, epochs, seed, cls=RBM):
    """Through a Trainer on the batches of ``train_raw``, in file order, so that both end with
    the same weights (``pipelines.training.fit_layer`` would shuffle them)."""
    rbm = cls(X.shape[1], N_HIDDEN, k=1, lr=LR, seed=seed)
    timer = epoch_timer()
    trainer = make_trainer(max_epochs=epochs, callbacks=[timer], accelerator="cpu", deterministic=False)
    trainer.fit(rbm, loader(X, BATCH))
    return rbm, timer.wall / epochs, timer.cpu / epochs


def train_raw(X, epochs, seed):
    rbm = RBM(X.shape[1], N_HIDDEN, k=1, lr=LR, seed=seed)
    opt = rbm.configure_optimizers()
    t, c = time.perf_counter(), time.process_time()
    for epoch in range(epochs):
        for group in opt.param_groups:
            group["momentum"] = rbm.momentum_at(epoch)
        for i in range(0, len(X), BATCH):
            opt.zero_grad()
            monitor = (i // BATCH) % rbm.monitor_every == 0  # the batches a Trainer monitors
            rbm.loss_terms(X[i:i + BATCH], train=True, monitor=monitor)["loss"].backward()
            opt.step()
    return rbm, (time.perf_counter() - t) / epochs, (time.process_time() - c) / epochs


def train_sklearn(X, epochs, seed):
    model = BernoulliRBM(n_components=N_HIDDEN, batch_size=BATCH, n_iter=epochs, learning_rate=LR,
                         random_state=seed)
    t, c = time.perf_counter(), time.process_time()
    model.fit(X)
    return model, (time.perf_counter() - t) / epochs, (time.process_time() - c) / epochs


def _params(model):
    """(W, b, c) of our RBM or of a scikit-learn BernoulliRBM, as float32 tensors."""
    if isinstance(model, RBM):
        return model.W.detach(), model.b.detach(), model.c.detach()
    return tuple(torch.from_numpy(np.asarray(a, dtype=np.float32)) for a in
                 (model.components_, model.intercept_hidden_, model.intercept_visible_))


def one_flip_score(V, flips, W, b, c):
    """Mean of scikit-learn's ``score_samples`` estimator, n_visible * log sigmoid(F(v~i) - F(v)),
    with the flipped bit ``flips`` (B,) given, so that every model sees the same bits."""
    rows = torch.arange(len(V))
    flipped = V.clone()
    flipped[rows, flips] = 1 - flipped[rows, flips]
    fe = lambda v: -(v @ c) - torch.nn.functional.softplus(v @ W.T + b).sum(1)  # Eq. (2)
    return (V.shape[1] * torch.nn.functional.logsigmoid(fe(flipped) - fe(V))).mean().item()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default="../shared/data", help="folder with the MNIST .gz files")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                   help="threads for torch and BLAS (default: the cores this process may use)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-sklearn-float64", action="store_true")
    p.add_argument("--n-train", type=int, default=60000, help="first N training images (quick checks)")
    p.add_argument("--repeats", type=int, default=3,
                   help="train each model this many times from the same seed; report the fastest")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)  # numpy's BLAS (scikit-learn) gets the same cores
    quiet_lightning()
    L.seed_everything(args.seed, verbose=False)
    say = lambda *a: print(*a, flush=True)

    X_train, _, X_test, _ = load_mnist(args.data_dir)
    X_train = X_train[:args.n_train]
    X = torch.from_numpy(np.ascontiguousarray(X_train))  # (60000, 784) float32 in [0, 1]
    n, n_v, n_b = X.shape[0], X.shape[1], -(-X.shape[0] // BATCH)
    flop = 2 * BATCH * n_v * N_HIDDEN  # one matmul of an update
    ideal, ideal_cpu = ideal_epoch(n_b, n_v), ideal_epoch(n_b, n_v, time.process_time)
    rate = n_b * 5 * flop / ideal / 1e9
    say(f"threads {args.threads}, load average {os.getloadavg()[0]:.1f}; fp32 torch.mm GFLOP/s on the "
        f"update's shapes: {rate:.1f} (wall), {n_b * 5 * flop / ideal_cpu / 1e9:.1f} (CPU time)")

    def best_of(train, *a):
        """Fastest of ``--repeats`` identical runs (same seed, same model): timing noise from other
        processes only ever adds time. Returns (model, wall s/epoch, CPU s/epoch)."""
        runs = [train(*a) for _ in range(args.repeats)]
        return runs[0][0], min(r[1] for r in runs), min(r[2] for r in runs)

    rows = []  # (name, wall s/epoch, CPU s/epoch, model)
    trainers = [("RBM, Lightning Trainer", lambda: best_of(train_lightning, X, args.epochs, args.seed)),
                ("RBM, raw update loop", lambda: best_of(train_raw, X, args.epochs, args.seed)),
                ("sklearn BernoulliRBM float32",
                 lambda: best_of(train_sklearn, X_train, args.epochs, args.seed))]
    if not args.skip_sklearn_float64:
        trainers.append(("sklearn BernoulliRBM float64",
                         lambda: best_of(train_sklearn, X_train.astype(np.float64), args.epochs, args.seed)))
    for name, run in trainers:
        model, seconds, cpu = run()
        rows.append((name, seconds, cpu, model))
        say(f"  {name}: {seconds:.2f} s/epoch, CPU {cpu:.2f} s (best of {args.repeats})")
    say(f"  raw loop and Trainer end with the same weights: {torch.equal(rows[0][3].W, rows[1][3].W)}")
    # the matmul rate once more, after the trainers: other processes only ever add time
    ideal = min(ideal, ideal_epoch(n_b, n_v))
    ideal_cpu = min(ideal_cpu, ideal_epoch(n_b, n_v, time.process_time))
    rate = n_b * 5 * flop / ideal / 1e9
    say(f"  fp32 torch.mm GFLOP/s (best of both readings): {rate:.1f} (wall), "
        f"{n_b * 5 * flop / ideal_cpu / 1e9:.1f} (CPU time); load average now {os.getloadavg()[0]:.1f}")

    V = torch.from_numpy(X_test)  # (10000, 784) grey levels in [0, 1]
    Vb = (V > 0.5).float()  # binarized: the pseudo-likelihood of Eq. (11) is defined on bits
    flips = torch.randint(n_v, (len(V),), generator=torch.Generator().manual_seed(args.seed))
    exact = {}  # the exact sum is 10000 x 784 x 500 softplus terms: once per distinct model
    say(f"\nMNIST {n} x {n_v}, {N_HIDDEN} hidden, CD-1, batch {BATCH}, {args.epochs} epoch(s); "
        f"pseudo-likelihood (nats per image) on the {len(V)} test images")
    head = (f"{'trainer':<30} {'s/epoch':>8} {'CPU s':>6} {'GFLOP/s':>8} {'of mm rate':>10} "
            f"{'(by CPU)':>8} {'ideal s':>8} {'PL exact (bin)':>14} {'PL 1-flip (grey)':>16}")
    say(head)
    say("-" * len(head))
    pl = {}
    with torch.no_grad():
        for name, seconds, cpu, model in rows:
            W, b, c = _params(model)
            key = next((k for k in exact if torch.equal(k[0], W)), None)
            if key is None:
                key = (W,)
                exact[key] = pseudo_likelihood(Vb, W, b, c).mean().item()
            pl[name] = exact[key]
            gflops = n_b * 5 * flop / seconds / 1e9  # the five useful matmuls of each update
            say(f"{name:<30} {seconds:8.2f} {cpu:6.2f} {gflops:8.1f} {ideal / seconds:10.0%} "
                f"{ideal_cpu / cpu:8.0%} "
                f"{ideal:8.2f} {pl[name]:14.2f} {one_flip_score(V, flips, W, b, c):16.2f}")
    wall = {name: seconds for name, seconds, _, _ in rows}
    cpu = {name: c for name, _, c, _ in rows}
    sk = "sklearn BernoulliRBM float32"
    say("\n'ideal s': the five matmuls of a CD-1 update alone at the measured rates, for every "
        "trainer; 'CPU s': all threads' CPU time; '(by CPU)': the ideal in CPU time over the epoch's")
    for name in ("RBM, Lightning Trainer", "RBM, raw update loop"):
        say(f"{name:<30}: {wall[sk] / wall[name]:4.1f}x sklearn float32's speed ({cpu[sk] / cpu[name]:.1f}x "
            f"by CPU time; target >= 5x), matmul efficiency {ideal / wall[name]:4.0%} "
            f"({ideal_cpu / cpu[name]:.0%} by CPU time; target >= 60%), "
            f"PL {pl[name]:.2f} vs {pl[sk]:.2f} (target: >=)")
    say(f"{sk:<30}: matmul efficiency {ideal / wall[sk]:4.0%} ({ideal_cpu / cpu[sk]:.0%} by CPU time)")


if __name__ == "__main__":
    main()
