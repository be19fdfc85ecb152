"""`make run`, the first command of the README, as a developer would type it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request

import pytest

from tests.conftest import REPO, clean_env, free_port

pytestmark = pytest.mark.slow


def healthz(port: int) -> int:
    """Status of /healthz, 0 while nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            json.loads(r.read())
            return int(r.status)
    except OSError:
        return 0


def listening(port: int) -> bool:
    """True when something accepts connections on 127.0.0.1:port."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


def test_make_run_starts_the_demo_with_a_local_broker() -> None:
    """`make run` brings up the demo (health 200 within 10 s of the daemon starting, the
    bootstrap being done) with a private mosquitto on loopback; Ctrl-C stops both."""
    web_port, broker_port = free_port(), free_port()
    env = clean_env(
        VG_WEB__PORT=str(web_port),
        VG_MQTT__PORT=str(broker_port),
        DEMO_BROKER_PORT=str(broker_port),
    )
    env.pop("MAKEFLAGS", None)
    process = subprocess.Popen(
        ["make", "--no-print-directory", "run"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120  # bootstrap is already done under `make test`
        while healthz(web_port) != 200:
            assert process.poll() is None, process.communicate()[0]
            assert time.monotonic() < deadline, "demo never became healthy"
            time.sleep(0.1)
        assert listening(broker_port), "make run did not start the local broker"
        started = time.monotonic()
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends
        output, _ = process.communicate(timeout=10)
        assert time.monotonic() - started < 5, output
        assert "app.stopped" in output
        assert not listening(web_port)
        deadline = time.monotonic() + 5
        while listening(broker_port):
            assert time.monotonic() < deadline, "the demo broker outlived make run"
            time.sleep(0.1)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
