"""Keep ALSA's and JACK's own chatter out of the journal.

PortAudio enumerates every host API it was built with when it starts. On a Pi without a
card, ALSA's configuration then prints dozens of ``ALSA lib ... cannot find card '0'``
lines and JACK, with no server running, a handful of ``Cannot connect to server``
lines, straight to file descriptor 2, which systemd puts in the journal. None of it is
news: whether the configured device exists is what the output thread reports, in one
``pa.device_missing`` line that names the device and what PortAudio lists instead.

Both libraries let a program replace the function that prints: ALSA's
``snd_lib_error_set_handler`` and JACK's ``jack_set_error_function`` /
``jack_set_info_function``. :func:`silence_sound_libraries` installs handlers that drop
the text, once per process, before PortAudio starts. Redirecting fd 2 around
``Pa_Initialize`` would do it too, but would also swallow whatever another thread writes
to stderr meanwhile (a traceback, the log itself when it goes to stderr).

Errors still reach us: PortAudio turns them into the return codes that PyAudio raises
as ``OSError``, and the output thread logs those.
"""

from __future__ import annotations

import ctypes
import os
import threading

__all__ = ["silence_sound_libraries"]

_ALSA_ERROR_HANDLER = ctypes.CFUNCTYPE(
    None, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p
)
"""``snd_lib_error_handler_t`` (its trailing ``...`` is never read by ours)."""
_JACK_MESSAGE_HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_char_p)
"""``void (*)(const char *)`` of ``jack_set_error_function``."""

_lock = threading.Lock()
_installed: list[object] = []
"""The handlers, kept alive for as long as the libraries may call them (for ever)."""


def _drop_alsa(
    file: bytes | None, line: int, function: bytes | None, err: int, fmt: bytes | None
) -> None:
    del file, line, function, err, fmt


def _drop_jack(message: bytes | None) -> None:
    del message


def _library(name: str) -> ctypes.CDLL | None:
    """The already loaded (or loadable) shared library ``name``; None if absent."""
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def silence_sound_libraries() -> bool:
    """Install the quiet handlers in ALSA and JACK (once; later calls do nothing).

    Also asks JACK not to try starting a server of its own (the Pi has none). Returns
    True when at least one library was found and silenced.
    """
    os.environ.setdefault("JACK_NO_START_SERVER", "1")
    with _lock:
        if _installed:
            return True
        alsa = _library("libasound.so.2")
        if alsa is not None:
            alsa_handler = _ALSA_ERROR_HANDLER(_drop_alsa)
            alsa.snd_lib_error_set_handler(alsa_handler)
            _installed.append(alsa_handler)
        jack = _library("libjack.so.0")
        if jack is not None:
            jack_handler = _JACK_MESSAGE_HANDLER(_drop_jack)
            jack.jack_set_error_function(jack_handler)
            jack.jack_set_info_function(jack_handler)
            _installed.append(jack_handler)
        return bool(_installed)
