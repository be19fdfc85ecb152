"""`make bench`: run every benchmark and print one ratio line each.

These machines are noisy, so absolute times are printed only for context; the ratio to a
bare baseline measured moments before, in the same process, is the figure to quote.

``python -m bench commands slow_disk`` runs only the benchmarks named (the module names
without ``bench_``), in the order given.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Iterable

from bench import (
    bench_commands,
    bench_fetch_trickle,
    bench_footprint,
    bench_hotspots,
    bench_http,
    bench_log,
    bench_pa,
    bench_schedules,
    bench_slow_disk,
    bench_uplink,
    bench_web,
)
from gateway.log import configure_logging


def _lines(result: str | Iterable[str]) -> Iterable[str]:
    return [result] if isinstance(result, str) else result


BENCHES: dict[str, Callable[[], str | Iterable[str]]] = {
    "log": bench_log.run,
    "http": lambda: asyncio.run(bench_http.run()),
    "commands": lambda: asyncio.run(bench_commands.run()),
    "slow_disk": lambda: asyncio.run(bench_slow_disk.run()),
    "fetch_trickle": lambda: asyncio.run(bench_fetch_trickle.run()),
    "uplink": lambda: asyncio.run(bench_uplink.run()),
    "hotspots": lambda: asyncio.run(bench_hotspots.run()),
    "web": lambda: asyncio.run(bench_web.run()),
    "pa": bench_pa.run,
    "schedules": bench_schedules.run,
    "footprint": bench_footprint.run,
}
"""Every benchmark, in the order ``make bench`` runs them."""


def main() -> None:
    """Run the benchmarks named on the command line (all by default), one after another."""
    names = sys.argv[1:] or list(BENCHES)
    unknown = [name for name in names if name not in BENCHES]
    if unknown:
        sys.exit(f"unknown benchmark {', '.join(unknown)}; known: {', '.join(BENCHES)}")
    # The benchmarks' own log lines go to stderr; aiomqtt's "pending publish calls"
    # warnings are what a saturating baseline is meant to cause.
    configure_logging(level="WARNING", fmt="json", stream=sys.stderr)
    logging.getLogger("mqtt").setLevel(logging.ERROR)
    for name in names:
        for line in _lines(BENCHES[name]()):
            print(line, flush=True)


if __name__ == "__main__":
    main()
