"""Reason codes for the hotspot watch: what a user interface words in its own language.

The ``reason`` text of a hotspot (``"tcp: refused"``, ``"loss 33%"``, ``"no uplink
probes configured"``) is read by outside consumers and stays as it is. Beside it the
state carries ``reason_code`` (``tcp_refused``, ``loss_high``, ``no_uplink_probes``) and
``reason_params`` (``{"probe": "tcp"}``, ``{"loss_pct": 33}``), derived here from that
text by one function, so the two can never tell different stories. Every text the
probes, the hysteresis and the monitor produce maps to a code (:data:`CODES` lists them,
docs/hotspots.md explains them); an unforeseen text maps to ``other`` with the text as a
parameter rather than to nothing.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["CLIENT_CODES", "CODES", "clients_reason_code", "probe_reason_code", "reason_code"]

_KINDS = ("icmp", "tcp", "http", "dns")
_FIXED = {
    "starting": "starting",
    "no uplink probes configured": "no_uplink_probes",
    "uplink down": "uplink_down",
    "no probes": "no_probes",
    "flapping": "flapping",
}
_PROBE = {
    "timeout": "timeout",
    "refused": "refused",
    "reset": "reset",
    "unreachable": "unreachable",
    "permission denied": "permission",
    "nxdomain": "nxdomain",
    "bad name": "bad_name",
    "wrong body": "body",
    "no host": "no_host",
    "no answer": "no_answer",
    "dns refused": "server_refused",
}
_LOSS = re.compile(r"loss (?P<pct>\d+(?:\.\d+)?)%")
_P95 = re.compile(r"p95 (?P<ms>\d+(?:\.\d+)?) ms")
_HTTP = re.compile(r"http (?P<status>\d{3})")

CODES = (
    "starting",
    "no_uplink_probes",
    "uplink_down",
    "no_probes",
    "flapping",
    "loss_high",
    "latency_high",
    *(f"{kind}_{what}" for kind in _KINDS for what in _PROBE.values()),
    "dns_failed",
    *(f"{kind}_dns_failed" for kind in _KINDS if kind != "dns"),
    *(f"{kind}_error" for kind in _KINDS),
    "http_status",
    "other",
)
"""Every code :func:`reason_code` may give (``<probe>_<what>`` for each probe kind,
though not every pair occurs: ``icmp_body`` never does)."""


def _number(text: str) -> int | float:
    value = float(text)
    return int(value) if value.is_integer() else value


def probe_reason_code(kind: str, reason: str | None) -> tuple[str | None, dict[str, Any]]:
    """The code and parameters of one probe's failure reason (``"refused"`` of a ``tcp``
    probe: ``("tcp_refused", {"probe": "tcp"})``)."""
    if reason is None:
        return None, {}
    code, params = _probe_code(kind, reason)
    return code, {"probe": kind, **params}


def _probe_code(kind: str, reason: str) -> tuple[str, dict[str, Any]]:
    if kind not in _KINDS:
        return "other", {"text": reason}
    if reason in _PROBE:
        return f"{kind}_{_PROBE[reason]}", {}
    if (status := _HTTP.fullmatch(reason)) is not None:
        return "http_status", {"status": int(status["status"])}
    if reason.startswith("dns error"):
        detail = reason.removeprefix("dns error").lstrip(": ")
        code = "dns_failed" if kind == "dns" else f"{kind}_dns_failed"
        return code, {"detail": detail} if detail else {}
    if reason.startswith("error: "):
        return f"{kind}_error", {"error": reason.removeprefix("error: ")}
    return "other", {"text": reason}


def reason_code(reason: str | None) -> tuple[str | None, dict[str, Any]]:
    """The code and parameters of a hotspot's (or the uplink's) ``reason`` text; ``(None,
    {})`` when there is no reason (the target is up)."""
    if reason is None:
        return None, {}
    if reason in _FIXED:
        return _FIXED[reason], {}
    if (loss := _LOSS.fullmatch(reason)) is not None:
        return "loss_high", {"loss_pct": _number(loss["pct"])}
    if (p95 := _P95.fullmatch(reason)) is not None:
        return "latency_high", {"p95_ms": _number(p95["ms"])}
    kind, colon, rest = reason.partition(": ")
    if colon and kind in _KINDS:
        return probe_reason_code(kind, rest)
    return "other", {"text": reason}


_CLIENT_PREFIXES = (
    ("login refused", "clients_login_refused"),
    ("permission denied", "clients_permission"),
    ("rpc error", "clients_rpc_error"),
    ("malformed reply", "clients_malformed"),
    ("password file", "clients_password_file"),
    ("ubus status", "clients_ubus_status"),
    ("dns error", "clients_dns_failed"),
    ("error", "clients_error"),
)
CLIENT_CODES = (
    *(code for _, code in _CLIENT_PREFIXES),
    "clients_http_status",
    *(f"clients_{what}" for what in _PROBE.values()),
    "other",
)
"""Every code :func:`clients_reason_code` may give."""


def clients_reason_code(reason: str | None) -> tuple[str | None, dict[str, Any]]:
    """The code and parameters of a ``clients_reason`` (why an access point's client
    count could not be read over ubus); the text after the prefix is ``detail``."""
    if reason is None:
        return None, {}
    for prefix, code in _CLIENT_PREFIXES:
        if reason.startswith(prefix):
            detail = reason.removeprefix(prefix).lstrip(": ")
            return code, {"detail": detail} if detail else {}
    if (status := _HTTP.fullmatch(reason)) is not None:
        return "clients_http_status", {"status": int(status["status"])}
    if reason in _PROBE:  # the probes' words for a failed connection (timeout, refused)
        return f"clients_{_PROBE[reason]}", {}
    return "other", {"text": reason}
