"""Command round trip over a real broker: publish → final reply, one after another.

The gateway (the real daemon, ``python -m gateway run``, on a private mosquitto, logging
at its default level INFO as in the field) answers 1,000 ``relay.set`` that each switch
the relay (on, off, on …; ``min_switch_interval_s = 0``), so every one drives the pin and
stores a ``relay.switched`` event and its log lines beside the reply. A shorter run of
``relay.set`` that changes nothing (``on: true`` again) follows, for the cost of the
path alone. The baseline is a bare echo client on the same broker in the same run
that answers each command at once (TCP_NODELAY on both, as ARCHITECTURE.md's
fair-baseline note asks). Both answer from a process of their own, as they would in the
field, so neither shares an event loop or the GIL with the client that measures. The
ratio of p50s is the cost of the whole command path: validation, deduplication in
SQLite, the handler, the event and the reply (stored in the outbox, then published).

These machines are noisy over seconds, so the two are measured in alternating rounds of
``ROUND`` commands, not one after the other, and the ratio is the median over the pairs
of rounds of (gateway p50 / echo p50): a slow spell of a second or two then spoils a
pair or two, not the figure. The p50s of the whole run are printed beside it.
"""

from __future__ import annotations

import json
import os
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

import aiomqtt

from bench.common import p
from bench.rig import rig, switching
from gateway.uplink.client import TCP_NODELAY_OPTION, Topics
from tests.conftest import Broker

COMMANDS = int(os.environ.get("BENCH_COMMANDS", "1000"))
"""``BENCH_COMMANDS`` lengthens the run, e.g. to attach a profiler to the daemon; quote 1,000."""
NO_OP_COMMANDS = 500
"""The no-op line is a side figure: half as many, in rounds of ``ROUND`` as well."""
ROUND = 50
WARM_UP = 500
"""Round trips per side before measuring. A fresh outbox's WAL file grows with its first
~330 commands, and an fdatasync that grows a file costs about twice one that overwrites
(~0.75 vs ~0.4 ms here); a gateway that has run for minutes reuses its WAL, and that
steady state is what is measured. The echo gets the same warm-up."""

Args = Callable[[int], dict[str, Any]]
"""The ``relay.set`` arguments of command number n."""


def _no_op(n: int) -> dict[str, Any]:
    del n
    return {"relay": "yard", "on": True}


async def _round_trips(
    commune: aiomqtt.Client, cmd_topic: str, count: int, times: list[float], args: Args
) -> None:
    """``count`` commands, each published once the last one's reply is in; every reply
    must be ``done``. Appends each publish → reply time to ``times``."""
    messages = commune.messages.__aiter__()
    for n in range(count):
        command_id = f"b-{uuid.uuid4().hex[:8]}-{n}"
        body = json.dumps({"id": command_id, "type": "relay.set", "args": args(n)}).encode()
        started = time.perf_counter()
        await commune.publish(cmd_topic, body, qos=1)
        while True:
            message = await messages.__anext__()
            raw = message.payload
            assert isinstance(raw, bytes)
            reply = json.loads(raw)
            if reply.get("id") == command_id:
                if reply.get("status") != "done":
                    raise RuntimeError(f"benchmark command not done: {reply}")
                break
        times.append(time.perf_counter() - started)


Pairs = list[tuple[list[float], list[float]]]
"""(echo times, gateway times) per pair of rounds."""


async def _alternate(broker: Broker, echo: Topics, ours: Topics) -> tuple[Pairs, Pairs]:
    """After the warm-up, rounds of ``ROUND`` commands to the echo, then as many to the
    gateway, until each has answered ``COMMANDS`` switching ones, then
    ``NO_OP_COMMANDS`` no-op ones. Returns the pairs of rounds of each."""
    async with aiomqtt.Client(
        broker.host, broker.port, socket_options=[TCP_NODELAY_OPTION]
    ) as commune:
        await commune.subscribe([(echo.reply, 1), (ours.reply, 1)])
        await _round_trips(commune, echo.cmd, WARM_UP, [], switching)
        await _round_trips(commune, ours.cmd, WARM_UP, [], switching)
        runs: list[Pairs] = []
        for count, args in ((COMMANDS, switching), (NO_OP_COMMANDS, _no_op)):
            pairs: Pairs = []
            for _ in range(count // ROUND):
                bare_times: list[float] = []
                our_times: list[float] = []
                await _round_trips(commune, echo.cmd, ROUND, bare_times, args)
                await _round_trips(commune, ours.cmd, ROUND, our_times, args)
                pairs.append((bare_times, our_times))
            runs.append(pairs)
    return runs[0], runs[1]


async def run() -> list[str]:
    """Measure both, each answering from a process of its own; return the ratio lines."""
    # The benchmarks before this one leave hundreds of MB of writeback behind; the
    # gateway's fsyncs would queue behind it and the echo's would not (it has none).
    os.sync()
    async with rig() as bench:
        switched, no_op = await _alternate(bench.broker, bench.echo, bench.gateway.topics)
    return [
        _line(f"relay.set switching, {COMMANDS}", switched),
        _line(f"relay.set no-op, {NO_OP_COMMANDS}", no_op),
    ]


def _line(what: str, pairs: Pairs) -> str:
    ratios = [statistics.median(ours) / statistics.median(bare) for bare, ours in pairs]
    bare = [t for pair in pairs for t in pair[0]]
    ours = [t for pair in pairs for t in pair[1]]
    return (
        f"command round trip ({what} in {len(pairs)} rounds of {ROUND}):"
        f" p50 {p(ours, 50) * 1e3:.2f} ms, p99 {p(ours, 99) * 1e3:.2f} ms"
        f" vs bare echo p50 {p(bare, 50) * 1e3:.2f} ms, p99 {p(bare, 99) * 1e3:.2f} ms"
        f" (whole run {p(ours, 50) / p(bare, 50):.2f}x) -> p50 {statistics.median(ratios):.2f}x"
        f" (median of paired rounds, {min(ratios):.2f}-{max(ratios):.2f})"
    )
