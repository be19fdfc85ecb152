"""The last good configuration: what keeps the village lit when the file goes bad.

A power cut in the middle of an edit truncates ``config.toml``; one typo makes it
invalid. Before this, either meant exit 2 and a dark village until someone came with
SSH. Now every configuration the daemon started (or reloaded) with is kept in the state
folder, and a start with a file that cannot be used runs on that copy instead, loudly:
an event, the ``system`` state (``config_status``, ``config_problems``: the web UI's
banner), and an ERROR line in the journal. Only with no good copy does it exit 2.

The copy is one JSON file, written atomically (:func:`gateway.files.write_atomic`), that
holds the text, the path it came from and its SHA-256; a copy whose text does not match
its hash is ignored, and so is a copy of another file.

The state folder is itself named in the configuration, which may be the broken part.
:func:`state_dirs` guesses it in order: ``gateway.state_dir`` from the longest start of
the file that still parses (a truncated file keeps its first table), the
``VG_GATEWAY__STATE_DIR`` variable, systemd's ``$STATE_DIRECTORY``, then the default.
"""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path

from gateway.clock import now_iso
from gateway.config import GatewaySection, Settings, parse_settings
from gateway.errors import ConfigError, ConfigProblem
from gateway.files import write_atomic

__all__ = ["FILE_NAME", "Fallback", "LastGood", "fall_back", "recall", "remember", "state_dirs"]

FILE_NAME = "config.last-good.json"


@dataclass(frozen=True, slots=True)
class LastGood:
    """A configuration that passed every check, with where it came from."""

    source: str
    sha256: str
    saved_at: str
    text: str


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def remember(state_dir: Path, source: Path, text: str) -> bool:
    """Keep ``text`` (read from ``source``) as the last good copy; False if unchanged."""
    digest = _digest(text)
    current = recall(state_dir)
    where = str(source.absolute())
    if current is not None and current.sha256 == digest and current.source == where:
        return False
    copy = LastGood(source=where, sha256=digest, saved_at=now_iso(), text=text)
    write_atomic(state_dir / FILE_NAME, json.dumps(asdict(copy), ensure_ascii=False, indent=1))
    return True


def recall(state_dir: Path) -> LastGood | None:
    """The last good copy in ``state_dir``, or None if there is none or it is damaged."""
    try:
        raw = json.loads((state_dir / FILE_NAME).read_text(encoding="utf-8"))
        copy = LastGood(**raw)
    except (OSError, ValueError, TypeError):
        return None
    if not isinstance(copy.text, str) or _digest(copy.text) != copy.sha256:
        return None
    return copy


def _state_dir_in(path: Path) -> Path | None:
    """``gateway.state_dir`` from the longest start of the file that parses."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    for end in range(len(lines), 0, -1):
        try:
            data = tomllib.loads("\n".join(lines[:end]))
        except tomllib.TOMLDecodeError:
            continue
        gateway = data.get("gateway")
        value = gateway.get("state_dir") if isinstance(gateway, dict) else None
        return Path(value) if isinstance(value, str) and value else None
    return None


def state_dirs(path: Path) -> list[Path]:
    """Where the state folder of the configuration at ``path`` may be, likeliest first."""
    candidates = [
        _state_dir_in(path),
        Path(override) if (override := os.environ.get("VG_GATEWAY__STATE_DIR")) else None,
        *(Path(item) for item in os.environ.get("STATE_DIRECTORY", "").split(":") if item),
        GatewaySection.model_fields["state_dir"].default,
    ]
    seen: list[Path] = []
    for candidate in candidates:
        if candidate is not None and candidate not in seen:
            seen.append(candidate)
    return seen


def fall_back(
    path: Path, error: ConfigError, *, demo: bool = False
) -> tuple[Settings, Fallback] | None:
    """The last good configuration of the file at ``path``, validated, with why it is
    used (``error``, what is wrong with the file); None if there is no usable copy."""
    where = str(path.absolute())
    for folder in state_dirs(path):
        copy = recall(folder)
        if copy is None or copy.source != where:
            continue
        try:
            settings = parse_settings(copy.text, source=f"{folder / FILE_NAME}", demo=demo)
        except ConfigError:
            continue  # a copy this version can no longer read is no fallback
        return settings, Fallback(config=where, problems=list(error.problems), copy=copy)
    return None


@dataclass(frozen=True, slots=True)
class Fallback:
    """Why the daemon runs on its last good configuration instead of the file."""

    config: str
    """The file that could not be used."""
    problems: list[ConfigProblem]
    copy: LastGood

    def problem_dicts(self) -> list[dict[str, str]]:
        """The problems as ``{"key", "message"}`` objects (event, state, web banner)."""
        return [{"key": p.key, "message": p.message} for p in self.problems]
