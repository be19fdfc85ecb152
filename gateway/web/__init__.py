"""The local web UI and HTTP API (aiohttp)."""

from gateway.web.server import HealthReport, WebServer

__all__ = ["HealthReport", "WebServer"]
