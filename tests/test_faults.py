"""Faults a village gateway meets in the field, made real: a broker certificate signed by
another CA, a wrong broker password, a full SD card, an outbox file that is garbage.

Brokers are real mosquitto processes on 127.0.0.1; the full disk is a small tmpfs the
test mounts itself (root only); the corrupt file is met by the real daemon process.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from gateway.component import Backoff, Health
from gateway.config import Settings, load_settings
from gateway.daemon.app import App
from gateway.outbox import Outbox
from gateway.state import StateStore
from gateway.uplink.link import Link
from tests.conftest import Broker, ConfigFile, Daemon, free_port
from tests.test_app import http_get, running, wait_for
from tests.test_link import settings_for, subscriber
from tests.tls import Mosquitto, make_password_file, make_pki

pytestmark = pytest.mark.slow

HANG_S = 3.0
"""An append on a healthy outbox commits in milliseconds; this long means it hangs."""


# --------------------------------------------------------------------------- helpers


@asynccontextmanager
async def link_running(settings: Settings, outbox: Outbox) -> AsyncIterator[Link]:
    """Run a real Link over ``outbox`` until the block ends."""
    link = Link(
        settings,
        outbox,
        StateStore(),
        started_at="2024-01-01T00:00:00+07:00",
        boot_count=1,
        clock_synced=lambda: False,
    )
    task = asyncio.create_task(link.run(Health("link", critical=False, heartbeat_timeout_s=None)))
    try:
        yield link
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def append_events(outbox: Outbox, first: int, count: int) -> list[int]:
    """Append ``count`` numbered events; returns their seqs."""
    return list(
        await asyncio.gather(
            *(
                outbox.append("events", {"type": "test.fault", "n": n})
                for n in range(first, first + count)
            )
        )
    )


async def committed_events(outbox: Outbox) -> list[dict[str, Any]]:
    """Every event record still in the outbox (delivered or not), in seq order."""
    batch = await outbox.read("events", after_seq=0, max_records=100_000, max_bytes=1 << 30)
    return [] if batch is None else [json.loads(body) for body in batch.bodies]


def with_mqtt(settings: Settings, **values: Any) -> Settings:
    """The same settings with some ``mqtt`` keys changed (as an operator's fix would)."""
    return settings.model_copy(update={"mqtt": settings.mqtt.model_copy(update=values)})


def toml_path(path: Path) -> str:
    """A path as a TOML string value."""
    return json.dumps(str(path))


# --------------------------------------------------------------------------- broker faults


async def test_wrong_ca_is_named_retried_and_loses_nothing(
    tmp_path: Path, config_file: ConfigFile
) -> None:
    """An operator who installs the wrong CA file sees a last_error that says the
    broker's certificate is not signed by mqtt.ca_file; the gateway keeps trying with
    backoff, and every record appended meanwhile waits in the outbox (none dropped).
    After the right CA is configured, a commune-side subscriber on that broker receives
    every one of them."""
    pki_dir = tmp_path / "pki"
    pki_dir.mkdir()
    pki = make_pki(pki_dir)
    plain_port = free_port()
    # One mosquitto: the gateway's TLS listener (client certificate required) and a plain
    # loopback listener for the commune-side subscriber of tests/test_link.py.
    tls = Mosquitto(
        tmp_path,
        f"""\
        cafile {pki.ca_cert}
        certfile {pki.server_cert}
        keyfile {pki.server_key}
        require_certificate true
        listener {plain_port} 127.0.0.1
        allow_anonymous true
        """,
    )
    tls.start()
    try:
        settings, gateway = settings_for(
            config_file,
            Broker(tmp_path, port=tls.port),
            ca_file=toml_path(pki.other_ca_cert),
            cert_file=toml_path(pki.client_cert),
            key_file=toml_path(pki.client_key),
            max_backoff_s="1",
        )
        outbox = await Outbox.open(tmp_path / "outbox", commit_window_s=0.01)
        try:
            before = await append_events(outbox, 0, 20)
            async with link_running(settings, outbox) as link:
                await wait_for(lambda: link.stats.attempts >= 2, 10)
                during = await append_events(outbox, 20, 20)
                await wait_for(lambda: link.stats.attempts >= 4, 15)
                error = link.stats.last_error
                assert not link.stats.connected
                assert link.stats.connects == 0
            assert error is not None
            assert "certificate is not signed by mqtt.ca_file" in error
            assert "CERTIFICATE_VERIFY_FAILED" in error
            stats = outbox.stats()
            assert stats.depth["events"] == len(before + during) == 40
            assert stats.dropped["events"] == 0
            assert outbox.delivered("events") == 0
            assert [r["n"] for r in await committed_events(outbox)] == list(range(40))

            fixed = with_mqtt(settings, ca_file=pki.ca_cert)
            commune = Broker(tmp_path, port=plain_port)
            async with (
                subscriber(commune, f"vg/v1/{gateway}/events") as seen,
                link_running(fixed, outbox) as link,
            ):
                await wait_for(lambda: len({r["seq"] for r in seen.records("events")}) >= 40, 15)
                await wait_for(lambda: outbox.delivered("events") == 40, 5)
                assert link.stats.last_error is None
            by_seq = {r["seq"]: r["n"] for r in seen.records("events")}
            assert by_seq == {seq: n for n, seq in enumerate(before + during)}
            assert outbox.stats().depth["events"] == 0
        finally:
            await outbox.close()
    finally:
        tls.stop()


async def test_wrong_password_is_named_retried_and_loses_nothing(
    tmp_path: Path, config_file: ConfigFile
) -> None:
    """With a wrong password in mqtt.password_file the gateway's last_error sends the
    operator to mqtt.username and mqtt.password_file; it keeps retrying and keeps every
    record. Once the right password is in the file, the broker acknowledges them all."""
    make_password_file(tmp_path / "passwd", "gw-thu", "dung-mat-khau")
    broker = Mosquitto(
        tmp_path,
        f"""\
        allow_anonymous false
        password_file {tmp_path / "passwd"}
        """,
    )
    broker.start()
    try:
        wrong = tmp_path / "wrong-password"
        wrong.write_text("sai-mat-khau\n", encoding="utf-8")
        settings, _ = settings_for(
            config_file,
            Broker(tmp_path, port=broker.port),
            username='"gw-thu"',
            password_file=toml_path(wrong),
            max_backoff_s="1",
        )
        outbox = await Outbox.open(tmp_path / "outbox", commit_window_s=0.01)
        try:
            seqs = await append_events(outbox, 0, 25)
            async with link_running(settings, outbox) as link:
                await wait_for(lambda: link.stats.attempts >= 3, 15)
                seqs += await append_events(outbox, 25, 5)
                error = link.stats.last_error
                assert link.stats.connects == 0
            assert error is not None
            assert "mqtt.username and mqtt.password_file" in error
            stats = outbox.stats()
            assert stats.depth["events"] == 30
            assert stats.dropped["events"] == 0
            assert outbox.delivered("events") == 0

            right = tmp_path / "right-password"
            right.write_text("dung-mat-khau\n", encoding="utf-8")
            async with link_running(with_mqtt(settings, password_file=right), outbox) as link:
                await wait_for(lambda: outbox.delivered("events") == 30, 15)
                assert link.stats.connects == 1
            assert seqs == list(range(1, 31))
        finally:
            await outbox.close()
    finally:
        broker.stop()


# --------------------------------------------------------------------------- full disk


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs mounted at a folder of the test: an SD card that fills up."""
    mount = shutil.which("mount")
    umount = shutil.which("umount")
    if os.geteuid() != 0:
        pytest.skip(f"mounting a tmpfs needs root; these tests run as uid {os.geteuid()}")
    if mount is None or umount is None:
        pytest.skip("the mount/umount commands are not installed")
    point = tmp_path / "disk"
    point.mkdir()
    result = subprocess.run(
        [mount, "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"`mount -t tmpfs` failed here: {result.stderr.strip() or result.returncode}")
    try:
        yield point
    finally:
        done = subprocess.run([umount, str(point)], capture_output=True, check=False)
        if done.returncode != 0:  # something still holds a file open: detach it anyway
            subprocess.run([umount, "-l", str(point)], capture_output=True, check=False)


def fill_up(path: Path) -> None:
    """Write zeros to ``path`` until the disk says it is full."""
    chunk = b"\0" * 65536
    with path.open("ab") as handle:
        while True:
            try:
                handle.write(chunk)
                handle.flush()
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                return


async def test_full_disk_fails_the_append_clearly_and_recovers(small_disk: Path) -> None:
    """When the SD card fills up, the append that does not fit fails at once with a clear
    error instead of hanging; every record committed before stays readable; once space is
    freed, appending works again and numbering continues without a gap."""
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * 384 * 1024)
    outbox = await Outbox.open(
        small_disk / "state", max_bytes=64 * 1024 * 1024, commit_window_s=0.01
    )
    try:
        committed: list[int] = []
        failure: OSError | None = None
        for n in range(5000):
            try:
                async with asyncio.timeout(HANG_S):
                    seq = await outbox.append(
                        "events", {"type": "test.fill", "n": n, "pad": "x" * 2000}
                    )
            except TimeoutError:
                pytest.fail(
                    f"append #{n} neither committed nor failed within {HANG_S} s after "
                    f"{len(committed)} records: the outbox hangs on a full disk"
                )
            except OSError as exc:
                failure = exc
                break
            committed.append(seq)
        assert failure is not None, "the 2 MiB disk never filled up"
        assert "could not commit" in str(failure)
        assert len(committed) > 10
        assert committed == list(range(1, len(committed) + 1))
        assert [r["seq"] for r in await committed_events(outbox)] == committed

        filler.unlink()
        async with asyncio.timeout(HANG_S):
            after = await outbox.append("events", {"type": "test.after"})
        assert after == committed[-1] + 1
        records = await committed_events(outbox)
        assert [r["seq"] for r in records] == [*committed, after]
        assert records[-1]["type"] == "test.after"
    finally:
        async with asyncio.timeout(10):
            await outbox.close()


async def test_daemon_keeps_answering_healthz_while_the_disk_is_full(
    small_disk: Path, config_file: ConfigFile
) -> None:
    """With its state folder on a card that fills up while it runs, the daemon can no
    longer store a record, but it keeps answering /healthz with 200 (the outbox is not
    what keeps the lights and the PA working), and it still stops cleanly."""
    config_file.state_dir = small_disk / "state"
    config_file.write(extra="\n[telemetry]\ninterval_s = 1\n")
    app = App(load_settings(config_file.path), backoff=Backoff(initial_s=0.1, cap_s=0.5))
    filler = small_disk / "filler"
    async with running(app):
        outbox = app.outbox
        assert outbox is not None
        fill_up(filler)
        # Whether the append fails (right) or hangs (the bug of the test above), it must
        # not succeed: that proves the full disk reached the outbox.
        with contextlib.suppress(TimeoutError, OSError):
            async with asyncio.timeout(HANG_S):
                seq = await outbox.append("events", {"type": "test.fill", "pad": "x" * 200_000})
                pytest.fail(f"record {seq} was committed: the disk was not full")
        for _ in range(3):
            status, body = await asyncio.to_thread(http_get, config_file.web_port, "/healthz")
            assert status == 200, body
            assert body["problems"] == []
            await asyncio.sleep(0.3)
        filler.unlink()


# --------------------------------------------------------------------------- corrupt file


def test_daemon_starts_over_a_garbage_outbox_and_keeps_the_file(
    config_file: ConfigFile, start_daemon: Callable[..., Daemon]
) -> None:
    """A daemon that finds garbage in its outbox file (a card that lost power mid-write)
    still starts and answers /healthz with 200; the garbage is moved aside as
    outbox.db.corrupt-<time>, byte for byte, for someone to look at, and the log says
    so with an outbox.corrupt line."""
    config_file.state_dir.mkdir(parents=True)
    garbage = b"SQLite format 2\x00" + bytes(range(256)) * 64 + "rác".encode()
    (config_file.state_dir / "outbox.db").write_bytes(garbage)
    daemon = start_daemon("--config", str(config_file.path), web_port=config_file.web_port)
    daemon.wait_healthy(15)
    (moved,) = config_file.state_dir.glob("outbox.db.corrupt-*")
    assert moved.read_bytes() == garbage
    assert (config_file.state_dir / "outbox.db").read_bytes() != garbage
    corrupt = [line for line in daemon.log_lines() if line.get("event") == "outbox.corrupt"]
    assert len(corrupt) == 1, daemon.output()
    assert corrupt[0]["moved_to"] == str(moved)
    assert corrupt[0]["level"] == "error"
    code, _ = daemon.stop()
    assert code == 0, daemon.output()
