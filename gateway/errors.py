"""The one root of every error the gateway raises on purpose.

Kept in a module of its own, with no imports from the rest of the package, so any module
can raise these without an import loop. Each error carries a stable ``key``: the
``error.code`` of PROTOCOL.md where one applies, otherwise a short dotted name that the
web UI translates and operators can search for in the logs.
"""

from __future__ import annotations

from dataclasses import dataclass


class GatewayError(Exception):
    """Root of the gateway's own errors."""

    key: str = "gateway.error"


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong with a configuration, tied to the key (or path) it concerns."""

    key: str
    message: str
    reason: str | None = None
    """A stable reason code where the rule that failed has one (schedules: ``time_format``)."""

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


class ConfigError(GatewayError, ValueError):
    """The configuration cannot be used; lists every problem, each naming its key.

    The command line exits with status 2 on this error, distinct from a crash (1).
    """

    key = "config.invalid"
    summary = "invalid configuration"

    def __init__(self, problems: list[ConfigProblem], *, source: str | None = None) -> None:
        self.problems = problems
        self.source = source
        where = f" in {source}" if source else ""
        lines = [f"{self.summary}{where} ({len(problems)} problem(s)):"]
        lines += [f"  - {problem}" for problem in problems]
        super().__init__("\n".join(lines))

    @classmethod
    def single(cls, key: str, message: str, *, source: str | None = None) -> ConfigError:
        """Build the error for one problem, the common case outside validation."""
        return cls([ConfigProblem(key, message)], source=source)


class StartupError(ConfigError):
    """The configuration is valid but this machine cannot run it (port taken, dir read-only)."""

    key = "startup.failed"
    summary = "cannot start with this configuration"
