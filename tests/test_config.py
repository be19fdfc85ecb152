"""Configuration: the file, the VG_ overrides, and every bad input an installer may make."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import EXIT_BAD_CONFIG, main
from gateway.config import load_settings
from gateway.errors import ConfigError
from tests.conftest import REPO, ConfigFile, clean_env


def check_config(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run ``village-gateway check-config PATH`` in-process; returns (status, all output)."""
    code = main(["check-config", str(path)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_example_config_is_valid(capsys: pytest.CaptureFixture[str]) -> None:
    """The shipped config.example.toml passes check-config, so an installer can start
    from it; every key in it is one the daemon knows."""
    code, output = check_config(REPO / "config.example.toml", capsys)
    assert code == 0, output
    assert "ok" in output


def test_check_config_console_script(config_file: ConfigFile) -> None:
    """The installed console script, run as a process, exits 0 on a good file and 2 on a
    bad one, with the key named on stderr."""
    good = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", str(config_file.path)],
        capture_output=True,
        text=True,
        check=False,
        env=clean_env(),
    )
    assert good.returncode == 0, good.stderr
    config_file.write(extra="[bogus]\n")
    bad = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", str(config_file.path)],
        capture_output=True,
        text=True,
        check=False,
        env=clean_env(),
    )
    assert bad.returncode == EXIT_BAD_CONFIG
    assert "bogus: unknown key" in bad.stderr


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A path that does not exist is named, with 'no such file', exit 2."""
    path = tmp_path / "nowhere.toml"
    code, output = check_config(path, capsys)
    assert code == EXIT_BAD_CONFIG
    assert f"{path}: no such file" in output


def test_unreadable_file(config_file: ConfigFile) -> None:
    """A file the daemon may not read is named with 'permission denied', exit 2.

    As root, permission bits do not stop a read, so the check runs with the
    capabilities that bypass them dropped (setpriv), as the service user would be.
    """
    config_file.path.chmod(0)
    prefix: list[str] = []
    if os.geteuid() == 0:
        caps = "-dac_override,-dac_read_search"
        prefix = ["setpriv", "--bounding-set", caps, "--inh-caps", caps]
    result = subprocess.run(
        [*prefix, sys.executable, "-m", "gateway", "check-config", str(config_file.path)],
        capture_output=True,
        text=True,
        check=False,
        env=clean_env(),
        cwd=REPO,
    )
    assert result.returncode == EXIT_BAD_CONFIG, result.stderr
    assert f"{config_file.path}: cannot be read (permission denied)" in result.stderr


def test_invalid_toml_names_the_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A syntax error names the file and the line, so the installer can go straight there."""
    path = tmp_path / "broken.toml"
    path.write_text('[gateway]\nid = "a"\n[mqtt\nport = 1883\n')
    code, output = check_config(path, capsys)
    assert code == EXIT_BAD_CONFIG
    assert str(path) in output
    assert "line 3" in output


@pytest.mark.parametrize(
    ("replace", "extra", "expected"),
    [
        pytest.param({}, "[web2]\nport = 1\n", "web2: unknown key", id="unknown-section"),
        pytest.param(
            {"[web]\n": "[web]\nprot = 1\n"}, "", "web.prot: unknown key", id="unknown-key"
        ),
        pytest.param(
            {"[mqtt]\n": '[mqtt]\nkeepalive_s = "often"\n'},
            "",
            "mqtt.keepalive_s: must be a whole number (got 'often')",
            id="wrong-type",
        ),
        pytest.param(
            {"pin = 22": "pin = 17"},
            "",
            "relays: pin 17 is used by amplifier and yard",
            id="duplicate-pin",
        ),
        pytest.param({'id = "test.gw1"': 'id = "test/gw1"'}, "", "gateway.id", id="id-slash"),
        pytest.param({'id = "test.gw1"': 'id = "test+gw1"'}, "", "gateway.id", id="id-plus"),
        pytest.param({'id = "test.gw1"': 'id = "test#gw1"'}, "", "gateway.id", id="id-hash"),
        pytest.param(
            {"[gateway]\n": '[gateway]\ntimezone = "Asia/Hatinh"\n'},
            "",
            "gateway.timezone: unknown time zone 'Asia/Hatinh'",
            id="timezone",
        ),
        pytest.param(
            {'amp_relay = "amplifier"': 'amp_relay = "amp"'},
            "",
            "pa.amp_relay: names no relay: 'amp'",
            id="amp-relay",
        ),
        pytest.param(
            {"pin = 22": "pin = 40"}, "", "relays.amplifier.pin: must be a BCM GPIO", id="pin-range"
        ),
        pytest.param({"[relays.yard]": "[relays.Yard]"}, "", "relays.Yard", id="relay-name"),
        pytest.param(
            {'kind = "tcp", port': 'kind = "udp", port'},
            "",
            "hotspots.hall.probes.0",
            id="probe-kind",
        ),
        pytest.param({'level = "INFO"': 'level = "LOUD"'}, "", "log.level", id="log-level"),
        pytest.param(
            {'[hotspots.hall]\nhost = "127.0.0.1"': '[hotspots.hall]\nhost = "ap 1; rm -rf"'},
            "",
            "hotspots.hall.host: not an IP address or host name",
            id="hotspot-host",
        ),
        pytest.param(
            {"[hotspots.hall]\n": "[hotspots.hall]\ninterval_s = 2\n"},
            "",
            "must be shorter than interval_s",
            id="timeout-longer-than-interval",
        ),
    ],
)
def test_bad_values_name_their_key(
    config_file: ConfigFile,
    capsys: pytest.CaptureFixture[str],
    replace: dict[str, str],
    extra: str,
    expected: str,
) -> None:
    """Each bad value gives exit 2 and one line naming the key that is wrong."""
    config_file.write(replace, extra=extra)
    code, output = check_config(config_file.path, capsys)
    assert code == EXIT_BAD_CONFIG, output
    assert expected in output


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    """An installer fixing a file wants all its problems in one go, not one per run."""
    path = tmp_path / "many.toml"
    path.write_text(
        '[gateway]\nid = "a/b"\ntimezone = "Nowhere/City"\n[mqtt]\nport = "high"\nprot = 1\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    keys = {problem.key for problem in caught.value.problems}
    assert keys == {"gateway.id", "gateway.timezone", "mqtt.port", "mqtt.prot"}


def test_missing_gateway_id(tmp_path: Path) -> None:
    """The gateway id has no sane default; leaving it out is named as a missing key."""
    path = tmp_path / "noid.toml"
    path.write_text('[gateway]\nname = "x"\n')
    with pytest.raises(ConfigError, match=r"gateway\.id: required key is missing"):
        load_settings(path)


def test_environment_overrides_the_file(
    config_file: ConfigFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    """VG_MQTT__PORT=1884 wins over the file's port; other keys keep the file's values."""
    monkeypatch.setenv("VG_MQTT__PORT", "1884")
    monkeypatch.setenv("VG_RELAYS__YARD__LABEL", "Đèn sân (env)")
    settings = load_settings(config_file.path)
    assert settings.mqtt.port == 1884
    assert settings.mqtt.host == "127.0.0.1"
    assert settings.relays["yard"].label == "Đèn sân (env)"
    assert settings.relays["yard"].pin == 17


def test_bad_environment_override_names_the_key(
    config_file: ConfigFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wrong override is as much an error as a wrong file value, and says which key."""
    monkeypatch.setenv("VG_MQTT__PORT", "not-a-port")
    monkeypatch.setenv("VG_MQTT__PROT", "1")
    with pytest.raises(ConfigError) as caught:
        load_settings(config_file.path)
    assert {p.key for p in caught.value.problems} == {"mqtt.port", "mqtt.prot"}


def test_demo_configuration_is_loopback_only() -> None:
    """The bundled demo configuration loads and points only at this machine."""
    settings = load_settings(None, demo=True)
    assert settings.mqtt.host == "127.0.0.1"
    assert all(h.host == "127.0.0.1" for h in settings.hotspots.values())
    assert settings.pa.backend == "null"


def test_demo_refuses_a_lan_broker(config_file: ConfigFile) -> None:
    """--demo with a file that points at a LAN broker is refused, never contacted."""
    config_file.write(replace={'host = "127.0.0.1"\nport': 'host = "192.0.2.10"\nport'})
    with pytest.raises(ConfigError, match=r"mqtt\.host: the demo only connects to loopback"):
        load_settings(config_file.path, demo=True)


def test_example_config_documents_every_key() -> None:
    """Every key the daemon knows appears in config.example.toml (set, or commented out
    with its default), so installers never meet an undocumented key."""
    from pydantic import BaseModel  # noqa: PLC0415

    from gateway.config import HotspotConfig, RelayConfig, Settings  # noqa: PLC0415

    text = (REPO / "config.example.toml").read_text(encoding="utf-8")
    missing = []
    sections: dict[str, type[BaseModel]] = {
        "relays.NAME": RelayConfig,
        "hotspots.NAME": HotspotConfig,
    }
    for name, field in Settings.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            sections[name] = annotation
    for section, model in sections.items():
        for key in model.model_fields:
            if not re.search(rf"^#? ?{key} = ", text, flags=re.MULTILINE):
                missing.append(f"{section}.{key}")
    assert missing == []


def test_check_config_refuses_a_short_signing_key(
    config_file: ConfigFile, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """check-config reads commands.hmac_key_file as the daemon will: a key shorter than
    32 bytes is an error naming the key; a long enough one passes."""
    key_file = tmp_path / "hmac.key"
    key_file.write_bytes(b"short\n")
    config_file.write(extra=f'\n[commands]\nhmac_key_file = "{key_file}"\n')
    code, output = check_config(config_file.path, capsys)
    assert code == 2, output
    assert "commands.hmac_key_file" in output
    assert "at least 32" in output
    key_file.write_bytes(b"a-commune-key-of-forty-bytes-or-so-12345\n")
    code, output = check_config(config_file.path, capsys)
    assert code == 0, output
