"""The command line's exit statuses are distinct and documented, and every message about
the broker names it as host:port with the flags that set it."""

from __future__ import annotations

import re
import subprocess
import sys

from gateway.cli import EXIT_BAD_CONFIG, EXIT_CRASH
from gateway.send import EXIT_BAD_OPTIONS, EXIT_NO_BROKER, EXIT_NOT_DONE, EXIT_TIMEOUT
from tests.conftest import REPO, Broker, clean_env, free_port


def send(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "send", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env=clean_env(),
    )


def test_statuses_are_distinct() -> None:
    """done 0, crash 1, configuration 2, timeout 3, rejected 4, no broker 5."""
    statuses = [0, EXIT_CRASH, EXIT_BAD_CONFIG, EXIT_TIMEOUT, EXIT_NOT_DONE, EXIT_NO_BROKER]
    assert statuses == [0, 1, 2, 3, 4, 5]
    assert EXIT_BAD_OPTIONS == EXIT_BAD_CONFIG


def test_statuses_are_documented() -> None:
    """README and docs/protocol.md give the same numbers as the code."""
    protocol = (REPO / "docs" / "protocol.md").read_text(encoding="utf-8")
    row = next(line for line in protocol.splitlines() if line.startswith("| `village-gateway send"))
    for status, meaning in ((0, "all done"), (3, "no reply"), (4, "rejected"), (5, "broker")):
        assert re.search(rf"\b{status} [^,|]*{meaning}", row), (status, row)
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for text in ("0 done", "1 a crash", "2 ", "3 no final reply", "4 ", "5 "):
        assert text in readme, text


def test_send_without_a_broker_names_host_and_port() -> None:
    port = free_port()
    result = send("--host", "localhost", "--port", str(port), "--gateway", "gw", "system.ping")
    assert result.returncode == EXIT_NO_BROKER, result.stderr
    assert (
        f"village-gateway send: cannot reach localhost:{port} (--host/--port): nothing "
        "accepts connections there: is the broker running" in result.stderr
    )
    assert "mqtt.host" not in result.stderr


def test_send_timeout_names_the_gateway_and_broker(broker: Broker) -> None:
    result = send(
        "--host", broker.host, "--port", str(broker.port), "--timeout", "0.5",
        "--gateway", "nobody.here", "system.ping",
    )  # fmt: skip
    assert result.returncode == EXIT_TIMEOUT, result.stderr
    assert (
        f"no final reply within 0.5 s from nobody.here via 127.0.0.1:{broker.port} "
        "(--host/--port)" in result.stderr
    )


def test_send_bad_options() -> None:
    result = send("--gateway", "gw", "--group", "g", "system.ping")
    assert result.returncode == EXIT_BAD_OPTIONS
    assert "give exactly one of --gateway or --group" in result.stderr
