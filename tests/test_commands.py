"""The command path: every bad input gets its documented answer, nothing runs twice,
no command waits behind another's long work, and what was claimed survives a crash."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from gateway.commands import (
    CommandError,
    Dispatcher,
    LongJob,
    Redelivered,
    RelaySetArgs,
    Source,
)
from gateway.events import EventHub
from gateway.log import configure_logging, get_logger, info_off_the_hot_path
from gateway.outbox import Outbox, Stream


class Rig:
    """A Dispatcher over a real outbox, with a relay.set handler that records what ran
    and emits a ``relay.switched`` event, as the relay bank does."""

    def __init__(self, state_dir: Path, outbox: Outbox, *, synced: bool = True) -> None:
        self.state_dir = state_dir
        self.outbox = outbox
        self.synced = synced
        self.ran: list[tuple[str, BaseModel, Source]] = []
        self.fed: list[tuple[dict[str, Any], int | None]] = []
        self.events = EventHub(outbox, lambda event, seq: self.fed.append((event, seq)))
        self.gates: dict[str, asyncio.Event] = {}
        self.dispatcher = self.make()

    def make(self, **options: Any) -> Dispatcher:
        return Dispatcher(
            state_dir=self.state_dir,
            handlers={"relay.set": self.relay_set, "pa.clip.fetch": self.fetch},
            outbox=self.outbox,
            events=self.events,
            clock_synced=lambda: self.synced,
            **options,
        )

    async def relay_set(self, args: BaseModel, source: Source) -> dict[str, Any]:
        assert isinstance(args, RelaySetArgs)
        gate = self.gates.get(args.relay)
        if gate is not None:
            await gate.wait()
        self.ran.append(("relay.set", args, source))
        self.events.emit({"type": "relay.switched", "relay": args.relay, "on": args.on})
        return {"relay": args.relay, "on": args.on}

    async def fetch(self, args: BaseModel, source: Source) -> dict[str, Any] | LongJob:
        gate = self.gates.setdefault("fetch", asyncio.Event())

        async def work() -> dict[str, Any]:
            await gate.wait()
            if getattr(args, "name", "") == "broken":
                raise CommandError("fetch_failed", "the server answered 404")
            return {"name": getattr(args, "name", None)}

        return LongJob(work(), accepted={"name": getattr(args, "name", None)})

    async def stored(self, stream: Stream) -> list[dict[str, Any]]:
        await self.outbox.flush()
        batch = await self.outbox.read(stream, after_seq=0, max_records=1000, max_bytes=10**7)
        return [] if batch is None else [json.loads(body) for body in batch.bodies]


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    """A dispatcher over a fresh outbox."""
    outbox = await Outbox.open(tmp_path / "outbox", commit_window_s=0.01)
    made = Rig(tmp_path, outbox)
    try:
        yield made
    finally:
        made.dispatcher.close()
        await outbox.close()


def command(**fields: Any) -> bytes:
    """A relay.set command with ``fields`` replacing or adding envelope keys."""
    body: dict[str, Any] = {"id": "c-1", "type": "relay.set", "args": {"relay": "yard", "on": True}}
    body.update(fields)
    return json.dumps(body).encode()


async def test_a_good_command_runs_once_and_is_answered(rig: Rig) -> None:
    """relay.set from MQTT runs its handler and answers done with the result; the
    command's event, the relay's event and the reply are stored in one commit, in that
    order, and the live feed gets both events with their seqs."""
    commits = rig.outbox.stats().commits
    reply = await rig.dispatcher.dispatch(command(), "mqtt", reply_up=True)
    assert reply.status == "done"
    assert reply.result == {"relay": "yard", "on": True}
    assert rig.outbox.stats().commits == commits + 1
    events = await rig.stored("events")
    assert [e["type"] for e in events] == ["command", "relay.switched"]
    assert events[0] | {"command": "relay.set", "source": "mqtt", "status": "done"} == events[0]
    replies = await rig.stored("replies")
    assert [(r["id"], r["status"]) for r in replies] == [("c-1", "done")]
    assert [(e["type"], seq) for e, seq in rig.fed] == [("command", 1), ("relay.switched", 2)]


async def test_web_commands_are_logged_but_not_replied_over_mqtt(rig: Rig) -> None:
    """A command from the web UI is an event like any other; its reply goes back to the
    caller, not to P/ID/reply."""
    reply = await rig.dispatcher.dispatch(command(), "web")
    assert reply.status == "done"
    assert [e["source"] for e in await rig.stored("events") if e["type"] == "command"] == ["web"]
    assert await rig.stored("replies") == []


@pytest.mark.parametrize(
    ("payload", "code", "reply_id"),
    [
        pytest.param(b"not json", "bad_json", None, id="not-json"),
        pytest.param(b"[1, 2]", "bad_command", None, id="array"),
        pytest.param(b'"relay.set"', "bad_command", None, id="string"),
        pytest.param(
            json.dumps({"type": "relay.set", "args": {}}).encode(),
            "bad_command",
            None,
            id="missing-id",
        ),
        pytest.param(command(id="c" * 65), "bad_command", None, id="id-65-chars"),
        pytest.param(command(id="a/b"), "bad_command", None, id="id-slash"),
        pytest.param(command(type="relay.explode"), "unknown_type", "c-1", id="unknown-type"),
        pytest.param(
            command(args={"relay": "yard", "on": "yes"}), "bad_args", "c-1", id="args-wrong-type"
        ),
        pytest.param(
            command(args={"relay": "yard", "on": True, "for_s": -5}),
            "bad_args",
            "c-1",
            id="for-s-negative",
        ),
        pytest.param(
            command(args={"relay": "yard", "on": True, "for_s": 86_401}),
            "bad_args",
            "c-1",
            id="for-s-above-a-day",
        ),
        pytest.param(command(args={"relay": "yard"}), "bad_args", "c-1", id="args-missing"),
        pytest.param(command(extra=1), "bad_command", "c-1", id="unknown-envelope-key"),
        pytest.param(b"\xff\xfe{}", "bad_json", None, id="invalid-utf8"),
        pytest.param(b"[" * 10_000 + b"]" * 10_000, "bad_json", None, id="nested-10000"),
        pytest.param(
            json.dumps(
                {
                    "id": "c-1",
                    "type": "relay.set",
                    "args": {
                        "relay": "yard",
                        "on": True,
                        "x": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]],
                    },
                }
            ).encode(),
            "bad_command",
            "c-1",
            id="nested-34",
        ),
        pytest.param(
            b'{"id": "big", "type": "relay.set", "args": {"pad": "' + b"x" * 1_000_000 + b'"}}',
            "too_large",
            None,
            id="one-megabyte",
        ),
    ],
)
async def test_bad_input_is_rejected_with_its_code(
    rig: Rig, payload: bytes, code: str, reply_id: str | None
) -> None:
    """Each malformed command is rejected with the PROTOCOL.md error code, answered with
    its id when it carried a valid one (null otherwise), and runs nothing."""
    reply = await rig.dispatcher.dispatch(payload, "mqtt", reply_up=True)
    assert (reply.status, reply.error_code) == ("rejected", code), reply.error_message
    assert reply.id == reply_id
    assert rig.ran == []
    assert reply.as_dict()["error"]["message"]
    stored = await rig.stored("replies")
    assert [(r["id"], r["status"]) for r in stored] == [(reply_id, "rejected")]


async def test_a_refusals_event_says_why_as_its_reply_does(rig: Rig) -> None:
    """A command refused for its arguments is stored as an event with the reply's
    ``error.detail`` (reason, field) and the type it says it is when that is one of ours,
    so the events page can say which command and why in words instead of a general
    sentence; a refusal without detail stores none, and an unknown type is not echoed."""
    reply = await rig.dispatcher.dispatch(
        command(id="r-1", args={"relay": "yard"}), "web", reply_up=False
    )
    await rig.dispatcher.dispatch(b"not json", "mqtt", reply_up=True)
    await rig.dispatcher.dispatch(command(id="r-2", type="relay.explode"), "mqtt")
    assert reply.error_detail is not None
    events = await rig.stored("events")
    refused = {event["id"]: event for event in events if event["status"] == "rejected"}
    assert refused["r-1"]["error"] == "bad_args"
    assert refused["r-1"]["detail"] == reply.error_detail
    assert refused["r-1"]["detail"]["field"] == "on"
    assert refused["r-1"]["command"] == "relay.set"
    assert refused["r-2"]["command"] is None
    assert "detail" not in refused[None]
    assert refused[None]["error"] == "bad_json"


async def test_same_id_twice_and_after_a_restart_is_duplicate(rig: Rig) -> None:
    """An id that already ran is answered duplicate and does not run again, also after a
    restart (ids are kept in SQLite)."""
    assert (await rig.dispatcher.dispatch(command(id="c-7"), "mqtt")).status == "done"
    assert (await rig.dispatcher.dispatch(command(id="c-7"), "mqtt")).status == "duplicate"
    rig.dispatcher.close()
    rig.dispatcher = rig.make()
    again = await rig.dispatcher.dispatch(command(id="c-7"), "mqtt")
    assert again.status == "duplicate"
    assert len(rig.ran) == 1


async def test_expired_only_while_the_clock_is_synced(rig: Rig) -> None:
    """A command past issued_at + ttl_s is expired while the clock is synchronised; with
    the clock not yet synced after a boot, it cannot be judged and runs."""
    old = (datetime.now(UTC) - timedelta(minutes=10)).isoformat()
    reply = await rig.dispatcher.dispatch(command(id="c-old", issued_at=old, ttl_s=60), "mqtt")
    assert reply.status == "expired"
    assert rig.ran == []
    fresh = (datetime.now(UTC) - timedelta(seconds=10)).isoformat()
    new = await rig.dispatcher.dispatch(command(id="c-new", issued_at=fresh, ttl_s=60), "mqtt")
    assert new.status == "done"
    rig.synced = False
    late = await rig.dispatcher.dispatch(command(id="c-old2", issued_at=old, ttl_s=60), "mqtt")
    assert late.status == "done"


async def test_known_type_without_handler_fails_clearly(rig: Rig) -> None:
    """A v1 type whose part is not built on this gateway fails with not_available."""
    payload = json.dumps({"id": "p-1", "type": "pa.volume", "args": {"volume": 50}}).encode()
    reply = await rig.dispatcher.dispatch(payload, "mqtt")
    assert (reply.status, reply.error_code) == ("failed", "not_available")


async def test_no_command_waits_behind_another_target(rig: Rig) -> None:
    """A relay.set held up in its handler holds only its own relay: a command to another
    relay is answered meanwhile, and a second command to the held relay waits its turn."""
    rig.gates["yard"] = asyncio.Event()
    held = rig.dispatcher.submit(command(id="y-1"), "mqtt")
    behind = rig.dispatcher.submit(command(id="y-2", args={"relay": "yard", "on": False}), "mqtt")
    other = await asyncio.wait_for(
        rig.dispatcher.dispatch(command(id="h-1", args={"relay": "hall", "on": True}), "mqtt"),
        timeout=10,
    )
    assert other.status == "done"
    assert not held.done()
    assert not behind.done()
    rig.gates["yard"].set()
    assert (await held).status == (await behind).status == "done"
    yard = [(a.relay, a.on) for _, a, _ in rig.ran if isinstance(a, RelaySetArgs)]
    assert yard == [("hall", True), ("yard", True), ("yard", False)]


async def test_a_long_job_is_accepted_at_once_and_answered_when_done(rig: Rig) -> None:
    """pa.clip.fetch answers accepted at once; other commands run while it works; its
    final reply (done, or rejected with the job's error code) follows."""
    fetch = {
        "type": "pa.clip.fetch",
        "args": {"name": "tin", "url": "http://x/", "sha256": "0" * 64},
    }
    final = rig.dispatcher.submit(
        json.dumps({"id": "f-1", **fetch}).encode(), "mqtt", reply_up=True
    )
    broken = {**fetch, "args": {**fetch["args"], "name": "broken"}}  # type: ignore[dict-item]
    failing = rig.dispatcher.submit(
        json.dumps({"id": "f-2", **broken}).encode(), "mqtt", reply_up=True
    )
    ping = await asyncio.wait_for(rig.dispatcher.dispatch(command(id="r-1"), "mqtt"), timeout=10)
    assert ping.status == "done"
    assert not final.done()
    replies = await rig.stored("replies")
    assert [(r["id"], r["status"]) for r in replies] == [("f-1", "accepted"), ("f-2", "accepted")]
    rig.gates["fetch"].set()
    assert (await final).status == "done"
    last = await failing
    assert (last.status, last.error_code) == ("rejected", "fetch_failed")
    replies = await rig.stored("replies")
    assert sorted((r["id"], r["status"]) for r in replies[2:]) == [
        ("f-1", "done"),
        ("f-2", "rejected"),
    ]


async def test_a_command_claimed_before_a_crash_runs_after_the_restart(rig: Rig) -> None:
    """A command claimed durably (acknowledged to the broker) whose reply was never
    stored is run by recover() after a restart, once; one whose reply was stored is not
    run again."""
    rig.gates["yard"] = asyncio.Event()
    rig.dispatcher.submit(command(id="k-1"), "mqtt", reply_up=True, durable=True)
    answered = await rig.dispatcher.submit(
        command(id="k-2", args={"relay": "hall", "on": True}), "mqtt", reply_up=True, durable=True
    )
    assert answered.status == "done"
    rig.dispatcher.close()  # the crash: k-1 was claimed, never ran
    assert [a.relay for _, a, _ in rig.ran if isinstance(a, RelaySetArgs)] == ["hall"]
    del rig.gates["yard"]
    rig.dispatcher = rig.make()
    assert await rig.dispatcher.recover() == 1
    assert [a.relay for _, a, _ in rig.ran if isinstance(a, RelaySetArgs)] == ["hall", "yard"]
    replies = [(r["id"], r["status"]) for r in await rig.stored("replies")]
    assert replies == [("k-2", "done"), ("k-1", "done")]
    rig.dispatcher.close()
    rig.dispatcher = rig.make()
    assert await rig.dispatcher.recover() == 0


async def test_an_answered_command_is_forgotten_by_the_journal(rig: Rig) -> None:
    """Once its reply is stored, a durably claimed command is closed in the journal (by
    the outbox's writer thread, before its next commit): a restart has nothing to run
    or to close."""
    reply = await rig.dispatcher.submit(command(id="j-1"), "mqtt", reply_up=True, durable=True)
    assert reply.status == "done"
    await rig.outbox.flush()  # the writer's next turn: the follow-up of j-1's commit is done
    assert rig.dispatcher._journal.open_claims() == []


async def test_a_commands_log_lines_are_written_after_its_reply_is_stored(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lines a command writes (its handler's, then ``command.handled``) wait until its
    events and reply are committed: written earlier, they would hold the interpreter the
    writer thread needs to start that commit."""
    written: list[tuple[str, int]] = []

    class Journal(io.StringIO):
        def write(self, text: str) -> int:
            for line in text.splitlines():
                written.append((json.loads(line)["event"], rig.outbox.stats().commits))
            return len(text)

    configure_logging(fmt="json", stream=Journal())
    handler = rig.relay_set

    async def logging_relay_set(args: BaseModel, source: Source) -> dict[str, Any]:
        result = await handler(args, source)
        info_off_the_hot_path(get_logger("relays"), "relay.switched", relay="yard")
        assert written == [], "a line was written while the command ran"
        return result

    monkeypatch.setitem(rig.dispatcher._handlers, "relay.set", logging_relay_set)
    commits = rig.outbox.stats().commits
    reply = await rig.dispatcher.dispatch(command(), "mqtt", reply_up=True)
    assert reply.status == "done"
    assert written == [("relay.switched", commits + 1), ("command.handled", commits + 1)]


async def test_the_same_message_again_is_not_answered_twice(rig: Rig) -> None:
    """The broker redelivering a claimed command (same id, same bytes) gets no second
    reply; the same id with other bytes is a duplicate."""
    assert (
        await rig.dispatcher.submit(command(id="d-1"), "mqtt", reply_up=True, durable=True)
    ).status == "done"
    with pytest.raises(Redelivered):
        rig.dispatcher.submit(command(id="d-1"), "mqtt", reply_up=True, durable=True)
    other = command(id="d-1", args={"relay": "yard", "on": False})
    again = await rig.dispatcher.submit(other, "mqtt", reply_up=True, durable=True)
    assert again.status == "duplicate"
    assert len(rig.ran) == 1


async def test_a_storage_failure_after_the_switch_still_reports_the_switch(rig: Rig) -> None:
    """The relay did switch: that the outbox could not store it is logged, and the
    caller still hears done."""
    await rig.outbox.close()
    reply = await rig.dispatcher.dispatch(command(id="s-1"), "web")
    assert reply.status == "done"
    assert len(rig.ran) == 1
