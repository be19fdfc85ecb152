"""``village-gateway send``: the commune side — publish one command, wait for its reply.

``send --gateway ID TYPE key=value ...`` publishes to ``P/ID/cmd`` and prints the final
reply as JSON; ``--group G`` publishes to ``P/group/G/cmd`` and prints the final reply of
every gateway that answers within the timeout. Values are JSON where they parse as JSON
(``on=true``, ``for_s=600``, ``schedules=[...]``), strings otherwise (``relay=yard``).
With ``--hmac-key-file PATH`` the command carries ``sig``, signed as the gateway checks it
(:func:`gateway.commands.sign`), for gateways that set ``commands.hmac_key_file``.
Exit status (each kind of outcome its own, for scripts; docs/protocol.md lists them):
0 every final reply is ``done``; 2 bad options or an unusable key file; 3 no final reply
within ``--timeout``; 4 a final reply other than ``done`` (rejected, failed, expired);
5 the broker cannot be reached or refused the login; 1 is left to a crash.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from pathlib import Path
from typing import Any, Final, TextIO

import aiomqtt

from gateway.clock import now_iso
from gateway.commands import read_signing_key, sign
from gateway.errors import ConfigError
from gateway.uplink.client import (
    Topics,
    add_broker_arguments,
    cli_broker,
    describe_error,
    make_client,
    mqtt_section_from_args,
)

__all__ = [
    "EXIT_BAD_OPTIONS",
    "EXIT_NOT_DONE",
    "EXIT_NO_BROKER",
    "EXIT_TIMEOUT",
    "add_arguments",
    "build_command",
    "read_hmac_key",
    "run",
]

EXIT_BAD_OPTIONS = 2
EXIT_TIMEOUT = 3
EXIT_NOT_DONE = 4
EXIT_NO_BROKER = 5

HMAC_FLAG: Final = "--hmac-key-file"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``send``'s options: target, type, key=value arguments, timeout, broker flags."""
    parser.add_argument("--gateway", metavar="ID", help="the gateway that runs the command")
    parser.add_argument("--group", metavar="G", help="send to every gateway in group G")
    parser.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds to wait for the final reply (default 30)",
    )
    parser.add_argument("--ttl", type=int, metavar="S", help="ttl_s of the command")
    parser.add_argument(
        HMAC_FLAG,
        type=Path,
        metavar="PATH",
        help="sign the command with the key in this file (the gateway's commands.hmac_key_file)",
    )
    parser.add_argument("type", metavar="TYPE", help="command type, e.g. relay.set")
    parser.add_argument("args", nargs="*", metavar="KEY=VALUE", help="command arguments")
    add_broker_arguments(parser)


def _value(text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def read_hmac_key(path: Path) -> bytes:
    """The signing key in ``path``, read as the daemon reads commands.hmac_key_file;
    raises :class:`ConfigError` naming the flag."""
    return read_signing_key(path, name=HMAC_FLAG)


def build_command(
    type_: str, pairs: list[str], *, ttl_s: int | None = None, hmac_key: bytes | None = None
) -> dict[str, Any]:
    """The command envelope for ``TYPE key=value ...`` with a fresh id and issued_at,
    signed (``sig``) when ``hmac_key`` is given. ``issued_at`` is always there: a gateway
    with a key requires it (a signed command without it could be replayed forever)."""
    args: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ConfigError.single(pair, "arguments are KEY=VALUE")
        args[key] = _value(text)
    command: dict[str, Any] = {
        "id": f"send-{uuid.uuid4().hex[:16]}",
        "type": type_,
        "args": args,
        "issued_at": now_iso(),
    }
    if ttl_s is not None:
        command["ttl_s"] = ttl_s
    if hmac_key is not None:
        command["sig"] = sign(command, hmac_key)
    return command


async def send(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Publish, collect final replies, print them; returns the exit status."""
    if bool(args.gateway) == bool(args.group):
        err.write("village-gateway send: give exactly one of --gateway or --group\n")
        return EXIT_BAD_OPTIONS
    try:
        mqtt = mqtt_section_from_args(args)
        key = read_hmac_key(args.hmac_key_file) if args.hmac_key_file is not None else None
        command = build_command(args.type, args.args, ttl_s=args.ttl, hmac_key=key)
        topics = Topics(mqtt.topic_prefix, args.gateway or "commune")
    except (ConfigError, ValueError) as exc:
        err.write(f"village-gateway send: {exc}\n")
        return EXIT_BAD_OPTIONS
    target = topics.cmd if args.gateway else topics.group_cmd(args.group)
    replies_from = topics.reply if args.gateway else f"{mqtt.topic_prefix}/+/reply"
    finals: dict[str, dict[str, Any]] = {}
    try:
        async with make_client(mqtt, identifier=f"vg-send-{uuid.uuid4().hex[:8]}") as client:
            await client.subscribe(replies_from, qos=1)
            await client.publish(target, json.dumps(command).encode(), qos=1)
            try:
                async with asyncio.timeout(args.timeout):
                    async for message in client.messages:
                        reply = _decode(message.payload)
                        if reply is None or reply.get("id") != command["id"]:
                            continue
                        if reply.get("status") == "accepted":
                            err.write(f"accepted by {message.topic.value.split('/')[-2]}\n")
                            continue
                        sender = message.topic.value.split("/")[-2]
                        finals[sender] = reply
                        out.write(json.dumps(reply, ensure_ascii=False) + "\n")
                        out.flush()
                        if args.gateway:
                            break
            except TimeoutError:
                if not finals:
                    err.write(
                        f"village-gateway send: no final reply within {args.timeout} s from "
                        f"{args.gateway or 'group ' + args.group} via {cli_broker(mqtt)}\n"
                    )
                    return EXIT_TIMEOUT
    except aiomqtt.MqttError as exc:
        reason = describe_error(exc, cli=True)
        err.write(f"village-gateway send: cannot reach {cli_broker(mqtt)}: {reason}\n")
        return EXIT_NO_BROKER
    except ConfigError as exc:
        err.write(f"village-gateway send: {exc}\n")
        return EXIT_BAD_OPTIONS
    return (
        0 if finals and all(r.get("status") == "done" for r in finals.values()) else EXIT_NOT_DONE
    )


def _decode(payload: object) -> dict[str, Any] | None:
    if not isinstance(payload, bytes | bytearray):
        return None
    try:
        body = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return body if isinstance(body, dict) else None


def run(args: argparse.Namespace) -> int:
    """The ``send`` command for ``gateway.cli``."""
    try:
        return asyncio.run(send(args, sys.stdout, sys.stderr))
    except KeyboardInterrupt:
        return 130
