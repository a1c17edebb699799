"""Ctrl-C and SIGTERM as one exception that every layer of a run lets through.

Lightning turns a ``KeyboardInterrupt`` inside ``fit`` into ``sys.exit(1)`` and a SIGTERM into
``SystemExit`` with code 0, so a killed run would look failed, or even successful. While
:func:`signals_raise` is active both signals raise :class:`Interrupted` instead: Lightning tears
its Trainer down and re-raises it, ``tracking.start_run`` marks every open run KILLED, and the
command exits with 128 + the signal's number (130 for SIGINT, 143 for SIGTERM).

A signal that arrives while MLflow, SQLAlchemy or a checkpoint writer is on the stack is held
back: an exception in the middle of a store's transaction would leave its connection locked,
and the runs could not be marked KILLED. A watcher thread sends the same signal again every
50 ms until it lands outside them and is raised. Re-sending the signal, rather than arming
SIGALRM, keeps the retry working where a library takes the alarm timer for itself (MLflow's
``run_with_timeout`` installs its own SIGALRM handler and cancels the timer on its way out).
Lightning's own SIGTERM handler runs first and may end ``fit`` within those 50 ms with its
``SIGTERMException`` (a ``SystemExit`` with code 0): ``training.Trainer`` turns that into
:func:`interrupted`, so the run ends KILLED with 143 whichever handler acts first.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Iterator


class Interrupted(BaseException):
    """The process received SIGINT or SIGTERM; ``exit_code`` is 128 + the signal's number."""

    def __init__(self, signum: int):
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


#: modules inside which an exception must not land (open transactions, files being written)
CRITICAL = ("mlflow", "sqlalchemy", "sqlite3", "alembic", "lightning.fabric.utilities.cloud_io")
#: seconds between two deliveries of a held-back signal
RETRY_S = 0.05
_pending: list[int] = []
_resent = [0]  # copies sent by the watcher and not yet handled
_lock = threading.RLock()  # re-entrant: a handler may run while the main thread holds it
_watcher: threading.Thread | None = None
_done = threading.Event()  # set: no signal is held back (or the block has ended)


def _in_critical(frame) -> bool:
    while frame is not None:
        if frame.f_globals.get("__name__", "").startswith(CRITICAL):
            return True
        frame = frame.f_back
    return False


def _resend(pid: int) -> None:
    """Send the first held-back signal to ``pid`` every RETRY_S s until none is held back."""
    global _watcher
    while True:
        _done.wait(RETRY_S)
        with _lock:
            if not _pending:
                _watcher = None
                return
            _resent[0] += 1
            os.kill(pid, _pending[0])


def _hold_back(signum: int) -> None:
    global _watcher
    with _lock:
        if signum not in _pending:
            _pending.append(signum)
        _done.clear()
        if _watcher is None:
            _watcher = threading.Thread(target=_resend, args=(os.getpid(),), daemon=True,
                                        name="held-back-signal")
            _watcher.start()


def _release() -> None:
    with _lock:
        _pending.clear()
    _done.set()


def _raise(signum, frame) -> None:
    with _lock:
        copy = _resent[0] > 0
        _resent[0] -= copy
        if copy and signum not in _pending:
            return  # a copy sent just before the signal was raised or acted on: already handled
    if _in_critical(frame):
        _hold_back(signum)
        return
    _release()
    raise Interrupted(signum)


def interrupted(signum: int) -> Interrupted:
    """The exception for a signal that another handler acted on first; the signal is no longer
    held back, so it is not raised a second time."""
    with _lock:
        if signum in _pending:
            _pending.remove(signum)
        empty = not _pending
    if empty:
        _done.set()
    return Interrupted(signum)


def holding_back() -> bool:
    """Whether a signal is held back, waiting to land outside a store or checkpoint writer."""
    return bool(_pending) or _watcher is not None


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise :class:`Interrupted` (main thread only)."""
    previous = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, _raise)
    except ValueError:  # not the main thread: leave the handlers alone
        pass
    try:
        yield
    finally:
        _release()
        watcher = _watcher
        if watcher is not None:
            watcher.join()
        _resent[0] = 0
        for sig, handler in previous.items():
            signal.signal(sig, handler)
