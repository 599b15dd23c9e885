"""``start --foreground``: run the service as a child, for launchd or systemd.

mpsctl stays the unit's main process so that it can clean up after the service: on a clean
exit (status 0, or ended by SIGTERM / SIGINT: an operator's ``systemctl stop`` or
``launchctl bootout``) it removes the pidfile, so ``status`` says "stopped" and the
watchdog's ``dead-pidfile`` rule does not bring back a service the operator stopped. A crash
leaves the pidfile: ``status`` reports the death and the manager's Restart= policy applies.

The child runs in its own process group, so a terminal's ^C reaches it once (forwarded,
not twice); mpsctl forwards SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 and ends
the way the child ended: the same exit status, or killed by the same signal, which is how
systemd tells a clean stop from a failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from types import FrameType
from typing import Any

from mpsctl import __version__
from mpsctl.control.pidfile import PidRecord, record_as_running, remove_pidfile, write_pidfile
from mpsctl.errors import ServiceError
from mpsctl.observe import processes
from mpsctl.settings import Settings
from mpsctl.storage import atomic_write_json
from mpsctl.units import utc_now_iso

FORWARDED = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)
#: exits that a service manager counts as a clean stop (systemd: status 0, or SIGTERM,
#: SIGINT, SIGHUP, SIGPIPE; Popen reports a signal as its negative number)
CLEAN_EXITS = (0, -signal.SIGTERM, -signal.SIGINT, -signal.SIGHUP, -signal.SIGPIPE)


#: in MPSCTL_HOME: the service manager stopped the service cleanly; the next start removes it
STOP_MARK = "stopped-by-manager.json"


def read_stop_mark(home: Path) -> dict[str, Any] | None:
    try:
        document = json.loads((home / STOP_MARK).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def clear_stop_mark(home: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (home / STOP_MARK).unlink()


class RunInForeground(Exception):
    """Raised by ``start_while_locked`` once the child runs and its pidfile is written, so
    that the caller leaves the lock before waiting for the service's whole life."""

    def __init__(self, run: ForegroundRun) -> None:
        super().__init__("running in the foreground")
        self.run = run


class ForegroundRun:
    def __init__(
        self, proc: subprocess.Popen[bytes], pidfile: Path, record: PidRecord, settle_s: float
    ) -> None:
        self.proc = proc
        self.pidfile = pidfile
        self.record = record
        #: how long the child may take to ``exec`` the server (start_timeout)
        self.settle_s = settle_s

    def wait(self) -> int:
        """Wait for the child (forwarding signals); on a clean exit remove the pidfile and
        leave the stop mark (the watchdog does not start what the manager stopped).

        While the child starts, its pidfile follows its command line: a wrapper script that
        ``exec``s the server is recorded as the server (``record_as_running``)."""
        deadline = time.monotonic() + self.settle_s
        code: int | None = None
        while code is None and time.monotonic() < deadline:
            try:
                code = self.proc.wait(timeout=0.25)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(OSError):  # a read-only home: the record stays
                    before = self.record.argv
                    self.record = record_as_running(self.record, self.pidfile)
                    if self.record.argv != before:
                        break  # exec'd: recorded
        if code is None:
            code = self.proc.wait()
        if code in CLEAN_EXITS:
            remove_pidfile(self.pidfile, pid=self.proc.pid)
            how = f"signal {signal.Signals(-code).name}" if code < 0 else "exit status 0"
            with contextlib.suppress(OSError):  # a read-only home: the pidfile rule remains
                atomic_write_json(
                    self.pidfile.parent / STOP_MARK,
                    {"time": utc_now_iso(), "pid": self.proc.pid, "how": how},
                )
        return code


def spawn(settings: Settings, argv: tuple[str, ...], env: dict[str, str], pidfile: Path) -> None:
    """Start the service as this process's child, write its pidfile, raise RunInForeground."""
    pending: list[int] = []
    child: list[subprocess.Popen[bytes]] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        if child:
            with contextlib.suppress(ProcessLookupError):
                child[0].send_signal(signum)
        else:
            pending.append(signum)

    for sig in FORWARDED:
        signal.signal(sig, forward)
    try:
        proc = subprocess.Popen(list(argv), cwd=settings.service.workdir, env=env, process_group=0)
    except OSError as exc:
        raise ServiceError(f"cannot run {argv[0]}: {exc.strerror}") from None
    child.append(proc)
    created = processes.create_time_of(proc.pid)
    record = PidRecord(
        proc.pid,
        created if created is not None else time.time(),
        argv,
        settings.service.url,
        utc_now_iso(),
        __version__,
        pgid=proc.pid,
    )
    try:
        write_pidfile(pidfile, record)
    except OSError as exc:
        proc.kill()
        proc.wait()
        raise ServiceError(f"cannot write the pidfile {pidfile}: {exc.strerror}") from None
    for signum in pending:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)
    raise RunInForeground(ForegroundRun(proc, pidfile, record, settings.service.start_timeout))


def end_like(code: int) -> int:
    """Leave the way the child left: killed by its signal (re-raised), else its status."""
    if code < 0:
        with contextlib.suppress(OSError, ValueError):  # SIGKILL has no handler to reset
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
        time.sleep(1)  # the signal is delivered before this returns; never reached
        return 128 - code
    return code
