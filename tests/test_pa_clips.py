"""Clip names as the village head types them, labels beside ids, deleting, free space.

The store is the real one (gateway.pa.clips) on real decoded audio; the command path is
a real Dispatcher and outbox over the PA component; uploads go through the real web API.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.commands import Dispatcher
from gateway.config import load_settings
from gateway.events import EventHub
from gateway.outbox import Outbox
from gateway.pa import PublicAddress
from gateway.pa.clips import BUNDLED, ClipError, ClipStore, slugify
from gateway.state import StateStore
from tests.conftest import ConfigFile
from tests.test_pa_media import write_tone
from tests.webrig import web_rig


@pytest.fixture
def tone(tmp_path: Path) -> bytes:
    """Three seconds of a real MP3."""
    return write_tone(tmp_path / "tone.mp3", "mp3").read_bytes()


def files(root: Path) -> list[str]:
    return sorted(path.name for path in root.iterdir())


class TestNames:
    @pytest.mark.parametrize(
        ("name", "slug"),
        [
            ("Bản tin sáng", "ban-tin-sang"),
            ("Đội văn nghệ thôn Đông", "doi-van-nghe-thon-dong"),
            ("  Thông báo: họp dân 19h!  ", "thong-bao-hop-dan-19h"),
            ("Ca khúc “Quê hương”", "ca-khuc-que-huong"),
            ("!!!", ""),
        ],
    )
    def test_slugs_fold_vietnamese(self, name: str, slug: str) -> None:
        """An id is derived from a Vietnamese name: diacritics folded, đ becomes d, every
        other run of characters one dash; nothing usable gives nothing."""
        assert slugify(name) == slug

    async def test_natural_name_becomes_id_and_label(self, tmp_path: Path, tone: bytes) -> None:
        """The village head uploads "Bản tin sáng": it is stored as ``ban-tin-sang`` with
        the name kept as its label, listed with it, found by either, and the label
        survives a restart and a lost index (it sits in a file beside the clip)."""
        root = tmp_path / "clips"
        store = ClipStore(root)
        info = await store.add("Bản tin sáng", tone)
        assert (info.name, info.label) == ("ban-tin-sang", "Bản tin sáng")
        listed = {clip.as_dict()["name"]: clip.as_dict() for clip in store.list()}
        assert listed["ban-tin-sang"]["label"] == "Bản tin sáng"
        assert listed["chime"]["label"] == "chime"  # bundled clips show their id
        assert store.info("Bản tin sáng") == info
        assert store.path("ban-tin-sang") == root / "ban-tin-sang.mp3"
        assert (root / "ban-tin-sang.label").read_text(encoding="utf-8") == "Bản tin sáng"
        assert ClipStore(root).info("ban-tin-sang") == info
        (root / "index.json").unlink()
        assert ClipStore(root).info("ban-tin-sang").label == "Bản tin sáng"

    async def test_same_label_replaces_another_gets_a_suffix(
        self, tmp_path: Path, tone: bytes
    ) -> None:
        """Uploading "Bản tin sáng" again replaces it; "Bản tin Sáng!" (another name with
        the same id) is kept beside it as ``ban-tin-sang-2``; an id typed as such
        replaces that clip and keeps its label."""
        store = ClipStore(tmp_path / "clips")
        first = await store.add("Bản tin sáng", tone)
        again = await store.add("Bản tin sáng", tone)
        other = await store.add("Bản tin Sáng!", tone)
        by_id = await store.add("ban-tin-sang", tone)
        assert first.name == again.name == by_id.name == "ban-tin-sang"
        assert (other.name, other.label) == ("ban-tin-sang-2", "Bản tin Sáng!")
        assert by_id.label == "Bản tin sáng"
        assert [c.name for c in store.list()] == [*BUNDLED, "ban-tin-sang", "ban-tin-sang-2"]

    @pytest.mark.parametrize(
        ("name", "code", "reason"),
        [
            ("", "bad_args", "clip_name_empty"),
            ("   ", "bad_args", "clip_name_empty"),
            ("B" * 65, "bad_args", "clip_label_too_long"),
            ("!!!", "bad_args", "clip_name_unusable"),
            ("../x", "bad_args", "clip_label_format"),
            ("tin\x00sáng", "bad_args", "clip_label_format"),
            ("chime", "bad_args", "clip_bundled"),
        ],
    )
    async def test_bad_names_are_refused_and_nothing_is_stored(
        self, tmp_path: Path, tone: bytes, name: str, code: str, reason: str
    ) -> None:
        """Each bad name gets its code and reason (in the name field), and the store is
        as it was: no file, no index entry."""
        root = tmp_path / "clips"
        store = ClipStore(root)
        await store.add("Bản tin sáng", tone)
        before = files(root)
        with pytest.raises(ClipError) as caught:
            await store.add(name, tone)
        assert (caught.value.key, caught.value.reason) == (code, reason)
        assert caught.value.detail("file")["field"] == "name"
        assert files(root) == before
        assert [c.name for c in store.list()] == [*BUNDLED, "ban-tin-sang"]

    def test_a_64_character_label_is_fine(self, tmp_path: Path) -> None:
        """The limit is 64 characters, counted as characters, not bytes."""
        store = ClipStore(tmp_path / "clips")
        assert store.identify("Ư" * 64) == ("u" * 64, "Ư" * 64)


class TestDelete:
    async def test_delete_removes_file_label_and_entry_for_good(
        self, tmp_path: Path, tone: bytes
    ) -> None:
        """A deleted clip is gone from the list, the folder and the index, and does not
        come back after a restart."""
        root = tmp_path / "clips"
        store = ClipStore(root)
        await store.add("Bản tin sáng", tone)
        await store.add("Nhạc chào cờ", tone)
        deleted = await store.delete("ban-tin-sang")
        assert deleted.label == "Bản tin sáng"
        assert files(root) == ["index.json", "nhac-chao-co.label", "nhac-chao-co.mp3"]
        assert [c.name for c in ClipStore(root).list()] == [*BUNDLED, "nhac-chao-co"]

    @pytest.mark.parametrize(
        ("clip", "in_use", "code", "reason"),
        [
            ("no-such-clip", (), "unknown_target", "clip_not_found"),
            ("../x", (), "unknown_target", "clip_not_found"),
            ("../../clips/ban-tin-sang.mp3", (), "unknown_target", "clip_not_found"),
            ("chime", (), "forbidden", "clip_bundled"),
            ("ban-tin-sang", ("ban-tin-sang",), "busy", "clip_in_use"),
        ],
    )
    async def test_refused_deletes_lose_nothing(  # noqa: PLR0917 - the case's facts
        self,
        tmp_path: Path,
        tone: bytes,
        clip: str,
        in_use: tuple[str, ...],
        code: str,
        reason: str,
    ) -> None:
        """A missing clip, a path, a bundled clip and one in use are refused with their
        reason; every file stays."""
        root = tmp_path / "clips"
        store = ClipStore(root)
        await store.add("Bản tin sáng", tone)
        before = files(root)
        with pytest.raises(ClipError) as caught:
            await store.delete(clip, in_use=in_use)
        assert (caught.value.key, caught.value.reason) == (code, reason)
        assert files(root) == before
        assert (tmp_path / "x").exists() is False


@dataclass
class Pa:
    """The PA component behind a real Dispatcher and outbox."""

    component: PublicAddress
    dispatcher: Dispatcher
    scheduled: set[str]

    async def command(self, kind: str, args: dict[str, Any]) -> dict[str, Any]:
        envelope = {"id": f"web-{uuid.uuid4().hex[:8]}", "type": kind, "args": args}
        return (await self.dispatcher.dispatch(envelope, "web")).as_dict()


@pytest.fixture
async def pa(config_file: ConfigFile) -> AsyncIterator[Pa]:
    """The PA as the daemon builds it (null backend), a schedule naming one clip."""
    scheduled: set[str] = set()
    settings = load_settings(config_file.path)
    component = PublicAddress(
        settings, state=StateStore(), on_event=lambda event: None, clip_users=lambda: scheduled
    )
    outbox = await Outbox.open(config_file.state_dir / "outbox", commit_window_s=0.01)
    dispatcher = Dispatcher(
        state_dir=config_file.state_dir,
        handlers=component.handlers(),
        outbox=outbox,
        events=EventHub(outbox, lambda event, seq: None),
        clock_synced=lambda: True,
    )
    component.open()
    try:
        yield Pa(component, dispatcher, scheduled)
    finally:
        dispatcher.close()
        component.close()
        await outbox.close()


class TestCommands:
    async def test_pa_clip_delete_replies(self, pa: Pa, tone: bytes) -> None:
        """`pa.clip.delete` of a clip a schedule names is refused (`clip_in_use`), of a
        missing clip or a path `clip_not_found`, each with `error.detail` naming the
        `clip` argument; once no schedule names it, it is deleted."""
        store = pa.component.clips
        await store.add("Bản tin sáng", tone)
        pa.scheduled.add("ban-tin-sang")
        cases = [
            ("ban-tin-sang", "busy", "clip_in_use"),
            ("no-such-clip", "unknown_target", "clip_not_found"),
            ("../x", "unknown_target", "clip_not_found"),
            ("test-tone", "forbidden", "clip_bundled"),
        ]
        for clip, code, reason in cases:
            reply = await pa.command("pa.clip.delete", {"clip": clip})
            assert reply["status"] == "rejected", reply
            assert reply["error"]["code"] == code
            assert reply["error"]["detail"] == {"reason": reason, "field": "clip", "clip": clip}
        assert store.info("ban-tin-sang").label == "Bản tin sáng"
        pa.scheduled.clear()
        done = await pa.command("pa.clip.delete", {"clip": "ban-tin-sang"})
        assert done["result"] == {"deleted": "ban-tin-sang", "label": "Bản tin sáng"}
        missing = await pa.command("pa.play", {"clip": "ban-tin-sang"})
        assert missing["error"]["detail"]["reason"] == "clip_not_found"

    async def test_a_clip_playing_now_cannot_be_deleted(self, pa: Pa, tone: bytes) -> None:
        """While "Bản tin sáng" plays (asked for by its label), deleting it is refused."""
        await pa.component.clips.add("Bản tin sáng", tone)
        played = await pa.command("pa.play", {"clip": "Bản tin sáng", "priority": "live"})
        assert played["result"]["clip"] == "ban-tin-sang"
        reply = await pa.command("pa.clip.delete", {"clip": "ban-tin-sang"})
        assert reply["error"]["detail"]["reason"] == "clip_in_use"
        assert pa.component.clips.info("ban-tin-sang")

    async def test_fetch_with_a_natural_name_is_refused_at_once_when_bad(self, pa: Pa) -> None:
        """`pa.clip.fetch` judges the name as an upload does: a 65-character name, an
        empty one and "!!!" are refused at once with their reason in the `name` field."""
        url, digest = "http://127.0.0.1:9/x", "0" * 64
        for name, reason in [
            ("B" * 65, "clip_label_too_long"),
            ("", "clip_name_empty"),
            ("!!!", "clip_name_unusable"),
        ]:
            reply = await pa.command("pa.clip.fetch", {"name": name, "url": url, "sha256": digest})
            assert reply["status"] == "rejected"
            detail = reply["error"]["detail"]
            assert (detail["reason"], detail["field"]) == (reason, "name")


def upload(name: str, data: bytes) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("name", name)
    form.add_field("file", data, filename="clip.mp3")
    return form


class TestWeb:
    async def test_upload_keeps_the_label_and_the_list_shows_free_space(
        self, tmp_path: Path, tone: bytes
    ) -> None:
        """Through the web API: "Bản tin sáng" is stored as ``ban-tin-sang`` with its
        label; the list gives every clip's label and the free space of the card; a
        65-character name, "!!!" and a text file are refused with their reason, and the
        list is unchanged."""
        store = ClipStore(tmp_path / "clips", max_bytes=100_000)
        async with web_rig(tmp_path / "state", clips=store) as rig:
            await rig.login()
            response = await rig.post("/api/v1/clips", data=upload("Bản tin sáng", tone))
            assert response.status == 200, await response.text()
            clip = (await response.json())["clip"]
            assert (clip["name"], clip["label"]) == ("ban-tin-sang", "Bản tin sáng")
            refused = [
                ("B" * 65, tone, 400, "clip_label_too_long", "name"),
                ("!!!", tone, 400, "clip_name_unusable", "name"),
                ("Tin ngắn", b"not audio\n" * 200, 400, "clip_format", "file"),
                ("Tin dài", bytes(150_000), 413, "clip_too_large", "file"),
            ]
            for name, data, status, reason, field in refused:
                response = await rig.post("/api/v1/clips", data=upload(name, data))
                body = await response.json()
                assert response.status == status, body
                detail = body["error"]["detail"]
                assert (detail["reason"], detail["field"]) == (reason, field)
            listing = await (await rig.client.get("/api/v1/clips")).json()
        assert [c["name"] for c in listing["clips"]] == [*BUNDLED, "ban-tin-sang"]
        assert listing["clips"][-1]["label"] == "Bản tin sáng"
        assert isinstance(listing["free_bytes"], int)
        assert listing["free_bytes"] > 0
        assert json.loads((tmp_path / "clips" / "index.json").read_text())["ban-tin-sang"]
