"""Footprint of the demo: resident memory, idle CPU and start-up, each beside a bare
baseline from the same run and the peer figures issue #16 quotes.

The daemon runs as ``make run`` starts it (``village-gateway run --demo``: 4 mock
relays, 2 hotspots probed every 10 s, the null PA, the web server, a private broker).
Beside it runs the bare baseline: the same interpreter with the same third-party
libraries imported (:data:`BARE_IMPORTS`), idling in an asyncio loop. What the daemon
costs above the baseline is its own code and data; what the baseline costs is the floor
of any daemon written on these libraries.

- RSS (``VmRSS``: anonymous + file-backed pages) after :data:`RUN_S` (5 minutes).
- Idle CPU: user + system time over the last :data:`CPU_WINDOW_S` (2 minutes), in % of
  one core; the hotspot probes and every timer of the demo are in it.
- Start-up: exec to ``READY=1`` on ``NOTIFY_SOCKET`` (a datagram socket this benchmark
  binds, as systemd would), median of :data:`STARTS` runs, beside the bare interpreter's
  exec to its own READY after importing the same libraries, and the import of the
  daemon's code alone, so the figure says what dominates.

``BENCH_FOOTPRINT_S`` shortens the run (e.g. 60) for a quick look; quote 300.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gateway.outbox import PAGE_CACHE_KIB
from tests.conftest import Broker, clean_env, free_port, terminate

RUN_S = float(os.environ.get("BENCH_FOOTPRINT_S", "300"))
"""How long the demo runs before RSS is read (issue #16: after 5 minutes)."""
CPU_WINDOW_S = min(120.0, RUN_S / 2)
"""Idle CPU is taken over the last 2 minutes of the run (after start-up has settled)."""
STARTS = 5

TARGET_RSS_MB = 55.0
TARGET_CPU_PCT = 0.3
PEER_RSS_MB = (("mqtt-io 2.7.0", "36 MB"), ("ThingsBoard IoT gateway", "~80 MB"))
"""Issue #16's figures for two other MQTT/GPIO gateways (measured by its author)."""
BEFORE_RSS_MB = 77.6
BEFORE_CPU_PCT = 0.37
"""Issue #16's figures for this demo before the footprint work."""

BARE_IMPORTS = (
    "asyncio",
    "aiohttp.web",
    "aiomqtt",
    "astral.sun",
    "gpiozero",
    "icmplib",
    "prometheus_client",
    "pydantic_settings",
    "structlog",
)
"""The libraries the demo has loaded once it is up (numpy and libsndfile only come with
the first decode, PyAudio only with a real sound card)."""

_BARE = """\
import os, socket, asyncio
{imports}
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
asyncio.run(asyncio.Event().wait())
"""

FLOOR_STEPS = (
    ("asyncio",),
    ("aiohttp.web",),
    ("pydantic_settings",),
    ("structlog",),
    ("aiomqtt",),
    ("gpiozero",),
    ("prometheus_client",),
    ("astral.sun", "icmplib"),
)
"""The bare baseline's libraries imported a step at a time, to show what its RSS is
made of (a module two libraries share counts for the first that imports it)."""

_RSS = """\
import ctypes, gc
trim = ctypes.CDLL(None).malloc_trim
def rss():
    gc.collect()
    trim(0)
    with open("/proc/self/status") as status:
        return next(int(l.split()[1]) for l in status if l.startswith("VmRSS")) / 1024
"""
"""``rss()`` for the scripts below: MB resident after a collection and a trim, so freed
heap does not count."""

_FLOOR = (
    _RSS
    + """\
import importlib, json, sys
out = [["interpreter", rss()]]
for step in json.loads(sys.argv[1]):
    for name in step:
        importlib.import_module(name)
    out.append([" + ".join(step), rss()])
print(json.dumps(out))
"""
)

OUTAGE_RECORDS = 100_000
"""Log records stored during an outage and then drained, for the outbox's RSS growth."""

_OUTAGE = (
    _RSS
    + """\
import asyncio, sys, tempfile
from pathlib import Path
import gateway.outbox
from gateway.outbox import Outbox
gateway.outbox.PAGE_CACHE_KIB = int(sys.argv[2])
async def main():
    with tempfile.TemporaryDirectory() as folder:
        outbox = await Outbox.open(
            Path(folder), max_bytes=256 * 1024 * 1024, commit_window_s=0.0
        )
        before = rss()
        line = {"level": "info", "event": "relay.switched", "relay": "yard", "on": True}
        for n in range(int(sys.argv[1])):
            outbox.append_nowait("logs", dict(line, n=n, text="x" * 200))
            if n % 100 == 99:
                await outbox.flush()
        seq = 0
        while batch := await outbox.read(
            "logs", after_seq=seq, max_records=500, max_bytes=256 * 1024
        ):
            outbox.acknowledge(batch)
            seq = batch.last_seq
        await outbox.flush()
        print(rss() - before)
        await outbox.close()
asyncio.run(main())
"""
)

_OURS_IMPORT = """\
import time
started = time.perf_counter()
import gateway.cli, gateway.daemon.app, gateway.logupload, gateway.web.live
print(time.perf_counter() - started)
"""


@dataclass(frozen=True, slots=True)
class Sample:
    """What /proc says about one process at one moment."""

    rss_mb: float
    anon_mb: float
    file_mb: float
    threads: int
    cpu_s: float


def sample(pid: int) -> Sample:
    """RSS figures and CPU time (user + system) of ``pid`` now."""
    status = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        status[key] = value.split()[0] if value.split() else ""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return Sample(
        rss_mb=int(status["VmRSS"]) / 1024,
        anon_mb=int(status["RssAnon"]) / 1024,
        file_mb=int(status["RssFile"]) / 1024,
        threads=int(status["Threads"]),
        cpu_s=ticks / os.sysconf("SC_CLK_TCK"),
    )


def _maps_mention(pid: int, *names: str) -> list[str]:
    """Which of ``names`` appear in the process's mapped files (a loaded library)."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return [name for name in names if name in maps]


@contextlib.contextmanager
def _notify_socket(folder: Path) -> Iterator[socket.socket]:
    """A datagram socket in ``folder`` standing in for systemd's NOTIFY_SOCKET."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(folder / "notify"))
    try:
        yield sock
    finally:
        sock.close()


def _demo_args() -> list[str]:
    """``village-gateway run --demo`` from this interpreter's environment, as make run."""
    script = Path(sys.executable).with_name("village-gateway")
    return [str(script), "run", "--demo"]


def _start_ready(
    args: list[str], env: dict[str, str], notify: socket.socket, log: Path
) -> tuple[subprocess.Popen[bytes], float]:
    """Start ``args``; (the process, seconds from exec to its READY=1)."""
    notify.settimeout(60)
    with log.open("ab") as output:
        started = time.perf_counter()
        process = subprocess.Popen(args, stdout=output, stderr=subprocess.STDOUT, env=env)
    try:
        while True:
            message = notify.recv(4096)
            if b"READY=1" in message.split(b"\n"):
                return process, time.perf_counter() - started
    except TimeoutError:
        terminate(process)
        raise RuntimeError(f"{args!r} never sent READY=1; see {log}") from None


def _demo_env(broker: Broker, state: Path, notify: Path) -> dict[str, str]:
    return clean_env(
        VG_MQTT__PORT=str(broker.port),
        VG_WEB__PORT=str(free_port()),
        VG_GATEWAY__STATE_DIR=str(state),
        NOTIFY_SOCKET=str(notify),
    )


def _startups(
    workdir: Path, broker: Broker, notify: socket.socket
) -> tuple[float, float, float, float]:
    """Medians: exec→READY of the demo and of the bare baseline, the import of the
    daemon's modules (libraries included) in a fresh interpreter, and an empty
    interpreter's exec to exit."""
    address = Path(notify.getsockname())
    demo: list[float] = []
    bare: list[float] = []
    ours: list[float] = []
    empty: list[float] = []
    bare_args = [sys.executable, "-c", _BARE.format(imports=_import_lines())]
    for n in range(STARTS):
        env = _demo_env(broker, workdir / f"state-{n}", address)
        process, seconds = _start_ready(_demo_args(), env, notify, workdir / "starts.log")
        terminate(process)
        demo.append(seconds)
        process, seconds = _start_ready(bare_args, env, notify, workdir / "starts.log")
        terminate(process)
        bare.append(seconds)
        imported = subprocess.run(
            [sys.executable, "-c", _OURS_IMPORT],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        ours.append(float(imported.stdout))
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], env=env, check=True)
        empty.append(time.perf_counter() - started)
    median = statistics.median
    return median(demo), median(bare), median(ours), median(empty)


def _floor() -> str:
    """What the bare baseline's RSS is made of, library by library (fresh interpreter)."""
    import json  # noqa: PLC0415 - only here

    done = subprocess.run(
        [sys.executable, "-c", _FLOOR, json.dumps(FLOOR_STEPS)],
        env=clean_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    steps = json.loads(done.stdout)
    parts = [f"{steps[0][0]} {steps[0][1]:.1f}"]
    parts += [
        f"{name} +{now - before:.1f}" for (_, before), (name, now) in itertools.pairwise(steps)
    ]
    return f"{', '.join(parts)} = {steps[-1][1]:.1f} MB"


def _outage_growth(cache_kib: int) -> float:
    """MB of RSS an outbox keeps after storing and draining OUTAGE_RECORDS log records,
    with SQLite's page cache at ``cache_kib`` per connection (fresh interpreter)."""
    done = subprocess.run(
        [sys.executable, "-c", _OUTAGE, str(OUTAGE_RECORDS), str(cache_kib)],
        env=clean_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    return float(done.stdout)


def _import_lines() -> str:
    return "\n".join(f"import {name}" for name in BARE_IMPORTS)


def run() -> list[str]:
    """Start-up runs first, then the demo and the baseline side by side for RUN_S."""
    with tempfile.TemporaryDirectory(prefix="bench-footprint-") as name:
        workdir = Path(name)
        broker = Broker(workdir)
        broker.start()
        try:
            with _notify_socket(workdir) as notify:
                ready_s, bare_ready_s, import_s, empty_s = _startups(workdir, broker, notify)
                env = _demo_env(broker, workdir / "state", Path(notify.getsockname()))
                demo, _ = _start_ready(_demo_args(), env, notify, workdir / "demo.log")
                bare_args = [sys.executable, "-c", _BARE.format(imports=_import_lines())]
                bare, _ = _start_ready(bare_args, env, notify, workdir / "bare.log")
            try:
                time.sleep(RUN_S - CPU_WINDOW_S)
                demo_before, bare_before = sample(demo.pid), sample(bare.pid)
                time.sleep(CPU_WINDOW_S)
                demo_after, bare_after = sample(demo.pid), sample(bare.pid)
                loaded = _maps_mention(demo.pid, "numpy", "libsndfile", "portaudio")
            finally:
                terminate(demo)
                terminate(bare)
        finally:
            broker.stop()
    floor = _floor()
    ours_growth, default_growth = _outage_growth(PAGE_CACHE_KIB), _outage_growth(2000)
    cpu = 100 * (demo_after.cpu_s - demo_before.cpu_s) / CPU_WINDOW_S
    bare_cpu = 100 * (bare_after.cpu_s - bare_before.cpu_s) / CPU_WINDOW_S
    peers = ", ".join(f"{peer} {figure}" for peer, figure in PEER_RSS_MB)
    return [
        f"footprint: demo RSS {demo_after.rss_mb:.1f} MB after {RUN_S:g} s "
        f"(anon {demo_after.anon_mb:.1f} + file {demo_after.file_mb:.1f}; "
        f"{demo_after.threads} threads; numpy/libsndfile/PortAudio loaded: "
        f"{', '.join(loaded) or 'none'}) vs bare interpreter with the same libraries "
        f"{bare_after.rss_mb:.1f} MB = {demo_after.rss_mb / bare_after.rss_mb:.2f}x; "
        f"target <= {TARGET_RSS_MB:g} MB, issue #16 before {BEFORE_RSS_MB} MB; "
        f"peers (issue #16): {peers}",
        f"RSS floor, the bare baseline a library at a time: {floor}",
        f"outage: RSS the outbox keeps after {OUTAGE_RECORDS:,} log records were stored "
        f"and drained {ours_growth:+.1f} MB (SQLite page cache {PAGE_CACHE_KIB} KiB per "
        f"connection) vs {default_growth:+.1f} MB with SQLite's default 2,000 KiB, same run",
        f"idle CPU: demo {cpu:.2f} % of a core over the last {CPU_WINDOW_S:g} s "
        f"vs bare idle loop with the same libraries {bare_cpu:.2f} %; "
        f"target <= {TARGET_CPU_PCT} %, issue #16 before {BEFORE_CPU_PCT} %",
        f"start-up: exec to READY=1 {ready_s:.2f} s (median of {STARTS}) vs bare "
        f"interpreter importing the same libraries {bare_ready_s:.2f} s = "
        f"{ready_s / bare_ready_s:.2f}x: interpreter {empty_s:.2f} s + imports "
        f"{import_s:.2f} s (libraries and ours) + set-up to READY "
        f"{max(0.0, ready_s - empty_s - import_s):.2f} s",
    ]


if __name__ == "__main__":
    for output_line in run():
        print(output_line)
