"""The ``village-gateway`` command line: thin wrappers over the package.

Exit statuses: 0 success, 1 an unexpected crash, 2 a configuration that cannot be used
(invalid file, unwritable state folder, taken port), each problem named by key or path.
systemd's unit and the installer rely on that distinction.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import zoneinfo
from collections.abc import Sequence
from pathlib import Path

from gateway import __version__
from gateway import send as send_command
from gateway import watch as watch_command
from gateway.config import load_settings
from gateway.errors import ConfigError

__all__ = ["EXIT_BAD_CONFIG", "EXIT_CRASH", "main"]

EXIT_CRASH = 1
EXIT_BAD_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="village-gateway",
        description="The village cultural house gateway: relays, PA, hotspots, MQTT sync.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the daemon")
    run.add_argument("--config", type=Path, help="the TOML configuration file")
    run.add_argument(
        "--demo",
        action="store_true",
        help="run on this machine without hardware: mock GPIO, null audio, loopback only",
    )

    check = commands.add_parser("check-config", help="validate a configuration file")
    check.add_argument("path", type=Path)

    watch = commands.add_parser(
        "watch", help="print what gateways publish, one JSON line per message"
    )
    watch_command.add_arguments(watch)

    send = commands.add_parser(
        "send", help="publish a command to a gateway or group and print its final reply"
    )
    send_command.add_arguments(send)

    password = commands.add_parser(
        "set-password",
        help="set the web UI password (read from stdin) and log every browser out",
    )
    password.add_argument("--config", type=Path, help="the TOML configuration file")

    commands.add_parser("version", help="print the version")
    return parser


def _print_config_error(error: ConfigError) -> None:
    print(f"village-gateway: {error}", file=sys.stderr)


def _check_config(path: Path) -> int:
    try:
        settings = load_settings(path)
        if settings.commands.hmac_key_file is not None:
            # The key is read as the daemon will read it: a short one is refused now.
            from gateway.commands import read_signing_key  # noqa: PLC0415 - keep it light

            read_signing_key(settings.commands.hmac_key_file, name="commands.hmac_key_file")
    except ConfigError as exc:
        _print_config_error(exc)
        return EXIT_BAD_CONFIG
    print(
        f"{path}: ok — gateway {settings.gateway.id}, {len(settings.relays)} relay(s), "
        f"{len(settings.hotspots)} hotspot(s), broker {settings.mqtt.host}:{settings.mqtt.port}"
    )
    return 0


def _run(config: Path | None, *, demo: bool) -> int:
    # Imported here so `check-config` and `version` stay fast and need no hardware libs.
    from gateway.daemon.app import App  # noqa: PLC0415
    from gateway.log import configure_logging, get_logger  # noqa: PLC0415
    from gateway.logupload import LogUploader  # noqa: PLC0415
    from gateway.web.live import LOG_TAP  # noqa: PLC0415

    if demo:
        # gpiozero reads this when the first device is built: simulated pins only.
        os.environ.setdefault("GPIOZERO_PIN_FACTORY", "mock")
    try:
        settings = load_settings(config, demo=demo)
    except ConfigError as exc:
        _print_config_error(exc)
        return EXIT_BAD_CONFIG
    uploader = LogUploader(
        level=settings.log.upload_level, per_minute=settings.log.upload_max_per_min
    )
    configure_logging(
        level=settings.log.level,
        fmt=settings.log.format,
        tz=zoneinfo.ZoneInfo(settings.gateway.timezone),
        sinks=[uploader, LOG_TAP],
    )
    log = get_logger("cli")
    try:
        app = App(settings, config_path=config, demo=demo, uploader=uploader, settle_memory=True)
        return asyncio.run(app.run())
    except ConfigError as exc:
        log.error("startup.failed", problems=[str(p) for p in exc.problems])
        _print_config_error(exc)
        return EXIT_BAD_CONFIG
    except KeyboardInterrupt:  # a second Ctrl-C while stopping
        return 130
    except Exception:
        log.exception("app.crashed")
        return EXIT_CRASH


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``village-gateway`` console script."""
    args = _parser().parse_args(argv)
    if args.command == "version":
        print(__version__)
        return 0
    if args.command == "check-config":
        return _check_config(args.path)
    if args.command == "watch":
        return watch_command.run(args)
    if args.command == "send":
        return send_command.run(args)
    if args.command == "set-password":
        from gateway.web.setpassword import run as set_password  # noqa: PLC0415

        return set_password(args.config)
    return _run(args.config, demo=args.demo)
