"""Backup and restore: move a gateway to a new SD card and get the same gateway back."""

from __future__ import annotations

import http.cookiejar
import io
import json
import shutil
import socket
import subprocess
import sys
import tarfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway import backup
from gateway.backup import MANIFEST, BackupError, read_archive
from gateway.cli import main
from tests.conftest import REPO, Broker, ConfigFile, Daemon, clean_env, free_port
from tests.test_downlink import send

PASSWORD = "mật khẩu của thôn"  # noqa: S105 - a test password
CHIME = REPO / "gateway" / "pa" / "sounds" / "chime.wav"


def vg(
    *args: str, env: dict[str, str] | None = None, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    """``village-gateway ARGS`` as a process, as the IT person runs it."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env=env if env is not None else clean_env(),
    )


def names_in(archive: Path) -> set[str]:
    with tarfile.open(archive) as opened:
        return set(opened.getnames())


class Browser:
    """A logged-in browser: a cookie jar and the CSRF token."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def login(self, password: str) -> int:
        request = urllib.request.Request(  # noqa: S310 - loopback
            self.base + "/api/v1/login",
            data=json.dumps({"password": password}).encode(),
            headers={"Content-Type": "application/json", "Origin": self.base},
            method="POST",
        )
        try:
            with self.opener.open(request, timeout=10) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    def get(self, path: str) -> tuple[int, bytes, dict[str, str]]:
        try:
            with self.opener.open(self.base + path, timeout=30) as response:
                return response.status, response.read(), dict(response.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), dict(exc.headers)

    def json(self, path: str) -> Any:
        status, body, _ = self.get(path)
        assert status == 200, body
        return json.loads(body)


SCHEDULED = '\n[relays.porch]\npin = 23\npower_on = "schedule"\n'


@pytest.mark.slow
def test_round_trip_onto_a_fresh_state_folder(
    config_file: ConfigFile,
    broker: Broker,
    start_daemon: Callable[..., Daemon],
    tmp_path: Path,
) -> None:
    """A gateway with a password, a clip, schedules set by command and a relay switched on
    is backed up, restored onto a fresh install (another config file, an empty state
    folder) and started: the password logs in, the clip, the schedules and the relay
    state are there. The web UI's download is the same kind of archive."""
    config_file.mqtt_port = broker.port
    config_file.write({"pin = 17\n": 'pin = 17\npower_on = "restore"\n'}, extra=SCHEDULED)
    config_file.state_dir.mkdir()
    (config_file.state_dir / "clips").mkdir()
    shutil.copy(CHIME, config_file.state_dir / "clips" / "tin-sang.wav")
    assert (
        vg("set-password", "--config", str(config_file.path), stdin=PASSWORD + "\n").returncode == 0
    )
    old = start_daemon("--config", str(config_file.path), web_port=config_file.web_port)
    old.wait_healthy()
    assert (
        send(broker, "--gateway", "test.gw1", "relay.set", "relay=yard", "on=true").returncode == 0
    )
    rows = '[{"relay": "porch", "on": "05:00", "off": "06:00"}]'
    assert (
        send(broker, "--gateway", "test.gw1", "schedule.set", f"schedules={rows}").returncode == 0
    )
    browser = Browser(old.url)
    assert browser.get("/api/v1/backup")[0] == 401  # a session first
    assert browser.login(PASSWORD) == 200
    status, download, headers = browser.get("/api/v1/backup")
    assert status == 200
    assert headers["Content-Disposition"].startswith(
        'attachment; filename="village-gateway-test.gw1'
    )
    assert old.stop()[0] == 0

    archive = tmp_path / "gw1.tar.gz"
    made = vg("backup", str(archive), "--config", str(config_file.path))
    assert made.returncode == 0, made.stderr
    names = names_in(archive)
    assert {MANIFEST, "config/config.toml", "state/web_password", "state/schedules.json"} <= names
    assert "state/web_sessions.json" in names
    assert {"state/relays.json", "state/clips/tin-sang.wav"} <= names
    web_copy = tmp_path / "web.tar.gz"
    web_copy.write_bytes(download)
    assert names_in(web_copy) == names  # the same archive, its config the last good copy

    fresh_config = tmp_path / "new-card" / "config.toml"
    fresh_config.parent.mkdir()
    shutil.copy(REPO / "config.example.toml", fresh_config)
    fresh_state = tmp_path / "new-card" / "state"
    env = clean_env(VG_GATEWAY__STATE_DIR=str(fresh_state))
    restored = vg("restore", str(archive), "--config", str(fresh_config), env=env)
    assert restored.returncode == 0, restored.stderr
    assert f"into {fresh_state}" in restored.stdout
    assert fresh_config.read_text() == config_file.path.read_text()

    new = start_daemon("--config", str(fresh_config), web_port=config_file.web_port, env=env)
    new.wait_healthy()
    assert browser.json("/api/v1/session")["authenticated"] is True  # the phone stays in
    browser = Browser(new.url)
    assert browser.login("wrong password") == 401
    assert browser.login(PASSWORD) == 200
    clips = [clip["name"] for clip in browser.json("/api/v1/clips")["clips"]]
    assert "tin-sang" in clips
    state = browser.json("/api/v1/state")
    assert state["schedules"]["schedules"] == [
        {
            "relay": "porch",
            "on": "05:00",
            "off": "06:00",
            "days": state["schedules"]["schedules"][0]["days"],
        }
    ]
    assert state["relays"]["relays"]["yard"]["on"] is True
    assert new.stop()[0] == 0


def make_state(root: Path) -> tuple[Path, Path]:
    """A small gateway on disk: a config and a state folder with a password and a clip."""
    state = root / "state"
    (state / "clips").mkdir(parents=True)
    (state / "web_password").write_text("scrypt$hash\n")
    (state / "relays.json").write_text('{"yard": {"on": true}}')
    shutil.copy(CHIME, state / "clips" / "chime2.wav")
    config = root / "config.toml"
    config.write_text(f'[gateway]\nid = "gw.one"\nstate_dir = "{state}"\n\n[web]\nport = 1\n')
    return config, state


def snapshot(*roots: Path) -> dict[str, bytes]:
    return {
        str(path): path.read_bytes()
        for root in roots
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    config, _ = make_state(tmp_path / "old")
    path = tmp_path / "backup.tar.gz"
    assert main(["backup", str(path), "--config", str(config)]) == 0
    return path


def tamper(
    source: Path, target: Path, change: Callable[[str, bytes], tuple[str, bytes] | None]
) -> None:
    """Rewrite the archive member by member through ``change`` (None drops a member)."""
    with tarfile.open(source) as old, tarfile.open(target, "w:gz") as new:
        for member in old.getmembers():
            data = old.extractfile(member).read()  # type: ignore[union-attr]
            changed = change(member.name, data)
            if changed is None:
                continue
            info = tarfile.TarInfo(changed[0])
            info.size = len(changed[1])
            new.addfile(info, io.BytesIO(changed[1]))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        pytest.param(lambda p, t: t.write_bytes(p.read_bytes()[:200]), "damaged", id="truncated"),
        pytest.param(
            lambda p, t: t.write_bytes(p.read_bytes()[:300] + b"\0" * 40 + p.read_bytes()[340:]),
            "damaged",
            id="corrupt",
        ),
        pytest.param(
            lambda p, t: t.write_text("[gateway]\n"), "not a village-gateway backup", id="text"
        ),
        pytest.param(
            lambda p, t: tamper(p, t, lambda n, d: None if n == MANIFEST else (n, d)),
            "not a village-gateway backup (it has no manifest.json)",
            id="no-manifest",
        ),
        pytest.param(
            lambda p, t: tamper(
                p, t, lambda n, d: (n, d.replace(b"village-gateway-backup", b"other-backup"))
            ),
            "another program's archive",
            id="foreign",
        ),
        pytest.param(
            lambda p, t: tamper(
                p, t, lambda n, d: (n, b"scrypt$other\n" if n == "state/web_password" else d)
            ),
            "state/web_password does not match its checksum",
            id="checksum",
        ),
        pytest.param(
            lambda p, t: tamper(
                p, t, lambda n, d: ("state/../../evil" if n == "state/relays.json" else n, d)
            ),
            "'state/../../evil' is not a file the manifest lists",
            id="escapes",
        ),
        pytest.param(
            lambda p, t: tamper(p, t, lambda n, d: None if n == "state/relays.json" else (n, d)),
            "state/relays.json missing from the archive",
            id="missing-member",
        ),
    ],
)
def test_a_damaged_or_foreign_file_is_refused_and_nothing_changes(
    archive: Path,
    tmp_path: Path,
    damage: Callable[[Path, Path], None],
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config, _ = make_state(tmp_path / "target")
    config.write_text(config.read_text().replace("gw.one", "gw.target"))
    before = snapshot(tmp_path / "target")
    bad = tmp_path / "bad.tar.gz"
    damage(archive, bad)
    assert main(["restore", str(bad), "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.rstrip().endswith("nothing was changed")
    assert snapshot(tmp_path / "target") == before
    assert sorted(p.name for p in (tmp_path / "target").iterdir()) == ["config.toml", "state"]


def test_a_failure_in_the_middle_puts_everything_back(
    archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the last rename (the configuration) fails, the state folder swap is undone."""
    config, _ = make_state(tmp_path / "target")
    before = snapshot(tmp_path / "target")
    real_replace = Path.replace

    def failing(self: Path, target: Any) -> Path:
        if Path(target) == config:
            raise OSError(28, "No space left on device")
        return real_replace(self, target)

    monkeypatch.setattr(Path, "replace", failing)
    with pytest.raises(OSError, match="No space"):
        backup.restore(archive, config)
    assert snapshot(tmp_path / "target") == before
    assert sorted(p.name for p in (tmp_path / "target").iterdir()) == ["config.toml", "state"]


def test_restore_refuses_while_the_gateway_runs(tmp_path: Path) -> None:
    """Restoring under a running daemon would mix two gateways' files: refused."""
    config, _ = make_state(tmp_path / "gw")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        config.write_text(
            config.read_text().replace("port = 1", f'host = "127.0.0.1"\nport = {port}')
        )
        archive = tmp_path / "running.tar.gz"
        assert main(["backup", str(archive), "--config", str(config)]) == 0
        with pytest.raises(BackupError, match="the gateway is running"):
            backup.restore(archive, config)


def test_restore_refuses_a_state_folder_a_gateway_holds(
    config_file: ConfigFile, start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    """A gateway whose web port is not the one in the configuration (an override, the
    web turned off) is still found: it holds the state folder's lock, so restore names its
    pid and changes nothing; the gateway goes on serving."""
    elsewhere = free_port()
    daemon = start_daemon(
        "--config",
        str(config_file.path),
        web_port=elsewhere,
        env=clean_env(VG_WEB__PORT=str(elsewhere)),
    )
    daemon.wait_healthy(within_s=15)
    archive = tmp_path / "live.tar.gz"
    assert main(["backup", str(archive), "--config", str(config_file.path)]) == 0
    with pytest.raises(
        BackupError,
        match=rf"is in use by another gateway \(pid {daemon.process.pid}\): stop it first",
    ):
        backup.restore(archive, config_file.path)
    assert not list(tmp_path.glob("*before-restore*"))
    assert not list(tmp_path.glob(".*restoring*"))
    assert daemon.get("/healthz")[0] == 200
    assert daemon.stop()[0] == 0
    backup.restore(archive, config_file.path)  # stopped: the same archive goes in
    assert list(tmp_path.glob("state.before-restore-*"))


def test_a_newer_format_is_refused(archive: Path, tmp_path: Path) -> None:
    newer = tmp_path / "newer.tar.gz"

    def bump(name: str, data: bytes) -> tuple[str, bytes]:
        if name != MANIFEST:
            return name, data
        manifest = json.loads(data)
        manifest["version"] = 99
        return name, json.dumps(manifest).encode()

    tamper(archive, newer, bump)
    with pytest.raises(BackupError, match="newer than this version reads"):
        read_archive(newer, tmp_path / "staging")
