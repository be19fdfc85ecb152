"""The amplifier's power relay: on before the first sample, off after a silence.

The amplifier powers itself through a narrow port of the relay bank,
:meth:`gateway.lighting.bank.RelayBank.drive` (source ``pa``): the bank's rules (minimum
interval, interlock) still hold and every switch is a ``relay.switched`` event and shows
in ``state/relays``, but no command goes through the Dispatcher, so the amplifier never
waits behind another command and an emergency never waits behind the amplifier.

An amplifier switched on needs ``amp_warmup_s`` before it passes sound cleanly (and the
turn-on thump must not carry the first word), so :meth:`Amplifier.acquire` waits that
long after the line really went on. After ``amp_idle_off_s`` of silence it goes off.
Fail-safe: :meth:`off_now` after a decode error or a lost device, and the synchronous
:meth:`force_off` on SIGTERM, which cannot wait for the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any, Protocol

from gateway.errors import GatewayError
from gateway.log import get_logger

__all__ = ["Amplifier", "RelayPort"]

_log = get_logger("pa.amplifier")

_CONFIRM_S = 5.0
"""How long to wait for a deferred switch (the relay's minimum interval) to happen."""


class RelayPort(Protocol):
    """What the amplifier needs of the relay bank (:class:`gateway.lighting.bank.RelayBank`)."""

    async def drive(self, name: str, on: bool, *, source: str, timeout_s: float = 5.0) -> bool:
        """Switch and wait until the line changed; False if it did not in ``timeout_s``."""

    def is_on(self, name: str) -> bool | None:
        """The line's state (None for an unknown relay)."""

    def force_off(self, name: str) -> None:
        """Off now, synchronously (SIGTERM)."""


class Amplifier:
    """Switches ``relay`` through ``relays`` and keeps time for warm-up and idle.

    Without a relay (or without a bank) there is no amplifier to switch: samples flow at
    once and nothing is switched.
    """

    def __init__(
        self,
        relay: str | None,
        relays: RelayPort | None = None,
        *,
        warmup_s: float,
        idle_off_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._relays = relays
        self.relay = relay if relays is not None else None
        self._warmup_s = warmup_s
        self._idle_off_s = idle_off_s
        self._clock = clock
        self._lock = asyncio.Lock()
        self._on_since: float | None = None
        """When our last switch on took effect; None once we asked for off."""
        self._idle: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def on(self) -> bool:
        """Whether the amplifier relay's line is on, as the relay bank says."""
        if self.relay is None or self._relays is None:
            return False
        return bool(self._relays.is_on(self.relay))

    def ready(self) -> bool:
        """No relay, or on and warm: samples may flow now."""
        if self.relay is None:
            return True
        self._cancel_idle()
        since = self._on_since
        return since is not None and self.on and self._clock() - since >= self._warmup_s

    async def acquire(self) -> None:
        """Switch on (if off) and return once the warm-up has passed.

        If the line does not come on (an interlock, a bank that is shutting down), the
        failure is logged and this returns at once: the line output still plays.
        """
        self._cancel_idle()
        if self.relay is None:
            return
        async with self._lock:
            if self._on_since is None or not self.on:
                if not await self._switch(True):
                    return
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
            self._on_since = None
            await self._switch(False)

    def force_off(self) -> None:
        """SIGTERM: off now, synchronously, through the relay bank's own fail-safe path."""
        self._closed = True
        self._cancel_idle()
        if self.relay is not None and self._relays is not None:
            try:
                self._relays.force_off(self.relay)
            except Exception as exc:  # shutting down: log, never raise
                _log.error("pa.amp_force_off_failed", error=str(exc), exc_info=exc)
        self._on_since = None

    async def _idle_off(self) -> None:
        await asyncio.sleep(self._idle_off_s)
        async with self._lock:
            # Cleared first: if this is cancelled while the bank defers the off, the next
            # acquire() asks for on again instead of trusting a line about to go off.
            self._on_since = None
            await self._switch(False)
        if self._idle is _current_task():
            self._idle = None

    def _cancel_idle(self) -> None:
        idle, self._idle = self._idle, None
        if idle is not None and idle is not _current_task():
            idle.cancel()

    async def _switch(self, on: bool) -> bool:
        """Drive the relay; True once its line is ``on``."""
        relay, relays = self.relay, self._relays
        if relay is None or relays is None:
            return True
        try:
            done = await relays.drive(relay, on, source="pa", timeout_s=_CONFIRM_S)
        except GatewayError as exc:  # the bank refused: an unknown relay
            _log.error("pa.amp_switch_failed", relay=relay, on=on, error=str(exc))
            return False
        if not done:
            _log.error(
                "pa.amp_switch_failed",
                relay=relay,
                on=on,
                error=f"the line did not change within {_CONFIRM_S:g} s",
            )
        return done


def _current_task() -> asyncio.Task[Any] | None:
    with contextlib.suppress(RuntimeError):
        return asyncio.current_task()
    return None
