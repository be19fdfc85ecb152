"""The PA player through real PortAudio into ALSA file taps.

Sample accuracy on the unpaced ``pa_tap``; preemption, chime and resume timing on
``pa_rt``, paced in real time by a PulseAudio null sink the test starts. Clips are WAVs
the tests synthesise; the tests read back the samples that were played.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.commands import CommandError
from gateway.pa.amplifier import Amplifier
from gateway.pa.decode import DecodeError
from gateway.pa.output import NullSink, Output, PyAudioSink, Report, Sink, volume_gain
from gateway.pa.player import Amp, Item, Player, QuietHours, Source
from tests.audio_tap import (
    RATE,
    Pulse,
    Tap,
    WavSource,
    alsa_tap,
    first_frame,
    frames_of,
    frequency,
    presence,
    pulse,
    rms_db,
    tone,
    write_wav,
)
from tests.test_app import wait_for

__all__ = ["alsa_tap", "pulse"]  # fixtures used by name


@dataclass
class Rig:
    """A player on one output, recording its events."""

    player: Player
    output: Output
    clips: dict[str, Path]
    events: list[dict[str, Any]] = field(default_factory=list)

    def kinds(self) -> list[str]:
        """The event types so far, in order."""
        return [e["type"] for e in self.events]

    def item(self, **args: Any) -> Item:
        """An Item with a fresh id."""
        return Item(id=f"t{len(self.events)}-{args.get('clip')}-{id(args)}", **args)


@asynccontextmanager
async def rig(
    tmp_path: Path,
    sink: Callable[[], Sink],
    *,
    clips: dict[str, np.ndarray] | None = None,
    chime: np.ndarray | None = None,
    files: dict[str, Path] | None = None,
    opener: Callable[[Path], Source] = WavSource,
    amplifier: Amp | None = None,
    **options: Any,
) -> AsyncIterator[Rig]:
    """Build output + player over ``sink`` with WAV clips (or ``files`` read by
    ``opener``); close the device at the end."""
    loop = asyncio.get_running_loop()
    paths = {name: write_wav(tmp_path / f"{name}.wav", s) for name, s in (clips or {}).items()}
    paths.update(files or {})
    chime_path = write_wav(tmp_path / "chime.wav", chime) if chime is not None else None
    holder: list[Player] = []

    def report(message: Report) -> None:
        loop.call_soon_threadsafe(holder[0].on_report, message)

    output = Output(
        sink,
        rate=RATE,
        channels=2,
        chunk_frames=1024,
        report=report,
        retry_initial_s=0.2,
        retry_cap_s=0.5,
    )
    events: list[dict[str, Any]] = []

    def open_chime() -> Source:
        assert chime_path is not None
        return WavSource(chime_path)

    player = Player(
        output,
        open_source=lambda item: opener(paths[item.clip or ""]),
        open_chime=open_chime if chime_path is not None else None,
        on_event=events.append,
        on_change=lambda: None,
        amplifier=amplifier or Amplifier(None, warmup_s=0, idle_off_s=1),
        **options,
    )
    holder.append(player)
    output.start()
    the_rig = Rig(player, output, paths, events)
    try:
        yield the_rig
    finally:
        player.abort_all()
        await asyncio.to_thread(output.close, 5.0)


def tap_sink(name: str) -> Callable[[], Sink]:
    """PortAudio on the named ALSA PCM, as the daemon opens it."""
    return lambda: PyAudioSink(name, rate=RATE, channels=2, frames_per_buffer=1024)


def null_sink() -> Sink:
    """The null backend (real-time pacing, samples discarded)."""
    return NullSink(rate=RATE, channels=2)


async def finished(r: Rig, count: int, within_s: float = 20.0) -> None:
    """Wait for ``count`` pa.finished events."""
    await wait_for(lambda: r.kinds().count("pa.finished") >= count, within_s)


@pytest.mark.parametrize(("item_volume", "master"), [(100, 100), (70, 100), (100, 50)])
async def test_tone_comes_out_at_440_hz_and_the_commanded_volume(
    alsa_tap: Tap, tmp_path: Path, item_volume: int, master: int
) -> None:
    """A 440 Hz WAV played through PortAudio into the file tap comes out at 440 Hz ± 1 %
    and at the commanded volume ± 1 dB (item volume x master volume, square law)."""
    source = tone(440, 1.0)
    async with rig(tmp_path, tap_sink("pa_tap"), clips={"a": source}, volume=master) as r:
        reply = await r.player.play(r.item(clip="a", priority="announcement", volume=item_volume))
        assert reply["status"] == "playing"
        await finished(r, 1)
    played = alsa_tap.read()
    start = first_frame(played, 440)
    assert start >= 0, "no 440 Hz in the tap"
    steady = played[start + RATE // 4 : start + 3 * RATE // 4]
    assert frequency(steady) == pytest.approx(440, rel=0.01)
    wanted = rms_db(tone(440, 0.5)) + 20 * math.log10(
        volume_gain(item_volume) * volume_gain(master)
    )
    assert rms_db(steady) == pytest.approx(wanted, abs=1.0)
    if item_volume == master == 100:
        # 0 dB after the short ramp in: the very samples of the clip, bit for bit.
        window = source[RATE // 4 : RATE // 4 + 256]
        candidates = np.flatnonzero(played[:, 0] == window[0, 0])
        assert any(np.array_equal(played[c : c + 256], window) for c in candidates)


@pytest.mark.parametrize("kind", ["WAV", "MP3", "OGG", "FLAC"])
async def test_each_format_comes_out_at_440_hz_and_the_commanded_volume(
    alsa_tap: Tap, tmp_path: Path, kind: str
) -> None:
    """The same 440 Hz tone written as WAV, MP3, OGG Vorbis and FLAC (by the decoder
    library itself), decoded by the player's real decoder and played at volume 70, comes
    out of the file tap at 440 Hz ± 1 % and -6.2 dB ± 1 dB from the clip's own level."""
    soundfile = pytest.importorskip("soundfile")
    from gateway.pa.decode import AudioFormat, open_clip  # noqa: PLC0415

    source = tone(440, 1.5)
    path = tmp_path / f"tone.{kind.lower()}"
    soundfile.write(str(path), source, RATE, format=kind)
    fmt = AudioFormat(rate=RATE, channels=2)
    async with rig(
        tmp_path,
        tap_sink("pa_tap"),
        files={"tone": path},
        opener=lambda clip: open_clip(clip, fmt),
        volume=100,
    ) as r:
        await r.player.play(r.item(clip="tone", priority="announcement", volume=70))
        await finished(r, 1)
    assert "pa.failed" not in r.kinds()
    played = alsa_tap.read()
    start = first_frame(played, 440)
    assert start >= 0, f"no 440 Hz from the {kind} clip"
    steady = played[start + RATE // 4 : start + 5 * RATE // 4]
    assert frequency(steady) == pytest.approx(440, rel=0.01)
    # Lossy encoders change the level a little: the reference is the file as decoded.
    clip, _ = soundfile.read(str(path), dtype="int16", always_2d=True)
    wanted = rms_db(clip[RATE // 4 : 5 * RATE // 4]) + 20 * math.log10(volume_gain(70))
    assert rms_db(steady) == pytest.approx(wanted, abs=1.0)


async def test_emergency_cuts_in_within_300_ms_after_the_chime_and_the_clip_resumes(
    alsa_tap: Tap, pulse: Pulse, tmp_path: Path
) -> None:
    """On the real-time tap: a scheduled 440 Hz clip plays; an emergency (880 Hz) with a
    chime (660 Hz) arrives. The chime starts within 300 ms of tap frames after the command,
    the emergency follows it, and the scheduled clip then resumes where it was cut, so in
    total about its full length of 440 Hz comes out."""
    clips = {"news": tone(440, 3.0), "storm": tone(880, 1.0)}
    async with rig(tmp_path, tap_sink("pa_rt"), clips=clips, chime=tone(660, 0.3)) as r:
        await wait_for(lambda: r.output.state == "ok", 10)
        await r.player.play(r.item(clip="news", priority="scheduled"))
        await wait_for(lambda: "pa.started" in r.kinds(), 10)
        await wait_for(lambda: alsa_tap.frames("pa_rt") > RATE, 10)
        at_command = alsa_tap.frames("pa_rt")
        reply = await r.player.play(r.item(clip="storm", priority="emergency", chime=True))
        assert reply["status"] == "playing"
        await finished(r, 2, within_s=30)
    kinds = r.kinds()
    assert kinds.count("pa.started") == 3  # news, storm, news resumed
    preempted = next(e for e in r.events if e["type"] == "pa.preempted")
    assert preempted["clip"] == "news"
    assert preempted["then"] == "resume"
    resumed = [e for e in r.events if e["type"] == "pa.started"][-1]
    assert resumed["clip"] == "news"
    assert resumed["resumed"] is True
    played = alsa_tap.read("pa_rt")
    chime_at = first_frame(played, 660, after=at_command)
    assert chime_at >= 0, "no chime in the tap"
    assert chime_at - at_command < 0.3 * RATE, (
        f"cut in after {(chime_at - at_command) / RATE:.3f} s"
    )
    storm_at = first_frame(played, 880, after=at_command)
    assert storm_at > chime_at + 0.25 * RATE  # the whole chime first
    news_again = first_frame(played, 440, after=storm_at)
    assert news_again > storm_at + 0.9 * RATE  # after the whole emergency
    # Resumed, not restarted: about 3 s of 440 Hz in all (the fade and one chunk differ).
    assert frames_of(played, 440) == pytest.approx(3.0 * RATE, abs=0.25 * RATE)


async def test_interrupted_item_without_resume_is_dropped(
    alsa_tap: Tap, pulse: Pulse, tmp_path: Path
) -> None:
    """``resume: false``: cut off by a live item, the background clip is gone for good,
    with a pa.preempted event that says so."""
    clips = {"music": tone(440, 3.0), "live": tone(880, 0.5)}
    async with rig(tmp_path, tap_sink("pa_rt"), clips=clips) as r:
        await wait_for(lambda: r.output.state == "ok", 10)
        await r.player.play(r.item(clip="music", priority="background", resume=False))
        await wait_for(lambda: alsa_tap.frames("pa_rt") > RATE // 2, 10)
        await r.player.play(r.item(clip="live", priority="live"))
        await finished(r, 1)
        await asyncio.sleep(0.5)
        assert r.player.snapshot()["playing"] is None
        assert r.player.snapshot()["queue"] == []
    preempted = next(e for e in r.events if e["type"] == "pa.preempted")
    assert (preempted["clip"], preempted["then"]) == ("music", "drop")
    played = alsa_tap.read("pa_rt")
    live_at = first_frame(played, 880)
    assert live_at > 0
    assert first_frame(played, 440, after=live_at) == -1
    assert frames_of(played, 440) < 2.0 * RATE


async def test_same_priority_plays_in_order_and_repeat_repeats(tmp_path: Path) -> None:
    """Two announcements play one after the other in arrival order; repeat=3 plays the
    clip three times (on the null backend, which paces like a device)."""
    clips = {"a": tone(440, 0.2), "b": tone(550, 0.2)}
    async with rig(tmp_path, null_sink, clips=clips) as r:
        first = await r.player.play(r.item(clip="a", priority="announcement", repeat=3))
        second = await r.player.play(r.item(clip="b", priority="announcement"))
        assert (first["status"], second["status"]) == ("playing", "queued")
        assert r.player.snapshot()["queue"][0]["clip"] == "b"
        await finished(r, 2)
        started = [e["clip"] for e in r.events if e["type"] == "pa.started"]
        assert started == ["a", "b"]


async def test_queue_is_bounded_and_says_so(tmp_path: Path) -> None:
    """1,000 pa.play at once: one plays, queue_max wait, every other one is refused with
    ``queue_full``; an emergency still gets in by evicting the newest lowest item."""
    async with rig(tmp_path, null_sink, clips={"a": tone(440, 5.0)}, queue_max=50) as r:
        outcomes: dict[str, int] = {}
        refusals: set[tuple[str, bool]] = set()
        for _ in range(1000):
            try:
                reply = await r.player.play(r.item(clip="a", priority="background"))
            except CommandError as exc:
                refusals.add((exc.key, "pa.queue_max" in str(exc)))
                outcomes["queue_full"] = outcomes.get("queue_full", 0) + 1
            else:
                outcomes[reply["status"]] = outcomes.get(reply["status"], 0) + 1
        assert refusals == {("queue_full", True)}
        assert outcomes == {"playing": 1, "queued": 50, "queue_full": 949}
        reply = await r.player.play(r.item(clip="a", priority="emergency"))
        assert reply["status"] == "playing"
        assert len(r.player.snapshot()["queue"]) == 50 + 1 - 1  # preempted one back, one evicted
        await asyncio.sleep(0.1)  # events are appended by tasks
        evicted = [e for e in r.events if e.get("reason") == "evicted"]
        assert len(evicted) == 1


async def test_quiet_hours_skip_scheduled_but_not_announcements(tmp_path: Path) -> None:
    """At 23:00 with quiet hours 22:00-05:30: a scheduled item is skipped with an event
    giving the reason; an announcement plays."""
    clips = {"a": tone(440, 0.2)}
    night = datetime(2026, 11, 28, 23, 0)
    async with rig(
        tmp_path,
        null_sink,
        clips=clips,
        quiet_hours=QuietHours(["22:00-05:30"]),
        now=lambda: night,
    ) as r:
        skipped = await r.player.play(r.item(clip="a", priority="scheduled"))
        assert skipped["status"] == "skipped"
        assert skipped["reason"] == "quiet_hours"
        played = await r.player.play(r.item(clip="a", priority="announcement"))
        assert played["status"] == "playing"
        await finished(r, 1)
    failed = [e for e in r.events if e["type"] == "pa.failed"]
    assert [(e["priority"], e["reason"]) for e in failed] == [("scheduled", "quiet_hours")]


def test_quiet_hours_spans() -> None:
    """Spans may cross midnight; the end is excluded; bad spans are refused."""
    quiet = QuietHours(["22:00-05:30", "12:00-13:00"])
    at = datetime(2026, 1, 1)
    assert quiet.contains(at.replace(hour=23).time())
    assert quiet.contains(at.replace(hour=3).time())
    assert not quiet.contains(at.replace(hour=5, minute=30).time())
    assert quiet.contains(at.replace(hour=12, minute=30).time())
    assert not quiet.contains(at.replace(hour=18).time())
    with pytest.raises(ValueError, match="HH:MM"):
        QuietHours(["25:00-01:00"])


async def test_master_volume_ramps_without_a_click(
    alsa_tap: Tap, pulse: Pulse, tmp_path: Path
) -> None:
    """The master volume going from 100 to 25 mid-clip changes the level smoothly: no
    sample-to-sample jump larger than the tone itself makes, and the new level holds."""
    async with rig(tmp_path, tap_sink("pa_rt"), clips={"a": tone(440, 2.0)}, volume=100) as r:
        await wait_for(lambda: r.output.state == "ok", 10)
        await r.player.play(r.item(clip="a", priority="announcement"))
        await wait_for(lambda: alsa_tap.frames("pa_rt") > RATE // 2, 10)
        r.player.set_volume(50)
        await finished(r, 1)
    played = alsa_tap.read("pa_rt")
    start = first_frame(played, 440)
    mono = played[start:, 0].astype(np.int32)
    biggest_step = int(np.max(np.abs(np.diff(mono))))
    natural = 2 * math.pi * 440 / RATE * 0.5 * 32767  # steepest slope of the tone itself
    assert biggest_step <= natural * 1.05
    tail = played[start + 3 * RATE // 2 : start + 7 * RATE // 4]
    assert presence(tail, 440).all()
    assert rms_db(tail) == pytest.approx(rms_db(tone(440, 0.5)) + 40 * math.log10(0.5), abs=1.0)


class RecordingAmp:
    """The player's amplifier interface (``player.Amp``), recording what it is told."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self._on = False

    def ready(self) -> bool:
        return self._on

    async def acquire(self) -> None:
        self.calls.append("on")
        self._on = True

    def release(self) -> None:
        self.calls.append("release")

    async def off_now(self, reason: str) -> None:
        self.calls.append(f"off:{reason}")
        self._on = False

    @property
    def on(self) -> bool:
        return self._on


class GoesBadMidway(WavSource):
    """A clip whose data turns undecodable 0.3 s in (a corrupt frame on the SD card)."""

    def __init__(self, path: Path, *, bad: bool) -> None:
        super().__init__(path)
        self.bad = bad
        self.frames_read = 0

    def read(self, frames: int) -> bytes:
        self.frames_read += frames
        if self.bad and self.frames_read > 0.3 * RATE:
            raise DecodeError("bad_audio", "corrupt frame 0.3 s in")
        return super().read(frames)


async def test_a_decode_error_mid_play_switches_the_amplifier_off_at_once(
    tmp_path: Path,
) -> None:
    """A clip that stops decoding mid-play fails with pa.failed (reason bad_audio), the
    amplifier is told to go off at once (not after the idle time), and the next item in
    the queue still plays."""
    amp = RecordingAmp()

    def opener(path: Path) -> Source:
        return GoesBadMidway(path, bad=path.stem == "bad")

    clips = {"bad": tone(440, 2.0), "good": tone(660, 0.5)}
    async with rig(tmp_path, null_sink, clips=clips, opener=opener, amplifier=amp) as r:
        await r.player.play(r.item(clip="bad", priority="announcement"))
        await r.player.play(r.item(clip="good", priority="announcement"))
        await wait_for(lambda: "pa.failed" in r.kinds(), 10)
        failed = next(e for e in r.events if e["type"] == "pa.failed")
        assert (failed["clip"], failed["reason"]) == ("bad", "bad_audio")
        await wait_for(lambda: "off:bad_audio" in amp.calls, 2)
        await finished(r, 1)
        finished_clips = [e["clip"] for e in r.events if e["type"] == "pa.finished"]
        assert finished_clips == ["good"]
