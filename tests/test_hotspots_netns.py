"""Real unprivileged ICMP, inside a network namespace the test makes itself.

``net.ipv4.ping_group_range`` is per network namespace, so a root test can open it in a
fresh namespace (loopback only) and prove that, with permission, the monitor pings for
real and measures RTT and loss, without touching the machine's own setting. Without
root or ``unshare`` the test is skipped with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

_CHILD = textwrap.dedent("""\
    import asyncio, json
    from gateway.config import HotspotConfig, IcmpProbe, UplinkSection
    from gateway.hotspots import HotspotMonitor
    from gateway.state import StateStore

    async def main():
        events = []

        async def sink(event):
            events.append(event)

        hotspot = HotspotConfig(host="127.0.0.1", probes=[IcmpProbe(kind="icmp")])
        monitor = HotspotMonitor(
            {"hall": hotspot}, UplinkSection(), state=StateStore(), on_event=sink
        )
        await monitor.probe_now()
        reply = await monitor.probe_now()
        print(json.dumps({"reply": reply, "events": events, "snapshot": monitor.snapshot()}))

    asyncio.run(main())
""")


@pytest.mark.slow
def test_real_ping_in_a_namespace_with_the_range_open() -> None:
    """In a namespace whose ping range includes our group, ICMP runs with no fallback.

    Two cycles against the namespace's own loopback bring the hotspot up, with 0 % loss
    and a measured round trip, and no "not permitted" event.
    """
    unshare = shutil.which("unshare")
    if os.geteuid() != 0 or unshare is None:
        pytest.skip("needs root and unshare(1) to make a network namespace")
    script = (
        "ip link set lo up && "
        "echo '0 2147483647' > /proc/sys/net/ipv4/ping_group_range && "
        f'exec "{sys.executable}" -c "$CHILD"'
    )
    done = subprocess.run(
        [unshare, "--net", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        env={**os.environ, "CHILD": _CHILD},
        check=False,
    )
    if done.returncode != 0 and "Operation not permitted" in done.stderr:
        pytest.skip(f"cannot make a network namespace here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    (probe,) = result["reply"]["hotspots"]["hall"]["probes"]
    assert probe["kind"] == "icmp"
    assert probe["ok"] is True
    assert probe["loss_pct"] == 0.0
    assert probe["rtt_ms"] > 0
    assert "stands_in_for" not in probe
    assert result["reply"]["hotspots"]["hall"]["state"] == "up"
    assert result["snapshot"]["icmp"]["permitted"] is True
    assert result["snapshot"]["hotspots"]["hall"]["loss_pct"] == 0.0
    assert result["events"] == [
        {
            "type": "hotspot.state",
            "state": "up",
            "previous": "unknown",
            "reason": None,
            "flaps": 0,
            "outages": 0,
            "hotspot": "hall",
            "label": "",
        }
    ]
