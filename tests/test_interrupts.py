"""SIGTERM and SIGINT inside a Lightning fit end it with ``Interrupted`` and 128 + the signal's
number, whether our handler raises at once or holds the signal back while a store or checkpoint
writer is on the stack (and Lightning's own SIGTERM handler then ends the fit first)."""

import os
import signal
import time

import lightning.pytorch as L
import pytest
import torch

from pipelines.data.datamodule import ArrayDataModule
from pipelines.interrupts import Interrupted, signals_raise
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


class KillAt(L.Callback):
    def __init__(self, sig, batch, inside_store):
        self.sig, self.batch, self.inside_store = sig, batch, inside_store
        self.batches_after = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.batch:
            if self.inside_store:
                _CRITICAL["kill_inside_store"](self.sig)
            else:
                os.kill(os.getpid(), self.sig)
        elif trainer.global_step > self.batch:
            self.batches_after += 1


def _fit_and_kill(sig, inside_store):
    kill = KillAt(sig, batch=3, inside_store=inside_store)
    trainer = make_trainer(None, max_epochs=50, callbacks=[kill])
    with signals_raise():
        with pytest.raises(Interrupted) as e:
            trainer.fit(make_layer("ae", 6, 3, seed=0), datamodule=ArrayDataModule(X, batch_size=8, seed=0))
        time.sleep(0.15)  # a held-back signal that was not dropped would be raised again here
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    return e.value, kill


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
@pytest.mark.parametrize("inside_store", [False, True], ids=["at-once", "held-back"])
def test_a_signal_ends_fit_with_its_exit_code(sig, code, inside_store):
    exc, kill = _fit_and_kill(sig, inside_store)
    assert exc.signum == sig and exc.exit_code == code
    # held back 50 ms, the fit goes on for a few batches at most; raised at once, for none
    assert kill.batches_after <= (50 if inside_store else 0)


def test_held_back_sigterm_is_ended_by_lightnings_handler_first():
    # Lightning's handler flags the Trainer, and the fit stops at the end of the batch, well
    # within the 50 ms hold-back: that SystemExit(0) becomes Interrupted(SIGTERM)
    exc, kill = _fit_and_kill(signal.SIGTERM, inside_store=True)
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
