"""Signalling a process tree safely: pidfd where the kernel has it, process groups, waiting.

Each pid's create_time is checked right before it is signalled, so a process that reused
a pid is never hit."""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import sys
import time
from collections.abc import Callable, Iterator
from typing import Literal

from mpsctl.observe import processes

#: how long to wait for processes to vanish after SIGKILL (a process in uninterruptible
#: sleep cannot die sooner; beyond this it is reported as a survivor)
KILL_GRACE_S = 2.0
#: how often stop looks for children born after the snapshot (a full process-table scan)
RESCAN_INTERVAL_S = 0.1
#: where the kernel cannot say "exited" (no pidfd, no kqueue): the poll interval
POLL_S = 0.005

Outcome = Literal["SIGTERM", "SIGKILL", "exited", "survived", "would-signal", "not-signalled"]


def reap(pids: Iterator[int] | list[int]) -> None:
    """Collect our own exited children so they do not linger as zombies."""
    for pid in pids:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)


def open_pidfd(pid: int) -> int | None:
    """A pidfd for ``pid`` (Linux >= 5.3); None where there is none (macOS, old kernels).

    Raises ProcessLookupError when ``pid`` is gone.
    """
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:
        return None
    try:
        return int(pidfd_open(pid))
    except ProcessLookupError:
        raise
    except OSError:  # ENOSYS, EPERM under a seccomp profile, ...
        return None


def send(pid: int, created: float, sig: signal.Signals) -> bool:
    """Signal ``pid`` only if it is still the process started at ``created``.

    With a pidfd the identity check and the signal name the same process, so a pid reused
    between the check and the kill cannot be hit; without one (macOS) the window between
    the check and ``kill`` is a few microseconds.
    """
    try:
        pidfd = open_pidfd(pid)
    except ProcessLookupError:
        return False
    try:
        if not processes.is_alive(pid, created):
            return False
        try:
            if pidfd is not None:
                signal.pidfd_send_signal(pidfd, sig)
            else:
                os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    finally:
        if pidfd is not None:
            os.close(pidfd)


def wait_any_exit(pids: list[int], timeout: float) -> None:
    """Return when one of ``pids`` exits, or after ``timeout`` seconds, whichever is first.

    Linux: ``poll`` on pidfds (readable when the process exits); macOS/BSD: kqueue's
    ``NOTE_EXIT``; elsewhere a ``POLL_S`` sleep. The kernel wakes us at the exit itself,
    where a backing-off poll would add up to its last interval to every stop. A pid
    already gone returns at once.
    """
    if timeout <= 0 or not pids:
        return
    if hasattr(os, "pidfd_open"):
        fds: list[int] = []
        try:
            for pid in pids:
                fd = open_pidfd(pid)
                if fd is None:
                    break
                fds.append(fd)
            else:
                poller = select.poll()
                for fd in fds:
                    poller.register(fd, select.POLLIN)
                poller.poll(max(1, int(timeout * 1000)))
                return
        except ProcessLookupError:
            return  # one is gone already
        finally:
            for fd in fds:
                os.close(fd)
    elif sys.platform == "darwin":
        try:
            _kqueue_wait(pids, timeout)
            return
        except ProcessLookupError:
            return
        except OSError:
            pass
    time.sleep(min(POLL_S, timeout))


if sys.platform == "darwin":

    def _kqueue_wait(pids: list[int], timeout: float) -> None:
        kq = select.kqueue()
        try:
            add, note_exit = select.KQ_EV_ADD, select.KQ_NOTE_EXIT
            changes = [
                select.kevent(pid, filter=select.KQ_FILTER_PROC, flags=add, fflags=note_exit)
                for pid in pids
            ]
            try:
                kq.control(changes, 0, 0)
            except OSError as exc:  # ESRCH: exited before the watch was set
                if exc.errno == errno.ESRCH:
                    raise ProcessLookupError(exc.errno, "gone") from None
                raise
            kq.control(None, 1, timeout)
        finally:
            kq.close()


def group_alive(pgid: int, targets: dict[int, float]) -> bool:
    """True while one of our own live targets is in ``pgid``: then the group id is ours.

    (The kernel does not hand out a pid that is still some group's id, so while a member
    lives, ``killpg(pgid)`` cannot reach a stranger.)
    """
    for pid, created in targets.items():
        if processes.is_alive(pid, created):
            with contextlib.suppress(OSError):
                if os.getpgid(pid) == pgid:
                    return True
    return False


def killpg(pgid: int | None, targets: dict[int, float], sig: signal.Signals) -> None:
    """Signal the service's group at once (children forked after the snapshot included),
    only while it is provably the service's and holds nobody else's process."""
    if pgid is None or pgid <= 1 or pgid == os.getpgrp():
        return
    if group_alive(pgid, targets) and processes.group_is_mine(pgid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)


def signal_and_wait(
    targets: dict[int, float],
    *,
    pgid: int | None,
    timeout: float,
    clock: Callable[[], float] = time.monotonic,
    signalled: Callable[[], object] | None = None,
    sent_at: float | None = None,
    reached: set[int] | None = None,
) -> dict[int, Outcome]:
    """SIGTERM the tree (and its group), wait, SIGKILL survivors; pid -> how it ended.

    ``signalled`` is called once SIGTERM is sent: the caller's work that can overlap the
    service's own shutdown (the CLI loads its table renderer then).

    ``targets`` was snapshotted before any signal: a grandchild that left the group, or
    whose parent died and was re-parented to init, is still in it. Children born during
    the wait are found by re-scanning the live targets.

    ``sent_at`` (``clock()`` then) and ``reached`` (the pids it reached): SIGTERM and SIGCONT
    were sent already (``mpsctl.control.quick_stop``); the wait and SIGKILL follow.
    """
    if sent_at is None:
        outcome: dict[int, Outcome] = {
            pid: "SIGTERM" if processes.is_alive(pid, created) else "exited"
            for pid, created in targets.items()
        }
        killpg(pgid, targets, signal.SIGTERM)
        for pid, created in list(targets.items()):
            send(pid, created, signal.SIGTERM)  # also those outside the group (setsid children)
        # a stopped process (kill -STOP, a hung debugger) holds SIGTERM pending until it runs
        # again: wake it so it can shut down cleanly instead of waiting out the timeout (as
        # systemd does)
        killpg(pgid, targets, signal.SIGCONT)
        for pid, created in list(targets.items()):
            send(pid, created, signal.SIGCONT)
        sent_at = clock()
    else:
        outcome = {pid: "SIGTERM" if pid in (reached or ()) else "exited" for pid in targets}
    if signalled is not None:
        signalled()
    deadline = sent_at + timeout
    next_scan = clock() + RESCAN_INTERVAL_S
    protected = processes.protected_pids()
    while True:
        reap(list(targets))
        alive = [pid for pid, created in targets.items() if processes.is_alive(pid, created)]
        if not alive:
            return outcome
        if clock() >= next_scan or clock() >= deadline:
            # children forked during shutdown (a worker respawned by its supervisor)
            live = {pid: targets[pid] for pid in alive}
            for child, created in processes.descendants(live).items():
                if child not in targets and child not in protected and processes.owned_by_me(child):
                    targets[child] = created
                    sent = send(child, created, signal.SIGTERM)
                    outcome[child] = "SIGTERM" if sent else "exited"
                    alive.append(child)
            next_scan = clock() + RESCAN_INTERVAL_S
        if clock() >= deadline:
            break
        # woken by the first exit; at the latest at the next re-scan for new children
        wait_any_exit(alive, max(0.0, min(next_scan, deadline) - clock()))

    killpg(pgid, targets, signal.SIGKILL)
    for pid in alive:
        send(pid, targets[pid], signal.SIGKILL)
        outcome[pid] = "SIGKILL"  # alive at the deadline: the group kill or this one ended it
    grace = clock() + KILL_GRACE_S
    while clock() < grace:
        reap(list(targets))
        if not any(processes.is_alive(pid, c) for pid, c in targets.items()):
            break
        time.sleep(0.01)
    for pid, created in targets.items():
        if processes.is_alive(pid, created):
            outcome[pid] = "survived"
    return outcome
