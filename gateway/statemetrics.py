"""Prometheus metrics for relays, the PA, hotspots and commands, read from their snapshots.

The components already publish a full snapshot of themselves (``state/relays``,
``state/pa``, ``state/hotspots``) for MQTT and the web UI; the metrics are read from the
same snapshots at scrape time, so ``/metrics``, the retained topics and the page can never
disagree, and no component has to know Prometheus exists.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["CommandCounts", "StateCollector"]

CommandCounts = Mapping[tuple[str, str, str], int]
"""Commands handled so far by (type, source, status)."""

Metric = GaugeMetricFamily | CounterMetricFamily
HOTSPOT_STATES = ("up", "down", "degraded", "unknown")


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


class StateCollector(Collector):
    """Turns the latest snapshots and the Dispatcher's counts into metric families."""

    def __init__(
        self,
        snapshots: Callable[[], Mapping[str, dict[str, Any]]],
        commands: Callable[[], CommandCounts],
    ) -> None:
        self._snapshots = snapshots
        self._commands = commands

    def collect(self) -> Iterator[Metric]:
        """Every family; a component without a snapshot yet simply has none."""
        snapshots = self._snapshots()
        yield from self._relays(snapshots.get("relays") or {})
        yield from self._pa(snapshots.get("pa"))
        yield from self._hotspots(snapshots.get("hotspots") or {})
        counts = CounterMetricFamily(
            "vg_commands", "Commands handled", labels=["type", "source", "status"]
        )
        for (command_type, source, status), count in sorted(self._commands().items()):
            counts.add_metric([command_type, source, status], count)
        yield counts

    def _relays(self, snapshot: dict[str, Any]) -> Iterator[Metric]:
        on = GaugeMetricFamily("vg_relay_on", "1 while the relay is on", labels=["relay"])
        manual = GaugeMetricFamily(
            "vg_relay_manual", "1 while a manual command overrides the schedule", labels=["relay"]
        )
        for name, relay in sorted((snapshot.get("relays") or {}).items()):
            on.add_metric([name], 1.0 if relay.get("on") else 0.0)
            manual.add_metric([name], 1.0 if relay.get("mode") == "manual" else 0.0)
        yield on
        yield manual

    def _pa(self, snapshot: dict[str, Any] | None) -> Iterator[Metric]:
        if snapshot is None:
            return
        yield GaugeMetricFamily(
            "vg_pa_playing", "1 while something plays", value=int(bool(snapshot.get("playing")))
        )
        yield GaugeMetricFamily(
            "vg_pa_queue_length", "Items waiting to play", value=len(snapshot.get("queue") or [])
        )
        yield GaugeMetricFamily(
            "vg_pa_volume", "Master volume, 0-100", value=_number(snapshot.get("volume")) or 0.0
        )
        yield GaugeMetricFamily(
            "vg_pa_amplifier_on",
            "1 while the amplifier relay is on",
            value=int(bool(snapshot.get("amplifier"))),
        )
        device = GaugeMetricFamily(
            "vg_pa_device", "1 for the output device's current state", labels=["state"]
        )
        for state in ("ok", "degraded", "off"):
            device.add_metric([state], 1.0 if snapshot.get("device") == state else 0.0)
        yield device
        yield CounterMetricFamily(
            "vg_pa_underruns",
            "Times the device ran dry in the middle of an item",
            value=_number(snapshot.get("underruns")) or 0.0,
        )

    def _hotspots(self, snapshot: dict[str, Any]) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            "vg_hotspot_state", "1 for the hotspot's current state", labels=["hotspot", "state"]
        )
        rtt = GaugeMetricFamily(
            "vg_hotspot_rtt_ms", "Round-trip time over the last hour", labels=["hotspot", "q"]
        )
        loss = GaugeMetricFamily(
            "vg_hotspot_loss_percent", "Ping loss over the last hour", labels=["hotspot"]
        )
        availability = GaugeMetricFamily(
            "vg_hotspot_availability_percent",
            "Share of good cycles",
            labels=["hotspot", "window"],
        )
        clients = GaugeMetricFamily(
            "vg_hotspot_clients", "Wifi clients (OpenWrt over ubus)", labels=["hotspot"]
        )
        flaps = CounterMetricFamily(
            "vg_hotspot_flaps", "Changes between up and down", labels=["hotspot"]
        )
        views = dict(snapshot.get("hotspots") or {})
        if snapshot.get("uplink"):
            views["uplink"] = snapshot["uplink"]
        for name, view in sorted(views.items()):
            for candidate in HOTSPOT_STATES:
                state.add_metric([name, candidate], 1.0 if view.get("state") == candidate else 0.0)
            for quantile, value in (view.get("rtt_ms") or {}).items():
                if (number := _number(value)) is not None:
                    rtt.add_metric([name, quantile], number)
            if (number := _number(view.get("loss_pct"))) is not None:
                loss.add_metric([name], number)
            for window, value in (view.get("availability") or {}).items():
                if (number := _number(value)) is not None:
                    availability.add_metric([name, window], number)
            if (number := _number(view.get("clients"))) is not None:
                clients.add_metric([name], number)
            if (number := _number(view.get("flaps"))) is not None:
                flaps.add_metric([name], number)
        yield from (state, rtt, loss, availability, clients, flaps)
