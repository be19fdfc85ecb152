"""Admission belongs to the MQTT adapter: signatures first, a rate limit per kind of
sender, refusals without an fsync each; web, scheduler and amplifier never sign."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from gateway.commands import Dispatcher, Source, sign
from gateway.config import load_settings
from gateway.daemon.app import App
from gateway.events import EventHub
from gateway.outbox import Outbox
from gateway.uplink.client import Topics
from gateway.uplink.downlink import Downlink
from tests.conftest import ConfigFile
from tests.test_app import FAST, running, wait_for

KEY = b"commune-secret-key-0123456789abcdef"
TOPICS = Topics("vg/v1", "test.gw")


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Adapter:
    """A Downlink over a real Dispatcher and outbox, with a system.ping handler."""

    def __init__(self, outbox: Outbox, state_dir: Path, clock: Clock) -> None:
        self.outbox = outbox
        self.ran: list[str] = []
        self.dispatcher = Dispatcher(
            state_dir=state_dir,
            handlers={"system.ping": self.ping},
            outbox=outbox,
            events=EventHub(outbox, lambda event, seq: None),
            clock_synced=lambda: True,
        )
        self.downlink = Downlink(
            self.dispatcher, TOPICS, [], hmac_key=KEY, rate_per_s=20, burst=100, clock=clock
        )

    async def ping(self, args: BaseModel, source: Source) -> dict[str, Any]:
        self.ran.append(source)
        return {"pong": True}

    async def replies(self) -> dict[str | None, dict[str, Any]]:
        await self.outbox.flush()
        batch = await self.outbox.read(
            "replies", after_seq=0, max_records=10_000, max_bytes=1 << 24
        )
        bodies = [] if batch is None else [json.loads(b) for b in batch.bodies]
        return {body["id"]: body for body in bodies}


@pytest.fixture
async def adapter(tmp_path: Path) -> AsyncIterator[Adapter]:
    """A signing-gateway's MQTT adapter over a fresh outbox."""
    outbox = await Outbox.open(tmp_path / "outbox", commit_window_s=0.01)
    made = Adapter(outbox, tmp_path, Clock())
    try:
        yield made
    finally:
        made.dispatcher.close()
        await outbox.close()


def signed(command_id: str, **fields: Any) -> bytes:
    body: dict[str, Any] = {
        "id": command_id,
        "type": "system.ping",
        "args": {},
        "issued_at": datetime.now(UTC).isoformat(),
        **fields,
    }
    body["sig"] = sign(body, KEY)
    return json.dumps(body).encode()


async def test_signature_is_checked_and_issued_at_required(adapter: Adapter) -> None:
    """Unsigned or wrongly signed: forbidden; signed without issued_at (replayable once
    its id is forgotten): bad_command; signed with issued_at: done."""
    unsigned = json.dumps({"id": "u-1", "type": "system.ping", "args": {}}).encode()
    await adapter.downlink(TOPICS.cmd, unsigned, False)
    forged = json.loads(signed("u-2"))
    forged["sig"] = sign(forged, b"another key")
    await adapter.downlink(TOPICS.cmd, json.dumps(forged).encode(), False)
    bare = {"id": "u-3", "type": "system.ping", "args": {}}
    await adapter.downlink(TOPICS.cmd, json.dumps({**bare, "sig": sign(bare, KEY)}).encode(), False)
    await adapter.downlink(TOPICS.cmd, signed("s-1"), False)
    await wait_for(lambda: adapter.ran == ["mqtt"])
    replies = await adapter.replies()
    assert replies["u-1"]["error"]["code"] == "forbidden"
    assert replies["u-2"]["error"]["code"] == "forbidden"
    assert replies["u-3"]["error"]["code"] == "bad_command"
    assert "issued_at" in replies["u-3"]["error"]["message"]
    assert replies["s-1"]["status"] == "done"


async def test_signed_commands_are_not_starved_by_unsigned_junk(adapter: Adapter) -> None:
    """250 unsigned commands a second for 4 s, 10 signed ones among them: all 10 done;
    the junk is refused within its own budget and the rest only counted."""
    clock = adapter.downlink._clock
    assert isinstance(clock, Clock)
    sent_signed = 0
    for n in range(1000):
        clock.now += 1 / 250
        junk = json.dumps({"id": f"j-{n}", "type": "system.ping", "args": {}}).encode()
        await adapter.downlink(TOPICS.cmd, junk, False)
        if n % 100 == 50:
            await adapter.downlink(TOPICS.cmd, signed(f"s-{sent_signed}"), False)
            sent_signed += 1
    await wait_for(lambda: len(adapter.ran) == sent_signed)
    replies = await adapter.replies()
    assert [replies[f"s-{n}"]["status"] for n in range(sent_signed)] == ["done"] * 10
    refused = [r for r in replies.values() if str(r["id"]).startswith("j-")]
    assert {r["error"]["code"] for r in refused} == {"forbidden"}
    # The junk bucket: a burst of 100, then 20 a second over 4 s.
    assert len(refused) <= 100 + 20 * 4 + 1
    assert adapter.downlink.dropped == 1000 - len(refused)


async def test_malformed_payloads_are_rate_limited_without_an_fsync_each(
    adapter: Adapter,
) -> None:
    """2,000 broken payloads at once: at most a burst is answered, the rest counted, and
    the answers share a few commits instead of one fsync each."""
    commits = adapter.outbox.stats().commits
    for n in range(2000):
        await adapter.downlink(TOPICS.cmd, b"{not json " + str(n).encode(), False)
    replies = await adapter.replies()
    assert len([r for r in replies.values() if r["id"] is None]) <= 1  # one id: null
    await adapter.outbox.flush()
    assert adapter.downlink.dropped >= 2000 - 101
    assert adapter.outbox.stats().commits - commits < 20


async def test_web_scheduler_and_amplifier_work_with_signing_on(
    config_file: ConfigFile, tmp_path: Path
) -> None:
    """With commands.hmac_key_file set, the web UI's and the scheduler's commands run
    unsigned (they never sign), and a broadcast powers the amplifier through its port."""
    key_file = tmp_path / "hmac.key"
    key_file.write_bytes(KEY)
    config_file.write(
        extra=f'\n[commands]\nhmac_key_file = "{key_file}"\n',
        replace={"[pa]\n": "[pa]\namp_warmup_s = 0.1\n"},
    )
    app = App(load_settings(config_file.path), backoff=FAST)
    async with running(app):
        assert app.dispatcher is not None
        assert app.control is not None
        web = await app.dispatcher.dispatch(
            {"id": "w-1", "type": "relay.set", "args": {"relay": "yard", "on": True}}, "web"
        )
        assert web.status == "done"
        assert app.control.relays.is_on("yard") is True
        broadcast = await app.dispatcher.dispatch(
            {"id": "b-1", "type": "pa.play", "args": {"clip": "chime", "priority": "scheduled"}},
            "schedule",
        )
        assert broadcast.status == "done", broadcast
        relays = app.control.relays
        await wait_for(lambda: relays.is_on("amplifier") is True, 10)
