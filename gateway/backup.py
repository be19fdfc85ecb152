"""``village-gateway backup FILE`` and ``restore FILE``: one archive of what makes a
gateway itself, to move it to a new SD card or bring it back after one died.

The archive is a gzip'd tar with ``manifest.json`` (format name, format version, the
gateway's id and version, and the SHA-256, size and mode of every other member) and the
files under ``config/`` (the configuration file) and ``state/`` (the web password hash,
the schedules set by command, the broadcast log, the relay state, the PA volume, the
clips; with ``--with-outbox`` the outbox, copied through SQLite's backup API so a
running daemon's database is copied consistently). The web sessions (hashes of their
tokens) come along, so a phone that was logged in stays logged in on the new card.

Restore checks the whole archive before it changes anything: a file that is not a tar,
is truncated, has no manifest of ours, a checksum that does not match, a member the
manifest does not list or a path that leaves its folder is refused with one sentence.
It then builds the new state folder beside the old one and swaps them by renaming, and
replaces the configuration file by renaming too: either the restore happened or nothing
changed. The old state folder and configuration are kept beside the new ones.

Secrets the configuration names (``mqtt.password_file``, ``commands.hmac_key_file``,
certificates) are not in the archive, so that a backup downloaded from the web UI does
not carry them; restore lists the ones missing on this machine.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import socket
import sqlite3
import sys
import tarfile
import tempfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from gateway import __version__
from gateway.clock import now_iso
from gateway.config import Settings, load_settings, parse_settings
from gateway.errors import ConfigError, GatewayError
from gateway.lastgood import fall_back, recall
from gateway.statelock import StateFolderBusyError, StateLock

__all__ = [
    "FORMAT",
    "MANIFEST",
    "VERSION",
    "BackupError",
    "Restored",
    "backup_to_file",
    "read_archive",
    "restore",
    "run_backup",
    "run_restore",
    "write_backup",
]

FORMAT = "village-gateway-backup"
VERSION = 1
MANIFEST = "manifest.json"
CONFIG_MEMBER = "config/config.toml"
STATE_FILES = (
    "web_password",
    "web_sessions.json",
    "schedules.json",
    "broadcasts.json",
    "relays.json",
    "pa.json",
)
"""Files of the state folder that make this gateway itself."""
STATE_FOLDERS = ("clips",)
OUTBOX_DB = "outbox.db"
OUTBOX_FILES = ("outbox.epoch",)
_CHUNK = 1 << 16
GZIP_MAGIC = b"\x1f\x8b"


class BackupError(GatewayError):
    """A backup cannot be made, or an archive cannot be restored; nothing was changed."""

    key = "backup.refused"


# -- making a backup -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Source:
    """One member to write: its name in the archive and where its bytes are."""

    name: str
    path: Path | None = None
    data: bytes | None = None
    mode: int = 0o640

    def open(self) -> IO[bytes]:
        if self.data is not None:
            return io.BytesIO(self.data)
        assert self.path is not None  # noqa: S101 - one of the two is always set
        return self.path.open("rb")


def _digest(source: _Source) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with source.open() as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _state_sources(state_dir: Path) -> list[_Source]:
    sources = []
    for name in STATE_FILES:
        path = state_dir / name
        if path.is_file():
            sources.append(_Source(f"state/{name}", path, mode=path.stat().st_mode & 0o777))
    for folder in STATE_FOLDERS:
        root = state_dir / folder
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*")):
            if path.is_file() and not path.name.startswith("."):
                name = f"state/{folder}/{path.relative_to(root).as_posix()}"
                sources.append(_Source(name, path, mode=path.stat().st_mode & 0o777))
    return sources


def _outbox_sources(state_dir: Path, scratch: Path) -> list[_Source]:
    database = state_dir / OUTBOX_DB
    if not database.is_file():
        return []
    copy = scratch / OUTBOX_DB
    source = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    target = sqlite3.connect(copy)
    try:
        source.backup(target)  # a consistent copy even while the daemon writes
    finally:
        target.close()
        source.close()
    sources = [_Source(f"state/{OUTBOX_DB}", copy, mode=0o640)]
    for name in OUTBOX_FILES:
        path = state_dir / name
        if path.is_file():
            sources.append(_Source(f"state/{name}", path, mode=0o640))
    return sources


def _config_text(settings: Settings, config: Path | None) -> str | None:
    """The configuration file's text: the file itself, else the last good copy (the
    running daemon's own, which is what the web UI's download has)."""
    if config is not None:
        try:
            return config.read_text(encoding="utf-8")
        except OSError as exc:
            raise BackupError(f"{config}: cannot be read: {exc.strerror or exc}") from None
    copy = recall(settings.gateway.state_dir)
    return copy.text if copy is not None else None


def write_backup(
    target: IO[bytes], settings: Settings, *, config: Path | None, with_outbox: bool = False
) -> dict[str, Any]:
    """Write the archive of this gateway to ``target``; returns its manifest."""
    state_dir = settings.gateway.state_dir
    if not state_dir.is_dir():
        raise BackupError(f"gateway.state_dir: {state_dir} is not a folder; nothing to back up")
    with tempfile.TemporaryDirectory(prefix=".backup-", dir=state_dir) as scratch:
        sources = []
        text = _config_text(settings, config)
        if text is not None:
            sources.append(_Source(CONFIG_MEMBER, data=text.encode("utf-8"), mode=0o640))
        sources += _state_sources(state_dir)
        if with_outbox:
            sources += _outbox_sources(state_dir, Path(scratch))
        files: dict[str, dict[str, Any]] = {}
        for source in sources:
            sha256, size = _digest(source)
            files[source.name] = {"sha256": sha256, "bytes": size, "mode": source.mode}
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "gateway": settings.gateway.id,
            "gateway_version": __version__,
            "created_at": now_iso(),
            "with_outbox": with_outbox,
            "files": files,
        }
        # Clips are compressed audio already: the fastest level loses ~nothing in size.
        with tarfile.open(fileobj=target, mode="w:gz", compresslevel=1) as archive:
            _add(archive, _Source(MANIFEST, data=_encode(manifest), mode=0o644))
            for source in sources:
                _add(archive, source, size=files[source.name]["bytes"])
    return manifest


def _encode(manifest: dict[str, Any]) -> bytes:
    return (json.dumps(manifest, ensure_ascii=False, indent=1, sort_keys=True) + "\n").encode()


def _add(archive: tarfile.TarFile, source: _Source, *, size: int | None = None) -> None:
    info = tarfile.TarInfo(source.name)
    info.size = size if size is not None else len(source.data or b"")
    info.mode = source.mode
    info.mtime = int(time.time())
    with source.open() as handle:
        archive.addfile(info, handle)


def backup_to_file(
    path: Path, settings: Settings, *, config: Path | None, with_outbox: bool
) -> dict[str, Any]:
    """:func:`write_backup` into ``path``, written beside it and renamed into place."""
    partial = path.with_name(f".{path.name}.partial")
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            manifest = write_backup(handle, settings, config=config, with_outbox=with_outbox)
            handle.flush()
            os.fsync(handle.fileno())
        partial.replace(path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise BackupError(f"{path}: cannot be written: {exc.strerror or exc}") from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return manifest


# -- checking an archive ---------------------------------------------------------------


def _safe_name(name: str) -> bool:
    path = PurePosixPath(name)
    return (
        not path.is_absolute()
        and ".." not in path.parts
        and len(path.parts) >= 2
        and path.parts[0] in {"config", "state"}
    )


def _load_manifest(archive: tarfile.TarFile, where: str) -> dict[str, Any]:
    try:
        member = archive.getmember(MANIFEST)
    except KeyError:
        raise BackupError(f"{where}: not a village-gateway backup (it has no {MANIFEST})") from None
    handle = archive.extractfile(member)
    try:
        manifest = json.loads(handle.read() if handle is not None else b"")
    except ValueError:
        raise BackupError(
            f"{where}: not a village-gateway backup ({MANIFEST} is not JSON)"
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError(f"{where}: not a village-gateway backup (another program's archive)")
    version = manifest.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise BackupError(
            f"{where}: made in backup format {version!r}, newer than this version reads "
            f"({VERSION}); upgrade village-gateway first"
        )
    if not isinstance(manifest.get("files"), dict):
        raise BackupError(f"{where}: damaged ({MANIFEST} lists no files)")
    return manifest


def _starts_with(path: Path, magic: bytes) -> bool:
    try:
        with path.open("rb") as handle:
            return handle.read(len(magic)) == magic
    except OSError:
        return False


def read_archive(path: Path, staging: Path) -> dict[str, Any]:
    """Check the archive at ``path`` whole and unpack it into ``staging`` (created);
    returns its manifest. Raises :class:`BackupError` naming what is wrong."""
    where = str(path)
    try:
        archive = tarfile.open(path, mode="r:*")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        raise BackupError(f"{where}: no such file") from None
    except (EOFError, zlib.error, gzip.BadGzipFile):
        raise BackupError(f"{where}: damaged: it ends too soon or its data is corrupt") from None
    except tarfile.ReadError:
        if _starts_with(path, GZIP_MAGIC):
            raise BackupError(f"{where}: damaged: its compressed data is corrupt") from None
        raise BackupError(
            f"{where}: not a village-gateway backup (not a .tar.gz archive)"
        ) from None
    except OSError as exc:
        raise BackupError(f"{where}: cannot be read: {exc.strerror or exc}") from None
    try:
        with archive:
            manifest = _load_manifest(archive, where)
            _unpack(archive, manifest["files"], staging, where)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile):
        # Truncation and corruption surface while reading the members.
        raise BackupError(f"{where}: damaged: it ends too soon or its data is corrupt") from None
    return manifest


def _unpack(archive: tarfile.TarFile, files: dict[str, Any], staging: Path, where: str) -> None:
    seen = set()
    for member in archive:
        if member.name == MANIFEST:
            continue
        if not _safe_name(member.name) or not member.isfile() or member.name not in files:
            raise BackupError(
                f"{where}: damaged or not ours: {member.name!r} is not a file the manifest lists"
            )
        expected = files[member.name]
        target = staging / member.name
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        size = 0
        handle = archive.extractfile(member)
        assert handle is not None  # noqa: S101 - a regular file, checked above
        with target.open("wb") as out:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
        if digest.hexdigest() != expected.get("sha256") or size != expected.get("bytes"):
            raise BackupError(f"{where}: damaged: {member.name} does not match its checksum")
        target.chmod(int(expected.get("mode", 0o640)) & 0o777)
        seen.add(member.name)
    missing = sorted(set(files) - seen)
    if missing:
        raise BackupError(f"{where}: damaged: {', '.join(missing)} missing from the archive")


# -- restoring -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Restored:
    """What a restore did, for the message at its end."""

    gateway: str | None
    state_dir: Path
    config: Path
    config_restored: bool
    files: int
    kept_state: Path | None
    kept_config: Path | None
    missing_secrets: list[str]


def _settings_for(config: Path, staged_config: Path | None) -> Settings:
    try:
        if staged_config is not None:
            text = staged_config.read_text(encoding="utf-8")
            return parse_settings(text, source=f"the backup's {CONFIG_MEMBER}")
        return load_settings(config)
    except ConfigError as exc:
        raise BackupError(str(exc)) from None


def _daemon_answers(settings: Settings) -> bool:
    host = settings.web.host
    host = "127.0.0.1" if host in {"0.0.0.0", "::", ""} else host  # noqa: S104
    try:
        socket.create_connection((host, settings.web.port), timeout=0.5).close()
    except OSError:
        return False
    return True


def _owner_of(path: Path) -> tuple[int, int] | None:
    for candidate in (path, *path.parents):
        try:
            info = candidate.stat()
        except OSError:
            continue
        return info.st_uid, info.st_gid
    return None


def _chown_tree(root: Path, owner: tuple[int, int] | None) -> None:
    if owner is None or os.geteuid() != 0:
        return
    for path in (root, *root.rglob("*")):
        os.chown(path, *owner, follow_symlinks=False)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _missing_secrets(settings: Settings) -> list[str]:
    from gateway.checks import named_files  # noqa: PLC0415 - only needed here

    return [f"{key} ({path})" for key, path in named_files(settings) if not path.exists()]


def restore(path: Path, config: Path) -> Restored:
    """Restore the archive at ``path``: its configuration to ``config`` (when it has one)
    and its state to the configuration's ``gateway.state_dir``. All or nothing."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    scratch = Path(tempfile.mkdtemp(prefix=".vg-restore-", dir=_scratch_dir(config)))
    try:
        manifest = read_archive(path, scratch)
        staged_config = scratch / CONFIG_MEMBER
        has_config = staged_config.is_file()
        settings = _settings_for(config, staged_config if has_config else None)
        if _daemon_answers(settings):
            raise BackupError(
                f"the gateway is running (web.port {settings.web.port} answers): stop it first, "
                "sudo systemctl stop village-gateway"
            )
        state_dir = settings.gateway.state_dir.absolute()
        with _holding(state_dir):
            return _swap(
                scratch, state_dir, config, has_config=has_config, stamp=stamp,
                manifest=manifest, settings=settings,
            )  # fmt: skip
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@contextlib.contextmanager
def _holding(state_dir: Path) -> Iterator[None]:
    """The daemon's own lock on the state folder, for the whole swap: a gateway started
    meanwhile waits for none of it and refuses to start instead (gateway.statelock)."""
    if not state_dir.is_dir():
        yield
        return
    lock = StateLock(state_dir)
    try:
        lock.acquire()
    except StateFolderBusyError as exc:
        raise BackupError(f"{exc}: stop it first, sudo systemctl stop village-gateway") from None
    try:
        yield
    finally:
        lock.release()


def _scratch_dir(config: Path) -> Path:
    """Somewhere to unpack before anything is decided: beside the configuration."""
    parent = config.absolute().parent
    return parent if parent.is_dir() else Path(tempfile.gettempdir())


def _swap(
    scratch: Path,
    state_dir: Path,
    config: Path,
    *,
    has_config: bool,
    stamp: str,
    manifest: dict[str, Any],
    settings: Settings,
) -> Restored:
    """Move the staged state and configuration into place, each by one rename."""
    staged_state = scratch / "state"
    staged_state.mkdir(exist_ok=True)
    # The new folder is built on the state folder's own file system, so that the
    # swap is a rename; it gets the old folder's owner (the service user) when root.
    state_dir.parent.mkdir(parents=True, exist_ok=True)
    incoming = state_dir.with_name(f".{state_dir.name}.restoring-{stamp}")
    shutil.copytree(staged_state, incoming)
    incoming.chmod(state_dir.stat().st_mode & 0o777 if state_dir.is_dir() else 0o750)
    _chown_tree(incoming, _owner_of(state_dir))
    kept_state = state_dir.with_name(f"{state_dir.name}.before-restore-{stamp}")
    kept_config = config.with_name(f"{config.name}.before-restore-{stamp}")
    new_config = config.with_name(f".{config.name}.restoring-{stamp}")
    moved_state = placed = False
    try:
        if has_config:
            shutil.copyfile(scratch / CONFIG_MEMBER, new_config)
            if config.exists():
                shutil.copy2(config, kept_config)
                new_config.chmod(config.stat().st_mode & 0o777)
                _chown_tree(new_config, _owner_of(config))
            else:
                new_config.chmod(0o640)
        if state_dir.exists():
            state_dir.rename(kept_state)
            moved_state = True
        incoming.rename(state_dir)
        placed = True
        if has_config:
            new_config.replace(config)
    except BaseException:
        # Put back what was there: either the restore happened or nothing changed.
        if placed:
            state_dir.rename(incoming)
        if moved_state:
            kept_state.rename(state_dir)
        shutil.rmtree(incoming, ignore_errors=True)
        new_config.unlink(missing_ok=True)
        kept_config.unlink(missing_ok=True)
        raise
    _fsync_dir(state_dir.parent)
    if has_config:
        _fsync_dir(config.absolute().parent)
    return Restored(
        gateway=manifest.get("gateway"),
        state_dir=state_dir,
        config=config,
        config_restored=has_config,
        files=len(manifest["files"]),
        kept_state=kept_state if moved_state else None,
        kept_config=kept_config if has_config and kept_config.exists() else None,
        missing_secrets=_missing_secrets(settings),
    )


def iter_lines(restored: Restored) -> Iterator[str]:
    """What ``restore`` tells the person at the terminal."""
    yield (
        f"restored gateway {restored.gateway}: {restored.files} file(s) into "
        f"{restored.state_dir}"
        + (f", configuration {restored.config}" if restored.config_restored else "")
    )
    if restored.kept_state is not None:
        yield f"the previous state folder is kept as {restored.kept_state}"
    if restored.kept_config is not None:
        yield f"the previous configuration is kept as {restored.kept_config}"
    for secret in restored.missing_secrets:
        yield f"not in a backup, copy it here yourself: {secret}"
    yield "then: sudo systemctl start village-gateway"


# -- the command line ------------------------------------------------------------------


def _settings_to_back_up(config: Path) -> Settings:
    try:
        return load_settings(config)
    except ConfigError as exc:
        found = fall_back(config, exc)
        if found is None:
            raise
        print(
            f"village-gateway: {config} cannot be used; backing up its last good copy",
            file=sys.stderr,
        )
        return found[0]


def run_backup(args: argparse.Namespace) -> int:
    """``village-gateway backup FILE``: 0 written, 2 refused (nothing written)."""
    try:
        settings = _settings_to_back_up(args.config)
        manifest = backup_to_file(
            args.file, settings, config=args.config, with_outbox=args.with_outbox
        )
    except (ConfigError, BackupError) as exc:
        print(f"village-gateway: {exc}", file=sys.stderr)
        return 2
    print(
        f"{args.file}: backup of gateway {manifest['gateway']}, {len(manifest['files'])} "
        f"file(s){' with the outbox' if args.with_outbox else ''}; the files the configuration "
        "names (passwords, keys, certificates) are not in it: keep copies of them too"
    )
    return 0


def run_restore(args: argparse.Namespace) -> int:
    """``village-gateway restore FILE``: 0 restored, 2 refused (nothing changed)."""
    try:
        restored = restore(args.file, args.config)
    except BackupError as exc:
        print(f"village-gateway: {exc}; nothing was changed", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"village-gateway: restore failed, nothing was changed: {exc}", file=sys.stderr)
        return 2
    for line in iter_lines(restored):
        print(line)
    return 0
