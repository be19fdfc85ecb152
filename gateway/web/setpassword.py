"""``village-gateway set-password``: set the web UI password from stdin.

Typed at a terminal, the password is asked twice (without echo) so a typo does not lock
the operator out; from a pipe (``echo … | village-gateway set-password``) one line is
read. The hash goes to ``gateway.state_dir`` of the configuration, the same file the
daemon reads; the running daemon notices the change on its next request and logs every
browser out. Run as root, the file is handed to the owner of the state folder (the
service's user), since the daemon must be able to read it.
"""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path

from gateway.config import load_settings
from gateway.errors import ConfigError
from gateway.web.auth import PasswordError, PasswordFile

__all__ = ["DEFAULT_CONFIG", "EXIT_REFUSED", "run"]

EXIT_REFUSED = 4
"""The password was refused (too short, the two entries differ); nothing changed."""

DEFAULT_CONFIG = Path("/etc/village-gateway/config.toml")
"""Where install.sh puts the configuration (the unit's ``--config``)."""


def _read_password() -> str | None:
    """The new password, or None (with a message) when the two entries differ."""
    if sys.stdin.isatty():
        first = getpass.getpass("New web UI password: ")
        second = getpass.getpass("Again: ")
        if first != second:
            print("village-gateway: the two passwords differ; nothing changed", file=sys.stderr)
            return None
        return first
    return sys.stdin.readline().rstrip("\r\n")


def run(config: Path | None) -> int:
    """Exit 0 when stored; 2 for a configuration problem; 4 for a refused password.

    4 is what ``send`` answers for a command that was not done: refused, as here. 1 stays
    a crash, for every command (README, "Exit statuses").
    """
    path = config if config is not None else DEFAULT_CONFIG
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        print(f"village-gateway: {exc}", file=sys.stderr)
        return 2
    state_dir = settings.gateway.state_dir
    if not state_dir.is_dir():
        print(
            f"village-gateway: gateway.state_dir: {state_dir} is not a folder "
            "(start the daemon once, or create it)",
            file=sys.stderr,
        )
        return 2
    password = _read_password()
    if password is None:
        return EXIT_REFUSED
    target = PasswordFile(state_dir)
    try:
        target.write(password)
    except PasswordError as exc:
        print(f"village-gateway: {exc}; nothing changed", file=sys.stderr)
        return EXIT_REFUSED
    except OSError as exc:
        print(f"village-gateway: cannot write {target.path}: {exc}", file=sys.stderr)
        return 2
    if os.geteuid() == 0:
        owner = state_dir.stat()
        os.chown(target.path, owner.st_uid, owner.st_gid)
    print(f"password set in {target.path}; the daemon logs every browser out on its next request")
    return 0
