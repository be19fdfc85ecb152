"""The HTTP server: the operator page, its API, health and metrics, and who may use what.

Binding happens in :meth:`WebServer.start`, before the daemon tells systemd it is ready,
so a port that is already taken is a clear start-up error (exit 2, naming ``web.port``)
instead of a daemon that runs without its UI.

Security is decided in one place, :meth:`WebServer._guard`, before any handler runs:
every route needs a session unless it is on :data:`ALLOWLIST` (or, with
``web.public_status``, on :data:`PUBLIC_STATUS`); every state-changing request must
come from the page's own origin, and, once logged in, carry the session's CSRF token.
A new route is therefore closed until someone adds it to a list here on purpose.
Every route, ``/healthz`` and ``/metrics`` included, answers only to the Pi's own
addresses and names (see :func:`_known_host`).

Behind a reverse proxy listed in ``web.trusted_proxies`` the request is seen as the
proxy describes it (``X-Forwarded-For``, ``X-Forwarded-Proto``); from anyone else those
headers mean nothing. Connections are capped and timed out in
:mod:`gateway.web.connections`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from yarl import URL

from gateway.commands import Dispatcher
from gateway.config import Settings
from gateway.errors import StartupError
from gateway.log import get_logger
from gateway.state import StateStore
from gateway.web.api import SESSION, Api, ClipsLike, SchedulerLike, error
from gateway.web.auth import Access
from gateway.web.backup import register_backup
from gateway.web.connections import (
    KEEPALIVE_S,
    MAX_CONNECTIONS,
    MAX_PER_ADDRESS,
    ConnectionGate,
    GatedSite,
)
from gateway.web.live import LOG_TAP, LiveHub, LogTap
from gateway.web.printout import WifiPoint, render_sheet
from gateway.web.sessions import COOKIE

__all__ = [
    "ALLOWLIST",
    "CSP",
    "PUBLIC_STATUS",
    "SESSION_SWEEP_S",
    "STATIC_DIR",
    "HealthReport",
    "WebServer",
]

_log = get_logger("web")

STATIC_DIR = Path(__file__).resolve().parent / "static"
ALLOWLIST = frozenset(
    {
        "/",
        "/static/{path}",
        "/healthz",
        "/metrics",
        "/api/v1/session",
        "/api/v1/login",
        "/api/v1/setup",
    }
)
"""Routes (by their pattern) anyone may call: the login page, its assets, probes, login."""
PUBLIC_STATUS = frozenset({"/api/v1/state", "/api/v1/ws"})
"""Readable without login, with GET only, when ``web.public_status = true``."""
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SESSION_SWEEP_S = 30.0
"""How often open WebSockets are checked against their session (idle, lifetime)."""
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
    ".webmanifest": "application/manifest+json",
}
"""Static files served, by suffix; anything else under static/ is not served."""


@dataclass(frozen=True, slots=True)
class HealthReport:
    """What ``/healthz`` answers: healthy or not, and the details as JSON."""

    healthy: bool
    details: dict[str, Any] = field(default_factory=dict)


def known_host_names(settings: Settings) -> frozenset[str]:
    """The names this Pi may be reached by: its own (and ``.local``), configured ones,
    and the hosts of ``web.trusted_origins``. IP addresses and localhost always work."""
    own = socket.gethostname().lower()
    names = {own, f"{own}.local", *(name.lower() for name in settings.web.hostnames)}
    names |= {(URL(origin).host or "").lower() for origin in settings.web.trusted_origins}
    return frozenset(name for name in names if name)


def _known_host(request: web.Request, names: frozenset[str]) -> bool:
    """Whether the ``Host`` the browser asked for is this Pi, not a rebound DNS name.

    A page on a hostile site can point its own name at the Pi's LAN address (DNS
    rebinding); its requests then look same-origin. They still carry the hostile name in
    ``Host``, which is why only addresses and the Pi's known names are served.
    """
    host = (request.url.host or "").strip("[]").rstrip(".").lower()
    if not host:
        return False
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(host)
        return True
    return host == "localhost" or host in names


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _networks(entries: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)


def _within(address: str, networks: tuple[Network, ...]) -> bool:
    """Whether ``address`` (as a socket reports it) lies in one of ``networks``."""
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in networks)


def forwarded_client(peer: str, forwarded_for: Iterable[str], proxies: tuple[Network, ...]) -> str:
    """The client behind trusted proxies: the rightmost ``X-Forwarded-For`` hop that is
    not itself a trusted proxy (every proxy appends the address it saw; only the hops
    our own proxies appended can be believed). ``peer`` itself when it is no proxy."""
    if not _within(peer, proxies):
        return peer
    hops = [hop.strip() for header in forwarded_for for hop in header.split(",")]
    client = peer
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop.strip("[]"))
        except ValueError:
            break  # not an address: nothing further left can be believed either
        client = hop.strip("[]")
        if not _within(client, proxies):
            break
    return client


def _same_origin(request: web.Request, trusted: Iterable[str]) -> bool:
    """The request comes from a page of this very server (or a configured proxy origin).

    Browsers send ``Origin`` on every POST and WebSocket; a request without one is not
    from our page, so it is refused too.
    """
    origin = request.headers.get("Origin")
    if not origin:
        return False
    own = f"{request.scheme}://{request.host}"
    return origin.lower() == own.lower() or origin in trusted


class WebServer:
    """Owns the aiohttp application, its runner and the listening socket."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        health: Callable[[], HealthReport],
        registry: CollectorRegistry,
        state: StateStore,
        settings: Settings,
        link_online: Callable[[], bool] = lambda: False,
        clock: Callable[[], float] = time.time,
        log_tap: LogTap = LOG_TAP,
        keepalive_s: float = KEEPALIVE_S,
        max_connections: int = MAX_CONNECTIONS,
        max_per_address: int = MAX_PER_ADDRESS,
        session_sweep_s: float = SESSION_SWEEP_S,
    ) -> None:
        self._host = host
        self._port = port
        self._health = health
        self._registry = registry
        self._settings = settings
        self._host_names = known_host_names(settings)
        self._link_online = link_online
        self._log_tap = log_tap
        self._runner: web.AppRunner | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._sweep_s = session_sweep_s
        self._keepalive_s = keepalive_s
        self._proxies = _networks(settings.web.trusted_proxies)
        self.connections = ConnectionGate(
            total=max_connections,
            per_address=max_per_address,
            exempt=lambda address: _within(address, self._proxies),
        )
        self._loop_handler: object = None
        web_settings = settings.web
        self.access = Access(
            settings.gateway.state_dir,
            ttl_s=web_settings.session_ttl_s,
            idle_s=web_settings.session_idle_s,
            max_attempts=web_settings.login_max_attempts,
            lockout_s=web_settings.login_lockout_s,
            max_lockout_s=web_settings.login_max_lockout_s,
            clock=clock,
        )
        self.live = LiveHub(state)
        self.live.session_alive = self.access.sessions.alive
        self.access.sessions.on_revoke = self.live.recheck
        self.api = Api(
            settings=settings,
            access=self.access,
            state=state,
            hub=self.live,
            overview=self._overview,
        )
        self.requests: dict[str, int] = {}
        """Answers by status class (``2xx`` …), for /metrics."""
        self.app = web.Application(middlewares=[self._guard])
        self.app.on_response_prepare.append(self._secure_headers)
        self.app.router.add_get("/", self._index)
        self.app.router.add_get("/static/{path:.+}", self._static)
        self.app.router.add_get("/print", self._print)
        self.app.router.add_get("/healthz", self._healthz)
        self.app.router.add_get("/metrics", self._metrics)
        self.api.register(self.app.router)
        register_backup(self.app.router, settings)
        registry.register(_WebCollector(self))

    def attach(
        self,
        *,
        dispatcher: Dispatcher | None = None,
        clips: ClipsLike | None = None,
        scheduler: SchedulerLike | None = None,
    ) -> None:
        """Hand over what exists only once the daemon is built (commands, clips, schedules)."""
        if dispatcher is not None:
            self.api.dispatcher = dispatcher
        if clips is not None:
            self.api.clips = clips
        if scheduler is not None:
            self.api.scheduler = scheduler

    def event(self, event: dict[str, Any], seq: int | None = None) -> None:
        """An event (command, relay switched …) for ``/api/v1/events`` and the pages.

        A ``schedule.set`` that was done also pushes the new schedules to the pages,
        since schedules have no snapshot of their own for the state watcher to see.
        """
        self.live.event(event, seq)
        done = event.get("command") == "schedule.set" and event.get("status") == "done"
        if done and (schedules := self.api.schedules()) is not None:
            self.live.state("schedules", schedules)

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
        runner = web.AppRunner(
            self.app,
            handle_signals=False,
            shutdown_timeout=1.0,
            keepalive_timeout=self._keepalive_s,
        )
        await runner.setup()
        site = GatedSite(
            runner, self._host, self._port, gate=self.connections, keepalive_s=self._keepalive_s
        )
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
        loop = asyncio.get_running_loop()
        handler = self.connections.exception_handler(loop.get_exception_handler())
        loop.set_exception_handler(handler)
        self._loop_handler = handler
        self.begin()
        _log.info("web.listening", host=self._host, port=self.port)

    def begin(self) -> None:
        """Start the live feed and, without a password, print the setup code.

        Separate from :meth:`start` so tests can serve :attr:`app` with aiohttp's own
        test server and still get the live parts.
        """
        loop = asyncio.get_running_loop()
        self._watcher = loop.create_task(self.live.watch_state(), name="web.live")
        self._sweeper = loop.create_task(self._sweep_sessions(), name="web.sessions")
        self._log_tap.attach(self.live, loop)
        self.access.ensure_setup_code()
        self.api.clear_uploads()

    async def _sweep_sessions(self) -> None:
        """Forever: close the WebSockets of sessions that idled out or expired (a page
        that only listens makes no request that would notice)."""
        while True:
            await asyncio.sleep(self._sweep_s)
            self.live.recheck()

    async def end(self) -> None:
        """Stop the live feed (the counterpart of :meth:`begin`); keep the sessions' idle
        clocks."""
        self._log_tap.attach(None)
        self.access.sessions.flush()
        for task in (self._watcher, self._sweeper):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._watcher = self._sweeper = None

    async def stop(self) -> None:
        """Stop listening and close open connections."""
        await self.end()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        loop = asyncio.get_running_loop()
        if self._loop_handler is not None and loop.get_exception_handler() is self._loop_handler:
            loop.set_exception_handler(None)
        self._loop_handler = None

    # -- the guard ------------------------------------------------------------------

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Deny by default: every request passes :meth:`_refusal` before its handler."""
        if self._proxies:
            request = self._as_forwarded(request)
        resource = request.match_info.route.resource
        if resource is None:  # no such route: aiohttp answers 404/405 itself
            return await handler(request)
        refusal = self._refusal(request, resource.canonical)
        return refusal if refusal is not None else await handler(request)

    def _as_forwarded(self, request: web.Request) -> web.Request:
        """From a trusted proxy: the request with the client's address, and ``https``
        when the proxy says the client used it (the cookie is then ``Secure``)."""
        peer = request.remote
        if peer is None or not _within(peer, self._proxies):
            return request
        client = forwarded_client(
            peer, request.headers.getall("X-Forwarded-For", []), self._proxies
        )
        proto = request.headers.get("X-Forwarded-Proto", "").rsplit(",", 1)[-1].strip().lower()
        scheme = "https" if proto == "https" else request.scheme
        return request.clone(remote=client, scheme=scheme)

    def _refusal(self, request: web.Request, pattern: str) -> web.Response | None:
        """Why ``request`` is refused, or None: a known Host, Origin on every change,
        a session unless allowlisted, CSRF on every change after login."""
        if not _known_host(request, self._host_names):
            return error(
                421, "unknown_host", "this gateway answers to its address or its names only"
            )
        unsafe = request.method not in SAFE_METHODS
        trusted = self._settings.web.trusted_origins
        if unsafe and not _same_origin(request, trusted):
            return error(403, "forbidden", "refused: the request does not come from this page")
        cross_site_ws = pattern == "/api/v1/ws" and "Origin" in request.headers
        if cross_site_ws and not _same_origin(request, trusted):
            return error(403, "forbidden", "refused: a WebSocket from another site")
        self.access.refresh()
        session = self.access.sessions.get(request.cookies.get(COOKIE))
        if session is not None:
            request[SESSION] = session
        public = pattern in ALLOWLIST or (
            self._settings.web.public_status and not unsafe and pattern in PUBLIC_STATUS
        )
        if session is None and not public:
            return error(401, "unauthenticated", "log in first")
        needs_csrf = session is not None and unsafe and pattern not in ALLOWLIST
        if needs_csrf and not (session and session.csrf_ok(request.headers.get("X-CSRF-Token"))):
            return error(403, "forbidden", "missing or wrong X-CSRF-Token")
        return None

    async def _secure_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        """The same strict headers on every answer, errors and static files included.

        Every answer passes here once, so it is also where answers are counted.
        """
        key = f"{response.status // 100}xx"
        self.requests[key] = self.requests.get(key, 0) + 1
        for name, value in _HEADERS.items():
            response.headers.setdefault(name, value)
        if request.path.startswith("/api/"):
            response.headers["Cache-Control"] = "no-store"
        else:
            response.headers.setdefault("Cache-Control", "no-cache")

    # -- page, static, probes ---------------------------------------------------------

    async def _index(self, request: web.Request) -> web.StreamResponse:
        index = STATIC_DIR / "index.html"
        if not index.is_file():
            return web.Response(status=503, text="The web UI is not installed.\n")
        return web.FileResponse(index, headers={"Content-Type": _TYPES[".html"]})

    async def _static(self, request: web.Request) -> web.StreamResponse:
        """A file under static/, by a path of plain names: no dot-segments, no links out."""
        parts = request.match_info["path"].split("/")
        if any(p in ("", ".", "..") or p.startswith(".") or "\\" in p or "\0" in p for p in parts):
            raise web.HTTPNotFound
        path = STATIC_DIR.joinpath(*parts)
        content_type = _TYPES.get(path.suffix.lower())
        try:
            resolved = path.resolve(strict=True)
        except (OSError, ValueError):
            raise web.HTTPNotFound from None
        if content_type is None or not resolved.is_file() or STATIC_DIR not in resolved.parents:
            raise web.HTTPNotFound
        return web.FileResponse(resolved, headers={"Content-Type": content_type})

    async def _print(self, request: web.Request) -> web.Response:
        """The A4 notice-board sheet (session required, like every route off the list):
        QR codes for this page's address and each hotspot's open wifi (``ssid``)."""
        wifi = [
            WifiPoint(ssid, hotspot.label or name)
            for name, hotspot in self._settings.hotspots.items()
            if (ssid := hotspot.ssid)
        ]
        page = render_sheet(
            village=self._settings.gateway.name or self._settings.gateway.id,
            address=f"{request.scheme}://{request.host}/",
            wifi=wifi,
        )
        return web.Response(text=page, content_type="text/html", charset="utf-8")

    def _overview(self) -> dict[str, Any]:
        """The parts of ``/api/v1/state`` that are not component snapshots."""
        details = self._health().details
        gateway = self._settings.gateway
        return {
            "gateway": {
                "id": gateway.id,
                "name": gateway.name,
                "version": details.get("version"),
            },
            "link": {"online": self._link_online()},
            "health": details.get("components", {}),
            "owners": self._owners(),
            "features": {"backup": self._has_route("/api/v1/backup")},
        }

    def _has_route(self, pattern: str) -> bool:
        """Whether a route is registered (the page hides links to routes this build lacks)."""
        return any(resource.canonical == pattern for resource in self.app.router.resources())

    def _owners(self) -> dict[str, str]:
        """Relays another part runs by itself (the amplifier's belongs to the PA): the
        page shows them as owned, without a plain switch."""
        amp = self._settings.pa.amp_relay
        return {amp: "pa"} if amp else {}

    async def _healthz(self, request: web.Request) -> web.Response:
        report = self._health()
        body = {"status": "ok" if report.healthy else "unhealthy", **report.details}
        return web.json_response(body, status=200 if report.healthy else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self._registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )


class _WebCollector(Collector):
    """Web figures read when /metrics is scraped (nothing to update on each request)."""

    def __init__(self, server: WebServer) -> None:
        self._server = server

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        server = self._server
        yield GaugeMetricFamily(
            "vg_web_sessions", "Logged-in browser sessions", value=len(server.access.sessions)
        )
        yield GaugeMetricFamily(
            "vg_web_ws_clients", "Pages connected to the live WebSocket", value=server.live.clients
        )
        yield GaugeMetricFamily(
            "vg_web_connections", "Open connections to the web port", value=server.connections.open
        )
        yield CounterMetricFamily(
            "vg_web_connections_refused",
            "Connections closed at once: over the cap, overall or for one address",
            value=server.connections.refused,
        )
        yield GaugeMetricFamily(
            "vg_web_locked_addresses",
            "Client addresses locked out of login right now",
            value=server.access.limiter.locked(),
        )
        logins = CounterMetricFamily(
            "vg_web_logins", "Login and setup attempts by outcome", labels=["result"]
        )
        for result, count in server.api.logins.items():
            logins.add_metric([result], count)
        yield logins
        requests = CounterMetricFamily(
            "vg_web_requests", "HTTP answers by status class", labels=["status"]
        )
        for status, count in sorted(server.requests.items()):
            requests.add_metric([status], count)
        yield requests
