"""Downloading a clip over HTTP(S) into a temporary file, within limits, and the address
guard that every fetch and live stream goes through.

The clip store calls :func:`download` for ``pa.clip.fetch``. Whatever the server does —
announce a huge body, send more than it announced, redirect in circles, stall, answer
404 — the download stops at the size cap or the deadline, and the temporary file is gone
unless every byte arrived and the sha256 matches. Checking the content is the caller's
next step; only then is the file renamed into place, so a half-downloaded clip never plays.

Whoever can send a command must not turn the Pi into a window on the village LAN (server
side request forgery). :class:`AddressGuard` decides which addresses a fetch may connect
to: public ones; loopback, link-local and private ones (10/8, 172.16/12, 192.168/16,
100.64/10, fc00::/7, …) only when the host or the address is in ``pa.fetch_allow``;
unspecified, multicast and reserved ones never. The check is made on the address that is
then connected to, on the first hop and on every redirect: names are resolved by
:class:`GuardedResolver` (aiohttp) or :meth:`AddressGuard.create_connection` (the live
stream's ``http.client``), which connect to the checked address only, so a name that
resolves to a public address for a check and to a private one for the connection (DNS
rebinding) gets nowhere. Replies say ``forbidden`` for a refused address and a generic
``fetch_failed`` for anything that went wrong on the way, with the HTTP status at most:
no socket errors (a port scanner) and no checksum of what was read.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import os
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from gateway.errors import GatewayError

__all__ = [
    "MAX_REDIRECTS",
    "AddressGuard",
    "FetchError",
    "GuardedResolver",
    "RefusedAddressError",
    "classify",
    "download",
    "forbidden_in",
    "guarded_session",
]

MAX_REDIRECTS = 5
_CHUNK = 64 * 1024
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_FAILED = "the download failed (no connection, a timeout or a broken answer)"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class FetchError(GatewayError):
    """A download refused or failed; ``key`` is the reply error code.

    ``too_large`` (over the size cap), ``bad_checksum`` (sha256 differs),
    ``fetch_failed`` (HTTP status, network, timeout, redirects), ``forbidden`` (an
    address the guard refuses). The message is safe to send back to whoever asked;
    ``detail`` (for the local log only) may say more.
    """

    def __init__(self, key: str, message: str, *, detail: str | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.detail = detail or message


class RefusedAddressError(OSError):
    """A connection the guard refused before it was made (raised inside aiohttp and
    ``http.client``, which pass OSErrors on; :func:`forbidden_in` finds it again)."""


def forbidden_in(exc: BaseException) -> RefusedAddressError | None:
    """The RefusedAddressError that ``exc`` is or was caused by, if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, RefusedAddressError):
            return current
        seen.add(id(current))
        nested = getattr(current, "os_error", None)  # aiohttp's ClientConnectorError
        if isinstance(nested, RefusedAddressError):
            return nested
        current = current.__cause__ or current.__context__
    return None


def _unwrap(address: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 one stands for (mapped, NAT64, 6to4), else itself."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if address.sixtofour is not None:
            return address.sixtofour
    return address


def classify(address: IPAddress) -> str:
    """``public``; ``loopback``, ``link-local`` or ``private`` (pa.fetch_allow can open
    them); ``unspecified``, ``multicast`` or ``reserved`` (never)."""
    inner = _unwrap(address)
    v4 = isinstance(inner, ipaddress.IPv4Address)
    site_local = isinstance(inner, ipaddress.IPv6Address) and inner.is_site_local
    kinds = (
        ("unspecified", inner.is_unspecified or (v4 and inner in _THIS_NETWORK)),
        ("multicast", inner.is_multicast),
        ("loopback", inner.is_loopback),
        ("reserved", inner.is_reserved),  # 240/4, the broadcast address, ::/8 but ::1, …
        ("link-local", inner.is_link_local),
        ("private", not inner.is_global or site_local),
    )
    return next((kind for kind, match in kinds if match), "public")


def _literal(host: str) -> IPAddress | None:
    """The address ``host`` is written as, None for a name; RefusedAddressError for the
    legacy numeric forms (``127.1``, ``2130706433``) that sockets would still accept."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        if ":" in host or host.replace(".", "").isdigit():
            raise RefusedAddressError(f"{host!r} is not an address in its usual form") from None
        return None


def _host_key(host: str) -> str:
    return host.strip("[]").rstrip(".").lower()


class AddressGuard:
    """Which addresses a fetch or a stream may connect to (module docstring).

    ``allow`` is ``pa.fetch_allow``: host names (matched exactly, case-insensitively),
    addresses and CIDR ranges that may be reached although loopback, link-local or
    private. Unspecified, multicast and reserved addresses are refused whatever it says.
    """

    def __init__(self, allow: Iterable[str] = ()) -> None:
        hosts: set[str] = set()
        networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in allow:
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                hosts.add(_host_key(entry))
        self.hosts = frozenset(hosts)
        """Host names (lowercase, no trailing dot) that may resolve to any address but
        the never-reachable ones."""
        self.networks = tuple(networks)

    def refusal(self, host: str, address: IPAddress) -> str | None:
        """Why ``host`` may not be reached at ``address``, or None if it may."""
        kind = classify(address)
        if kind == "public":
            return None
        if kind in ("unspecified", "multicast", "reserved"):
            return f"{kind} address"
        if _host_key(host) in self.hosts:
            return None
        inner = _unwrap(address)
        if any(address in net or inner in net for net in self.networks):
            return None
        return f"{kind} address, not in pa.fetch_allow"

    def check_host(self, host: str) -> None:
        """RefusedAddressError at once if ``host`` is an address that may not be reached
        (a name is judged when it is resolved)."""
        address = _literal(host)
        if address is not None:
            reason = self.refusal(host, address)
            if reason is not None:
                raise RefusedAddressError(f"{host}: {reason}")

    def check_url(self, url: str) -> None:
        """:meth:`check_host` for the host of ``url`` as aiohttp reads it (yarl), so the
        check and the connection cannot disagree about where the URL points."""
        try:
            host = URL(url).raw_host
        except ValueError as exc:
            raise RefusedAddressError(f"cannot tell where {url!r} points") from exc
        if host:
            self.check_host(host)

    def addresses(self, host: str, port: int) -> list[tuple[int, str]]:
        """``(family, address)`` of ``host`` that may be reached (blocking: it resolves
        names). RefusedAddressError if it resolves only to refused ones."""
        self.check_host(host)
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
        return self.keep(host, [(family, str(sockaddr[0])) for family, _, _, _, sockaddr in infos])

    def keep(self, host: str, found: list[tuple[int, str]]) -> list[tuple[int, str]]:
        """The ``(family, address)`` pairs that ``host`` may be reached at, in order;
        RefusedAddressError naming the refused ones when none is left."""
        kept: list[tuple[int, str]] = []
        reasons: list[str] = []
        for family, text in found:
            address = ipaddress.ip_address(text.partition("%")[0])
            reason = self.refusal(host, address)
            if reason is None:
                if (family, text) not in kept:
                    kept.append((family, text))
            else:
                reasons.append(f"{text}: {reason}")
        if not kept:
            raise RefusedAddressError(f"{host} resolves to {'; '.join(reasons) or 'nothing'}")
        return kept

    def create_connection(
        self,
        address: tuple[str, int],
        timeout: float | None = None,
        source_address: tuple[str, int] | None = None,
        **_: object,
    ) -> socket.socket:
        """A drop-in for ``socket.create_connection`` that connects only to addresses
        this guard allows (``http.client``'s ``_create_connection``)."""
        host, port = address
        last: OSError | None = None
        for _family, text in self.addresses(host, port):
            try:
                return socket.create_connection((text, port), timeout, source_address)
            except OSError as exc:
                last = exc
        assert last is not None  # noqa: S101  (addresses() returns at least one)
        raise last


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver, keeping only the addresses the guard allows: aiohttp then
    connects to those and nothing else."""

    def __init__(self, guard: AddressGuard, inner: AbstractResolver | None = None) -> None:
        self._guard = guard
        self._inner = inner if inner is not None else aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Resolve, then drop refused addresses; RefusedAddressError if none is left."""
        self._guard.check_host(host)
        results = await self._inner.resolve(host, port, family)
        kept = self._guard.keep(host, [(r["family"], r["host"]) for r in results])
        return [r for r in results if (r["family"], r["host"]) in kept]

    async def close(self) -> None:
        """Close the resolver it wraps."""
        await self._inner.close()


def guarded_session(guard: AddressGuard) -> aiohttp.ClientSession:
    """A client session whose connections go only where ``guard`` allows (no proxy from
    the environment, no DNS cache across hops)."""
    connector = aiohttp.TCPConnector(resolver=GuardedResolver(guard), use_dns_cache=False)
    return aiohttp.ClientSession(connector=connector, trust_env=False)


async def download(
    url: str,
    target: Path,
    *,
    sha256: str,
    max_bytes: int,
    timeout_s: float,
    guard: AddressGuard | None = None,
) -> int:
    """Write the body of ``url`` to ``target``; returns its size in bytes.

    ``target`` is left complete, flushed to the card and matching ``sha256`` (lowercase
    hex), or does not exist. ``timeout_s`` bounds the whole download, from connecting to
    the last byte. ``guard`` (default: nothing but public addresses) is asked before
    every connection, the first and one per redirect.
    """
    guard = guard if guard is not None else AddressGuard()
    done = False
    try:
        async with guarded_session(guard) as client, asyncio.timeout(timeout_s):
            size = await _download(
                client,
                guard=guard,
                url=url,
                target=target,
                sha256=sha256.lower(),
                max_bytes=max_bytes,
            )
        done = True
    except TimeoutError as exc:
        raise FetchError(
            "fetch_failed", _FAILED, detail=f"not finished in {timeout_s:g} s"
        ) from exc
    except (aiohttp.ClientError, OSError) as exc:
        refused = forbidden_in(exc)
        if refused is not None:
            raise FetchError("forbidden", f"refused to connect: {refused}") from exc
        raise FetchError("fetch_failed", _FAILED, detail=_describe(exc)) from exc
    finally:
        if not done:  # also on cancellation: no partial file stays behind
            await asyncio.to_thread(target.unlink, missing_ok=True)
    return size


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:200]}"


async def _download(
    client: aiohttp.ClientSession,
    *,
    guard: AddressGuard,
    url: str,
    target: Path,
    sha256: str,
    max_bytes: int,
) -> int:
    for _ in range(MAX_REDIRECTS + 1):
        guard.check_url(url)  # an address in the URL never reaches the resolver
        async with client.get(url, allow_redirects=False) as response:
            location = response.headers.get("Location")
            if response.status in _REDIRECTS and location:
                url = urljoin(url, location)
                if urlsplit(url).scheme not in ("http", "https"):
                    raise FetchError("fetch_failed", "redirected to something other than http(s)")
                continue
            return await _receive(response, target, sha256, max_bytes)
    raise FetchError("fetch_failed", f"more than {MAX_REDIRECTS} redirects")


async def _receive(
    response: aiohttp.ClientResponse, target: Path, sha256: str, max_bytes: int
) -> int:
    if response.status != 200:
        raise FetchError("fetch_failed", f"the server answered {response.status}")
    announced = response.content_length
    if announced is not None and announced > max_bytes:
        raise FetchError(
            "too_large", f"the server announces more than the cap of {max_bytes} bytes"
        )
    digest = hashlib.sha256()
    size = 0
    handle = await asyncio.to_thread(target.open, "wb")
    try:
        async for chunk in response.content.iter_chunked(_CHUNK):
            size += len(chunk)
            if size > max_bytes:
                raise FetchError("too_large", f"the body goes on past the cap of {max_bytes} bytes")
            digest.update(chunk)
            await asyncio.to_thread(handle.write, chunk)
        await asyncio.to_thread(_flush, handle)
    finally:
        await asyncio.to_thread(handle.close)
    if size == 0:
        raise FetchError("fetch_failed", "the server sent an empty body")
    if digest.hexdigest() != sha256:
        # Not the digest of what came: that would tell whoever asked about a file
        # they cannot read.
        raise FetchError("bad_checksum", "the download does not match the given sha256")
    return size


def _flush(handle: BinaryIO) -> None:
    handle.flush()
    with contextlib.suppress(OSError):
        os.fsync(handle.fileno())
