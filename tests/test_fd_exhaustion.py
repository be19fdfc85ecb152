"""Idle sockets on the LAN cannot take the daemon down (issue 13, attack 2).

The daemon runs with the 1,024 file descriptors systemd gives a service by default; a
neighbour on the village wifi opens 1,100 connections to the web port and sends nothing.
The web UI still answers other phones, and a commune command still switches a relay (its
state file and the MQTT link need descriptors too).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Broker, ConfigFile, clean_env, terminate, wait_online
from tests.test_downlink import send
from tests.test_link import settings_for

pytestmark = pytest.mark.slow

IDLE = 1100
ATTACKER = "127.0.0.2"


@contextlib.contextmanager
def descriptors(wanted: int) -> Iterator[None]:
    """Let this test process hold ``wanted`` sockets (raise its soft limit, for a while)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"this machine allows {hard} descriptors per process, the test needs {wanted}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _limit_to_1024() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))


def _start_limited(config: Path, log: Path) -> subprocess.Popen[bytes]:
    """The daemon as systemd would start it without LimitNOFILE: 1,024 descriptors."""
    with log.open("wb") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--config", str(config)],
            stdout=output,
            stderr=subprocess.STDOUT,
            env=clean_env(),
            preexec_fn=_limit_to_1024,  # noqa: PLW1509 - only sets a limit in the child
            cwd=log.parent,
        )


def _healthz(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
        return int(response.status)


async def test_1100_idle_sockets_under_1024_descriptors(
    broker: Broker, config_file: ConfigFile, tmp_path: Path
) -> None:
    """1,100 idle connections from one address: /healthz answers another client and a
    relay.set over MQTT is done."""
    _, gateway = settings_for(config_file, broker)
    daemon = _start_limited(config_file.path, tmp_path / "daemon.log")
    idle: list[socket.socket] = []
    try:
        await wait_online(broker, gateway, within_s=30)
        assert await asyncio.to_thread(_healthz, config_file.web_port) == 200
        with descriptors(IDLE + 200):
            for _ in range(IDLE):
                sock = socket.socket()
                sock.bind((ATTACKER, 0))
                with contextlib.suppress(OSError):  # a refused one may be reset at once
                    sock.connect(("127.0.0.1", config_file.web_port))
                idle.append(sock)
            assert await asyncio.to_thread(_healthz, config_file.web_port) == 200
            result = await asyncio.to_thread(
                send, broker, "--gateway", gateway, "relay.set", "relay=yard", "on=true"
            )
            assert result.returncode == 0, result.stdout + result.stderr
            assert json.loads(result.stdout)["status"] == "done"
            assert daemon.poll() is None
    finally:
        for sock in idle:
            sock.close()
        terminate(daemon)
    output = (tmp_path / "daemon.log").read_text(errors="replace")
    assert "Too many open files" not in output
    # Refusals are logged at a bounded rate, not once per connection.
    assert output.count("refused") < 20
