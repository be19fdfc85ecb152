"""Settle the heap once start-up is over (a Pi Zero 2 W has 512 MB for everything).

Start-up leaves two things behind that a long-running daemon should not carry:

- Free memory that glibc's allocator keeps instead of returning it to the system (the
  parsing, schema building and imports of start-up freed it). ``malloc_trim(0)`` gives
  it back: about 1 MB of the demo's RSS (bench/bench_footprint.py).
- Some 60,000 objects (modules, functions, classes, the configuration) that live as long
  as the process. Every full garbage collection would walk all of them again; on the
  development machine one such walk holds the event loop for tens of milliseconds.
  ``gc.freeze()`` moves them out of the collector's sight; it saves no memory here
  (we do not fork), only those pauses.
"""

from __future__ import annotations

import ctypes
import gc

__all__ = ["settle_after_startup"]


def settle_after_startup() -> None:
    """Collect start-up's garbage, freeze what survives, return free heap to the system."""
    gc.collect()
    gc.freeze()
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return
    trim(0)
