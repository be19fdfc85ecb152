"""Commands while a clip download trickles in at one byte a second.

The commune asks for a clip (``pa.clip.fetch``) from a server that has stalled: a local
HTTP server that announces the clip and then sends it one byte a second. The download
runs for as long as ``pa.fetch_timeout_s`` allows; meanwhile people still switch lights
and the commune still pings. The fetch answers ``accepted`` at once and its final reply
only when the download ends, which the benchmark does not wait for (the daemon is
stopped at the end, which cancels it). While the clip trickles, the benchmark sends, one
after another, ``system.ping`` and a switching ``relay.set`` over MQTT and a switching
``relay.set`` through ``POST /api/v1/commands``, and reports each one's p99 (target
≤ 200 ms: the download must not hold up the command path).

Baselines, in the same run, sent in turn with the gateway's: the bare echo client
(``bench.echo``) for MQTT, and the bare aiohttp server of ``bench_web`` for the POST.
A command that gets no answer within ``CALL_TIMEOUT_S`` is counted, not timed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from bench.common import ms, p
from bench.rig import (
    Commune,
    login,
    rig,
    start_listening,
    stop,
    switching,
)
from gateway.uplink.client import Topics
from tests.conftest import free_port

CLIP = bytes(range(256)) * 16
"""4 KiB: at one byte a second, it never finishes within the benchmark."""
DURATION_S = float(os.environ.get("VG_BENCH_TRICKLE_S", "20"))
CALL_TIMEOUT_S = 10.0
PAUSE_S = 0.1
"""Between rounds of the four kinds of command: about 7 commands a second."""
TARGET_P99_S = 0.2
EXTRA_CONFIG = """
[relays.hall]
pin = 27
min_switch_interval_s = 0
[pa]
backend = "null"
fetch_timeout_s = 3600
fetch_allow = ["127.0.0.1"]  # the trickling server is on loopback
"""

Call = Callable[[int], Awaitable[float | None]]
"""Sends command number n; seconds to its answer, None when none came in time."""


@dataclass(slots=True)
class _Trickle:
    url: str
    begun: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once the daemon's download has begun."""
    sent: int = 0
    """Bytes sent so far: proof that the download went on while commands were timed."""


@contextlib.asynccontextmanager
async def _trickling() -> AsyncIterator[_Trickle]:
    """A server on 127.0.0.1 sending :data:`CLIP` at one byte a second."""
    port = free_port()
    trickle = _Trickle(f"http://127.0.0.1:{port}/clip.wav")

    async def clip(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "audio/wav"})
        response.content_length = len(CLIP)
        await response.prepare(request)
        trickle.begun.set()
        with contextlib.suppress(ConnectionError):  # the daemon stopped: the end
            for offset in range(len(CLIP)):
                await response.write(CLIP[offset : offset + 1])
                trickle.sent += 1
                await asyncio.sleep(1)
        return response

    app = web.Application()
    app.router.add_get("/clip.wav", clip)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield trickle
    finally:
        await runner.cleanup()


def _mqtt(commune: Commune, topics: Topics, kind: str) -> Call:
    async def call(n: int) -> float | None:
        args = switching(n) if kind == "relay.set" else {}
        seconds, reply = await commune.call(topics, kind, args, within_s=CALL_TIMEOUT_S)
        if reply is not None:
            _check_done(kind, reply)
        return seconds

    return call


def _post(session: aiohttp.ClientSession, url: str, body: Callable[[int], Any]) -> Call:
    async def call(n: int) -> float | None:
        started = time.perf_counter()
        try:
            async with session.post(url, json=body(n)) as response:
                _check_done(f"POST {url} ({response.status})", await response.json())
        except TimeoutError:
            return None
        return time.perf_counter() - started

    return call


def _check_done(what: str, reply: dict[str, Any]) -> None:
    if reply.get("status") != "done":
        raise RuntimeError(f"{what}: not done: {reply}")


def _hall(n: int) -> dict[str, Any]:
    return {"type": "relay.set", "args": {"relay": "hall", "on": n % 2 == 0}}


def _round(n: int) -> dict[str, Any]:
    return {"round": n}


async def _measure(
    calls: dict[str, tuple[Call, Call]], duration_s: float
) -> dict[str, tuple[list[float | None], list[float | None]]]:
    """Each kind of command in turn, gateway then baseline, until ``duration_s`` is up."""
    times: dict[str, tuple[list[float | None], list[float | None]]] = {
        kind: ([], []) for kind in calls
    }
    deadline = time.perf_counter() + duration_s
    n = 0
    while time.perf_counter() < deadline:
        for kind, (ours, bare) in calls.items():
            times[kind][0].append(await ours(n))
            times[kind][1].append(await bare(n))
        n += 1
        await asyncio.sleep(PAUSE_S)
    return times


async def run() -> list[str]:
    """Start the trickle, measure the commands beside it; return one line per kind."""
    async with rig(extra=EXTRA_CONFIG) as bench:
        gateway = bench.gateway
        bare_port = free_port()
        (bench.workdir / "body.json").write_text("{}")
        bare_server = await start_listening(
            ["-m", "bench.bench_web", str(bare_port), str(bench.workdir / "body.json")],
            bench.workdir / "bare.log",
            bare_port,
        )
        bench.processes.append(bare_server)
        timeout = aiohttp.ClientTimeout(total=CALL_TIMEOUT_S)
        async with (
            Commune.connect(bench.broker, [bench.echo, gateway.topics]) as commune,
            aiohttp.ClientSession(headers=await login(gateway.base), timeout=timeout) as ours_http,
            aiohttp.ClientSession(timeout=timeout) as bare_http,
            _trickling() as trickle,
        ):
            calls = {
                f"{kind} over MQTT": (
                    _mqtt(commune, gateway.topics, kind),
                    _mqtt(commune, bench.echo, kind),
                )
                for kind in ("system.ping", "relay.set")
            }
            calls["relay.set by POST /api/v1/commands"] = (
                _post(ours_http, f"{gateway.base}/api/v1/commands", _hall),
                _post(bare_http, f"http://127.0.0.1:{bare_port}/trigger", _round),
            )
            await _measure(calls, 1.0)  # warm-up: connections, first commands
            sha256 = hashlib.sha256(CLIP).hexdigest()
            fetch = {"name": "trickle", "url": trickle.url, "sha256": sha256}
            seconds, reply = await commune.call(
                gateway.topics, "pa.clip.fetch", fetch, within_s=CALL_TIMEOUT_S
            )
            async with asyncio.timeout(CALL_TIMEOUT_S):
                await trickle.begun.wait()
            times = await _measure(calls, DURATION_S)
            sent = trickle.sent
            stop(gateway.process)  # cancels the download before the server closes
    status = reply.get("status") if reply else None
    answer = f"answered {status} in {ms(seconds)}" if status else "not answered"
    head = (
        f"clip fetch trickling at 1 B/s ({sent} B sent while timing {DURATION_S:.0f} s):"
        f" pa.clip.fetch {answer}"
    )
    return [head] + [_line(kind, ours, bare) for kind, (ours, bare) in times.items()]


def _line(kind: str, ours: list[float | None], bare: list[float | None]) -> str:
    answered = [t for t in ours if t is not None]
    bare_answered = [t for t in bare if t is not None]
    lost = len(ours) - len(answered)
    ratio = (
        f" -> {p(answered, 99) / p(bare_answered, 99):.1f}x" if answered and bare_answered else ""
    )
    late = f", {lost} of {len(ours)} unanswered within {CALL_TIMEOUT_S:.0f} s" if lost else ""
    return (
        f"  {kind} during the trickle: p99 {ms(p(answered, 99))}"
        f" (target <= {ms(TARGET_P99_S)}, {len(answered)} answered{late})"
        f" vs bare p99 {ms(p(bare_answered, 99))}{ratio}"
    )
