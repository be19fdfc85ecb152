"""From configuration to an aiomqtt client: the one place that knows how to reach a broker.

The daemon's MQTT link and the commune-side commands ``watch`` and ``send`` all connect
through :func:`make_client`, so the protocol version, TLS, credentials, the persistent
session and the socket options are decided here once. :func:`describe_error` turns the
many ways a connection fails (refused, unresolvable, TLS, credentials, broker reason
codes) into one sentence an operator can act on; :class:`Topics` spells the topic names
of PROTOCOL.md so no other module assembles them by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import functools
import re
import socket
import ssl
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import aiomqtt
from paho.mqtt.client import Client as PahoClient
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import ValidationError

from gateway.config import MqttSection
from gateway.errors import ConfigError, ConfigProblem

if TYPE_CHECKING:
    from paho.mqtt.client import SocketLike

__all__ = [
    "TCP_NODELAY_OPTION",
    "Topics",
    "acknowledge",
    "add_broker_arguments",
    "cli_broker",
    "describe_error",
    "make_client",
    "mqtt_problems",
    "mqtt_section_from_args",
]

TCP_NODELAY_OPTION: Final = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
"""Send small MQTT packets at once. Without it Nagle's algorithm meets the broker's delayed
ACK and a QoS 1 exchange that follows a PUBACK waits ~40 ms (ARCHITECTURE.md, Known traps)."""

_GATEWAY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


# --------------------------------------------------------------------------- client


def make_client(
    mqtt: MqttSection,
    *,
    identifier: str,
    will: aiomqtt.Will | None = None,
    persistent_session: bool = False,
    manual_ack: bool = False,
    receive_maximum: int | None = None,
    max_packet_bytes: int | None = None,
) -> aiomqtt.Client:
    """Build (not connect) the aiomqtt client that ``mqtt`` describes.

    With ``persistent_session`` the broker keeps the subscriptions and queues QoS 1
    messages while the client is away: MQTT 5 connects with clean start off and a session
    expiry of ``mqtt.session_expiry_s``; MQTT 3.1.1 with ``clean_session`` off (the broker
    then decides how long to keep it). Must be called inside a running event loop.

    Raises :class:`ConfigError`, naming every ``mqtt.*`` key concerned, for what can be
    seen before connecting: a password file or certificate that is missing or unreadable,
    a certificate without its key, a key that does not belong to its certificate.
    """
    problems: list[ConfigProblem] = []
    password = _password(mqtt, problems)
    tls = _tls_parameters(mqtt, problems)
    if problems:
        raise ConfigError(problems)
    client = functools.partial(
        aiomqtt.Client,
        mqtt.host,
        mqtt.port,
        identifier=identifier,
        username=mqtt.username,
        password=password,
        will=will,
        keepalive=mqtt.keepalive_s,
        tls_params=tls,
        socket_options=[TCP_NODELAY_OPTION],
    )
    if mqtt.protocol == "3.1.1":
        # No Receive Maximum in 3.1.1: the broker's own in-flight limit (mosquitto's
        # max_inflight_messages, 20 by default) bounds what waits for our PUBACKs.
        made = client(
            protocol=aiomqtt.ProtocolVersion.V311,
            clean_session=not persistent_session,
        )
    else:
        properties: Properties | None = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        assert properties is not None  # noqa: S101 - just made
        if persistent_session:
            properties.SessionExpiryInterval = mqtt.session_expiry_s
        if receive_maximum is not None:
            properties.ReceiveMaximum = receive_maximum
        if max_packet_bytes is not None:
            properties.MaximumPacketSize = max_packet_bytes
        if not (persistent_session or receive_maximum or max_packet_bytes):
            properties = None
        made = client(
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=not persistent_session,
            properties=properties,
        )
    if manual_ack:
        # aiomqtt has no API for this yet (its issue #345); paho 2 has, on the client
        # aiomqtt wraps. docs/architecture.md says why we reach past aiomqtt here.
        made._client.manual_ack_set(True)
    _write_from_the_loop(made)
    return made


def _write_from_the_loop(made: aiomqtt.Client) -> None:
    """Send what paho queues on the event loop's thread at once.

    aiomqtt asks the loop to watch the socket for writability whenever paho has a packet
    to send, through ``call_soon_threadsafe`` (paho may call it from the thread aiomqtt
    connects in): per packet a wake-up byte through the loop's self-pipe, two
    ``epoll_ctl`` and a round of the loop that only learns the socket is writable, which
    it nearly always is. A command's reply would wait for that round behind whatever
    else the loop has queued. On the loop's own thread this sends at once instead, as
    paho itself does when no outside loop drives it, and with paho's own guard: not from
    inside one of paho's callbacks (its callback lock is held there), then in the loop's
    next round. A packet the socket does not take whole (a full send buffer), an error,
    and every call from another thread go the aiomqtt way: the writer it registers
    finishes the send, or reports the broken connection as aiomqtt always does. paho
    calls this once per run of queued packets (until it calls the unregister callback).
    """
    paho = made._client
    register_with_aiomqtt = paho.on_socket_register_write
    if register_with_aiomqtt is None:  # not an aiomqtt we know; leave it be
        return
    in_callback = paho._in_callback_mutex

    def write_now(client: PahoClient, userdata: object, sock: SocketLike) -> None:
        try:
            client.loop_write()
        except Exception:  # aiomqtt's writer meets it again and reports it
            register_with_aiomqtt(client, userdata, sock)
            return
        if client.want_write():
            register_with_aiomqtt(client, userdata, sock)

    def register_write(client: PahoClient, userdata: object, sock: SocketLike) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # aiomqtt's connect thread
            register_with_aiomqtt(client, userdata, sock)
            return
        if in_callback.acquire(blocking=False):
            in_callback.release()
            write_now(client, userdata, sock)
        else:
            loop.call_soon(write_now, client, userdata, sock)

    paho.on_socket_register_write = register_write


def mqtt_problems(mqtt: MqttSection) -> list[ConfigProblem]:
    """What :func:`make_client` would refuse in ``mqtt``'s files, without building a client
    (``check-config`` and start-up ask this before the link first dials)."""
    problems: list[ConfigProblem] = []
    _password(mqtt, problems)
    _tls_parameters(mqtt, problems)
    return problems


# aiomqtt's own queue of received messages stays unbounded on purpose: a message it
# discarded would never be acknowledged, and the broker would not send it again before
# the next connection (the session stalls). Memory is bounded by Maximum Packet Size per
# message and by the Receive Maximum, as far as the broker honours it (mosquitto 2.0 was
# seen sending past it while PUBACKs flowed; docs/architecture.md).


def acknowledge(client: aiomqtt.Client, message: aiomqtt.Message) -> None:
    """Send the PUBACK of ``message`` now (a client made with ``manual_ack``)."""
    client._client.ack(message.mid, message.qos)


def _read_file(key: str, path: Path, problems: list[ConfigProblem]) -> bytes | None:
    """The file's bytes, or None after recording why it cannot be read under ``key``."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        message = f"no such file: {path}"
    except IsADirectoryError:
        message = f"is a directory, not a file: {path}"
    except PermissionError:
        message = f"cannot be read (permission denied): {path}"
    except OSError as exc:
        message = f"cannot be read ({exc.strerror}): {path}"
    problems.append(ConfigProblem(key, message))
    return None


def _password(mqtt: MqttSection, problems: list[ConfigProblem]) -> str | None:
    if mqtt.password_file is None:
        return None
    if mqtt.username is None:
        problems.append(ConfigProblem("mqtt.username", "is required with mqtt.password_file"))
    raw = _read_file("mqtt.password_file", mqtt.password_file, problems)
    if raw is None:
        return None
    try:
        password = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        problems.append(ConfigProblem("mqtt.password_file", "is not UTF-8 text"))
        return None
    if not password:
        problems.append(ConfigProblem("mqtt.password_file", f"is empty: {mqtt.password_file}"))
        return None
    return password


def _refuse_passphrase() -> str:
    # Without a callback OpenSSL would prompt on the terminal for an encrypted key's
    # passphrase, and a daemon would hang there.
    raise ssl.SSLError("the key is encrypted with a passphrase")


def _tls_parameters(
    mqtt: MqttSection, problems: list[ConfigProblem]
) -> aiomqtt.TLSParameters | None:
    """TLS settings, after loading each file once so that mistakes show up now."""
    if mqtt.ca_file is None and mqtt.cert_file is None and mqtt.key_file is None:
        return None
    before = len(problems)
    if mqtt.cert_file is not None and mqtt.key_file is None:
        problems.append(ConfigProblem("mqtt.key_file", "is required with mqtt.cert_file"))
    if mqtt.key_file is not None and mqtt.cert_file is None:
        problems.append(ConfigProblem("mqtt.cert_file", "is required with mqtt.key_file"))
    for key, path in (
        ("mqtt.ca_file", mqtt.ca_file),
        ("mqtt.cert_file", mqtt.cert_file),
        ("mqtt.key_file", mqtt.key_file),
    ):
        if path is not None:
            _read_file(key, path, problems)
    if len(problems) == before:
        _load_tls_files(mqtt, problems)
    if len(problems) > before:
        return None
    return aiomqtt.TLSParameters(
        ca_certs=None if mqtt.ca_file is None else str(mqtt.ca_file),
        certfile=None if mqtt.cert_file is None else str(mqtt.cert_file),
        keyfile=None if mqtt.key_file is None else str(mqtt.key_file),
    )


def _load_tls_files(mqtt: MqttSection, problems: list[ConfigProblem]) -> None:
    """Load the files into a throwaway context, as paho will, and record what fails."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if mqtt.ca_file is not None:
        try:
            context.load_verify_locations(cafile=mqtt.ca_file)
        except ssl.SSLError as exc:
            problems.append(
                ConfigProblem("mqtt.ca_file", f"holds no usable CA certificate ({exc})")
            )
    if mqtt.cert_file is not None and mqtt.key_file is not None:
        try:
            context.load_cert_chain(mqtt.cert_file, mqtt.key_file, password=_refuse_passphrase)
        except ssl.SSLError as exc:
            if "KEY_VALUES_MISMATCH" in str(exc):
                problems.append(ConfigProblem("mqtt.key_file", "is not the key of mqtt.cert_file"))
            else:
                problems.append(
                    ConfigProblem(
                        "mqtt.cert_file",
                        f"cannot be loaded with mqtt.key_file as an unencrypted PEM pair ({exc})",
                    )
                )


# --------------------------------------------------------------------------- errors

_CREDENTIALS = "check mqtt.username and mqtt.password_file"

# MQTT 5 reason codes, which paho 2 also reports for MQTT 3.1.1 (a 3.1.1 CONNACK code 4
# arrives as 134, code 5 as 135).
_REASONS: dict[int, str] = {
    132: 'the broker does not speak this MQTT version: try mqtt.protocol = "3.1.1"',
    133: "the broker rejected the client identifier",
    134: f"the broker rejected the username or password: {_CREDENTIALS}",
    # mosquitto answers a wrong password with this one, not with 134.
    135: (
        "the broker refused the login as not authorised: check mqtt.username and "
        "mqtt.password_file (a wrong password looks like this), the client certificate "
        "and the broker's ACL"
    ),
    136: "the broker is unavailable right now",
    137: "the broker is too busy to accept the connection",
    138: "the broker has banned this client",
    140: "the broker does not accept this authentication method",
    141: "the broker heard nothing within the keepalive interval and dropped the connection",
    142: (
        "another client connected with the same identifier and took over the session "
        "(are two gateways configured with the same gateway.id?)"
    ),
    149: "the broker refused a packet as too large",
    151: "the broker's quota for this client is exceeded",
    156: "the broker asks to use another server",
    157: "the broker has moved to another server",
    159: "the broker refused the connection because of its connection rate limit",
}
# mosquitto 2.0 closes the older of two connections with one client identifier without
# sending reason code 142, so a lost connection may be a duplicate gateway.id too.
_LOST = (
    "the connection to the broker was lost: the broker or the network went away, or "
    "another client connected with the same identifier (two gateways with one gateway.id?)"
)
_ERROR_CODES: dict[int, str] = {
    MQTTErrorCode.MQTT_ERR_CONN_LOST: _LOST,
    MQTTErrorCode.MQTT_ERR_NO_CONN: "the client is not connected to the broker",
    MQTTErrorCode.MQTT_ERR_KEEPALIVE: "the broker stopped answering keepalive pings",
    MQTTErrorCode.MQTT_ERR_PROTOCOL: "the broker sent something that is not valid MQTT",
    MQTTErrorCode.MQTT_ERR_QUEUE_SIZE: "the client's outgoing queue is full",
    MQTTErrorCode.MQTT_ERR_PAYLOAD_SIZE: "the payload is too large for MQTT",
}
# aiomqtt only learns of a connection dropped before CONNACK when its timeout runs out, so
# a TLS listener that wants a client certificate, or is reached without TLS, ends here too.
_TIMEOUT = (
    "the broker did not answer in time: check the uplink, any firewall, mqtt.host and "
    "mqtt.port; a TLS listener reached without TLS (mqtt.ca_file unset) or one that wants "
    "a client certificate (mqtt.cert_file, mqtt.key_file) looks like this too"
)
_TLS_ALERTS: tuple[tuple[str, str], ...] = (
    (
        "CERTIFICATE_REQUIRED",
        "the broker requires a client certificate: set mqtt.cert_file and mqtt.key_file",
    ),
    (
        "UNKNOWN_CA",
        "the broker does not trust this client's certificate: mqtt.cert_file is not "
        "signed by a CA the broker accepts",
    ),
    (
        "BAD_CERTIFICATE",
        "the broker rejected this client's certificate (mqtt.cert_file)",
    ),
    (
        "CERTIFICATE_EXPIRED",
        "the broker says this client's certificate (mqtt.cert_file) has expired",
    ),
    (
        "WRONG_VERSION_NUMBER",
        "the broker's port does not speak TLS: is mqtt.port the TLS listener "
        "(often 8883), or should mqtt.ca_file be unset?",
    ),
    (
        "KEY_VALUES_MISMATCH",
        "mqtt.key_file is not the key of mqtt.cert_file",
    ),
)


_FLAG_OF_KEY: Final = (
    ("at mqtt.host on mqtt.port", "there"),
    ("mqtt.password_file", "--password-file"),
    ("mqtt.username", "--username"),
    ("mqtt.ca_file", "--ca-file"),
    ("mqtt.cert_file", "--cert-file"),
    ("mqtt.key_file", "--key-file"),
    ("mqtt.protocol", "--protocol"),
    ("mqtt.host", "--host"),
    ("mqtt.port", "--port"),
)


def cli_broker(mqtt: MqttSection) -> str:
    """How ``send`` and ``watch`` name the broker: ``localhost:1883 (--host/--port)``."""
    return f"{mqtt.host}:{mqtt.port} (--host/--port)"


def describe_error(exc: BaseException, *, cli: bool = False) -> str:
    """One sentence for an operator about why talking to the broker failed.

    Follows the exception's causes (aiomqtt re-raises socket and TLS errors as
    :class:`aiomqtt.MqttError`, keeping the original as the context), explains the most
    specific one it recognises and names the ``mqtt.*`` keys to check; the original texts
    follow in parentheses. With ``cli`` (``send``, ``watch``) it names the command line's
    flags instead of the keys; the caller names the broker (:func:`cli_broker`) first.
    """
    sentence = _describe(exc)
    if cli:
        for key, flag in _FLAG_OF_KEY:
            sentence = sentence.replace(key, flag)
    return sentence


def _describe(exc: BaseException) -> str:
    chain = _chain(exc)
    texts: list[str] = []
    for link in chain:
        text = str(link)
        if text and text not in texts:
            texts.append(text)
    original = ": ".join(texts) or type(exc).__name__
    for link in reversed(chain):
        sentence = _explain(link)
        if sentence is not None:
            return f"{sentence} ({original})"
    return f"the connection to the broker failed ({original})"


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and its causes, outermost first (``raise … from None`` included)."""
    links: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in links:
        links.append(current)
        current = current.__cause__ or current.__context__
    return links


def _explain(exc: BaseException) -> str | None:  # noqa: PLR0911 - one return per kind of failure
    if isinstance(exc, ssl.SSLCertVerificationError):
        return _explain_verification(exc)
    if isinstance(exc, ssl.SSLError):
        text = str(exc)
        for marker, sentence in _TLS_ALERTS:
            if marker in text:
                return sentence
        if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
            return (
                "the broker closed the connection during the TLS handshake: is mqtt.port a "
                "TLS listener, and does it want a client certificate (mqtt.cert_file)?"
            )
        return "the TLS connection to the broker failed"
    if isinstance(exc, socket.gaierror):
        return (
            "the broker's name (mqtt.host) cannot be resolved: check the name, and this "
            "machine's DNS and uplink"
        )
    if isinstance(exc, ConnectionRefusedError):
        return (
            "nothing accepts connections at mqtt.host on mqtt.port: is the broker running, "
            "and is that its port?"
        )
    if isinstance(exc, TimeoutError):
        return _TIMEOUT
    if isinstance(exc, ConnectionError):
        return (
            "the broker (or something on the way) closed the connection: with mqtt.ca_file "
            "set, check that mqtt.port is the broker's TLS listener; otherwise see the "
            "broker's log"
        )
    if isinstance(exc, OSError) and exc.errno in {errno.ENETUNREACH, errno.EHOSTUNREACH}:
        return "there is no route to the broker: is the uplink up, and is mqtt.host right?"
    if isinstance(exc, aiomqtt.MqttCodeError):
        return _explain_code(exc.rc)
    if isinstance(exc, aiomqtt.MqttError) and "timed out" in str(exc):
        return _TIMEOUT
    return None


def _explain_verification(exc: ssl.SSLCertVerificationError) -> str:
    code = exc.verify_code
    if code in {9, 10}:  # X509_V_ERR_CERT_NOT_YET_VALID, X509_V_ERR_CERT_HAS_EXPIRED
        return (
            "the broker's certificate is expired or not yet valid: check this machine's "
            "clock (a Raspberry Pi has no battery clock and needs NTP) and the certificate"
        )
    if code in {62, 64}:  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH
        return (
            "the broker's certificate is not issued for mqtt.host: connect by a name or "
            "address the certificate lists"
        )
    return (
        "the broker's certificate is not signed by mqtt.ca_file (or, without one, by a CA "
        "this system trusts): check that mqtt.ca_file is the CA that issued the broker's "
        "certificate"
    )


def _explain_code(rc: int | ReasonCode | None) -> str | None:
    if isinstance(rc, ReasonCode):
        if rc.getName() == "Unspecified error" and rc.packetType == PacketTypes.DISCONNECT:
            return _LOST  # paho reports a dropped socket this way
        return _REASONS.get(rc.value)
    if rc is None:
        return None
    return _ERROR_CODES.get(rc)


# --------------------------------------------------------------------------- topics


@dataclass(frozen=True, slots=True)
class Topics:
    """The topic names of one gateway under a prefix, as PROTOCOL.md fixes them."""

    prefix: str
    gateway: str

    def __post_init__(self) -> None:
        """Refuse an id that is not exactly one topic level."""
        _check_gateway_id(self.gateway)

    def _own(self, *levels: str) -> str:
        return "/".join((self.prefix, self.gateway, *levels))

    @property
    def status(self) -> str:
        """``P/ID/status``: presence, retained; the will clears it."""
        return self._own("status")

    def state(self, component: str) -> str:
        """``P/ID/state/{component}``: one retained snapshot."""
        return self._own("state", component)

    @property
    def events(self) -> str:
        """``P/ID/events``: batches of events."""
        return self._own("events")

    @property
    def logs(self) -> str:
        """``P/ID/logs``: batches of log records."""
        return self._own("logs")

    @property
    def telemetry(self) -> str:
        """``P/ID/telemetry``: batches of metric samples."""
        return self._own("telemetry")

    @property
    def reply(self) -> str:
        """``P/ID/reply``: command replies."""
        return self._own("reply")

    @property
    def cmd(self) -> str:
        """``P/ID/cmd``: commands for this gateway."""
        return self._own("cmd")

    def group_cmd(self, group: str) -> str:
        """``P/group/{group}/cmd``: commands for every gateway in ``group``."""
        return f"{self.prefix}/group/{group}/cmd"

    def group_cmd_pattern(self) -> str:
        """``P/group/+/cmd``: the commands of every group."""
        return f"{self.prefix}/group/+/cmd"

    def all_gateways_pattern(self) -> str:
        """``P/+/#``: everything under the prefix (group commands included)."""
        return f"{self.prefix}/+/#"

    def gateway_pattern(self, gateway: str | None = None) -> str:
        """``P/ID/#`` for ``gateway``, by default this one."""
        gateway = self.gateway if gateway is None else gateway
        _check_gateway_id(gateway)
        return f"{self.prefix}/{gateway}/#"


def _check_gateway_id(gateway: str) -> None:
    if not _GATEWAY_ID.fullmatch(gateway):
        raise ValueError(f"a gateway id is 1-64 letters, digits, '.', '-' or '_': got {gateway!r}")


# --------------------------------------------------------------------------- command line

# MqttSection key -> the flag that overrides it.
_FLAGS: Final = {
    "host": "--host",
    "port": "--port",
    "topic_prefix": "--topic-prefix",
    "protocol": "--protocol",
    "username": "--username",
    "password_file": "--password-file",
    "ca_file": "--ca-file",
    "cert_file": "--cert-file",
    "key_file": "--key-file",
}


def add_broker_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config`` and the broker flags shared by ``watch`` and ``send``.

    Every flag defaults to None, meaning "not given": :func:`mqtt_section_from_args` then
    takes the value from ``--config``, or the built-in default.
    """
    group = parser.add_argument_group(
        "broker", "where the commune broker is and how to log in; flags override --config"
    )
    group.add_argument(
        "--config",
        type=Path,
        metavar="PATH",
        help="take the [mqtt] table of this TOML file (a gateway's configuration will do)",
    )
    group.add_argument("--host", help="broker host name or address (default localhost)")
    group.add_argument("--port", type=int, help="broker port (default 1883)")
    group.add_argument("--topic-prefix", metavar="PREFIX", help="topic prefix (default vg/v1)")
    group.add_argument("--protocol", choices=["5", "3.1.1"], help="MQTT version (default 5)")
    group.add_argument("--username", help="user name to log in with")
    group.add_argument(
        "--password-file", type=Path, metavar="PATH", help="file holding the password"
    )
    group.add_argument(
        "--ca-file", type=Path, metavar="PATH", help="CA certificate that signed the broker's"
    )
    group.add_argument("--cert-file", type=Path, metavar="PATH", help="client certificate")
    group.add_argument("--key-file", type=Path, metavar="PATH", help="client certificate's key")


def mqtt_section_from_args(args: argparse.Namespace) -> MqttSection:
    """The broker settings from ``--config`` (its ``[mqtt]`` table) and the flags.

    A flag wins over the file; what neither gives keeps MqttSection's default. Raises
    :class:`ConfigError` naming the flag (``--port``) or the key (``mqtt.port``).
    """
    values: dict[str, Any] = {}
    source: str | None = None
    config: Path | None = getattr(args, "config", None)
    if config is not None:
        values = _mqtt_table(config)
        source = str(config)
    flags = {key: getattr(args, key, None) for key in _FLAGS}
    values.update({key: value for key, value in flags.items() if value is not None})
    try:
        return MqttSection.model_validate(values)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False):
            field = str(error["loc"][0]) if error["loc"] else ""
            key = _FLAGS[field] if flags.get(field) is not None else f"mqtt.{field}"
            message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
            problems.append(ConfigProblem(key, message.removeprefix("Value error, ")))
        raise ConfigError(problems, source=source) from None


def _mqtt_table(path: Path) -> dict[str, Any]:
    problems: list[ConfigProblem] = []
    raw = _read_file(str(path), path, problems)
    if raw is None:
        raise ConfigError(problems)
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError.single(str(path), "is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError.single(str(path), f"invalid TOML: {exc}") from None
    table = data.get("mqtt", {})
    if not isinstance(table, dict):
        raise ConfigError.single("mqtt", "must be a table", source=str(path))
    return dict(table)
