"""Who may hold a connection open, how many, and for how long: the web port on a LAN
where anyone can open sockets.

* A connection must finish each request head within :data:`KEEPALIVE_S` of opening (or
  of its previous answer), and an idle keep-alive connection is closed after that long.
  aiohttp's keep-alive timer does both: it is not pushed back by bytes that do not
  complete a request, so a head sent a byte at a time is cut off too.
* At most :data:`MAX_CONNECTIONS` connections are open at once, and at most
  :data:`MAX_PER_ADDRESS` from one client address (a trusted reverse proxy is exempt
  from the second). One more is closed as soon as it is accepted, before anything is
  read, so idle sockets cannot use up the daemon's file descriptors, which the relay
  state file and the MQTT link need too.
* Refusals and the event loop's ``accept()`` errors (out of file descriptors) are logged
  at most once per :data:`LOG_EVERY_S`, with how many there were.

:class:`GatedSite` is an aiohttp site like ``TCPSite`` whose connections pass the
:class:`ConnectionGate` first.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, cast

from aiohttp import web

from gateway.log import get_logger

__all__ = [
    "KEEPALIVE_S",
    "LOG_EVERY_S",
    "MAX_CONNECTIONS",
    "MAX_PER_ADDRESS",
    "ConnectionGate",
    "GatedSite",
]

_log = get_logger("web")

KEEPALIVE_S = 15.0
"""Idle keep-alive, and the time a request head has to arrive in full."""
MAX_CONNECTIONS = 512
"""Open connections in all; half of the 1,024 descriptors a process gets by default."""
MAX_PER_ADDRESS = 128
"""Open connections from one address (a phone opens about six; the page one WebSocket)."""
LOG_EVERY_S = 10.0
_ACCEPT_ERROR = "socket.accept() out of system resource"
"""How asyncio reports an ``accept()`` that failed for want of descriptors or memory."""


class ConnectionGate:
    """Counts open connections, overall and per address; refuses beyond the caps."""

    def __init__(
        self,
        *,
        total: int = MAX_CONNECTIONS,
        per_address: int = MAX_PER_ADDRESS,
        exempt: Callable[[str], bool] = lambda address: False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total
        self.per_address = per_address
        self._exempt = exempt
        self._clock = clock
        self.open = 0
        self._by_address: dict[str, int] = {}
        self.refused = 0
        """Connections closed at once for a cap (for /metrics)."""
        self.accept_errors = 0
        """``accept()`` failures reported by the event loop (for /metrics)."""
        self._unlogged: dict[str, int] = {}
        self._logged_at = -LOG_EVERY_S

    def admit(self, address: str) -> bool:
        """Count a new connection from ``address``, or say it must be closed."""
        if self.open >= self.total:
            self._refuse("too_many_connections", address)
            return False
        held = self._by_address.get(address, 0)
        if held >= self.per_address and not self._exempt(address):
            self._refuse("too_many_from_address", address)
            return False
        self.open += 1
        self._by_address[address] = held + 1
        return True

    def release(self, address: str) -> None:
        """An admitted connection from ``address`` closed."""
        self.open -= 1
        held = self._by_address.get(address, 0) - 1
        if held > 0:
            self._by_address[address] = held
        else:
            self._by_address.pop(address, None)

    def from_address(self, address: str) -> int:
        """Connections open from ``address`` now."""
        return self._by_address.get(address, 0)

    def _refuse(self, reason: str, address: str) -> None:
        self.refused += 1
        self._note(reason, last_address=address)

    def accept_failed(self, context: dict[str, Any]) -> None:
        """An ``accept()`` that failed (asyncio retries it by itself a second later)."""
        self.accept_errors += 1
        self._note("accept_failed", error=str(context.get("exception", "")))

    def _note(self, reason: str, **fields: object) -> None:
        """Log at most once per :data:`LOG_EVERY_S`, with the counts since the last line."""
        self._unlogged[reason] = self._unlogged.get(reason, 0) + 1
        now = self._clock()
        if now - self._logged_at < LOG_EVERY_S:
            return
        self._logged_at = now
        counts, self._unlogged = self._unlogged, {}
        _log.warning(
            "web.connections_refused",
            counts=counts,
            open=self.open,
            limit=self.total,
            per_address=self.per_address,
            **fields,
        )

    def exception_handler(
        self, previous: Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object] | None
    ) -> Callable[[asyncio.AbstractEventLoop, dict[str, Any]], None]:
        """An event-loop exception handler that takes ``accept()`` errors (logged at a
        bounded rate) and hands everything else to ``previous`` (or the default)."""

        def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            if str(context.get("message", "")).startswith(_ACCEPT_ERROR):
                self.accept_failed(context)
            elif previous is not None:
                previous(loop, context)
            else:
                loop.default_exception_handler(context)

        return handle


class _GatedHandler(web.RequestHandler):
    """aiohttp's request handler, admitted by the gate before it does anything."""

    def __init__(
        self,
        manager: web.Server,
        *,
        gate: ConnectionGate,
        loop: asyncio.AbstractEventLoop,
        keepalive_s: float,
    ) -> None:
        super().__init__(manager, loop=loop, keepalive_timeout=keepalive_s)
        self._gate = gate
        self._admitted: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        if not self._gate.admit(address):
            cast(
                "asyncio.Transport", transport
            ).abort()  # closed before a byte is read; nothing was started
            return
        self._admitted = address
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._admitted is None:
            return
        self._gate.release(self._admitted)
        self._admitted = None
        super().connection_lost(exc)


class GatedSite(web.BaseSite):
    """A TCP site whose connections pass a :class:`ConnectionGate`, with a keep-alive
    (and request-head) timeout of ``keepalive_s``."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        gate: ConnectionGate,
        keepalive_s: float = KEEPALIVE_S,
        backlog: int = 128,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._host = host
        self._port = port
        self._gate = gate
        self._keepalive_s = keepalive_s

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None  # noqa: S101 - runner.setup() ran before (aiohttp checks)

        def handler() -> _GatedHandler:
            return _GatedHandler(server, gate=self._gate, loop=loop, keepalive_s=self._keepalive_s)

        self._server = await loop.create_server(
            handler, self._host, self._port, backlog=self._backlog
        )
