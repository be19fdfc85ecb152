"""The clip store: named audio files under ``state_dir/clips``, checked before they count.

A clip is accepted only after it has been decoded from end to end (not judged by its
extension), and is written beside its final place and renamed over it, so a power cut
or a failed upload never leaves half a clip that would break a broadcast later. The
sidecar ``index.json`` records each clip's sha256 and exact duration so listing the
store does not decode anything; it is rebuilt from the files if it is lost.

A clip has an id (``ban-tin-sang``: what commands, files and URLs use) and a label (``Bản
tin sáng``: what the village head typed, any Unicode, at most 64 characters). An upload or
a fetch under a natural name gets its id derived from it (:func:`slugify`: Vietnamese
diacritics folded, ``đ`` → ``d``, a suffix ``-2`` when another clip has that id); the
label is kept in the index and in a sidecar ``<id>.label`` beside the clip, so a lost
index loses no label. A name that is already an id (``morning-news``) names that clip and
replaces it, as before.

Two clips come with the package, made by ``audio/make_sounds.py``: ``chime`` (played
before announcements) and ``test-tone``. Their ids are reserved.

Every refusal carries a reason code (``clip_not_found``, ``clip_too_large``,
``clip_format``, ``clip_too_long``, ``disk_full``, ``clip_in_use``… see
:data:`REASONS`) beside the reply's error code, for the user interface to word it.

Nothing here holds up the player: a download and its decode check hold no lock that
playing needs. Writes of one name (an upload, a fetch) keep their order, one after the
other; writes of different names run side by side, at most ``max_fetches`` downloads
at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import secrets
import shutil
import threading
import unicodedata
from collections.abc import AsyncIterator, Collection, Mapping
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.errors import GatewayError
from gateway.files import write_atomic
from gateway.log import get_logger
from gateway.pa.fetch import AddressGuard, FetchError, RefusedAddressError, download
from gateway.pa.pcm import MAX_CLIP_S, PROBE_TIMEOUT_S, DecodeError

__all__ = [
    "BUNDLED",
    "BUNDLED_DIR",
    "MAX_FETCHES",
    "ClipError",
    "ClipInfo",
    "ClipStore",
    "normalise_name",
    "slugify",
]

_log = get_logger("pa.clips")

BUNDLED_DIR = Path(__file__).parent / "sounds"
BUNDLED = ("chime", "test-tone")
"""Clips that ship with the package (``gateway/pa/sounds/<name>.wav``)."""
MAX_NAME = 64
MAX_LABEL = 64
_LABEL = ".label"
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")
MAX_FETCHES = 3
"""Downloads at once; one more is refused with ``busy`` (each may fill ``max_bytes`` of
the card and a decode thread)."""
_INDEX = "index.json"
_TEMP_PREFIX = ".incoming-"


REASONS: Mapping[str, str] = {
    "unknown_target": "clip_not_found",
    "too_large": "clip_too_large",
    "bad_audio": "clip_format",
    "too_long": "clip_too_long",
    "no_space": "disk_full",
    "decode_timeout": "clip_decode_timeout",
    "cancelled": "clip_decode_timeout",
    "fetch_failed": "fetch_failed",
    "bad_checksum": "clip_checksum",
    "forbidden": "fetch_forbidden",
    "busy": "busy",
}
"""The reason a refusal of each error code carries unless it names its own
(``clip_name_empty``, ``clip_name_unusable``, ``clip_label_too_long``,
``clip_label_format``, ``clip_bundled``, ``clip_in_use``, ``fetch_url``,
``clip_checksum_format``)."""


class ClipError(GatewayError):
    """A clip refused or missing; ``key`` is the reply error code, ``reason`` the finer
    reason code (docs/protocol.md) and ``params`` what a message in another language needs.

    ``unknown_target`` (no such clip), ``bad_args`` (bad name, URL or sha256),
    ``too_large``, ``bad_audio`` (decoding failed), ``too_long`` (over the duration cap),
    ``decode_timeout`` (the decode check took too long), ``fetch_failed`` (download
    problem), ``bad_checksum``, ``forbidden`` (the URL points at an address a fetch may
    not reach, docs/audio.md, or a bundled clip), ``busy`` (too many downloads at once, or
    the clip is in use), ``no_space`` (the card has no room for one more clip).
    """

    def __init__(
        self,
        key: str,
        message: str,
        *,
        reason: str | None = None,
        field: str | None = None,
        **params: object,
    ) -> None:
        super().__init__(message)
        self.key = key
        self.reason = reason or REASONS.get(key, key)
        self.field = field
        """The argument at fault when it is always the same one (``name``: the name)."""
        self.params = params

    def detail(self, field: str) -> dict[str, Any]:
        """The reply's ``error.detail``; ``field`` is the argument that carried the clip
        (``clip``, ``file``), unless the error names its own."""
        return {"reason": self.reason, "field": self.field or field, **self.params}


@dataclass(frozen=True, slots=True)
class ClipInfo:
    """What the store knows about one clip (shown by the web UI and in replies)."""

    name: str
    """The id: what commands, files and URLs use."""
    bytes: int
    sha256: str
    duration_s: float
    format: str
    """``wav``, ``mp3``, ``ogg`` or ``flac``: what the content is, whatever it was called."""
    bundled: bool = False
    label: str = ""
    """What the operator called it (any Unicode); the id when none was given."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, duration rounded to milliseconds, the label never empty."""
        out = asdict(self)
        out["duration_s"] = round(self.duration_s, 3)
        out["label"] = self.label or self.name
        return out


def normalise_name(name: str) -> str:
    """The stored form of a clip id: lowercase letters, digits, ``-`` and ``_``.

    Anything else (path separators, dots, spaces, markup, an empty name or more than
    64 characters) is refused rather than cleaned up, so that an id never silently
    means a different clip than the operator typed. Natural names go through
    :meth:`ClipStore.identify` instead.
    """
    lowered = name.lower() if isinstance(name, str) else ""
    if not lowered or len(lowered) > MAX_NAME or not _NAME.fullmatch(lowered):
        raise ClipError(
            "bad_args",
            f"clip id {name!r}: use 1 to {MAX_NAME} of a-z 0-9 - _ (starting with a letter"
            " or digit)",
            reason="clip_not_found",
            clip=name if isinstance(name, str) else repr(name),
        )
    return lowered


def slugify(text: str) -> str:
    """An id from a natural name: ``"Bản tin sáng!"`` → ``"ban-tin-sang"``; ``""`` when
    nothing usable is left (``"!!!"``). Diacritics are folded, ``đ`` becomes ``d``, every
    run of other characters one ``-``; at most 64 characters."""
    folded = unicodedata.normalize("NFD", text.replace("đ", "d").replace("Đ", "D"))
    bare = "".join(c for c in folded if not unicodedata.combining(c)).lower()
    slug = re.sub(r"[^a-z0-9]+", "-", bare).strip("-")
    return slug[:MAX_NAME].rstrip("-")


def _label(name: object) -> str:
    """The label a natural name gives, or ClipError: NFC, trimmed, 1-64 characters with
    no control characters and no path separator."""
    if not isinstance(name, str) or not name.strip():
        raise ClipError("bad_args", "give the clip a name", reason="clip_name_empty", field="name")
    label = unicodedata.normalize("NFC", name).strip()
    if len(label) > MAX_LABEL:
        raise ClipError(
            "bad_args",
            f"a clip name has at most {MAX_LABEL} characters, this one {len(label)}",
            reason="clip_label_too_long",
            field="name",
            max=MAX_LABEL,
            length=len(label),
        )
    if any(unicodedata.category(c).startswith("C") for c in label) or any(
        c in label for c in "/\\"
    ):
        raise ClipError(
            "bad_args",
            "a clip name has no control characters and no / or \\",
            reason="clip_label_format",
            field="name",
        )
    return label


class ClipStore:
    """Clips under ``root`` (``state_dir/clips``); bundled clips are always present."""

    def __init__(
        self,
        root: Path,
        *,
        max_bytes: int = 50_000_000,
        max_duration_s: float = MAX_CLIP_S,
        probe_timeout_s: float = PROBE_TIMEOUT_S,
        max_fetches: int = MAX_FETCHES,
        guard: AddressGuard | None = None,
    ) -> None:
        self.root = root
        self.guard = guard if guard is not None else AddressGuard()
        """Where fetches may connect (``pa.fetch_allow``); by default public addresses only."""
        self.max_bytes = max_bytes
        self.max_duration_s = max_duration_s
        self.probe_timeout_s = probe_timeout_s
        self.max_fetches = max_fetches
        self._lock = asyncio.Lock()
        """Held only to rename a checked file into place and rewrite the index."""
        self._writers: dict[str, tuple[asyncio.Lock, int]] = {}
        self._fetching = 0
        self._bundled: dict[str, ClipInfo] = {}
        self.root.mkdir(parents=True, exist_ok=True)
        self._clips = self._load()

    # Reading.

    def path(self, name: str) -> Path:
        """The file to play for ``name``; ClipError("unknown_target") if there is none."""
        key = self._key(name)
        if key in BUNDLED:
            return BUNDLED_DIR / f"{key}.wav"
        info = self._clips[key]
        path = self.root / f"{key}.{info.format}"
        if not path.exists():
            raise ClipError("unknown_target", f"clip {key!r} is missing from {self.root}", clip=key)
        return path

    def info(self, name: str) -> ClipInfo:
        """What the store recorded about ``name`` (an id, or a label as typed)."""
        key = self._key(name)
        if key in BUNDLED:
            return self._bundled_info(key)
        return self._clips[key]

    def free_bytes(self) -> int:
        """Free space on the clips' filesystem (what an upload may still take)."""
        return shutil.disk_usage(self.root).free

    def identify(self, name: object) -> tuple[str, str]:
        """The id and label a new clip called ``name`` gets, or ClipError.

        An id as such (``morning-news``) is kept, and replaces that clip (its label stays
        when it has one). A natural name (``Bản tin sáng``) becomes its slug; if another
        clip, with another label, has that id, ``-2``, ``-3``… is added; the same label
        again replaces its clip.
        """
        label = _label(name)
        exact = label.lower()
        if len(exact) <= MAX_NAME and _NAME.fullmatch(exact):
            if exact in BUNDLED:
                raise ClipError(
                    "bad_args",
                    f"{exact!r} is a bundled clip and cannot be replaced",
                    reason="clip_bundled",
                    field="name",
                    clip=exact,
                )
            old = self._clips.get(exact)
            return exact, old.label if old is not None and old.label else label
        slug = slugify(label)
        if not slug:
            raise ClipError(
                "bad_args",
                "the name has no letter or digit to make an id of",
                reason="clip_name_unusable",
                field="name",
            )
        key, count = slug, 1
        while True:
            old = self._clips.get(key)
            if key not in BUNDLED and (old is None or old.label == label):
                return key, label
            count += 1
            key = f"{slug[: MAX_NAME - len(str(count)) - 1]}-{count}"

    async def delete(self, name: str, *, in_use: Collection[str] = ()) -> ClipInfo:
        """Remove a stored clip (its file, label and index entry); ClipError when it is
        bundled (``clip_bundled``), missing (``clip_not_found``) or named in ``in_use``
        (``clip_in_use``: playing, queued, or named by a schedule)."""
        key = self._key(name)
        if key in BUNDLED:
            raise ClipError(
                "forbidden",
                f"{key!r} comes with the gateway and cannot be deleted",
                reason="clip_bundled",
                clip=key,
            )
        if key in in_use:
            raise ClipError(
                "busy",
                f"clip {key!r} is playing, queued or named by a schedule",
                reason="clip_in_use",
                clip=key,
            )
        async with self._writing(key), self._lock:
            info = self._clips.get(key)
            if info is None:  # deleted while this waited
                raise ClipError("unknown_target", f"no clip {key!r}", clip=key)
            # The file first: a crash after this leaves an index entry the next start
            # drops (its file is gone), never a clip that comes back.
            await asyncio.to_thread((self.root / f"{key}.{info.format}").unlink, missing_ok=True)
            del self._clips[key]
            await asyncio.to_thread(self._save)
            await asyncio.to_thread((self.root / f"{key}{_LABEL}").unlink, missing_ok=True)
        _log.info("pa.clip_deleted", clip=key)
        return info

    def list(self) -> list[ClipInfo]:
        """Every clip, bundled first, then by name."""
        bundled = [self._bundled_info(name) for name in BUNDLED]
        return bundled + [self._clips[name] for name in sorted(self._clips)]

    # Adding.

    async def add(self, name: str, data: bytes) -> ClipInfo:
        """Store ``data`` as clip ``name`` (an id, or a natural name that becomes the
        label, see :meth:`identify`) once it decodes."""
        key, label = self._upload_key(name, len(data))
        self._need_room(len(data))
        async with self._writing(key):
            temp = self._temp(key)
            try:
                await asyncio.to_thread(_write_file, temp, data)
                digest = hashlib.sha256(data).hexdigest()
                return await self._commit(key, temp, digest, len(data), label)
            finally:
                await asyncio.to_thread(temp.unlink, missing_ok=True)

    async def add_file(self, name: str, path: Path, *, sha256: str, size: int) -> ClipInfo:
        """Store the file at ``path`` as clip ``name`` once it decodes, by moving it into
        place: an upload streamed to the card (``sha256`` and ``size`` computed on the
        way) is never read into memory. ``path`` must be on the clip store's filesystem;
        the caller removes it if the clip is refused."""
        key, label = self._upload_key(name, size)
        async with self._writing(key):
            return await self._commit(key, path, sha256.lower(), size, label)

    def check_fetch(self, name: str, url: str, sha256: str) -> str:
        """What can be judged of a fetch before it starts, at once: the clip's stored name,
        or ClipError (``bad_args``, ``forbidden``, ``busy``, ``no_space``). A URL that
        names a refused address is ``forbidden`` here; a host name is judged when it is
        resolved, during the download.

        ``pa.clip.fetch`` calls this to refuse at once; :meth:`fetch` checks it again.
        """
        key, _ = self.identify(name)
        if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256.lower()):
            raise ClipError(
                "bad_args",
                "sha256 must be 64 hexadecimal digits",
                reason="clip_checksum_format",
                field="sha256",
            )
        if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https"):
            raise ClipError(
                "bad_args", f"not an http(s) URL: {url!r}", reason="fetch_url", field="url"
            )
        try:
            self.guard.check_url(url)
        except RefusedAddressError as exc:
            raise ClipError("forbidden", f"refused to connect: {exc}") from exc
        if self._fetching >= self.max_fetches:
            raise ClipError(
                "busy", f"{self._fetching} clips are being fetched; try again when one is done"
            )
        self._need_room(self.max_bytes * (self._fetching + 1))
        return key

    async def fetch(
        self,
        name: str,
        url: str,
        sha256: str,
        *,
        timeout_s: float = 60.0,
    ) -> ClipInfo:
        """Download ``url`` as clip ``name``: size cap, timeout, at most 5 redirects,
        every connection through :attr:`guard`.

        The sha256 is checked, then the content decoded, and only then is the file
        renamed into place; on any failure nothing of the download remains. A fetch of a
        name that is being written waits for that write (the later one wins); fetches of
        other names, and everything else, go on meanwhile.
        """
        key = self.check_fetch(name, url, sha256)
        _, label = self.identify(name)
        self._fetching += 1
        try:
            async with self._writing(key):
                return await self._fetch(key, url, sha256.lower(), timeout_s, label)
        finally:
            self._fetching -= 1

    # Internals.

    def _upload_key(self, name: str, size: int) -> tuple[str, str]:
        """The id and label of an upload of ``size`` bytes, or ClipError (bundled name,
        bad name, too large, empty)."""
        key, label = self.identify(name)
        if size > self.max_bytes:
            raise ClipError(
                "too_large",
                f"{size} bytes; the cap is {self.max_bytes}",
                bytes=size,
                max_bytes=self.max_bytes,
            )
        if size <= 0:
            raise ClipError("bad_audio", "the upload is empty")
        return key, label

    def _key(self, name: str) -> str:
        """The id of a stored or bundled clip named by its id or by its label."""
        if isinstance(name, str):
            lowered = name.lower()
            if lowered in BUNDLED or lowered in self._clips:
                return lowered
            label = unicodedata.normalize("NFC", name).strip()
            for key, info in self._clips.items():
                if info.label and info.label == label:
                    return key
        shown = name if isinstance(name, str) else repr(name)
        raise ClipError("unknown_target", f"no clip {shown!r}", clip=shown)

    def _temp(self, key: str) -> Path:
        return self.root / f"{_TEMP_PREFIX}{key}-{secrets.token_hex(4)}"

    def _need_room(self, size: int) -> None:
        """ClipError("no_space") unless the card has ``size`` bytes free for clips."""
        free = shutil.disk_usage(self.root).free
        if free < size:
            raise ClipError(
                "no_space",
                f"{free} bytes free in {self.root}; a clip may need {size}",
                free_bytes=free,
                needed_bytes=size,
            )

    @asynccontextmanager
    async def _writing(self, key: str) -> AsyncIterator[None]:
        """Writes of one name one after the other, in the order they came."""
        lock, users = self._writers.get(key, (asyncio.Lock(), 0))
        self._writers[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._writers[key]
            if users == 1:
                del self._writers[key]
            else:
                self._writers[key] = (lock, users - 1)

    async def _fetch(
        self,
        key: str,
        url: str,
        sha256: str,
        timeout_s: float,
        label: str,
    ) -> ClipInfo:
        temp = self._temp(key)
        try:
            try:
                size = await download(
                    url,
                    temp,
                    sha256=sha256,
                    max_bytes=self.max_bytes,
                    timeout_s=timeout_s,
                    guard=self.guard,
                )
            except FetchError as exc:
                _log.warning(
                    "pa.clip_fetch_failed", clip=key, url=url, reason=exc.key, detail=exc.detail
                )
                raise ClipError(exc.key, str(exc)) from exc
            return await self._commit(key, temp, sha256, size, label)
        finally:
            await asyncio.to_thread(temp.unlink, missing_ok=True)

    def _probe(self, path: Path, stop: threading.Event | None = None) -> tuple[str, float]:
        # numpy and libsndfile are loaded by the first decode, not at start-up.
        from gateway.pa.decode import probe  # noqa: PLC0415

        return probe(
            path,
            max_duration_s=self.max_duration_s,
            timeout_s=self.probe_timeout_s,
            stop=stop,
        )

    async def _commit(self, key: str, temp: Path, sha256: str, size: int, label: str) -> ClipInfo:
        """Decode-check ``temp`` in a thread, then rename it into place and record it
        (its label first, in the sidecar beside it)."""
        stop = threading.Event()  # a cancelled command stops the thread's decoding too
        try:
            fmt, duration = await asyncio.to_thread(self._probe, temp, stop)
        except DecodeError as exc:
            message = str(exc).replace(temp.name, key)
            _log.warning("pa.clip_refused", clip=key, reason=exc.key, error=message)
            raise ClipError(exc.key, message) from exc
        finally:
            stop.set()
        info = ClipInfo(key, size, sha256, duration, fmt, label=label)
        async with self._lock:
            old = self._clips.get(key)
            final = self.root / f"{key}.{fmt}"
            await asyncio.to_thread(write_atomic, self.root / f"{key}{_LABEL}", label)
            await asyncio.to_thread(temp.replace, final)
            if old is not None and old.format != fmt:
                await asyncio.to_thread((self.root / f"{key}.{old.format}").unlink, missing_ok=True)
            self._clips[key] = info
            await asyncio.to_thread(self._save)
        _log.info("pa.clip_stored", clip=key, bytes=size, duration_s=round(duration, 3))
        return info

    def _bundled_info(self, key: str) -> ClipInfo:
        info = self._bundled.get(key)
        if info is None:
            path = BUNDLED_DIR / f"{key}.wav"
            data = path.read_bytes()
            fmt, duration = self._probe(path)
            info = ClipInfo(key, len(data), hashlib.sha256(data).hexdigest(), duration, fmt, True)
            self._bundled[key] = info
        return info

    def _save(self) -> None:
        entries = {name: asdict(info) for name, info in sorted(self._clips.items())}
        write_atomic(self.root / _INDEX, json.dumps(entries, indent=1) + "\n")

    def _load(self) -> dict[str, ClipInfo]:
        """Read the index; drop entries whose file is gone, adopt files it misses.

        A crash between renaming a clip into place and rewriting the index leaves a file
        the index does not know; it is checked and recorded here rather than lost.
        """
        for stale in self.root.glob(f"{_TEMP_PREFIX}*"):
            stale.unlink(missing_ok=True)
        clips: dict[str, ClipInfo] = {}
        try:
            raw = json.loads((self.root / _INDEX).read_text(encoding="utf-8"))
            for name, entry in raw.items():
                info = ClipInfo(**entry)
                if (self.root / f"{name}.{info.format}").exists():
                    clips[name] = info
        except FileNotFoundError:
            pass
        except (ValueError, TypeError, AttributeError) as exc:
            _log.warning("pa.clip_index_unreadable", error=str(exc))
        changed = False
        for path in sorted(self.root.iterdir()):
            key, _, ext = path.name.partition(".")
            if path.name == _INDEX or ext == _LABEL[1:] or key in clips or not path.is_file():
                continue
            try:
                key = normalise_name(key)
                fmt, duration = self._probe(path)
            except (ClipError, DecodeError) as exc:
                _log.warning("pa.clip_ignored", file=path.name, reason=str(exc))
                continue
            if fmt != ext:
                continue
            data = path.read_bytes()
            label = _read_label(self.root / f"{key}{_LABEL}") or key
            digest = hashlib.sha256(data).hexdigest()
            clips[key] = ClipInfo(key, len(data), digest, duration, fmt, label=label)
            changed = True
        if changed:
            self._clips = clips
            self._save()
        return clips


def _read_label(path: Path) -> str | None:
    """A clip's label from its sidecar, or None when it has none (an older clip)."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text[:MAX_LABEL] or None


def _write_file(path: Path, data: bytes) -> None:
    """Write and flush to the card, so the rename that follows publishes whole data."""
    with path.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
