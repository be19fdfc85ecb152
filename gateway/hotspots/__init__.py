"""Hotspot monitoring: which free wifi point is down, and why, without crying wolf.

:class:`HotspotMonitor` is the component; :mod:`~gateway.hotspots.probes` does one look
at one target, :mod:`~gateway.hotspots.health` turns looks into a calm state and
:mod:`~gateway.hotspots.windows` keeps bounded rolling statistics.
"""

from __future__ import annotations

from gateway.hotspots.health import HealthState, Hysteresis, Outcome, Transition
from gateway.hotspots.monitor import FALLBACK_TCP_PORT, HotspotMonitor
from gateway.hotspots.probes import IcmpPermission, ProbeResult, icmp_permission, run_probe
from gateway.hotspots.ubus import ClientCount, UbusClient
from gateway.hotspots.windows import RollingWindows

__all__ = [
    "FALLBACK_TCP_PORT",
    "ClientCount",
    "HealthState",
    "HotspotMonitor",
    "Hysteresis",
    "IcmpPermission",
    "Outcome",
    "ProbeResult",
    "RollingWindows",
    "Transition",
    "UbusClient",
    "icmp_permission",
    "run_probe",
]
