"""PA: start latency, preemption latency and CPU, each against a bare baseline.

Audio goes through real PortAudio into an ALSA ``file`` PCM over a PulseAudio null sink
that this benchmark starts (so writes run in real time, as on a sound card).

- Start latency: ``pa.play`` handed to the player → its first sample handed to the
  device (the write returned), p50/p95, against a bare PyAudio script that opens the
  device and writes the same clip's first buffer.
- Preemption: an emergency ``pa.play`` while a scheduled clip plays → the emergency's
  first sample handed to the device (it includes the 50 ms fade of the old item). This
  one runs on the null backend, paced like a card with a 43 ms buffer: PulseAudio's null
  sink consumes in blocks of up to 2 s, which would measure the harness, not the player.
- CPU while playing a 128 kbit/s MP3, in % of one core, against a bare loop that decodes
  the same file with the same decoder library and writes it to the same device.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import wave
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import p
from gateway.pa.output import NullSink, PyAudioSink, Sink
from gateway.pa.quiet import silence_sound_libraries

RATE = 48_000
FRAMES = 1024
STARTS = 30
PREEMPTS = 10
CPU_S = 8.0

_ASOUNDRC = """\
pcm.bench_rt {{
  type file
  slave.pcm "pulse"
  file "{root}/rt.raw"
  format "raw"
}}
"""


@contextlib.contextmanager
def _paced_device() -> Iterator[str | None]:
    """``bench_rt``: an ALSA file PCM over a PulseAudio null sink; None if impossible."""
    binary = shutil.which("pulseaudio")
    if binary is None:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="bench-pa-") as tmp:
        root = Path(tmp)
        (root / "alsa").mkdir()
        (root / "alsa" / "asoundrc").write_text(_ASOUNDRC.format(root=root))
        runtime = root / "xdg"
        runtime.mkdir(mode=0o700)
        saved = {k: os.environ.get(k) for k in ("XDG_CONFIG_HOME", "PULSE_SERVER")}
        os.environ["XDG_CONFIG_HOME"] = str(root)
        os.environ["JACK_NO_START_SERVER"] = "1"
        os.environ["PULSE_SERVER"] = f"unix:{runtime}/pulse/native"
        server = subprocess.Popen(
            [
                binary,
                "-n",
                "--daemonize=no",
                "--exit-idle-time=-1",
                "--log-level=error",
                "-L",
                "module-native-protocol-unix auth-anonymous=1",
                "-L",
                f"module-null-sink sink_name=bench rate={RATE}",
            ],
            env={**os.environ, "XDG_RUNTIME_DIR": str(runtime), "HOME": str(runtime)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 15
            while not (runtime / "pulse" / "native").exists():
                if server.poll() is not None or time.monotonic() > deadline:
                    yield None
                    return
                time.sleep(0.05)
            time.sleep(0.2)
            yield "bench_rt"
        finally:
            server.kill()
            server.wait()
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def _tone(path: Path, freq: float, seconds: float) -> Path:
    t = np.arange(round(seconds * RATE)) / RATE
    mono = np.rint(np.sin(2 * np.pi * freq * t) * 0.4 * 32767).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(np.repeat(mono[:, None], 2, axis=1).tobytes())
    return path


class _Wav:
    """A PcmSource over a 16-bit stereo WAV at the output rate."""

    def __init__(self, path: Path) -> None:
        self._wav = wave.open(str(path), "rb")  # noqa: SIM115 - closed by close()

    def read(self, frames: int) -> bytes:
        return self._wav.readframes(frames)

    def close(self) -> None:
        self._wav.close()


def _bare_start(device: str, clip: Path) -> list[float]:
    """Open the device, read the clip's first buffer, write it: the baseline."""
    import pyaudio  # type: ignore[import-untyped]  # noqa: PLC0415

    from gateway.pa.output import find_device  # noqa: PLC0415

    pa = pyaudio.PyAudio()
    try:
        devices = [pa.get_device_info_by_index(i) for i in range(pa.get_device_count())]
        index = find_device(devices, device)
        out = []
        for _ in range(STARTS):
            started = time.perf_counter()
            source = _Wav(clip)
            stream = pa.open(
                format=pyaudio.paInt16,
                channels=2,
                rate=RATE,
                output=True,
                output_device_index=index,
                frames_per_buffer=FRAMES,
            )
            stream.write(source.read(FRAMES))
            out.append(time.perf_counter() - started)
            stream.close()
            source.close()
    finally:
        pa.terminate()
    return out


async def _player_figures(
    sink: Callable[[], Sink],
    short: Path,
    long: Path,
    *,
    starts: int = STARTS,
    preempts: int = PREEMPTS,
) -> tuple[list[float], list[float]]:
    """Start latencies and preemption latencies through the real Player and Output."""
    from gateway.pa.amplifier import Amplifier  # noqa: PLC0415
    from gateway.pa.output import Output, Report  # noqa: PLC0415
    from gateway.pa.player import Item, Player  # noqa: PLC0415

    loop = asyncio.get_running_loop()
    firsts: dict[str, float] = {}
    finished: dict[str, asyncio.Event] = {}
    holder: list[Player] = []

    def report(message: Report) -> None:
        loop.call_soon_threadsafe(holder[0].on_report, message)

    def on_event(event: dict[str, Any]) -> None:
        if event["type"] == "pa.finished":
            finished.setdefault(event["item"], asyncio.Event()).set()

    output = Output(sink, rate=RATE, channels=2, chunk_frames=FRAMES, report=report)
    clips = {"short": short, "long": long}
    player = Player(
        output,
        open_source=lambda item: _Wav(clips[item.clip or ""]),
        open_chime=None,
        on_event=on_event,
        on_change=lambda: None,
        amplifier=Amplifier(None, warmup_s=0, idle_off_s=30),
        volume=100,
    )
    player.first_sample = firsts.__setitem__
    holder.append(player)
    output.start()
    try:
        while output.state != "ok":  # noqa: ASYNC110 - a thread's state, no event to await
            await asyncio.sleep(0.05)
        began_at = []
        for n in range(starts):
            item = Item(id=f"s{n}", priority="announcement", clip="short")
            finished[item.id] = asyncio.Event()
            began = time.monotonic()
            await player.play(item)
            await asyncio.wait_for(finished[item.id].wait(), 10)
            began_at.append(firsts[item.id] - began)
        cuts = []
        for n in range(preempts):
            background = Item(id=f"b{n}", priority="scheduled", clip="long", resume=False)
            await player.play(background)
            await asyncio.sleep(0.5)
            urgent = Item(id=f"e{n}", priority="emergency", clip="short")
            finished[urgent.id] = asyncio.Event()
            began = time.monotonic()
            await player.play(urgent)
            await asyncio.wait_for(finished[urgent.id].wait(), 10)
            cuts.append(firsts[urgent.id] - began)
        return began_at, cuts
    finally:
        player.abort_all()
        await asyncio.to_thread(output.close, 5.0)


def _cpu_of(work: Callable[[], None]) -> float:
    """% of one core that ``work`` used (process CPU time over wall time)."""
    cpu, wall = time.process_time(), time.monotonic()
    work()
    return 100 * (time.process_time() - cpu) / (time.monotonic() - wall)


def _cpu_figures(device: str, mp3: Path) -> tuple[float, float] | None:
    """CPU of the player playing the MP3 vs a bare decode-and-write loop."""
    try:
        from gateway.pa.decode import AudioFormat, open_clip  # noqa: PLC0415
    except ImportError:
        return None
    import pyaudio  # noqa: PLC0415

    from gateway.pa.output import find_device  # noqa: PLC0415

    fmt = AudioFormat(rate=RATE, channels=2)

    def bare() -> None:
        pa = pyaudio.PyAudio()
        devices = [pa.get_device_info_by_index(i) for i in range(pa.get_device_count())]
        stream = pa.open(
            format=pyaudio.paInt16,
            channels=2,
            rate=RATE,
            output=True,
            output_device_index=find_device(devices, device),
            frames_per_buffer=FRAMES,
        )
        source = open_clip(mp3, fmt)
        while data := source.read(FRAMES):
            stream.write(data)
        source.close()
        stream.close()
        pa.terminate()

    async def ours() -> None:
        from gateway.pa.amplifier import Amplifier  # noqa: PLC0415
        from gateway.pa.output import Output, PyAudioSink, Report  # noqa: PLC0415
        from gateway.pa.player import Item, Player  # noqa: PLC0415

        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        holder: list[Player] = []

        def report(message: Report) -> None:
            loop.call_soon_threadsafe(holder[0].on_report, message)

        def on_event(event: dict[str, Any]) -> None:
            if event["type"] in ("pa.finished", "pa.failed"):
                done.set()

        output = Output(
            lambda: PyAudioSink(device, rate=RATE, channels=2, frames_per_buffer=FRAMES),
            rate=RATE,
            channels=2,
            chunk_frames=FRAMES,
            report=report,
        )
        player = Player(
            output,
            open_source=lambda item: open_clip(mp3, fmt),
            open_chime=None,
            on_event=on_event,
            on_change=lambda: None,
            amplifier=Amplifier(None, warmup_s=0, idle_off_s=30),
            volume=80,
        )
        holder.append(player)
        output.start()
        await player.play(Item(id="mp3", priority="announcement", clip="mp3"))
        await asyncio.wait_for(done.wait(), CPU_S * 3)
        await asyncio.to_thread(output.close, 5.0)

    baseline = _cpu_of(bare)
    player = _cpu_of(lambda: asyncio.run(ours()))
    return player, baseline


def _mp3(path: Path) -> Path | None:
    """A 128 kbit/s MP3 of music-like content, made with ffmpeg or lame if present."""
    wav = _tone(path.with_suffix(".wav"), 440, CPU_S)
    for tool in (["ffmpeg", "-loglevel", "error", "-y", "-i", str(wav), "-b:a", "128k"],):
        if shutil.which(tool[0]):
            subprocess.run([*tool, str(path)], check=True)
            return path
    with contextlib.suppress(Exception):
        import soundfile  # noqa: PLC0415

        data, rate = soundfile.read(str(wav), dtype="int16")
        soundfile.write(str(path), data, rate, format="MP3", bitrate_mode="CONSTANT")
        return path
    return None


def run() -> list[str]:
    """Measure everything and return the ratio lines."""
    # The bare baselines start PortAudio here too: its ALSA/JACK chatter stays out of
    # the benchmark output, as the daemon keeps it out of the journal.
    silence_sound_libraries()
    with _paced_device() as device, tempfile.TemporaryDirectory() as tmp:
        if device is None:
            return ["pa: skipped (PulseAudio cannot run here)"]
        short = _tone(Path(tmp) / "short.wav", 880, 0.3)
        long = _tone(Path(tmp) / "long.wav", 440, 3.0)
        bare = _bare_start(device, short)
        paced = lambda: PyAudioSink(device, rate=RATE, channels=2, frames_per_buffer=FRAMES)  # noqa: E731
        starts, _ = asyncio.run(_player_figures(paced, short, long, preempts=0))
        null = lambda: NullSink(rate=RATE, channels=2, lead_s=2 * FRAMES / RATE)  # noqa: E731
        _, cuts = asyncio.run(_player_figures(null, short, long, starts=0))
        lines = [
            f"pa start latency: p50 {statistics.median(starts) * 1000:.1f} ms, "
            f"p95 {p(starts, 95) * 1000:.1f} ms vs bare PyAudio open+write "
            f"p50 {statistics.median(bare) * 1000:.1f} ms, p95 {p(bare, 95) * 1000:.1f} ms "
            f"(ratio {statistics.median(starts) / statistics.median(bare):.2f}x)",
            f"pa preemption latency: p50 {statistics.median(cuts) * 1000:.1f} ms, "
            f"max {max(cuts) * 1000:.1f} ms (limit 300 ms; "
            f"{statistics.median(cuts) / statistics.median(bare):.1f}x the bare start)",
        ]
        mp3 = _mp3(Path(tmp) / "clip.mp3")
        figures = _cpu_figures(device, mp3) if mp3 is not None else None
        if figures is None:
            lines.append("pa cpu: skipped (no decoder or no MP3 encoder here)")
        else:
            ours, baseline = figures
            lines.append(
                f"pa cpu playing a 128 kbit/s MP3: {ours:.1f} % of one core vs bare "
                f"decode+write {baseline:.1f} % (ratio {ours / max(baseline, 0.01):.2f}x)"
            )
        return lines


if __name__ == "__main__":
    for line in run():
        print(line)
