"""The command path: every bad input gets its documented answer, and nothing runs twice."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from gateway.commands import Dispatcher, RelaySetArgs, Reply, Source, sign
from gateway.outbox import Stream


class Recorder:
    """What the dispatcher sent to the outbox, and what the handlers ran."""

    def __init__(self) -> None:
        self.records: list[tuple[Stream, dict[str, Any]]] = []
        self.ran: list[tuple[str, BaseModel, Source]] = []

    async def record(self, records: list[tuple[Stream, dict[str, Any]]]) -> None:
        self.records.extend(records)

    async def relay_set(self, args: BaseModel, source: Source) -> dict[str, Any]:
        assert isinstance(args, RelaySetArgs)
        self.ran.append(("relay.set", args, source))
        return {"relay": args.relay, "on": args.on}


def make_dispatcher(
    state_dir: Path, recorder: Recorder, *, synced: bool = True, **options: Any
) -> Dispatcher:
    state_dir.mkdir(parents=True, exist_ok=True)
    return Dispatcher(
        state_dir=state_dir,
        handlers={"relay.set": recorder.relay_set},
        record=recorder.record,
        clock_synced=lambda: synced,
        **options,
    )


@pytest.fixture
def recorder() -> Recorder:
    """A fresh recorder per test."""
    return Recorder()


def command(**fields: Any) -> bytes:
    """A relay.set command with ``fields`` replacing or adding envelope keys."""
    body: dict[str, Any] = {"id": "c-1", "type": "relay.set", "args": {"relay": "yard", "on": True}}
    body.update(fields)
    return json.dumps(body).encode()


async def test_a_good_command_runs_once_and_is_answered(tmp_path: Path, recorder: Recorder) -> None:
    """relay.set from MQTT runs its handler, answers done with the result, appends the
    reply to the replies stream and the action to the events stream."""
    dispatcher = make_dispatcher(tmp_path, recorder)
    reply = await dispatcher.dispatch(command(), "mqtt")
    assert reply.status == "done"
    assert reply.result == {"relay": "yard", "on": True}
    streams = [stream for stream, _ in recorder.records]
    assert streams == ["events", "replies"]
    event = recorder.records[0][1]
    assert event["type"] == "command"
    assert event["command"] == "relay.set"
    assert event["source"] == "mqtt"
    assert event["status"] == "done"
    body = recorder.records[1][1]
    assert body["id"] == "c-1"
    assert body["status"] == "done"
    dispatcher.close()


async def test_web_commands_are_logged_but_not_replied_over_mqtt(
    tmp_path: Path, recorder: Recorder
) -> None:
    """A command from the web UI is an event like any other; its reply goes back over
    HTTP, not to P/ID/reply."""
    dispatcher = make_dispatcher(tmp_path, recorder)
    reply = await dispatcher.dispatch(command(), "web")
    assert reply.status == "done"
    assert [stream for stream, _ in recorder.records] == ["events"]
    dispatcher.close()


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
            None,
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
    tmp_path: Path, recorder: Recorder, payload: bytes, code: str, reply_id: str | None
) -> None:
    """Each malformed command is rejected with the PROTOCOL.md error code, answered with
    its id when it carried a valid one (null otherwise), and runs nothing."""
    dispatcher = make_dispatcher(tmp_path, recorder)
    reply = await dispatcher.dispatch(payload, "mqtt")
    assert (reply.status, reply.error_code) == ("rejected", code), reply.error_message
    assert reply.id == reply_id
    assert recorder.ran == []
    assert reply.as_dict()["error"]["message"]
    dispatcher.close()


async def test_same_id_twice_and_after_a_restart_is_duplicate(
    tmp_path: Path, recorder: Recorder
) -> None:
    """An id that already ran is answered duplicate and does not run again, also after a
    restart (ids are kept in SQLite)."""
    dispatcher = make_dispatcher(tmp_path, recorder)
    assert (await dispatcher.dispatch(command(id="c-7"), "mqtt")).status == "done"
    assert (await dispatcher.dispatch(command(id="c-7"), "mqtt")).status == "duplicate"
    dispatcher.close()
    restarted = make_dispatcher(tmp_path, recorder)
    again = await restarted.dispatch(command(id="c-7"), "mqtt")
    assert again.status == "duplicate"
    assert len(recorder.ran) == 1
    restarted.close()


async def test_expired_only_while_the_clock_is_synced(tmp_path: Path, recorder: Recorder) -> None:
    """A command past issued_at + ttl_s is expired while the clock is synchronised; with
    the clock not yet synced after a boot, it cannot be judged and runs."""
    old = (datetime.now(UTC) - timedelta(minutes=10)).isoformat()
    synced = make_dispatcher(tmp_path / "a", recorder, synced=True)
    reply = await synced.dispatch(command(id="c-old", issued_at=old, ttl_s=60), "mqtt")
    assert reply.status == "expired"
    assert recorder.ran == []
    fresh = (datetime.now(UTC) - timedelta(seconds=10)).isoformat()
    assert (
        await synced.dispatch(command(id="c-new", issued_at=fresh, ttl_s=60), "mqtt")
    ).status == "done"
    unsynced = make_dispatcher(tmp_path / "b", recorder, synced=False)
    assert (
        await unsynced.dispatch(command(id="c-old", issued_at=old, ttl_s=60), "mqtt")
    ).status == "done"
    synced.close()
    unsynced.close()


async def test_signed_commands(tmp_path: Path, recorder: Recorder) -> None:
    """With an HMAC key, an unsigned or wrongly signed command is rejected as forbidden;
    a correctly signed one runs."""
    key = b"commune-secret"
    dispatcher = make_dispatcher(tmp_path, recorder, hmac_key=key)
    unsigned = json.loads(command(id="s-1"))
    assert (await dispatcher.dispatch(unsigned, "mqtt")).error_code == "forbidden"
    forged = {**unsigned, "sig": sign(unsigned, b"wrong-key")}
    assert (await dispatcher.dispatch(forged, "mqtt")).error_code == "forbidden"
    signed = {**unsigned, "sig": sign(unsigned, key)}
    assert (await dispatcher.dispatch(signed, "mqtt")).status == "done"
    dispatcher.close()


async def test_rate_limit_per_source(tmp_path: Path, recorder: Recorder) -> None:
    """A flood from one source is cut off with rate_limited; another source still gets
    through."""
    dispatcher = make_dispatcher(tmp_path, recorder, rate_per_s=1, burst=5)
    replies: list[Reply] = [
        await dispatcher.dispatch(command(id=f"f-{n}"), "mqtt") for n in range(10)
    ]
    assert [r.status for r in replies].count("done") == 5
    assert replies[-1].error_code == "rate_limited"
    assert (await dispatcher.dispatch(command(id="w-1"), "web")).status == "done"
    dispatcher.close()


async def test_known_type_without_handler_fails_clearly(tmp_path: Path, recorder: Recorder) -> None:
    """A v1 type whose part is not built on this gateway yet fails with not_available."""
    dispatcher = make_dispatcher(tmp_path, recorder)
    payload = json.dumps({"id": "p-1", "type": "pa.volume", "args": {"volume": 50}}).encode()
    reply = await dispatcher.dispatch(payload, "mqtt")
    assert (reply.status, reply.error_code) == ("failed", "not_available")
    dispatcher.close()
