"""The State store: the latest snapshot of each component, and who wants to hear of it.

Components publish a full snapshot (``relays``, ``pa``, ``hotspots``, ``system``); the
MQTT link republishes it retained on ``P/ID/state/{component}`` and the web UI pushes it
over its WebSocket. Only the latest snapshot matters, so a slow listener skips versions
instead of queueing them.
"""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.clock import now_iso

__all__ = ["StateStore"]


class StateStore:
    """Latest snapshot per component, with a version counter listeners can wait on.

    Listeners wait on futures of their own rather than an ``asyncio.Condition``: a
    cancelled ``Condition.wait`` must take the lock back before it may finish, and with
    several listeners (the MQTT link and the web feed) Python 3.11 can leave a cancelled
    one waiting for that lock forever, which hung the daemon's shutdown.
    """

    def __init__(self) -> None:
        self._snapshots: dict[str, dict[str, Any]] = {}
        self._versions: dict[str, int] = {}
        self._waiters: set[asyncio.Future[None]] = set()

    def snapshot(self, component: str) -> dict[str, Any] | None:
        """The latest snapshot of ``component``, or None before its first one."""
        return self._snapshots.get(component)

    def all(self) -> dict[str, dict[str, Any]]:
        """Every component's latest snapshot (what ``GET /api/v1/state`` answers)."""
        return dict(self._snapshots)

    def versions(self) -> dict[str, int]:
        """How many times each component's snapshot changed."""
        return dict(self._versions)

    async def set(self, component: str, snapshot: dict[str, Any]) -> None:
        """Replace ``component``'s snapshot (adds ``ts``) and wake the listeners."""
        self._snapshots[component] = {"ts": now_iso(), **snapshot}
        self._versions[component] = self._versions.get(component, 0) + 1
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait_changed(self, seen: dict[str, int]) -> dict[str, int]:
        """Wait until some version differs from ``seen``; return the current versions."""
        while self._versions == seen:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.add(waiter)
            try:
                await waiter
            finally:
                self._waiters.discard(waiter)
        return dict(self._versions)
