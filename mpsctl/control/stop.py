"""``mpsctl stop`` and ``restart``: end the service's whole tree, under the lock.

Never signalled: mpsctl or its ancestors, other users' processes, and (without ``--match``)
anything not named by the pidfile."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mpsctl.client import health_now
from mpsctl.control import drain
from mpsctl.control.drain import Drain
from mpsctl.control.events import Events, SilentEvents
from mpsctl.control.lock import service_lock
from mpsctl.control.pidfile import (
    corrupt_path,
    default_pidfile_path,
    foreign_pidfile,
    remove_bad_pidfile,
    remove_pidfile,
)
from mpsctl.control.signals import Outcome, signal_and_wait
from mpsctl.durations import seconds_setting
from mpsctl.errors import ServiceError
from mpsctl.observe import processes
from mpsctl.settings import Settings

if TYPE_CHECKING:
    from mpsctl.control.quick_stop import Begun
    from mpsctl.control.start import StartOptions, StartResult


@dataclass(frozen=True)
class StoppedProcess:
    pid: int
    command: str
    rss_bytes: int | None
    outcome: Outcome
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "command": self.command,
            "rss_bytes": self.rss_bytes,
            "outcome": self.outcome,
            "note": self.note,
        }


@dataclass(frozen=True)
class StopResult:
    status: Literal["stopped", "already-stopped", "dry-run", "refused", "failed"]
    name: str
    found_by: str | None
    pidfile_state: str
    processes: tuple[StoppedProcess, ...]
    elapsed_s: float
    timeout_s: float
    pidfile_removed: bool
    message: str = ""
    #: the queries in flight when the stop began: drained, cut (None: no drain was tried)
    drain: Drain | None = None

    @property
    def freed_rss_bytes(self) -> int:
        gone = ("SIGTERM", "SIGKILL", "exited")
        return sum(p.rss_bytes or 0 for p in self.processes if p.outcome in gone)

    @property
    def ok(self) -> bool:
        return self.status in ("stopped", "already-stopped", "dry-run")

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": "mpsctl.stop/1",
            "status": self.status,
            "name": self.name,
            "found_by": self.found_by,
            "pidfile_state": self.pidfile_state,
            "processes": [p.to_json() for p in self.processes],
            "freed_rss_bytes": self.freed_rss_bytes,
            "elapsed_s": round(self.elapsed_s, 3),
            "timeout_s": self.timeout_s,
            "pidfile_removed": self.pidfile_removed,
            "message": self.message,
            "drain": None if self.drain is None else self.drain.to_json(),
        }


def _stoppable(
    infos: tuple[processes.ProcInfo, ...],
) -> tuple[list[processes.ProcInfo], list[StoppedProcess]]:
    protected = processes.protected_pids()
    allowed, refused = [], []
    for info in infos:
        if info.pid in protected:
            note = "mpsctl itself or its parent"
        elif not processes.owned_by_me(info.pid):
            note = f"belongs to {info.username or 'another user'}"
        else:
            allowed.append(info)
            continue
        refused.append(
            StoppedProcess(info.pid, info.command, info.rss_bytes, "not-signalled", note)
        )
    return allowed, refused


def stop_service(
    settings: Settings,
    *,
    timeout: float | None = None,
    use_match: bool = False,
    dry_run: bool = False,
    lock_wait: float = 0.0,
    signalled: Callable[[], object] | None = None,
    begun: Begun | None = None,
) -> StopResult:
    """Stop the service's whole tree (takes the lock; a dry run only looks, so it does not).

    ``signalled`` is called once SIGTERM is sent, while the service shuts down.
    A healthy service is drained first (``mpsctl.control.drain``). ``begun``: the stop
    ``mpsctl.control.quick_stop`` began in this process (its lock held, SIGTERM sent)."""
    if begun is not None:
        try:
            return _stop_begun(settings, begun, timeout=timeout, signalled=signalled)
        finally:
            begun.release()
    if dry_run:
        return _stop_locked(settings, timeout=timeout, use_match=use_match, dry_run=True)
    with service_lock(settings.home, wait=lock_wait, purpose="stop"):
        return _stop_locked(
            settings, timeout=timeout, use_match=use_match, dry_run=dry_run, signalled=signalled
        )


def _stop_locked(
    settings: Settings,
    *,
    timeout: float | None,
    use_match: bool,
    dry_run: bool,
    signalled: Callable[[], object] | None = None,
) -> StopResult:
    started = time.monotonic()
    limit = _stop_limit(settings, timeout)
    name = settings.service.name
    snapshot = processes.find_service(settings)
    pidfile = snapshot.pidfile_path or default_pidfile_path(settings)

    def result(status: Any, rows: list[StoppedProcess], removed: bool, msg: str) -> StopResult:
        return StopResult(
            status, name, snapshot.found_by, snapshot.pidfile_state, tuple(rows),
            time.monotonic() - started, limit, removed, msg,
        )  # fmt: skip

    if not snapshot.running:
        removed = False
        if snapshot.pidfile_state in ("stale", "reused", "invalid") and not dry_run:
            removed = remove_bad_pidfile(pidfile, snapshot.pidfile_state)
        record = snapshot.pidfile
        verb = "removed" if removed else "would remove" if dry_run else "left"
        detail = {
            "stale": f"; {verb} its stale pidfile {pidfile}",
            "reused": f"; pid {record.pid if record else '?'} in the pidfile belongs to another "
            f"process now (not signalled); {verb} the pidfile {pidfile}",
            "invalid": f"; the pidfile {pidfile} was corrupt: "
            + (f"moved it to {corrupt_path(pidfile)}" if removed else f"{verb} it"),
        }.get(snapshot.pidfile_state, "")
        return result("already-stopped", [], removed, f"{name} is not running{detail}")

    foreign = foreign_pidfile(settings, snapshot)
    if foreign:
        rows = [
            StoppedProcess(p.pid, p.command, p.rss_bytes, "not-signalled", "another service")
            for p in snapshot.processes
        ]
        return result("refused", rows, False, f"{foreign}; nothing signalled")

    if snapshot.found_by == "pidfile":
        # the pidfile's root must itself be stoppable: a pidfile naming mpsctl's own shell
        # (hand-written, or copied from elsewhere) must not turn its siblings into targets
        root = next((p for p in snapshot.processes if p.pid == snapshot.roots[0]), None)
        if root is not None:
            _ok, root_refused = _stoppable((root,))
            if root_refused:
                why = root_refused[0].note
                rows = [
                    StoppedProcess(p.pid, p.command, p.rss_bytes, "not-signalled", why)
                    for p in snapshot.processes
                ]
                return result(
                    "refused",
                    rows,
                    False,
                    f"the pidfile {pidfile} names pid {root.pid} ({why}): not the service; "
                    "nothing signalled (check the pidfile, then remove it by hand)",
                )

    allowed, refused = _stoppable(snapshot.processes)
    if snapshot.found_by == "match" and not use_match:
        rows = refused + [
            StoppedProcess(p.pid, p.command, p.rss_bytes, "not-signalled", "found by match only")
            for p in allowed
        ]
        return result(
            "refused",
            rows,
            False,
            f"no pidfile names {name}; {len(allowed)} process(es) match "
            f"{settings.service.match!r}: pass --match to stop them",
        )
    if dry_run:
        rows = [StoppedProcess(p.pid, p.command, p.rss_bytes, "would-signal") for p in allowed]
        return result("dry-run", rows + refused, False, "dry run: nothing signalled")

    targets = {p.pid: p.create_time for p in allowed}
    record = snapshot.pidfile if snapshot.found_by == "pidfile" else None
    # the group is signalled only when it is the one start created (setsid: pgid == pid);
    # a pgid edited into the pidfile could name any group of this user
    drained = drain.begin(settings, tuple(targets), health=health_now)
    ends = signal_and_wait(targets, pgid=_start_group(record), timeout=limit + drained.extra_s,
                           signalled=signalled)  # fmt: skip
    drained = drain.after_stop(drained, list(ends.values()))
    rows = _rows(ends, {p.pid: (p.command, p.rss_bytes) for p in allowed})
    status, removed, message = _ended(rows, drained, name, pidfile, snapshot.pidfile)
    return replace(result(status, rows + refused, removed, message), drain=drained)


def _stop_limit(settings: Settings, timeout: float | None) -> float:
    """Seconds between SIGTERM and SIGKILL: ``--timeout``, else ``service.stop_timeout``."""
    return seconds_setting(
        settings.service.stop_timeout if timeout is None else timeout,
        "stop timeout (--timeout / service.stop_timeout)",
        allow_zero=True,
    )


def _start_group(record: processes.PidRecord | None) -> int | None:
    """The process group to signal: only the one start created (setsid: pgid == pid); a
    pgid edited into the pidfile could name any group of this user."""
    return record.pgid if record is not None and record.pgid == record.pid else None


def _rows(
    ends: dict[int, Outcome], known: dict[int, tuple[str, int | None]]
) -> list[StoppedProcess]:
    """How each process ended, with the command and RSS read before the signal."""
    return [
        StoppedProcess(pid, *known.get(pid, ("(child born during the stop)", None)), how)
        for pid, how in ends.items()
    ]


def _ended(
    rows: list[StoppedProcess],
    drained: Drain,
    name: str,
    pidfile: Path,
    record: processes.PidRecord | None,
) -> tuple[Literal["stopped", "failed"], bool, str]:
    """The stop's status, whether the pidfile was removed, and its message."""
    survivors = [str(r.pid) for r in rows if r.outcome == "survived"]
    if survivors:
        return "failed", False, f"still alive after SIGKILL: {', '.join(survivors)}"
    removed = remove_pidfile(pidfile, pid=record.pid) if record is not None else False
    return "stopped", removed, f"{name} stopped; {drained.text()}"


def _stop_begun(
    settings: Settings,
    begun: Begun,
    *,
    timeout: float | None,
    signalled: Callable[[], object] | None,
) -> StopResult:
    """The rest of a stop whose checks and SIGTERM came first: wait, SIGKILL, clean up.

    No client was connected to the service when it was signalled, so nothing was in flight
    (with ``drain_timeout`` 0 the drain is off, as in the full path)."""
    from mpsctl.masking import mask_argv

    limit = _stop_limit(settings, timeout)
    record = processes.PidRecord.from_json(begun.record)
    if settings.service.drain_timeout <= 0:
        drained = Drain("off", None, None, None, 0.0, "drain_timeout is 0")
    else:
        drained = Drain("none", 0, 0, 0, 0.0, "no client was connected")
    ends = signal_and_wait(dict(begun.targets), pgid=_start_group(record), timeout=limit,
                           signalled=signalled, sent_at=begun.signalled_at,
                           reached=begun.sent)  # fmt: skip
    rows = _rows(ends, {pid: (" ".join(mask_argv(argv)), rss) for pid, argv, rss in begun.rows})
    name = settings.service.name
    status, removed, message = _ended(rows, drained, name, Path(begun.pidfile), record)
    return StopResult(
        status, name, "pidfile", "ok", tuple(rows), time.monotonic() - begun.signalled_at,
        limit, removed, message, drain=drained,
    )  # fmt: skip


# --------------------------------------------------------------------------- restart
@dataclass(frozen=True)
class RestartResult:
    stop: StopResult
    start: StartResult

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": "mpsctl.restart/1",
            "stop": self.stop.to_json(),
            "start": self.start.to_json(),
        }


def stop_while_locked(settings: Settings, *, timeout: float | None, use_match: bool) -> StopResult:
    """Stop for a caller that already holds the lock; ServiceError unless it ended stopped."""
    stopped = _stop_locked(settings, timeout=timeout, use_match=use_match, dry_run=False)
    if not stopped.ok:
        raise ServiceError(stopped.message)
    return stopped


def restart_service(
    settings: Settings,
    options: StartOptions | None = None,
    *,
    stop_timeout: float | None = None,
    use_match: bool = False,
    events: Events | None = None,
    lock_wait: float = 0.0,
) -> RestartResult:
    """stop + start under one lock, so no other run can slip in between."""
    # imported here: `mpsctl stop` never starts anything and need not load the start path
    from mpsctl.control.start import StartOptions, start_while_locked

    with service_lock(settings.home, wait=lock_wait, purpose="restart"):
        stopped = stop_while_locked(settings, timeout=stop_timeout, use_match=use_match)
        started = start_while_locked(
            settings,
            options or StartOptions(),
            events or SilentEvents(),
            just_stopped={p.pid for p in stopped.processes},
        )
        return RestartResult(stopped, started)
