"""Every reason text of the hotspot watch has a reason code, and the text is unchanged."""

from __future__ import annotations

import pytest

from gateway.hotspots import probes
from gateway.hotspots.reasons import (
    CLIENT_CODES,
    CODES,
    clients_reason_code,
    probe_reason_code,
    reason_code,
)


def every_probe_reason() -> list[str]:
    """Each failure text a probe can give (from the probes' own tables and literals)."""
    texts = {text for _, text in probes._REASONS}
    texts |= set(probes._RCODES.values())
    texts |= {
        "unreachable",
        "nxdomain",
        "no answer",
        "wrong body",
        "no host",
        "http 503",
        "dns error: rcode 9",
        "error: OSError",
    }
    return sorted(texts)


@pytest.mark.parametrize("kind", ["icmp", "tcp", "http", "dns"])
def test_every_probe_reason_has_a_code(kind: str) -> None:
    """Whatever a probe of any kind reports, the hotspot's reason ("tcp: refused") gets
    a listed code, never the catch-all, and the probe kind as a parameter."""
    for text in every_probe_reason():
        code, params = reason_code(f"{kind}: {text}")
        assert code in CODES, text
        assert code != "other", text
        assert params["probe"] == kind
        assert probe_reason_code(kind, text) == (code, params)


@pytest.mark.parametrize(
    ("text", "code", "params"),
    [
        (None, None, {}),
        ("starting", "starting", {}),
        ("no uplink probes configured", "no_uplink_probes", {}),
        ("uplink down", "uplink_down", {}),
        ("no probes", "no_probes", {}),
        ("flapping", "flapping", {}),
        ("loss 33%", "loss_high", {"loss_pct": 33}),
        ("p95 612 ms", "latency_high", {"p95_ms": 612}),
        ("tcp: refused", "tcp_refused", {"probe": "tcp"}),
        ("tcp: timeout", "tcp_timeout", {"probe": "tcp"}),
        ("http: http 502", "http_status", {"probe": "http", "status": 502}),
        ("dns: dns error: servfail", "dns_failed", {"probe": "dns", "detail": "servfail"}),
        ("dns: dns refused", "dns_server_refused", {"probe": "dns"}),
        ("icmp: permission denied", "icmp_permission", {"probe": "icmp"}),
        ("something new", "other", {"text": "something new"}),
    ],
)
def test_known_reasons(text: str | None, code: str | None, params: dict[str, object]) -> None:
    """The texts of the hysteresis and the monitor map to their codes and parameters; an
    unforeseen text is ``other`` and carries itself, so nothing is lost."""
    assert reason_code(text) == (code, params)


@pytest.mark.parametrize(
    ("text", "code", "params"),
    [
        (None, None, {}),
        ("login refused: wrong username or password", "clients_login_refused",
         {"detail": "wrong username or password"}),
        ("permission denied: the access point's rpcd ACL does not grant hostapd.wlan0 "
         "get_clients", "clients_permission",
         {"detail": "the access point's rpcd ACL does not grant hostapd.wlan0 get_clients"}),
        ("rpc error -32000: Object not found", "clients_rpc_error",
         {"detail": "-32000: Object not found"}),
        ("malformed reply: not JSON", "clients_malformed", {"detail": "not JSON"}),
        ("password file /etc/x cannot be read: No such file", "clients_password_file",
         {"detail": "/etc/x cannot be read: No such file"}),
        ("ubus status 6 (permission denied)", "clients_ubus_status",
         {"detail": "6 (permission denied)"}),
        ("http 404", "clients_http_status", {"status": 404}),
        ("timeout", "clients_timeout", {}),
        ("refused", "clients_refused", {}),
        ("error: OSError", "clients_error", {"detail": "OSError"}),
    ],
)  # fmt: skip
def test_clients_reasons(text: str | None, code: str | None, params: dict[str, object]) -> None:
    """Why an access point's client count is unknown has a code too (docs/hotspots.md)."""
    assert clients_reason_code(text) == (code, params)
    assert code is None or code in CLIENT_CODES
