"""Prometheus metrics, read from the live objects at scrape time.

A custom collector instead of module-level gauges: nothing to keep in sync, no global
registry shared between the app instances that tests create side by side.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from gateway.component import Health

if TYPE_CHECKING:
    from gateway.link import LinkStats
    from gateway.outbox import OutboxStats

__all__ = ["build_registry"]


class _GatewayCollector(Collector):
    def __init__(
        self,
        *,
        version: str,
        started: float,
        healths: Callable[[], Iterable[Health]],
        outbox: Callable[[], OutboxStats | None],
        link: Callable[[], LinkStats | None],
    ) -> None:
        self._version = version
        self._started = started
        self._healths = healths
        self._outbox = outbox
        self._link = link

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
        yield from self._collect_outbox()
        yield from self._collect_link()

    def _collect_outbox(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        stats = self._outbox()
        if stats is None:
            return
        depth = GaugeMetricFamily("vg_outbox_depth", "Records waiting", labels=["stream"])
        size = GaugeMetricFamily("vg_outbox_bytes", "Bytes waiting", labels=["stream"])
        dropped = CounterMetricFamily(
            "vg_outbox_dropped", "Records dropped because the outbox was full", labels=["stream"]
        )
        for stream in stats.depth:
            depth.add_metric([stream], stats.depth[stream])
            size.add_metric([stream], stats.bytes[stream])
            dropped.add_metric([stream], stats.dropped[stream])
        yield depth
        yield size
        yield dropped
        yield GaugeMetricFamily(
            "vg_outbox_disk_bytes", "Size of the outbox files", value=stats.disk_bytes
        )
        yield CounterMetricFamily(
            "vg_outbox_commits", "Transactions committed (fsyncs)", value=stats.commits
        )
        yield CounterMetricFamily(
            "vg_outbox_loop_commits",
            "Of those, commits of commands' records made on the event loop (few while the"
            " SD card is slow: then they go through the writer thread)",
            value=stats.loop_commits,
        )
        if stats.oldest_age_s is not None:
            yield GaugeMetricFamily(
                "vg_outbox_oldest_age_seconds",
                "Age of the oldest record not yet delivered",
                value=stats.oldest_age_s,
            )

    def _collect_link(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        stats = self._link()
        if stats is None:
            return
        yield GaugeMetricFamily(
            "vg_link_connected", "1 while connected to the broker", value=int(stats.connected)
        )
        yield CounterMetricFamily(
            "vg_link_connects", "Successful connections", value=stats.connects
        )
        yield CounterMetricFamily(
            "vg_link_failures", "Failed or lost connections", value=stats.failures
        )
        yield CounterMetricFamily(
            "vg_link_published_records",
            "Records acknowledged by the broker",
            value=stats.published_records,
        )
        yield CounterMetricFamily(
            "vg_link_resent_records",
            "Records sent again after a reconnect",
            value=stats.resent_records,
        )


def build_registry(
    *,
    version: str,
    started: float,
    healths: Callable[[], Iterable[Health]],
    outbox: Callable[[], OutboxStats | None],
    link: Callable[[], LinkStats | None],
    extra: Iterable[Collector] = (),
) -> CollectorRegistry:
    """A registry holding the gateway's collector and ``extra`` ones (nothing global)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(
        _GatewayCollector(
            version=version, started=started, healths=healths, outbox=outbox, link=link
        )
    )
    for collector in extra:
        registry.register(collector)
    return registry
