"""The MQTT client factory, error descriptions, topics and ``watch``, against real mosquitto.

Every broker here is a real mosquitto on 127.0.0.1: the shared plain one from conftest, a
TLS one that wants client certificates, and one that checks passwords. Nothing of aiomqtt
or paho is replaced; every wait is bounded by ``asyncio.timeout``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from gateway.config import MqttSection
from gateway.errors import ConfigError
from gateway.uplink.client import (
    Topics,
    add_broker_arguments,
    describe_error,
    make_client,
    mqtt_section_from_args,
)
from gateway.watch import add_arguments, main, watch
from tests.conftest import REPO, Broker, clean_env, free_port
from tests.tls import Mosquitto, Pki, make_password_file, make_pki

pytestmark = pytest.mark.slow

PROTOCOLS = ["5", "3.1.1"]
USER, PASSWORD = "commune", "đúng-mật-khẩu"


# --------------------------------------------------------------------------- helpers


def section(port: int, **values: Any) -> MqttSection:
    """Broker settings for 127.0.0.1:``port`` plus any other ``mqtt`` keys."""
    return MqttSection.model_validate({"host": "127.0.0.1", "port": port, **values})


def unique(stem: str) -> str:
    """A name no other test (or earlier run on the shared broker) uses."""
    return f"{stem}-{uuid.uuid4().hex[:10]}"


async def round_trip(client: aiomqtt.Client, topic: str, payload: bytes) -> aiomqtt.Message:
    """Subscribe to ``topic``, publish ``payload`` at QoS 1, and return it as received."""
    await client.subscribe(topic, qos=1)
    await client.publish(topic, payload, qos=1)
    async with asyncio.timeout(5):
        async for message in client.messages:
            return message
    raise AssertionError("the subscription ended without a message")


async def next_message(client: aiomqtt.Client, within_s: float) -> aiomqtt.Message | None:
    """The next message within ``within_s`` seconds, or None."""
    try:
        async with asyncio.timeout(within_s):
            return await anext(aiter(client.messages))
    except TimeoutError:
        return None


async def connect_error(mqtt: MqttSection, *, within_s: float = 15) -> aiomqtt.MqttError:
    """Try to connect with ``mqtt`` and return the error it fails with."""
    async with asyncio.timeout(within_s):
        with pytest.raises(aiomqtt.MqttError) as caught:
            async with make_client(mqtt, identifier=unique("failing")):
                pass
    return caught.value


class Output(io.StringIO):
    """A text buffer for ``watch`` to print into, which tests can wait on."""

    def __init__(self) -> None:
        super().__init__()
        self._written = asyncio.Event()

    def write(self, text: str, /) -> int:
        """Store the text and wake whoever waits for output."""
        self._written.set()
        return super().write(text)

    async def wait_for_text(self, text: str, within_s: float = 10) -> str:
        """Wait until ``text`` has been written; returns everything written so far."""
        async with asyncio.timeout(within_s):
            while text not in self.getvalue():
                self._written.clear()
                await self._written.wait()
        return self.getvalue()

    async def wait_for_lines(self, count: int, within_s: float = 10) -> list[Any]:
        """Wait until ``count`` lines have been written; returns them parsed as JSON."""
        async with asyncio.timeout(within_s):
            while len(self.getvalue().splitlines()) < count:
                self._written.clear()
                await self._written.wait()
        return [json.loads(line) for line in self.getvalue().splitlines()]


@contextlib.asynccontextmanager
async def running(task: asyncio.Task[Any]) -> AsyncIterator[asyncio.Task[Any]]:
    """Cancel ``task`` on the way out and wait (bounded) until it has stopped."""
    try:
        yield task
    finally:
        task.cancel()
        async with asyncio.timeout(10):
            with contextlib.suppress(asyncio.CancelledError):
                await task


# --------------------------------------------------------------------------- brokers


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA, server and client certificates, and an unrelated CA (skips without openssl)."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def tls_broker(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """A mosquitto that speaks only TLS and admits clients by their certificate."""
    broker = Mosquitto(
        tmp_path_factory.mktemp("mosquitto-tls"),
        f"""\
        cafile {pki.ca_cert}
        certfile {pki.server_cert}
        keyfile {pki.server_key}
        require_certificate true
        use_identity_as_username true
        allow_anonymous false
        """,
    )
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def password_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """A mosquitto that admits only ``USER`` with ``PASSWORD`` (from mosquitto_passwd)."""
    workdir = tmp_path_factory.mktemp("mosquitto-password")
    make_password_file(workdir / "passwd", USER, PASSWORD)
    broker = Mosquitto(
        workdir,
        f"""\
        allow_anonymous false
        password_file {workdir / "passwd"}
        """,
    )
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def password_file(tmp_path: Path) -> Callable[[str], Path]:
    """Write a password file as an installer would (with a trailing newline)."""

    def write(password: str) -> Path:
        path = tmp_path / unique("password")
        path.write_text(password + "\n", encoding="utf-8")
        return path

    return write


def dynsec_broker(workdir: Path, *, allowed: str) -> Mosquitto:
    """A mosquitto with its dynamic-security plugin where ``USER`` may subscribe only to
    ``allowed`` (skips if the plugin or mosquitto_ctrl is not installed)."""
    plugins = sorted(Path("/usr/lib").glob("*/mosquitto_dynamic_security.so"))
    ctrl = shutil.which("mosquitto_ctrl")
    if not plugins or ctrl is None:
        pytest.skip("mosquitto's dynamic-security plugin is not installed")
    config = workdir / "dynsec.json"
    subprocess.run(
        [ctrl, "dynsec", "init", str(config), USER, PASSWORD], check=True, capture_output=True
    )
    data = json.loads(config.read_text(encoding="utf-8"))
    for role in data["roles"]:  # the role `init` made allows "#"; narrow it
        role["acls"] = [
            {"acltype": "subscribePattern", "topic": allowed, "allow": True},
            {"acltype": "publishClientReceive", "topic": allowed, "allow": True},
        ]
    config.write_text(json.dumps(data), encoding="utf-8")
    return Mosquitto(
        workdir,
        f"""\
        allow_anonymous false
        plugin {plugins[0]}
        plugin_opt_config_file {config}
        """,
    )


# --------------------------------------------------------------------------- make_client


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_round_trip_on_a_nodelay_socket(broker: Broker, protocol: str) -> None:
    """A client built from plain settings connects with either MQTT version, a QoS 1
    message comes back through the broker unchanged, and the socket under the client has
    TCP_NODELAY set, which is what keeps command round trips at about a millisecond."""
    topic = f"test/{unique('echo')}"
    async with make_client(section(broker.port, protocol=protocol), identifier=unique("rt")) as c:
        sock = c._client.socket()
        assert isinstance(sock, socket.socket)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        message = await round_trip(c, topic, "xin chào".encode())
    assert message.payload == "xin chào".encode()
    assert message.qos == 1


async def test_publishes_from_one_round_all_arrive_in_order(broker: Broker) -> None:
    """Two hundred publishes queued in one round of the event loop leave together, in
    the order they were made, and each is acknowledged (the client sends from the loop's
    next round instead of registering a writer per packet)."""
    topic = f"test/{unique('burst')}"
    async with make_client(section(broker.port), identifier=unique("burst")) as client:
        await client.subscribe(topic, qos=1)
        messages = aiter(client.messages)
        async with asyncio.timeout(20):
            await asyncio.gather(
                *(client.publish(topic, str(n).encode(), qos=1) for n in range(200))
            )
            received = [(await anext(messages)).payload for _ in range(200)]
    assert received == [str(n).encode() for n in range(200)]


async def test_a_publish_larger_than_the_socket_buffer_arrives_whole(broker: Broker) -> None:
    """A 12 MB message does not fit the socket's send buffer in one go: what the first
    send leaves over is sent once the socket can take it, and the message arrives whole
    while the loop stays free for a small one published right behind it."""
    topic = f"test/{unique('large')}"
    large = bytes(range(256)) * (12 * 4096)
    async with make_client(section(broker.port), identifier=unique("large")) as client:
        sock = client._client.socket()
        assert isinstance(sock, socket.socket)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) < len(large)
        await client.subscribe(topic, qos=1)
        messages = aiter(client.messages)
        async with asyncio.timeout(30):
            await asyncio.gather(
                client.publish(topic, large, qos=1), client.publish(topic, b"after", qos=1)
            )
            first, second = await anext(messages), await anext(messages)
    assert first.payload == large
    assert second.payload == b"after"


async def test_round_trips_do_not_wait_for_delayed_acks(broker: Broker) -> None:
    """Fifty QoS 1 publish-and-receive round trips take well under 20 ms each (median).
    Without TCP_NODELAY each one waits for the broker's delayed ACK, about 40 ms on
    these machines, so this is what an operator would see as sluggish commands."""
    topic = f"test/{unique('latency')}"
    async with make_client(section(broker.port), identifier=unique("latency")) as client:
        await client.subscribe(topic, qos=1)
        messages = aiter(client.messages)
        samples = []
        async with asyncio.timeout(20):
            for number in range(50):
                started = time.perf_counter()
                await client.publish(topic, str(number).encode(), qos=1)
                received = await anext(messages)
                samples.append(time.perf_counter() - started)
                assert received.payload == str(number).encode()
    assert statistics.median(samples) < 0.020, f"median {statistics.median(samples):.4f} s"


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_persistent_session_receives_what_was_sent_while_away(
    broker: Broker, protocol: str
) -> None:
    """A gateway with a persistent session that was offline still gets the QoS 1 command
    sent to it meanwhile: it reconnects with the same identifier, does not subscribe
    again, and the broker hands over the queued message (MQTT 5 with a session expiry,
    MQTT 3.1.1 with clean_session off)."""
    mqtt = section(broker.port, protocol=protocol, session_expiry_s=60)
    identifier, topic = unique("persistent"), f"test/{unique('cmd')}"
    async with make_client(mqtt, identifier=identifier, persistent_session=True) as client:
        await client.subscribe(topic, qos=1)
    async with make_client(mqtt, identifier=unique("sender")) as sender:
        await sender.publish(topic, b'{"id": "c-1"}', qos=1)
    async with make_client(mqtt, identifier=identifier, persistent_session=True) as client:
        message = await next_message(client, within_s=5)
    assert message is not None, "the queued message was not delivered after reconnecting"
    assert message.payload == b'{"id": "c-1"}'
    # Leave no session behind on the shared broker.
    async with make_client(mqtt, identifier=identifier):
        pass


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_clean_session_forgets_what_was_sent_while_away(
    broker: Broker, protocol: str
) -> None:
    """Without a persistent session (the default, as for ``watch``) nothing is kept:
    after reconnecting, a message sent while the client was away does not arrive."""
    mqtt = section(broker.port, protocol=protocol)
    identifier, topic = unique("clean"), f"test/{unique('cmd')}"
    async with make_client(mqtt, identifier=identifier) as client:
        await client.subscribe(topic, qos=1)
    async with make_client(mqtt, identifier=unique("sender")) as sender:
        await sender.publish(topic, b"{}", qos=1)
    async with make_client(mqtt, identifier=identifier) as client:
        assert await next_message(client, within_s=0.5) is None


async def test_session_expiry_is_what_the_configuration_says(broker: Broker) -> None:
    """With MQTT 5 the broker keeps a session only for ``mqtt.session_expiry_s``: a
    message queued for a client that stays away longer than that is gone when it comes
    back, which shows the expiry interval really reaches the broker."""
    mqtt = section(broker.port, session_expiry_s=1)
    identifier, topic = unique("expiring"), f"test/{unique('cmd')}"
    async with make_client(mqtt, identifier=identifier, persistent_session=True) as client:
        await client.subscribe(topic, qos=1)
    async with make_client(mqtt, identifier=unique("sender")) as sender:
        await sender.publish(topic, b"{}", qos=1)
    await asyncio.sleep(2.5)
    async with make_client(mqtt, identifier=identifier, persistent_session=True) as client:
        assert await next_message(client, within_s=0.5) is None
    async with make_client(mqtt, identifier=identifier):
        pass


async def test_same_identifier_twice_is_described(broker: Broker) -> None:
    """When a second client connects with the same identifier (two gateways installed
    with one gateway.id), the first one is thrown out, and the description names that as
    a possible cause. (mosquitto 2.0 just closes the old connection; brokers that send
    reason code 142, "Session taken over", get a sentence of their own.)"""
    mqtt = section(broker.port)
    identifier = unique("twin")

    async def connect_twin(first: aiomqtt.Client) -> None:
        async with make_client(mqtt, identifier=identifier), asyncio.timeout(5):
            await anext(aiter(first.messages))

    async with make_client(mqtt, identifier=identifier) as first:
        with pytest.raises(aiomqtt.MqttError) as caught:
            await connect_twin(first)
    text = describe_error(caught.value)
    assert text.startswith("the connection to the broker was lost")
    assert "same identifier" in text
    assert "Disconnected during message iteration" in text


# --------------------------------------------------------------------------- TLS


def tls_section(broker: Mosquitto, pki: Pki, **values: Any) -> MqttSection:
    """Settings for the TLS broker with the right CA and the client certificate."""
    files = {"ca_file": pki.ca_cert, "cert_file": pki.client_cert, "key_file": pki.client_key}
    return section(broker.port, **{**files, **values})


async def test_tls_with_client_certificate(tls_broker: Mosquitto, pki: Pki) -> None:
    """With mqtt.ca_file, mqtt.cert_file and mqtt.key_file a gateway connects to a broker
    that accepts only TLS with a client certificate, over a verified TLS connection that
    also has TCP_NODELAY, and messages flow."""
    topic = f"test/{unique('tls')}"
    async with make_client(tls_section(tls_broker, pki), identifier=unique("tls")) as client:
        sock = client._client.socket()
        assert isinstance(sock, ssl.SSLSocket)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        message = await round_trip(client, topic, b'{"online": true}')
    assert message.payload == b'{"online": true}'


async def test_tls_with_the_wrong_ca_is_described(tls_broker: Mosquitto, pki: Pki) -> None:
    """A gateway given the wrong CA file refuses the broker's certificate, and the
    operator reads that the broker's certificate is not signed by mqtt.ca_file, with
    OpenSSL's own words after it."""
    error = await connect_error(tls_section(tls_broker, pki, ca_file=pki.other_ca_cert))
    text = describe_error(error)
    assert "certificate is not signed by mqtt.ca_file" in text
    assert "CERTIFICATE_VERIFY_FAILED" in text


async def test_tls_to_a_plain_port_is_described(broker: Broker, pki: Pki) -> None:
    """Pointing a TLS configuration at the broker's plain port fails at once, and the
    description suggests checking that mqtt.port is the TLS listener."""
    error = await connect_error(section(broker.port, ca_file=pki.ca_cert))
    assert "mqtt.port is the broker's TLS listener" in describe_error(error)


# --------------------------------------------------------------------------- passwords


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_password_login(
    password_broker: Mosquitto, password_file: Callable[[str], Path], protocol: str
) -> None:
    """The password is read from mqtt.password_file (the trailing newline an editor adds
    is not part of it) and the broker admits the user."""
    mqtt = section(
        password_broker.port,
        protocol=protocol,
        username=USER,
        password_file=password_file(PASSWORD),
    )
    async with make_client(mqtt, identifier=unique("login")) as client:
        message = await round_trip(client, f"test/{unique('login')}", b"{}")
    assert message.payload == b"{}"


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_wrong_password_is_described(
    password_broker: Mosquitto, password_file: Callable[[str], Path], protocol: str
) -> None:
    """A wrong password is refused by the broker (mosquitto says 'not authorised'), and the
    description sends the operator to mqtt.username and mqtt.password_file."""
    mqtt = section(
        password_broker.port,
        protocol=protocol,
        username=USER,
        password_file=password_file("sai-mật-khẩu"),
    )
    text = describe_error(await connect_error(mqtt))
    assert "mqtt.username and mqtt.password_file" in text
    assert "wrong password" in text
    assert "[code:135]" in text


async def test_refused_connection_is_described() -> None:
    """With no broker on the port the description asks whether the broker runs and
    whether that is its port, keeping the system's 'Connection refused'."""
    text = describe_error(await connect_error(section(free_port())))
    assert "is the broker running" in text
    assert "Connection refused" in text


def test_unresolvable_name_timeout_and_takeover_are_described() -> None:
    """A name that does not resolve, a broker that never answers and a broker that says
    another client took the session over get their own sentences. (Built from the
    exceptions aiomqtt raises: resolving a real name would leave the loopback network,
    and mosquitto 2.0 sends no reason code on a takeover.)"""
    try:
        try:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        except OSError as exc:
            raise aiomqtt.MqttError(str(exc)) from None  # what Client.__aenter__ does
    except aiomqtt.MqttError as wrapped:
        unresolved = describe_error(wrapped)
    assert "mqtt.host" in unresolved
    assert "cannot be resolved" in unresolved
    assert "Name or service not known" in unresolved
    timed_out = describe_error(aiomqtt.MqttError("Operation timed out"))
    assert timed_out.startswith("the broker did not answer in time")
    assert timed_out.endswith("(Operation timed out)")
    takeover = aiomqtt.MqttCodeError(ReasonCode(PacketTypes.DISCONNECT, "Session taken over"))
    assert "took over the session" in describe_error(takeover)
    assert describe_error(takeover).endswith("([code:142] Session taken over)")


# --------------------------------------------------------------------------- ConfigError


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"username": USER, "password_file": "missing-password"}, "mqtt.password_file"),
        ({"password_file": "password"}, "mqtt.username"),
        ({"username": USER, "password_file": "empty"}, "mqtt.password_file"),
        ({"ca_file": "missing-ca.crt"}, "mqtt.ca_file"),
        ({"ca_file": "password"}, "mqtt.ca_file"),
        ({"cert_file": "password"}, "mqtt.key_file"),
        ({"key_file": "password"}, "mqtt.cert_file"),
    ],
)
async def test_config_errors_name_the_key(tmp_path: Path, values: dict[str, str], key: str) -> None:
    """Mistakes visible before connecting (a missing or empty password file, a password
    without a user name, a CA file that is missing or holds no certificate, a certificate
    without its key or the other way round) raise ConfigError naming the mqtt key."""
    (tmp_path / "password").write_text(PASSWORD + "\n", encoding="utf-8")
    (tmp_path / "empty").write_text("\n", encoding="utf-8")
    paths = {name: tmp_path / value for name, value in values.items() if name != "username"}
    mqtt = section(1883, **{**values, **paths})
    with pytest.raises(ConfigError) as caught:
        make_client(mqtt, identifier="never-connects")
    assert [problem.key for problem in caught.value.problems] == [key]


async def test_config_errors_come_all_at_once(tmp_path: Path, pki: Pki) -> None:
    """Every problem is reported in one go, each under its key, so an installer fixes
    them in one pass; a key that is not the certificate's own key is one of them."""
    mqtt = section(
        1883,
        username=USER,
        password_file=tmp_path / "missing",
        cert_file=pki.client_cert,
        key_file=pki.server_key,
    )
    with pytest.raises(ConfigError) as caught:
        make_client(mqtt, identifier="never-connects")
    assert {problem.key for problem in caught.value.problems} == {
        "mqtt.password_file",
        "mqtt.key_file",
    }
    assert "is not the key of mqtt.cert_file" in str(caught.value)


# --------------------------------------------------------------------------- topics


def test_topics_follow_the_protocol() -> None:
    """The topic names are exactly those of PROTOCOL.md, for a gateway and a prefix, and a
    gateway id that is not one topic level is refused."""
    topics = Topics("vg/v1", "ht.camxuyen.dongtrung")
    assert topics.status == "vg/v1/ht.camxuyen.dongtrung/status"
    assert topics.state("relays") == "vg/v1/ht.camxuyen.dongtrung/state/relays"
    assert topics.events == "vg/v1/ht.camxuyen.dongtrung/events"
    assert topics.logs == "vg/v1/ht.camxuyen.dongtrung/logs"
    assert topics.telemetry == "vg/v1/ht.camxuyen.dongtrung/telemetry"
    assert topics.reply == "vg/v1/ht.camxuyen.dongtrung/reply"
    assert topics.cmd == "vg/v1/ht.camxuyen.dongtrung/cmd"
    assert topics.group_cmd("commune.cambinh") == "vg/v1/group/commune.cambinh/cmd"
    assert topics.group_cmd_pattern() == "vg/v1/group/+/cmd"
    assert topics.all_gateways_pattern() == "vg/v1/+/#"
    assert topics.gateway_pattern() == "vg/v1/ht.camxuyen.dongtrung/#"
    assert topics.gateway_pattern("other") == "vg/v1/other/#"
    for bad in ("a/b", "+", "#", ""):
        with pytest.raises(ValueError, match="gateway id"):
            Topics("vg/v1", bad)


# --------------------------------------------------------------------------- command line


def watch_args(*argv: str) -> argparse.Namespace:
    """Parse ``watch`` options as the command line would."""
    parser = argparse.ArgumentParser(prog="village-gateway watch")
    add_arguments(parser)
    return parser.parse_args(argv)


def test_broker_settings_from_a_file_and_flags(tmp_path: Path) -> None:
    """``--config`` takes the [mqtt] table of a gateway's configuration file, each flag
    overrides its key, and bad values are named by the flag or key that brought them."""
    config = tmp_path / "gateway.toml"
    config.write_text(
        '[gateway]\nid = "gw"\n\n[mqtt]\nhost = "127.0.0.1"\nport = 1884\ntopic_prefix = "x/v1"\n',
        encoding="utf-8",
    )
    mqtt = mqtt_section_from_args(watch_args("--config", str(config), "--port", "1885"))
    assert (mqtt.host, mqtt.port, mqtt.topic_prefix) == ("127.0.0.1", 1885, "x/v1")
    assert mqtt_section_from_args(watch_args()).port == 1883
    with pytest.raises(ConfigError) as caught:
        mqtt_section_from_args(watch_args("--port", "70000", "--topic-prefix", "a/#"))
    assert {p.key for p in caught.value.problems} == {"--port", "--topic-prefix"}
    config.write_text("[mqtt]\nprot = 1883\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"mqtt\.prot: unknown key"):
        mqtt_section_from_args(watch_args("--config", str(config)))
    parser = argparse.ArgumentParser()
    add_broker_arguments(parser)
    assert parser.parse_args(["--ca-file", "ca.crt"]).ca_file == Path("ca.crt")


async def test_watch_command_reports_bad_settings(tmp_path: Path) -> None:
    """``watch`` with a password file that does not exist, or a gateway id with a slash,
    exits with status 2 and names the problem on stderr, without trying to connect."""
    err = io.StringIO()
    args = watch_args("--username", USER, "--password-file", str(tmp_path / "nope"))
    async with asyncio.timeout(5):
        assert await main(args, out=io.StringIO(), err=err) == 2
    assert "mqtt.password_file: no such file" in err.getvalue()
    err = io.StringIO()
    async with asyncio.timeout(5):
        assert await main(watch_args("--gateway", "a/b"), out=io.StringIO(), err=err) == 2
    assert "--gateway" in err.getvalue()


# --------------------------------------------------------------------------- watch


async def test_watch_prints_one_json_line_per_message(broker: Broker) -> None:
    """``watch`` shows a retained status that was there before it started (retained true),
    then live messages: a JSON object decoded, plain text as text, and bytes that are not
    UTF-8 as base64, each with its topic and QoS, one JSON line each."""
    prefix = f"{unique('w')}/v1"
    mqtt = section(broker.port, topic_prefix=prefix)
    status = {"online": True, "version": "0.1.0", "clock_synced": False}
    async with make_client(mqtt, identifier=unique("gw")) as gateway:
        await gateway.publish(f"{prefix}/gw1/status", json.dumps(status), qos=1, retain=True)
        out, err = Output(), Output()
        args = watch_args(
            *("--host", "127.0.0.1", "--port", str(broker.port), "--topic-prefix", prefix)
        )
        async with running(asyncio.create_task(main(args, out=out, err=err))):
            await err.wait_for_text("watch: connected to")
            await gateway.publish(f"{prefix}/gw1/logs", "đèn sân bật", qos=1)
            await gateway.publish(f"{prefix}/group/commune.test/cmd", b"\xff\x00\xfe", qos=0)
            lines = await out.wait_for_lines(3)
        await gateway.publish(f"{prefix}/gw1/status", b"", qos=1, retain=True)
    assert lines == [
        {"topic": f"{prefix}/gw1/status", "retained": True, "qos": 1, "payload": status},
        {"topic": f"{prefix}/gw1/logs", "retained": False, "qos": 1, "payload": "đèn sân bật"},
        {
            "topic": f"{prefix}/group/commune.test/cmd",
            "retained": False,
            "qos": 0,
            "payload": "/wD+",
            "encoding": "base64",
        },
    ]
    assert f"watching {prefix}/+/#" in err.getvalue()


async def test_watch_one_gateway(broker: Broker) -> None:
    """``watch --gateway gw1`` prints what gw1 publishes and every group command, but
    nothing from gw2."""
    prefix = f"{unique('w')}/v1"
    mqtt = section(broker.port, topic_prefix=prefix)
    out, err = Output(), Output()
    async with (
        make_client(mqtt, identifier=unique("gw")) as gateway,
        running(asyncio.create_task(watch(mqtt, gateway="gw1", out=out, err=err))),
    ):
        await err.wait_for_text("watch: connected to")
        await gateway.publish(f"{prefix}/gw2/events", b'{"n": 2}', qos=1)
        await gateway.publish(f"{prefix}/gw1/events", b'{"n": 1}', qos=1)
        await gateway.publish(f"{prefix}/group/g/cmd", b'{"n": 3}', qos=1)
        # The broker keeps one publisher's order: a wrong line would come before this one.
        await gateway.publish(f"{prefix}/gw1/events", b'{"n": 4}', qos=1)
        await out.wait_for_text('{"n": 4}')
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["payload"] for line in lines] == [{"n": 1}, {"n": 3}, {"n": 4}]


async def test_watch_waits_for_the_broker_and_reconnects(tmp_path: Path) -> None:
    """Started while the broker is down, ``watch`` says why it cannot connect and keeps
    trying; once the broker is up it connects and prints messages; when the broker goes
    away again it says it lost the connection."""
    broker = Mosquitto(tmp_path, "allow_anonymous true\n")
    prefix = f"{unique('w')}/v1"
    mqtt = section(broker.port, topic_prefix=prefix, max_backoff_s=1)
    out, err = Output(), Output()
    try:
        async with running(asyncio.create_task(watch(mqtt, gateway=None, out=out, err=err))):
            text = await err.wait_for_text("cannot connect to")
            assert (
                f"cannot connect to 127.0.0.1:{broker.port} (--host/--port): nothing accepts"
                " connections there" in text
            )
            assert "retrying in" in text
            await asyncio.to_thread(broker.start)
            await err.wait_for_text("watch: connected to")
            async with make_client(mqtt, identifier=unique("gw")) as gateway:
                await gateway.publish(f"{prefix}/gw1/reply", b'{"id": "c-9"}', qos=1)
            lines = await out.wait_for_lines(1)
            await asyncio.to_thread(broker.stop)
            await err.wait_for_text("lost the connection to")
    finally:
        broker.stop()
    assert lines[0]["payload"] == {"id": "c-9"}


async def test_watch_says_when_the_acl_refuses_it(
    tmp_path: Path, password_file: Callable[[str], Path]
) -> None:
    """A user whose ACL does not cover the prefix would otherwise watch in silence
    forever; ``watch`` logs in, then says that the broker refused its subscription.
    (mosquitto's plain acl_file grants every subscription and filters deliveries, so the
    broker here uses its dynamic-security plugin, which refuses at SUBSCRIBE.)"""
    broker = dynsec_broker(tmp_path, allowed="test/#")
    broker.start()
    mqtt = section(
        broker.port, topic_prefix="vg/v1", username=USER, password_file=password_file(PASSWORD)
    )
    out, err = Output(), Output()
    try:
        async with running(asyncio.create_task(watch(mqtt, gateway=None, out=out, err=err))):
            text = await err.wait_for_text("refused the subscription")
    finally:
        broker.stop()
    assert f"watch: connected to 127.0.0.1:{broker.port} (--host/--port)" in text
    assert "the broker refused the subscription to vg/v1/+/#" in text
    assert "ACL" in text, text


WATCH_SCRIPT = """
import argparse, sys
from gateway.watch import add_arguments, run
parser = argparse.ArgumentParser()
add_arguments(parser)
sys.exit(run(parser.parse_args()))
"""


async def test_watch_process_prints_lines_and_stops_on_ctrl_c(broker: Broker) -> None:
    """Run as its own process, as ``village-gateway watch`` will be, the watcher prints
    each message as a line on stdout at once (so ``| jq`` works live) and Ctrl-C ends it
    with exit status 130."""
    prefix = f"{unique('w')}/v1"
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-c", WATCH_SCRIPT, "--host", "127.0.0.1"),
        *("--port", str(broker.port), "--topic-prefix", prefix, "--gateway", "gw1"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
        env=clean_env(),
    )
    assert process.stdout is not None
    assert process.stderr is not None
    try:
        async with asyncio.timeout(15):
            connected = await process.stderr.readline()
            assert connected.startswith(b"watch: connected to"), connected
            async with make_client(section(broker.port), identifier=unique("gw")) as gateway:
                await gateway.publish(f"{prefix}/gw1/events", b'{"seq": 1}', qos=1)
            line = json.loads(await process.stdout.readline())
            process.send_signal(signal.SIGINT)
            status = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert line == {
        "topic": f"{prefix}/gw1/events",
        "retained": False,
        "qos": 1,
        "payload": {"seq": 1},
    }
    assert status == 130
