"""Settings: one TOML file, overridden key by key by ``VG_<SECTION>__<KEY>`` variables.

The section and key names are fixed by PROTOCOL.md; installers and acceptance tests rely
on them. Unknown keys are errors, because a misspelt key that is silently ignored is how a
relay ends up switched on at boot. :func:`load_settings` is the only way in: it reads the
file, validates everything at once and raises one :class:`~gateway.errors.ConfigError`
listing every problem with the key it concerns.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
import zoneinfo
from datetime import datetime
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from gateway.errors import ConfigError, ConfigProblem
from gateway.schedule_rules import RuleProblem, Sun, check_schedules

__all__ = [
    "DEMO_CONFIG",
    "BroadcastSchedule",
    "GatewaySection",
    "HotspotConfig",
    "LogSection",
    "MqttSection",
    "PaSection",
    "RelayConfig",
    "RelaySchedule",
    "SchedulesSection",
    "Settings",
    "UbusConfig",
    "WebSection",
    "flatten",
    "load_settings",
    "parse_settings",
]

DEMO_CONFIG = "demo.toml"
"""The bundled configuration ``run --demo`` uses when no ``--config`` is given."""

_GATEWAY_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_NAME = re.compile(r"^[a-z0-9_-]{1,32}$")
_TOPIC_SEGMENT = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_BCM_PINS = range(28)
_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def _is_network(value: str) -> bool:
    """An address or an address range in CIDR form (``10.0.0.0/8``, ``fd00::/8``)."""
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return False
    return True


def _is_host(value: str) -> bool:
    """An IPv4/IPv6 address or a DNS host name (RFC 1123 labels)."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        labels = value.rstrip(".").split(".")
        return len(value) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in labels)
    return True


Name = Annotated[str, Field(pattern=_NAME.pattern)]


class _Section(BaseModel):
    """A table of the file: unknown keys are errors, values are checked strictly."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class GatewaySection(_Section):
    """Who this gateway is and where it keeps its state."""

    id: str = Field(min_length=1)
    name: str = ""
    groups: list[str] = Field(default_factory=list)
    timezone: str = "Asia/Ho_Chi_Minh"
    latitude: float = Field(default=18.34, ge=-90, le=90)
    longitude: float = Field(default=105.9, ge=-180, le=180)
    state_dir: Path = Path("/var/lib/village-gateway")

    @field_validator("id")
    @classmethod
    def _id_is_one_topic_level(cls, value: str) -> str:
        if not _GATEWAY_ID.fullmatch(value):
            raise ValueError(
                "must be 1-64 letters, digits, '.', '-' or '_' "
                f"(no '/', '+', '#' or spaces): got {value!r}"
            )
        return value

    @field_validator("groups")
    @classmethod
    def _groups_are_topic_levels(cls, value: list[str]) -> list[str]:
        bad = [group for group in value if not _TOPIC_SEGMENT.fullmatch(group)]
        if bad:
            raise ValueError(f"group names must be letters, digits, '.', '-' or '_': {bad!r}")
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone_exists(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r} (use an IANA name such as 'Asia/Ho_Chi_Minh')"
            ) from None
        return value


class MqttSection(_Section):
    """The commune broker. Used by the MQTT link; ``send`` and ``watch`` share these."""

    host: str = "localhost"
    port: int = Field(default=1883, ge=1, le=65535)
    topic_prefix: str = "vg/v1"
    keepalive_s: int = Field(default=60, ge=5, le=3600)
    protocol: Literal["5", "3.1.1"] = "5"
    session_expiry_s: int = Field(default=3600, ge=0, le=7 * 24 * 3600)
    max_backoff_s: float = Field(default=60, ge=1, le=3600)
    max_msgs_per_s: float = Field(default=50, gt=0, le=10_000)
    username: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @field_validator("topic_prefix")
    @classmethod
    def _prefix_has_no_wildcards(cls, value: str) -> str:
        if (
            not value
            or any(c in value for c in "+#")
            or value.startswith("/")
            or value.endswith("/")
        ):
            raise ValueError("must be a topic without '+', '#' or a leading/trailing '/'")
        return value


class RelayConfig(_Section):
    """One relay on the board, by BCM pin."""

    pin: int
    active_high: bool = False
    power_on: Literal["off", "on", "restore", "schedule"] = "off"
    shutdown: Literal["hold", "off"] = "off"
    min_switch_interval_s: float = Field(default=1.0, ge=0, le=3600)
    max_on_s: float | None = Field(default=None, gt=0, le=7 * 24 * 3600)
    interlock: str | None = Field(default=None, pattern=_NAME.pattern)
    label: str = ""

    @field_validator("pin")
    @classmethod
    def _pin_is_bcm(cls, value: int) -> int:
        if value not in _BCM_PINS:
            raise ValueError(f"must be a BCM GPIO number 0-27, got {value}")
        return value


_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _all_days() -> list[str]:
    return list(_WEEKDAYS)


class RelaySchedule(_Section):
    """An interval of desired state: ``relay`` is on from ``on`` to ``off`` that day.

    Times are ``"HH:MM"`` or the sun with an offset (``"sunset+10m"``,
    ``"hoàng hôn + 10 phút"``); an ``off`` before ``on`` ends the next morning. The
    values are judged by :func:`gateway.schedule_rules.check_schedules`, the one rule
    function ``schedule.set`` uses too (see :meth:`Settings._schedules_follow_the_rules`).
    """

    relay: str
    on: str
    off: str
    days: list[str] = Field(default_factory=_all_days)


class BroadcastSchedule(_Section):
    """A moment: play ``clip`` at ``at`` on ``days`` (judged like :class:`RelaySchedule`)."""

    at: str
    clip: str = Field(min_length=1)
    days: list[str] = Field(default_factory=_all_days)
    priority: Literal["scheduled", "announcement", "background"] = "scheduled"
    volume: int | None = Field(default=None, ge=0, le=100)


class SchedulesSection(_Section):
    """Clock and sun schedules for relays and broadcasts.

    The rows are kept as written (tables, or the models): every rule about them, their
    keys included, is :func:`gateway.schedule_rules.check_schedules`, run on the whole
    configuration so ``check-config`` and ``schedule.set`` give the same verdicts.
    """

    when_unsynced: Literal["run", "hold"] = "run"
    grace_s: float = Field(default=300, ge=0, le=3600)
    relays: list[Any] = Field(default_factory=list)
    broadcasts: list[Any] = Field(default_factory=list)


_QUIET_SPAN = r"^([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-3]):[0-5]\d$"


class PaSection(_Section):
    """The public-address output: device, formats, volumes, amplifier, queue, clips."""

    backend: Literal["pyaudio", "null"] = "pyaudio"
    device: str = Field(default="default", min_length=1)
    sample_rate: int = Field(default=48_000, ge=8_000, le=192_000)
    frames_per_buffer: int = Field(default=1024, ge=64, le=16_384)
    volume: int = Field(default=80, ge=0, le=100)
    """The master volume at start (``pa.volume`` changes it)."""
    emergency_volume: int = Field(default=100, ge=0, le=100)
    amp_relay: str | None = None
    amp_warmup_s: float = Field(default=2.0, ge=0, le=60)
    amp_idle_off_s: float = Field(default=30.0, ge=1, le=3600)
    quiet_hours: list[Annotated[str, Field(pattern=_QUIET_SPAN)]] = Field(default_factory=list)
    queue_max: int = Field(default=50, ge=1, le=1000)
    chime: str = Field(default="chime", pattern=r"^[a-z0-9_-]{1,64}$")
    max_clip_mb: float = Field(default=50, gt=0, le=1000)
    fetch_timeout_s: float = Field(default=60, gt=0, le=3600)
    stream_connect_timeout_s: float = Field(default=5, gt=0, le=120)
    fetch_allow: list[str] = Field(default_factory=list)
    """Hosts or address ranges (CIDR) that ``pa.clip.fetch`` / ``pa.play url=`` may reach
    although loopback, link-local or private (a commune file server)."""

    @field_validator("fetch_allow")
    @classmethod
    def _fetch_allow_hosts_or_ranges(cls, value: list[str]) -> list[str]:
        bad = [item for item in value if not (_is_network(item) or _is_host(item))]
        if bad:
            raise ValueError(
                "each entry is a host name, an address or an address range in CIDR form "
                f"(192.168.1.0/24): {', '.join(map(repr, bad))}"
            )
        return value


class _Probe(_Section):
    timeout_s: float = Field(default=2.0, gt=0, le=60)


class IcmpProbe(_Probe):
    """Ping the host (unprivileged ICMP)."""

    kind: Literal["icmp"]


class TcpProbe(_Probe):
    """Open a TCP connection to a port of the host."""

    kind: Literal["tcp"]
    port: int = Field(ge=1, le=65535)


class HttpProbe(_Probe):
    """Fetch a URL and expect a status, and optionally a text in the body.

    The body check catches a captive portal or an error page served with 200.
    """

    kind: Literal["http"]
    url: str = Field(pattern=r"^https?://")
    expect_status: int = Field(default=200, ge=100, le=599)
    expect_body: str | None = Field(default=None, min_length=1)


class DnsProbe(_Probe):
    """Resolve a name, optionally through a given server."""

    kind: Literal["dns"]
    name: str = Field(min_length=1)
    server: str | None = None


Probe = Annotated[IcmpProbe | TcpProbe | HttpProbe | DnsProbe, Field(discriminator="kind")]


def _ping_only() -> list[Probe]:
    return [IcmpProbe(kind="icmp")]


_IFACE = re.compile(r"^[A-Za-z0-9._-]{1,32}$")


class UbusConfig(_Section):
    """Client counts from an OpenWrt access point over ubus JSON-RPC (``/ubus``).

    The password lives in a file (mode 0600) so it never shows in the configuration,
    the logs or ``check-config`` output; it is read again at every login.
    """

    url: str = Field(pattern=r"^https?://")
    username: str = Field(min_length=1, max_length=64)
    password_file: Path
    interfaces: list[str] = Field(default_factory=lambda: ["wlan0"], min_length=1)
    method: Literal["hostapd", "iwinfo"] = "hostapd"
    timeout_s: float = Field(default=5.0, gt=0, le=60)

    @field_validator("url")
    @classmethod
    def _url_names_a_host(cls, value: str) -> str:
        host = urlsplit(value).hostname
        if host is None or not _is_host(host):
            raise ValueError(f"the URL names no valid host: {value!r}")
        return value

    @field_validator("interfaces")
    @classmethod
    def _interface_names(cls, value: list[str]) -> list[str]:
        bad = [name for name in value if not _IFACE.fullmatch(name)]
        if bad:
            raise ValueError(f"not a wifi interface name: {', '.join(map(repr, bad))}")
        return value


class HotspotConfig(_Section):
    """One free wifi access point to watch."""

    host: str = Field(min_length=1)
    label: str = ""
    ssid: str | None = Field(default=None, min_length=1, max_length=32)
    """The open wifi network's name, printed with a wifi QR code on the notice-board sheet."""
    interval_s: float = Field(default=30, gt=0, le=3600)
    fail_threshold: int = Field(default=3, ge=1, le=100)
    recover_threshold: int = Field(default=2, ge=1, le=100)
    probes: list[Probe] = Field(default_factory=_ping_only, min_length=1)
    ubus: UbusConfig | None = None

    @field_validator("host")
    @classmethod
    def _host_is_an_address_or_name(cls, value: str) -> str:
        if not _is_host(value):
            raise ValueError(f"not an IP address or host name: {value!r}")
        return value

    @model_validator(mode="after")
    def _timeouts_fit_the_interval(self) -> HotspotConfig:
        timeouts = [p.timeout_s for p in self.probes]
        if self.ubus is not None:
            timeouts.append(self.ubus.timeout_s)
        slow = [timeout for timeout in timeouts if timeout >= self.interval_s]
        if slow:
            raise ValueError(
                f"a probe timeout ({max(slow):g} s) must be shorter than interval_s "
                f"({self.interval_s:g} s), or cycles would overlap"
            )
        return self


class UplinkSection(_Section):
    """The gateway's own internet connection."""

    interval_s: float = Field(default=30, gt=0, le=3600)
    probes: list[Probe] = Field(default_factory=list)


class WebSection(_Section):
    """The local web UI and API."""

    host: str = "0.0.0.0"  # noqa: S104 - operators reach it from phones on the LAN
    port: int = Field(default=8080, ge=1, le=65535)
    public_status: bool = False
    """Let anyone on the LAN read ``GET /api/v1/state`` and the WebSocket without login."""
    session_ttl_s: int = Field(default=12 * 3600, ge=60, le=30 * 86_400)
    session_idle_s: int = Field(default=2 * 3600, ge=60, le=30 * 86_400)
    login_max_attempts: int = Field(default=5, ge=1, le=100)
    login_lockout_s: float = Field(default=30, gt=0, le=86_400)
    login_max_lockout_s: float = Field(default=3600, gt=0, le=7 * 86_400)
    max_upload_mb: float = Field(default=50, gt=0, le=1000)
    trusted_origins: list[str] = Field(default_factory=list)
    """Extra ``Origin`` values accepted besides the request's own (a TLS reverse proxy)."""
    hostnames: list[str] = Field(default_factory=list)
    """Names the Pi is reached by besides its addresses, its hostname and hostname.local."""
    trusted_proxies: list[str] = Field(default_factory=list)
    """Addresses or ranges (CIDR) of reverse proxies whose ``X-Forwarded-For`` and
    ``X-Forwarded-Proto`` are believed."""

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies_are_addresses(cls, value: list[str]) -> list[str]:
        bad = [item for item in value if not _is_network(item)]
        if bad:
            raise ValueError(
                "each entry is an address or an address range in CIDR form "
                f"(192.168.1.10, 10.0.0.0/8): {', '.join(map(repr, bad))}"
            )
        return value

    @field_validator("hostnames")
    @classmethod
    def _hostnames_are_names(cls, value: list[str]) -> list[str]:
        bad = [n for n in value if not _is_host(n)]
        if bad:
            raise ValueError(f"not host names: {bad!r}")
        return value

    @field_validator("trusted_origins")
    @classmethod
    def _origins_are_scheme_and_host(cls, value: list[str]) -> list[str]:
        bad = [o for o in value if not re.fullmatch(r"https?://[A-Za-z0-9.:\[\]-]+", o)]
        if bad:
            raise ValueError(f"an origin is scheme://host[:port], nothing more: {bad!r}")
        return value


LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


class LogSection(_Section):
    """Logging: level, the form of the lines, and what goes up to the commune."""

    level: LogLevel = "INFO"
    format: Literal["auto", "json", "console"] = "auto"
    upload_level: LogLevel = "INFO"
    upload_max_per_min: int = Field(default=120, ge=1, le=100_000)

    @field_validator("level", "upload_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


class OutboxSection(_Section):
    """The durable store-and-forward queue under ``gateway.state_dir``."""

    max_mb: float = Field(default=64, ge=1, le=100_000)
    commit_window_ms: int = Field(default=100, ge=0, le=1000)


class TelemetrySection(_Section):
    """Periodic metric samples sent to the commune."""

    interval_s: float = Field(default=60, ge=1, le=86_400)


class CommandsSection(_Section):
    """The command path."""

    default_ttl_s: int = Field(default=300, ge=1, le=7 * 24 * 3600)
    max_bytes: int = Field(default=64 * 1024, ge=1024, le=1024 * 1024)
    hmac_key_file: Path | None = None
    max_per_s: float = Field(default=20.0, gt=0, le=100_000)
    burst: int = Field(default=100, ge=1, le=100_000)


class Settings(BaseSettings):
    """The whole configuration. Build it with :func:`load_settings`, not directly."""

    model_config = SettingsConfigDict(
        env_prefix="VG_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    gateway: GatewaySection
    mqtt: MqttSection = MqttSection()
    relays: dict[Name, RelayConfig] = Field(default_factory=dict)
    pa: PaSection = PaSection()
    hotspots: dict[Name, HotspotConfig] = Field(default_factory=dict)
    uplink: UplinkSection = UplinkSection()
    web: WebSection = WebSection()
    log: LogSection = LogSection()
    outbox: OutboxSection = OutboxSection()
    telemetry: TelemetrySection = TelemetrySection()
    commands: CommandsSection = CommandsSection()
    schedules: SchedulesSection = SchedulesSection()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Environment first, then the file's values (passed in as init data)."""
        return (env_settings, init_settings)

    @field_validator("relays")
    @classmethod
    def _one_relay_per_pin(cls, value: dict[str, RelayConfig]) -> dict[str, RelayConfig]:
        by_pin: dict[int, list[str]] = {}
        for name, relay in value.items():
            by_pin.setdefault(relay.pin, []).append(name)
        clashes = [
            f"pin {pin} is used by {' and '.join(sorted(names))}"
            for pin, names in sorted(by_pin.items())
            if len(names) > 1
        ]
        if clashes:
            raise ValueError("; ".join(clashes))
        return value

    @model_validator(mode="after")
    def _amp_relay_exists(self) -> Settings:
        # A check across sections has no field of its own in pydantic's error path, so
        # the message starts with its key; _problems() splits it off again.
        known = ", ".join(sorted(self.relays)) or "none"
        if self.pa.amp_relay is not None and self.pa.amp_relay not in self.relays:
            raise ValueError(
                f"pa.amp_relay: names no relay: {self.pa.amp_relay!r} (relays: {known})"
            )
        amp = self.relays.get(self.pa.amp_relay or "")
        if amp is not None and amp.power_on != "off":
            raise ValueError(
                f"relays.{self.pa.amp_relay}.power_on: the amplifier relay (pa.amp_relay) "
                f"must start off, not {amp.power_on!r}; the PA switches it on when it plays"
            )
        return self

    @model_validator(mode="after")
    def _schedules_follow_the_rules(self) -> Settings:
        # The same rule function as schedule.set: check-config and the daemon's start-up
        # can never accept what the command refuses, or the other way round.
        where = self.gateway
        sun = Sun(latitude=where.latitude, longitude=where.longitude, timezone=where.timezone)
        verdict = check_schedules(
            self.schedules.relays,
            self.schedules.broadcasts,
            sun=sun,
            today=datetime.now(sun.tz).date(),
            relay_names=set(self.relays),
            relay_field="schedules.relays",
            broadcast_field="schedules.broadcasts",
        )
        if verdict.problems:
            raise SchedulesInvalidError(verdict.problems)
        return self

    def topic(self, *parts: str) -> str:
        """The topic ``P/ID/parts...`` of this gateway."""
        return "/".join((self.mqtt.topic_prefix, self.gateway.id, *parts))


class SchedulesInvalidError(ValueError):
    """Raised inside validation to carry every schedule problem out to :func:`_problems`."""

    def __init__(self, problems: list[RuleProblem]) -> None:
        super().__init__("; ".join(str(problem) for problem in problems))
        self.problems = problems


def flatten(data: object, prefix: str = "") -> dict[str, Any]:
    """Flatten nested tables into ``{"section.key": value}``; used to diff on reload."""
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json")
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _read_toml(path: Path) -> dict[str, Any]:
    where = str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError.single(where, "no such file") from None
    except IsADirectoryError:
        raise ConfigError.single(where, "is a directory, not a TOML file") from None
    except PermissionError:
        raise ConfigError.single(where, "cannot be read (permission denied)") from None
    except OSError as exc:
        raise ConfigError.single(where, f"cannot be read: {exc.strerror}") from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError.single(where, f"is not UTF-8 text (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError.single(where, f"invalid TOML: {exc}") from None


def _problems(error: ValidationError) -> list[ConfigProblem]:
    """Every problem of a failed validation, in plain words (:mod:`gateway.configwords`)."""
    # Only a failed validation needs the sentences (and difflib's "did you mean").
    from gateway.configwords import plain_problem  # noqa: PLC0415

    problems = []
    for item in error.errors(include_url=False):
        if isinstance(found := item.get("ctx", {}).get("error"), SchedulesInvalidError):
            problems += [ConfigProblem(p.where, p.message, p.reason) for p in found.problems]
            continue
        key, message = plain_problem(Settings, item)
        if not key:
            # A check across sections has no field of its own: its message starts with
            # the key it concerns.
            key, _, message = message.partition(": ")
        problems.append(ConfigProblem(key, message))
    return problems


def load_settings(path: Path | None, *, demo: bool = False) -> Settings:
    """Read and validate the configuration; ``VG_`` variables override the file.

    With ``demo`` and no ``path`` the bundled demo configuration is used. Raises
    :class:`ConfigError` listing every problem, each naming its key or the file.
    """
    if path is None:
        if not demo:
            raise ConfigError.single("--config", "no configuration file given")
        text = files("gateway").joinpath(DEMO_CONFIG).read_text(encoding="utf-8")
        data = tomllib.loads(text)
        source = "the bundled demo configuration"
    else:
        data = _read_toml(path)
        source = str(path)
    return _validate(data, source, demo=demo)


def parse_settings(text: str, *, source: str, demo: bool = False) -> Settings:
    """Validate configuration ``text`` kept elsewhere (the last good copy), as
    :func:`load_settings` validates a file: ``VG_`` variables override it too."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError.single(source, f"invalid TOML: {exc}") from None
    return _validate(data, source, demo=demo)


def _validate(data: dict[str, Any], source: str, *, demo: bool) -> Settings:
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_problems(exc), source=source) from None
    if demo:
        _check_demo(settings, source)
    return settings


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_demo(settings: Settings, source: str) -> None:
    """The demo runs on a developer's machine: it may only talk to loopback."""
    problems = []
    if not _is_loopback(settings.mqtt.host):
        problems.append(ConfigProblem("mqtt.host", "the demo only connects to loopback"))
    for name, hotspot in settings.hotspots.items():
        if not _is_loopback(hotspot.host):
            problems.append(ConfigProblem(f"hotspots.{name}.host", "the demo only probes loopback"))
        ubus_host = urlsplit(hotspot.ubus.url).hostname if hotspot.ubus else None
        if ubus_host is not None and not _is_loopback(ubus_host):
            problems.append(
                ConfigProblem(f"hotspots.{name}.ubus.url", "the demo only asks loopback")
            )
    if problems:
        raise ConfigError(problems, source=source)
