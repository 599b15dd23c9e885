"""How the service died, from evidence: the one answer ``status``, ``probe``, ``fix`` and
``report`` give when the pidfile names a process that is gone.

The evidence, strongest first:

1. a kill the operating system recorded (kernel OOM killer, systemd-oomd, jetsam; see
   ``system_logs``) whose pid is the pidfile's, or whose process name is the service's and
   which happened after it started;
2. the last memory failure the service itself logged after it started (its log_file,
   where ``start`` sends its stdout and stderr, and its own logs): a caching-allocator or
   CPU-allocator OOM, a CUDA error, an MPS array limit, a gunicorn worker SIGKILL;
3. otherwise "no evidence found", naming every place looked in.

mpsctl starts the service detached and keeps no process waiting on it, so its exit status
is not recorded: ``stop`` signals only the process group the pidfile names, and a waiter
would be one more process to find, signal and outlive. The answer therefore says what the
evidence shows ("exited after: RuntimeError: ...") and never invents an exit code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mpsctl.deaths.system_logs import Runner, SystemEvidence, read_system_logs
from mpsctl.logtime import iso
from mpsctl.observe.processes import ServiceSnapshot
from mpsctl.settings import Settings

if TYPE_CHECKING:
    from mpsctl.deaths.counting import Found

#: the kernel keeps 15 characters of a process name (TASK_COMM_LEN - 1)
COMM_LEN = 15
_KILLS = ("kernel_oom_kill", "oomd_kill", "jetsam_kill")


@dataclass(frozen=True)
class DeathCause:
    """Why the service is gone: ``cause`` is the evidence's kind, or ``"unknown"``."""

    name: str
    pid: int | None
    cause: str
    text: str
    when: datetime | None = None
    evidence: Found | None = None
    looked_in: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "cause": self.cause,
            "text": self.text,
            "pid": self.pid,
            "time": None if self.when is None else iso(self.when),
            "evidence": None if self.evidence is None else self.evidence.to_json(),
            "looked_in": list(self.looked_in),
        }


def _clock(moment: datetime) -> str:
    local = moment.astimezone()
    today = datetime.now().astimezone().date()
    return local.strftime("%H:%M:%S" if local.date() == today else "%Y-%m-%d %H:%M:%S")


def _names(snapshot: ServiceSnapshot | None, settings: Settings) -> set[str]:
    """Process names the kernel would print for the service (comm: the program's name)."""
    names: set[str] = set()
    argv = snapshot.pidfile.argv if snapshot and snapshot.pidfile else ()
    for command in (argv, settings.service.command):
        for word in command[:3]:
            base = os.path.basename(word)
            if base and not base.startswith("-"):
                names.add(base[:COMM_LEN])
    return names


def _started(snapshot: ServiceSnapshot) -> datetime | None:
    record = snapshot.pidfile
    if record is None:
        return None
    return datetime.fromtimestamp(record.create_time, timezone.utc)


def _tied(item: Found, pid: int | None, names: set[str], started: datetime | None) -> int:
    """2: the kill names the service's pid; 1: its process name, after it started; 0: no."""
    from mpsctl.deaths.parsers import pids_of

    event: Any = item.event
    after_start = started is not None and item.when is not None and item.when >= started
    if pid is not None and pid in pids_of(event) and (after_start or not (started and item.when)):
        return 2
    process = getattr(event, "process", None)
    return 1 if process and process[:COMM_LEN] in names and after_start else 0


def _kill_text(item: Found, ram: int | None) -> str:
    from mpsctl.deaths.allocator import short_size

    event: Any = item.event
    if item.kind == "kernel_oom_kill":
        figure = ""
        if event.anon_rss_bytes is not None:
            scope = (
                f" of a {short_size(event.memcg_limit_bytes)} cgroup limit"
                if event.memcg_limit_bytes
                else (f" of {short_size(ram)} RAM" if ram and not event.cgroup else "")
            )
            figure = f" (anon-rss {short_size(event.anon_rss_bytes)}{scope})"
        where = " in a memory cgroup" if event.cgroup and not event.memcg_limit_bytes else ""
        return f"killed by the kernel OOM killer{where}{figure}"
    if item.kind == "jetsam_kill":
        return f"killed by jetsam ({event.reason or 'memory limit'})"
    if item.kind == "oomd_kill":
        return item.summary()
    return item.summary()


def _logged(settings: Settings, started: datetime | None) -> tuple[list[Found], list[str]]:
    """Memory failures in the service's own logs since it started, and where it looked."""
    from mpsctl.deaths.scanner import counts, scan_found
    from mpsctl.observe.logfiles import resolve_logs

    found: list[Found] = []
    looked: list[str] = []
    for source in resolve_logs(settings):
        path = source.path
        if path is None:
            continue
        looked.append(str(path))
        try:
            # a log's stamps have whole seconds: the failure may carry the start's own second
            since = None if started is None else started - timedelta(seconds=1)
            items = scan_found(path, since, label=str(path))
        except OSError:
            looked[-1] += " (not readable)"
            continue
        found += [
            i
            for i in items
            if counts(i) and (i.when is not None or path == settings.service.log_file)
        ]
    return found, looked


def how_it_died(
    settings: Settings,
    snapshot: ServiceSnapshot,
    *,
    system: SystemEvidence | None = None,
    runner: Runner | None = None,
    root: Path = Path("/"),
) -> DeathCause | None:
    """Why the service the pidfile names is gone; None when it is not gone (running, or no
    pidfile). ``system``: the OS's kill records already read (else read here, when
    ``[oom] system_logs`` allows it, through ``runner``; ``root`` moves /var/log for tests)."""
    if snapshot.running or snapshot.pidfile_state not in ("stale", "reused"):
        return None
    name = settings.service.name
    record = snapshot.pidfile
    pid = record.pid if record else None
    started = _started(snapshot)
    names = _names(snapshot, settings)
    looked: list[str] = []
    if system is None and settings.oom.system_logs:
        system = read_system_logs(runner=runner, root=root)
    if system is not None:
        looked += system.looked_in
        kills = [(s, item) for item in system.found if (s := _tied(item, pid, names, started))]
        kills = [(s, i) for s, i in kills if i.kind in _KILLS or s == 2]
        if kills:
            _score, item = max(kills, key=lambda pair: (pair[0], pair[1].when or _EPOCH))
            return _cause(name, pid, item, _kill_text(item, _ram()), looked)
    elif not settings.oom.system_logs:
        looked.append("system logs (oom.system_logs = false)")
    logged, places = _logged(settings, started)
    looked += places
    if logged:
        item = max(logged, key=lambda i: i.when or _EPOCH)
        first = (item.event.raw.strip().splitlines() or [""])[-1].strip()
        text = first if len(first) <= 160 else first[:157] + "..."
        return _cause(name, pid, item, f"exited after: {text}", looked)
    where = ", ".join(looked) or "nowhere readable"
    return DeathCause(name, pid, "unknown", f"{name} died: no evidence found (looked in: {where})",
                      looked_in=tuple(looked))  # fmt: skip


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def service_kills(
    settings: Settings,
    since: datetime | None = None,
    *,
    runner: Runner | None = None,
    root: Path = Path("/"),
    others: bool = False,
) -> tuple[list[Found], list[str]]:
    """The kills the OS recorded of the service, newer than ``since``, and where it looked
    (for ``mpsctl oom`` and the probe). Whose kill is whose: ``attribution``; ``others``: the
    other processes' kills too, marked ``other``."""
    from dataclasses import replace

    from mpsctl.deaths.attribution import names_of, read_runs, split
    from mpsctl.observe.processes import default_pidfile_path, read_pidfile

    if not settings.oom.system_logs:
        return [], []
    record = read_pidfile(default_pidfile_path(settings))
    current = None if record is None or record == "invalid" else record
    runs = read_runs(settings.home, current)
    if not runs and not others:
        return [], []  # never started here: no kill the OS recorded can be the service's
    names = names_of(settings.service.command)
    evidence = read_system_logs(runner=runner, root=root)
    kills = [item for item in evidence.found if item.kind in _KILLS]
    # every kill read tells when a run ended (its own kill), the old ones too
    mine, theirs = split(kills, runs, names)
    if others:
        mine += [replace(item, other=True) for item in theirs]
    recent = [item for item in mine if since is None or (item.when or _EPOCH) >= since]
    return recent, evidence.looked_in


def _cause(name: str, pid: int | None, item: Found, what: str, looked: list[str]) -> DeathCause:
    when = item.when
    at = f" at {_clock(when)}" if when is not None else ""
    return DeathCause(name, pid, item.kind, f"{name} died{at}: {what}", when, item, tuple(looked))


def _ram() -> int | None:
    try:
        from mpsctl.observe.ram import ram_bytes

        return ram_bytes()
    except Exception:  # the sentence loses one figure, not its cause
        return None
