"""Hotspot monitoring against real servers on 127.0.0.1 that the tests start themselves.

No probe here leaves the machine: TCP, HTTP and DNS targets are asyncio and aiohttp
servers on loopback ports the kernel hands out, and the ICMP path is checked against this
machine's own closed ``net.ipv4.ping_group_range``.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import struct
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from gateway.component import Health
from gateway.config import (
    DnsProbe,
    HotspotConfig,
    HttpProbe,
    IcmpProbe,
    Settings,
    TcpProbe,
    UplinkSection,
    load_settings,
)
from gateway.errors import ConfigError
from gateway.hotspots import (
    HotspotMonitor,
    Hysteresis,
    IcmpPermission,
    Outcome,
    RollingWindows,
    icmp_permission,
)
from gateway.hotspots.health import QUALITY_CYCLES
from gateway.hotspots.probes import probe_dns, probe_http, probe_icmp, probe_tcp
from gateway.hotspots.windows import DAY_BUCKETS, HOUR_BUCKETS
from gateway.state import StateStore

LOOPBACK = "127.0.0.1"
Events = list[dict[str, Any]]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def hanging_port() -> AsyncIterator[int]:
    """A TCP server that accepts every connection and then never says a word."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await reader.read()  # until the client gives up

    server = await asyncio.start_server(hold, LOOPBACK, 0)
    yield int(server.sockets[0].getsockname()[1])
    for writer in held:
        writer.close()
    server.close()
    await server.wait_closed()


@pytest.fixture
async def listening_port() -> AsyncIterator[int]:
    """A TCP server that accepts and closes at once: an access point that is up."""

    async def close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(close, LOOPBACK, 0)
    yield int(server.sockets[0].getsockname()[1])
    server.close()
    await server.wait_closed()


Script = list[str]
"""What the scripted HTTP server does next: "ok", "500" or "slow" (200 after 0.55 s)."""


@pytest.fixture
async def http_server() -> AsyncIterator[tuple[str, Script]]:
    """An aiohttp server: ``/ok`` is 200, ``/broken`` 500, ``/scripted`` follows a script."""
    script: Script = []

    async def scripted(request: web.Request) -> web.Response:
        step = script.pop(0) if script else "ok"
        if step == "slow":
            await asyncio.sleep(0.55)
        return web.Response(status=500 if step == "500" else 200, text=step)

    app = web.Application()
    app.router.add_get("/ok", _ok)
    app.router.add_get("/broken", _broken)
    app.router.add_get("/scripted", scripted)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = _free_port()
    site = web.TCPSite(runner, LOOPBACK, port)
    await site.start()
    yield f"http://{LOOPBACK}:{port}", script
    await runner.cleanup()


async def _ok(request: web.Request) -> web.Response:
    return web.Response(text="hello")


async def _broken(request: web.Request) -> web.Response:
    return web.Response(status=500, text="oops")


class _DnsServer(asyncio.DatagramProtocol):
    """Answers A queries: ``good.test`` resolves, others are NXDOMAIN; or stays mute."""

    def __init__(self, *, mute: bool) -> None:
        self.mute = mute
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if self.mute or self.transport is None:
            return
        query_id = struct.unpack_from("!H", data)[0]
        question = data[12:]
        found = question.startswith(b"\x04good\x04test\x00")
        flags = 0x8180 if found else 0x8183
        header = struct.pack("!HHHHHH", query_id, flags, 1, int(found), 0, 0)
        answer = struct.pack("!HHHIH4s", 0xC00C, 1, 1, 60, 4, socket.inet_aton("127.0.0.2"))
        self.transport.sendto(header + question + (answer if found else b""), addr)


@pytest.fixture
async def dns_server() -> AsyncIterator[Callable[[bool], Awaitable[str]]]:
    """Start UDP DNS servers on loopback; each call returns its ``host:port``."""
    transports: list[asyncio.BaseTransport] = []

    async def start(mute: bool) -> str:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _DnsServer(mute=mute), local_addr=(LOOPBACK, 0)
        )
        transports.append(transport)
        return f"{LOOPBACK}:{transport.get_extra_info('sockname')[1]}"

    yield start
    for transport in transports:
        transport.close()


def _monitor(
    hotspots: dict[str, HotspotConfig],
    *,
    uplink: UplinkSection | None = None,
    permission: IcmpPermission | None = None,
) -> tuple[HotspotMonitor, StateStore, Events]:
    state = StateStore()
    events: Events = []

    def sink(event: dict[str, Any]) -> None:
        events.append(event)

    monitor = HotspotMonitor(
        hotspots,
        uplink or UplinkSection(),
        state=state,
        on_event=sink,
        permission=permission,
    )
    return monitor, state, events


def _hotspot(*probes: Any, interval_s: float = 30, label: str = "") -> HotspotConfig:
    return HotspotConfig(host=LOOPBACK, label=label, interval_s=interval_s, probes=list(probes))


# -- probes -----------------------------------------------------------------------------


async def test_tcp_probe_to_a_closed_port_is_refused() -> None:
    """A port with nothing listening answers with a reset at once.

    The probe must report ``refused`` (not a timeout), well within its timeout, because
    "the router is there but the service is off" and "nothing answers" call for different
    trips to the cultural house.
    """
    started = time.monotonic()
    result = await probe_tcp(LOOPBACK, _free_port(), timeout_s=2)
    assert not result.ok
    assert result.reason == "refused"
    assert time.monotonic() - started < 1


async def test_hanging_server_connects_but_http_times_out(hanging_port: int) -> None:
    """A server that accepts and then never answers is up for TCP and down for HTTP.

    The HTTP probe must give up at its own timeout with ``timeout``, so a stuck web
    interface never stalls the cycle beyond the configured bound.
    """
    tcp = await probe_tcp(LOOPBACK, hanging_port, timeout_s=1)
    assert tcp.ok
    assert tcp.rtt_ms is not None
    started = time.monotonic()
    http = await probe_http(f"http://{LOOPBACK}:{hanging_port}/", 200, timeout_s=0.3)
    elapsed = time.monotonic() - started
    assert not http.ok
    assert http.reason == "timeout"
    assert 0.25 < elapsed < 0.9


async def test_http_probe_reads_status_and_latency(http_server: tuple[str, Script]) -> None:
    """A 200 where 200 is expected is good and timed; a 500 fails as ``http 500``.

    An unexpected status still carries the latency, because the server did answer.
    """
    base, _ = http_server
    good = await probe_http(f"{base}/ok", 200, timeout_s=2)
    bad = await probe_http(f"{base}/broken", 200, timeout_s=2)
    assert good.ok
    assert good.rtt_ms is not None
    assert good.rtt_ms > 0
    assert not bad.ok
    assert bad.reason == "http 500"
    assert bad.rtt_ms is not None


async def test_dns_probe_resolves_times_out_and_reports_nxdomain(
    dns_server: Callable[[bool], Awaitable[str]],
) -> None:
    """Through a local resolver: a known name resolves, an unknown one is ``nxdomain``.

    A resolver that never answers gives ``timeout`` at the probe's bound, and a name that
    is not a valid DNS name is refused before anything is sent.
    """
    talking = await dns_server(False)
    mute = await dns_server(True)
    good = await probe_dns("good.test", talking, timeout_s=1)
    missing = await probe_dns("nowhere.test", talking, timeout_s=1)
    started = time.monotonic()
    silent = await probe_dns("good.test", mute, timeout_s=0.3)
    elapsed = time.monotonic() - started
    invalid = await probe_dns("bad..name", talking, timeout_s=1)
    assert good.ok, good
    assert (missing.ok, missing.reason) == (False, "nxdomain")
    assert (silent.ok, silent.reason) == (False, "timeout")
    assert elapsed < 0.8
    assert (invalid.ok, invalid.reason) == (False, "bad name")


# -- ICMP permission --------------------------------------------------------------------


def _closed_range() -> IcmpPermission:
    permission = icmp_permission()
    if permission.permitted:
        pytest.skip("unprivileged ping is permitted here; the fallback test needs it closed")
    return permission


async def test_icmp_without_permission_is_reported_not_raised() -> None:
    """With ``ping_group_range`` closed (``1 0`` here) the check says so and why.

    The probe itself turns icmplib's permission error into ``permission denied`` instead
    of raising, so a caller can never mistake a missing sysctl for a dead router.
    """
    permission = _closed_range()
    assert "ping_group_range" in permission.detail
    result = await probe_icmp(LOOPBACK, timeout_s=1)
    assert (result.ok, result.reason) == (False, "permission denied")


async def test_monitor_falls_back_to_tcp_and_says_so_loudly(listening_port: int) -> None:
    """Without ping permission the monitor runs the hotspot's TCP probe in its place.

    The hotspot is judged up (not silently down), every result says which ping it
    stands in for, the snapshot and the STATUS summary carry the flag, and one event
    announces it, however many cycles run.
    """
    _closed_range()
    monitor, state, events = _monitor(
        {"hall": _hotspot(IcmpProbe(kind="icmp"), TcpProbe(kind="tcp", port=listening_port))}
    )
    with capture_logs() as logs:
        for _ in range(3):
            report = await monitor.check("hall")
        await monitor.probe_now()
    assert report["state"] == "up"
    assert report["probes"] == [
        {
            "kind": "tcp",
            "target": f"{LOOPBACK}:{listening_port}",
            "ok": True,
            "rtt_ms": report["probes"][0]["rtt_ms"],
            "stands_in_for": "icmp",
        }
    ]
    snapshot = state.snapshot("hotspots")
    assert snapshot is not None
    assert snapshot["icmp"]["permitted"] is False
    assert "(no ping permission: TCP fallback)" in monitor.summary()
    assert [e["type"] for e in events].count("hotspots.icmp_not_permitted") == 1
    assert [line["event"] for line in logs].count("hotspots.icmp_not_permitted") == 1


async def test_permission_lost_at_run_time_falls_back_too() -> None:
    """If the start-up check passed but the kernel then refuses, the fallback still happens.

    The ICMP probe is replaced for good, by port 80 when the hotspot has no TCP probe of
    its own; nothing listens there on loopback, so the cycle fails as ``refused`` — a
    real answer, never a crash and never a silent ``permission denied``.
    """
    _closed_range()
    monitor, _, events = _monitor(
        {"hall": _hotspot(IcmpProbe(kind="icmp", timeout_s=0.5))},
        permission=IcmpPermission(permitted=True, detail="pretend"),
    )
    first = await monitor.check("hall")
    second = await monitor.check("hall")
    for report in (first, second):
        (probe,) = report["probes"]
        assert probe["kind"] == "tcp"
        assert probe["stands_in_for"] == "icmp"
        assert probe["target"].endswith(":80")
    assert monitor.icmp.permitted is False
    assert [e["type"] for e in events] == ["hotspots.icmp_not_permitted"]


# -- hysteresis -------------------------------------------------------------------------


async def test_scripted_sequence_gives_exactly_the_transitions(
    http_server: tuple[str, Script],
) -> None:
    """Good, good, slow, 500 x3, good, good: up, degraded, down, up — one event each.

    Every other cycle is silent. The degraded event names the slow p95, the down event
    the HTTP status, and the log says "down" once and "back" once.
    """
    base, script = http_server
    script.extend(["ok", "ok", "slow", "500", "500", "500", "ok", "ok"])
    monitor, _, events = _monitor(
        {"ap": _hotspot(HttpProbe(kind="http", url=f"{base}/scripted"), label="Sân")}
    )
    states = []
    with capture_logs() as logs:
        for _ in range(8):
            states.append((await monitor.check("ap"))["state"])
    assert states == ["unknown", "up", "degraded", "degraded", "degraded", "down", "down", "up"]
    assert [(e["previous"], e["state"]) for e in events] == [
        ("unknown", "up"),
        ("up", "degraded"),
        ("degraded", "down"),
        ("down", "up"),
    ]
    reasons = [e["reason"] for e in events]
    assert reasons[0] is None
    assert reasons[1].startswith("p95 ")
    assert reasons[2] == "http: http 500"
    assert reasons[3] is None
    assert all(e["hotspot"] == "ap" and e["label"] == "Sân" for e in events)
    names = [line["event"] for line in logs]
    assert names.count("hotspot.down") == 1
    assert names.count("hotspot.back") == 1


def test_flapping_every_cycle_is_counted_not_shouted() -> None:
    """A hotspot that fails every other cycle never reaches ``down`` (3 in a row needed).

    It is reported ``degraded`` with reason ``flapping`` — one event — and every flip is
    counted, so the commune sees an unstable point without an alarm per cycle.
    """
    health = Hysteresis(fail_threshold=3, recover_threshold=2)
    good, bad = Outcome(ok=True, rtts_ms=(2.0,)), Outcome(ok=False, reason="tcp: timeout")
    transitions = [health.feed(good), health.feed(good)]
    for i in range(20):
        transitions.append(health.feed(bad if i % 2 == 0 else good))
    moves = [(t.previous, t.state, t.reason) for t in transitions if t is not None]
    assert moves == [("unknown", "up", None), ("up", "degraded", "flapping")]
    assert health.flaps == 20
    assert health.outages == 0
    calm = [health.feed(good) for _ in range(QUALITY_CYCLES)]
    back = [(t.previous, t.state) for t in calm if t is not None]
    assert back == [("degraded", "up")]


async def test_unknown_not_down_while_the_uplink_is_down(
    dns_server: Callable[[bool], Awaitable[str]],
) -> None:
    """When the uplink is down, a hotspot whose only probe needs the internet is unknown.

    A DNS probe resolves names upstream, so its failure says nothing about the access
    point; a hotspot with a LAN probe (TCP) is still judged and goes down as usual.
    """
    mute = await dns_server(True)
    closed = _free_port()
    uplink = UplinkSection(
        probes=[HttpProbe(kind="http", url=f"http://{LOOPBACK}:{closed}/", timeout_s=0.5)]
    )
    monitor, state, events = _monitor(
        {
            "cloudy": _hotspot(DnsProbe(kind="dns", name="good.test", server=mute, timeout_s=0.2)),
            "lan": _hotspot(TcpProbe(kind="tcp", port=closed, timeout_s=0.5)),
        },
        uplink=uplink,
    )
    for _ in range(3):
        await monitor.check("uplink")
    for _ in range(3):
        await monitor.check("cloudy")
        await monitor.check("lan")
    snapshot = state.snapshot("hotspots")
    assert snapshot is not None
    assert snapshot["uplink"]["state"] == "down"
    assert snapshot["hotspots"]["cloudy"]["state"] == "unknown"
    assert snapshot["hotspots"]["cloudy"]["reason"] == "uplink down"
    assert snapshot["hotspots"]["lan"]["state"] == "down"
    assert snapshot["hotspots"]["lan"]["reason"] == "tcp: refused"
    assert [(e["type"], e["state"]) for e in events] == [
        ("uplink.state", "down"),
        ("hotspot.state", "down"),
    ]


# -- the component ----------------------------------------------------------------------


async def test_a_hanging_target_does_not_delay_the_others(hanging_port: int) -> None:
    """One access point whose web page hangs for a second; another that answers at once.

    Running the real loops for about a second, the quick one keeps its 0.1 s rhythm —
    the timestamps of its probes' connections, taken by its own server — while the slow
    one has not finished its first cycle yet.
    """
    stamps: list[float] = []

    async def stamp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stamps.append(time.monotonic())
        writer.close()

    quick_server = await asyncio.start_server(stamp, LOOPBACK, 0)
    quick_port = int(quick_server.sockets[0].getsockname()[1])
    monitor, _, _ = _monitor(
        {
            "slow": _hotspot(
                HttpProbe(kind="http", url=f"http://{LOOPBACK}:{hanging_port}/", timeout_s=1),
                interval_s=2,
            ),
            "quick": _hotspot(
                TcpProbe(kind="tcp", port=quick_port, timeout_s=0.05), interval_s=0.1
            ),
        },
        permission=IcmpPermission(permitted=True, detail="not used"),
    )
    health = Health("hotspots", critical=False, heartbeat_timeout_s=None)
    try:
        async with asyncio.TaskGroup() as group:
            runner = group.create_task(monitor.run(health))
            await asyncio.sleep(0.85)
            snapshot = monitor.snapshot()
            runner.cancel()
    finally:
        quick_server.close()
        await quick_server.wait_closed()
    assert snapshot["hotspots"]["slow"]["cycles"] == 0
    assert snapshot["hotspots"]["quick"]["cycles"] >= 7
    assert len(stamps) >= 7
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert max(gaps) < 0.25, gaps


async def test_quiet_cycles_are_published_at_most_once_a_second(listening_port: int) -> None:
    """With many hotspots on short intervals, the retained snapshot is refreshed about
    once a second rather than once per cycle (a transition still goes out at once), so
    MQTT and the web page are not flooded; the refreshed snapshot is current."""
    monitor, state, _ = _monitor(
        {
            f"ap{i}": _hotspot(
                TcpProbe(kind="tcp", port=listening_port, timeout_s=0.05), interval_s=0.1
            )
            for i in range(5)
        },
        permission=IcmpPermission(permitted=True, detail="not used"),
    )
    publishes = 0

    async def count() -> None:
        nonlocal publishes
        versions: dict[str, int] = {}
        while True:
            versions = await state.wait_changed(versions)
            publishes += 1

    health = Health("hotspots", critical=False, heartbeat_timeout_s=None)
    async with asyncio.TaskGroup() as group:
        counter = group.create_task(count())
        runner = group.create_task(monitor.run(health))
        await asyncio.sleep(2.5)
        runner.cancel()
        counter.cancel()
    cycles = sum(h["cycles"] for h in monitor.snapshot()["hotspots"].values())
    assert cycles >= 50  # 5 hotspots x 10 cycles a second, with room for a busy machine
    # the first snapshot, one per "up" transition (5), and about one refresh a second
    assert publishes <= 1 + 5 + 4, publishes


async def test_snapshot_shape_summary_and_probe_now(
    http_server: tuple[str, Script], listening_port: int
) -> None:
    """The snapshot has PROTOCOL.md's fields, the summary counts, probe_now reports all.

    ``probe_now`` runs a cycle of every hotspot and returns each one's state and probe
    results, which is what the ``hotspots.probe`` command replies with.
    """
    base, _ = http_server
    monitor, state, _ = _monitor(
        {
            "hall": _hotspot(HttpProbe(kind="http", url=f"{base}/ok"), label="Nhà văn hóa"),
            "market": _hotspot(TcpProbe(kind="tcp", port=_free_port(), timeout_s=0.5)),
            "school": _hotspot(TcpProbe(kind="tcp", port=listening_port)),
        }
    )
    for _ in range(3):
        reply = await monitor.probe_now()
    assert set(reply["hotspots"]) == {"hall", "market", "school"}
    market = reply["hotspots"]["market"]
    assert market["probes"][0]["reason"] == "refused"
    assert market["probes"][0]["reason_code"] == "tcp_refused"
    assert (market["reason_code"], market["reason_params"]) == ("tcp_refused", {"probe": "tcp"})
    assert monitor.summary().startswith("2/3 hotspots up")
    snapshot = state.snapshot("hotspots")
    assert snapshot is not None
    hall = snapshot["hotspots"]["hall"]
    for key in ("state", "since", "reason", "rtt_ms", "loss_pct", "clients", "availability"):
        assert key in hall
    assert hall["label"] == "Nhà văn hóa"
    assert set(hall["rtt_ms"]) == {"p50", "p95"}
    assert hall["availability"] == {"1h": 100.0, "24h": 100.0}
    assert snapshot["hotspots"]["market"]["availability"]["1h"] == 0.0
    assert snapshot["uplink"]["state"] == "unknown"
    assert snapshot["uplink"]["reason"] == "no uplink probes configured"
    assert snapshot["uplink"]["reason_code"] == "no_uplink_probes"
    assert (hall["reason"], hall["reason_code"], hall["reason_params"]) == (None, None, {})


# -- windows ----------------------------------------------------------------------------


def test_a_simulated_month_keeps_memory_flat() -> None:
    """Thirty days of 30-second cycles go through the rolling windows.

    Bucket counts stop at one hour of minutes and one day of five-minute slots, the
    allocated memory after the last day is no bigger than after the first, and the
    figures stay right: one cycle in ten fails, round trips are 4 ms with a 40 ms tail.
    """
    windows = RollingWindows()
    now = 0.0
    step = 30.0
    tracemalloc.start()
    try:
        for day in range(30):
            for i in range(int(86_400 / step)):
                rtt = 40.0 if i % 10 == 5 else 4.0
                windows.add(now, ok=i % 10 != 0, rtts_ms=(rtt,), loss_pct=0.0)
                now += step
            if day == 1:
                after_day_two = tracemalloc.get_traced_memory()[0]
        at_end = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    hour, day_slots, bins = windows.sizes()
    assert (hour, day_slots) == (HOUR_BUCKETS, DAY_BUCKETS)
    assert bins <= 2 * HOUR_BUCKETS
    assert at_end - after_day_two < 16_384
    availability = windows.availability(now)
    assert availability["1h"] == pytest.approx(90, abs=1)  # the hour's edge cuts a cycle
    assert availability["24h"] == pytest.approx(90, abs=0.1)
    p50, p95 = windows.rtt_ms(now).values()
    assert p50 is not None
    assert p95 is not None
    assert 3.6 <= p50 <= 4.4
    assert 36 <= p95 <= 44
    assert windows.loss_pct(now) == 0.0


# -- every bad input of the issue, through the monitor ---------------------------------


async def test_http_probe_checks_the_body(http_server: tuple[str, Script]) -> None:
    """``expect_body`` catches a page that answers 200 with the wrong content (a captive
    portal, an error page): ``wrong body``, with the latency still measured."""
    base, _ = http_server
    good = await probe_http(f"{base}/ok", 200, timeout_s=2, expect_body="hell")
    wrong = await probe_http(f"{base}/ok", 200, timeout_s=2, expect_body="welcome")
    assert good.ok
    assert (wrong.ok, wrong.reason) == (False, "wrong body")
    assert wrong.rtt_ms is not None


@pytest.mark.parametrize(
    ("case", "reason", "code"),
    [
        ("accepts then hangs", "http: timeout", ("http_timeout", {"probe": "http"})),
        ("refuses", "tcp: refused", ("tcp_refused", {"probe": "tcp"})),
        ("http 500", "http: http 500", ("http_status", {"probe": "http", "status": 500})),
        ("wrong body", "http: wrong body", ("http_body", {"probe": "http"})),
        ("dns server mute", "dns: timeout", ("dns_timeout", {"probe": "dns"})),
        ("name does not resolve", "dns: nxdomain", ("dns_nxdomain", {"probe": "dns"})),
    ],
)
async def test_each_bad_target_goes_down_once_with_its_reason(  # noqa: PLR0917 - fixtures
    case: str,
    reason: str,
    code: tuple[str, dict[str, Any]],
    hanging_port: int,
    http_server: tuple[str, Script],
    dns_server: Callable[[bool], Awaitable[str]],
) -> None:
    """Each fault of the issue, against a real loopback server, takes the hotspot down
    after exactly ``fail_threshold`` (3) cycles, with one event naming the reason, and
    the snapshot keeps that reason; beside the text, event and snapshot carry the reason
    code and its parameters a user interface words in its own language."""
    base, _ = http_server
    probes: dict[str, Any] = {
        "accepts then hangs": lambda: HttpProbe(
            kind="http", url=f"http://{LOOPBACK}:{hanging_port}/", timeout_s=0.3
        ),
        "refuses": lambda: TcpProbe(kind="tcp", port=_free_port(), timeout_s=0.5),
        "http 500": lambda: HttpProbe(kind="http", url=f"{base}/broken"),
        "wrong body": lambda: HttpProbe(kind="http", url=f"{base}/ok", expect_body="welcome"),
    }
    if case.startswith("dns") or case.startswith("name"):
        server = await dns_server(case == "dns server mute")
        probe: Any = DnsProbe(kind="dns", name="nowhere.test", server=server, timeout_s=0.3)
    else:
        probe = probes[case]()
    monitor, state, events = _monitor({"ap": _hotspot(probe)})
    states = [(await monitor.check("ap"))["state"] for _ in range(3)]
    assert states == ["unknown", "unknown", "down"]
    assert [(e["previous"], e["state"], e["reason"]) for e in events] == [
        ("unknown", "down", reason)
    ]
    assert (events[0]["reason_code"], events[0]["reason_params"]) == code
    snapshot = state.snapshot("hotspots")
    assert snapshot is not None
    ap = snapshot["hotspots"]["ap"]
    assert ap["reason"] == reason
    assert (ap["reason_code"], ap["reason_params"]) == code


async def test_a_hotspot_flapping_every_cycle_through_the_monitor(
    http_server: tuple[str, Script],
) -> None:
    """A web page that alternates 500 and 200 every cycle: after coming up the hotspot is
    ``degraded`` for ``flapping`` (two events in all, never ``down``), and the snapshot
    and the telemetry count every flap."""
    base, script = http_server
    script.extend(["ok", "ok"] + ["500", "ok"] * 6)
    monitor, state, events = _monitor(
        {"ap": _hotspot(HttpProbe(kind="http", url=f"{base}/scripted"))}
    )
    for _ in range(14):
        await monitor.check("ap")
    assert [(e["state"], e["reason"]) for e in events] == [("up", None), ("degraded", "flapping")]
    snapshot = state.snapshot("hotspots")
    assert snapshot is not None
    assert snapshot["hotspots"]["ap"]["flaps"] == 12
    assert snapshot["hotspots"]["ap"]["outages"] == 0
    assert monitor.telemetry()["hotspots"]["ap"]["flaps"] == 12


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ('host = "ap 1; rm -rf"', "hotspots.hall.host: not an IP address or host name"),
        (
            'host = "127.0.0.1"\ninterval_s = 1\nprobes = [{ kind = "tcp", port = 80 }]',
            "hotspots.hall: a probe timeout (2 s) must be shorter than interval_s (1 s)",
        ),
    ],
)
def test_bad_hotspot_tables_are_refused_naming_the_key(
    tmp_path: Path, table: str, problem: str
) -> None:
    """A host that is no address or name, and a timeout not shorter than the interval,
    stop the configuration from loading, each with its key."""
    path = tmp_path / "config.toml"
    path.write_text(f'[gateway]\nid = "t.gw"\n\n[hotspots.hall]\n{table}\n', encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert any(str(p).startswith(problem) for p in caught.value.problems), caught.value.problems


# -- telemetry and reload ----------------------------------------------------------------


async def test_telemetry_carries_per_hotspot_figures(
    http_server: tuple[str, Script], listening_port: int
) -> None:
    """The telemetry part of the monitor: state, p50/p95, loss, availability 1 h/24 h,
    flaps and clients for each hotspot, and the uplink's figures without clients."""
    base, _ = http_server
    monitor, _, _ = _monitor(
        {
            "hall": _hotspot(HttpProbe(kind="http", url=f"{base}/ok")),
            "market": _hotspot(TcpProbe(kind="tcp", port=_free_port(), timeout_s=0.5)),
        }
    )
    for _ in range(3):
        await monitor.probe_now()
    figures = monitor.telemetry()
    hall, market = figures["hotspots"]["hall"], figures["hotspots"]["market"]
    assert hall["state"] == "up"
    assert hall["rtt_p50_ms"] is not None
    assert hall["rtt_p95_ms"] >= hall["rtt_p50_ms"]
    assert (hall["availability_1h"], hall["availability_24h"]) == (100.0, 100.0)
    assert hall["clients"] is None  # no ubus table
    assert (market["state"], market["availability_1h"]) == ("down", 0.0)
    assert "clients" not in figures["uplink"]
    assert set(hall) == {
        "state",
        "rtt_p50_ms",
        "rtt_p95_ms",
        "loss_pct",
        "availability_1h",
        "availability_24h",
        "flaps",
        "clients",
    }


async def test_reload_applies_new_labels_and_republishes(listening_port: int) -> None:
    """SIGHUP's path: a new label shows in the snapshot at once, the statistics are kept,
    and the next transition's event carries the new label."""
    monitor, state, _ = _monitor(
        {"hall": _hotspot(TcpProbe(kind="tcp", port=listening_port), label="Cũ")}
    )
    for _ in range(2):
        await monitor.check("hall")
    settings = Settings(
        gateway={"id": "t.gw"},
        hotspots={
            "hall": _hotspot(TcpProbe(kind="tcp", port=listening_port), label="Wifi nhà văn hóa")
        },
    )
    assert await monitor.reload(settings) == []
    snapshot = state.snapshot("hotspots")
    assert snapshot is not None
    hall = snapshot["hotspots"]["hall"]
    assert hall["label"] == "Wifi nhà văn hóa"
    assert (hall["state"], hall["cycles"]) == ("up", 2)
