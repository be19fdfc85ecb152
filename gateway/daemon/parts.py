"""The daemon's parts, built whole.

Everything the App runs is made in one place (:meth:`gateway.daemon.app.App.run` calls
the builder once, after the state folder is proven writable) and kept in one frozen
:class:`Parts`: no part is an ``X | None`` filled in later, and no code has to ask
whether the outbox exists yet.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.commands import Dispatcher
from gateway.component import Component
from gateway.events import EventHub
from gateway.hotspots import HotspotMonitor
from gateway.lighting import Control
from gateway.outbox import Outbox
from gateway.pa import PublicAddress
from gateway.uplink.link import Link

__all__ = ["Parts"]


@dataclass(frozen=True, slots=True)
class Parts:
    """One running daemon's parts, from the outbox to the link."""

    outbox: Outbox
    events: EventHub
    control: Control
    pa: PublicAddress
    hotspots: HotspotMonitor
    dispatcher: Dispatcher
    link: Link
    components: tuple[Component, ...]
    """Supervised under the App's TaskGroup, in this order."""
