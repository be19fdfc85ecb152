"""`make bench`: run every benchmark and print one ratio line each.

These machines are noisy, so absolute times are printed only for context; the ratio to a
bare baseline measured moments before, in the same process, is the figure to quote.
"""

from __future__ import annotations

import asyncio

from bench import bench_http, bench_log


def main() -> None:
    """Run the benchmarks one after another."""
    for line in (bench_log.run(), asyncio.run(bench_http.run())):
        print(line)


if __name__ == "__main__":
    main()
