"""Telemetry: real samples of this machine appended to a real outbox on a short interval."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

from gateway.component import Health
from gateway.outbox import Outbox
from gateway.telemetry import Telemetry


async def test_samples_land_in_the_telemetry_stream(tmp_path: Path) -> None:
    """Run every 0.1 s, the sampler puts records into the outbox's telemetry stream
    that carry CPU use, the load averages, memory use, free disk space of the state
    folder, uptime and the CPU temperature key (empty where the machine has no thermal
    zone), together with the extra fields the daemon adds, such as the outbox depth."""
    outbox = await Outbox.open(tmp_path / "state", commit_window_s=0.01)
    health = Health("telemetry", critical=False, heartbeat_timeout_s=None)
    telemetry = Telemetry(
        outbox,
        state_dir=tmp_path,
        interval_s=0.1,
        extra=lambda: {"outbox_depth": 7, "site": "Nhà văn hóa"},
    )
    task = asyncio.create_task(telemetry.run(health))
    records: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(5):
            while len(records) < 2:
                await asyncio.sleep(0.05)
                batch = await outbox.read(
                    "telemetry", after_seq=0, max_records=100, max_bytes=1 << 20
                )
                records = [] if batch is None else [json.loads(body) for body in batch.bodies]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await outbox.close()
    first, second = records[:2]
    assert first["type"] == "telemetry"
    assert [first["seq"], second["seq"]] == [1, 2]
    assert 0 <= first["cpu_pct"] <= 100
    assert isinstance(first["load"], list)
    assert len(first["load"]) == 3
    assert all(value >= 0 for value in first["load"])
    assert 0 < first["mem_used_pct"] < 100
    assert first["disk_free_mb"] > 0
    assert "cpu_temp_c" in first
    assert first["cpu_temp_c"] is None or 0 < first["cpu_temp_c"] < 120
    assert 0 < first["uptime_s"] <= second["uptime_s"] < 10
    assert first["outbox_depth"] == 7
    assert first["site"] == "Nhà văn hóa"
    assert "ts" in first
    assert health.last_beat > 0
