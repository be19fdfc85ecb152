"""The amplifier's power relay: on before the first sample, off after a silence.

The relay is switched with a ``relay.set`` command through the one Dispatcher (source
``pa``), like any other relay command, so every switch shows in ``state/relays`` and in
the events, and the relay bank's rules (minimum interval, interlock) still hold.

An amplifier switched on needs ``amp_warmup_s`` before it passes sound cleanly (and the
turn-on thump must not carry the first word), so :meth:`Amplifier.acquire` waits that
long after the relay really went on. After ``amp_idle_off_s`` of silence it goes off.
Fail-safe: :meth:`off_now` after a decode error or a lost device, and the synchronous
:meth:`force_off` on SIGTERM, which cannot wait for the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from gateway.commands import Source, new_id
from gateway.log import get_logger

__all__ = ["Amplifier"]

_log = get_logger("pa.amplifier")


class _Reply(Protocol):
    status: str
    result: dict[str, Any] | None


Dispatch = Callable[[dict[str, Any], Source], Awaitable[Any]]

_CONFIRM_S = 5.0
"""How long to wait for a deferred switch (the relay's minimum interval) to happen."""


class Amplifier:
    """Switches ``relay`` (or nothing, when None) and keeps time for warm-up and idle."""

    def __init__(
        self,
        relay: str | None,
        *,
        warmup_s: float,
        idle_off_s: float,
        relay_on: Callable[[], bool | None],
        force_off: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.relay = relay
        self._warmup_s = warmup_s
        self._idle_off_s = idle_off_s
        self._relay_on = relay_on
        self._force_off = force_off
        self._clock = clock
        self._dispatch: Dispatch | None = None
        self._lock = asyncio.Lock()
        self._on_since: float | None = None
        self._idle: asyncio.Task[None] | None = None
        self._closed = False

    def open(self, dispatch: Dispatch) -> None:
        """The Dispatcher to switch through (given once the daemon has built it)."""
        self._dispatch = dispatch

    @property
    def on(self) -> bool:
        """Whether the amplifier relay is on as far as the relay bank says."""
        if self.relay is None:
            return False
        return bool(self._relay_on())

    def ready(self) -> bool:
        """No relay, or on and warm: samples may flow now."""
        if self.relay is None:
            return True
        self._cancel_idle()
        since = self._on_since
        return since is not None and self.on and self._clock() - since >= self._warmup_s

    async def acquire(self) -> None:
        """Switch on (if off) and return once the warm-up has passed."""
        self._cancel_idle()
        if self.relay is None:
            return
        async with self._lock:
            if self._on_since is None or not self.on:
                await self._switch(True)
                self._on_since = self._clock()
            remaining = self._on_since + self._warmup_s - self._clock()
        if remaining > 0:
            await asyncio.sleep(remaining)

    def release(self) -> None:
        """Silence from now: off after the idle time, unless something plays before."""
        if self.relay is None or self._closed:
            return
        self._cancel_idle()
        self._idle = asyncio.get_running_loop().create_task(self._idle_off(), name="pa-amp-idle")

    async def off_now(self, reason: str) -> None:
        """Fail-safe: off at once (a decode error, a lost device)."""
        self._cancel_idle()
        if self.relay is None:
            return
        _log.warning("pa.amp_off", reason=reason)
        async with self._lock:
            await self._switch(False)
            self._on_since = None

    def force_off(self) -> None:
        """SIGTERM: off now, synchronously, through the relay bank's own fail-safe path."""
        self._closed = True
        self._cancel_idle()
        if self.relay is not None and self._force_off is not None:
            try:
                self._force_off(self.relay)
            except Exception as exc:  # shutting down: log, never raise
                _log.error("pa.amp_force_off_failed", error=str(exc), exc_info=exc)
        self._on_since = None

    async def _idle_off(self) -> None:
        await asyncio.sleep(self._idle_off_s)
        async with self._lock:
            await self._switch(False)
            self._on_since = None
        self._idle = None

    def _cancel_idle(self) -> None:
        idle, self._idle = self._idle, None
        if idle is not None and idle is not _current_task():
            idle.cancel()

    async def _switch(self, on: bool) -> None:
        dispatch = self._dispatch
        if dispatch is None or self.relay is None:
            return
        command = {
            "id": new_id("pa"),
            "type": "relay.set",
            "args": {"relay": self.relay, "on": on},
        }
        reply = await dispatch(command, "pa")
        if getattr(reply, "status", None) != "done":
            _log.error(
                "pa.amp_switch_failed",
                relay=self.relay,
                on=on,
                status=getattr(reply, "status", None),
                error=getattr(reply, "error_message", None),
            )
            return
        # The bank may defer a switch (minimum interval): wait until the line changed.
        deadline = self._clock() + _CONFIRM_S
        while bool(self._relay_on()) != on and self._clock() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)  # the bank has no "switched" event to wait on


def _current_task() -> asyncio.Task[Any] | None:
    with contextlib.suppress(RuntimeError):
        return asyncio.current_task()
    return None
