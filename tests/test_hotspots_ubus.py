"""OpenWrt client counts against a ubus-speaking aiohttp server on 127.0.0.1.

The server below plays uhttpd's ``/ubus`` endpoint the way the access point does:
``session login`` with the null session id hands out a session, calls with an unknown
or expired session get JSON-RPC error -32002 "Access denied", a refused login is ubus
status 6, and the ACL of a session decides which objects it may call.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from pydantic import ValidationError
from structlog.testing import capture_logs

from gateway.config import HotspotConfig, TcpProbe, UbusConfig, UplinkSection
from gateway.hotspots import HotspotMonitor, IcmpPermission
from gateway.hotspots.ubus import NULL_SESSION, UbusClient
from gateway.state import StateStore

LOOPBACK = "127.0.0.1"
USER, PASSWORD = "vg-monitor", "correct horse"


@dataclass
class FakeAp:
    """The state of the ubus test server, which each test steers."""

    stations: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    sessions: dict[str, str] = field(default_factory=dict)
    """Session id → user name."""
    acl: dict[str, set[tuple[str, str]]] = field(default_factory=dict)
    """User → (object pattern, method) pairs it may call."""
    mode: str = "normal"
    """"normal", "garbage" (not JSON), "wrong shape", "500" or "hang"."""
    logins: int = 0
    denied: int = 0
    url: str = ""
    release: asyncio.Event = field(default_factory=asyncio.Event)
    """Set at teardown: a hanging answer ends then, so the server can stop."""

    def forget_sessions(self) -> None:
        """What an expiry or a reboot of the access point does to every session."""
        self.sessions.clear()

    def allowed(self, user: str, obj: str, method: str) -> bool:
        return any(
            (pattern == obj or (pattern.endswith("*") and obj.startswith(pattern[:-1])))
            and wanted == method
            for pattern, wanted in self.acl.get(user, set())
        )


def _answer(request_id: object, **body: Any) -> web.Response:
    return web.json_response({"jsonrpc": "2.0", "id": request_id, **body})


def _login(ap: FakeAp, request_id: object, args: dict[str, Any]) -> web.Response:
    if (args.get("username"), args.get("password")) != (USER, PASSWORD):
        return _answer(request_id, result=[6])
    ap.logins += 1
    sid = secrets.token_hex(16)
    ap.sessions[sid] = args["username"]
    return _answer(request_id, result=[0, {"ubus_rpc_session": sid, "timeout": 300}])


def _call(ap: FakeAp, request_id: object, obj: str, args: dict[str, Any]) -> web.Response:
    if obj.startswith("hostapd."):
        interface = obj.removeprefix("hostapd.")
        if interface not in ap.stations:
            return _answer(request_id, error={"code": -32000, "message": "Object not found"})
        data = {"freq": 2437, "clients": ap.stations[interface]}
        return _answer(request_id, result=[0, data])
    macs = list(ap.stations.get(args.get("device", ""), {}))
    return _answer(request_id, result=[0, {"results": [{"mac": mac} for mac in macs]}])


def _ubus_app(ap: FakeAp) -> web.Application:
    async def ubus(request: web.Request) -> web.StreamResponse:
        if ap.mode == "hang":
            await ap.release.wait()
        if ap.mode == "500":
            return web.Response(status=500, text="uhttpd: internal error")
        if ap.mode == "garbage":
            return web.Response(text='{"jsonrpc": "2.0", "result": [0, {"clients": ')
        call = await request.json()
        if ap.mode == "wrong shape":
            return _answer(call["id"], result="ok")
        session, obj, method, args = call["params"]
        if (obj, method) == ("session", "login") and session == NULL_SESSION:
            return _login(ap, call["id"], args)
        user = ap.sessions.get(session)
        if user is None or not ap.allowed(user, obj, method):
            ap.denied += 1
            return _answer(call["id"], error={"code": -32002, "message": "Access denied"})
        return _call(ap, call["id"], obj, args)

    app = web.Application()
    app.router.add_post("/ubus", ubus)
    return app


def _station(*, assoc: bool = True) -> dict[str, Any]:
    return {"auth": True, "assoc": assoc, "authorized": assoc, "signal": -61}


@pytest.fixture
async def ap() -> AsyncIterator[FakeAp]:
    """An access point with two radios: 2 associated + 1 authenticating, and 1."""
    state = FakeAp(
        stations={
            "wlan0": {
                "aa:00:00:00:00:01": _station(),
                "aa:00:00:00:00:02": _station(),
                "aa:00:00:00:00:03": _station(assoc=False),
            },
            "wlan1": {"aa:00:00:00:00:04": _station()},
        },
        acl={USER: {("hostapd.*", "get_clients"), ("iwinfo", "assoclist")}},
    )
    runner = web.AppRunner(_ubus_app(state), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, LOOPBACK, 0)
    await site.start()
    port = runner.addresses[0][1]
    state.url = f"http://{LOOPBACK}:{port}/ubus"
    yield state
    state.release.set()
    await runner.cleanup()


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    """The credentials file an installer writes (mode 0600), with a trailing newline."""
    path = tmp_path / "ubus-password"
    path.write_text(PASSWORD + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path


def _config(ap: FakeAp, password_file: Path, **overrides: Any) -> UbusConfig:
    values: dict[str, Any] = {
        "url": ap.url,
        "username": USER,
        "password_file": password_file,
        "interfaces": ["wlan0", "wlan1"],
        "timeout_s": 2.0,
    }
    return UbusConfig(**(values | overrides))


# -- the client -------------------------------------------------------------------------


async def test_counts_associated_clients_over_hostapd_and_iwinfo(
    ap: FakeAp, password_file: Path
) -> None:
    """Both radios are asked and summed: 2 associated on wlan0 (the third station is
    still authenticating and does not count) plus 1 on wlan1. iwinfo's association list
    gives its own view (3 + 1). One login serves every later cycle."""
    client = UbusClient(_config(ap, password_file))
    first = await client.count()
    second = await client.count()
    iwinfo = await UbusClient(_config(ap, password_file, method="iwinfo")).count()
    assert (first.clients, first.reason, dict(first.per_interface)) == (
        3,
        None,
        {"wlan0": 2, "wlan1": 1},
    )
    assert second.clients == 3
    assert client.logins == 1
    assert (iwinfo.clients, iwinfo.reason) == (4, None)


async def test_expired_session_is_renewed_with_a_new_login(ap: FakeAp, password_file: Path) -> None:
    """The access point forgets every session (expiry or reboot) and answers "Access
    denied"; the client logs in again once and the count comes through in the same call.
    """
    client = UbusClient(_config(ap, password_file, interfaces=["wlan0"]))
    assert (await client.count()).clients == 2
    ap.forget_sessions()
    ap.stations["wlan0"]["aa:00:00:00:00:09"] = _station()
    renewed = await client.count()
    assert (renewed.clients, renewed.reason) == (3, None)
    assert ap.denied == 1
    assert (client.logins, ap.logins) == (2, 2)


async def test_wrong_password_is_a_clear_reason_not_a_crash(
    ap: FakeAp, password_file: Path
) -> None:
    """A refused login (ubus status 6) leaves the count unknown — None, never 0 — with a
    reason that says what to fix; fixing the file works without a restart."""
    password_file.write_text("wrong\n", encoding="utf-8")
    client = UbusClient(_config(ap, password_file))
    refused = await client.count()
    assert (refused.clients, refused.reason) == (None, "login refused: wrong username or password")
    password_file.write_text(PASSWORD, encoding="utf-8")
    assert (await client.count()).clients == 3


async def test_acl_without_the_method_is_permission_denied(ap: FakeAp, password_file: Path) -> None:
    """With a fresh session still denied, the reason names the missing ACL grant, and
    the client does not loop: one retry after one new login, then it stops."""
    ap.acl[USER] = {("iwinfo", "assoclist")}
    client = UbusClient(_config(ap, password_file, interfaces=["wlan0"]))
    result = await client.count()
    assert result.clients is None
    assert result.reason is not None
    assert result.reason.startswith("permission denied")
    assert "hostapd.wlan0 get_clients" in result.reason
    assert (ap.denied, ap.logins) == (2, 2)


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("garbage", "malformed reply: not JSON"),
        ("wrong shape", "malformed reply: no ubus status"),
        ("500", "http 500"),
    ],
)
async def test_bad_answers_leave_the_count_unknown_with_the_reason(
    ap: FakeAp, password_file: Path, mode: str, reason: str
) -> None:
    """Malformed JSON, a JSON-RPC answer of the wrong shape and an HTTP 500 each give
    ``None`` and a reason; nothing raises."""
    ap.mode = mode
    result = await UbusClient(_config(ap, password_file)).count()
    assert (result.clients, result.reason) == (None, reason)


async def test_unknown_interface_missing_file_refused_and_hanging(
    ap: FakeAp, password_file: Path, tmp_path: Path
) -> None:
    """A radio the AP does not have, an unreadable password file, nothing listening and
    an AP that never answers: each has its own reason, the last within ``timeout_s``."""
    missing_radio = await UbusClient(_config(ap, password_file, interfaces=["wlan7"])).count()
    no_file = await UbusClient(_config(ap, tmp_path / "nope")).count()
    refused = await UbusClient(
        _config(ap, password_file, url=f"http://{LOOPBACK}:{_closed_port()}/ubus")
    ).count()
    ap.mode = "hang"
    loop = asyncio.get_running_loop()
    started = loop.time()
    hanging = await UbusClient(_config(ap, password_file, timeout_s=0.3)).count()
    elapsed = loop.time() - started
    assert missing_radio.reason == "rpc error -32000: Object not found"
    assert no_file.reason is not None
    assert "cannot be read" in no_file.reason
    assert refused.reason == "refused"
    assert hanging.reason == "timeout"
    assert elapsed < 2


def _closed_port() -> int:
    import socket  # noqa: PLC0415

    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


# -- in the monitor ---------------------------------------------------------------------


async def _listening() -> asyncio.Server:
    async def close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    return await asyncio.start_server(close, LOOPBACK, 0)


async def test_monitor_publishes_clients_and_survives_bad_answers(
    ap: FakeAp, password_file: Path
) -> None:
    """The snapshot's ``clients`` follows the access point; malformed JSON makes it null
    with ``clients_reason`` (logged once over several cycles) while the hotspot stays
    ``up``, since its probes still answer; when the AP recovers the count is back, and a
    session lost in between is renewed without any warning."""
    server = await _listening()
    port = server.sockets[0].getsockname()[1]
    state = StateStore()

    def sink(event: dict[str, Any]) -> None:
        del event

    monitor = HotspotMonitor(
        {
            "hall": HotspotConfig(
                host=LOOPBACK,
                probes=[TcpProbe(kind="tcp", port=port)],
                ubus=_config(ap, password_file),
            )
        },
        UplinkSection(),
        state=state,
        on_event=sink,
        permission=IcmpPermission(permitted=True, detail="not used"),
    )
    try:
        with capture_logs() as logs:
            await monitor.check("hall")
            await monitor.check("hall")
            hall = _hall(state)
            assert (hall["state"], hall["clients"], hall["clients_reason"]) == ("up", 3, None)
            ap.mode = "garbage"
            for _ in range(3):
                await monitor.check("hall")
            hall = _hall(state)
            assert (hall["state"], hall["clients"]) == ("up", None)
            assert hall["clients_reason"] == "malformed reply: not JSON"
            assert (hall["clients_reason_code"], hall["clients_reason_params"]) == (
                "clients_malformed",
                {"detail": "not JSON"},
            )
            ap.mode = "normal"
            ap.forget_sessions()
            await monitor.check("hall")
            assert _hall(state)["clients"] == 3
        telemetry = monitor.telemetry()
    finally:
        server.close()
        await server.wait_closed()
    names = [line["event"] for line in logs]
    assert names.count("hotspot.clients_unknown") == 1
    assert names.count("hotspot.clients_back") == 1
    assert telemetry["hotspots"]["hall"]["clients"] == 3
    assert json.dumps(state.snapshot("hotspots"))  # the snapshot stays plain JSON


def _hall(state: StateStore) -> dict[str, Any]:
    snapshot = state.snapshot("hotspots")
    assert snapshot is not None
    hall: dict[str, Any] = snapshot["hotspots"]["hall"]
    return hall


# -- configuration ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"url": "http://bad_host!/ubus"}, "names no valid host"),
        ({"url": "ftp://127.0.0.1/ubus"}, "should match pattern"),
        ({"interfaces": ["wlan0", "wlan 1"]}, "not a wifi interface name"),
        ({"interfaces": []}, "at least 1 item"),
        ({"method": "snmp"}, "'hostapd' or 'iwinfo'"),
        ({"username": ""}, "at least 1 character"),
    ],
)
def test_bad_ubus_settings_are_config_errors(
    overrides: dict[str, Any], message: str, tmp_path: Path
) -> None:
    """Each bad value of a ``ubus`` table is refused when the file is read."""
    values = {
        "url": "http://127.0.0.1/ubus",
        "username": USER,
        "password_file": tmp_path / "pw",
    }
    with pytest.raises(ValidationError, match=message):
        UbusConfig(**(values | overrides))


def test_ubus_timeout_must_fit_the_interval(tmp_path: Path) -> None:
    """Like every probe's, the ubus timeout must be shorter than the hotspot's interval."""
    ubus = UbusConfig(
        url="http://127.0.0.1/ubus", username=USER, password_file=tmp_path / "pw", timeout_s=10
    )
    with pytest.raises(ValidationError, match="must be shorter than interval_s"):
        HotspotConfig(host=LOOPBACK, interval_s=5, ubus=ubus)
