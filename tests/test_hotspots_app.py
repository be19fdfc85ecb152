"""The hotspot monitor inside the whole App: demo targets, telemetry, live labels."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.config import load_settings
from gateway.daemon.app import App
from gateway.hotspots.demo import WEB_PORT
from tests.conftest import ConfigFile, free_port
from tests.test_app import FAST, running, wait_for


async def _telemetry(app: App) -> list[dict[str, Any]]:
    assert app.outbox is not None
    batch = await app.outbox.read("telemetry", after_seq=0, max_records=100, max_bytes=1 << 20)
    return [] if batch is None else [json.loads(body) for body in batch.bodies]


async def test_demo_hall_follows_the_web_port_and_telemetry_carries_hotspots(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``VG_WEB__PORT`` moves the demo's web server; its ``hall`` hotspot, which probes
    that server, follows and comes up, while ``market`` is down on purpose. Telemetry
    samples in the outbox carry both hotspots' figures."""
    port = free_port()
    monkeypatch.setenv("VG_WEB__PORT", str(port))
    monkeypatch.setenv("VG_MQTT__PORT", str(free_port()))  # no broker: the demo runs alone
    monkeypatch.setenv("VG_GATEWAY__STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("VG_TELEMETRY__INTERVAL_S", "1")
    app = App(load_settings(None, demo=True), demo=True, backoff=FAST)
    (probe,) = app.settings.hotspots["hall"].probes
    assert getattr(probe, "url", None) == f"http://127.0.0.1:{port}/healthz"
    async with running(app):
        assert app.hotspots is not None
        hall = market = {}
        for _ in range(3):  # the loop's first cycle plus these bring both to a verdict
            hall = await app.hotspots.check("hall")
            market = await app.hotspots.check("market")
        records: list[dict[str, Any]] = []

        async def sampled() -> None:
            while not records:
                records.extend(await _telemetry(app))
                await asyncio.sleep(0.1)

        await asyncio.wait_for(sampled(), 10)
    assert hall["state"] == "up", hall
    assert market["state"] == "down", market
    sample = records[-1]
    assert set(sample["hotspots"]) == {"hall", "market"}
    assert {"rtt_p50_ms", "rtt_p95_ms", "loss_pct", "availability_1h", "clients"} <= set(
        sample["hotspots"]["hall"]
    )
    assert "uplink" in sample


def test_the_placeholder_is_demo_only(config_file: ConfigFile) -> None:
    """Outside the demo nothing is rewritten: the bundled file keeps the placeholder
    and a normal configuration is left exactly as written."""
    settings = load_settings(None, demo=True)
    (probe,) = settings.hotspots["hall"].probes
    assert WEB_PORT in getattr(probe, "url", "")
    normal = load_settings(config_file.path)
    assert App(normal).settings == normal


async def test_sighup_reload_applies_a_hotspot_label_live(config_file: ConfigFile) -> None:
    """A new ``hotspots.hall.label`` on reload is applied without a restart: the
    retained snapshot shows it at once and nothing is reported as needing a restart."""
    app = App(load_settings(config_file.path), config_path=config_file.path, backoff=FAST)
    async with running(app):
        config_file.write(
            {
                '[hotspots.hall]\nhost = "127.0.0.1"': '[hotspots.hall]\nhost = "127.0.0.1"\n'
                'label = "Wifi sân bóng"'
            }
        )
        assert await app.reload() is True

        def label() -> str | None:
            snapshot = app.state.snapshot("hotspots")
            return None if snapshot is None else snapshot["hotspots"]["hall"]["label"]

        await wait_for(lambda: label() == "Wifi sân bóng")
        assert app.restart_required == []
