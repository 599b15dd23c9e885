"""The standard-library /proc readers agree with psutil on real processes (the early stop
decides from them, the full path from psutil: both must see the same process)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import psutil
import pytest

from mpsctl.observe import procfs
from mpsctl.observe.processes.tree import tree
from tests.control.fakes import wait_for

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")

LISTENER = """
import socket, sys, time
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen()
print(server.getsockname()[1], flush=True)
held = []
while True:
    conn, _ = server.accept()
    held.append(conn)  # never closed: a client that leaves leaves CLOSE_WAIT here
"""


@pytest.fixture
def child() -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; print('up', flush=True); time.sleep(60)",
         "", "two words", "--flag"],
        stdout=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline() == "up\n"
    yield proc
    proc.kill()
    proc.wait()


@pytest.fixture
def listener() -> Iterator[tuple[subprocess.Popen[str], int]]:
    proc = subprocess.Popen([sys.executable, "-c", LISTENER], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    yield proc, port
    proc.kill()
    proc.wait()


def stat_of(pid: int) -> procfs.ProcStat:
    fields = procfs.stat_fields(pid)
    boot = procfs.boot_time()
    assert fields is not None
    assert boot is not None
    return procfs.ProcStat(pid, fields, boot, os.sysconf("SC_CLK_TCK"))


def test_boot_time_is_psutils() -> None:
    assert procfs.boot_time() == psutil.boot_time()


def test_a_process_is_identified_as_psutil_identifies_it(child: subprocess.Popen[str]) -> None:
    seen = stat_of(child.pid)
    proc = psutil.Process(child.pid)
    assert seen.pid == child.pid
    assert abs(seen.created - proc.create_time()) < 1e-6
    assert seen.ppid == os.getpid() == proc.ppid()
    assert seen.pgrp == child.pid == os.getpgid(child.pid)  # its own session and group
    assert seen.zombie is False
    assert procfs.real_uid(child.pid) == proc.uids().real == os.getuid()


def test_a_name_with_parentheses_and_spaces_is_read_past(tmp_path: object) -> None:
    code = (
        "import ctypes, time; ctypes.CDLL(None).prctl(15, b'x) (S 1 2 3', 0, 0, 0); "
        "print('named', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "named\n"
        assert psutil.Process(proc.pid).name() == "x) (S 1 2 3"
        seen = stat_of(proc.pid)
        assert seen.ppid == os.getpid()
        assert abs(seen.created - psutil.Process(proc.pid).create_time()) < 1e-6
    finally:
        proc.kill()
        proc.wait()


def test_an_unreaped_child_is_a_zombie() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    assert wait_for(lambda: psutil.Process(proc.pid).status() == psutil.STATUS_ZOMBIE)
    assert stat_of(proc.pid).zombie is True
    proc.wait()
    assert procfs.stat_fields(proc.pid) is None  # reaped: gone


def test_gone_processes_read_as_nothing() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert procfs.stat_fields(proc.pid) is None
    assert procfs.real_uid(proc.pid) is None
    assert procfs.cmdline(proc.pid) == []
    assert procfs.argv_rss(proc.pid) == ([], None)
    assert procfs.socket_inodes([proc.pid]) is None


def test_command_line_and_rss_are_psutils(child: subprocess.Popen[str]) -> None:
    proc = psutil.Process(child.pid)
    argv, rss = procfs.argv_rss(child.pid)
    assert argv == proc.cmdline() == procfs.cmdline(child.pid)
    assert argv[-3:] == ["", "two words", "--flag"]  # empty words kept
    assert rss == proc.memory_info().rss
    assert rss is not None
    assert rss > 1024 * 1024


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ("python\0-m\0mpsctl\0", ["python", "-m", "mpsctl"]),
        ("a\0\0b\0", ["a", "", "b"]),
        ("uvicorn: worker process", ["uvicorn:", "worker", "process"]),  # a rewritten title
        ("title  with  double spaces", ["title", "", "with", "", "double", "spaces"]),
        ("one  argument\0", ["one", "", "argument"]),  # one word with spaces: split on them
        ("one arg with spaces\0", ["one", "arg", "with", "spaces"]),  # psutil's rule
        ("", []),
    ],
)
def test_command_lines_split_as_psutil_splits_them(data: str, words: list[str]) -> None:
    assert procfs.split_cmdline(data) == words


def test_sockets_and_a_client_are_seen(listener: tuple[subprocess.Popen[str], int]) -> None:
    proc, port = listener
    inodes = procfs.socket_inodes([proc.pid])
    assert inodes is not None
    assert len(inodes) == 1
    assert procfs.client_connected([proc.pid]) is False  # listening, nobody connected
    client = socket.create_connection(("127.0.0.1", port))
    try:
        assert wait_for(lambda: procfs.client_connected([proc.pid]))
    finally:
        client.shutdown(socket.SHUT_WR)  # sent its query, waits for the answer
    assert procfs.client_connected([proc.pid]) is True  # CLOSE_WAIT on the service side
    client.close()
    time.sleep(0.1)
    assert procfs.client_connected([proc.pid]) is True  # the service still holds it


def test_a_tree_without_a_listener_cannot_say(child: subprocess.Popen[str]) -> None:
    # no TCP listener (still loading, or a UNIX socket): "unknown", so the full path asks
    assert procfs.socket_inodes([child.pid]) == set()
    assert procfs.client_connected([child.pid]) is True


def test_a_connection_of_the_service_to_elsewhere_is_no_client(
    listener: tuple[subprocess.Popen[str], int],
) -> None:
    # the service's own outgoing connection (to a database, a model store) is on a port it
    # does not listen on: no query of a client in flight
    proc, port = listener
    out = subprocess.Popen(
        [sys.executable, "-c",
         f"import socket, time; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); "
         f"c = socket.create_connection(('127.0.0.1', {port})); print(s.getsockname()[1], "
         "flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert out.stdout is not None
        out.stdout.readline()
        # `out` listens and holds one outgoing connection to `proc`: not a client of its own
        assert wait_for(lambda: len(procfs.socket_inodes([out.pid]) or ()) == 2)
        assert procfs.client_connected([out.pid]) is False
        assert procfs.client_connected([proc.pid]) is True  # for `proc`, `out` is a client
    finally:
        out.kill()
        out.wait()


TREE = """
import subprocess, sys, time
grandchild = "import time; print('leaf', flush=True); time.sleep(60)"
child = (
    "import subprocess, sys, time; "
    f"p = subprocess.Popen([sys.executable, '-c', {grandchild!r}]); time.sleep(60)"
)
subprocess.Popen([sys.executable, "-c", child])
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
time.sleep(60)
"""


def psutil_children(pid: int) -> list[int] | None:
    """The kernel's children list as psutil's process table gives it (this machine's kernel
    may have no children file): the same answer, from the real process table."""
    try:
        return [c.pid for c in psutil.Process(pid).children()]
    except psutil.NoSuchProcess:
        return None


@pytest.fixture
def three_levels() -> Iterator[psutil.Process]:
    proc = subprocess.Popen([sys.executable, "-c", TREE])
    root = psutil.Process(proc.pid)
    assert wait_for(lambda: len(root.children(recursive=True)) == 3)
    yield root
    for p in [*root.children(recursive=True), root]:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    proc.wait()


def test_the_kernels_children_list_is_read_where_it_exists() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        listed = procfs.children_of(os.getpid())
        if os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children"):
            assert listed is not None
            assert child.pid in listed
        else:  # a kernel built without CONFIG_PROC_CHILDREN: the process table is asked
            assert listed is None
    finally:
        child.kill()
        child.wait()
    assert procfs.children_of(child.pid) is None  # gone


def test_a_tree_from_children_lists_is_the_process_tables(three_levels: psutil.Process) -> None:
    scanned = {p.pid for p in three_levels.children(recursive=True)}
    listed = tree([three_levels], children_of=psutil_children)
    assert listed[0].pid == three_levels.pid
    assert {p.pid for p in listed[1:]} == scanned
    assert len(listed) == 4
    # where the kernel has no list, the process table gives the same tree
    assert {p.pid for p in tree([three_levels], children_of=lambda pid: None)} == {
        three_levels.pid,
        *scanned,
    }


def test_an_older_process_in_a_children_list_is_not_a_child(
    three_levels: psutil.Process,
) -> None:
    # a pid reused by a process older than its "parent" is no child (psutil's own rule)
    def with_an_old_one(pid: int) -> list[int] | None:
        found = psutil_children(pid)
        return None if found is None else [*found, os.getpid()]

    listed = {p.pid for p in tree([three_levels], children_of=with_an_old_one)}
    assert os.getpid() not in listed
    assert len(listed) == 4


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return os.path.exists("/proc/net/tcp6")


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_a_client_over_ipv6_is_seen() -> None:
    code = LISTENER.replace("socket.socket()", "socket.socket(socket.AF_INET6)").replace(
        '("127.0.0.1", 0)', '("::1", 0)'
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        assert procfs.client_connected([proc.pid]) is False
        client = socket.create_connection(("::1", port))
        try:
            assert wait_for(lambda: procfs.client_connected([proc.pid]))
        finally:
            client.close()
    finally:
        proc.kill()
        proc.wait()


def test_children_of_every_thread_are_listed() -> None:
    # the kernel lists a child under the thread that forked it
    code = (
        "import subprocess, sys, threading, time\n"
        "spawn = lambda: subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "first = spawn()\n"
        "t = threading.Thread(target=spawn); t.start(); t.join()\n"
        "threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
        "print('two', flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "two\n"
        expected = sorted(c.pid for c in psutil.Process(proc.pid).children())
        assert len(expected) == 2
        if os.path.exists(f"/proc/{proc.pid}/task/{proc.pid}/children"):
            assert sorted(procfs.children_of(proc.pid) or []) == expected
        else:
            assert procfs.children_of(proc.pid) is None
    finally:
        for child in psutil.Process(proc.pid).children():
            child.kill()
        proc.kill()
        proc.wait()


def test_a_group_of_its_own_in_our_session_is_read_as_the_group() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, process_group=0,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "up\n"
        assert os.getsid(proc.pid) != proc.pid  # same session as ours, another group
        assert stat_of(proc.pid).pgrp == proc.pid == os.getpgid(proc.pid)
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a child another real uid")
def test_the_real_uid_is_read_not_the_effective_one() -> None:
    code = "import os, time; os.setresuid(65534, 0, 0); print('set', flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "set\n"
        assert psutil.Process(proc.pid).uids().real == 65534
        assert procfs.real_uid(proc.pid) == 65534
    finally:
        proc.kill()
        proc.wait()


def test_a_command_line_that_is_not_utf8_reads_as_psutil_reads_it() -> None:
    raw = b"caf\xe9-\xff"
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", raw])
    try:
        assert wait_for(lambda: len(psutil.Process(proc.pid).cmdline()) == 4)
        assert procfs.cmdline(proc.pid) == psutil.Process(proc.pid).cmdline()
        assert procfs.cmdline(proc.pid)[-1] == os.fsdecode(raw)
    finally:
        proc.kill()
        proc.wait()
