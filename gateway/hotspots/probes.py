"""Probes: one look at one target, async, bounded by its timeout, never raising.

Each probe answers with a :class:`ProbeResult`: whether it worked, how long it took and,
when it did not, a short reason an operator can act on (``timeout``, ``refused``,
``unreachable``, ``dns error``, ``nxdomain``, ``http 500``, ``permission denied`` …).
Nothing here blocks the event loop: ICMP goes through icmplib's async API on an
unprivileged socket, TCP through :func:`asyncio.open_connection`, HTTP through aiohttp
and DNS through a small A query over an asyncio UDP endpoint.

Unprivileged ICMP needs the daemon's group inside ``net.ipv4.ping_group_range``.
:func:`icmp_permission` tells whether it is, without sending anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import math
import os
import secrets
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import icmplib  # type: ignore[import-untyped]

from gateway.config import DnsProbe, HttpProbe, IcmpProbe, TcpProbe
from gateway.hotspots.reasons import probe_reason_code

__all__ = [
    "ICMP_COUNT",
    "ICMP_INTERVAL_S",
    "PING_GROUP_RANGE",
    "AnyProbe",
    "IcmpPermission",
    "ProbeResult",
    "icmp_permission",
    "probe_dns",
    "probe_http",
    "probe_icmp",
    "probe_tcp",
    "run_probe",
    "why_failed",
]

AnyProbe = IcmpProbe | TcpProbe | HttpProbe | DnsProbe

ICMP_COUNT = 3
"""Echo requests per ICMP probe: enough for a loss figure and a jitter, cheap on air."""
ICMP_INTERVAL_S = 0.1
"""Gap between the echo requests of one burst."""
PING_GROUP_RANGE = Path("/proc/sys/net/ipv4/ping_group_range")

_MARGIN_S = 0.5
"""Slack over a probe's own timeout before the outer guard cancels it."""
_DNS_PORT = 53


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What one probe saw. ``reason`` is set exactly when ``ok`` is false."""

    kind: str
    target: str
    ok: bool
    rtt_ms: float | None = None
    reason: str | None = None
    loss_pct: float | None = None
    """ICMP only: share of the burst that got no answer."""
    min_ms: float | None = None
    max_ms: float | None = None
    jitter_ms: float | None = None
    rtts_ms: tuple[float, ...] = ()
    """Every round trip measured (one per answered echo for ICMP)."""
    stands_in_for: str | None = None
    """``"icmp"`` when this TCP probe replaced a ping that is not permitted."""

    def as_dict(self) -> dict[str, Any]:
        """The JSON form used in snapshots and in the ``hotspots.probe`` reply; a failure
        carries ``reason_code`` and ``reason_params`` beside its ``reason``."""
        data = asdict(self)
        del data["rtts_ms"]
        out = {key: _round(value) for key, value in data.items() if value is not None}
        if self.reason is not None:
            out["reason_code"], out["reason_params"] = probe_reason_code(self.kind, self.reason)
        return out


def _round(value: object) -> object:
    return round(value, 2) if isinstance(value, float) else value


def _failed(
    kind: str,
    target: str,
    reason: str,
    *,
    rtt_ms: float | None = None,
    loss_pct: float | None = None,
) -> ProbeResult:
    return ProbeResult(
        kind=kind, target=target, ok=False, reason=reason, rtt_ms=rtt_ms, loss_pct=loss_pct
    )


_PROBE_ERRORS = (
    TimeoutError,
    OSError,
    ValueError,
    struct.error,
    aiohttp.ClientError,
    icmplib.ICMPLibError,
)
"""What a probe may meet on the way; anything else is a bug and propagates."""

_EAI_NOT_FOUND = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", -5)}


_REASONS: tuple[tuple[type[BaseException], str], ...] = (
    (TimeoutError, "timeout"),
    (icmplib.SocketPermissionError, "permission denied"),
    (icmplib.NameLookupError, "dns error"),
    (aiohttp.ClientConnectorDNSError, "dns error"),
    (UnicodeError, "bad name"),
    (struct.error, "dns error: malformed reply"),
    (ValueError, "bad name"),
    (ConnectionRefusedError, "refused"),
    (ConnectionResetError, "reset"),
    (PermissionError, "permission denied"),
)
"""Exception → reason, first match wins (so subclasses come before their bases)."""

_UNREACHABLE = {errno.EHOSTUNREACH, errno.ENETUNREACH}


def _why(exc: BaseException) -> str:
    """A short, stable reason for what went wrong."""
    if isinstance(exc, aiohttp.ClientConnectorError) and not isinstance(
        exc, aiohttp.ClientConnectorDNSError
    ):
        return _why(exc.os_error)
    if isinstance(exc, socket.gaierror):
        return "nxdomain" if exc.errno in _EAI_NOT_FOUND else "dns error"
    if isinstance(exc, OSError) and exc.errno in _UNREACHABLE:
        return "unreachable"
    reason = next((text for kind, text in _REASONS if isinstance(exc, kind)), None)
    return reason or f"error: {type(exc).__name__}"


def why_failed(exc: BaseException) -> str:
    """The probes' short reason for an I/O error, for other hotspot checks to share."""
    return _why(exc)


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


# -- ICMP -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IcmpPermission:
    """Whether this process may open unprivileged ICMP sockets, and why (not)."""

    permitted: bool
    detail: str


def icmp_permission(range_file: Path = PING_GROUP_RANGE) -> IcmpPermission:
    """Find out, without sending a packet, whether unprivileged ping works here.

    The kernel is the judge: opening an ICMP datagram socket either works or raises
    :class:`PermissionError`. The sysctl range and our groups are read only to say why.
    """
    try:
        low, high = (int(part) for part in range_file.read_text().split())
        sysctl = f"net.ipv4.ping_group_range is '{low} {high}'"
    except (OSError, ValueError):
        sysctl = "net.ipv4.ping_group_range is unreadable"
    groups = sorted({os.getegid(), *os.getgroups()})
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
    except PermissionError:
        return IcmpPermission(
            False,
            f"unprivileged ICMP is not permitted: {sysctl}, our groups are {groups}; "
            "set the sysctl to include one of them (e.g. '0 2147483647')",
        )
    except OSError as exc:
        return IcmpPermission(False, f"no ICMP socket: {exc.strerror or exc}")
    sock.close()
    return IcmpPermission(True, f"unprivileged ICMP permitted ({sysctl})")


async def probe_icmp(
    host: str, timeout_s: float, *, count: int = ICMP_COUNT, interval_s: float = ICMP_INTERVAL_S
) -> ProbeResult:
    """Send a burst of ``count`` echo requests; the whole burst fits in ``timeout_s``.

    Raises nothing; a missing permission comes back as ``reason="permission denied"``
    so the caller can fall back.
    """
    per_packet = max(0.05, (timeout_s - (count - 1) * interval_s) / count)
    try:
        host_result = await asyncio.wait_for(
            icmplib.async_ping(
                host, count=count, interval=interval_s, timeout=per_packet, privileged=False
            ),
            timeout_s + _MARGIN_S,
        )
    except _PROBE_ERRORS as exc:
        return _failed("icmp", host, _why(exc))
    rtts = tuple(float(rtt) for rtt in host_result.rtts)
    # Against the burst we meant to send, not icmplib's count of sends that worked: an
    # echo request the kernel refused to send (a firewall, no route) is lost all the same.
    loss = 100 * (count - len(rtts)) / count
    if not rtts:
        return _failed("icmp", host, "timeout", loss_pct=loss)
    return ProbeResult(
        kind="icmp",
        target=host,
        ok=True,
        rtt_ms=float(host_result.avg_rtt),
        loss_pct=loss,
        min_ms=float(host_result.min_rtt),
        max_ms=float(host_result.max_rtt),
        jitter_ms=float(host_result.jitter),
        rtts_ms=rtts,
    )


# -- TCP --------------------------------------------------------------------------------


async def probe_tcp(host: str, port: int, timeout_s: float) -> ProbeResult:
    """Open a TCP connection and close it again; the RTT is the connect time."""
    target = f"{host}:{port}"
    start = time.perf_counter()
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except _PROBE_ERRORS as exc:
        return _failed("tcp", target, _why(exc))
    rtt = _ms(start)
    writer.close()
    with contextlib.suppress(OSError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), _MARGIN_S)
    return ProbeResult(kind="tcp", target=target, ok=True, rtt_ms=rtt, rtts_ms=(rtt,))


# -- HTTP -------------------------------------------------------------------------------


def new_http_session() -> aiohttp.ClientSession:
    """A session for probes: no proxies from the environment, no kept-alive sockets."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(force_close=True, limit=0),
        trust_env=False,
        headers={"User-Agent": "village-gateway hotspot probe"},
    )


BODY_LIMIT = 64 * 1024
"""How much of a body ``expect_body`` looks at: a status page, not a download."""


async def _read_head(response: aiohttp.ClientResponse, limit: int = BODY_LIMIT) -> str:
    """The first ``limit`` bytes of the body as text (undecodable bytes replaced)."""
    data = bytearray()
    async for chunk in response.content.iter_chunked(8192):
        data += chunk
        if len(data) >= limit:
            break
    return bytes(data[:limit]).decode("utf-8", errors="replace")


async def probe_http(
    url: str,
    expect_status: int,
    timeout_s: float,
    *,
    expect_body: str | None = None,
    session: aiohttp.ClientSession | None = None,
) -> ProbeResult:
    """GET ``url`` and expect ``expect_status`` (and ``expect_body`` within the body).

    The RTT is the time to the headers; a body check reads at most :data:`BODY_LIMIT`
    bytes, all within the same timeout.
    """
    if session is None:
        async with new_http_session() as own:
            return await probe_http(
                url, expect_status, timeout_s, expect_body=expect_body, session=own
            )
    start = time.perf_counter()
    body = ""
    try:
        async with asyncio.timeout(timeout_s):
            async with session.get(
                url, allow_redirects=False, timeout=aiohttp.ClientTimeout(total=timeout_s)
            ) as response:
                rtt = _ms(start)
                status = response.status
                if expect_body is not None and status == expect_status:
                    body = await _read_head(response)
    except _PROBE_ERRORS as exc:
        return _failed("http", url, _why(exc))
    if status != expect_status:
        return _failed("http", url, f"http {status}", rtt_ms=rtt)
    if expect_body is not None and expect_body not in body:
        return _failed("http", url, "wrong body", rtt_ms=rtt)
    return ProbeResult(kind="http", target=url, ok=True, rtt_ms=rtt, rtts_ms=(rtt,))


# -- DNS --------------------------------------------------------------------------------


def split_server(server: str) -> tuple[str, int]:
    """``"192.168.1.1"``, ``"127.0.0.1:5353"`` or ``"[::1]:53"`` → (address, port)."""
    if server.startswith("["):
        address, _, rest = server[1:].partition("]")
        return address, int(rest[1:]) if rest.startswith(":") else _DNS_PORT
    if server.count(":") == 1:
        address, port = server.split(":")
        return address, int(port)
    return server, _DNS_PORT


def _dns_query(name: str, query_id: int) -> bytes:
    """A recursive query for the A records of ``name`` (RFC 1035 §4.1)."""
    labels = name.rstrip(".").encode("idna").split(b".")
    if any(not label or len(label) > 63 for label in labels):
        raise ValueError(f"not a valid DNS name: {name!r}")
    header = struct.pack("!HHHHHH", query_id, 0x0100, 1, 0, 0, 0)
    question = b"".join(bytes([len(label)]) + label for label in labels) + b"\x00"
    return header + question + struct.pack("!HH", 1, 1)


class _DnsClient(asyncio.DatagramProtocol):
    def __init__(self, query_id: int) -> None:
        self.query_id = query_id
        self.answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if len(data) >= 12 and not self.answer.done():
            (reply_id,) = struct.unpack_from("!H", data)
            if reply_id == self.query_id:  # anything else is stale or forged
                self.answer.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.answer.done():
            self.answer.set_exception(exc)


_RCODES = {1: "dns error: format", 2: "dns error: servfail", 3: "nxdomain", 5: "dns refused"}


async def _resolve_via(name: str, server: str, timeout_s: float) -> str | None:
    """Ask ``server`` for ``name``; return None when it has an answer, else why not."""
    address, port = split_server(server)
    query_id = secrets.randbits(16)
    query = _dns_query(name, query_id)
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: _DnsClient(query_id), remote_addr=(address, port)
    )
    try:
        transport.sendto(query)
        reply = await asyncio.wait_for(protocol.answer, timeout_s)
    finally:
        transport.close()
    _, flags, _, answers, _, _ = struct.unpack_from("!HHHHHH", reply)
    rcode = flags & 0x000F
    if not flags & 0x8000:
        return "dns error: not a reply"
    if rcode:
        return _RCODES.get(rcode, f"dns error: rcode {rcode}")
    return None if answers else "no answer"


async def probe_dns(name: str, server: str | None, timeout_s: float) -> ProbeResult:
    """Resolve ``name`` through ``server`` (``host[:port]``), or the system resolver."""
    target = f"{name}@{server}" if server else name
    start = time.perf_counter()
    try:
        if server is None:
            loop = asyncio.get_running_loop()
            # getaddrinfo runs in the default executor: the loop is not blocked, and the
            # timeout still bounds us even though the thread may finish later.
            await asyncio.wait_for(loop.getaddrinfo(name, None, type=socket.SOCK_DGRAM), timeout_s)
            why = None
        else:
            why = await _resolve_via(name, server, timeout_s)
    except _PROBE_ERRORS as exc:
        return _failed("dns", target, _why(exc))
    rtt = _ms(start)
    if why is not None:
        return _failed("dns", target, why, rtt_ms=rtt)
    return ProbeResult(kind="dns", target=target, ok=True, rtt_ms=rtt, rtts_ms=(rtt,))


# -- dispatch ---------------------------------------------------------------------------


async def run_probe(
    probe: AnyProbe,
    host: str | None,
    *,
    session: aiohttp.ClientSession | None = None,
) -> ProbeResult:
    """Run one configured probe against ``host`` (None for the uplink's own probes)."""
    match probe:
        case IcmpProbe():
            if host is None:
                return _failed("icmp", "-", "no host")
            return await probe_icmp(host, probe.timeout_s)
        case TcpProbe():
            if host is None:
                return _failed("tcp", f"-:{probe.port}", "no host")
            return await probe_tcp(host, probe.port, probe.timeout_s)
        case HttpProbe():
            return await probe_http(
                probe.url,
                probe.expect_status,
                probe.timeout_s,
                expect_body=probe.expect_body,
                session=session,
            )
        case DnsProbe():
            return await probe_dns(probe.name, probe.server, probe.timeout_s)


def needs_internet(probe: AnyProbe, host: str | None) -> bool:
    """Whether ``probe`` can only succeed while the uplink works.

    The rule, kept simple on purpose: ICMP and TCP probe the hotspot itself, never. DNS
    resolves a name upstream, always. HTTP does unless the URL's host is the hotspot's
    own host or a private, loopback or link-local address.
    """
    match probe:
        case IcmpProbe() | TcpProbe():
            return False
        case DnsProbe():
            return True
        case HttpProbe():
            url_host = urlsplit(probe.url).hostname or ""
            return url_host != host and not _is_local_address(url_host)


def _is_local_address(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_private or address.is_loopback or address.is_link_local


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0 to 1) of ``values`` by the nearest-rank method, or None."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]
