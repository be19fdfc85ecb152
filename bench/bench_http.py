"""/healthz latency: the daemon's handler against a bare aiohttp handler, same run.

The baseline answers a constant JSON body of the same size from a plain aiohttp app on
the same loop, so the ratio is what the health computation itself costs.
"""

from __future__ import annotations

import json
import socket
import tempfile
from pathlib import Path

import aiohttp
from aiohttp import web

from bench.common import latencies, p
from gateway.config import load_settings
from gateway.daemon.app import App

REQUESTS = 2_000


async def _serve_bare(body: bytes) -> tuple[web.AppRunner, int]:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/healthz", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, int(runner.addresses[0][1])


async def run() -> str:
    """Measure both and return the ratio line."""
    with tempfile.TemporaryDirectory() as state:
        config = Path(state) / "config.toml"
        with socket.socket() as probe:  # a free port for the daemon's server
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        config.write_text(
            f'[gateway]\nid = "bench"\nstate_dir = "{state}"\n'
            f'[web]\nhost = "127.0.0.1"\nport = {port}\n'
            '[log]\nlevel = "WARNING"\nformat = "json"\n'
        )
        app = App(load_settings(config))
        await app.web.start()
        body = json.dumps({"status": "ok", **app.health_report().details}).encode()
        bare_runner, bare_port = await _serve_bare(body)
        try:
            async with aiohttp.ClientSession() as session:

                async def get(port: int) -> None:
                    async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                        await response.read()

                await latencies(lambda: get(bare_port), 200)  # warm up both paths
                await latencies(lambda: get(app.web.port), 200)
                bare = await latencies(lambda: get(bare_port), REQUESTS)
                ours = await latencies(lambda: get(app.web.port), REQUESTS)
        finally:
            await bare_runner.cleanup()
            await app.web.stop()
    return (
        f"/healthz: p50 {p(ours, 50) * 1e3:.2f} ms, p95 {p(ours, 95) * 1e3:.2f} ms vs bare "
        f"aiohttp p50 {p(bare, 50) * 1e3:.2f} ms -> {p(ours, 50) / p(bare, 50):.2f}x"
    )
