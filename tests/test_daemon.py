"""The daemon as a real process: start, health, signals, and start-up refusals."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.cli import EXIT_BAD_CONFIG
from tests.conftest import ConfigFile, Daemon, clean_env, free_port

pytestmark = pytest.mark.slow


def test_demo_answers_healthz_and_stops_cleanly(start_daemon: Callable[..., Daemon]) -> None:
    """`run --demo` needs no file and no hardware: /healthz answers 200 within 10 s, and
    SIGTERM ends it with exit status 0 within 5 s. VG_ variables still override."""
    port = free_port()
    daemon = start_daemon(
        "--demo", web_port=port, env=clean_env(VG_WEB__PORT=str(port), VG_MQTT__PORT="1")
    )
    took = daemon.wait_healthy(within_s=10)
    assert took < 10
    status, body = daemon.get("/healthz")
    assert status == 200
    assert body["demo"] is True
    assert body["gateway"] == "demo.dongtrung"
    code, seconds = daemon.stop()
    assert code == 0, daemon.output()
    assert seconds < 5
    started = [ln for ln in daemon.log_lines() if ln["event"] == "app.started"]
    state_dir = Path(started[0]["state_dir"])
    assert state_dir.name.startswith("village-gateway-demo-")
    assert not state_dir.exists()  # the demo's temporary folder is gone: nothing left in /tmp
    assert "village-gateway demo" in daemon.output()  # the banner


def test_every_log_line_has_ts_level_event_component(
    config_file: ConfigFile, start_daemon: Callable[..., Daemon]
) -> None:
    """Under systemd stdout is no terminal, so each line is one JSON object that carries
    ts (RFC 3339 with offset), level, event and component, for journald and the outbox."""
    daemon = start_daemon("--config", str(config_file.path), web_port=config_file.web_port)
    daemon.wait_healthy()
    daemon.stop()
    lines = daemon.log_lines()
    assert len(lines) >= 3
    for line in lines:
        assert {"ts", "level", "event", "component"} <= line.keys(), line
        assert line["ts"].endswith("+07:00"), line  # the gateway's zone, Asia/Ho_Chi_Minh
    assert not [ln for ln in daemon.output().splitlines() if ln and not ln.startswith("{")]


def test_sighup_applies_a_valid_change(
    config_file: ConfigFile, start_daemon: Callable[..., Daemon]
) -> None:
    """`systemctl reload` (SIGHUP) with a changed name applies it at once; a changed port
    is logged as needing a restart and the old port keeps serving."""
    daemon = start_daemon("--config", str(config_file.path), web_port=config_file.web_port)
    daemon.wait_healthy()
    new_port = free_port()
    config_file.write(
        {
            "Thử": "Thử đã đổi",
            f"port = {config_file.web_port}\n\n[log]": f"port = {new_port}\n\n[log]",
        }
    )
    daemon.signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while daemon.get("/healthz")[1]["name"] != "Nhà văn hóa thôn Thử đã đổi":
        assert time.monotonic() < deadline, daemon.output()
        time.sleep(0.05)
    assert daemon.get("/healthz")[1]["restart_required"] == ["web.port"]
    assert any(line["event"] == "config.restart_required" for line in daemon.log_lines())
    assert daemon.stop()[0] == 0


def test_sighup_with_invalid_file_keeps_running_config(
    config_file: ConfigFile, start_daemon: Callable[..., Daemon]
) -> None:
    """A broken file on reload is rejected, each problem is logged with its key, and the
    daemon keeps serving with what it had."""
    daemon = start_daemon("--config", str(config_file.path), web_port=config_file.web_port)
    daemon.wait_healthy()
    config_file.write({'id = "test.gw1"': 'id = "a#b"', "Thử": "Thử sai"}, extra="[x]\n")
    daemon.signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while not any(ln["event"] == "config.reload_rejected" for ln in daemon.log_lines()):
        assert time.monotonic() < deadline, daemon.output()
        time.sleep(0.05)
    keys = {ln["key"] for ln in daemon.log_lines() if ln["event"] == "config.reload_problem"}
    assert keys == {"gateway.id", "x"}
    status, body = daemon.get("/healthz")
    assert status == 200
    assert body["name"] == "Nhà văn hóa thôn Thử"
    assert daemon.stop()[0] == 0


def run_to_exit(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the daemon expecting it to refuse to start; bounded in time."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", "run", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
        env=env or clean_env(),
    )


def test_state_dir_not_writable(config_file: ConfigFile, tmp_path: Path) -> None:
    """A state folder that cannot be created or written is refused at start with exit 2,
    naming gateway.state_dir (here its parent is a file, which stops even root)."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    config_file.state_dir = blocker / "state"
    config_file.write()
    result = run_to_exit("--config", str(config_file.path))
    assert result.returncode == EXIT_BAD_CONFIG, result.stderr
    assert f"gateway.state_dir: {blocker}/state is not a writable folder" in result.stderr


def test_a_short_signing_key_is_refused(config_file: ConfigFile, tmp_path: Path) -> None:
    """A commands.hmac_key_file shorter than 32 bytes stops the start with exit 2 naming
    the key: a short key can be guessed offline from one captured signed command."""
    key_file = tmp_path / "hmac.key"
    key_file.write_bytes(b"secret\n")
    config_file.write(extra=f'\n[commands]\nhmac_key_file = "{key_file}"\n')
    result = run_to_exit("--config", str(config_file.path))
    assert result.returncode == EXIT_BAD_CONFIG, result.stderr
    assert f"commands.hmac_key_file: {key_file} holds 6 bytes" in result.stderr


def test_a_second_gateway_on_the_same_state_folder_is_refused(
    config_file: ConfigFile, start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    """`village-gateway run` typed by hand while the service runs would hand out the
    outbox's seqs a second time: it stops with exit 2 naming gateway.state_dir and the
    running one's pid, even on another web port; the first one goes on serving. Once the
    first has stopped, the folder is free again."""
    first = start_daemon("--config", str(config_file.path), web_port=config_file.web_port)
    first.wait_healthy(within_s=15)
    other_port = free_port()
    result = run_to_exit(
        "--config", str(config_file.path), env=clean_env(VG_WEB__PORT=str(other_port))
    )
    assert result.returncode == EXIT_BAD_CONFIG, result.stderr
    assert (
        f"gateway.state_dir: {config_file.state_dir} is in use by another gateway "
        f"(pid {first.process.pid}): stop it first" in result.stderr
    )
    assert first.get("/healthz")[0] == 200
    assert first.stop()[0] == 0
    again = start_daemon(
        "--config",
        str(config_file.path),
        web_port=other_port,
        env=clean_env(VG_WEB__PORT=str(other_port)),
    )
    again.wait_healthy(within_s=15)
    assert again.stop()[0] == 0


def test_port_taken(config_file: ConfigFile) -> None:
    """If another program holds the web port, start-up stops with exit 2 naming web.port,
    instead of running without its UI."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", config_file.web_port))
        squatter.listen()
        result = run_to_exit("--config", str(config_file.path))
    assert result.returncode == EXIT_BAD_CONFIG, result.stderr
    assert f"web.port: 127.0.0.1:{config_file.web_port} is already in use" in result.stderr


def test_bad_config_exits_2_not_1(tmp_path: Path) -> None:
    """`run` with a bad file exits 2 (bad configuration), distinct from a crash (1)."""
    path = tmp_path / "bad.toml"
    path.write_text('[gateway]\nid = "x"\n[mqtt]\nport = "x"\n')
    result = run_to_exit("--config", str(path))
    assert result.returncode == EXIT_BAD_CONFIG
    assert "mqtt.port" in result.stderr


def test_run_without_config_or_demo(tmp_path: Path) -> None:
    """`run` with neither --config nor --demo says what is missing, exit 2."""
    result = run_to_exit()
    assert result.returncode == EXIT_BAD_CONFIG
    assert "--config: no configuration file given" in result.stderr


def test_version_command() -> None:
    """`village-gateway version` prints the installed version."""
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == "0.1.0"


def test_missing_gpio_backend_refuses_to_start(config_file: ConfigFile) -> None:
    """Outside the demo, a pin factory that cannot be loaded (here lgpio, which only a Pi
    has) stops the start with exit 2 naming the relays, instead of gpiozero quietly
    falling back to something that drives no real pin."""
    result = run_to_exit(
        "--config", str(config_file.path), env=clean_env(GPIOZERO_PIN_FACTORY="lgpio")
    )
    assert result.returncode == EXIT_BAD_CONFIG, result.stderr
    assert "cannot start with this configuration" in result.stderr
    assert "relays:" in result.stderr
