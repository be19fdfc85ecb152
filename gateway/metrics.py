"""Prometheus metrics, read from the live objects at scrape time.

A custom collector instead of module-level gauges: nothing to keep in sync, no global
registry shared between the app instances that tests create side by side.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from gateway.component import Health

if TYPE_CHECKING:
    from gateway.looplag import LoopLagStats
    from gateway.outbox import OutboxStats
    from gateway.uplink.link import LinkStats

__all__ = ["build_registry"]

_Family = InfoMetricFamily | GaugeMetricFamily | CounterMetricFamily | SummaryMetricFamily


class _GatewayCollector(Collector):
    def __init__(
        self,
        *,
        version: str,
        started: float,
        healths: Callable[[], Iterable[Health]],
        outbox: Callable[[], OutboxStats | None],
        link: Callable[[], LinkStats | None],
        loop_lag: Callable[[], LoopLagStats | None] | None,
    ) -> None:
        self._version = version
        self._started = started
        self._healths = healths
        self._outbox = outbox
        self._link = link
        self._loop_lag = loop_lag

    def collect(self) -> Iterator[_Family]:
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
        yield from self._collect_loop_lag()

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

    def _collect_loop_lag(self) -> Iterator[SummaryMetricFamily | GaugeMetricFamily]:
        """``vg_loop_lag_seconds`` as a Prometheus summary.

        A summary because the quantiles are computed here, over the last minute
        (:data:`gateway.looplag.WINDOW_S`), which is what a summary's ``quantile`` label
        means to Prometheus users; ``quantile="1"`` is the window's max, as in Go's
        ``go_gc_duration_seconds``. ``_sum``/``_count`` cover every sample since start,
        so ``rate(_sum)/rate(_count)`` gives the mean lag over any range. The max since
        start is a gauge beside it, so a stall between two scrapes is not lost.
        """
        stats = self._loop_lag() if self._loop_lag is not None else None
        if stats is None:
            return
        name = "vg_loop_lag_seconds"
        lag = SummaryMetricFamily(
            name,
            "How late the event loop ran a wake-up, over the last minute (quantile 1 is the max)",
        )
        for quantile, value in (("0.5", stats.p50), ("0.99", stats.p99), ("1", stats.max)):
            lag.samples.append(Sample(name, {"quantile": quantile}, value))
        lag.add_metric([], stats.count, stats.total)
        yield lag
        yield GaugeMetricFamily(
            "vg_loop_lag_max_seconds",
            "The largest event loop lag since the daemon started",
            value=stats.max_ever,
        )


def build_registry(
    *,
    version: str,
    started: float,
    healths: Callable[[], Iterable[Health]],
    outbox: Callable[[], OutboxStats | None],
    link: Callable[[], LinkStats | None],
    loop_lag: Callable[[], LoopLagStats | None] | None = None,
    extra: Iterable[Collector] = (),
) -> CollectorRegistry:
    """A registry holding the gateway's collector and ``extra`` ones (nothing global).

    ``loop_lag`` gives :meth:`gateway.looplag.LoopLag.stats`; without it (or while it
    returns None) ``vg_loop_lag_seconds`` is left out.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(
        _GatewayCollector(
            version=version,
            started=started,
            healths=healths,
            outbox=outbox,
            link=link,
            loop_lag=loop_lag,
        )
    )
    for collector in extra:
        registry.register(collector)
    return registry
