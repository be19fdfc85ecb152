"""`make bench`: run every benchmark and print one ratio line each.

These machines are noisy, so absolute times are printed only for context; the ratio to a
bare baseline measured moments before, in the same process, is the figure to quote.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from bench import (
    bench_commands,
    bench_hotspots,
    bench_http,
    bench_log,
    bench_pa,
    bench_uplink,
    bench_web,
)
from gateway.log import configure_logging


def main() -> None:
    """Run the benchmarks one after another."""
    # The benchmarks' own log lines go to stderr; aiomqtt's "pending publish calls"
    # warnings are what a saturating baseline is meant to cause.
    configure_logging(level="WARNING", fmt="json", stream=sys.stderr)
    logging.getLogger("mqtt").setLevel(logging.ERROR)
    print(bench_log.run(), flush=True)
    print(asyncio.run(bench_http.run()), flush=True)
    print(asyncio.run(bench_commands.run()), flush=True)
    for line in asyncio.run(bench_uplink.run()):
        print(line, flush=True)
    print(asyncio.run(bench_hotspots.run()), flush=True)
    print("\n".join(asyncio.run(bench_web.run())), flush=True)
    print("\n".join(bench_pa.run()), flush=True)


if __name__ == "__main__":
    main()
