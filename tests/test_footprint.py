"""The daemon starts light and quiet: no audio decoder libraries before the first decode,
no ALSA or JACK chatter in the journal, one clear line for a missing sound card.

How light and how fast is measured by ``make bench`` (bench/bench_footprint.py); these
tests keep the lazy imports lazy and the journal clean.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.telemetry import CpuMeter, memory_use
from tests.conftest import ConfigFile, Daemon, clean_env, free_port

pytestmark = pytest.mark.slow

HEAVY = ("numpy", "soundfile", "pyaudio", "segno")
"""Loaded by the first decode (numpy, soundfile), a real sound card (pyaudio) or the
notice-board sheet (segno) only."""
LAZY = ("gateway.backup", "tarfile", "gateway.configwords", "difflib", "psutil")
"""Loaded only by the paths that need them: the archive code (tarfile) by ``backup``/``restore`` and
the web download, the plain-words configuration errors (and difflib's "did you mean") by
a configuration that fails validation. psutil is not used by the daemon at all (telemetry
reads /proc)."""


def test_importing_the_daemon_loads_no_audio_library() -> None:
    """What ``village-gateway run`` imports before it reads its config leaves numpy,
    soundfile, PyAudio and segno out (each a few MB of a Pi Zero's memory), and the
    modules only other commands or rare paths need."""
    code = (
        "import sys\n"
        "import gateway.cli, gateway.daemon.app, gateway.logupload, gateway.web.live\n"
        f"print([name for name in {HEAVY + LAZY!r} if name in sys.modules])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=clean_env()
    )
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def test_the_running_demo_has_no_decoder_mapped(start_daemon: Callable[..., Daemon]) -> None:
    """The demo, up and serving, has not loaded numpy or libsndfile: nothing decoded yet."""
    port = free_port()
    daemon = start_daemon(
        "--demo", web_port=port, env=clean_env(VG_WEB__PORT=str(port), VG_MQTT__PORT="1")
    )
    daemon.wait_healthy()
    maps = Path(f"/proc/{daemon.process.pid}/maps").read_text()
    daemon.stop()
    assert "numpy" not in maps
    assert "libsndfile" not in maps
    assert "portaudio" not in maps


_SERVING_DEMO = """\
import json, os, signal, sys, threading, time, urllib.request
from gateway.cli import main

def report() -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as answer:
                if answer.status == 200:
                    break
        except OSError:
            time.sleep(0.05)
    loaded = [name for name in NAMES if name in sys.modules]
    print("LOADED " + json.dumps(loaded), flush=True)
    os.kill(os.getpid(), signal.SIGTERM)

port = os.environ["VG_WEB__PORT"]
threading.Thread(target=report, daemon=True).start()
sys.exit(main(["run", "--demo"]))
"""


def test_the_serving_demo_has_not_loaded_the_lazy_modules() -> None:
    """Up and serving (its start-up done, /healthz answering), the demo has still not
    imported what only other commands or rare paths need: nobody re-added it eagerly."""
    port = free_port()
    code = _SERVING_DEMO.replace("NAMES", repr(HEAVY + LAZY))
    result = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(VG_WEB__PORT=str(port), VG_MQTT__PORT="1"),
    )
    reports = [line for line in result.stdout.splitlines() if line.startswith("LOADED ")]
    assert reports == ["LOADED []"], result.stdout + result.stderr
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_missing_card_is_one_line_and_no_alsa_or_jack_chatter(
    config_file: ConfigFile, start_daemon: Callable[..., Daemon]
) -> None:
    """PortAudio's device enumeration makes ALSA and JACK print dozens of lines on a
    machine without that card; none of them reach stdout/stderr (the journal), and the
    missing card is one warning that names it."""
    config_file.write(
        {'backend = "null"': 'backend = "pyaudio"\ndevice = "hw:CARD=NoSuchCard,DEV=0"'}
    )
    daemon = start_daemon("--config", str(config_file.path), web_port=config_file.web_port)
    daemon.wait_healthy()
    deadline = time.monotonic() + 15
    while "pa.device_missing" not in daemon.output():
        assert time.monotonic() < deadline, daemon.output()
        time.sleep(0.05)
    status, _ = daemon.get("/healthz")
    assert status == 200  # a missing card degrades the PA only
    code, _ = daemon.stop()
    assert code == 0, daemon.output()
    output = daemon.output()
    lines = [line for line in output.splitlines() if line.strip()]
    chatter = [ln for ln in lines if "ALSA" in ln or "jack" in ln.lower() or "Jack" in ln]
    assert chatter == [], output
    assert not [ln for ln in lines if not ln.startswith("{")], output
    about_card = [line for line in daemon.log_lines() if "NoSuchCard" in str(line)]
    assert len(about_card) == 1, about_card
    (missing,) = about_card
    assert missing["event"] == "pa.device_missing"
    assert missing["level"] == "warning"
    assert "no output device 'hw:CARD=NoSuchCard,DEV=0'" in missing["reason"]


_STAT = "cpu  {} 0 {} {} {} 0 0 0 {} 0\ncpu0 1 2 3 4 5 6 7 8 9 10\nintr 1 2 3\n"
"""A /proc/stat: user nice system idle iowait irq softirq steal guest guest_nice."""


def test_telemetry_cpu_is_busy_time_over_all_time_between_readings(tmp_path: Path) -> None:
    """The telemetry's CPU figure (once psutil's, now read from /proc/stat): between two
    readings 300 ticks of user+system out of 1,000, iowait counted as not busy, guest time
    (already inside user) not counted twice; no time passed or a counter that went back
    gives 0.0, never a negative or a crash."""
    stat = tmp_path / "stat"
    stat.write_text(_STAT.format(1000, 500, 8000, 100, 50))
    meter = CpuMeter(stat)
    # +250 user (+50 of it guest) +50 system, +600 idle, +100 iowait: busy 300 of 1,000.
    stat.write_text(_STAT.format(1250, 550, 8600, 200, 100))
    assert meter.percent() == 30.0
    assert meter.percent() == 0.0  # nothing happened since
    stat.write_text(_STAT.format(1000, 500, 8000, 100, 50))
    assert meter.percent() == 0.0


def test_telemetry_memory_counts_reclaimable_cache_as_free(tmp_path: Path) -> None:
    """Memory used is what the kernel cannot hand out (MemTotal - MemAvailable), as
    psutil and ``free`` report it: a Pi whose 512 MB are mostly page cache is not full."""
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(
        "MemTotal:         500000 kB\nMemFree:           20000 kB\n"
        "MemAvailable:     400000 kB\nBuffers:           10000 kB\nCached:           300000 kB\n"
    )
    assert memory_use(meminfo) == (20.0, 409.6)
