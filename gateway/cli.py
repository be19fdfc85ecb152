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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from gateway import __version__
from gateway import send as send_command
from gateway import watch as watch_command
from gateway.checks import CheckReport, check_settings
from gateway.config import Settings, load_settings
from gateway.errors import ConfigError
from gateway.lastgood import Fallback, fall_back

if TYPE_CHECKING:
    from structlog.typing import Processor

__all__ = ["EXIT_BAD_CONFIG", "EXIT_CRASH", "main"]

EXIT_CRASH = 1
EXIT_BAD_CONFIG = 2
DEFAULT_CONFIG = Path("/etc/village-gateway/config.toml")
"""Where install.sh puts the configuration (the unit's ``--config``)."""


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

    backup = commands.add_parser(
        "backup", help="write one archive of this gateway: config, password, schedules, clips"
    )
    _backup_arguments(backup, making=True)
    restore = commands.add_parser(
        "restore", help="check a backup and restore it (the service stopped), all or nothing"
    )
    _backup_arguments(restore, making=False)

    commands.add_parser("version", help="print the version")
    return parser


def _backup_arguments(parser: argparse.ArgumentParser, *, making: bool) -> None:
    """``backup``'s or ``restore``'s options, defined here so that building the parser
    does not import the archive code (:mod:`gateway.backup`: tarfile, gzip) into every
    command, the daemon included."""
    parser.add_argument("file", type=Path, metavar="FILE", help="the archive (.tar.gz)")
    parser.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG,
        metavar="PATH",
        help=f"the configuration file (default {DEFAULT_CONFIG})",
    )
    if making:
        parser.add_argument(
            "--with-outbox",
            action="store_true",
            help="include the outbox: what was not yet sent to the commune",
        )


def _print_config_error(error: ConfigError) -> None:
    print(f"village-gateway: {error}", file=sys.stderr)


def _check_config(path: Path) -> int:
    try:
        settings = load_settings(path)
        report = check_settings(settings)
        report.raise_errors(str(path))
    except ConfigError as exc:
        _print_config_error(exc)
        return EXIT_BAD_CONFIG
    for warning in report.warnings:
        print(f"village-gateway: warning: {warning}", file=sys.stderr)
    print(
        f"{path}: ok — gateway {settings.gateway.id}, {len(settings.relays)} relay(s), "
        f"{len(settings.hotspots)} hotspot(s), broker {settings.mqtt.host}:{settings.mqtt.port}"
        + (f", {len(report.warnings)} warning(s)" if report.warnings else "")
    )
    return 0


def _settings_for_run(
    config: Path | None, *, demo: bool
) -> tuple[Settings, CheckReport, Fallback | None]:
    """The configuration to run: the file if it passes every check (the same as
    ``check-config``), else its last good copy; raises ConfigError when neither will do."""
    try:
        settings = load_settings(config, demo=demo)
        report = check_settings(settings)
        report.raise_errors(str(config) if config else None)
    except ConfigError as exc:
        found = fall_back(config, exc, demo=demo) if config is not None else None
        if found is None:
            raise
        settings, fallback = found
        return settings, check_settings(settings), fallback
    return settings, report, None


def _banner(settings: Settings) -> Processor:
    from gateway.demobanner import DemoBanner  # noqa: PLC0415

    state_dir = settings.gateway.state_dir
    shown = (
        str(state_dir) if "state_dir" in settings.gateway.model_fields_set else "a temporary folder"
    )
    return DemoBanner(host=settings.web.host, state_dir=shown)


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
        settings, report, fallback = _settings_for_run(config, demo=demo)
    except ConfigError as exc:
        _print_config_error(exc)
        return EXIT_BAD_CONFIG
    uploader = LogUploader(
        level=settings.log.upload_level, per_minute=settings.log.upload_max_per_min
    )
    sinks: list[Processor] = [uploader, LOG_TAP]
    if demo:
        sinks.append(_banner(settings))
    configure_logging(
        level=settings.log.level,
        fmt=settings.log.format,
        tz=zoneinfo.ZoneInfo(settings.gateway.timezone),
        sinks=sinks,
    )
    log = get_logger("cli")
    for warning in report.warnings:
        log.warning("config.warning", key=warning.key, problem=warning.message)
    if fallback is not None:
        # Never dark: the village runs on what worked last time, and everyone hears of it.
        for problem in fallback.problems:
            log.error("config.problem", key=problem.key, problem=problem.message)
        log.error(
            "config.fallback",
            config=fallback.config,
            problems=[str(p) for p in fallback.problems],
            running="the last good configuration",
            last_good_saved_at=fallback.copy.saved_at,
        )
        for problem in report.errors:  # the copy itself no longer passes every check
            log.error("config.last_good_problem", key=problem.key, problem=problem.message)
    try:
        app = App(
            settings,
            config_path=config,
            demo=demo,
            uploader=uploader,
            fallback=fallback,
            settle_memory=True,
        )
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


def _version(args: argparse.Namespace) -> int:
    print(__version__)
    return 0


def _backup(args: argparse.Namespace) -> int:
    from gateway.backup import run_backup  # noqa: PLC0415

    return run_backup(args)


def _restore(args: argparse.Namespace) -> int:
    from gateway.backup import run_restore  # noqa: PLC0415

    return run_restore(args)


def _set_password(args: argparse.Namespace) -> int:
    from gateway.web.setpassword import run as set_password  # noqa: PLC0415

    return set_password(args.config)


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "version": _version,
    "check-config": lambda args: _check_config(args.path),
    "watch": watch_command.run,
    "send": send_command.run,
    "backup": _backup,
    "restore": _restore,
    "set-password": _set_password,
    "run": lambda args: _run(args.config, demo=args.demo),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``village-gateway`` console script."""
    args = _parser().parse_args(argv)
    return _COMMANDS[args.command](args)
