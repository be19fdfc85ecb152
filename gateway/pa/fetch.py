"""Downloading a clip over HTTP(S) into a temporary file, within limits.

The clip store calls this for ``pa.clip.fetch``. Whatever the server does — announce a
huge body, send more than it announced, redirect in circles, stall, answer 404 — the
download stops at the size cap or the deadline, and the temporary file is gone unless
every byte arrived and the sha256 matches. Checking the content is the caller's next
step; only then is the file renamed into place, so a half-downloaded clip never plays.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from pathlib import Path
from typing import BinaryIO

import aiohttp

from gateway.errors import GatewayError

__all__ = ["MAX_REDIRECTS", "FetchError", "download"]

MAX_REDIRECTS = 5
_CHUNK = 64 * 1024


class FetchError(GatewayError):
    """A download refused or failed; ``key`` is the reply error code.

    ``too_large`` (over the size cap), ``bad_checksum`` (sha256 differs),
    ``fetch_failed`` (HTTP status, network, timeout, redirects).
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


async def download(
    url: str,
    target: Path,
    *,
    sha256: str,
    max_bytes: int,
    timeout_s: float,
    session: aiohttp.ClientSession | None = None,
) -> int:
    """Write the body of ``url`` to ``target``; returns its size in bytes.

    ``target`` is left complete, flushed to the card and matching ``sha256`` (lowercase
    hex), or does not exist. ``timeout_s`` bounds the whole download, from connecting to
    the last byte.
    """
    own = session is None
    client = session if session is not None else aiohttp.ClientSession()
    done = False
    try:
        async with asyncio.timeout(timeout_s):
            size = await _download(client, url, target, sha256.lower(), max_bytes)
        done = True
    except TimeoutError as exc:
        raise FetchError("fetch_failed", f"download did not finish in {timeout_s:g} s") from exc
    except aiohttp.TooManyRedirects as exc:
        raise FetchError("fetch_failed", f"more than {MAX_REDIRECTS} redirects") from exc
    except aiohttp.ClientError as exc:
        reason = str(exc)[:200] or type(exc).__name__  # aiohttp may quote what it received
        raise FetchError("fetch_failed", f"download failed: {reason}") from exc
    finally:
        if own:
            await client.close()
        if not done:  # also on cancellation: no partial file stays behind
            await asyncio.to_thread(target.unlink, missing_ok=True)
    return size


async def _download(
    client: aiohttp.ClientSession, url: str, target: Path, sha256: str, max_bytes: int
) -> int:
    # aiohttp raises when the count of redirects *reaches* max_redirects: +1 allows five.
    follow = MAX_REDIRECTS + 1
    async with client.get(url, allow_redirects=True, max_redirects=follow) as response:
        if response.status != 200:
            raise FetchError("fetch_failed", f"HTTP {response.status} {response.reason or ''}")
        announced = response.content_length
        if announced is not None and announced > max_bytes:
            raise FetchError(
                "too_large", f"the server announces {announced} bytes; the cap is {max_bytes}"
            )
        digest = hashlib.sha256()
        size = 0
        handle = await asyncio.to_thread(target.open, "wb")
        try:
            async for chunk in response.content.iter_chunked(_CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise FetchError(
                        "too_large", f"the body goes on past the cap of {max_bytes} bytes"
                    )
                digest.update(chunk)
                await asyncio.to_thread(handle.write, chunk)
            await asyncio.to_thread(_flush, handle)
        finally:
            await asyncio.to_thread(handle.close)
    if size == 0:
        raise FetchError("fetch_failed", "the server sent an empty body")
    if digest.hexdigest() != sha256:
        raise FetchError(
            "bad_checksum", f"sha256 of the download is {digest.hexdigest()}, not {sha256}"
        )
    return size


def _flush(handle: BinaryIO) -> None:
    handle.flush()
    with contextlib.suppress(OSError):
        os.fsync(handle.fileno())
