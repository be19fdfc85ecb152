"""systemd/install.sh: what it puts where, that it never overwrites an operator's config,
and that a staged install (``DESTDIR=``) leaves this machine alone.

Every run here is staged into a temporary folder. Commands that would change the machine
(systemctl, useradd, sysctl, apt-get, ...) are shadowed on PATH by tripwires that record
any call, so a test also proves they were never reached.
"""

from __future__ import annotations

import os
import pwd
import re
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
    f"/opt/{NAME}/docs/audio.md": 0o644,
    f"/opt/{NAME}/audio/asoundrc.usb-card": 0o644,
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


PREFIX = f"/opt/{NAME}"
# Markdown links: [text](target) and ![alt](target); the target up to a space or ")".
LINK = re.compile(r"\]\(([^)\s]+)\)")


def relative_links(doc: Path) -> list[str]:
    """The targets of a Markdown file's links that point at files (no URL, no bare anchor)."""
    targets = (m.group(1) for m in LINK.finditer(doc.read_text(encoding="utf-8")))
    return [
        target.split("#", 1)[0]
        for target in targets
        if ":" not in target and not target.startswith(("#", "/"))
    ]


@pytest.mark.usefixtures("untouched_host")
def test_installed_docs_bring_everything_they_link_to(installer: Installer) -> None:
    """On the Pi the guide is read offline: every relative link in every installed
    document resolves to a file inside the install, the guide's own neighbours
    (audio.md, hotspots.md) and the ALSA examples included, each a copy of the
    repository's file at the same place relative to the guide."""
    result = installer.run()
    assert result.returncode == 0, result.stdout + result.stderr
    prefix = installer.staged(PREFIX)
    docs = sorted(prefix.rglob("*.md"))
    assert prefix / "docs" / "operations.md" in docs
    broken = []
    for doc in docs:
        for target in relative_links(doc):
            resolved = (doc.parent / target).resolve()
            inside = resolved.is_relative_to(prefix.resolve())
            if not inside or not (resolved.is_file() or resolved.is_dir()):
                broken.append(f"{doc.relative_to(prefix)} -> {target}")
    assert broken == [], broken
    for wanted in (
        "docs/audio.md",
        "docs/hotspots.md",
        "audio/asoundrc.usb-card",
        "audio/asoundrc.headphone-jack",
    ):
        installed = prefix / wanted
        assert installed.is_file(), f"{wanted} is not installed"
        assert installed.read_bytes() == (REPO / wanted).read_bytes(), wanted
        assert mode(installed) == 0o644, wanted
    assert installer.tripped() == []


def shim(folder: Path, name: str, body: str) -> Path:
    """An executable shell script ``name`` in ``folder``."""
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text(f"#!/bin/sh\n{body}\n", encoding="utf-8")
    path.chmod(0o755)
    return path


@pytest.mark.usefixtures("untouched_host")
@pytest.mark.parametrize(
    ("problem", "message"),
    [
        ("armv6l", "unsupported architecture armv6l"),
        ("python-3.9", "Python 3.9; 3.11 or newer is needed"),
        ("no-python", "does not run"),
    ],
)
def test_failed_preflight_changes_nothing(
    installer: Installer, tmp_path: Path, problem: str, message: str
) -> None:
    """A machine the gateway cannot run on (a 32-bit ARMv6 Pi Zero, an older Python, no
    Python) is refused in the pre-flight with a message that says what is wrong, before
    anything is written: the staging folder is not even created."""
    shims = tmp_path / "preflight"
    env: dict[str, str] = {}
    if problem == "armv6l":
        shim(shims, "uname", 'if [ "$1" = -m ]; then echo armv6l; else exec /bin/uname "$@"; fi')
        env["PATH"] = f"{shims}{os.pathsep}{installer.tripwire_dir}{os.pathsep}{os.environ['PATH']}"
    elif problem == "python-3.9":
        env["VG_PYTHON"] = str(shim(shims, "python3.9", "echo 3.9"))
    else:
        env["VG_PYTHON"] = str(tmp_path / "no-such-python")
    result = installer.run(**env)
    assert result.returncode != 0, result.stdout
    assert message in result.stderr
    assert "pre-flight ok" not in result.stdout
    assert not installer.destdir.exists()
    assert installer.tripped() == []


@pytest.mark.usefixtures("untouched_host")
def test_real_install_as_an_ordinary_user_is_refused(installer: Installer) -> None:
    """Without DESTDIR the installer needs root; anyone else gets a clear refusal before
    any change (run here as ``nobody`` when the tests run as root)."""
    command = [str(INSTALL_SH)]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("needs setpriv (util-linux) to drop root")
        nobody = pwd.getpwnam("nobody")
        command = [setpriv, f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}"]
        command += ["--clear-groups", str(INSTALL_SH)]
    env = {k: v for k, v in os.environ.items() if k != "DESTDIR"}
    env["PATH"] = f"{installer.tripwire_dir}{os.pathsep}{env.get('PATH', '')}"
    result = subprocess.run(
        command, check=False, capture_output=True, text=True, env=env, cwd="/", timeout=60
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "run as root" in result.stderr
    assert installer.tripped() == []


@pytest.mark.usefixtures("untouched_host")
def test_install_ends_with_the_web_address_and_the_setup_code(installer: Installer) -> None:
    """The installer's last lines tell the operator where the web UI is (the port from
    the installed config, so an operator's own port shows after an upgrade) and where the
    one-time setup code for the first password appears: the log event the daemon writes
    (gateway/web/auth.py, ``web.setup_code``)."""
    first = installer.run()
    assert first.returncode == 0, first.stdout + first.stderr
    assert ":8080/" in first.stdout.splitlines()[-3]
    assert f"journalctl -u {NAME} | grep web.setup_code" in first.stdout.splitlines()[-1]
    auth = (REPO / "gateway" / "web" / "auth.py").read_text(encoding="utf-8")
    assert '"web.setup_code"' in auth
    config = installer.staged(f"/etc/{NAME}/config.toml")
    text = config.read_text(encoding="utf-8")
    assert text.count("\nport = 8080\n") == 1, "the example's [web] port moved"
    config.write_text(text.replace("\nport = 8080\n", "\nport = 8099\n"), encoding="utf-8")
    second = installer.run()
    assert second.returncode == 0, second.stdout + second.stderr
    assert ":8099/" in second.stdout.splitlines()[-3]


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
# A private /run: systemd counts as running (sd_booted) only if $SYSTEMD_RUNNING says so.
mount -t tmpfs tmpfs /run
if [ "$SYSTEMD_RUNNING" = 1 ]; then mkdir -p /run/systemd/system; fi
echo sandboxed
mkdir -p /opt/village-gateway/venv/bin
ln -s "$CLI" /opt/village-gateway/venv/bin/village-gateway
set +e
for step in $STEPS; do
    case $step in
        edit) printf '\\n# edited by the operator\\n' >> /etc/village-gateway/config.toml ;;
        break) printf '\\n[no_such_section]\\nkey = 1\\n' >> /etc/village-gateway/config.toml ;;
        *)
            echo "--- $step" >> "$TRIPWIRE_LOG"
            "$INSTALL_SH" $INSTALL_ARGS > "$OUT/$step.out" 2>&1
            echo $? > "$OUT/$step.rc"
            ;;
    esac
done
stat -c '%a %G' /etc/village-gateway /etc/village-gateway/config.toml > "$OUT/stat" 2>/dev/null
getent passwd village-gateway > "$OUT/passwd"
exit 0
"""


@dataclass
class Sandboxed:
    """What runs of the real (no DESTDIR) install in a private mount namespace left."""

    out: Path
    upper: Path
    calls: dict[str, list[str]]

    def output(self, step: str) -> str:
        """What the installer printed in one run."""
        return (self.out / f"{step}.out").read_text(encoding="utf-8")

    def status(self, step: str) -> int:
        """The installer's exit status in one run."""
        return int((self.out / f"{step}.rc").read_text(encoding="utf-8"))

    def written(self) -> list[str]:
        """Every file the runs wrote under /etc, /opt and /usr/local (not counting the
        venv's command, which the sandbox itself links to this checkout's CLI)."""
        made_by_sandbox = f"_opt/{NAME}/venv/bin/{NAME}"
        return sorted(
            name
            for name in (str(p.relative_to(self.upper)) for p in self.upper.rglob("*"))
            if (self.upper / name).is_file() and name != made_by_sandbox
        )


def run_sandboxed(
    tmp_path: Path, steps: str, *, systemd_running: bool = True, args: str = ""
) -> Sandboxed:
    """Runs install.sh for real in a private mount and network namespace, where /etc,
    /opt and /usr/local are overlays that vanish afterwards and /run is private.

    ``steps`` is a space-separated list: a run's name (its output goes to ``NAME.out``),
    ``edit`` (the operator edits the config) or ``break`` (an invalid table is appended).
    systemctl, sysctl and apt-get are recorders; the venv's command is this checkout's
    real CLI.
    """
    if os.geteuid() != 0:
        pytest.skip("mounting a private overlay needs root")
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
        "INSTALL_ARGS": args,
        "TRIPWIRE_LOG": str(log),
        "STEPS": steps,
        "SYSTEMD_RUNNING": "1" if systemd_running else "0",
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
    calls: dict[str, list[str]] = {}
    step = ""
    for line in log.read_text(encoding="utf-8").splitlines() if log.exists() else []:
        if line.startswith("--- "):
            step = line.removeprefix("--- ")
            calls[step] = []
        else:
            calls[step].append(line)
    return Sandboxed(out=out, upper=tmp_path / "upper", calls=calls)


def test_real_install_enables_but_does_not_start_the_untouched_example(tmp_path: Path) -> None:
    """The real (no DESTDIR) install: systemd-sysusers really creates the user, the config
    folder and file get the service group, the ping sysctl is applied before systemd is
    reloaded and the unit enabled. With the config still the shipped example (which would
    drive pins 17/22/23/27) the service is NOT started and the output says why. Once the
    operator has edited it, the next run starts it; a run with a broken config keeps the
    operator's file, does not restart the service and exits 2."""
    box = run_sandboxed(tmp_path, "first edit second break third")
    first = box.output("first")
    assert box.status("first") == 0, first
    assert box.calls["first"] == [
        f"sysctl -q -p /etc/sysctl.d/60-{NAME}-ping.conf",
        "systemctl daemon-reload",
        f"systemctl enable {NAME}.service",
    ], first
    assert "NOT started" in first
    assert "still the example" in first
    passwd = (box.out / "passwd").read_text().split(":")
    assert passwd[0] == NAME
    assert passwd[6].strip() == "/usr/sbin/nologin"
    assert (box.out / "stat").read_text().splitlines() == [f"750 {NAME}", f"640 {NAME}"]

    second = box.output("second")
    assert box.status("second") == 0, second
    assert box.calls["second"][-2:] == [
        f"systemctl is-active --quiet {NAME}.service",
        f"systemctl start {NAME}.service",
    ], second
    assert "running; follow it with" in second

    third = box.output("third")
    assert box.status("third") == 2, third
    assert "no_such_section" in third
    assert "was not (re)started" in third
    assert not any(" start " in c or " restart " in c for c in box.calls["third"]), box.calls
    config = box.upper / "_etc" / NAME / "config.toml"
    assert config.read_text(encoding="utf-8").endswith("[no_such_section]\nkey = 1\n")


def test_real_install_refuses_without_systemd_and_changes_nothing(tmp_path: Path) -> None:
    """Where systemd is not PID 1 (a container, a chroot) the real install stops in its
    pre-flight with a message that points to ``--image``, before any change: no user, no
    file under /etc, /opt or /usr/local, no systemctl, sysctl or apt-get call."""
    box = run_sandboxed(tmp_path, "first", systemd_running=False)
    output = box.output("first")
    assert box.status("first") == 1, output
    assert "systemd is not running" in output
    assert "--image" in output
    assert box.calls["first"] == []
    assert box.written() == []


def test_image_install_enables_the_service_and_starts_nothing(tmp_path: Path) -> None:
    """``--image`` (a chroot or image build, no running systemd): the user, the files and
    the [Install] links are made, but nothing is applied or started: the one systemctl
    call is ``enable``; no sysctl, no daemon-reload, no start. It still prints where the
    web UI and the setup code will be."""
    box = run_sandboxed(tmp_path, "first edit second", systemd_running=False, args="--image")
    for step in ("first", "second"):
        output = box.output(step)
        assert box.status(step) == 0, output
        assert box.calls[step] == [f"systemctl enable {NAME}.service"], output
        assert "image mode: enabled, not started" in output
        assert "web.setup_code" in output
    assert (box.out / "passwd").read_text().startswith(f"{NAME}:")
    assert f"_etc/systemd/system/{NAME}.service" in box.written()


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


def test_pi_check_is_its_own_target_and_refuses_bad_settings_first() -> None:
    """``make pi-check`` is separate from ``make test`` (it takes minutes under
    emulation), and a mistyped argument or suite is refused before it installs,
    mounts or downloads anything."""
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    test_rule = makefile.split("\ntest:", 1)[1].split("\n\n", 1)[0]
    assert "pi-check" not in test_rule
    assert "\npi-check:\n\t@bash scripts/pi-check\n" in makefile
    script = REPO / "scripts" / "pi-check"
    for args, env, message in (
        (["--frobnicate"], {}, "unknown argument"),
        ([], {"PI_SUITE": "../etc"}, "PI_SUITE must be a Debian suite name"),
    ):
        result = subprocess.run(
            ["bash", str(script), *args],
            check=False,
            capture_output=True,
            text=True,
            env={**os.environ, **env},
            timeout=60,
        )
        assert result.returncode == 1, result.stdout + result.stderr
        assert message in result.stderr
        assert "==" not in result.stdout  # no phase began
    usage = subprocess.run(
        ["bash", str(script), "--help"], check=False, capture_output=True, text=True
    )
    assert usage.returncode == 0
    assert "PI_SUITE" in usage.stdout
