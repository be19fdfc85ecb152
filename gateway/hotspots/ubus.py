"""Client counts from OpenWrt access points over ubus JSON-RPC (``POST /ubus``).

OpenWrt's web server (uhttpd with its ubus plugin) speaks JSON-RPC 2.0: every request
is ``{"method": "call", "params": [SESSION, OBJECT, METHOD, ARGS]}`` and every answer
is either ``{"result": [STATUS, DATA]}`` (STATUS 0 means ok, 6 means permission denied)
or ``{"error": {"code": -32002, "message": "Access denied"}}`` when the session is not
(or no longer) valid. A session comes from ``session login`` with the null session id.

Sessions expire (rpcd's default is five minutes of idleness) and vanish when the access
point reboots; both look the same from here — "access denied" — so :class:`UbusClient`
logs in again once and retries, and only a refusal right after a fresh login is a real
permission problem (the ACL on the access point lacks the method).

Nothing here raises: every failure becomes a :class:`ClientCount` with ``clients``
None and a short ``reason``, because a count we cannot read must never look like zero
users, nor take the monitor down.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from gateway.config import UbusConfig
from gateway.hotspots.probes import new_http_session, why_failed

__all__ = [
    "NULL_SESSION",
    "RPC_ACCESS_DENIED",
    "UBUS_PERMISSION_DENIED",
    "ClientCount",
    "UbusClient",
]

NULL_SESSION = "0" * 32
"""The session id ``session login`` is called with, before there is a session."""
UBUS_PERMISSION_DENIED = 6
"""ubus status: the session may not call this method (or the login was refused)."""
RPC_ACCESS_DENIED = -32002
"""JSON-RPC error uhttpd answers for an unknown or expired session."""

_REPLY_LIMIT = 1 << 20
"""A client list is a few kB; a bigger reply is not one, and is not read whole."""

_UBUS_STATUS = {
    1: "invalid command",
    2: "invalid argument",
    3: "method not found",
    4: "not found",
    5: "no data",
    6: "permission denied",
    7: "timeout",
    8: "not supported",
    9: "unknown error",
    10: "connection failed",
}


@dataclass(frozen=True, slots=True)
class ClientCount:
    """Associated wifi clients of one access point, or why they are unknown."""

    clients: int | None
    reason: str | None = None
    per_interface: Mapping[str, int] = field(default_factory=dict)


class _Denied(Exception):  # noqa: N818 - a signal inside this module, never leaves it
    """The access point refused the session: log in again, then retry once."""


class _Fault(Exception):  # noqa: N818 - a signal inside this module, never leaves it
    """Anything else that ends this attempt; ``args[0]`` is the reason to report."""


class UbusClient:
    """Counts clients of one access point; keeps its ubus session between cycles."""

    __slots__ = ("_config", "_request_id", "_session_id", "logins")

    def __init__(self, config: UbusConfig) -> None:
        self._config = config
        self._session_id: str | None = None
        self._request_id = 0
        self.logins = 0
        """Successful logins so far: 1 in a quiet life, more after expiries and reboots."""

    async def count(self, http: aiohttp.ClientSession | None = None) -> ClientCount:
        """Sum the clients of every configured interface, within ``timeout_s``."""
        if http is None:
            async with new_http_session() as own:
                return await self.count(own)
        per_interface: dict[str, int] = {}
        try:
            async with asyncio.timeout(self._config.timeout_s):
                for interface in self._config.interfaces:
                    per_interface[interface] = await self._count_interface(http, interface)
        except _Fault as fault:
            return ClientCount(None, str(fault.args[0]))
        except (TimeoutError, OSError, aiohttp.ClientError) as exc:
            return ClientCount(None, why_failed(exc))
        return ClientCount(sum(per_interface.values()), None, per_interface)

    async def _count_interface(self, http: aiohttp.ClientSession, interface: str) -> int:
        if self._config.method == "hostapd":
            data = await self._call(http, f"hostapd.{interface}", "get_clients", {})
            clients = data.get("clients")
            if not isinstance(clients, dict):
                raise _Fault(f"malformed reply: no client table for {interface}")
            # hostapd lists stations that are authenticating too; count the associated.
            return sum(
                1
                for station in clients.values()
                if not isinstance(station, dict) or station.get("assoc", True) is not False
            )
        data = await self._call(http, "iwinfo", "assoclist", {"device": interface})
        results = data.get("results")
        if not isinstance(results, list):
            raise _Fault(f"malformed reply: no association list for {interface}")
        return len(results)

    async def _call(
        self, http: aiohttp.ClientSession, obj: str, method: str, args: dict[str, Any]
    ) -> dict[str, Any]:
        """Call ``obj`` ``method``; renew the session once if the access point forgot it."""
        if self._session_id is None:
            await self._login(http)
        try:
            return await self._rpc(http, [self._session_id, obj, method, args])
        except _Denied:
            self._session_id = None  # expired, or the access point rebooted
        await self._login(http)
        try:
            return await self._rpc(http, [self._session_id, obj, method, args])
        except _Denied:
            raise _Fault(
                f"permission denied: the access point's rpcd ACL does not grant {obj} {method}"
            ) from None

    async def _login(self, http: aiohttp.ClientSession) -> None:
        password = self._password()
        credentials = {"username": self._config.username, "password": password}
        try:
            data = await self._rpc(http, [NULL_SESSION, "session", "login", credentials])
        except _Denied:
            raise _Fault("login refused: wrong username or password") from None
        session_id = data.get("ubus_rpc_session")
        if not isinstance(session_id, str) or not session_id:
            raise _Fault("malformed reply: login gave no session id")
        self._session_id = session_id
        self.logins += 1

    def _password(self) -> str:
        """Read on every login, so a changed password file needs no restart."""
        path = self._config.password_file
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise _Fault(f"password file {path} cannot be read: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise _Fault(f"password file {path} is not UTF-8 text") from None

    async def _rpc(self, http: aiohttp.ClientSession, params: list[Any]) -> dict[str, Any]:
        """One JSON-RPC call; the ``DATA`` of a good answer, else :class:`_Denied`/_Fault."""
        self._request_id += 1
        request = {"jsonrpc": "2.0", "id": self._request_id, "method": "call", "params": params}
        async with http.post(self._config.url, json=request, allow_redirects=False) as response:
            if response.status in {401, 403}:
                raise _Denied
            if response.status != 200:
                raise _Fault(f"http {response.status}")
            raw = bytearray()
            async for chunk in response.content.iter_chunked(65536):
                raw += chunk
                if len(raw) > _REPLY_LIMIT:
                    break
        return _result(bytes(raw))


def _result(raw: bytes) -> dict[str, Any]:
    """Check one JSON-RPC answer's shape; return its data or raise why not."""
    if len(raw) > _REPLY_LIMIT:
        raise _Fault("malformed reply: too large")
    try:
        reply = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise _Fault("malformed reply: not JSON") from None
    if not isinstance(reply, dict):
        raise _Fault("malformed reply: not a JSON-RPC object")
    error = reply.get("error")
    if error is not None:
        code = error.get("code") if isinstance(error, dict) else None
        if code == RPC_ACCESS_DENIED:
            raise _Denied
        message = error.get("message") if isinstance(error, dict) else error
        raise _Fault(f"rpc error {code}: {message}")
    result = reply.get("result")
    if not isinstance(result, list) or not result or type(result[0]) is not int:
        raise _Fault("malformed reply: no ubus status")
    status = result[0]
    if status == UBUS_PERMISSION_DENIED:
        raise _Denied
    if status != 0:
        raise _Fault(f"ubus status {status} ({_UBUS_STATUS.get(status, 'unknown')})")
    data = result[1] if len(result) > 1 else {}
    if not isinstance(data, dict):
        raise _Fault("malformed reply: data is not an object")
    return data
