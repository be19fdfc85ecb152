"""The demo's welcome: where the web UI is and the setup code, set apart from the log.

In ``run --demo`` the one thing a developer needs from the first screen of output is the
address to open and, on the first run, the one-time setup code; in the log they are two
keys among many. :class:`DemoBanner` is a log sink (a structlog processor, the hook the
log uploader uses) that notes the setup code when the web part logs it and prints a
framed banner when the daemon has started. It changes no line of the log.
"""

from __future__ import annotations

import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

__all__ = ["DemoBanner"]


class DemoBanner:
    """Prints the banner once, on ``app.started``; see the module's docstring."""

    def __init__(self, *, host: str, state_dir: str, stream: TextIO | None = None) -> None:
        self._host = "127.0.0.1" if host in {"0.0.0.0", "::", ""} else host  # noqa: S104
        self._state_dir = state_dir
        self._stream = stream
        self._code: str | None = None
        self._shown = False

    def __call__(
        self, logger: object, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        """Watch the lines go by; never change them."""
        event = event_dict.get("event")
        if event == "web.setup_code":
            self._code = str(event_dict.get("code"))
        elif event == "app.started" and not self._shown:
            self._shown = True
            self._show(event_dict.get("http_port"))
        return event_dict

    def lines(self, port: object) -> list[str]:
        """The banner's text lines."""
        lines = [
            "village-gateway demo",
            f"web UI:      http://{self._host}:{port}/",
        ]
        if self._code is not None:
            lines.append(
                f"setup code:  {self._code}   (enter it on the web page to set a password)"
            )
        else:
            lines.append("password:    already set (kept in the state folder)")
        lines += [f"state:       {self._state_dir}", "Ctrl-C stops the demo"]
        return lines

    def _show(self, port: object) -> None:
        lines = self.lines(port)
        width = max(len(line) for line in lines) + 2
        rule = "=" * (width + 2)
        text = "\n".join(["", rule, *(f"| {line.ljust(width - 1)}|" for line in lines), rule, ""])
        stream = self._stream if self._stream is not None else sys.stdout
        stream.write(text + "\n")
        stream.flush()
