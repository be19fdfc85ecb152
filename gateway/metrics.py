"""Prometheus metrics, read from the live objects at scrape time.

A custom collector instead of module-level gauges: nothing to keep in sync, no global
registry shared between the app instances that tests create side by side.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from gateway.component import Health

__all__ = ["build_registry"]


class _GatewayCollector(Collector):
    def __init__(
        self, *, version: str, started: float, healths: Callable[[], Iterable[Health]]
    ) -> None:
        self._version = version
        self._started = started
        self._healths = healths

    def collect(self) -> Iterator[InfoMetricFamily | GaugeMetricFamily | CounterMetricFamily]:
        yield InfoMetricFamily(
            "vg_build", "Version of the gateway", value={"version": self._version}
        )
        yield GaugeMetricFamily(
            "vg_uptime_seconds",
            "Seconds since the daemon started",
            value=time.monotonic() - self._started,
        )
        up = GaugeMetricFamily(
            "vg_component_healthy",
            "1 when the component runs and makes progress",
            labels=["component", "critical"],
        )
        restarts = CounterMetricFamily(
            "vg_component_restarts", "Restarts after a crash", labels=["component"]
        )
        for health in self._healths():
            up.add_metric(
                [health.name, str(health.critical).lower()],
                1.0 if health.problem() is None else 0.0,
            )
            restarts.add_metric([health.name], health.restarts)
        yield up
        yield restarts


def build_registry(
    *, version: str, started: float, healths: Callable[[], Iterable[Health]]
) -> CollectorRegistry:
    """A registry holding the gateway's collector (and nothing global)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_GatewayCollector(version=version, started=started, healths=healths))
    return registry
