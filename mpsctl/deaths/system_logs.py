"""Where the operating system records the kills it makes, read only where readable.

Linux: the kernel ring buffer through ``journalctl -k`` (or ``dmesg`` where there is no
journal), and the files syslog daemons write it to: /var/log/kern.log, /var/log/syslog,
/var/log/messages. macOS: ``log show`` for memorystatus (jetsam) lines, and the
JetsamEvent-*.ips reports under /Library/Logs/DiagnosticReports and
~/Library/Logs/DiagnosticReports.

Commands run through one seam, a :data:`Runner` (argv -> exit status, stdout, stderr), so
that the parsing is tested on recorded outputs where the command cannot run. Every place
looked in is reported with what came of it: read, "not readable without privileges" (a
kernel log an unprivileged user may not read is not a log without kills), or absent.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mpsctl.deaths.counting import Found

#: argv -> (exit status, stdout, stderr); 127 when the program does not exist
Runner = Callable[[Sequence[str]], tuple[int, str, str]]

LINUX_FILES = ("/var/log/kern.log", "/var/log/syslog", "/var/log/messages")
MACOS_REPORT_DIRS = ("/Library/Logs/DiagnosticReports", "~/Library/Logs/DiagnosticReports")
MACOS_PREDICATE = 'eventMessage CONTAINS "memorystatus" OR eventMessage CONTAINS "jetsam"'
UNREADABLE = "not readable without privileges"
#: how far back the commands look (the service's death is recent when it is asked about)
LOOK_BACK = "1d"
_PRIVILEGE_WORDS = (
    "Operation not permitted",
    "Permission denied",
    "not seeing messages from other users",
    "must be admin",
    "requires root",
)


def run_command(argv: Sequence[str], timeout: float = 20.0) -> tuple[int, str, str]:
    """Run a reader; 127 when it does not exist, 124 when it took too long."""
    try:
        proc = subprocess.run(
            list(argv), capture_output=True, text=True, errors="replace", timeout=timeout,
            check=False,
        )  # fmt: skip
    except FileNotFoundError:
        return 127, "", ""
    except subprocess.TimeoutExpired:
        return 124, "", f"{argv[0]}: timed out"
    except OSError as exc:
        return 126, "", str(exc)
    return proc.returncode, proc.stdout, proc.stderr


@dataclass(frozen=True)
class Place:
    """One place looked in and what came of it: ``read``, ``unreadable``, ``absent``."""

    name: str
    outcome: str
    detail: str | None = None

    def text(self) -> str:
        if self.outcome == "read":
            return self.name
        if self.outcome == "unreadable":
            return f"{self.name} ({UNREADABLE})"
        return f"{self.name} ({self.detail or 'absent'})"


@dataclass(frozen=True)
class SystemEvidence:
    places: tuple[Place, ...]
    found: tuple[Found, ...]

    @property
    def looked_in(self) -> list[str]:
        return [place.text() for place in self.places]


def _boot_time() -> datetime | None:
    try:
        import psutil

        return datetime.fromtimestamp(psutil.boot_time(), timezone.utc)
    except Exception:  # dmesg's uptime stamps stay undated; the kill is still reported
        return None


def _from_command(
    name: str, argv: Sequence[str], runner: Runner, now: datetime, boot: datetime | None
) -> tuple[Place, list[Found]]:
    code, out, err = runner(argv)
    if code == 127:
        return Place(name, "absent", "not installed"), []
    if "No journal files were found" in err and out.strip() in ("", "-- No entries --"):
        return Place(name, "absent", "no journal files"), []
    # journalctl exits 0 with only a hint when the user may not read the system journal
    privileged = any(word in f"{out}\n{err}" for word in _PRIVILEGE_WORDS)
    if code != 0:
        if privileged:
            return Place(name, "unreadable"), []
        return Place(name, "absent", f"failed with exit status {code}"), []
    from mpsctl.deaths.prefilter import PREFILTER_NEEDLES

    if not any(needle.decode("ascii") in out for needle in PREFILTER_NEEDLES):
        # no line can hold a kill: the parsers (tens of milliseconds) need not load
        return Place(name, "unreadable") if privileged else Place(name, "read"), []
    from mpsctl.deaths.counting import Found
    from mpsctl.deaths.parsers import find_deaths

    events = find_deaths(out, now=now, boot=boot)
    if privileged and not events:
        return Place(name, "unreadable"), []
    return Place(name, "read"), [Found(e, name, e.line, e.time) for e in events]


def _from_file(path: Path, now: datetime) -> tuple[Place, list[Found]]:
    if not path.exists():
        return Place(str(path), "absent"), []
    if not os.access(path, os.R_OK):
        return Place(str(path), "unreadable"), []
    from mpsctl.deaths.scanner import scan_found  # loaded only for a file there is to read

    try:
        found = scan_found(path, label=str(path))
    except PermissionError:
        return Place(str(path), "unreadable"), []
    except OSError as exc:
        return Place(str(path), "absent", exc.strerror or str(exc)), []
    deaths = [item for item in found if item.kind != "oom" and not item.kind.startswith("invalid")]
    return Place(str(path), "read"), deaths


def read_system_logs(
    *,
    platform: str = sys.platform,
    runner: Runner | None = None,
    root: Path = Path("/"),
    home: Path | None = None,
    now: datetime | None = None,
    boot: datetime | None = None,
) -> SystemEvidence:
    """Every kill the OS recorded that this user may read, and where it looked.

    ``runner`` (default ``run_command``, looked up at call time) runs the readers; ``root``
    and ``home`` move the fixed paths; ``boot`` dates dmesg's uptime stamps (default: this
    machine's boot time, ``_boot_time``).
    """
    moment = now or datetime.now(timezone.utc)
    runner = runner or run_command
    places: list[Place] = []
    found: list[Found] = []
    if platform == "darwin":
        argv = ["log", "show", "--last", LOOK_BACK, "--style", "syslog", "--predicate",
                MACOS_PREDICATE]  # fmt: skip
        place, items = _from_command("log show (memorystatus)", argv, runner, moment, None)
        places.append(place)
        found += items
        for folder in MACOS_REPORT_DIRS:
            base = (home or Path.home()) / folder[2:] if folder.startswith("~/") else None
            directory = base if base is not None else root / folder.lstrip("/")
            try:
                reports = sorted(directory.glob("JetsamEvent-*.ips"))
            except OSError:
                reports = []
            if not directory.is_dir():
                places.append(Place(str(directory / "JetsamEvent-*.ips"), "absent"))
                continue
            if not os.access(directory, os.R_OK | os.X_OK):
                places.append(Place(str(directory / "JetsamEvent-*.ips"), "unreadable"))
                continue
            places.append(Place(str(directory / "JetsamEvent-*.ips"), "read"))
            for report in reports:
                found += _from_file(report, moment)[1]
        return SystemEvidence(tuple(places), tuple(found))
    boot = boot or _boot_time()
    journal = ["journalctl", "-k", "--no-pager", "-o", "short-iso", "--since", f"-{LOOK_BACK}"]
    place, items = _from_command("journalctl -k", journal, runner, moment, boot)
    if place.outcome != "absent":
        places.append(place)
        found += items
    if place.outcome != "read":
        # no journal, or one this user may not read: the ring buffer may still be readable
        place, items = _from_command("dmesg", ["dmesg"], runner, moment, boot)
        places.append(place)
        found += items
    for name in LINUX_FILES:
        place, items = _from_file(root / name.lstrip("/"), moment)
        if place.outcome != "absent":  # most systems have one or two of the three
            places.append(replace(place, name=name))
        found += [replace(item, file=name) for item in items]
    return SystemEvidence(tuple(places), tuple(found))
