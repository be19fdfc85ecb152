"""The PA inside the daemon: commands over real MQTT, state/pa, the amplifier relay.

The daemon runs the null backend (the whole pipeline, paced in real time, samples
discarded) on gpiozero's mock pins, so the amplifier relay's pin history can be put
against the moments samples were handed to the device.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gateway.config import load_settings
from gateway.daemon.app import App
from tests.conftest import Broker, ConfigFile, Daemon, clean_env, wait_online
from tests.test_app import running, wait_for
from tests.test_downlink import daemon_on, send
from tests.test_link import subscriber
from tests.test_pa_fetch import tone_mp3


def pa_state(messages: list[tuple[str, Any, bool]]) -> dict[str, Any] | None:
    """The latest state/pa snapshot seen."""
    states = [body for topic, body, _ in messages if topic.endswith("/state/pa")]
    return states[-1] if states else None


@pytest.mark.slow
async def test_pa_commands_over_mqtt(
    broker: Broker, config_file: ConfigFile, start_daemon: Callable[..., Daemon]
) -> None:
    """pa.play of the bundled test tone is done and plays; pa.volume changes state/pa;
    pa.stop stops; bad volume, unknown priority and unknown clip are rejected with their
    codes, and the daemon keeps playing other items meanwhile. The amplifier relay is
    switched through the relay bank (relay.switched events, source pa), not by
    commands."""
    daemon, gateway = daemon_on(broker, config_file, start_daemon, f"g-{uuid.uuid4().hex[:6]}")
    async with subscriber(broker, f"vg/v1/{gateway}/#") as seen:
        await wait_online(broker, gateway)

        async def command(*args: str) -> dict[str, Any]:
            done = await asyncio.to_thread(send, broker, "--gateway", gateway, *args)
            reply: dict[str, Any] = json.loads(done.stdout)
            return reply

        play = await command("pa.play", "clip=test-tone", "priority=announcement", "repeat=3")
        assert play["status"] == "done", play
        assert play["result"]["status"] == "playing"
        await wait_for(lambda: (pa_state(seen.messages) or {}).get("playing") is not None, 15)
        for bad, code in (
            (("pa.play", "clip=test-tone", "volume=101"), "bad_args"),
            (("pa.play", "clip=test-tone", "volume=-1"), "bad_args"),
            (("pa.play", "clip=test-tone", "priority=urgent"), "bad_args"),
            (("pa.play", "clip=no-such-clip"), "unknown_target"),
            (("pa.volume", "volume=101"), "bad_args"),
        ):
            reply = await command(*bad)
            assert (reply["status"], reply["error"]["code"]) == ("rejected", code), reply
        volume = await command("pa.volume", "volume=30")
        assert volume["status"] == "done"
        await wait_for(lambda: (pa_state(seen.messages) or {}).get("volume") == 30, 15)
        state = pa_state(seen.messages)
        assert state is not None
        assert state["playing"]["clip"] == "test-tone"  # still playing through the bad ones
        assert state["device"] == "off"  # the null backend
        assert state["amplifier"] is True

        def started() -> bool:
            playing = (pa_state(seen.messages) or {}).get("playing") or {}
            return playing.get("state") == "playing"

        # The amplifier warms up (pa.amp_warmup_s) before the first sample and pa.started:
        # stopping before that would leave no pa.started to see.
        await wait_for(started, 15)
        stop = await command("pa.stop", "scope=all")
        assert stop["status"] == "done"
        assert stop["result"]["stopped"]
        await wait_for(lambda: (pa_state(seen.messages) or {}).get("playing") is None, 15)

        def uploaded_events() -> list[dict[str, Any]]:
            return [
                record
                for topic, body, _ in seen.messages
                if topic.endswith("/events")
                for record in body["records"]
            ]

        # Events go up in batches, a moment after they happen.
        await wait_for(
            lambda: {"pa.started", "pa.finished"} <= {e["type"] for e in uploaded_events()}, 15
        )
        events = uploaded_events()
    assert daemon.stop()[0] == 0
    kinds = {e["type"] for e in events}
    assert {"pa.started", "pa.finished"} <= kinds
    amp = [e for e in events if e.get("type") == "relay.switched" and e.get("source") == "pa"]
    assert amp
    assert all(e["relay"] == "amplifier" for e in amp)
    assert not [e for e in events if e.get("type") == "command" and e.get("source") == "pa"]


@pytest.mark.slow
async def test_clip_fetch_is_accepted_then_done_and_an_emergency_does_not_wait(
    broker: Broker,
    config_file: ConfigFile,
    start_daemon: Callable[..., Daemon],
    tmp_path: Path,
) -> None:
    """pa.clip.fetch over MQTT: ``accepted`` at once, then ``done`` with the clip once
    the download and its check end; while the commune's server holds the download, an
    emergency pa.play is done at once. The stored clip then plays."""
    clip = tone_mp3(tmp_path, seconds=1.0)
    gate = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await gate.wait()
        return web.Response(body=clip, content_type="audio/mpeg")

    server = web.Application()
    server.router.add_get("/news.mp3", slow)
    runner = web.AppRunner(server, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    url = f"http://{host}:{port}/news.mp3"

    def start(*args: str, web_port: int) -> Daemon:  # the test's server is on loopback
        env = clean_env(VG_PA__FETCH_ALLOW='["127.0.0.1"]')
        return start_daemon(*args, web_port=web_port, env=env)

    daemon, gateway = daemon_on(broker, config_file, start, f"g-{uuid.uuid4().hex[:6]}")
    try:
        async with subscriber(broker, f"vg/v1/{gateway}/#") as seen:
            await wait_online(broker, gateway)

            def replies() -> list[dict[str, Any]]:
                return [
                    body
                    for topic, body, _ in seen.messages
                    if topic.endswith("/reply") and (body.get("result") or {}).get("name") == "news"
                ]

            sha256 = hashlib.sha256(clip).hexdigest()
            fetch = asyncio.ensure_future(
                asyncio.to_thread(
                    send,
                    broker,
                    "--gateway",
                    gateway,
                    "pa.clip.fetch",
                    "name=news",
                    f"url={url}",
                    f"sha256={sha256}",
                )
            )
            await wait_for(lambda: [r["status"] for r in replies()] == ["accepted"], 15)
            started = time.monotonic()
            done = await asyncio.to_thread(
                send,
                broker,
                "--gateway",
                gateway,
                "pa.play",
                "clip=test-tone",
                "priority=emergency",
            )
            play = json.loads(done.stdout)
            assert play["status"] == "done", play
            assert time.monotonic() - started < 10  # a send is a process: seconds, not the fetch
            assert not fetch.done()
            gate.set()
            finished = await fetch
            reply = json.loads(finished.stdout)
            assert reply["status"] == "done", reply
            assert (reply["result"]["name"], reply["result"]["sha256"]) == ("news", sha256)
            assert "accepted by" in finished.stderr
            assert [r["status"] for r in replies()] == ["accepted", "done"]
            again = await asyncio.to_thread(
                send, broker, "--gateway", gateway, "pa.play", "clip=news"
            )
            assert json.loads(again.stdout)["status"] == "done"
    finally:
        gate.set()
        await runner.cleanup()
    assert daemon.stop()[0] == 0


async def test_amplifier_on_before_warmup_off_after_idle_and_on_sigterm(
    config_file: ConfigFile,
) -> None:
    """The amplifier relay's mock pin goes on at least amp_warmup_s before the first
    sample is handed to the device, off amp_idle_off_s after the last one, on again for
    the next item, and off at once when the daemon is told to stop mid-play."""
    config_file.write(
        {
            'amp_relay = "amplifier"': 'amp_relay = "amplifier"\namp_warmup_s = 0.6\n'
            "amp_idle_off_s = 1.5"
        }
    )
    app = App(load_settings(config_file.path))
    firsts: list[float] = []
    finished: list[float] = []

    def record(event: dict[str, Any]) -> None:
        if event["type"] == "pa.finished":
            finished.append(time.monotonic())

    async with running(app) as _:
        assert app.pa is not None
        assert app.control is not None
        app.pa.player.first_sample = lambda _item, at: firsts.append(at)
        events = app.pa.player._on_event  # listen in alongside the outbox

        def both(event: dict[str, Any]) -> None:
            record(event)
            events(event)

        app.pa.player._on_event = both
        relay = app.control.relays._relays["amplifier"]
        pin, active = relay.device.pin, relay.config.active_high
        assert pin.state is not active  # off at start
        reply = await app.dispatcher.dispatch(
            {"id": "amp-1", "type": "pa.play", "args": {"clip": "chime"}}, "web"
        )
        assert reply.status == "done", reply
        await wait_for(lambda: len(finished) == 1, 15)
        await wait_for(lambda: pin.state is not active, 10)
        ons, offs = _edges(pin, active)
        assert len(ons) == 1
        assert firsts[0] - ons[0] >= 0.6
        assert offs[0] - finished[0] >= 1.5 - 0.1
        # Again, and this time the daemon stops mid-play.
        await app.dispatcher.dispatch(
            {"id": "amp-2", "type": "pa.play", "args": {"clip": "test-tone", "repeat": 5}},
            "web",
        )
        await wait_for(lambda: len(firsts) == 2, 15)
        assert pin.state is active
        stop_at = time.monotonic()
    # running() stopped the app; the amplifier went off within 1 s of the request.
    ons, offs = _edges(pin, active)
    assert len(ons) == 2
    assert offs[-1] - stop_at < 1.0
    assert firsts[1] - ons[1] >= 0.6


def _edges(pin: Any, active: bool) -> tuple[list[float], list[float]]:
    """Monotonic times the relay on the mock pin went on / off (gpiozero keeps deltas)."""
    times, total = [], 0.0
    for state in pin.states[1:]:
        total += state.timestamp
        times.append(total)
    start = pin._last_change - total  # absolute time of the first
    ons = [start + t for t, s in zip(times, pin.states[1:], strict=True) if s.state is active]
    offs = [start + t for t, s in zip(times, pin.states[1:], strict=True) if s.state is not active]
    # The line is first driven to "off" when the bank opens; count offs after an on.
    return ons, [t for t in offs if ons and t > ons[0]]


async def test_master_volume_is_kept_across_restarts(config_file: ConfigFile) -> None:
    """pa.volume survives a restart (state_dir/pa.json): the village head turned it down
    for a reason. A damaged file falls back to pa.volume from the config."""
    config_file.write()
    first = App(load_settings(config_file.path))
    async with running(first):
        reply = await first.dispatcher.dispatch(
            {"id": "vol-1", "type": "pa.volume", "args": {"volume": 35}}, "web"
        )
        assert reply.status == "done", reply
    second = App(load_settings(config_file.path))
    async with running(second):
        assert second.pa is not None
        assert second.pa.snapshot()["volume"] == 35
    (config_file.state_dir / "pa.json").write_text("{not json")
    third = App(load_settings(config_file.path))
    async with running(third):
        assert third.pa is not None
        assert third.pa.snapshot()["volume"] == third.settings.pa.volume
