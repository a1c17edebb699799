"""Ctrl-C and SIGTERM as one exception that every layer of a run lets through.

Lightning turns a ``KeyboardInterrupt`` inside ``fit`` into ``sys.exit(1)`` and a SIGTERM into
``SystemExit`` with code 0, so a killed run would look failed, or even successful. While
:func:`signals_raise` is active both signals raise :class:`Interrupted` instead: Lightning tears
its Trainer down and re-raises it, ``tracking.start_run`` marks every open run KILLED, and the
command exits with 128 + the signal's number (130 for SIGINT, 143 for SIGTERM).

A signal that arrives while MLflow, SQLAlchemy or a checkpoint writer is on the stack is held
back, and raised 50 ms later once none of them is: an exception in the middle of a store's
transaction would leave its connection locked, and the runs could not be marked KILLED.
Lightning's own SIGTERM handler runs first and may end ``fit`` within those 50 ms with its
``SIGTERMException`` (a ``SystemExit`` with code 0): ``training.Trainer`` turns that into
:func:`interrupted`, so the run ends KILLED with 143 whichever handler acts first.
"""
from __future__ import annotations

import contextlib
import signal
from typing import Iterator


class Interrupted(BaseException):
    """The process received SIGINT or SIGTERM; ``exit_code`` is 128 + the signal's number."""

    def __init__(self, signum: int):
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


#: modules inside which an exception must not land (open transactions, files being written)
CRITICAL = ("mlflow", "sqlalchemy", "sqlite3", "alembic", "lightning.fabric.utilities.cloud_io")
_pending: list[int] = []


def _in_critical(frame) -> bool:
    while frame is not None:
        if frame.f_globals.get("__name__", "").startswith(CRITICAL):
            return True
        frame = frame.f_back
    return False


def _raise(signum, frame) -> None:
    if _in_critical(frame):
        if signum not in _pending:
            _pending.append(signum)
        if hasattr(signal, "setitimer"):
            signal.setitimer(signal.ITIMER_REAL, 0.05)  # look again soon
        return
    _pending.clear()
    raise Interrupted(signum)


def interrupted(signum: int) -> Interrupted:
    """The exception for a signal that another handler acted on first; the signal is no longer
    held back, so it is not raised a second time."""
    if signum in _pending:
        _pending.remove(signum)
    if not _pending and hasattr(signal, "setitimer"):
        signal.setitimer(signal.ITIMER_REAL, 0)
    return Interrupted(signum)


def _retry(signum, frame) -> None:
    if _pending:
        _raise(_pending[0], frame)


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise :class:`Interrupted` (main thread only)."""
    previous = {}
    handlers = [(signal.SIGINT, _raise), (signal.SIGTERM, _raise)]
    if hasattr(signal, "SIGALRM"):  # POSIX: a held-back signal is looked at again
        handlers.append((signal.SIGALRM, _retry))
    try:
        for sig, handler in handlers:
            previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread: leave the handlers alone
        pass
    try:
        yield
    finally:
        if hasattr(signal, "setitimer"):
            signal.setitimer(signal.ITIMER_REAL, 0)
        _pending.clear()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
