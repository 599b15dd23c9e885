"""Is the service run by a systemd user unit or a launchd agent? Then do not fight it.

``mpsctl cron --systemd`` / ``--launchd`` print a unit that runs ``mpsctl start
--foreground`` and restarts it when it crashes. Once that unit runs the service, ``mpsctl
stop`` would kill a process the unit then restarts (or marks failed), and ``mpsctl start``
would start a second copy outside the unit that fights it for the port. This module asks
the service manager whether its unit is loaded and running, and says what to run instead.

The manager is asked through one seam, a :data:`Runner` (argv -> exit status and stdout),
so that the parsing can be tested on Linux without a systemd user manager or launchd.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mpsctl.settings import Settings

#: argv -> (exit status, stdout); 127 and "" when the program does not exist
Runner = Callable[[Sequence[str]], tuple[int, str]]
Action = Literal["start", "stop", "restart", "status"]

LABEL_PREFIX = "io.github.mpsctl"
#: ActiveState values of a unit whose process is (or is about to be) running
_SYSTEMD_LIVE = {"active", "activating", "reloading", "deactivating"}
_UNIT_CHARS = re.compile(r"[^A-Za-z0-9:_.\\-]")


def systemd_unit_name(settings: Settings) -> str:
    """``mpsctl-serve.service`` for service.name ``mpsctl-serve``; ``mpsctl-NAME`` otherwise."""
    name = _UNIT_CHARS.sub("-", settings.service.name).strip("-") or "service"
    if not name.startswith("mpsctl"):
        name = f"mpsctl-{name}"
    return f"{name}.service"


def launchd_label(settings: Settings) -> str:
    """The label of the launchd agent that runs the service itself."""
    name = _UNIT_CHARS.sub("-", settings.service.name).strip("-") or "service"
    return f"{LABEL_PREFIX}.{name}"


def launchd_plist_path(label: str) -> str:
    return f"~/Library/LaunchAgents/{label}.plist"


def run_command(argv: Sequence[str]) -> tuple[int, str]:
    """The default :data:`Runner`: a real subprocess, 5 s at most, stderr dropped."""
    try:
        done = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return 127, ""
    return done.returncode, done.stdout


def parse_systemctl_show(text: str) -> dict[str, str]:
    """``systemctl show -p A,B UNIT`` prints one ``Name=value`` line per property."""
    props: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip():
            props[name.strip()] = value.strip()
    return props


_LAUNCHCTL_LINE = re.compile(r'^\s*"(?P<key>[^"]+)"\s*=\s*(?P<value>[^;{(]*?)\s*;\s*$')


def parse_launchctl_list(text: str) -> dict[str, str]:
    """The scalar keys of ``launchctl list LABEL`` (``"PID" = 123;``, ``"Label" = "x";``).

    Nested dictionaries and arrays (``ProgramArguments``, ``MachServices``) are skipped.
    """
    props: dict[str, str] = {}
    depth = 0
    for line in text.splitlines():
        stripped = line.strip()
        match = _LAUNCHCTL_LINE.match(line)
        if match and depth == 1:
            props[match["key"]] = match["value"].strip('"')
        depth += stripped.count("{") + stripped.count("(")
        depth -= stripped.count("}") + stripped.count(")")
    return props


@dataclass(frozen=True)
class Supervision:
    """A unit of a service manager that runs (or will restart) the service."""

    manager: Literal["systemd", "launchd"]
    unit: str  # systemd unit name, or launchd label
    active: bool  # its process runs now (or is starting / stopping)
    main_pid: int | None
    state: str  # systemd ActiveState; launchd "running" / "loaded"
    uid: int
    last_exit: int | None = None  # launchd's LastExitStatus (a wait status)

    @property
    def stopped_by_operator(self) -> bool:
        """The manager stopped it on request (``systemctl stop``: ActiveState inactive; a
        launchd agent whose service last exited 0 or by SIGTERM), not a failure: the
        watchdog must not bring back what the operator stopped."""
        if self.active:
            return False
        if self.manager == "systemd":
            return self.state == "inactive"
        return self.last_exit in (0, 15)

    def command(self, action: Action) -> list[str]:
        """The argv that does ``action`` through the manager instead of around it."""
        if self.manager == "systemd":
            return ["systemctl", "--user", action, self.unit]
        target = f"gui/{self.uid}/{self.unit}"
        if action == "stop":
            # bootout unloads the agent: KeepAlive no longer applies until it is loaded again
            return ["launchctl", "bootout", target]
        if action == "restart":
            return ["launchctl", "kickstart", "-k", target]  # -k: kill the running one first
        if action == "start":
            return ["launchctl", "kickstart", target]
        return ["launchctl", "print", target]

    def describe(self) -> str:
        kind = "systemd unit" if self.manager == "systemd" else "launchd agent"
        pid = f", main pid {self.main_pid}" if self.main_pid else ""
        return f"managed by {kind} {self.unit} ({self.state}{pid})"

    def advice(self, action: Action) -> str:
        """One line for ``mpsctl ACTION`` to print instead of acting on its own."""
        run = " ".join(self.command(action))
        if action == "status":
            return f"{self.describe()}; the manager's view: {run}"
        if action == "stop":
            why = "it would restart or mark failed what mpsctl stops"
        elif action == "start" and self.active:
            status = " ".join(self.command("status"))
            return f"{self.describe()}: it runs the service already; see {status}"
        else:
            why = "a copy started outside it would fight it for the port"
        return f"{self.describe()}: {why}; run {run}"


def detect_supervisor(
    settings: Settings,
    *,
    runner: Runner = run_command,
    platform: str = sys.platform,
    uid: int | None = None,
) -> Supervision | None:
    """The unit that manages the service, or None (no unit installed, or no manager)."""
    who = os.getuid() if uid is None else uid
    if platform == "darwin":
        label = launchd_label(settings)
        code, out = runner(["launchctl", "list", label])
        if code != 0:  # "Could not find service" when the agent is not loaded
            return None
        props = parse_launchctl_list(out)
        pid = _positive_int(props.get("PID"))
        state = "running" if pid else "loaded"
        last = props.get("LastExitStatus")
        last_exit = int(last) if last is not None and last.lstrip("-").isdigit() else None
        return Supervision("launchd", label, pid is not None, pid, state, who, last_exit)
    unit = systemd_unit_name(settings)
    code, out = runner(["systemctl", "--user", "show", "-p", "LoadState,ActiveState,MainPID", unit])
    if code != 0:  # no user manager (a container, an ssh session without lingering)
        return None
    props = parse_systemctl_show(out)
    if props.get("LoadState") in (None, "not-found", "masked"):
        return None
    state = props.get("ActiveState", "unknown")
    return Supervision(
        "systemd", unit, state in _SYSTEMD_LIVE, _positive_int(props.get("MainPID")), state, who
    )


def _positive_int(text: str | None) -> int | None:
    try:
        value = int(text or "")
    except ValueError:
        return None
    return value if value > 0 else None


def unit_file_candidates(settings: Settings, platform: str = sys.platform) -> list[Path]:
    """Where the manager loads the service's unit from (user units / agents only)."""
    home = Path(os.environ.get("HOME") or Path.home())
    if platform == "darwin":
        return [home / "Library" / "LaunchAgents" / f"{launchd_label(settings)}.plist"]
    config = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config")
    data = Path(os.environ.get("XDG_DATA_HOME") or home / ".local" / "share")
    unit = systemd_unit_name(settings)
    dirs = [config / "systemd" / "user", data / "systemd" / "user", Path("/etc/systemd/user"),
            Path("/usr/lib/systemd/user"), Path("/usr/local/lib/systemd/user")]  # fmt: skip
    return [d / unit for d in dirs]


def find_supervisor(settings: Settings) -> Supervision | None:
    """:func:`detect_supervisor`, asked only when a unit file for the service is installed.

    Most services run without a unit: then no ``systemctl`` / ``launchctl`` process is run
    at all, so ``status`` and the cron watchdog stay fast.
    """
    if not any(path.exists() for path in unit_file_candidates(settings)):
        return None
    # looked up at call time: the one seam through which tests answer for the manager
    return detect_supervisor(settings, runner=run_command)
