"""``layerwise ui``: the MLflow UI over the store runs write to, started and stopped as one.

The server (``mlflow ui``: a CLI process, its uvicorn workers, a job runner) runs in a process
group of its own, so that the terminal's Ctrl-C reaches only ``layerwise ui``, which then stops
the whole group: Ctrl-C and SIGTERM both end every process it started and free the port (a
SIGKILL cannot be caught: it leaves the server running). The URL is printed once the server
answers, not when it is launched: importing MLflow in each worker takes 20-30 s on a small
machine, so one worker is the default (a local UI has one user).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Callable

from pipelines.tracking import artifact_root, resolve_uri

#: seconds to wait for the server to answer before giving up
READY_TIMEOUT = 180.0
#: seconds a stopped server gets to exit before it is killed
STOP_GRACE = 10.0


def mlflow_ui_command(uri: str, host: str, port: int, workers: int = 1) -> list[str]:
    """The ``mlflow ui`` command over store ``uri``, artifacts beside a local SQLite store."""
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host,
           "--port", str(port), "--workers", str(workers)]
    root = artifact_root(uri)
    if root:
        cmd += ["--default-artifact-root", root]
    return cmd


def check_port_free(host: str, port: int) -> None:
    """A ValueError naming the port when something already listens on it (a port a stopped
    server left in TIME_WAIT is free: servers bind with SO_REUSEADDR, as this check does)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise ValueError(f"port {port} on {host} is in use ({e.strerror}): another "
                             f"'layerwise ui' or MLflow server? Stop it, or give --port "
                             f"{port + 1}") from None


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=1.0)
    except urllib.error.HTTPError:
        return True  # it answered, even if not with 200
    except (urllib.error.URLError, OSError):
        return False
    return True


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGINT and SIGTERM stop as Ctrl-C does


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait_gone(proc: subprocess.Popen, pgid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None and not _group_alive(pgid):  # poll reaps the leader
            return True
        time.sleep(0.05)
    return False


def stop(proc: subprocess.Popen) -> None:
    """Stop ``proc`` and every process of its group: SIGTERM, then SIGKILL after STOP_GRACE s."""
    if os.name != "posix":
        proc.terminate()
        try:
            proc.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            proc.kill()
        proc.wait()
        return
    pgid = proc.pid  # start_new_session: the group's id is the leader's pid
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break  # the group is gone
        if _wait_gone(proc, pgid, STOP_GRACE):
            break
    proc.wait()


def serve(cmd: list[str], url: str, *, announce: Callable[[], None],
          ready_timeout: float = READY_TIMEOUT) -> int:
    """Run server ``cmd`` until it exits, Ctrl-C or SIGTERM; call ``announce`` once ``url``
    answers. Returns the server's exit code (0 when stopped by a signal); every process of it
    is stopped on the way out. Raises RuntimeError when it exits or times out before answering.
    """
    # both signals stop it, even where SIGINT came ignored (a job started in the background)
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    proc = subprocess.Popen(cmd, start_new_session=os.name == "posix")
    try:
        deadline = time.monotonic() + ready_timeout
        while not _answers(url):
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with code {proc.returncode} before "
                                   f"answering at {url}; see its output above")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not answer at {url} within "
                                   f"{ready_timeout:.0f} s; stopped it")
            time.sleep(0.25)
        announce()
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        stop(proc)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_ui(host: str, port: int, uri: str | None, *, workers: int = 1,
           echo: Callable[[str], None] = print) -> int:
    """``layerwise ui``: check the port, start the MLflow UI, print its URL once it answers."""
    uri = resolve_uri(uri)
    check_port_free(host, port)
    url = f"http://{host}:{port}"
    echo(f"starting the MLflow UI over {uri} ...")
    return serve(mlflow_ui_command(uri, host, port, workers), f"{url}/health",
                 announce=lambda: echo(f"MLflow UI on {url} over {uri}  (Ctrl-C stops it)"))
