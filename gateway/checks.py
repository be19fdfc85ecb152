"""What a valid file can still get wrong on this machine, checked the same way everywhere.

:func:`load_settings` proves the file is well formed; :func:`check_settings` then looks
at what only the machine can answer: the files the configuration names exist and can be
read by the service user, the sound device is named in a way that survives a reboot,
the TLS port is used with TLS, the clips that broadcasts name are there. ``check-config``
and the daemon's start-up both call :func:`check_settings` and nothing else, so the
command never says "ok" to a file the daemon then refuses.

Errors make the file unusable (``check-config`` exits 2; at start the daemon falls back
to its last good configuration). Warnings are printed and logged but pass.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from gateway.config import Settings
from gateway.errors import ConfigError, ConfigProblem

__all__ = [
    "SERVICE_USER",
    "TLS_PORT",
    "CheckReport",
    "check_settings",
    "device_problem",
    "named_files",
]

SERVICE_USER = "village-gateway"
"""The user systemd runs the daemon as (``User=`` in the unit)."""

TLS_PORT = 8883
"""MQTT over TLS by convention (IANA); a broker there speaks nothing else."""

_BUNDLED_CLIPS = Path(__file__).parent / "pa" / "sounds"


@dataclass
class CheckReport:
    """What :func:`check_settings` found: errors fail, warnings only inform."""

    errors: list[ConfigProblem] = field(default_factory=list)
    warnings: list[ConfigProblem] = field(default_factory=list)

    def raise_errors(self, source: str | None) -> None:
        """Raise one :class:`ConfigError` listing every error, if there is any."""
        if self.errors:
            raise ConfigError(list(self.errors), source=source)


def check_settings(settings: Settings, *, service_user: str = SERVICE_USER) -> CheckReport:
    """Every check beyond the file's own validity; see the module's docstring."""
    report = CheckReport()
    reader = _Reader.for_user(service_user)
    _check_files(settings, reader, report)
    _check_mqtt(settings, report)
    problem = device_problem(settings.pa.device)
    if problem is not None and settings.pa.backend == "pyaudio":
        report.errors.append(ConfigProblem("pa.device", problem))
    _check_clips(settings, report)
    return report


# -- files ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Reader:
    """Who must be able to read the files: the service user when we are root and it
    exists (the IT person runs check-config with sudo), otherwise whoever runs us."""

    name: str
    uid: int
    gids: frozenset[int]

    @classmethod
    def for_user(cls, service_user: str) -> _Reader:
        if os.geteuid() == 0:
            try:
                entry = pwd.getpwnam(service_user)
            except KeyError:
                pass
            else:
                groups = {g.gr_gid for g in grp.getgrall() if service_user in g.gr_mem}
                return cls(service_user, entry.pw_uid, frozenset({entry.pw_gid, *groups}))
        name = pwd.getpwuid(os.geteuid()).pw_name if _has_user(os.geteuid()) else "this user"
        if name != service_user and _user_exists(service_user):
            name += f" (run check-config with sudo to judge for {service_user})"
        return cls(name, os.geteuid(), frozenset(os.getgroups()) | {os.getegid()})

    def may(self, info: os.stat_result, bits: tuple[int, int, int]) -> bool:
        """Whether this reader has the permission whose owner/group/other bits are given."""
        if self.uid == 0:
            return True
        if info.st_uid == self.uid:
            return bool(info.st_mode & bits[0])
        if info.st_gid in self.gids:
            return bool(info.st_mode & bits[1])
        return bool(info.st_mode & bits[2])

    def why_not(self, path: Path) -> str | None:  # noqa: PLR0911 - one return per reason
        """None when ``path`` is a file this reader can read, else why not."""
        try:
            info = path.stat()
        except FileNotFoundError:
            return f"no such file: {path}"
        except PermissionError:
            return f"cannot be reached (permission denied): {path}"
        except OSError as exc:
            return f"cannot be read ({exc.strerror}): {path}"
        if stat.S_ISDIR(info.st_mode):
            return f"is a folder, not a file: {path}"
        for parent in path.absolute().parents:
            try:
                folder = parent.stat()
            except OSError:
                continue
            if not self.may(folder, (stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH)):
                return f"cannot be read by {self.name}: the folder {parent} is closed to it"
        if not self.may(info, (stat.S_IRUSR, stat.S_IRGRP, stat.S_IROTH)):
            return (
                f"cannot be read by {self.name}: {path} (give it to that user or its group, "
                "e.g. chgrp village-gateway FILE && chmod 640 FILE)"
            )
        return None


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _has_user(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def named_files(settings: Settings) -> list[tuple[str, Path]]:
    """Every file the configuration names, with its key (secrets and certificates)."""
    mqtt = settings.mqtt
    files = [
        ("mqtt.password_file", mqtt.password_file),
        ("mqtt.ca_file", mqtt.ca_file),
        ("mqtt.cert_file", mqtt.cert_file),
        ("mqtt.key_file", mqtt.key_file),
        ("commands.hmac_key_file", settings.commands.hmac_key_file),
    ]
    for name, hotspot in settings.hotspots.items():
        if hotspot.ubus is not None:
            files.append((f"hotspots.{name}.ubus.password_file", hotspot.ubus.password_file))
    return [(key, path) for key, path in files if path is not None]


def _check_files(settings: Settings, reader: _Reader, report: CheckReport) -> None:
    unreadable = set()
    for key, path in named_files(settings):
        problem = reader.why_not(path)
        if problem is not None:
            report.errors.append(ConfigProblem(key, problem))
            unreadable.add(key)
    # The files we can read are read as the daemon will read them: a short key, an
    # empty password or a certificate without its key is refused now, not at run time.
    if "commands.hmac_key_file" not in unreadable and settings.commands.hmac_key_file:
        from gateway.commands import read_signing_key  # noqa: PLC0415 - heavy, only if used

        try:
            read_signing_key(settings.commands.hmac_key_file, name="commands.hmac_key_file")
        except ConfigError as exc:
            report.errors.extend(exc.problems)
    if not unreadable & {"mqtt.password_file", "mqtt.ca_file", "mqtt.cert_file", "mqtt.key_file"}:
        from gateway.uplink.client import mqtt_problems  # noqa: PLC0415 - needs aiomqtt

        report.errors.extend(mqtt_problems(settings.mqtt))


# -- the broker -------------------------------------------------------------------------


def _check_mqtt(settings: Settings, report: CheckReport) -> None:
    mqtt = settings.mqtt
    if mqtt.port == TLS_PORT and mqtt.ca_file is None:
        report.errors.append(
            ConfigProblem(
                "mqtt.port",
                f"{TLS_PORT} is the MQTT port for TLS: set mqtt.ca_file too (for a broker "
                "with a public certificate, the system bundle "
                "/etc/ssl/certs/ca-certificates.crt)",
            )
        )


# -- the sound device -------------------------------------------------------------------


def device_problem(device: str) -> str | None:
    """Why an ALSA device name is refused, or None.

    A card *number* (``hw:1,0``, ``plughw:1``, ``hw:CARD=1``) names whichever card the
    kernel counted first on this boot; a USB card plugged into another port, or an HDMI
    output found sooner, moves it, and the loudspeakers go silent. Names survive.
    """
    plugin, sep, rest = device.partition(":")
    if not sep:
        return None
    first = rest.split(",")[0].strip()
    card = first.removeprefix("CARD=")
    if not card.isdigit():
        return None
    return (
        f"names sound card number {card} ({device!r}), which changes when cards are found "
        f"in another order: name the card instead, e.g. {plugin}:CARD=Device,DEV=0 (the "
        "names are in `aplay -L` and /proc/asound/cards)"
    )


# -- clips ------------------------------------------------------------------------------


def _clip_exists(settings: Settings, name: str) -> bool:
    """Whether a clip answers to ``name``: its id, or the label kept beside it."""
    if (_BUNDLED_CLIPS / f"{name}.wav").is_file():
        return True
    folder = settings.gateway.state_dir / "clips"
    try:
        if any(path.is_file() for path in folder.glob(f"{name}.*") if path.suffix != ".label"):
            return True
        wanted = unicodedata.normalize("NFC", name).strip().casefold()
        return any(
            unicodedata.normalize("NFC", label.read_text(encoding="utf-8")).strip().casefold()
            == wanted
            for label in folder.glob("*.label")
        )
    except (OSError, UnicodeDecodeError):
        return False


def _check_clips(settings: Settings, report: CheckReport) -> None:
    """A broadcast of a clip that is not there plays nothing: say so now.

    A warning, not an error: clips are uploaded to the running gateway (or restored from
    a backup) after the configuration that names them is written.
    """
    for index, broadcast in enumerate(settings.schedules.broadcasts):
        # Broadcast rows stay as written (the schedule rules judge them), dicts here.
        clip = broadcast.get("clip") if isinstance(broadcast, dict) else None
        if not isinstance(clip, str) or not clip.strip():
            continue  # the schedule rules already refused it
        name = clip.strip()
        if not _clip_exists(settings, name):
            report.warnings.append(
                ConfigProblem(
                    f"schedules.broadcasts.{index}.clip",
                    f"no clip named {name!r} in {settings.gateway.state_dir / 'clips'}: "
                    "upload it (web UI, pa.clip.fetch) or this broadcast plays nothing",
                )
            )
