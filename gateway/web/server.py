"""The HTTP server: health and metrics now, the operator UI and API on top later.

Binding happens in :meth:`WebServer.start`, before the daemon tells systemd it is ready,
so a port that is already taken is a clear start-up error (exit 2, naming ``web.port``)
instead of a daemon that runs without its UI.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from gateway.errors import StartupError
from gateway.log import get_logger

__all__ = ["HealthReport", "WebServer"]

_log = get_logger("web")


@dataclass(frozen=True, slots=True)
class HealthReport:
    """What ``/healthz`` answers: healthy or not, and the details as JSON."""

    healthy: bool
    details: dict[str, Any] = field(default_factory=dict)


class WebServer:
    """Owns the aiohttp application, its runner and the listening socket."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        health: Callable[[], HealthReport],
        registry: CollectorRegistry,
    ) -> None:
        self._host = host
        self._port = port
        self._health = health
        self._registry = registry
        self._runner: web.AppRunner | None = None
        self.app = web.Application()
        self.app.router.add_get("/healthz", self._healthz)
        self.app.router.add_get("/metrics", self._metrics)

    @property
    def port(self) -> int:
        """The port actually bound (differs from the configured one when that was 0)."""
        if self._runner is None:
            return self._port
        for address in self._runner.addresses:
            return int(address[1])
        return self._port

    async def start(self) -> None:
        """Bind and start serving; a taken port or bad address is a StartupError."""
        runner = web.AppRunner(self.app, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            where = f"{self._host}:{self._port}"
            if exc.errno == errno.EADDRINUSE:
                raise StartupError.single(
                    "web.port", f"{where} is already in use by another program"
                ) from exc
            if exc.errno in {errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT}:
                raise StartupError.single(
                    "web.host", f"{self._host!r} is not an address of this machine"
                ) from exc
            if exc.errno == errno.EACCES:
                raise StartupError.single(
                    "web.port", f"{where}: permission denied (ports below 1024 need root)"
                ) from exc
            raise StartupError.single("web.host", f"cannot listen on {where}: {exc}") from exc
        self._runner = runner
        _log.info("web.listening", host=self._host, port=self.port)

    async def stop(self) -> None:
        """Stop listening and close open connections."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, request: web.Request) -> web.Response:
        report = self._health()
        body = {"status": "ok" if report.healthy else "unhealthy", **report.details}
        return web.json_response(body, status=200 if report.healthy else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self._registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )
