"""check-config runs the start-up's checks and speaks plainly: one test per bad input the
commune's IT person met (issue #15), each a clear line naming its key, exit 2 for
errors and 0 for warnings."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from gateway.checks import check_settings, device_problem
from gateway.cli import EXIT_BAD_CONFIG, main
from gateway.config import load_settings
from tests.conftest import ConfigFile, clean_env


def check_config(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``village-gateway check-config PATH`` in-process: (status, all output)."""
    code = main(["check-config", str(path)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def refused(
    config: ConfigFile,
    capsys: pytest.CaptureFixture[str],
    replace: dict[str, str] | None = None,
    extra: str = "",
) -> str:
    config.write(replace, extra=extra)
    code, output = check_config(config.path, capsys)
    assert code == EXIT_BAD_CONFIG, output
    return output


def test_a_missing_mqtt_password_file(
    config_file: ConfigFile, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Before, check-config said ok and the link logged link.config_problem forever."""
    missing = tmp_path / "mqtt.password"
    output = refused(
        config_file,
        capsys,
        {"[mqtt]\n": f'[mqtt]\nusername = "gw1"\npassword_file = "{missing}"\n'},
    )
    assert f"mqtt.password_file: no such file: {missing}" in output


def test_a_missing_ca_file(
    config_file: ConfigFile, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "ca.crt"
    output = refused(config_file, capsys, {"[mqtt]\n": f'[mqtt]\nca_file = "{missing}"\n'})
    assert f"mqtt.ca_file: no such file: {missing}" in output


def test_an_empty_password_file_is_read_as_the_daemon_reads_it(
    config_file: ConfigFile, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    empty = tmp_path / "mqtt.password"
    empty.write_text("\n")
    output = refused(
        config_file, capsys, {"[mqtt]\n": f'[mqtt]\nusername = "gw1"\npassword_file = "{empty}"\n'}
    )
    assert f"mqtt.password_file: is empty: {empty}" in output


@pytest.mark.skipif(os.geteuid() != 0, reason="judging for another user needs root")
def test_a_file_the_service_user_cannot_read(config_file: ConfigFile) -> None:
    """Run as root (sudo check-config), files are judged for the service user: a key
    readable by root only would fail in the daemon, so it fails here."""
    assert pwd.getpwnam("nobody")  # stands in for village-gateway, absent on this machine
    folder = Path(tempfile.mkdtemp(prefix="vg-checks-"))  # pytest's own folder is 0700
    try:
        folder.chmod(0o755)
        key = folder / "hmac.key"
        key.write_text("k" * 40)
        key.chmod(0o600)
        config_file.write(extra=f'\n[commands]\nhmac_key_file = "{key}"\n')
        settings = load_settings(config_file.path)
        errors = [str(p) for p in check_settings(settings, service_user="nobody").errors]
        assert errors == [
            f"commands.hmac_key_file: cannot be read by nobody: {key} (give it to that user "
            "or its group, e.g. chgrp village-gateway FILE && chmod 640 FILE)"
        ]
        key.chmod(0o644)
        assert check_settings(settings, service_user="nobody").errors == []
        folder.chmod(0o700)
        errors = [str(p) for p in check_settings(settings, service_user="nobody").errors]
        assert errors == [
            f"commands.hmac_key_file: cannot be read by nobody: the folder {folder} is closed to it"
        ]
    finally:
        shutil.rmtree(folder)


def test_a_card_number_as_sound_device(
    config_file: ConfigFile, capsys: pytest.CaptureFixture[str]
) -> None:
    """The docs forbid card numbers: they change with the order cards are found."""
    output = refused(config_file, capsys, {'backend = "null"': 'device = "hw:1,0"'})
    assert "pa.device: names sound card number 1 ('hw:1,0')" in output
    assert "hw:CARD=Device,DEV=0" in output


@pytest.mark.parametrize(
    ("device", "ok"),
    [
        ("hw:1,0", False),
        ("plughw:0", False),
        ("hw:CARD=1,DEV=0", False),
        ("plughw:CARD=Device,DEV=0", True),
        ("default", True),
        ("dmix_pa", True),
        ("sysdefault:CARD=Headphones", True),
    ],
)
def test_device_names(device: str, *, ok: bool) -> None:
    assert (device_problem(device) is None) is ok


def test_port_8883_without_tls(config_file: ConfigFile, capsys: pytest.CaptureFixture[str]) -> None:
    output = refused(config_file, capsys, {f"port = {config_file.mqtt_port}": "port = 8883"})
    assert "mqtt.port: 8883 is the MQTT port for TLS: set mqtt.ca_file too" in output
    assert "/etc/ssl/certs/ca-certificates.crt" in output


def test_port_8883_with_the_system_bundle_passes(
    config_file: ConfigFile, capsys: pytest.CaptureFixture[str]
) -> None:
    """A broker with a public certificate: the system CA bundle on 8883 is fine."""
    bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    if not bundle.exists():
        pytest.skip("no system CA bundle here")
    config_file.write({f"port = {config_file.mqtt_port}": f'port = 8883\nca_file = "{bundle}"'})
    code, output = check_config(config_file.path, capsys)
    assert code == 0, output


def test_a_broadcast_of_a_missing_clip_warns_but_passes(
    config_file: ConfigFile, capsys: pytest.CaptureFixture[str]
) -> None:
    """A warning, not an error: clips are uploaded after the file naming them is written."""
    config_file.write(
        extra='\n[[schedules.broadcasts]]\nat = "06:00"\nclip = "tin-sang"\n'
        '\n[[schedules.broadcasts]]\nat = "07:00"\nclip = "chime"\n'
    )
    code, output = check_config(config_file.path, capsys)
    assert code == 0, output
    assert "warning: schedules.broadcasts.0.clip: no clip named 'tin-sang'" in output
    assert "broadcasts.1" not in output  # the bundled chime is always there
    assert "1 warning(s)" in output


@pytest.mark.parametrize(
    ("replace", "extra", "expected"),
    [
        pytest.param(
            {"pin = 17": 'pin = 17\npower_onn = "on"'},
            "",
            "relays.yard.power_onn: unknown key (did you mean power_on?)",
            id="did-you-mean",
        ),
        pytest.param(
            {"[mqtt]\n": '[mqtt]\nkeepalive_s = "often"\n'},
            "",
            "mqtt.keepalive_s: must be a whole number (got 'often')",
            id="not-a-number",
        ),
        pytest.param(
            {},
            '\n[[schedules.relays]]\nrelay = "yard"\non = "25:00"\noff = "23:00"\n',
            "schedules.relays row 1, on: must be a time HH:MM from 00:00 to 23:59",
            id="time",
        ),
        pytest.param(
            {"pin = 17": 'pin = 17\npower_on = "of"'},
            "",
            "relays.yard.power_on: must be one of off, on, restore, schedule (got 'of') "
            "(did you mean off?)",
            id="choice",
        ),
        pytest.param(
            {"[mqtt]\n": "[mqtt]\nkeepalive_s = 2\n"},
            "",
            "mqtt.keepalive_s: must be 5 or more (got 2)",
            id="too-small",
        ),
        pytest.param(
            {},
            "\n[relayz.x]\npin = 5\n",
            "relayz: unknown key (did you mean relays?)",
            id="section",
        ),
    ],
)
def test_messages_are_plain(
    config_file: ConfigFile,
    capsys: pytest.CaptureFixture[str],
    replace: dict[str, str],
    extra: str,
    expected: str,
) -> None:
    """No validator English ("Input should be ..."), no regular expression, a guess for a
    misspelt key or value."""
    output = refused(config_file, capsys, replace, extra)
    assert expected in output
    for jargon in ("Input should", "String should", "pattern", "^", "\\d", "[0-9]"):
        assert jargon not in output


def test_start_up_refuses_what_check_config_refuses(config_file: ConfigFile) -> None:
    """The daemon runs the same checks: with no last good copy, exit 2 and the same line."""
    config_file.write({f"port = {config_file.mqtt_port}": "port = 8883"})
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "run", "--config", str(config_file.path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
        env=clean_env(),
    )
    assert result.returncode == EXIT_BAD_CONFIG, result.stderr
    assert "mqtt.port: 8883 is the MQTT port for TLS" in result.stderr
