"""sd_notify: tell systemd we are ready, alive, reloading or stopping.

The protocol is a datagram of ``KEY=VALUE`` lines to the ``AF_UNIX`` socket named in
``NOTIFY_SOCKET`` (a leading ``@`` means the abstract namespace), as sd_notify(3)
documents. It is a few lines, so we write them instead of depending on the abandoned
``sdnotify`` package. Outside systemd (no ``NOTIFY_SOCKET``) every call does nothing.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

from gateway.log import get_logger

__all__ = ["Notifier", "watchdog_interval"]

_log = get_logger("systemd")


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings: half of ``WATCHDOG_USEC``, or None if off.

    systemd sets ``WATCHDOG_PID`` too; when it names another process the watchdog is
    not ours (a child inherited the variables) and we stay quiet.
    """
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        _log.warning("systemd.watchdog_usec_invalid", value=usec)
        return None
    return value / 2_000_000 if value > 0 else None


class Notifier:
    """Sends sd_notify messages; a no-op when not started by systemd."""

    __slots__ = ("_address", "_socket")

    def __init__(self, address: str | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        self._address: str | None = None
        self._socket: socket.socket | None = None
        if not address:
            return
        if address.startswith("@"):  # abstract namespace socket
            address = "\0" + address[1:]
        self._address = address
        # Non-blocking: if systemd ever stops reading, a full queue must cost us one
        # dropped notification, not a frozen event loop.
        self._socket = socket.socket(
            socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
        )

    @property
    def enabled(self) -> bool:
        """True when there is a socket to talk to."""
        return self._socket is not None

    def notify(self, **fields: str | int) -> bool:
        """Send ``KEY=VALUE`` lines, e.g. ``notify(READY=1, STATUS="ok")``.

        Returns False (and logs) if the datagram could not be sent; never raises, since a
        lost notification must not take the daemon down.
        """
        if self._socket is None or self._address is None:
            return False
        payload = "\n".join(f"{key}={value}" for key, value in fields.items())
        try:
            self._socket.sendto(payload.encode("utf-8"), self._address)
        except OSError as exc:
            _log.warning("systemd.notify_failed", error=str(exc), fields=list(fields))
            return False
        return True

    def ready(self, status: str) -> bool:
        """READY=1 with a STATUS line."""
        return self.notify(READY=1, STATUS=status)

    def reloading(self) -> bool:
        """RELOADING=1 with MONOTONIC_USEC, as systemd 253+ wants and 252 accepts."""
        return self.notify(
            RELOADING=1, MONOTONIC_USEC=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        )

    def watchdog(self) -> bool:
        """WATCHDOG=1: we are alive and healthy."""
        return self.notify(WATCHDOG=1)

    def stopping(self) -> bool:
        """STOPPING=1: a clean stop has begun."""
        return self.notify(STOPPING=1)

    def close(self) -> None:
        """Close the socket."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None
