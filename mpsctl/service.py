"""A service: its name, its settings and where its state lives.

One settings file may name several services (``[services.NAME]`` tables) or one
(``[service]``, or no file: the reference service). Each is a :class:`Service`; its state
(pidfile, lock, probe history, fix's audit trail, the OOM cursor, alert state) lives in its
own directory: ``MPSCTL_HOME`` itself for the one service of a ``[service]`` file, so that
nothing moves for a single service, and ``MPSCTL_HOME/services/NAME`` for each of several.

The modules that write a state file own its name (``observe/processes/pidfile.py``'s pidfile,
``control/lock.py``'s lock...) and take the directory from ``settings.home``; this module
names them for display and for the commands that work on several services at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mpsctl.errors import UsageError
from mpsctl.settings import Settings
from mpsctl.settings_services import start_order

#: the state files of one service, relative to its state directory; a test keeps these
#: equal to the paths their owning modules compute
STATE_FILES = {
    "pidfile": "service.pid",
    "lock": "mpsctl.lock",
    "cursor": "oom_cursor.json",
    "audit": "history/fix.jsonl",
    "history": "history",
    "alert_state": "alert_state.json",
}


@dataclass(frozen=True)
class Service:
    """One configured service: what every per-service command takes."""

    settings: Settings

    @property
    def name(self) -> str:
        return self.settings.service.name

    @property
    def state_dir(self) -> Path:
        return self.settings.home

    def state_path(self, what: str) -> Path:
        """``pidfile``, ``lock``, ``cursor``, ``audit``, ``history`` or ``alert_state``."""
        return self.state_dir / STATE_FILES[what]

    @property
    def pidfile(self) -> Path:
        return self.state_path("pidfile")

    @property
    def lock(self) -> Path:
        return self.state_path("lock")


def several(settings: Settings) -> bool:
    """True when the file names several services (``[services.NAME]`` tables)."""
    return bool(settings.members)


def services(settings: Settings) -> list[Service]:
    """Every configured service, in start order (``after``), else the file's order."""
    if not settings.members:
        return [Service(settings)]
    return [Service(member) for member in start_order(settings.members)]


def select(
    settings: Settings, names: Sequence[str], *, all_: bool = False, changes: bool = False
) -> list[Service]:
    """The services a command works on, in start order.

    Names pick those services (an unknown name is a usage error naming the configured
    ones). No name: the one service; with several, every one for a command that only
    reads, and a usage error for one that ``changes`` something unless ``all_`` is given.
    """
    every = services(settings)
    by_name = {s.name: s for s in every}
    if names and all_:
        raise UsageError("give service names or --all, not both")
    if names:
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise UsageError(f"no service named {unknown[0]!r}; configured: {', '.join(by_name)}")
        wanted = set(names)
        return [s for s in every if s.name in wanted]
    if changes and len(every) > 1 and not all_:
        raise UsageError(
            f"several services are configured ({', '.join(by_name)}): "
            "name the ones to act on, or pass --all"
        )
    return every
