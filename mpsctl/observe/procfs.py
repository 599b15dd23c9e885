"""Reading Linux's /proc with the standard library only: process identity (start time,
parent, group, real uid), command lines and whether one is the argv ``start`` ran, and the
TCP connections a process tree holds.

For code that runs before psutil is imported (``mpsctl.control.quick_stop``); everything
else reads processes through ``mpsctl.observe.processes``. Each reading follows psutil's on
Linux, so both agree on what a process is (its create_time is boot time + start ticks).
"""

from __future__ import annotations

import os

#: typing's own constant, without importing typing: the early ``stop`` imports this module
#: before anything else, and every millisecond is added to the stop
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence


def split_cmdline(data: str) -> list[str]:
    """The words of ``/proc/PID/cmdline`` (decoded) as psutil's ``Process.cmdline`` gives
    them: NUL-separated, empty words kept; a process that rewrote its title with spaces and
    no trailing NUL (setproctitle) is split on the spaces."""
    if not data:
        return []
    sep = "\0" if data.endswith("\0") else " "
    if data.endswith(sep):
        data = data[:-1]
    words = data.split(sep)
    if sep == "\0" and len(words) == 1 and " " in data:
        words = data.split(" ")
    return words


def argv_matches(recorded: tuple[str, ...], cmdline: tuple[str, ...]) -> bool:
    """Is ``cmdline`` (what the process table shows) the ``recorded`` argv start ran?

    A script's interpreter is prepended by the kernel (``python /venv/bin/uvicorn ...``) and
    exec may turn the program into its full path, so the program is compared by its name
    and the arguments as the tail of the command line.
    """
    if not recorded or not cmdline:
        return True  # nothing to compare: an old pidfile, or a command line we may not read
    if tuple(cmdline) == tuple(recorded):
        return True
    program = os.path.basename(recorded[0])
    rest = tuple(recorded[1:])
    if len(cmdline) == 1 and " " in cmdline[0]:  # a rewritten process title
        return program in cmdline[0]
    if rest and tuple(cmdline[-len(rest) :]) != rest:
        return False
    head = cmdline[: len(cmdline) - len(rest)]
    return any(os.path.basename(w) == program for w in head)


def stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat from the state field on (the name may hold spaces and parentheses)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read()
    except OSError:
        return None
    return text[text.rfind(b")") + 2 :].decode().split()


class ProcStat:
    """One /proc/PID/stat line: what identity and the process tree need."""

    __slots__ = ("created", "pgrp", "pid", "ppid", "zombie")

    def __init__(self, pid: int, fields: list[str], boot: float, ticks: int) -> None:
        self.pid = pid
        self.zombie = fields[0] == "Z"  # as psutil says it (a dead one, X, is gone)
        self.ppid = int(fields[1])
        self.pgrp = int(fields[2])
        self.created = boot + int(fields[19]) / ticks  # starttime: field 22 of stat(5)


def children_of(pid: int) -> list[int] | None:
    """``pid``'s children from the kernel's own list (``/proc/PID/task/TID/children`` of each
    thread): no pass over the whole process table. None where the kernel has no such file
    (built without CONFIG_PROC_CHILDREN) or ``pid`` is gone: then ask the process table."""
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    found: list[int] = []
    for tid in threads:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found += [int(word) for word in f.read().split()]
        except FileNotFoundError:
            if tid == str(pid):
                return None  # the kernel has no children file at all
            continue  # a thread that ended since the listing
        except (OSError, ValueError):
            return None
    return list(dict.fromkeys(found))


def boot_time() -> float | None:
    """The boot time psutil adds to a process's start ticks (``btime`` of /proc/stat)."""
    try:
        with open("/proc/stat", "rb") as f:
            for line in f:
                if line.startswith(b"btime"):
                    return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def real_uid(pid: int) -> int | None:
    """The real uid (psutil's ``uids().real``), None when unreadable."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Uid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def cmdline(pid: int) -> list[str]:
    """The command line as psutil reads it (the full path's), [] when unreadable."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return split_cmdline(os.fsdecode(f.read()))
    except OSError:
        return []


def argv_rss(pid: int) -> tuple[list[str], int | None]:
    """The command line and the resident set size in bytes (None when unreadable)."""
    argv = cmdline(pid)
    try:
        with open(f"/proc/{pid}/statm") as f:
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        rss = None
    return argv, rss


def socket_inodes(pids: Sequence[int]) -> set[str] | None:
    """The inodes of every socket the processes hold; None when a descriptor table is
    unreadable (then nobody can say no client is connected)."""
    found: set[str] = set()
    for pid in pids:
        base = f"/proc/{pid}/fd"
        try:
            names = os.listdir(base)
        except OSError:
            return None
        for name in names:
            try:
                link = os.readlink(f"{base}/{name}")
            except OSError:
                continue  # closed since the listing
            if link.startswith("socket:["):
                found.add(link[8:-1])
    return found


def client_connected(pids: Sequence[int]) -> bool:
    """True when a TCP connection of the tree is on a port the tree listens on (a client,
    whose query may be in flight: ESTABLISHED, or CLOSE_WAIT once a client that sent its
    query shut its side down), or when that cannot be told: a tree with no TCP listener
    (still loading, or serving on a UNIX socket) is left to the full path, which asks the
    service itself."""
    inodes = socket_inodes(pids)
    if not inodes:
        return True
    listening: set[str] = set()
    connected: list[str] = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            if table.endswith("6"):
                continue  # no IPv6 on this kernel
            return True
        for line in lines:
            cols = line.split()
            if len(cols) < 10 or cols[9] not in inodes:
                continue
            port = cols[1].partition(":")[2]  # ADDRESS:PORT, the address in hex
            if cols[3] == "0A":  # LISTEN
                listening.add(port)
            else:  # a socket still open in the tree, whatever the state of its connection
                connected.append(port)
    return not listening or any(port in listening for port in connected)
