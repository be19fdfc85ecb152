"""The output device: chosen by ALSA name, missing at start, vanishing mid-play, returning.

"The device" here is ``pa_rt``, an ALSA file PCM over PulseAudio: with the PulseAudio
daemon down, PortAudio cannot open it (missing); killing the daemon mid-play is what a
USB card pulled out looks like to the player (writes fail); starting it again brings
the device back.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from gateway.pa.output import DeviceError, PyAudioSink, find_device
from tests.audio_tap import RATE, Pulse, Tap, alsa_tap, first_frame, pulse, tone
from tests.test_app import wait_for
from tests.test_pa_player import rig

__all__ = ["alsa_tap", "pulse"]  # fixtures used by name


def devices(*names: str) -> list[dict[str, Any]]:
    """PortAudio's device list as PyAudio gives it."""
    return [
        {"index": i, "name": name, "maxOutputChannels": 0 if name.startswith("in:") else 2}
        for i, name in enumerate(names)
    ]


def test_device_is_found_by_alsa_name_never_by_index(tmp_path: Path) -> None:
    """Names PortAudio lists match exactly; ``plughw:CARD=<id>,DEV=<n>`` is resolved
    through /proc/asound/<id> to this boot's card number; anything else is a clear
    ``device_missing`` naming what there is (input-only devices are not offered)."""
    proc = tmp_path / "asound"
    proc.mkdir()
    (proc / "card2").mkdir()
    (proc / "Device").symlink_to("card2")
    listed = devices(
        "in:mic", "bcm2835 Headphones: - (hw:0,0)", "USB Audio Device: - (hw:2,0)", "pa_out"
    )
    assert find_device(listed, "pa_out", proc) == 3
    assert find_device(listed, "plughw:CARD=Device,DEV=0", proc) == 2
    assert find_device(listed, "hw:CARD=Device,DEV=0", proc) == 2
    with pytest.raises(DeviceError, match="no output device 'plughw:CARD=Gone,DEV=0'") as info:
        find_device(listed, "plughw:CARD=Gone,DEV=0", proc)
    assert info.value.key == "device_missing"
    assert "pa_out" in str(info.value)
    assert "in:mic" not in str(info.value)
    with pytest.raises(DeviceError):
        find_device(listed, "2", proc)  # an index is not a name
    # The HIL recorder looks up its capture device the same way.
    captures = [{**d, "maxInputChannels": 2 if d["name"] == "in:mic" else 0} for d in listed]
    assert find_device(captures, "in:mic", proc, direction="input") == 0
    with pytest.raises(DeviceError, match="no input device 'pa_out'"):
        find_device(captures, "pa_out", proc, direction="input")


def test_missing_device_opens_with_a_clear_error(alsa_tap: Tap) -> None:
    """PortAudio really opened: an unknown name fails with device_missing."""
    sink = PyAudioSink("no_such_pcm", rate=RATE, channels=2, frames_per_buffer=1024)
    with pytest.raises(DeviceError) as info:
        sink.open()
    assert info.value.key == "device_missing"
    assert "pa_tap" in str(info.value)
    sink.close()


async def test_device_missing_at_start_degrades_then_recovers(
    alsa_tap: Tap, pulse: Pulse, tmp_path: Path
) -> None:
    """Started with no sound server: ``degraded`` with the reason, retries; the queued
    item waits; once the device is there the state is ``ok`` and the item plays."""
    pulse.stop()
    clips = {"a": tone(440, 0.5)}
    sink = lambda: PyAudioSink("pa_rt", rate=RATE, channels=2, frames_per_buffer=1024)  # noqa: E731
    async with rig(tmp_path, sink, clips=clips) as r:
        await wait_for(lambda: r.output.state == "degraded", 15)
        assert "pa_rt" in (r.output.reason or "")
        reply = await r.player.play(r.item(clip="a", priority="announcement"))
        assert reply["status"] == "queued"
        await asyncio.sleep(0.5)
        assert "pa.started" not in r.kinds()
        pulse.start()
        await wait_for(lambda: r.output.state == "ok", 20)
        await wait_for(lambda: "pa.finished" in r.kinds(), 20)
    assert first_frame(alsa_tap.read("pa_rt"), 440) >= 0


async def test_device_vanishing_mid_play_degrades_retries_and_recovers(
    alsa_tap: Tap, pulse: Pulse, tmp_path: Path
) -> None:
    """The sound server dies mid-clip: ``degraded``, a pa.failed event with reason
    device_lost (the item kept to resume), the queue waits; when the server is back the
    device is ``ok`` again and the item plays to its end."""
    clips = {"a": tone(440, 4.0)}
    sink = lambda: PyAudioSink("pa_rt", rate=RATE, channels=2, frames_per_buffer=1024)  # noqa: E731
    async with rig(tmp_path, sink, clips=clips) as r:
        await wait_for(lambda: r.output.state == "ok", 15)
        await r.player.play(r.item(clip="a", priority="scheduled"))
        await wait_for(lambda: alsa_tap.frames("pa_rt") > RATE, 15)
        pulse.stop()
        await wait_for(lambda: r.output.state == "degraded", 15)
        # The event is handed to its sink by a task of its own, a moment after the state.
        await wait_for(lambda: any(e["type"] == "pa.failed" for e in r.events), 15)
        lost = next(e for e in r.events if e["type"] == "pa.failed")
        assert (lost["reason"], lost["then"]) == ("device_lost", "resume")
        assert r.player.snapshot()["playing"] is None
        assert r.player.snapshot()["queue"][0]["clip"] == "a"
        pulse.start()
        await wait_for(lambda: r.output.state == "ok", 30)
        await wait_for(lambda: "pa.finished" in r.kinds(), 30)
    started = [e for e in r.events if e["type"] == "pa.started"]
    assert [e["resumed"] for e in started] == [False, True]
