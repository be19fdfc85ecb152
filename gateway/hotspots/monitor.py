"""The ``hotspots`` component: probe every access point and the uplink, calmly.

Each hotspot runs its own cycle loop, so one slow access point never delays another;
a semaphore bounds how many cycles run at once. A cycle runs the hotspot's probes
concurrently, folds them into one :class:`~gateway.hotspots.health.Outcome` and feeds
the hotspot's :class:`~gateway.hotspots.health.Hysteresis`. Only transitions become
events (``hotspot.state``, ``uplink.state``) and log lines: a hotspot logs once when it
goes down and once when it is back.

A hotspot with a ``ubus`` table also has its wifi clients counted each cycle, alongside
the probes (:mod:`~gateway.hotspots.ubus`); a count that cannot be read is ``None`` with
a reason, logged once when it starts failing and once when it works again, and never
judges the hotspot's health.

Without permission for unprivileged ping the monitor says so once, loudly (a warning,
an event, ``"icmp"`` in the snapshot and the systemd STATUS text), and runs a TCP probe
instead of each ICMP one: the hotspot's own TCP probe when it has one, else port 80.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp

from gateway.clock import now_iso
from gateway.component import Component, EventSink, Health
from gateway.config import HotspotConfig, IcmpProbe, Settings, TcpProbe, UplinkSection
from gateway.hotspots.health import Hysteresis, Outcome, Transition
from gateway.hotspots.probes import (
    AnyProbe,
    IcmpPermission,
    ProbeResult,
    icmp_permission,
    needs_internet,
    new_http_session,
    run_probe,
)
from gateway.hotspots.reasons import clients_reason_code, reason_code
from gateway.hotspots.ubus import ClientCount, UbusClient
from gateway.hotspots.windows import RollingWindows
from gateway.log import get_logger
from gateway.state import StateStore

__all__ = ["FALLBACK_TCP_PORT", "HotspotMonitor"]

FALLBACK_TCP_PORT = 80
"""Where a TCP probe knocks in place of a ping that is not permitted."""
MAX_CONCURRENT_CYCLES = 16
PUBLISH_EVERY_S = 1.0
"""Quiet cycles (no transition) refresh ``state/hotspots`` at most this often: with 50
hotspots on a 1 s interval, a snapshot per cycle would be 50 full snapshots a second
on MQTT and the WebSocket. Transitions, ``check`` and ``probe_now`` publish at once."""
UPLINK_FAIL_THRESHOLD = 3
UPLINK_RECOVER_THRESHOLD = 2


_log = get_logger("hotspots")


@dataclass(slots=True)
class _Target:
    """One watched thing: a hotspot, or the uplink (``host`` None)."""

    name: str
    host: str | None
    label: str
    interval_s: float
    probes: list[AnyProbe]
    internet_only: bool
    health: Hysteresis
    since: str
    windows: RollingWindows = field(default_factory=RollingWindows)
    last: list[ProbeResult] = field(default_factory=list)
    cycles: int = 0
    checked_at: str | None = None
    stand_in: TcpProbe | None = None
    """The TCP probe that runs in place of the ping, when ping is not permitted."""
    ubus: UbusClient | None = None
    clients: ClientCount | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class HotspotMonitor(Component):
    """Watches the hotspots and the uplink; publishes ``state/hotspots``."""

    name = "hotspots"
    critical = False
    heartbeat_timeout_s = 120.0

    def __init__(
        self,
        hotspots: Mapping[str, HotspotConfig],
        uplink: UplinkSection,
        *,
        state: StateStore,
        on_event: EventSink,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], str] = now_iso,
        max_concurrent: int = MAX_CONCURRENT_CYCLES,
        permission: IcmpPermission | None = None,
    ) -> None:
        """``permission`` overrides the start-up ICMP check (tests, benchmarks)."""
        self._state = state
        self._on_event = on_event
        self._clock = clock
        self._wall = wall
        self._semaphore = asyncio.Semaphore(max_concurrent)
        self.icmp = permission if permission is not None else icmp_permission()
        self._icmp_announced = False
        self._session: aiohttp.ClientSession | None = None
        self._last_published: dict[str, Any] | None = None
        self._stale = False
        """A quiet cycle ran since the last publish."""
        self._went_stale = asyncio.Event()
        """Set with ``_stale``: :meth:`_refresh` sleeps on it instead of polling."""
        started = wall()
        self._hotspots = {
            name: self._target(
                ubus=UbusClient(config.ubus) if config.ubus is not None else None,
                name=name,
                host=config.host,
                label=config.label,
                interval_s=config.interval_s,
                probes=list(config.probes),
                fail_threshold=config.fail_threshold,
                recover_threshold=config.recover_threshold,
                since=started,
            )
            for name, config in hotspots.items()
        }
        self._uplink = self._target(
            name="uplink",
            host=None,
            label="",
            interval_s=uplink.interval_s,
            probes=[p for p in uplink.probes if not isinstance(p, IcmpProbe | TcpProbe)],
            fail_threshold=UPLINK_FAIL_THRESHOLD,
            recover_threshold=UPLINK_RECOVER_THRESHOLD,
            since=started,
        )
        if len(self._uplink.probes) != len(uplink.probes):
            _log.warning("uplink.probe_ignored", why="icmp and tcp need a host; use http or dns")
        if not self._uplink.probes:
            self._uplink.health.reason = "no uplink probes configured"

    def _target(
        self,
        *,
        ubus: UbusClient | None = None,
        name: str,
        host: str | None,
        label: str,
        interval_s: float,
        probes: list[AnyProbe],
        fail_threshold: int,
        recover_threshold: int,
        since: str,
    ) -> _Target:
        effective, stand_in = (probes, None) if self.icmp.permitted else _without_icmp(probes)
        return _Target(
            name=name,
            host=host,
            label=label,
            interval_s=interval_s,
            probes=effective,
            internet_only=bool(effective) and all(needs_internet(p, host) for p in effective),
            health=Hysteresis(fail_threshold=fail_threshold, recover_threshold=recover_threshold),
            since=since,
            stand_in=stand_in,
            ubus=ubus,
        )

    # -- public ------------------------------------------------------------------------

    async def run(self, health: Health) -> None:
        """Probe every target on its interval until cancelled."""
        await self._announce_icmp()
        await self._publish()
        async with new_http_session() as session:
            self._session = session
            try:
                async with asyncio.TaskGroup() as group:
                    if self._uplink.probes:
                        group.create_task(self._loop(self._uplink))
                    for target in self._hotspots.values():
                        group.create_task(self._loop(target))
                    group.create_task(self._refresh())
                    while True:
                        health.beat()
                        await asyncio.sleep(min(30.0, self.heartbeat_timeout_s / 4))
            finally:
                self._session = None

    async def probe_now(self) -> dict[str, Any]:
        """Probe the uplink, then every hotspot at once; the ``hotspots.probe`` result.

        The results count as ordinary cycles (they feed the hysteresis), and the reply
        carries each target's state after them plus every probe's result.
        """
        await self._announce_icmp()
        if self._uplink.probes:
            await self._check(self._uplink)
        targets = list(self._hotspots.values())
        await asyncio.gather(*(self._check(target) for target in targets))
        return {
            "uplink": self._report(self._uplink),
            "hotspots": {target.name: self._report(target) for target in targets},
            "icmp": {"permitted": self.icmp.permitted, "detail": self.icmp.detail},
        }

    async def check(self, name: str) -> dict[str, Any]:
        """Run one cycle of hotspot ``name`` (or ``"uplink"``) now; return its report."""
        target = self._uplink if name == "uplink" else self._hotspots[name]
        await self._check(target)
        return self._report(target)

    def snapshot(self) -> dict[str, Any]:
        """The ``state/hotspots`` snapshot of PROTOCOL.md, plus ``icmp``."""
        now = self._clock()
        uplink = self._view(self._uplink, now)
        del uplink["label"], uplink["clients"], uplink["clients_reason"]
        del uplink["clients_reason_code"], uplink["clients_reason_params"]
        return {
            "uplink": uplink,
            "hotspots": {name: self._view(t, now) for name, t in self._hotspots.items()},
            "icmp": {"permitted": self.icmp.permitted, "detail": self.icmp.detail},
        }

    def telemetry(self) -> dict[str, Any]:
        """Per-target figures for the periodic telemetry sample (flat, for charts)."""
        now = self._clock()
        return {
            "uplink": _figures(self._uplink, now),
            "hotspots": {name: _figures(t, now) for name, t in self._hotspots.items()},
        }

    async def reload(self, settings: Settings) -> list[str]:
        """Apply new labels at once and re-publish; App reports the other keys.

        Labels are the one live hotspot key (``hotspots.*.label`` in App's LIVE_KEYS):
        renaming a point for the commune's map must not reset its statistics.
        """
        for name, config in settings.hotspots.items():
            target = self._hotspots.get(name)
            if target is not None:
                target.label = config.label
        await self._publish()
        return []

    def summary(self) -> str:
        """``"4/5 hotspots up"``, and the missing ping permission, for systemd STATUS."""
        states = [t.health.state for t in self._hotspots.values()]
        up = sum(state in {"up", "degraded"} for state in states)
        text = f"{up}/{len(states)} hotspots up"
        if not self.icmp.permitted:
            text += " (no ping permission: TCP fallback)"
        return text

    # -- cycles ------------------------------------------------------------------------

    async def _loop(self, target: _Target) -> None:
        next_at = self._clock()
        while True:
            await self._check(target, publish=False)
            next_at += target.interval_s
            delay = next_at - self._clock()
            if delay < 0:  # a cycle overran its interval: start again now, do not burst
                next_at, delay = self._clock(), 0.0
            await asyncio.sleep(delay)

    async def _refresh(self) -> None:
        # Wakes only once a quiet cycle has run (not every second of an idle daemon);
        # the sleep gathers the quiet cycles of up to PUBLISH_EVERY_S into one snapshot.
        while True:
            await self._went_stale.wait()
            await asyncio.sleep(PUBLISH_EVERY_S)
            if self._stale:
                await self._publish()

    async def _check(self, target: _Target, *, publish: bool = True) -> None:
        async with target.lock, self._semaphore:
            if target.ubus is None:
                pairs = await self._run_probes(target)
            else:
                pairs, clients = await asyncio.gather(
                    self._run_probes(target), target.ubus.count(self._session)
                )
                _tell_clients(target, clients)
                target.clients = clients
            outcome = self._judge(target, pairs)
            now = self._clock()
            target.last = [result for _, result in pairs]
            target.cycles += 1
            target.checked_at = self._wall()
            if outcome.ok is not None:
                target.windows.add(
                    now, ok=outcome.ok, rtts_ms=outcome.rtts_ms, loss_pct=outcome.loss_pct
                )
            transition = target.health.feed(outcome)
        if transition is not None:
            await self._announce(target, transition)
        if publish or transition is not None:
            await self._publish()
        else:
            self._stale = True
            self._went_stale.set()

    async def _run_probes(self, target: _Target) -> list[tuple[AnyProbe, ProbeResult]]:
        probes = list(target.probes)
        results = await asyncio.gather(
            *(run_probe(probe, target.host, session=self._session) for probe in probes)
        )
        pairs: list[tuple[AnyProbe, ProbeResult]] = []
        for probe, result in zip(probes, results, strict=True):
            if result.reason == "permission denied" and isinstance(probe, IcmpProbe):
                # The sysctl changed under us: fall back from now on, and say so once.
                self.icmp = IcmpPermission(False, "unprivileged ICMP refused by the kernel")
                await self._announce_icmp()
                target.probes, target.stand_in = _without_icmp(target.probes)
                fallback = _fallback_probe(probes, probe)
                stand_in = await run_probe(fallback, target.host)
                pairs.append((fallback, replace(stand_in, stands_in_for="icmp")))
            elif probe == target.stand_in:
                pairs.append((probe, replace(result, stands_in_for="icmp")))
            else:
                pairs.append((probe, result))
        return pairs

    def _judge(self, target: _Target, pairs: list[tuple[AnyProbe, ProbeResult]]) -> Outcome:
        uplink_down = self._uplink.health.state == "down"
        judged = [r for p, r in pairs if not (uplink_down and needs_internet(p, target.host))]
        if not judged:
            why = "uplink down" if uplink_down else "no probes"
            return Outcome(ok=None, reason=why)
        failed = next((r for r in judged if not r.ok), None)
        icmp = next((r for r in judged if r.kind == "icmp"), None)
        first_rtts = next((r.rtts_ms for r in judged if r.rtts_ms), ())
        return Outcome(
            ok=failed is None,
            reason=None if failed is None else f"{failed.kind}: {failed.reason}",
            rtts_ms=first_rtts,
            loss_pct=icmp.loss_pct if icmp is not None else None,
        )

    # -- telling -----------------------------------------------------------------------

    async def _announce(self, target: _Target, transition: Transition) -> None:
        target.since = self._wall()
        fields = {
            "from_state": transition.previous,
            "to_state": transition.state,
            "reason": transition.reason,
            "flaps": target.health.flaps,
        }
        if transition.state == "down":
            _log.warning(f"{_kind(target)}.down", target=target.name, **fields)
        elif transition.previous == "down":
            _log.warning(f"{_kind(target)}.back", target=target.name, **fields)
        else:
            _log.info(f"{_kind(target)}.state", target=target.name, **fields)
        event: dict[str, Any] = {
            "type": f"{_kind(target)}.state",
            "state": transition.state,
            "previous": transition.previous,
            "reason": transition.reason,
            **(_coded(transition.reason) if transition.reason is not None else {}),
            "flaps": target.health.flaps,
            "outages": target.health.outages,
        }
        if target.host is not None:
            event |= {"hotspot": target.name, "label": target.label}
        self._on_event(event)

    async def _announce_icmp(self) -> None:
        if self.icmp.permitted or self._icmp_announced:
            return
        self._icmp_announced = True
        _log.warning("hotspots.icmp_not_permitted", detail=self.icmp.detail, fallback="tcp")
        self._on_event(
            {"type": "hotspots.icmp_not_permitted", "detail": self.icmp.detail, "fallback": "tcp"}
        )

    async def _publish(self) -> None:
        self._stale = False
        self._went_stale.clear()
        snapshot = self.snapshot()
        if snapshot != self._last_published:
            self._last_published = snapshot
            await self._state.set("hotspots", snapshot)

    def _view(self, target: _Target, now: float) -> dict[str, Any]:
        return {
            "state": target.health.state,
            "since": target.since,
            "reason": target.health.reason,
            **_coded(target.health.reason),
            "rtt_ms": target.windows.rtt_ms(now),
            "loss_pct": target.windows.loss_pct(now),
            "clients": target.clients.clients if target.clients is not None else None,
            "clients_reason": target.clients.reason if target.clients is not None else None,
            **_clients_coded(target.clients.reason if target.clients is not None else None),
            "availability": target.windows.availability(now),
            "label": target.label,
            "flaps": target.health.flaps,
            "outages": target.health.outages,
            "cycles": target.cycles,
            "checked_at": target.checked_at,
        }

    def _report(self, target: _Target) -> dict[str, Any]:
        return {
            "state": target.health.state,
            "reason": target.health.reason,
            **_coded(target.health.reason),
            "probes": [result.as_dict() for result in target.last],
        }


def _coded(reason: str | None) -> dict[str, Any]:
    """``reason_code`` and ``reason_params`` to put beside a ``reason`` text."""
    code, params = reason_code(reason)
    return {"reason_code": code, "reason_params": params}


def _clients_coded(reason: str | None) -> dict[str, Any]:
    """``clients_reason_code`` and ``clients_reason_params`` beside ``clients_reason``."""
    code, params = clients_reason_code(reason)
    return {"clients_reason_code": code, "clients_reason_params": params}


def _figures(target: _Target, now: float) -> dict[str, Any]:
    rtt = target.windows.rtt_ms(now)
    availability = target.windows.availability(now)
    figures = {
        "state": target.health.state,
        "rtt_p50_ms": rtt["p50"],
        "rtt_p95_ms": rtt["p95"],
        "loss_pct": target.windows.loss_pct(now),
        "availability_1h": availability["1h"],
        "availability_24h": availability["24h"],
        "flaps": target.health.flaps,
    }
    if target.host is not None:
        figures["clients"] = target.clients.clients if target.clients is not None else None
    return figures


def _tell_clients(target: _Target, new: ClientCount) -> None:
    """Log once when the count starts failing (or fails differently), once when back."""
    old = target.clients.reason if target.clients is not None else None
    if new.reason is not None and new.reason != old:
        _log.warning("hotspot.clients_unknown", target=target.name, reason=new.reason)
    elif new.reason is None and old is not None:
        _log.info("hotspot.clients_back", target=target.name, clients=new.clients)


def _kind(target: _Target) -> str:
    return "uplink" if target.host is None else "hotspot"


def _fallback_probe(probes: list[AnyProbe], icmp: AnyProbe) -> TcpProbe:
    own = next((p for p in probes if isinstance(p, TcpProbe)), None)
    port = own.port if own is not None else FALLBACK_TCP_PORT
    return TcpProbe(kind="tcp", port=port, timeout_s=icmp.timeout_s)


def _without_icmp(probes: list[AnyProbe]) -> tuple[list[AnyProbe], TcpProbe | None]:
    """Each ICMP probe becomes a TCP one, never added twice; also return that TCP probe."""
    out: list[AnyProbe] = []
    stand_in: TcpProbe | None = None
    for probe in probes:
        substitute = _fallback_probe(probes, probe) if isinstance(probe, IcmpProbe) else probe
        if isinstance(probe, IcmpProbe):
            stand_in = _fallback_probe(probes, probe)
        if substitute not in out:
            out.append(substitute)
    return out, stand_in
