"""Exit codes and domain exceptions.

Library code raises these; only ``mpsctl.cli`` turns them into exit codes and
one-line messages on stderr. Nothing here imports click.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Exit statuses of every command except ``probe`` and ``status``."""

    OK = 0
    FAILURE = 1
    USAGE = 2
    #: another mpsctl run holds the lock (start/stop/restart/fix)
    LOCKED = 75  # EX_TEMPFAIL from sysexits.h: "try again later" is what cron should read
    #: ``fix --if-unhealthy`` gave up: the service is down and the restart budget is spent
    GAVE_UP = 69  # EX_UNAVAILABLE from sysexits.h: a person must look before it runs again
    #: ``start NAME`` refused: the planned memory of every service would exceed the host's
    OVER_BUDGET = 78  # EX_CONFIG from sysexits.h: the configuration must change first
    #: ``start --foreground``: the service already runs outside the unit that started it
    ALREADY_RUNNING = 73  # EX_CANTCREAT: a unit's RestartPreventExitStatus= names it
    INTERRUPTED = 130


class ProbeExit(IntEnum):
    """Monitoring-plugin convention (Nagios, Icinga, Sensu)."""

    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3


class StatusExit(IntEnum):
    """LSB init-script status codes."""

    RUNNING = 0
    DEAD_PIDFILE = 1
    NOT_RUNNING = 3
    UNKNOWN = 4


class MpsctlError(Exception):
    """An expected failure: the CLI prints ``str(exc)`` on one line and exits ``exit_code``."""

    exit_code: int = ExitCode.FAILURE

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class ConfigError(MpsctlError):
    """Invalid settings: a bad file, key, value or environment variable."""

    exit_code = ExitCode.USAGE


class UsageError(MpsctlError):
    """A command line that cannot be acted on (e.g. several services and no name)."""

    exit_code = ExitCode.USAGE


class OverBudgetError(MpsctlError):
    """Starting a service would put the planned sum of the host's services over its ceiling."""

    exit_code = ExitCode.OVER_BUDGET


class LockedError(MpsctlError):
    """Another mpsctl run holds the lock."""

    exit_code = ExitCode.LOCKED


class ServiceError(MpsctlError):
    """The service could not be started, stopped or reached."""


class ClientError(MpsctlError):
    """An HTTP request to the service failed; ``kind`` names the failure for JSON output."""

    def __init__(self, message: str, *, kind: str, exit_code: int | None = None) -> None:
        super().__init__(message, exit_code=exit_code)
        self.kind = kind
