"""Demo-only: point the demo's own hotspot at whatever port the demo's web server uses.

The bundled demo watches its own web server as the hotspot that is "up". Writing the
port into ``demo.toml`` would break as soon as someone runs ``VG_WEB__PORT=8099 make
run``; so the demo's probe URLs say :data:`WEB_PORT` and the App fills in ``web.port``
when it builds the demo (and again on every reload, so nothing looks changed).
"""

from __future__ import annotations

from gateway.config import HttpProbe, Settings

__all__ = ["WEB_PORT", "with_web_port"]

WEB_PORT = "{web.port}"
"""Stands for ``web.port`` in an HTTP probe's URL (the demo's configuration only)."""


def with_web_port(settings: Settings) -> Settings:
    """``settings`` with :data:`WEB_PORT` in every HTTP probe URL replaced by web.port."""
    port = str(settings.web.port)
    hotspots = {}
    for name, hotspot in settings.hotspots.items():
        probes = [
            probe.model_copy(update={"url": probe.url.replace(WEB_PORT, port)})
            if isinstance(probe, HttpProbe) and WEB_PORT in probe.url
            else probe
            for probe in hotspot.probes
        ]
        hotspots[name] = hotspot.model_copy(update={"probes": probes})
    return settings.model_copy(update={"hotspots": hotspots})
