"""The standard-library /proc readers agree with psutil on real processes (the early stop
decides from them, the full path from psutil: both must see the same process)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import psutil
import pytest

from mpsctl.observe import procfs
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
