"""systemd/install.sh: what it puts where, that it never overwrites an operator's config,
and that a staged install (``DESTDIR=``) leaves this machine alone.

Every run here is staged into a temporary folder. Commands that would change the machine
(systemctl, useradd, sysctl, apt-get, ...) are shadowed on PATH by tripwires that record
any call, so a test also proves they were never reached.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.test_systemd_unit import UNIT_NAME, add_host_systemd, verify_in_root

INSTALL_SH = REPO / "systemd" / "install.sh"
NAME = "village-gateway"

# Where the installer promises to put things (paths on the target system) and their modes.
PROMISED: dict[str, int] = {
    f"/etc/systemd/system/{NAME}.service": 0o644,
    f"/etc/sysctl.d/60-{NAME}-ping.conf": 0o644,
    f"/etc/sysusers.d/{NAME}.conf": 0o644,
    f"/etc/{NAME}": 0o750,
    f"/etc/{NAME}/config.toml": 0o640,
    f"/etc/{NAME}/config.example.toml": 0o644,
    f"/opt/{NAME}/docs/operations.md": 0o644,
}
SOURCES: dict[str, Path] = {
    f"/etc/systemd/system/{NAME}.service": REPO / "systemd" / f"{NAME}.service",
    f"/etc/sysctl.d/60-{NAME}-ping.conf": REPO / "systemd" / "sysctl.d" / f"60-{NAME}-ping.conf",
    f"/etc/sysusers.d/{NAME}.conf": REPO / "systemd" / "sysusers.d" / f"{NAME}.conf",
    f"/opt/{NAME}/docs/operations.md": REPO / "docs" / "operations.md",
}
VENV_PROGRAM = f"/opt/{NAME}/venv/bin/{NAME}"
BIN_LINK = f"/usr/local/bin/{NAME}"

# Commands a staged install must never run; each is replaced by a tripwire on PATH.
FORBIDDEN = (
    "systemctl",
    "systemd-sysusers",
    "useradd",
    "groupadd",
    "sysctl",
    "apt-get",
    "chgrp",
    "chown",
)

# Host paths the installer writes in a real install, and the folders they live in.
HOST_PATHS = (*PROMISED, VENV_PROGRAM, BIN_LINK, f"/var/lib/{NAME}")
HOST_DIRS = (
    "/etc",
    "/etc/systemd/system",
    "/etc/sysctl.d",
    "/etc/sysusers.d",
    "/opt",
    "/usr/local/bin",
    "/var/lib",
)


@dataclass
class Installer:
    """Runs install.sh staged into ``destdir``, with tripwires in place of system tools."""

    destdir: Path
    example: Path
    tripwire_log: Path
    tripwire_dir: Path

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """One run of install.sh; ``env`` adds or overrides DESTDIR and VG_* settings."""
        environ = {
            **os.environ,
            "PATH": f"{self.tripwire_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "DESTDIR": str(self.destdir),
            "VG_SKIP_VENV": "1",
            "VG_CONFIG_EXAMPLE": str(self.example),
            **env,
        }
        return subprocess.run(
            [str(INSTALL_SH), *args],
            check=False,
            capture_output=True,
            text=True,
            env=environ,
            cwd=self.destdir.parent,
            timeout=300,
        )

    def staged(self, path: str) -> Path:
        """Where a target-system path lands in the staging folder."""
        return self.destdir / path.lstrip("/")

    def tripped(self) -> list[str]:
        """Every forbidden command the installer tried to run."""
        if not self.tripwire_log.exists():
            return []
        return self.tripwire_log.read_text(encoding="utf-8").splitlines()


@pytest.fixture
def installer(tmp_path: Path) -> Installer:
    """A staging folder, the example config and a PATH of tripwires.

    The repository's config.example.toml is used when it exists; otherwise a small
    stand-in is written in the temporary folder (never in the repository).
    """
    example = REPO / "config.example.toml"
    if not example.exists():
        example = tmp_path / "config.example.toml"
        example.write_text('[gateway]\nid = "stand-in"\n', encoding="utf-8")
    tripwire_dir = tmp_path / "tripwires"
    tripwire_dir.mkdir()
    log = tmp_path / "tripwires.log"
    for name in FORBIDDEN:
        tool = tripwire_dir / name
        tool.write_text(f'#!/bin/sh\necho "{name} $*" >> "{log}"\nexit 97\n', encoding="utf-8")
        tool.chmod(0o755)
    return Installer(
        destdir=tmp_path / "stage",
        example=example,
        tripwire_log=log,
        tripwire_dir=tripwire_dir,
    )


def host_snapshot() -> dict[str, object]:
    """What this machine looks like where a real install would write."""
    snapshot: dict[str, object] = {}
    for path in HOST_PATHS:
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            snapshot[path] = None
        else:
            snapshot[path] = (info.st_mode, info.st_size, info.st_mtime_ns)
    for folder in HOST_DIRS:
        try:
            snapshot[folder + "/*"] = sorted(os.listdir(folder))
        except FileNotFoundError:
            snapshot[folder + "/*"] = None
    for account_file in ("/etc/passwd", "/etc/group"):
        snapshot[account_file] = Path(account_file).read_bytes()
    snapshot["ping_group_range"] = Path("/proc/sys/net/ipv4/ping_group_range").read_text()
    return snapshot


@pytest.fixture
def untouched_host() -> Iterator[None]:
    """Fails the test if the host changed where a real install would write."""
    before = host_snapshot()
    yield
    after = host_snapshot()
    changed = sorted(key for key in before if before[key] != after[key])
    assert changed == [], f"the host changed outside DESTDIR: {changed}"


def mode(path: Path) -> int:
    """Permission bits of a file or folder (not following a final symlink)."""
    return stat.S_IMODE(path.lstat().st_mode)


def test_install_script_is_executable_bash_in_strict_mode() -> None:
    """The docs say ``sudo systemd/install.sh``, so the file is executable, is a bash
    script, and stops at the first failing command or unset variable."""
    assert os.access(INSTALL_SH, os.X_OK), "chmod +x systemd/install.sh (and commit the mode)"
    lines = INSTALL_SH.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    assert "set -euo pipefail" in lines


@pytest.mark.usefixtures("untouched_host")
def test_staged_install_puts_every_file_in_place(installer: Installer) -> None:
    """A staged install lays out the unit, sysctl and sysusers files, the config folder
    and config, the example and the docs at the promised paths with the promised modes,
    copies of the repository's files, plus a command link to the venv; it runs no
    systemctl, useradd, sysctl or apt-get and writes nothing on the machine itself."""
    result = installer.run()
    assert result.returncode == 0, result.stdout + result.stderr
    for path, wanted in PROMISED.items():
        staged = installer.staged(path)
        assert staged.exists(), f"{path} was not installed"
        assert mode(staged) == wanted, f"{path}: mode {mode(staged):o}, want {wanted:o}"
    for path, source in SOURCES.items():
        assert installer.staged(path).read_bytes() == source.read_bytes(), path
    config = installer.staged(f"/etc/{NAME}/config.toml")
    assert config.read_bytes() == installer.example.read_bytes()
    link = installer.staged(BIN_LINK)
    assert link.is_symlink()
    assert os.readlink(link) == VENV_PROGRAM  # the final path, not the staging path
    assert not installer.staged(VENV_PROGRAM).exists()  # VG_SKIP_VENV=1
    assert installer.tripped() == []
    assert "no user, sysctl or systemctl changes" in result.stdout


@pytest.mark.usefixtures("untouched_host")
def test_second_install_keeps_the_operators_config(installer: Installer) -> None:
    """Running the installer again (an upgrade) never replaces a config.toml that exists:
    an operator's edits survive byte for byte and keep their mode, while the example next
    to it is refreshed so the operator can compare the two."""
    first = installer.run()
    assert first.returncode == 0, first.stdout + first.stderr
    config = installer.staged(f"/etc/{NAME}/config.toml")
    edited = '[gateway]\nid = "ht.camxuyen.cambinh.dongtrung"\n# edited by the operator\n'
    config.write_text(edited, encoding="utf-8")
    config.chmod(0o600)
    example = installer.staged(f"/etc/{NAME}/config.example.toml")
    example.write_text("stale example\n", encoding="utf-8")

    second = installer.run()
    assert second.returncode == 0, second.stdout + second.stderr
    assert config.read_text(encoding="utf-8") == edited
    assert mode(config) == 0o600
    assert "keeping the existing" in second.stdout
    assert example.read_bytes() == installer.example.read_bytes()
    assert installer.tripped() == []


@pytest.mark.usefixtures("untouched_host")
def test_installer_refuses_what_it_cannot_do_safely(installer: Installer) -> None:
    """A relative DESTDIR, an unknown argument and a missing example config are refused
    with a message and a non-zero status, before anything is written."""
    relative = installer.run(DESTDIR="stage")
    assert relative.returncode != 0
    assert "absolute" in relative.stderr
    missing = installer.run(VG_CONFIG_EXAMPLE=str(installer.destdir.parent / "nope.toml"))
    assert missing.returncode != 0
    assert "example config not found" in missing.stderr
    unknown = installer.run("--frobnicate")
    assert unknown.returncode != 0
    assert "unknown argument" in unknown.stderr
    assert not installer.destdir.exists()
    help_text = installer.run("--help")
    assert help_text.returncode == 0
    assert "DESTDIR" in help_text.stdout
    assert installer.tripped() == []


def test_sysctl_file_opens_ping_to_the_service_group(tmp_path: Path) -> None:
    """The sysctl file sets ``net.ipv4.ping_group_range`` to a range that holds the gid
    systemd-sysusers gives the village-gateway group from our sysusers.d file (it is
    computed here in a scratch root, as on a fresh Pi), so the service may ping without
    root whatever gid its group gets."""
    conf = REPO / "systemd" / "sysctl.d" / f"60-{NAME}-ping.conf"
    settings = [
        line.split("=", 1)
        for line in conf.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith(("#", ";"))
    ]
    assert [key.strip() for key, _ in settings] == ["net.ipv4.ping_group_range"]
    low, high = (int(part) for part in settings[0][1].split())
    assert (low, high) == (0, 2147483647)

    sysusers = shutil.which("systemd-sysusers")
    if sysusers is None:
        pytest.skip("systemd-sysusers is not installed (Debian package 'systemd')")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    result = subprocess.run(
        [sysusers, f"--root={root}", str(REPO / "systemd" / "sysusers.d" / f"{NAME}.conf")],
        check=False,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    groups = {
        fields[0]: int(fields[2])
        for fields in (
            line.split(":") for line in (root / "etc" / "group").read_text().splitlines()
        )
    }
    users = [line.split(":") for line in (root / "etc" / "passwd").read_text().splitlines()]
    service = next(fields for fields in users if fields[0] == NAME)
    assert service[5] == f"/var/lib/{NAME}"
    assert service[6] == "/usr/sbin/nologin"
    assert int(service[3]) == groups[NAME]
    assert low <= groups[NAME] <= high
    assert {"gpio", "audio"} <= groups.keys()


PING_PROBE = """
import socket
for family, proto in ((socket.AF_INET, socket.IPPROTO_ICMP),
                      (socket.AF_INET6, socket.IPPROTO_ICMPV6)):
    try:
        socket.socket(family, socket.SOCK_DGRAM, proto).close()
        print(family.name, "ok")
    except OSError as exc:
        print(family.name, exc.errno)
"""


def test_sysctl_file_lets_an_unprivileged_group_open_ping_sockets(tmp_path: Path) -> None:
    """Applied for real in a throwaway network namespace (the setting is per namespace,
    so this machine's own value is untouched), our sysctl file lets a process with no
    privileges and an arbitrary system group open ICMP echo sockets, IPv4 and IPv6, which
    the kernel default refuses. This is what the hotspot monitor needs to ping."""
    unshare, setpriv = shutil.which("unshare"), shutil.which("setpriv")
    sysctl, python = shutil.which("sysctl"), "/usr/bin/python3"
    if os.geteuid() != 0 or None in (unshare, setpriv, sysctl) or not Path(python).exists():
        pytest.skip("needs root, unshare, setpriv, sysctl and /usr/bin/python3")
    assert unshare is not None
    assert setpriv is not None
    assert sysctl is not None
    conf = REPO / "systemd" / "sysctl.d" / f"60-{NAME}-ping.conf"
    host_before = Path("/proc/sys/net/ipv4/ping_group_range").read_text()
    nobody = pwd.getpwnam("nobody").pw_uid
    gid = 987  # any system gid: the one our group gets differs from Pi to Pi
    probe = [setpriv, f"--reuid={nobody}", f"--regid={gid}", "--clear-groups"]
    probe += [python, "-c", PING_PROBE]
    script = 'echo "closed $(cat /proc/sys/net/ipv4/ping_group_range)"; "$@"; '
    script += f'"{sysctl}" -q -p "{conf}" && echo opened && "$@"'
    result = subprocess.run(
        [unshare, "--net", "--", "sh", "-c", script, "sh", *probe],
        check=False,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    closed, opened = result.stdout.split("opened\n")
    assert "AF_INET 13" in closed, result.stdout  # EACCES with the kernel default
    assert "AF_INET ok" in opened, result.stdout
    assert "AF_INET6 13" not in opened, result.stdout  # ok, or no IPv6 in this kernel
    assert Path("/proc/sys/net/ipv4/ping_group_range").read_text() == host_before


SANDBOX_SCRIPT = """
set -euo pipefail
# Private copies of the folders a real install writes: changes land in $UPPER/<name>.
for target in /etc /opt /usr/local; do
    name=${target//\\//_}
    mkdir -p "$UPPER/$name" "$WORK/$name"
    mount -t overlay overlay \\
        -o "lowerdir=$target,upperdir=$UPPER/$name,workdir=$WORK/$name" "$target"
done
echo sandboxed
mkdir -p /opt/village-gateway/venv/bin
ln -s "$CLI" /opt/village-gateway/venv/bin/village-gateway
set +e
"$INSTALL_SH" > "$OUT/first.out" 2>&1
echo $? > "$OUT/first.rc"
echo "--- second run" >> "$TRIPWIRE_LOG"
printf '\\n[no_such_section]\\nkey = 1\\n' >> /etc/village-gateway/config.toml
"$INSTALL_SH" > "$OUT/second.out" 2>&1
echo $? > "$OUT/second.rc"
stat -c '%a %G' /etc/village-gateway /etc/village-gateway/config.toml > "$OUT/stat"
getent passwd village-gateway > "$OUT/passwd"
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a private overlay needs root")
def test_real_install_in_a_private_mount_namespace(tmp_path: Path) -> None:
    """The real (no DESTDIR) install, run in a private mount namespace where /etc, /opt and
    /usr/local are overlays that vanish afterwards, and a private network namespace:
    systemd-sysusers really creates the user, the config folder and file get the service
    group, the ping sysctl is applied before systemd is reloaded and the unit enabled and
    started. A second run with a broken config keeps the operator's file, does not restart
    the service and exits 2. systemctl, sysctl and apt-get are recorders here, and the
    venv's command is this checkout's real CLI."""
    unshare = shutil.which("unshare")
    if unshare is None or shutil.which("systemd-sysusers") is None:
        pytest.skip("needs unshare (util-linux) and systemd-sysusers (systemd)")
    shims, log, out = tmp_path / "shims", tmp_path / "calls.log", tmp_path / "out"
    shims.mkdir()
    out.mkdir()
    recorder = '#!/bin/sh\necho "$(basename "$0") $*" >> "{log}"\n{tail}'
    for name, tail in (
        ("systemctl", '[ "$1" = is-active ] && exit 3\nexit 0\n'),
        ("sysctl", "exit 0\n"),
        ("apt-get", "exit 0\n"),
    ):
        tool = shims / name
        tool.write_text(recorder.format(log=log, tail=tail), encoding="utf-8")
        tool.chmod(0o755)
    cli = Path(sys.executable).parent / NAME
    assert cli.exists(), f"{cli}: the test venv has no console script"
    env = {
        **os.environ,
        "PATH": f"{shims}{os.pathsep}{os.environ.get('PATH', '')}",
        "UPPER": str(tmp_path / "upper"),
        "WORK": str(tmp_path / "work"),
        "OUT": str(out),
        "CLI": str(cli),
        "INSTALL_SH": str(INSTALL_SH),
        "TRIPWIRE_LOG": str(log),
        "VG_SKIP_VENV": "1",
    }
    env.pop("DESTDIR", None)
    before = host_snapshot()
    result = subprocess.run(
        [unshare, "--mount", "--net", "--propagation", "private", "bash", "-c", SANDBOX_SCRIPT],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert host_snapshot() == before, "the sandboxed install leaked onto the host"
    if "sandboxed" not in result.stdout:
        pytest.skip(f"no private overlay mounts here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stdout + result.stderr
    first = (out / "first.out").read_text()
    assert (out / "first.rc").read_text().strip() == "0", first
    calls = log.read_text(encoding="utf-8").split("--- second run\n")
    assert calls[0].splitlines() == [
        f"sysctl -q -p /etc/sysctl.d/60-{NAME}-ping.conf",
        "systemctl daemon-reload",
        f"systemctl enable {NAME}.service",
        f"systemctl is-active --quiet {NAME}.service",
        f"systemctl start {NAME}.service",
    ], first
    passwd = (out / "passwd").read_text().split(":")
    assert passwd[0] == NAME
    assert passwd[6].strip() == "/usr/sbin/nologin"
    assert (out / "stat").read_text().splitlines() == [f"750 {NAME}", f"640 {NAME}"]

    second = (out / "second.out").read_text()
    assert (out / "second.rc").read_text().strip() == "2", second
    assert "no_such_section" in second
    assert "was not (re)started" in second
    assert not any(" start " in c or " restart " in c for c in calls[1].splitlines()), calls[1]
    config = tmp_path / "upper" / "_etc" / NAME / "config.toml"
    assert config.read_text(encoding="utf-8").endswith("[no_such_section]\nkey = 1\n")


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.usefixtures("untouched_host")
def test_full_staged_install_builds_a_venv_that_systemd_accepts(installer: Installer) -> None:
    """The whole install as on a Pi, minus the Pi-only extras and the machine changes:
    the venv is built under DESTDIR and pip installs the project with its dependencies
    (from pip's cache when it has them); the generated ``village-gateway`` command runs,
    and ``systemd-analyze verify`` accepts the staged unit with that real program at its
    ExecStart path."""
    result = installer.run(VG_SKIP_VENV="0", VG_EXTRAS="")
    assert result.returncode == 0, result.stdout + result.stderr
    program = installer.staged(VENV_PROGRAM)
    assert os.access(program, os.X_OK)
    version = subprocess.run([str(program), "version"], check=False, capture_output=True, text=True)
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip()
    check = subprocess.run(
        [str(program), "check-config", str(installer.staged(f"/etc/{NAME}/config.toml"))],
        check=False,
        capture_output=True,
        text=True,
    )
    if installer.example == REPO / "config.example.toml":
        assert check.returncode == 0, check.stdout + check.stderr
    assert installer.tripped() == []

    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed; the install itself was checked")
    add_host_systemd(installer.destdir)
    verify = verify_in_root(installer.destdir)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert (verify.stdout + verify.stderr).strip() == "", verify.stdout + verify.stderr
    assert (installer.destdir / "etc" / "systemd" / "system" / UNIT_NAME).exists()
