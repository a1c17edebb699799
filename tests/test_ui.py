"""``layerwise ui``: the URL once the server answers; Ctrl-C and SIGTERM free the port."""
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request

import pytest
from click.testing import CliRunner

from pipelines.cli import main
from pipelines.ui import check_port_free

pytestmark = pytest.mark.skipif(os.name != "posix", reason="process groups and signals of POSIX")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_free(port: int) -> bool:
    try:
        check_port_free("127.0.0.1", port)
    except ValueError:
        return False
    return True


def _read_until(proc, text: str, timeout: float) -> str:
    seen, deadline = "", time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
            seen += line
            if text in line:
                return seen
    raise AssertionError(f"{text!r} never printed within {timeout} s; got:\n{seen}")


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_the_server_and_its_children(sig):
    """A server whose listener is a grandchild (as mlflow ui's uvicorn workers are): stopping
    the process that serves it ends the whole group and frees the port."""
    port = _free_port()
    server = (f"{sys.executable} -m http.server {port} --bind 127.0.0.1 & echo child $! ; wait")
    script = textwrap.dedent(f"""
        from pipelines.ui import serve
        code = serve(["sh", "-c", {server!r}], "http://127.0.0.1:{port}/",
                     announce=lambda: print("READY", flush=True))
        print("EXIT", code, flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        seen = _read_until(proc, "READY", 60)
        child = int(next(line.split()[1] for line in seen.splitlines() if line.startswith("child")))
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).status == 200
        assert not _port_free(port)
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "EXIT 0" in out
    assert proc.returncode == 0
    assert _gone(child), "the server's child outlived the stop"
    assert _port_free(port)


def test_a_port_in_use_is_named_before_anything_starts():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        res = CliRunner().invoke(main, ["ui", "--port", str(port)])
    assert res.exit_code == 2
    assert f"port {port} on 127.0.0.1 is in use" in res.output and "--port" in res.output


def test_a_server_that_dies_before_answering_is_reported():
    from pipelines.ui import serve

    with pytest.raises(RuntimeError, match="exited with code 3 before answering"):
        serve([sys.executable, "-c", "raise SystemExit(3)"], f"http://127.0.0.1:{_free_port()}/",
              announce=lambda: None)


@pytest.mark.slow
def test_layerwise_ui_prints_the_url_once_it_answers_and_ctrl_c_frees_the_port(tmp_path):
    port = _free_port()
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "ui", "--port", str(port),
                             "--uri", uri], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _read_until(proc, f"MLflow UI on http://127.0.0.1:{port}", 240)
        # the URL is printed only once it answers
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).status == 200
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0
    assert _port_free(port)
