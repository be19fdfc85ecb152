"""sd_notify against a real AF_UNIX datagram socket, as systemd would listen on it."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.component import Backoff
from gateway.config import load_settings
from gateway.daemon.app import App
from gateway.systemd import Notifier, watchdog_interval
from tests.conftest import ConfigFile, Daemon, clean_env
from tests.test_app import Counting, running, wait_for


class NotifySocket:
    """The listening end systemd would hold: collects every datagram it receives."""

    def __init__(self, path: Path | str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[dict[str, str]] = []

    def drain(self) -> list[dict[str, str]]:
        """Read what has arrived so far and return all messages seen."""
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return self.messages
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            self.messages.append(fields)

    def wait_for(
        self, key: str, value: str | None = None, within_s: float = 10.0
    ) -> dict[str, str]:
        """Block until a message with ``key`` (and ``value``) arrives; return it."""
        deadline = time.monotonic() + within_s
        seen = 0
        while time.monotonic() < deadline:
            messages = self.drain()
            for message in messages[seen:]:
                if key in message and (value is None or message[key] == value):
                    return message
            seen = len(messages)
            time.sleep(0.02)
        pytest.fail(f"no {key}={value} within {within_s} s; got {self.messages}")

    def count(self, key: str) -> int:
        """How many messages so far carried ``key``."""
        return sum(1 for message in self.drain() if key in message)


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    """A bound datagram socket in the test's folder."""
    listener = NotifySocket(tmp_path / "notify.sock")
    yield listener
    listener.sock.close()


async def test_ready_then_watchdog_while_healthy_and_none_once_hung(
    config_file: ConfigFile, notify_socket: NotifySocket, tmp_path: Path
) -> None:
    """READY=1 comes once started; WATCHDOG=1 keeps coming while the critical part makes
    progress; once it hangs the pings stop (so systemd would restart the daemon) and the
    STATUS line says which part hangs."""
    lights = Counting()
    notifier = Notifier(str(tmp_path / "notify.sock"))
    app = App(
        load_settings(config_file.path),
        extra_components=[lights],
        notifier=notifier,
        backoff=Backoff(initial_s=0.05),
        watchdog_s=0.05,
    )
    async with running(app):
        await wait_for(lambda: notify_socket.count("READY") == 1)
        await wait_for(lambda: notify_socket.count("WATCHDOG") >= 3)
        lights.hang.set()
        await wait_for(lambda: bool(app.problems()))
        await asyncio.sleep(0.1)  # a ping already on its way may still land
        pings = notify_socket.count("WATCHDOG")
        for _ in range(10):  # ten watchdog periods, read as systemd would
            await asyncio.sleep(0.05)
            notify_socket.drain()
        assert notify_socket.count("WATCHDOG") == pings
        statuses = [m["STATUS"] for m in notify_socket.drain() if "STATUS" in m]
        assert "lights hung" in statuses[-1]
    assert {"STOPPING": "1"} in notify_socket.drain()


def test_abstract_namespace_socket() -> None:
    """A NOTIFY_SOCKET starting with '@' is an abstract socket; messages reach it."""
    name = f"@village-gateway-test-{os.getpid()}"
    listener = NotifySocket("\0" + name[1:])
    try:
        notifier = Notifier(name)
        assert notifier.ready("ok") is True
        assert listener.wait_for("READY") == {"READY": "1", "STATUS": "ok"}
        notifier.close()
    finally:
        listener.sock.close()


def test_notify_to_a_vanished_socket_does_not_raise(tmp_path: Path) -> None:
    """If systemd's socket is gone, notifying logs and returns False; the daemon lives on."""
    notifier = Notifier(str(tmp_path / "gone.sock"))
    assert notifier.enabled
    assert notifier.watchdog() is False


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec(
    env: dict[str, str], expected: float | None
) -> None:
    """Pings go at half systemd's period, and only when the watchdog is meant for us."""
    assert watchdog_interval(env) == expected


@pytest.mark.slow
def test_daemon_notifies_systemd_through_its_life(
    config_file: ConfigFile,
    notify_socket: NotifySocket,
    tmp_path: Path,
    start_daemon: Callable[..., Daemon],
) -> None:
    """The real daemon process: READY=1 with a STATUS, WATCHDOG=1 at half WATCHDOG_USEC,
    RELOADING=1 with MONOTONIC_USEC then READY=1 around SIGHUP, STOPPING=1 on SIGTERM."""
    env = clean_env(NOTIFY_SOCKET=str(tmp_path / "notify.sock"), WATCHDOG_USEC="400000")
    daemon = start_daemon("--config", str(config_file.path), web_port=config_file.web_port, env=env)
    ready = notify_socket.wait_for("READY")
    assert ready["STATUS"]
    daemon.wait_healthy()
    notify_socket.wait_for("WATCHDOG", "1")
    daemon.signal(signal.SIGHUP)
    reloading = notify_socket.wait_for("RELOADING", "1")
    assert int(reloading["MONOTONIC_USEC"]) > 0
    index = notify_socket.messages.index(reloading)
    deadline = time.monotonic() + 5
    while not any("READY" in m for m in notify_socket.drain()[index:]):
        assert time.monotonic() < deadline, notify_socket.messages
        time.sleep(0.02)
    code, _ = daemon.stop()
    assert code == 0
    notify_socket.wait_for("STOPPING", "1")
