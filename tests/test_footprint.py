"""The daemon starts light: no audio decoder libraries before the first decode."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Daemon, clean_env, free_port

pytestmark = pytest.mark.slow

HEAVY = ("numpy", "soundfile", "pyaudio")
"""Loaded by the first decode (numpy, soundfile) or a real sound card (pyaudio) only."""


def test_importing_the_daemon_loads_no_audio_library() -> None:
    """What ``village-gateway run`` imports before it reads its config leaves numpy,
    soundfile and PyAudio out (each a few MB of a Pi Zero's memory)."""
    code = (
        "import sys\n"
        "import gateway.cli, gateway.daemon.app, gateway.logupload, gateway.web.live\n"
        f"print([name for name in {HEAVY!r} if name in sys.modules])\n"
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
