"""Commands over a real broker to real daemons, and the commune's `send` command."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import aiomqtt
import pytest

from gateway.send import EXIT_NOT_DONE, build_command, read_hmac_key
from tests.conftest import Broker, ConfigFile, Daemon, clean_env, free_port, wait_online
from tests.test_app import wait_for
from tests.test_link import settings_for, subscriber

pytestmark = pytest.mark.slow


def send(broker: Broker, *args: str) -> subprocess.CompletedProcess[str]:
    """`village-gateway send` as the commune would run it."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "send",
            "--host",
            broker.host,
            "--port",
            str(broker.port),
            *args,
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env=clean_env(),
    )


def daemon_on(
    broker: Broker,
    config_file: ConfigFile,
    start_daemon: Callable[..., Daemon],
    group: str,
    *,
    extra: str = "",
) -> tuple[Daemon, str]:
    """A daemon on the test broker with a fresh id, in ``group``; ``extra`` is appended
    to its configuration file (more tables)."""
    _, gateway = settings_for(config_file, broker)
    text = config_file.path.read_text().replace(
        'groups = ["commune.test"]', f'groups = ["{group}"]'
    )
    config_file.path.write_text(text + extra)
    daemon = start_daemon("--config", str(config_file.path), web_port=config_file.web_port)
    daemon.wait_healthy()
    return daemon, gateway


async def test_send_ping_and_log_level(
    broker: Broker, config_file: ConfigFile, start_daemon: Callable[..., Daemon]
) -> None:
    """`send --gateway ID system.ping` prints the done reply with version and uptime and
    exits 0; `log.level level=DEBUG` changes the level at run time; a bad argument is
    rejected and `send` exits 1."""
    daemon, gateway = daemon_on(broker, config_file, start_daemon, f"g-{uuid.uuid4().hex[:6]}")
    await wait_online(broker, gateway)
    ping = await asyncio.to_thread(send, broker, "--gateway", gateway, "system.ping")
    assert ping.returncode == 0, ping.stderr
    reply = json.loads(ping.stdout)
    assert reply["status"] == "done"
    assert reply["result"]["version"]
    level = await asyncio.to_thread(send, broker, "--gateway", gateway, "log.level", "level=DEBUG")
    assert level.returncode == 0, level.stderr
    bad = await asyncio.to_thread(send, broker, "--gateway", gateway, "log.level", "level=LOUD")
    assert bad.returncode == EXIT_NOT_DONE
    assert json.loads(bad.stdout)["error"]["code"] == "bad_args"
    assert daemon.stop()[0] == 0


async def test_bad_payloads_over_mqtt_get_their_replies(
    broker: Broker, config_file: ConfigFile, start_daemon: Callable[..., Daemon]
) -> None:
    """Raw bad payloads on P/ID/cmd each get the documented reply on P/ID/reply; a
    retained command and a command for a foreign group get none."""
    daemon, gateway = daemon_on(broker, config_file, start_daemon, f"g-{uuid.uuid4().hex[:6]}")
    async with (
        subscriber(broker, f"vg/v1/{gateway}/reply") as seen,
        aiomqtt.Client(broker.host, broker.port) as commune,
    ):
        await wait_online(broker, gateway)
        cmd = f"vg/v1/{gateway}/cmd"
        await commune.publish(cmd, b"not json", qos=1)
        await commune.publish(cmd, b'{"id": "u-1", "type": "relay.fly", "args": {}}', qos=1)
        await commune.publish(cmd, b"\xff\xfe", qos=1)
        await commune.publish(cmd, b"[" * 10_000, qos=1)
        await commune.publish(
            cmd, b'{"id": "r-1", "type": "system.ping", "args": {}}', qos=1, retain=True
        )
        await commune.publish(
            "vg/v1/group/not.ours/cmd",
            b'{"id": "f-1", "type": "system.ping", "args": {}}',
            qos=1,
        )
        await commune.publish(cmd, b'{"id": "d-1", "type": "system.ping", "args": {}}', qos=1)
        # The same id with other bytes is a duplicate; the very same bytes again (a
        # broker's redelivery) are not answered twice.
        await commune.publish(cmd, b'{"id": "d-1", "type": "system.ping", "args": {} }', qos=1)
        await commune.publish(cmd, b'{"id": "d-1", "type": "system.ping", "args": {}}', qos=1)
        # Commands run in arrival order: once the last one is answered, a reply to any
        # of the ignored ones would have come before it.
        await commune.publish(cmd, b'{"id": "end", "type": "system.ping", "args": {}}', qos=1)
        await wait_for(lambda: any(r["id"] == "end" for r in seen.on("/reply")), 10)
        await commune.publish(cmd, b"", qos=1, retain=True)  # clear the retained one
    replies = [r for r in seen.on("/reply") if r["id"] != "end"]
    codes = [(r["id"], r["status"], (r.get("error") or {}).get("code")) for r in replies]
    assert (None, "rejected", "bad_json") in codes
    assert ("u-1", "rejected", "unknown_type") in codes
    assert ("d-1", "done", None) in codes
    assert ("d-1", "duplicate", "duplicate") in codes
    assert [c for c in codes if c[0] == "d-1"].count(("d-1", "done", None)) == 1
    assert len([c for c in codes if c[0] == "d-1"]) == 2
    assert all(r["id"] not in {"r-1", "f-1"} for r in replies)
    assert len(replies) == 6
    lines = daemon.log_lines()
    assert any(line["event"] == "command.retained_ignored" for line in lines)
    assert daemon.stop()[0] == 0


async def test_each_command_gets_exactly_one_reply_in_order(
    broker: Broker, config_file: ConfigFile, start_daemon: Callable[..., Daemon]
) -> None:
    """Replies leave at once and their outbox copies are not published again; commands
    run in the order they were sent: 50 alternating relay.set commands in a burst get 50
    replies, one per id, in order, and the relay ends in the last command's state."""
    daemon, gateway = daemon_on(broker, config_file, start_daemon, f"g-{uuid.uuid4().hex[:6]}")
    async with (
        subscriber(broker, f"vg/v1/{gateway}/#") as seen,
        aiomqtt.Client(broker.host, broker.port) as commune,
    ):
        await wait_online(broker, gateway)
        for n in range(50):
            args = {"relay": "yard", "on": n % 2 == 0}  # the last one (n = 49) is off
            body = {"id": f"one-{n}", "type": "relay.set", "args": args}
            await commune.publish(f"vg/v1/{gateway}/cmd", json.dumps(body).encode(), qos=1)
        await wait_for(lambda: len(seen.on("/reply")) >= 50, 20)

        def settled_off() -> bool:
            states = seen.on("/state/relays")
            yard = states[-1]["relays"]["yard"] if states else {}
            return yard.get("on") is False and yard.get("pending") is None

        await wait_for(settled_off, 10)
        await asyncio.sleep(1.5)  # time for any second copy of a reply to show up
    ids = [r["id"] for r in seen.on("/reply")]
    assert ids == [f"one-{n}" for n in range(50)]
    assert all(r["status"] == "done" for r in seen.on("/reply"))
    assert daemon.stop()[0] == 0


async def test_group_command_reaches_every_gateway(
    broker: Broker, tmp_path: Path, start_daemon: Callable[..., Daemon]
) -> None:
    """A group command reaches each of three gateways in the group; `send --group`
    prints the three done replies and exits 0."""
    group = f"commune.g{uuid.uuid4().hex[:6]}"
    daemons = []
    for n in range(3):
        folder = tmp_path / f"gw{n}"
        folder.mkdir()
        config = ConfigFile(folder / "config.toml", folder / "state", free_port(), free_port())
        config.write()
        daemons.append(daemon_on(broker, config, start_daemon, group))
    for _, gateway in daemons:
        await wait_online(broker, gateway)
    result = await asyncio.to_thread(
        send, broker, "--group", group, "--timeout", "4", "system.ping"
    )
    assert result.returncode == 0, result.stderr
    replies = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(replies) == 3
    assert all(r["status"] == "done" for r in replies)
    for daemon, _ in daemons:
        assert daemon.stop()[0] == 0


def test_send_without_target_is_a_usage_error(broker: Broker) -> None:
    """`send` needs exactly one of --gateway and --group; it says so and exits 2."""
    result = send(broker, "system.ping")
    assert result.returncode == 2
    assert "exactly one of --gateway or --group" in result.stderr


def test_send_signs_as_documented(tmp_path: Path) -> None:
    """With a key, the envelope carries issued_at (with a UTC offset) and ``sig``: the hex
    HMAC-SHA256 of the command without ``sig``, JSON with sorted keys, no spaces, UTF-8,
    as docs/protocol.md says; the key file is read as bytes, surrounding whitespace
    stripped (as the daemon reads commands.hmac_key_file)."""
    key_file = tmp_path / "key"
    key_file.write_bytes(b"  commune-s3cret-of-32-bytes-or-more\n")
    key = read_hmac_key(key_file)
    assert key == b"commune-s3cret-of-32-bytes-or-more"
    command = build_command("relay.set", ["relay=đèn", "on=true"], ttl_s=60, hmac_key=key)
    assert datetime.fromisoformat(command["issued_at"]).utcoffset() is not None
    unsigned = {k: v for k, v in command.items() if k != "sig"}
    text = json.dumps(unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert command["sig"] == hmac.new(key, text.encode(), hashlib.sha256).hexdigest()
    assert "sig" not in build_command("system.ping", [])


def test_send_refuses_an_unusable_key_file(broker: Broker, tmp_path: Path) -> None:
    """A missing, unreadable (a folder), empty or too short (under 32 bytes)
    --hmac-key-file is a usage error naming the flag and the file: exit 2, nothing is
    published."""
    empty, short = tmp_path / "empty", tmp_path / "short"
    empty.write_bytes(b" \n")
    short.write_bytes(b"s3cret\n")
    for path in (tmp_path / "missing", tmp_path, empty, short):
        result = send(broker, "--gateway", "gw", "--hmac-key-file", str(path), "system.ping")
        assert result.returncode == 2, result.stderr
        assert f"--hmac-key-file: {path}" in result.stderr
        assert result.stdout == ""


async def test_signed_commands_over_mqtt(
    broker: Broker, config_file: ConfigFile, start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    """A gateway with commands.hmac_key_file runs `send --hmac-key-file` with the same key
    (done) and refuses a command without a signature or signed with another key
    (rejected, forbidden; send exits 1)."""
    key_file, other = tmp_path / "hmac.key", tmp_path / "other.key"
    key_file.write_bytes(b"village-secret-of-at-least-32-bytes\n")
    other.write_bytes(b"not-the-key-but-also-32-bytes-long")
    daemon, gateway = daemon_on(
        broker,
        config_file,
        start_daemon,
        f"g-{uuid.uuid4().hex[:6]}",
        extra=f'\n[commands]\nhmac_key_file = "{key_file}"\n',
    )
    await wait_online(broker, gateway)
    signed = await asyncio.to_thread(
        send, broker, "--gateway", gateway, "--hmac-key-file", str(key_file), "system.ping"
    )
    assert signed.returncode == 0, signed.stdout + signed.stderr
    assert json.loads(signed.stdout)["status"] == "done"
    for flags in ([], ["--hmac-key-file", str(other)]):
        refused = await asyncio.to_thread(send, broker, "--gateway", gateway, *flags, "system.ping")
        assert refused.returncode == EXIT_NOT_DONE, refused.stdout + refused.stderr
        reply = json.loads(refused.stdout)
        assert (reply["status"], reply["error"]["code"]) == ("rejected", "forbidden")
    assert daemon.stop()[0] == 0


async def test_relay_commands_over_mqtt(
    broker: Broker, config_file: ConfigFile, start_daemon: Callable[..., Daemon]
) -> None:
    """`send relay.set relay=yard on=true` switches the yard light (state/relays, retained,
    says on and manual); `relay.auto` hands it back to its schedule; an unknown relay is
    rejected with unknown_target and changes nothing."""
    daemon, gateway = daemon_on(broker, config_file, start_daemon, f"g-{uuid.uuid4().hex[:6]}")
    async with subscriber(broker, f"vg/v1/{gateway}/state/relays") as seen:
        await wait_online(broker, gateway)
        on = await asyncio.to_thread(
            send, broker, "--gateway", gateway, "relay.set", "relay=yard", "on=true"
        )
        assert on.returncode == 0, on.stdout + on.stderr
        assert json.loads(on.stdout)["result"]["on"] is True
        await wait_for(
            lambda: any(
                s["relays"]["yard"]["on"] and s["relays"]["yard"]["mode"] == "manual"
                for s in seen.on("/state/relays")
            ),
            5,
        )
        auto = await asyncio.to_thread(
            send, broker, "--gateway", gateway, "relay.auto", "relay=yard"
        )
        assert auto.returncode == 0, auto.stdout + auto.stderr
        await wait_for(
            lambda: seen.on("/state/relays")[-1]["relays"]["yard"]["mode"] == "schedule", 5
        )
        unknown = await asyncio.to_thread(
            send, broker, "--gateway", gateway, "relay.set", "relay=moon", "on=true"
        )
        assert unknown.returncode == EXIT_NOT_DONE
        assert json.loads(unknown.stdout)["error"]["code"] == "unknown_target"
    assert daemon.stop()[0] == 0


async def test_schedule_set_over_mqtt(
    broker: Broker, config_file: ConfigFile, start_daemon: Callable[..., Daemon]
) -> None:
    """`schedule.set` replaces the schedules (stored in state_dir/schedules.json); one for
    an unknown relay, two overlapping rows of one relay, a bad time, or a bad or foreign
    time zone is rejected as a whole, with the reason and the row counted from 1 in the
    reply's `error.detail`, and the stored schedules stay."""
    daemon, gateway = daemon_on(broker, config_file, start_daemon, f"g-{uuid.uuid4().hex[:6]}")
    await wait_online(broker, gateway)
    good = '[{"relay": "yard", "on": "sunset+10m", "off": "22:30"}]'
    done = await asyncio.to_thread(
        send, broker, "--gateway", gateway, "schedule.set", f"schedules={good}"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    stored = json.loads((config_file.state_dir / "schedules.json").read_text())
    bad_inputs = {
        "unknown_target": '[{"relay": "moon", "on": "18:00", "off": "22:00"}]',
        "bad_args": '[{"relay": "yard", "on": "18:00", "off": "22:00"},'
        ' {"relay": "yard", "on": "21:00", "off": "23:00"}]',
    }
    reasons = {"unknown_target": ("unknown_relay", 1), "bad_args": ("overlap", 2)}
    for code, schedules in bad_inputs.items():
        result = await asyncio.to_thread(
            send, broker, "--gateway", gateway, "schedule.set", f"schedules={schedules}"
        )
        assert result.returncode == EXIT_NOT_DONE, result.stdout + result.stderr
        error = json.loads(result.stdout)["error"]
        assert error["code"] == code
        assert (error["detail"]["reason"], error["detail"]["row"]) == reasons[code]
    bad_time = await asyncio.to_thread(
        send,
        broker,
        "--gateway",
        gateway,
        "schedule.set",
        'schedules=[{"relay": "yard", "on": "25:00", "off": "26:00"}]',
    )
    assert json.loads(bad_time.stdout)["error"]["code"] == "bad_args"
    for zone in ("Mars/Olympus", "Europe/Paris"):
        bad_zone = await asyncio.to_thread(
            send,
            broker,
            "--gateway",
            gateway,
            "schedule.set",
            f"schedules={good}",
            f"timezone={zone}",
        )
        assert json.loads(bad_zone.stdout)["error"]["code"] == "bad_args", bad_zone.stdout
    assert json.loads((config_file.state_dir / "schedules.json").read_text()) == stored
    assert daemon.stop()[0] == 0


async def test_hotspots_probe_over_mqtt(
    broker: Broker, config_file: ConfigFile, start_daemon: Callable[..., Daemon]
) -> None:
    """`send hotspots.probe` probes every hotspot at once and the reply carries each
    one's result (here the hall hotspot is the daemon's own web port: up)."""
    daemon, gateway = daemon_on(broker, config_file, start_daemon, f"g-{uuid.uuid4().hex[:6]}")
    await wait_online(broker, gateway)
    result = await asyncio.to_thread(send, broker, "--gateway", gateway, "hotspots.probe")
    assert result.returncode == 0, result.stdout + result.stderr
    hall = json.loads(result.stdout)["result"]["hotspots"]["hall"]
    assert hall["probes"][0]["ok"] is True
    assert daemon.stop()[0] == 0
