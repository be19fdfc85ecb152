"""A writer process for the kill -9 tests: the real Outbox and Link, appending forever.

Run as ``python -m tests.kill_writer STATE_DIR BROKER_PORT GATEWAY_ID ROUND [--drain]``.
It prints the seq of every append that returned (so was committed), one per line, and
flushes each line: what the test reads is exactly what the outbox promised to keep.
With ``--drain`` it appends nothing and only delivers what is stored.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from gateway.component import Health
from gateway.config import Settings
from gateway.log import configure_logging
from gateway.outbox import Outbox
from gateway.state import StateStore
from gateway.uplink.link import Link


async def main(state_dir: Path, port: int, gateway: str, round_no: int, drain: bool) -> None:
    """Open, connect, append (unless draining) until killed."""
    configure_logging(fmt="json", stream=sys.stderr)  # stdout carries the seqs only
    settings = Settings.model_validate(
        {
            "gateway": {"id": gateway, "state_dir": str(state_dir)},
            "mqtt": {"host": "127.0.0.1", "port": port, "max_backoff_s": 1, "max_msgs_per_s": 1000},
        }
    )
    outbox = await Outbox.open(state_dir, commit_window_s=0.02)
    link = Link(
        settings,
        outbox,
        StateStore(),
        started_at="test",
        boot_count=round_no,
        clock_synced=lambda: False,
    )
    delivering = asyncio.create_task(link.run(Health("link", False, None)))
    n = 0
    while not drain:
        batch = range(n, n + 25)
        n += 25
        seqs = await asyncio.gather(
            *(outbox.append("events", {"type": "k", "uid": f"{round_no}-{i}"}) for i in batch)
        )
        sys.stdout.write("".join(f"{seq}\n" for seq in seqs))
        sys.stdout.flush()
    await delivering


if __name__ == "__main__":
    args = sys.argv[1:]
    asyncio.run(main(Path(args[0]), int(args[1]), args[2], int(args[3]), "--drain" in args))
