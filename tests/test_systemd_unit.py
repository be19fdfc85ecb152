"""The systemd unit: systemd 252 accepts it, its sandbox rates 1.5 or better, the
directives the daemon relies on (notify, watchdog, SIGHUP reload, GPIO and sound) are there,
and it bounds what the daemon may take from a Pi Zero 2 W (files, memory, tasks).

Everything runs systemd's own ``systemd-analyze`` offline on files in a temporary folder;
nothing is installed on this machine and no service is started.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from gateway.cli import EXIT_BAD_CONFIG
from gateway.web.connections import MAX_CONNECTIONS
from tests.conftest import REPO

UNIT_NAME = "village-gateway.service"
UNIT_FILE = REPO / "systemd" / UNIT_NAME
EXEC_START = (
    "/opt/village-gateway/venv/bin/village-gateway run --config /etc/village-gateway/config.toml"
)
MAX_EXPOSURE = 1.5

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None,
    reason="systemd-analyze is not installed (Debian package 'systemd'; `make test` installs it)",
)

Directive = tuple[str, str, str, int]
"""(section, key, value, line number) of one assignment in a unit file."""


def parse_unit(text: str) -> list[Directive]:
    """Every ``Key=Value`` line with its section, in order; repeated keys stay repeated.

    configparser cannot read unit files (keys such as DeviceAllow= repeat), so this is the
    small subset of systemd.syntax(7) that our unit uses: sections, comments, assignments.
    """
    section = ""
    directives: list[Directive] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"line {number} is neither a section, a comment nor Key=Value: {raw!r}"
        assert not value.endswith("\\"), f"line {number}: keep directives on one line"
        directives.append((section, key.strip(), value.strip(), number))
    return directives


def values(directives: list[Directive], section: str, key: str) -> list[str]:
    """All values assigned to ``key`` in ``section``, in file order."""
    return [v for s, k, v, _ in directives if s == section and k == key]


def one(directives: list[Directive], section: str, key: str) -> str:
    """The single value of ``key`` in ``section``; fails if it is missing or repeated."""
    found = values(directives, section, key)
    assert len(found) == 1, f"[{section}] {key}= should be set once, found {found}"
    return found[0]


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    """Run systemd-analyze without colours or pager and capture what it says."""
    assert SYSTEMD_ANALYZE is not None
    env = {**os.environ, "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "", "SYSTEMD_LOG_COLOR": "0"}
    return subprocess.run(
        [SYSTEMD_ANALYZE, *args],
        check=False,
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        env=env,
    )


def add_host_systemd(root: Path) -> None:
    """Give a staged root what any Debian system has around our unit.

    ``systemd-analyze verify --root`` resolves everything inside the root: the targets the
    unit orders itself after (sysinit.target, network.target, ...) come from systemd's unit
    library, and ExecReload's /bin/kill from procps. We copy this machine's copies, so the
    check runs against the same systemd 252 that Raspberry Pi OS bookworm ships.
    """
    library = root / "usr" / "lib" / "systemd" / "system"
    if not library.exists():
        shutil.copytree("/usr/lib/systemd/system", library, symlinks=True)
    kill = root / "usr" / "bin" / "kill"
    kill.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2("/usr/bin/kill", kill)
    if not (root / "bin").exists():
        (root / "bin").symlink_to("usr/bin")  # Debian's merged /usr


def verify_in_root(root: Path) -> subprocess.CompletedProcess[str]:
    """``systemd-analyze verify`` of the unit installed under ``root``."""
    return analyze("verify", "--man=no", f"--root={root}", UNIT_NAME)


def stage_unit(root: Path, unit_text: str) -> None:
    """Place a unit, a stand-in ExecStart program and the host's systemd under ``root``.

    The stand-in is an executable shell script at the ExecStart path: verify only checks
    that the program exists and may be executed. The slow test in test_install.py runs
    the same check against the console script that pip really generates.
    """
    unit_dir = root / "etc" / "systemd" / "system"
    unit_dir.mkdir(parents=True, exist_ok=True)
    (unit_dir / UNIT_NAME).write_text(unit_text, encoding="utf-8")
    program = root / EXEC_START.split(maxsplit=1)[0].lstrip("/")
    program.parent.mkdir(parents=True, exist_ok=True)
    program.write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
    program.chmod(0o755)
    add_host_systemd(root)


@needs_systemd_analyze
def test_verify_accepts_the_unit(tmp_path: Path) -> None:
    """``systemd-analyze verify`` (systemd 252, as on Raspberry Pi OS bookworm) loads the
    unit without a single warning: every key is known to this systemd version, every value
    parses, the targets it orders against exist and its programs are executable. A user
    checks this before copying the unit to a Pi; a warning here means systemd would
    silently ignore a line on the Pi."""
    root = tmp_path / "root"
    stage_unit(root, UNIT_FILE.read_text(encoding="utf-8"))
    result = verify_in_root(root)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "", result.stdout
    assert result.stderr.strip() == "", result.stderr


@needs_systemd_analyze
def test_verify_would_catch_a_newer_systemd_directive(tmp_path: Path) -> None:
    """The verify check above can fail: the same procedure on a copy of the unit that uses
    ``Type=notify-reload`` (systemd 253 and later only) and a misspelt key reports both.
    This proves the empty output of the real check means something, since systemd-analyze
    exits 0 even when it ignores lines."""
    broken = UNIT_FILE.read_text(encoding="utf-8").replace(
        "Type=notify\n", "Type=notify-reload\nWatchdogSecs=5s\n"
    )
    assert "notify-reload" in broken
    root = tmp_path / "root"
    stage_unit(root, broken)
    result = verify_in_root(root)
    output = result.stdout + result.stderr
    assert "notify-reload" in output, output
    assert "WatchdogSecs" in output, output


@needs_systemd_analyze
def test_security_exposure_is_at_most_one_and_a_half() -> None:
    """``systemd-analyze security --offline=true`` on the unit file reports an overall
    exposure of 1.5 or less (0 is fully locked down, 10 is unprotected). A user runs the
    same command to see what the sandbox allows; docs/operations.md gives the figure and
    explains what is left open on purpose (network, GPIO, sound)."""
    result = analyze("security", "--offline=true", "--no-pager", str(UNIT_FILE))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    match = re.search(
        rf"Overall exposure level for {re.escape(UNIT_NAME)}: (\d+(?:\.\d+)?) (\w+)", output
    )
    assert match is not None, output
    exposure = float(match.group(1))
    assert exposure <= MAX_EXPOSURE, f"exposure {exposure} > {MAX_EXPOSURE}:\n{output}"
    assert match.group(2) == "OK", output


def test_unit_talks_to_systemd_252_the_way_the_daemon_expects() -> None:
    """The unit is ``Type=notify`` with the main process allowed to notify, a watchdog, a
    SIGHUP reload through ExecReload (systemd 252 has no ``Type=notify-reload``), the
    documented ExecStart, restarts on failure with a start limit in [Unit], no restart
    after the daemon's "bad configuration" exit status, and a short stop timeout."""
    text = UNIT_FILE.read_text(encoding="utf-8")
    unit = parse_unit(text)
    assert [v for _, _, v, _ in unit if "notify-reload" in v] == []
    assert one(unit, "Service", "Type") == "notify"
    assert one(unit, "Service", "NotifyAccess") == "main"
    assert one(unit, "Service", "ExecStart") == EXEC_START
    reload_cmd = one(unit, "Service", "ExecReload")
    assert reload_cmd == "/bin/kill -HUP $MAINPID"
    watchdog = one(unit, "Service", "WatchdogSec")
    assert re.fullmatch(r"[1-9]\d*s?", watchdog), watchdog
    assert one(unit, "Service", "Restart") == "on-failure"
    assert one(unit, "Service", "RestartPreventExitStatus") == str(EXIT_BAD_CONFIG)
    assert int(one(unit, "Unit", "StartLimitBurst")) > 1
    assert int(one(unit, "Unit", "StartLimitIntervalSec")) > 0
    assert values(unit, "Service", "StartLimitBurst") == []
    assert one(unit, "Service", "TimeoutStopSec") == "10s"
    assert one(unit, "Install", "WantedBy") == "multi-user.target"


def test_unit_reaches_gpio_and_sound_but_little_else() -> None:
    """The sandbox keeps the two device classes the daemon needs: GPIO chips and ALSA
    sound, with a closed device policy instead of ``PrivateDevices=yes`` (which would hide
    both). It runs as its own user with the gpio and audio groups, has no capabilities,
    keeps the file system read-only except its state folder, and does not restrict IP
    addresses (it must reach the LAN hotspots and the commune broker)."""
    unit = parse_unit(UNIT_FILE.read_text(encoding="utf-8"))
    assert one(unit, "Service", "DevicePolicy") == "closed"
    assert sorted(values(unit, "Service", "DeviceAllow")) == [
        "char-alsa rw",
        "char-gpiochip rw",
    ]
    assert values(unit, "Service", "PrivateDevices") in ([], ["no"])
    assert one(unit, "Service", "User") == "village-gateway"
    assert set(one(unit, "Service", "SupplementaryGroups").split()) == {"gpio", "audio"}
    assert one(unit, "Service", "StateDirectory") == "village-gateway"
    assert one(unit, "Service", "ConfigurationDirectory") == "village-gateway"
    # lgpio makes its notification FIFOs in the working directory: it must be writable.
    assert one(unit, "Service", "WorkingDirectory") == "/var/lib/village-gateway"
    assert one(unit, "Service", "ProtectSystem") == "strict"
    assert one(unit, "Service", "CapabilityBoundingSet") == ""
    assert one(unit, "Service", "AmbientCapabilities") == ""
    assert one(unit, "Service", "NoNewPrivileges") == "yes"
    assert one(unit, "Service", "SystemCallArchitectures") == "native"
    assert values(unit, "Service", "SystemCallFilter")[0] == "@system-service"
    assert set(one(unit, "Service", "RestrictAddressFamilies").split()) == {
        "AF_UNIX",
        "AF_INET",
        "AF_INET6",
        "AF_NETLINK",
    }
    assert values(unit, "Service", "IPAddressDeny") == []
    # gpiozero reads the board revision from /proc/device-tree and /proc/cpuinfo.
    assert values(unit, "Service", "ProcSubset") == []
    assert one(unit, "Service", "UMask") == "0027"


def test_every_directive_group_says_why() -> None:
    """Each group of directives in the unit is headed by a comment: walking up from any
    ``Key=`` line, the first line that is not another directive is a comment. A reader of
    the unit on a Pi learns why a line is there without opening the repository."""
    lines = UNIT_FILE.read_text(encoding="utf-8").splitlines()
    unexplained: list[str] = []
    for _section, key, _value, number in parse_unit("\n".join(lines)):
        index = number - 1
        while index > 0 and "=" in lines[index - 1] and not lines[index - 1].startswith("#"):
            index -= 1
        above = lines[index - 1].strip() if index > 0 else ""
        if not above.startswith("#"):
            unexplained.append(f"line {number}: {key}")
    assert unexplained == [], "directives without a comment above their group: " + ", ".join(
        unexplained
    )


def size(value: str) -> int:
    """A systemd size (``200M``) in bytes; systemd counts K, M and G in powers of 1024."""
    match = re.fullmatch(r"(\d+)([KMG]?)", value)
    assert match is not None, value
    unit = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}[match.group(2)]
    return int(match.group(1)) * unit


def test_unit_bounds_files_memory_and_tasks() -> None:
    """What one attack or one leak may take from the Pi (issue 13): enough descriptors
    for the web server's connection cap twice over and the rest of the daemon, so idle
    connections cannot starve the relay state file; memory throttled, then capped, below
    what a Pi Zero 2 W (512 MB) can spare, and no swapping on the SD card; a task cap; an
    OOM kill stops the whole service so that Restart= brings it back; no core dumps."""
    unit = parse_unit(UNIT_FILE.read_text(encoding="utf-8"))
    nofile = int(one(unit, "Service", "LimitNOFILE"))
    assert nofile >= 2 * MAX_CONNECTIONS + 1024, nofile
    high, hard = size(one(unit, "Service", "MemoryHigh")), size(one(unit, "Service", "MemoryMax"))
    assert 150 * 1024**2 <= high < hard <= 300 * 1024**2, (high, hard)
    assert one(unit, "Service", "MemorySwapMax") == "0"
    assert one(unit, "Service", "OOMPolicy") == "stop"
    assert one(unit, "Service", "Restart") == "on-failure"
    assert 64 <= int(one(unit, "Service", "TasksMax")) <= 512
    assert one(unit, "Service", "LimitCORE") == "0"
