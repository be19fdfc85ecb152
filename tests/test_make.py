"""`make run`, the first command of the README, as a developer would type it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO, clean_env, free_port

pytestmark = pytest.mark.slow

DEMO_TOML = REPO / "gateway" / "demo.toml"


def healthz(port: int) -> int:
    """Status of /healthz, 0 while nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            json.loads(r.read())
            return int(r.status)
    except OSError:
        return 0


def link_connected(port: int) -> bool:
    """True once the daemon's /metrics says its link is connected to the broker."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            return "vg_link_connected 1.0" in r.read().decode()
    except OSError:
        return False


def listening(port: int) -> bool:
    """True when something accepts connections on 127.0.0.1:port."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


def test_make_run_starts_the_demo_with_a_local_broker(tmp_path: Path) -> None:
    """`make run` brings up the demo (health 200 within 10 s of the daemon starting, the
    bootstrap being done) with a private mosquitto on loopback; Ctrl-C stops both."""
    web_port, broker_port = free_port(), free_port()
    env = clean_env(
        VG_WEB__PORT=str(web_port),
        VG_MQTT__PORT=str(broker_port),
        DEMO_BROKER_PORT=str(broker_port),
        DEMO_DIR=str(tmp_path / "demo"),  # not the repository's own .demo
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


def run_demo(env: dict[str, str], web_port: int) -> str:
    """`make run` until healthy and connected, then Ctrl-C; returns everything it printed."""
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
        deadline = time.monotonic() + 120
        # Healthy, and connected: Ctrl-C before the link's first connection would stop
        # a demo that never dialled its broker.
        while healthz(web_port) != 200 or not link_connected(web_port):
            assert process.poll() is None, process.communicate()[0]
            assert time.monotonic() < deadline, "demo never became healthy and connected"
            time.sleep(0.1)
        os.killpg(process.pid, signal.SIGINT)
        output, _ = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    # make itself hears Ctrl-C too and ends with "Interrupt"; the demo's own stop is clean.
    assert process.returncode in {0, -signal.SIGINT}, output
    assert "app.stopped" in output
    return output


def test_the_demo_follows_its_broker_port_keeps_its_state_and_stops_quietly(
    tmp_path: Path,
) -> None:
    """`DEMO_BROKER_PORT=P make run`: the daemon dials P too; the address and the setup
    code stand out as a banner; everything is kept in DEMO_DIR (.demo by default, git
    ignored), so a password set once is still set at the next start; Ctrl-C stops it
    without a warning."""
    web_port, broker_port = free_port(), free_port()
    demo_dir = tmp_path / "demo"
    env = clean_env(
        VG_WEB__PORT=str(web_port), DEMO_BROKER_PORT=str(broker_port), DEMO_DIR=str(demo_dir)
    )
    env.pop("MAKEFLAGS", None)
    output = run_demo(env, web_port)
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    connected = [line for line in lines if line["event"] == "link.connected"]
    assert [line["broker"] for line in connected] == [f"127.0.0.1:{broker_port}"], output
    assert f"| web UI:      http://127.0.0.1:{web_port}/" in output
    setup = [line["code"] for line in lines if line["event"] == "web.setup_code"]
    assert f"| setup code:  {setup[0]}" in output
    stopping = next(i for i, line in enumerate(lines) if line["event"] == "app.stopping")
    noisy = [line for line in lines[stopping:] if line["level"] != "info"]
    assert noisy == [], output
    assert (demo_dir / "state" / "boot_count").read_text() == "1\n"
    assert (demo_dir / "mosquitto.conf").exists()
    leftovers = [
        path
        for path in Path(tempfile.gettempdir()).glob("vg-demo-mosquitto.*")
        if f"listener {broker_port} " in path.read_text(errors="replace")
    ]
    assert leftovers == []

    password = subprocess.run(
        [str(REPO / ".venv/bin/village-gateway"), "set-password", "--config", str(DEMO_TOML)],
        input="a long demo password\n",
        capture_output=True,
        text=True,
        check=False,
        env=clean_env(VG_GATEWAY__STATE_DIR=str(demo_dir / "state")),
    )
    assert password.returncode == 0, password.stderr
    output = run_demo(env, web_port)
    assert "| password:    already set" in output
    assert "setup code" not in output
    assert (demo_dir / "state" / "boot_count").read_text() == "2\n"
