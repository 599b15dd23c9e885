"""``mpsctl stop``'s SIGTERM before click, rich, psutil and the settings are loaded.

Loading them takes the Python start-up of a whole command (about 100 ms on a small
machine), and every one of those milliseconds is added to the stop: the service cannot
begin its own shutdown until it is signalled. This module is the first thing a bare
``mpsctl stop`` (or ``mpsctl stop --json``) runs, on Linux. It imports the standard library
only and signals the service at once when, and only when, every check of the full path
would pass; then the full command runs as usual while the service shuts down, waits for
it, escalates to SIGKILL, removes the pidfile and prints the result.

What the full path decides from the settings is taken from a record the last full
``start`` or ``stop`` wrote (:data:`FACTS_NAME` in MPSCTL_HOME), valid only while every
input of the settings is unchanged: the MPSCTL_* variables and the others the settings read,
the working directory, the settings file found (and its inode, size and times) and
mpsctl's version. Anything else, or anything unusual, declines: several
services, no record, a lock held by another run, no pidfile, a pid that is not the
recorded process, a process of another user or of mpsctl's own ancestry, an installed
systemd unit, or a client connected to the service (its queries are drained first, which
the full path does). Declining costs nothing: the full path then runs from the start.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import sys
import time

from mpsctl.observe import procfs
from mpsctl.observe.procfs import argv_matches

#: typing's own constant, without importing typing (3 ms of the early path's start-up)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

    from mpsctl.settings import Settings

FACTS_NAME = "stop-facts.json"
# the full path's facts, restated here without its imports (a test keeps them equal):
LOCK_NAME = "mpsctl.lock"  # mpsctl.control.lock's file: one lock for every changing run
PIDFILE_MAX = 64 * 1024  # mpsctl.observe.processes.pidfile's limit
CONFIG_NAME = "mpsctl.toml"  # mpsctl.paths
#: the variables the settings read besides MPSCTL_*: a change to any makes the record stale
SETTINGS_ENV = ("HOME", "XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_DATA_HOME")
#: the arguments after ``stop`` this path takes; any other argument goes the full way
QUICK_ARGS = ((), ("--json",))
#: psutil's create_time on Linux moves with the boot time by up to a second (see
#: mpsctl.observe.processes.tree): the same tolerance
CREATE_TIME_TOLERANCE_S = 1.0


class Begun:
    """What was checked and signalled; the full stop takes it over (and the lock with it)."""

    __slots__ = ("lock_fd", "pidfile", "record", "rows", "sent", "signalled_at", "targets", "url")

    def __init__(self, lock_fd: int, pidfile: str, record: dict[str, Any], url: str,
                 targets: dict[int, float], sent: set[int],
                 rows: list[tuple[int, list[str], int | None]],
                 signalled_at: float) -> None:  # fmt: skip
        self.lock_fd = lock_fd
        self.pidfile = pidfile
        self.record = record
        self.url = url
        #: pid -> create_time of the process and its descendants, as signalled
        self.targets = targets
        #: the targets SIGTERM reached (the others had exited)
        self.sent = sent
        #: pid, argv, RSS bytes: read before the signal, for the stop's table
        self.rows = rows
        #: time.monotonic() when SIGTERM was sent: SIGKILL's deadline counts from it
        self.signalled_at = signalled_at

    def release(self) -> None:
        """Drop the lock (the kernel drops it anyway when this process ends)."""
        if self.lock_fd >= 0:
            os.close(self.lock_fd)
            self.lock_fd = -1


_BEGUN: list[Begun] = []


def taken() -> Begun | None:
    """The stop begun by :func:`begin` in this process, handed over once."""
    return _BEGUN.pop() if _BEGUN else None


# --------------------------------------------------------------------------- the record
def host_home(environ: Mapping[str, str]) -> str | None:
    """MPSCTL_HOME as ``mpsctl.paths.home_dir`` finds it on Linux (None elsewhere: there
    the full path runs)."""
    if environ.get("MPSCTL_HOME"):
        return os.path.expanduser(environ["MPSCTL_HOME"])
    if sys.platform == "darwin" or (not environ.get("HOME") and "XDG_STATE_HOME" not in environ):
        return None
    state = environ.get("XDG_STATE_HOME") or os.path.join(environ["HOME"], ".local", "state")
    return os.path.join(os.path.expanduser(state), "mpsctl")


def config_file(environ: Mapping[str, str], cwd: str) -> str | bool | None:
    """The settings file ``mpsctl.settings.find_config_file`` picks without ``--config``;
    False when it would refuse (a directory in the way, a missing MPSCTL_CONFIG)."""
    chosen = environ.get("MPSCTL_CONFIG")
    if chosen:
        path = os.path.expanduser(chosen)
        return os.path.abspath(path) if os.path.isfile(path) else False
    base = environ.get("XDG_CONFIG_HOME") or os.path.join(environ.get("HOME") or "~", ".config")
    for candidate in (os.path.join(cwd, CONFIG_NAME),
                      os.path.join(os.path.expanduser(base), "mpsctl", CONFIG_NAME)):  # fmt: skip
        if os.path.isfile(candidate):
            return os.path.abspath(candidate)
        if os.path.lexists(candidate):
            return False
    return None


def inputs_key(environ: Mapping[str, str], cwd: str) -> str | None:
    """Everything the settings are made of, as one string (hashed: the MPSCTL_* values may
    be secrets); None when the settings would refuse to load."""
    import hashlib

    found = config_file(environ, cwd)
    if found is False:
        return None
    stat: list[int] = []
    if found:
        try:
            info = os.stat(found)
        except OSError:
            return None
        stat = [info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns]
    from mpsctl import __version__

    env = sorted((k, v) for k, v in environ.items()
                 if k.startswith("MPSCTL_") or k in SETTINGS_ENV)  # fmt: skip
    text = json.dumps([env, cwd, found, stat, __version__])
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def remember(settings: Settings, unit_files: Sequence[str],
             environ: Mapping[str, str] | None = None, *,
             loaded_key: str | None) -> None:  # fmt: skip
    """Record what a bare ``stop`` needs from ``settings`` (the one service it acts on),
    unless it is already recorded. ``loaded_key``: :func:`inputs_key` when ``settings``
    were loaded; inputs changed since (an edit while a start or stop ran) record nothing.
    Never an error: a record that cannot be written only costs the next stop its head
    start."""
    from mpsctl.observe.processes import default_pidfile_path

    env = os.environ if environ is None else environ
    try:
        cwd = os.getcwd()
    except OSError:
        return
    home = host_home(env)
    found = config_file(env, cwd)
    config = None if settings.config_file is None else str(settings.config_file)
    if home is None or os.path.abspath(home) != str(
        (settings.host_home or settings.home).absolute()
    ):
        return
    if found is False or (os.path.realpath(found) if isinstance(found, str) else None) != config:
        # another discovery than the settings' (which resolve links): never recorded, never
        # used; a link is followed by the key's os.stat, so another target is another key
        return
    key = inputs_key(env, cwd)
    if key is None or key != loaded_key:
        return
    facts = {
        "key": key,
        "pidfile": str(default_pidfile_path(settings)),
        "url": settings.service.url,
        "unit_files": list(unit_files),
    }
    path = os.path.join(home, FACTS_NAME)
    if _read_json(path) == facts:
        return
    try:
        from pathlib import Path

        from mpsctl.storage import atomic_write_json

        atomic_write_json(Path(path), facts)
    except OSError:
        pass


# --------------------------------------------------------------------------- reading /proc
def _read_json(path: str, limit: int = PIDFILE_MAX) -> Any:
    """A small regular file's JSON (never through a link, never a FIFO); None otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not _regular(fd):
            return None
        data = os.read(fd, limit + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    if len(data) > limit:
        return None
    try:
        # text as the full path reads it (UTF-8, no byte-order mark: json.loads would take
        # bytes in any UTF); NaN is no start time: it is "within a second" of every one
        return json.loads(data.decode("utf-8"), parse_constant=_no_constant)
    except (ValueError, RecursionError):  # RecursionError: arrays nested thousands deep
        return None


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number")


def _regular(fd: int) -> bool:
    import stat

    return stat.S_ISREG(os.fstat(fd).st_mode)


# --------------------------------------------------------------------------- the path
def begin(args: Sequence[str], environ: Mapping[str, str] | None = None) -> Begun | None:
    """Signal the service now when every check passes (the module doc); None to decline.

    Never raises: a surprise declines, and the full path meets it again and reports it.
    """
    try:
        begun = _begin(tuple(args), os.environ if environ is None else environ)
    except Exception:
        return None
    if begun is not None:
        _BEGUN.append(begun)
    return begun


def _begin(args: tuple[str, ...], environ: Mapping[str, str]) -> Begun | None:
    if args not in QUICK_ARGS or not sys.platform.startswith("linux"):
        return None
    home = host_home(environ)
    if home is None or not _private_dir(home):
        return None
    facts = _read_json(os.path.join(home, FACTS_NAME))
    if not isinstance(facts, dict) or facts.get("key") != inputs_key(environ, os.getcwd()):
        return None
    pidfile, url, units = facts.get("pidfile"), facts.get("url"), facts.get("unit_files")
    if not isinstance(pidfile, str) or not isinstance(url, str) or not isinstance(units, list):
        return None
    if any(isinstance(u, str) and os.path.lexists(u) for u in units):
        return None  # a unit may run the service: the full path says what to run instead
    state_dir = os.path.dirname(pidfile)
    if not _private_dir(state_dir):
        return None
    lock_fd = _lock(state_dir)
    if lock_fd is None:
        return None
    try:
        begun = _check_and_signal(pidfile, url, lock_fd)
    except BaseException:
        os.close(lock_fd)
        raise
    if begun is None:
        os.close(lock_fd)
    return begun


def _private_dir(path: str) -> bool:
    """mpsctl.paths.home_problem's rule: this user's (or root's), writable by no one else."""
    import stat

    try:
        info = os.lstat(path)
    except OSError:
        return False
    mine = info.st_uid in (os.geteuid(), 0)
    return stat.S_ISDIR(info.st_mode) and mine and not info.st_mode & 0o022


def _lock(state_dir: str) -> int | None:
    """The run lock (mpsctl.control.lock's file), held; None when busy or unusable."""
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(os.path.join(state_dir, LOCK_NAME), flags)
    except OSError:
        return None  # missing (the full path creates it safely) or a link
    try:
        if not _regular(fd):
            raise OSError
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} stop\n".encode(), 0)
    except OSError:
        os.close(fd)
        return None
    return fd


def _check_and_signal(pidfile: str, url: str, lock_fd: int) -> Begun | None:
    record = _read_json(pidfile)
    if not isinstance(record, dict):
        return None
    pid, created = record.get("pid"), record.get("create_time")
    if type(pid) is not int or pid <= 0 or not isinstance(created, (int, float)):
        return None
    recorded_url = record.get("url")
    if not isinstance(recorded_url, str) or recorded_url.rstrip("/") != url.rstrip("/"):
        return None  # another configuration's service: the full path explains
    boot, ticks = procfs.boot_time(), os.sysconf("SC_CLK_TCK")
    if boot is None or ticks <= 0:
        return None
    table: dict[int, procfs.ProcStat] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = procfs.stat_fields(int(name))
            if fields is not None and len(fields) > 19:
                table[int(name)] = procfs.ProcStat(int(name), fields, boot, ticks)
    root = table.get(pid)
    if root is None or root.zombie or abs(root.created - float(created)) > CREATE_TIME_TOLERANCE_S:
        return None  # gone, or the pid is another process's now
    if not _started_as_recorded(root, record):
        return None  # the full path calls this pidfile reused and signals nothing
    protected = {os.getpid()}
    up = table.get(os.getpid())
    while up is not None and up.ppid > 0 and up.ppid not in protected:
        protected.add(up.ppid)
        up = table.get(up.ppid)
    children: dict[int, list[procfs.ProcStat]] = {}
    for proc in table.values():
        children.setdefault(proc.ppid, []).append(proc)
    tree, stack = [root], [root]
    while stack:
        for child in children.get(stack.pop().pid, []):
            if not child.zombie and child not in tree:
                tree.append(child)
                stack.append(child)
    uid = os.getuid()
    if any(p.pid in protected or procfs.real_uid(p.pid) != uid for p in tree):
        return None
    pids = [p.pid for p in tree]
    if procfs.client_connected(pids):
        return None  # a query may be in flight: the full path drains it first
    rows = [(p.pid, *procfs.argv_rss(p.pid)) for p in tree]
    targets = {p.pid: p.created for p in tree}
    # the group start created, as the full path signals it (mpsctl.control.signals.killpg):
    # a helper whose parent exited is no descendant, and is reached only through its group
    group = _own_group(record, root, table, protected, uid)
    armed = _arm(tree, boot, ticks)
    if not armed:
        return None  # all gone before the signal: nothing was done
    try:
        # the group first, as in the full path (mpsctl.control.signals): a process without
        # a SIGTERM handler is gone the moment it is signalled, and with it the proof that
        # the group is the service's
        _signal_group(group, tree, boot, ticks, signal.SIGTERM)
        for pidfd in armed.values():
            try:  # noqa: SIM105 - contextlib would add its import to the early path
                signal.pidfd_send_signal(pidfd, signal.SIGTERM)
            except OSError:  # ended by the group's SIGTERM already
                pass
        signalled_at = time.monotonic()
        # a stopped process holds SIGTERM pending until it runs again (as the full path does)
        _signal_group(group, tree, boot, ticks, signal.SIGCONT)
        for pidfd in armed.values():
            try:  # noqa: SIM105 - contextlib would add its import to the early path
                signal.pidfd_send_signal(pidfd, signal.SIGCONT)
            except OSError:
                pass
    finally:
        for pidfd in armed.values():
            os.close(pidfd)
    sent_pids = set(armed)
    return Begun(lock_fd, pidfile, record, url, targets, sent_pids, rows, signalled_at)


def _started_as_recorded(root: procfs.ProcStat, record: dict[str, Any]) -> bool:
    """The full path's check that the pidfile's process still runs the program start ran
    (pid and start time alone stay the same across an exec); never PID 1."""
    argv = record.get("argv") or ()
    recorded = tuple(str(a) for a in argv) if isinstance(argv, list) else ()
    return root.pid != 1 and argv_matches(recorded, tuple(procfs.cmdline(root.pid)))


def _own_group(record: dict[str, Any], root: procfs.ProcStat, table: dict[int, procfs.ProcStat],
               protected: set[int], uid: int) -> int | None:  # fmt: skip
    """The process group to signal with the tree, as the full path picks it: the one start
    created (pgid == pid), every member this user's and none mpsctl or its ancestors
    (mpsctl.observe.processes.group_is_mine); None otherwise. It is signalled only while
    one of the tree is still in it (:func:`_signal_group`)."""
    pgid = record.get("pgid")
    if type(pgid) is not int or pgid != root.pid or pgid <= 1 or pgid == os.getpgrp():
        return None
    members = [p for p in table.values() if p.pgrp == pgid and not p.zombie]
    if any(p.pid in protected or procfs.real_uid(p.pid) != uid for p in members):
        return None
    return pgid


def _signal_group(pgid: int | None, tree: list[procfs.ProcStat], boot: float, ticks: int,
                  sig: signal.Signals) -> None:  # fmt: skip
    """killpg while one of the tree still lives in the group (mpsctl.control.signals's
    group_alive): while a member lives the kernel hands out no pid equal to the group's id,
    so no stranger's group is reached."""
    if pgid is None:
        return
    for proc in tree:
        fields = procfs.stat_fields(proc.pid)
        if fields is None or fields[0] in ("Z", "X") or int(fields[2]) != pgid:
            continue
        if abs(boot + int(fields[19]) / ticks - proc.created) <= CREATE_TIME_TOLERANCE_S:
            break
    else:
        return
    try:  # noqa: SIM105 - contextlib would add its import to the early path
        os.killpg(pgid, sig)
    except OSError:
        pass


def _arm(tree: list[procfs.ProcStat], boot: float, ticks: int) -> dict[int, int]:
    """pid -> a pidfd for each process of ``tree`` that is still the one identified: the
    pidfd is opened before the identity is checked again, so a pid reused in between is
    never signalled. The caller closes them."""
    armed: dict[int, int] = {}
    for proc in tree:
        try:
            pidfd = os.pidfd_open(proc.pid)
        except OSError:
            continue
        fields = procfs.stat_fields(proc.pid)
        same = (
            fields is not None
            and fields[0] not in ("Z", "X")
            and abs(boot + int(fields[19]) / ticks - proc.created) <= CREATE_TIME_TOLERANCE_S
        )
        if same:
            armed[proc.pid] = pidfd
        else:
            os.close(pidfd)
    return armed
