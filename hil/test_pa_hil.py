"""Hardware-in-the-loop: the PA's test tone played out and recorded back through a wire.

The same tests run on two rigs (see ``hil/README.md``):

* **real**: ``GPIOZERO_PIN_FACTORY`` names a hardware factory and ``VG_HIL_AUDIO_OUT`` /
  ``VG_HIL_AUDIO_IN`` name the USB sound card's playback and capture PCMs (stable ALSA
  names such as ``plughw:CARD=Device,DEV=0``), its line out wired to its line in. The
  tone is recorded through PortAudio while the player plays it. Without the two names
  every test is skipped, with the reason.
* **simulated** (``GPIOZERO_PIN_FACTORY`` unset or ``mock``): the "wire" is an ALSA
  ``file`` PCM (``tests/audio_tap.py``); what was played is read back bit for bit.

Either way the player is the daemon's own (``Output`` + ``Player`` over ``PyAudioSink``)
and the clip is the bundled ``test-tone`` decoded by ``gateway.pa.decode``. The level
check is relative (volume 50 against volume 100) because the analogue gain of a real
wire and card is not known; the frequency check is absolute.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from gateway.pa.amplifier import Amplifier
from gateway.pa.clips import BUNDLED_DIR
from gateway.pa.decode import AudioFormat, open_clip
from gateway.pa.output import DeviceError, Output, PyAudioSink, Report, find_device, volume_gain
from gateway.pa.player import Item, Player
from tests.audio_tap import RATE, Tap, alsa_tap, first_frame, frequency, rms_db
from tests.test_app import wait_for

__all__ = ["alsa_tap"]  # the fixture, used by name

SIMULATED = os.environ.get("GPIOZERO_PIN_FACTORY", "mock").lower() == "mock"
AUDIO_OUT = os.environ.get("VG_HIL_AUDIO_OUT", "")
AUDIO_IN = os.environ.get("VG_HIL_AUDIO_IN", "")
TONE_HZ = 440.0


class Recorder:
    """PortAudio capture from the card's line in, in a thread, while the tone plays."""

    def __init__(self, device: str) -> None:
        self._device = device
        self._chunks: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hil-record", daemon=True)

    def __enter__(self) -> Recorder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def samples(self) -> np.ndarray:
        """What was recorded, shape (frames, 2), int16."""
        data = b"".join(self._chunks)
        return np.frombuffer(data[: len(data) - len(data) % 4], dtype="<i2").reshape(-1, 2)

    def _run(self) -> None:
        import pyaudio  # type: ignore[import-untyped]  # noqa: PLC0415 - only on the rig

        audio = pyaudio.PyAudio()
        try:
            stream = audio.open(
                format=pyaudio.paInt16,
                channels=2,
                rate=RATE,
                input=True,
                input_device_index=_input_index(audio, self._device),
                frames_per_buffer=1024,
            )
            while not self._stop.is_set():
                self._chunks.append(stream.read(1024, exception_on_overflow=False))
            stream.close()
        finally:
            audio.terminate()


def _input_index(audio: Any, name: str) -> int:
    """PortAudio's index of the capture device ``name``, found as the daemon finds its
    output (exact name, or plughw:CARD=x,DEV=n through /proc/asound)."""
    devices = [audio.get_device_info_by_index(i) for i in range(audio.get_device_count())]
    try:
        return find_device(devices, name, direction="input")
    except DeviceError as exc:
        pytest.fail(str(exc))


@pytest.fixture
def loopback(request: pytest.FixtureRequest) -> Iterator[str]:
    """The playback PCM whose output comes back to the test; skips without a rig."""
    if SIMULATED:
        request.getfixturevalue("alsa_tap")
        yield "pa_tap"
        return
    if not (AUDIO_OUT and AUDIO_IN):
        pytest.skip(
            "real pins but no audio rig: set VG_HIL_AUDIO_OUT and VG_HIL_AUDIO_IN to the USB "
            "card's playback and capture PCMs, line out wired to line in (hil/README.md)"
        )
    os.environ.setdefault("PA_ALSA_PLUGHW", "1")
    yield AUDIO_OUT


async def play_test_tone(device: str, volume: int, request: pytest.FixtureRequest) -> np.ndarray:
    """Play the bundled test tone through the daemon's player; what came back."""
    loop = asyncio.get_running_loop()
    events: list[dict[str, Any]] = []
    holder: list[Player] = []

    def report(message: Report) -> None:
        loop.call_soon_threadsafe(holder[0].on_report, message)

    def on_event(event: dict[str, Any]) -> None:
        events.append(event)

    output = Output(
        lambda: PyAudioSink(device, rate=RATE, channels=2, frames_per_buffer=1024),
        rate=RATE,
        channels=2,
        chunk_frames=1024,
        report=report,
        retry_initial_s=0.2,
        retry_cap_s=0.5,
    )
    tone_path = BUNDLED_DIR / "test-tone.wav"
    player = Player(
        output,
        open_source=lambda item: open_clip(tone_path, AudioFormat(rate=RATE, channels=2)),
        open_chime=None,
        on_event=on_event,
        on_change=lambda: None,
        amplifier=Amplifier(None, warmup_s=0, idle_off_s=1),
        volume=100,
    )
    holder.append(player)
    recorder = Recorder(AUDIO_IN) if not SIMULATED else contextlib.nullcontext()
    with recorder:
        output.start()
        try:
            item = Item(
                id=f"hil-{volume}", clip="test-tone", priority="announcement", volume=volume
            )
            assert (await player.play(item))["status"] == "playing"
            await wait_for(lambda: any(e["type"] == "pa.finished" for e in events), 30)
        finally:
            player.abort_all()
            await asyncio.to_thread(output.close, 5.0)
    if isinstance(recorder, Recorder):
        return recorder.samples()
    tap: Tap = request.getfixturevalue("alsa_tap")
    return tap.read()


def steady_part(samples: np.ndarray) -> np.ndarray:
    """One second of the tone, well inside it (past the ramp and the wire's settling)."""
    start = first_frame(samples, TONE_HZ)
    assert start >= 0, "the test tone did not come back: check the wire and the PCM names"
    part = samples[start + RATE // 2 : start + 3 * RATE // 2]
    assert len(part) == RATE, "the tone that came back is shorter than it should be"
    return part


async def test_the_test_tone_comes_back_at_440_hz(
    loopback: str, request: pytest.FixtureRequest
) -> None:
    """The bundled test tone, played through the real output, is recorded at 440 Hz ± 1 %
    and well above the noise floor (so the wire and the card really carry it)."""
    played = await play_test_tone(loopback, 100, request)
    part = steady_part(played)
    assert frequency(part) == pytest.approx(TONE_HZ, rel=0.01)
    assert rms_db(part) > -40.0


async def test_half_volume_comes_back_12_db_quieter(
    loopback: str, request: pytest.FixtureRequest
) -> None:
    """Volume 50 against volume 100 through the same wire: the level differs by the
    player's square law (-12 dB) within 1.5 dB, whatever the card's analogue gain."""
    loud = rms_db(steady_part(await play_test_tone(loopback, 100, request)))
    quiet = rms_db(steady_part(await play_test_tone(loopback, 50, request)))
    expected = 20 * math.log10(volume_gain(50))
    assert quiet - loud == pytest.approx(expected, abs=1.5)
