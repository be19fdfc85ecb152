"""Synthesise the PA's bundled sounds into gateway/pa/sounds/ (48 kHz mono 16-bit WAV).

Run ``python audio/make_sounds.py`` after changing a sound; the WAVs are committed so the
Pi needs nothing but the package. Both sounds are made here from sine waves, so the
project owns them outright.

- ``chime.wav``: a three-note "ding-dong-ding" (E5, C5, G5 — a major triad, friendly
  rather than alarming) with a soft attack and a bell-like exponential decay, played
  before announcements so listeners turn their heads.
- ``test-tone.wav``: 440 Hz at -6 dBFS for 3 s with 10 ms fades, for checking wiring,
  level and frequency (hil/ records it back and measures both).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soundfile as sf

RATE = 48_000
OUT = Path(__file__).resolve().parent.parent / "gateway" / "pa" / "sounds"
TEST_TONE_HZ = 440.0
TEST_TONE_DBFS = -6.0

Wave = npt.NDArray[np.float64]


def _times(seconds: float) -> Wave:
    return np.arange(int(seconds * RATE)) / RATE


def _bell(freq: float, seconds: float) -> Wave:
    """One struck note: fundamental plus two soft overtones, 5 ms attack, decaying."""
    t = _times(seconds)
    tone = (
        np.sin(2 * np.pi * freq * t)
        + 0.35 * np.sin(2 * np.pi * 2 * freq * t)
        + 0.12 * np.sin(2 * np.pi * 3 * freq * t)
    )
    attack = np.minimum(1.0, t / 0.005)
    decay = np.exp(-t * 3.2)
    out: Wave = tone * attack * decay
    return out


def chime() -> Wave:
    """Three notes, each starting 0.45 s after the last, ringing into each other."""
    notes = (659.25, 523.25, 783.99)  # E5, C5, G5
    step, ring = 0.45, 1.6
    total = np.zeros(int((step * (len(notes) - 1) + ring) * RATE))
    for index, freq in enumerate(notes):
        start = int(index * step * RATE)
        note = _bell(freq, ring)
        total[start : start + len(note)] += note
    fade = np.minimum(1.0, (len(total) - np.arange(len(total))) / (0.05 * RATE))
    total *= fade  # end at exactly zero: no click
    peak = float(np.max(np.abs(total)))
    out: Wave = total / peak * 10 ** (-3 / 20)  # peak at -3 dBFS
    return out


def test_tone() -> Wave:
    """A steady sine whose frequency and level a recording can be checked against."""
    t = _times(3.0)
    ramp = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.01)
    out: Wave = 10 ** (TEST_TONE_DBFS / 20) * np.sin(2 * np.pi * TEST_TONE_HZ * t) * ramp
    return out


def main() -> int:
    """Write both WAVs; prints what it wrote."""
    OUT.mkdir(parents=True, exist_ok=True)
    for name, wave in (("chime", chime()), ("test-tone", test_tone())):
        path = OUT / f"{name}.wav"
        sf.write(str(path), wave, RATE, subtype="PCM_16")
        print(f"{path}: {len(wave) / RATE:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
