"""SIGTERM and SIGINT inside a Lightning fit end it with ``Interrupted`` and 128 + the signal's
number, whether our handler raises at once or holds the signal back while a store or checkpoint
writer is on the stack (and Lightning's own SIGTERM handler then ends the fit first), and also
where the code that held it back takes the alarm timer for itself."""

import os
import signal
import time

import lightning.pytorch as L
import pytest
import torch
from mlflow.utils.timeout import run_with_timeout

from pipelines.data.datamodule import ArrayDataModule
from pipelines.interrupts import RETRY_S, Interrupted, holding_back, signals_raise
from pipelines.training import make_trainer, quiet_lightning
from pretrain.presets import make_layer

quiet_lightning()
pytestmark = pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="POSIX signals")
X = torch.rand(64, 6, generator=torch.Generator().manual_seed(0))

# a function whose module looks like MLflow's: a signal that lands in it is held back
_CRITICAL = {"__name__": "mlflow.store.fake", "os": os, "time": time}
exec("def kill_inside_store(sig):\n"
     "    os.kill(os.getpid(), sig)\n"
     "    t = time.perf_counter()\n"
     "    while time.perf_counter() - t < 0.005:\n"
     "        pass\n", _CRITICAL)
# the same, inside MLflow's own SIGALRM timeout, which cancels the alarm timer on its way out
exec("def kill_inside_timeout(sig):\n"
     "    with run_with_timeout(5):\n"
     "        kill_inside_store(sig)\n", _CRITICAL)
_CRITICAL["run_with_timeout"] = run_with_timeout


class KillAt(L.Callback):
    def __init__(self, sig, batch, inside_store, where="kill_inside_store"):
        self.sig, self.batch, self.inside_store, self.where = sig, batch, inside_store, where
        self.batches_after, self.killed_at = 0, None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.batch:
            self.killed_at = time.perf_counter()
            if self.inside_store:
                _CRITICAL[self.where](self.sig)
            else:
                os.kill(os.getpid(), self.sig)
        elif trainer.global_step > self.batch:
            self.batches_after += 1


def _fit_and_kill(sig, inside_store, where="kill_inside_store"):
    kill = KillAt(sig, batch=3, inside_store=inside_store, where=where)
    # 1000 epochs of 8 batches: far longer than a held-back signal may wait
    trainer = make_trainer(None, max_epochs=1000, callbacks=[kill])
    with signals_raise():
        with pytest.raises(Interrupted) as e:
            trainer.fit(make_layer("ae", 6, 3, seed=0), datamodule=ArrayDataModule(X, batch_size=8, seed=0))
        waited = time.perf_counter() - kill.killed_at
        time.sleep(0.15)  # a held-back signal that was not dropped would be raised again here
    assert not holding_back()
    return e.value, kill, waited


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
@pytest.mark.parametrize("inside_store", [False, True], ids=["at-once", "held-back"])
def test_a_signal_ends_fit_with_its_exit_code(sig, code, inside_store):
    exc, kill, waited = _fit_and_kill(sig, inside_store)
    assert exc.signum == sig and exc.exit_code == code
    if inside_store:  # held back, it lands on the first re-delivery, with room for a busy machine
        assert waited < 20 * RETRY_S, waited
    else:
        assert kill.batches_after == 0


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_held_back_inside_a_library_alarm_is_not_lost(sig, code):
    # MLflow's run_with_timeout replaces the SIGALRM handler and cancels the timer on exit
    exc, kill, waited = _fit_and_kill(sig, inside_store=True, where="kill_inside_timeout")
    assert exc.exit_code == code and waited < 20 * RETRY_S, waited


def test_held_back_sigterm_is_ended_by_lightnings_handler_first():
    # Lightning's handler flags the Trainer, and the fit stops at the end of the batch, well
    # within the 50 ms hold-back: that SystemExit(0) becomes Interrupted(SIGTERM)
    exc, kill, _ = _fit_and_kill(signal.SIGTERM, inside_store=True)
    assert exc.exit_code == 143 and kill.batches_after == 0


def test_outside_signals_raise_a_sigterm_still_does_not_end_fit_with_status_0():
    trainer = make_trainer(None, max_epochs=50, callbacks=[KillAt(signal.SIGTERM, 3, False)])
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)  # only Lightning's handler acts
    try:
        with pytest.raises(Interrupted) as e:
            trainer.fit(make_layer("ae", 6, 3, seed=0), datamodule=ArrayDataModule(X, batch_size=8, seed=0))
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert e.value.exit_code == 143
