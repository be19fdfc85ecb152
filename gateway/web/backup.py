"""``GET /api/v1/backup``: the same archive as ``village-gateway backup``, for a browser.

A logged-in operator downloads it from the web UI (the server's guard refuses the route
without a session, as every route off its allowlist). The configuration in it is the
running daemon's last good copy; secrets the configuration names are never included.
The archive is built in a thread, into a temporary file in the state folder (clips can
be large, a Pi's memory is small), streamed out, and removed.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from aiohttp import web

from gateway.config import Settings
from gateway.errors import GatewayError
from gateway.log import get_logger

__all__ = ["BackupRoute", "register_backup"]

_log = get_logger("web")
_CHUNK = 1 << 16


class BackupRoute:
    """The handler, with the settings it backs up."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def _build(self) -> Path:
        # Imported by the first download, in this thread: the archive code (tarfile, gzip)
        # is not worth keeping in a Pi Zero's memory for a route used once in a while.
        from gateway.backup import write_backup  # noqa: PLC0415

        state_dir = self._settings.gateway.state_dir
        handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 - removed by the caller
            prefix=".download-", suffix=".tar.gz", dir=state_dir, delete=False
        )
        with handle:
            write_backup(handle, self._settings, config=None)
        return Path(handle.name)

    async def download(self, request: web.Request) -> web.StreamResponse:
        """Build the archive and send it as an attachment."""
        try:
            path = await asyncio.to_thread(self._build)
        except (GatewayError, OSError) as exc:  # BackupError is the one write_backup raises
            _log.error("web.backup_failed", error=str(exc))
            return web.json_response(
                {"error": {"code": "failed", "message": f"the backup failed: {exc}"}}, status=500
            )
        try:
            name = f"village-gateway-{self._settings.gateway.id}-{time.strftime('%Y%m%d')}.tar.gz"
            response = web.StreamResponse(
                headers={
                    "Content-Type": "application/gzip",
                    "Content-Disposition": f'attachment; filename="{name}"',
                    "Content-Length": str(path.stat().st_size),
                    "Cache-Control": "no-store",
                }
            )
            await response.prepare(request)
            with path.open("rb") as archive:
                while chunk := await asyncio.to_thread(archive.read, _CHUNK):
                    await response.write(chunk)
            await response.write_eof()
            _log.info("web.backup_downloaded", bytes=path.stat().st_size)
            return response
        finally:
            path.unlink(missing_ok=True)


def register_backup(router: web.UrlDispatcher, settings: Settings) -> None:
    """Add ``GET /api/v1/backup`` (session required: it is not on the allowlist)."""
    router.add_get("/api/v1/backup", BackupRoute(settings).download)
