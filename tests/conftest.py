"""Shared fixtures: real parts only — a real mosquitto, the real daemon as a process.

Everything listens on 127.0.0.1 and on ports the kernel hands out, so tests never touch
the network and never clash with a demo running on the same machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from gateway.clock import set_zone
from gateway.log import reset_logging

REPO = Path(__file__).resolve().parent.parent

# In-process daemons in tests drive gpiozero's own mock pins, never real GPIO.
os.environ.setdefault("GPIOZERO_PIN_FACTORY", "mock")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def terminate(process: subprocess.Popen[Any]) -> None:
    """SIGTERM a child and reap it; SIGKILL if it has not gone within 10 s."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def mosquitto_binary() -> str:
    """Debian installs mosquitto in /usr/sbin, often not on a user's PATH."""
    found = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(found).exists():
        pytest.fail("mosquitto is not installed: run `make test`, which installs it")
    return found


@dataclass
class Broker:
    """A real mosquitto on 127.0.0.1 that a test can stop and start to make outages."""

    workdir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        """Where clients connect."""
        return "127.0.0.1"

    def start(self) -> None:
        """Start (or start again) on the same port, and wait until it accepts clients."""
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            textwrap.dedent(f"""\
                listener {self.port} 127.0.0.1
                user root
                allow_anonymous true
                set_tcp_nodelay true
                max_queued_messages 0
                persistence true
                persistence_location {self.workdir}/
                autosave_interval 1
                log_dest file {self.workdir}/mosquitto.log
                """)
        )
        self.process = subprocess.Popen([mosquitto_binary(), "-c", str(conf)])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
            except OSError:
                time.sleep(0.05)
            else:
                return
        raise RuntimeError(f"mosquitto did not start on port {self.port}")

    def stop(self) -> None:
        """Stop it, as an outage would."""
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def restart(self) -> None:
        """Stop, then start again on the same port."""
        self.stop()
        self.start()


async def wait_online(
    broker: Broker, gateway: str, *, prefix: str = "vg/v1", within_s: float = 15.0
) -> dict[str, Any]:
    """Wait for the gateway's retained ``{"online": true}`` on ``P/ID/status``; returns it.

    The gateway publishes it only after it has subscribed its command topics, so a command
    published once this returns reaches it (a sleep "for the subscription" only guesses).
    Use a gateway id no earlier run has left an ``online: true`` under.
    """
    topic = f"{prefix}/{gateway}/status"
    try:
        async with (
            asyncio.timeout(within_s),
            aiomqtt.Client(
                broker.host, broker.port, identifier=f"online-{uuid.uuid4().hex[:8]}"
            ) as client,
        ):
            await client.subscribe(topic, qos=1)
            async for message in client.messages:
                raw = message.payload
                status = json.loads(raw) if isinstance(raw, bytes) and raw else {}
                if isinstance(status, dict) and status.get("online") is True:
                    return status
    except TimeoutError:
        pass
    pytest.fail(f"{topic} did not say online: true within {within_s} s")


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """One mosquitto per test session; a test that stops it must start it again."""
    instance = Broker(tmp_path_factory.mktemp("mosquitto"))
    instance.start()
    yield instance
    instance.stop()


BASE_CONFIG = """\
[gateway]
id = "test.gw1"
name = "Nhà văn hóa thôn Thử"
groups = ["commune.test"]
state_dir = "{state_dir}"

[mqtt]
host = "127.0.0.1"
port = {mqtt_port}

[relays.yard]
pin = 17
label = "Đèn sân"

[relays.amplifier]
pin = 22
label = "Nguồn amply"

[pa]
backend = "null"
amp_relay = "amplifier"

[hotspots.hall]
host = "127.0.0.1"
probes = [{{ kind = "tcp", port = {web_port} }}]

[web]
host = "127.0.0.1"
port = {web_port}

[log]
level = "{log_level}"
format = "json"
"""


@dataclass
class ConfigFile:
    """A configuration file the test owns, with the values it was made from."""

    path: Path
    state_dir: Path
    web_port: int
    mqtt_port: int

    def write(
        self, replace: dict[str, str] | None = None, *, log_level: str = "INFO", extra: str = ""
    ) -> None:
        """(Re)write the file from the base template; ``replace`` swaps literal text."""
        text = BASE_CONFIG.format(
            state_dir=self.state_dir,
            mqtt_port=self.mqtt_port,
            web_port=self.web_port,
            log_level=log_level,
        )
        for old, new in (replace or {}).items():
            assert old in text, f"{old!r} is not in the base config"
            text = text.replace(old, new)
        self.path.write_text(text + extra, encoding="utf-8")


@pytest.fixture
def config_file(tmp_path: Path) -> ConfigFile:
    """A valid configuration on free loopback ports, state in the test's folder."""
    config = ConfigFile(
        path=tmp_path / "config.toml",
        state_dir=tmp_path / "state",
        web_port=free_port(),
        mqtt_port=free_port(),
    )
    config.write()
    return config


def clean_env(**overrides: str) -> dict[str, str]:
    """The test's environment without VG_/NOTIFY_/WATCHDOG_ leftovers, plus overrides."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("VG_", "NOTIFY_SOCKET", "WATCHDOG_"))
    }
    env["GPIOZERO_PIN_FACTORY"] = "mock"
    env.update(overrides)
    return env


@dataclass
class Daemon:
    """The real daemon, ``python -m gateway run``, as a child process."""

    process: subprocess.Popen[str]
    web_port: int
    output_path: Path

    @property
    def url(self) -> str:
        """Base URL of its HTTP server."""
        return f"http://127.0.0.1:{self.web_port}"

    def get(self, path: str) -> tuple[int, dict[str, Any]]:
        """GET a JSON endpoint; returns (status, body) also for error statuses."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as response:  # noqa: S310
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def wait_healthy(self, within_s: float = 10.0) -> float:
        """Poll /healthz until 200; returns the seconds it took. Fails with the output."""
        started = time.monotonic()
        while time.monotonic() - started < within_s:
            if self.process.poll() is not None:
                pytest.fail(f"daemon exited with {self.process.returncode}:\n{self.output()}")
            try:
                status, _ = self.get("/healthz")
            except (OSError, ValueError):
                status = 0
            if status == 200:
                return time.monotonic() - started
            time.sleep(0.05)
        pytest.fail(f"/healthz did not answer 200 within {within_s} s:\n{self.output()}")

    def signal(self, signum: signal.Signals) -> None:
        """Send a signal, as systemd would."""
        self.process.send_signal(signum)

    def stop(self, within_s: float = 5.0) -> tuple[int, float]:
        """SIGTERM, then wait; returns (exit status, seconds it took)."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=within_s + 5)
        return code, time.monotonic() - started

    def output(self) -> str:
        """Everything it printed so far (stdout and stderr)."""
        return self.output_path.read_text(encoding="utf-8", errors="replace")

    def log_lines(self) -> list[dict[str, Any]]:
        """Its JSON log lines, parsed (other lines skipped)."""
        lines = []
        for line in self.output().splitlines():
            if line.startswith("{"):
                lines.append(json.loads(line))
        return lines


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Start ``village-gateway run`` with given arguments; every one is killed at the end."""
    started: list[Daemon] = []

    def start(*args: str, web_port: int, env: dict[str, str] | None = None) -> Daemon:
        output_path = tmp_path / f"daemon-{len(started)}.log"
        with output_path.open("w") as output:
            process = subprocess.Popen(
                [sys.executable, "-m", "gateway", "run", *args],
                stdout=output,
                stderr=subprocess.STDOUT,
                env=env if env is not None else clean_env(),
                text=True,
                cwd=tmp_path,
            )
        daemon = Daemon(process, web_port, output_path)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        if daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait()


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    """Each test starts from unconfigured logging (structlog's defaults, as its own suite does) and
    from the machine's time zone for timestamps."""
    yield
    reset_logging()
    set_zone(None)
