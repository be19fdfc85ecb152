"""``village-gateway watch``: print what gateways publish, one JSON line per message.

The commune-side view of the topics in PROTOCOL.md: presence, state snapshots, event,
log and telemetry batches, replies and the commands sent to gateways and groups. Lines go
to stdout so they can be piped into ``jq`` or a file; what happens to the connection goes
to stderr. The watcher keeps running through broker outages, reconnecting with backoff.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import secrets
import sys
from typing import TextIO

import aiomqtt
from paho.mqtt.reasoncodes import ReasonCode

from gateway.config import MqttSection
from gateway.errors import ConfigError
from gateway.uplink.client import (
    Topics,
    add_broker_arguments,
    cli_broker,
    describe_error,
    make_client,
    mqtt_section_from_args,
)

__all__ = ["add_arguments", "main", "run", "watch"]

_EXIT_BAD_CONFIG = 2  # as gateway.cli.EXIT_BAD_CONFIG
_EXIT_INTERRUPTED = 130  # the shell's code for Ctrl-C
_FIRST_BACKOFF_S = 1.0


def _filters(prefix: str, gateway: str | None) -> list[str]:
    """The subscriptions; ValueError for a gateway id that is not one topic level."""
    if gateway is None:
        # P/+/# already matches P/group/+/cmd; a second filter would print those twice
        # (mosquitto delivers one copy per matching subscription).
        return [f"{prefix}/+/#"]
    topics = Topics(prefix, gateway)
    return [topics.gateway_pattern(), topics.group_cmd_pattern()]


def _payload(raw: bytes) -> tuple[object, bool]:
    """The payload for printing, and whether it had to be base64-encoded."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode("ascii"), True
    try:
        decoded = json.loads(text)
    except ValueError:
        return text, False
    # PROTOCOL.md payloads are JSON objects; anything else is shown as the text it was.
    return (decoded if isinstance(decoded, dict) else text), False


def _line(message: aiomqtt.Message) -> str:
    payload, encoded = _payload(bytes(message.payload))
    record: dict[str, object] = {
        "topic": message.topic.value,
        "retained": bool(message.retain),
        "qos": message.qos,
        "payload": payload,
    }
    if encoded:
        record["encoding"] = "base64"
    return json.dumps(record, ensure_ascii=False)


def _backoff_s(failures: int, ceiling_s: float) -> float:
    """1, 2, 4 … seconds up to ``ceiling_s``, the upper half randomised."""
    base = min(ceiling_s, _FIRST_BACKOFF_S * 2.0 ** min(failures, 16))
    return base / 2 + random.uniform(0, base / 2)  # noqa: S311 - jitter, not a secret


async def watch(
    mqtt: MqttSection,
    *,
    gateway: str | None,
    out: TextIO,
    err: TextIO | None = None,
) -> None:
    """Print every message of ``gateway`` (or of all gateways) to ``out`` until cancelled.

    Subscribes to ``P/<gateway or +>/#`` and, for one gateway, ``P/group/+/cmd`` too, at
    QoS 1. Each message becomes one JSON line: ``{"topic", "retained", "qos", "payload"}``
    where the payload is the decoded JSON object, else the UTF-8 text, else base64 (then
    with ``"encoding": "base64"``). Connection news goes to ``err`` (stderr by default);
    on :class:`aiomqtt.MqttError` it reconnects with backoff up to ``mqtt.max_backoff_s``.
    Raises :class:`ConfigError` (not retried) for settings that cannot work, and
    ValueError for a ``gateway`` that is not one topic level.
    """
    err = sys.stderr if err is None else err
    filters = _filters(mqtt.topic_prefix, gateway)
    where = cli_broker(mqtt)
    identifier = f"vg-watch-{secrets.token_hex(4)}"
    failures = 0
    while True:
        client = make_client(mqtt, identifier=identifier)
        connected = False
        try:
            async with client:
                granted = [await client.subscribe(pattern, qos=1) for pattern in filters]
                connected = True
                failures = 0
                _say(err, f"watch: connected to {where}, watching {' and '.join(filters)}")
                for pattern, codes in zip(filters, granted, strict=True):
                    _check_granted(err, pattern, codes)
                async for message in client.messages:
                    out.write(_line(message) + "\n")
                    out.flush()
        except aiomqtt.MqttError as exc:
            delay = _backoff_s(failures, mqtt.max_backoff_s)
            failures += 1
            what = "lost the connection to" if connected else "cannot connect to"
            reason = describe_error(exc, cli=True)
            _say(err, f"watch: {what} {where}: {reason}; retrying in {delay:.1f} s")
            await asyncio.sleep(delay)


def _check_granted(err: TextIO, pattern: str, granted: tuple[int, ...] | list[ReasonCode]) -> None:
    """Say so when the broker refused a subscription (its ACL), which is otherwise silent."""
    for code in granted:
        refused = code.is_failure if isinstance(code, ReasonCode) else code >= 0x80
        if refused:
            _say(
                err,
                f"watch: the broker refused the subscription to {pattern} ({code}): "
                "check the broker's ACL for this user (mqtt.username)",
            )


def _say(err: TextIO, line: str) -> None:
    err.write(line + "\n")
    err.flush()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``watch``'s options to its sub-parser: ``--gateway`` and the broker flags."""
    parser.add_argument(
        "--gateway", metavar="ID", help="only this gateway (and all group commands)"
    )
    add_broker_arguments(parser)


async def main(
    args: argparse.Namespace, *, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """Run ``watch`` from parsed arguments until cancelled; 2 for unusable settings."""
    err = sys.stderr if err is None else err
    gateway: str | None = getattr(args, "gateway", None)
    try:
        mqtt = mqtt_section_from_args(args)
        try:
            _filters(mqtt.topic_prefix, gateway)
        except ValueError as exc:
            raise ConfigError.single("--gateway", str(exc)) from None
        await watch(mqtt, gateway=gateway, out=sys.stdout if out is None else out, err=err)
    except ConfigError as exc:
        err.write(f"village-gateway watch: {exc}\n")
        return _EXIT_BAD_CONFIG
    return 0  # watch() only ends by cancellation; kept for the type checker


def run(args: argparse.Namespace) -> int:
    """The ``watch`` command for ``gateway.cli``: returns the exit status.

    Ctrl-C ends it with 130; a closed stdout (``watch | head``) ends it quietly with 0.
    """
    try:
        return asyncio.run(main(args))
    except KeyboardInterrupt:
        return _EXIT_INTERRUPTED
    except BrokenPipeError:
        # Point stdout at /dev/null so the interpreter's final flush does not complain.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
