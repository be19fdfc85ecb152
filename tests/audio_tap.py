"""Real audio out on a machine with no sound card: ALSA ``file`` taps and a PulseAudio sink.

Two PCMs are defined in an ``asoundrc`` that ALSA finds through ``XDG_CONFIG_HOME``
(set for the tests of a module, before PortAudio first initialises; HOME stays alone so
other tools in the session are not disturbed):

- ``pa_tap``: a ``file`` PCM over the ``null`` slave. Bit-exact, but not paced: a write
  returns at once. For sample accuracy (frequency, level), never for timing.
- ``pa_rt``: the same ``file`` PCM over the ``pulse`` slave, into a PulseAudio daemon the
  test starts with a null sink. Writes then run in real time, so frames in the tap are a
  clock: latency is counted in frames between a command and the first new sample.

PortAudio skips PCMs named ``null``, ``file`` or ``tee``, hence the names. Each stream
PortAudio opens truncates the tap file, so a test reads it after its output is closed.
Signals are searched for (Goertzel power in short windows), never matched by length:
PortAudio pads, and fades shape the edges.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
import wave
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

RATE = 48_000
CHANNELS = 2


@dataclass
class Tap:
    """The tap files of one test module."""

    root: Path

    @property
    def raw(self) -> Path:
        """What ``pa_tap`` (unpaced) wrote."""
        return self.root / "tap.raw"

    @property
    def rt_raw(self) -> Path:
        """What ``pa_rt`` (paced by PulseAudio) wrote."""
        return self.root / "rt.raw"

    def frames(self, device: str = "pa_tap") -> int:
        """How many frames the tap holds right now."""
        path = self.raw if device == "pa_tap" else self.rt_raw
        with contextlib.suppress(FileNotFoundError):
            return path.stat().st_size // (2 * CHANNELS)
        return 0

    def read(self, device: str = "pa_tap") -> np.ndarray:
        """The samples, shape (frames, 2), int16."""
        path = self.raw if device == "pa_tap" else self.rt_raw
        data = path.read_bytes()
        usable = len(data) - len(data) % (2 * CHANNELS)
        return np.frombuffer(data[:usable], dtype="<i2").reshape(-1, CHANNELS)


ASOUNDRC = """\
pcm.pa_tap {{
  type file
  slave.pcm "null"
  file "{root}/tap.raw"
  format "raw"
  hint {{ show on description "test tap (unpaced)" }}
}}
pcm.pa_rt {{
  type file
  slave.pcm "pulse"
  file "{root}/rt.raw"
  format "raw"
  hint {{ show on description "test tap paced by PulseAudio" }}
}}
"""


@pytest.fixture(scope="module")
def alsa_tap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tap]:
    """The asoundrc with both taps, visible to PortAudio in this process."""
    root = tmp_path_factory.mktemp("alsa")
    (root / "alsa").mkdir()
    (root / "alsa" / "asoundrc").write_text(ASOUNDRC.format(root=root))
    saved = {key: os.environ.get(key) for key in ("XDG_CONFIG_HOME", "JACK_NO_START_SERVER")}
    os.environ["XDG_CONFIG_HOME"] = str(root)
    os.environ["JACK_NO_START_SERVER"] = "1"
    yield Tap(root)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@dataclass
class Pulse:
    """A PulseAudio daemon with one null sink, its socket in the test's own folder."""

    root: Path
    process: subprocess.Popen[bytes] | None = None
    log: list[str] = field(default_factory=list)

    @property
    def socket(self) -> Path:
        """The native protocol socket clients connect to."""
        return self.root / "pulse" / "native"

    def start(self) -> None:
        """Start it (again) and wait for its socket."""
        binary = shutil.which("pulseaudio")
        if binary is None:
            pytest.skip("pulseaudio is not installed (make test installs it)")
        self.root.mkdir(mode=0o700, exist_ok=True)
        env = {**os.environ, "XDG_RUNTIME_DIR": str(self.root), "HOME": str(self.root)}
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        self.process = subprocess.Popen(
            [
                binary,
                "-n",
                "--daemonize=no",
                "--exit-idle-time=-1",
                "--disallow-module-loading",
                "--log-target=stderr",
                "--log-level=error",
                "-L",
                "module-native-protocol-unix auth-anonymous=1",
                "-L",
                f"module-null-sink sink_name=tap rate={RATE} channels={CHANNELS}",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 15
        while not self.socket.exists():
            if self.process.poll() is not None:
                error = self.process.stderr.read().decode() if self.process.stderr else ""
                pytest.skip(f"pulseaudio cannot run here: {error.strip()[-300:]}")
            if time.monotonic() > deadline:
                self.stop()
                pytest.skip("pulseaudio did not open its socket within 15 s")
            time.sleep(0.05)
        time.sleep(0.2)

    def stop(self) -> None:
        """Kill it: to a client, the sound device vanishes."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None


@pytest.fixture
def pulse(alsa_tap: Tap, tmp_path: Path) -> Iterator[Pulse]:
    """A running PulseAudio for ``pa_rt``; PULSE_SERVER points the ALSA plugin at it."""
    server = Pulse(tmp_path / "xdg")
    saved = os.environ.get("PULSE_SERVER")
    os.environ["PULSE_SERVER"] = f"unix:{server.socket}"
    server.start()
    yield server
    server.stop()
    if saved is None:
        os.environ.pop("PULSE_SERVER", None)
    else:
        os.environ["PULSE_SERVER"] = saved


# ---------------------------------------------------------------------- signals


def tone(freq: float, seconds: float, *, amplitude: float = 0.5, rate: int = RATE) -> np.ndarray:
    """A stereo sine, int16, shape (frames, 2)."""
    t = np.arange(round(seconds * rate)) / rate
    mono = np.rint(np.sin(2 * np.pi * freq * t) * amplitude * 32767).astype("<i2")
    return np.repeat(mono[:, None], CHANNELS, axis=1)


def write_wav(path: Path, samples: np.ndarray, rate: int = RATE) -> Path:
    """A 16-bit WAV of ``samples`` (frames, channels)."""
    with wave.open(str(path), "wb") as out:
        out.setnchannels(samples.shape[1])
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.astype("<i2").tobytes())
    return path


class WavSource:
    """A PcmSource over a 16-bit stereo WAV at the output rate (player tests' stand-in)."""

    def __init__(self, path: Path) -> None:
        self._wav = wave.open(str(path), "rb")  # noqa: SIM115 - closed by close()
        self.closed = False

    def read(self, frames: int) -> bytes:
        """Up to ``frames`` frames; b"" at the end or once closed."""
        if self.closed:
            return b""
        return self._wav.readframes(frames)

    def close(self) -> None:
        """Idempotent."""
        if not self.closed:
            self.closed = True
            self._wav.close()


def frequency(samples: np.ndarray, rate: int = RATE) -> float:
    """The dominant frequency of a steady stretch (FFT peak, parabolic interpolation)."""
    mono = samples[:, 0].astype(np.float64)
    window = np.hanning(len(mono))
    spectrum = np.abs(np.fft.rfft(mono * window))
    peak = int(np.argmax(spectrum[1:])) + 1
    a, b, c = np.log(spectrum[peak - 1 : peak + 2] + 1e-12)
    shift = 0.5 * (a - c) / (a - 2 * b + c)
    return float((peak + shift) * rate / len(mono))


def rms_db(samples: np.ndarray) -> float:
    """RMS level in dB relative to full scale."""
    mono = samples[:, 0].astype(np.float64) / 32768
    return float(20 * np.log10(np.sqrt(np.mean(mono**2)) + 1e-12))


def presence(
    samples: np.ndarray, freq: float, *, window: int = 480, rate: int = RATE
) -> np.ndarray:
    """Per window of ``window`` frames, whether ``freq`` dominates it (Goertzel vs energy)."""
    mono = samples[:, 0].astype(np.float64)
    count = len(mono) // window
    blocks = mono[: count * window].reshape(count, window)
    t = np.arange(window) / rate
    ref = np.exp(-2j * np.pi * freq * t)
    power = np.abs(blocks @ ref) ** 2 * 2 / window
    energy = np.sum(blocks**2, axis=1)
    found: np.ndarray = (energy > window * 100.0) & (power > 0.5 * energy)
    return found


def first_frame(samples: np.ndarray, freq: float, *, after: int = 0, window: int = 480) -> int:
    """The first frame (window resolution) from ``after`` on where ``freq`` is playing; -1."""
    found = np.flatnonzero(presence(samples[after:], freq, window=window))
    return -1 if len(found) == 0 else after + int(found[0]) * window


def frames_of(samples: np.ndarray, freq: float, *, window: int = 480) -> int:
    """How many frames of ``freq`` there are in total (window resolution)."""
    return int(np.count_nonzero(presence(samples, freq, window=window))) * window
