"""Is this process the service, on what the process table and the pidfile say: the argv a
pidfile recorded against the forms the process table shows, the pidfile record itself, and
the rule applied to real processes (a listening one, a worker under its parent), all in
this process (the mutation run sees only these)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from mpsctl.errors import ConfigError
from mpsctl.observe.processes.matching import (
    UDS,
    _absolute_words,
    _line,
    _matching_psutil,
    _words,
    argv_matches,
    argv_port,
    compile_match,
    is_the_service,
    listening_ports,
    roots_of,
)
from mpsctl.observe.processes.pidfile import (
    PIDFILE_MAX,
    PidRecord,
    default_pidfile_path,
    read_pidfile,
)
from mpsctl.observe.processes.tree import protected_pids
from mpsctl.settings import Settings, load_settings
from tests.control.fakes import wait_for

RECORDED = ("/v/bin/uvicorn", "app.main:app", "--port", "8000")


@pytest.mark.parametrize(
    ("cmdline", "same"),
    [
        (RECORDED, True),  # exactly what start ran
        (("/v/bin/python3", *RECORDED), True),  # the kernel prepends a script's interpreter
        (("/usr/bin/python3", "uvicorn", *RECORDED[1:]), True),  # the program by its name
        (("uvicorn app.main:app --port 8000",), True),  # a rewritten process title
        (("gunicorn app.main:app --port 8000",), False),  # a title without the program
        (("/bin/sleep", "600"), False),
        (("/v/bin/uvicorn", "app.main:app", "--port", "9000"), False),  # another tail
        (("/v/bin/gunicorn", "app.main:app", "--port", "8000"), False),  # another program
        (("/v/bin/python3", "app.main:app", "--port", "8000"), False),  # the program missing
        (("app.main:app", "--port", "8000"), False),  # only the tail
        ((), True),  # a command line we may not read: nothing to compare
        (("/opt/my app/python", *RECORDED), True),  # a space in the interpreter's path
    ],
)
def test_argv_matches_the_forms_the_process_table_shows(
    cmdline: tuple[str, ...], same: bool
) -> None:
    assert argv_matches(RECORDED, cmdline) is same


def test_argv_matches_edges() -> None:
    assert argv_matches((), ("anything",)) is True  # an old pidfile without argv
    # a program recorded without arguments: its name anywhere in the command line
    assert argv_matches(("/v/bin/uvicorn",), ("/usr/bin/python3", "/x/uvicorn")) is True
    assert argv_matches(("/v/bin/uvicorn",), ("/usr/bin/python3", "/x/gunicorn")) is False
    # the program's name inside the recorded tail does not stand for the program
    assert argv_matches(("/bin/uvicorn", "uvicorn"), ("/bin/python", "uvicorn")) is False
    # a title with spaces is compared whole only when it is the only word
    assert argv_matches(("/v/bin/uvicorn", "a b"), ("/v/bin/python", "a b")) is False
    assert argv_matches(("/v/bin/uvicorn", "a b"), ("/v/bin/uvicorn", "a b")) is True


def test_an_invalid_match_pattern_is_a_config_error_naming_it() -> None:
    assert compile_match(r"uvicorn .*:app").search("x uvicorn app.main:app")
    with pytest.raises(ConfigError) as caught:
        compile_match("uvicorn(")
    assert str(caught.value) == (
        "service.match: invalid regular expression 'uvicorn(': "
        "missing ), unterminated subpattern at position 7"
    )


# ------------------------------------------------------------------------------- pidfile


def test_a_record_round_trips_through_its_document() -> None:
    record = PidRecord(4242, 1700000000.25, RECORDED, "http://127.0.0.1:8000",
                       "2026-01-21T03:16:52Z", "1.2.3", 4240)  # fmt: skip
    doc = record.to_json()
    assert doc == {
        "pid": 4242,
        "create_time": 1700000000.25,
        "argv": list(RECORDED),
        "url": "http://127.0.0.1:8000",
        "started_at": "2026-01-21T03:16:52Z",
        "mpsctl_version": "1.2.3",
        "pgid": 4240,
    }
    assert PidRecord.from_json(json.loads(json.dumps(doc))) == record


def test_an_old_pidfile_with_pid_and_time_only_is_a_record() -> None:
    record = PidRecord.from_json({"pid": 1, "create_time": 5})
    assert record == PidRecord(1, 5.0, (), None, None, None, None)
    assert isinstance(record.create_time, float)


@pytest.mark.parametrize(
    ("doc", "why"),
    [
        ([1, 2], "not a JSON object"),
        ("text", "not a JSON object"),
        ({"create_time": 1.0}, "no valid pid"),
        ({"pid": "12", "create_time": 1.0}, "no valid pid"),
        ({"pid": True, "create_time": 1.0}, "no valid pid"),
        ({"pid": 0, "create_time": 1.0}, "no valid pid"),
        ({"pid": -3, "create_time": 1.0}, "no valid pid"),
        ({"pid": 1.5, "create_time": 1.0}, "no valid pid"),
        ({"pid": 7}, "no valid create_time"),
        ({"pid": 7, "create_time": "1.0"}, "no valid create_time"),
        ({"pid": 7, "create_time": False}, "no valid create_time"),
        ({"pid": 7, "create_time": None}, "no valid create_time"),
    ],
)
def test_a_document_without_a_valid_pid_or_time_is_refused(doc: object, why: str) -> None:
    with pytest.raises(ValueError, match=f"^{why}$"):
        PidRecord.from_json(doc)


def test_fields_of_the_wrong_type_are_left_out_not_guessed() -> None:
    record = PidRecord.from_json({
        "pid": 9, "create_time": 2.5, "argv": "uvicorn app:app", "url": 8000,
        "started_at": ["x"], "mpsctl_version": None, "pgid": True,
    })  # fmt: skip
    assert record == PidRecord(9, 2.5, (), None, None, None, None)
    assert PidRecord.from_json({"pid": 9, "create_time": 2.5, "pgid": "9"}).pgid is None
    assert PidRecord.from_json({"pid": 9, "create_time": 2.5, "argv": None}).argv == ()
    # argv words are kept as text, whatever JSON type they were written as
    assert PidRecord.from_json({"pid": 9, "create_time": 2.5, "argv": ["a", 1]}).argv == (
        "a",
        "1",
    )


def test_the_pidfile_lives_in_the_state_home(tmp_path: Path) -> None:
    settings = load_settings(environ={"MPSCTL_HOME": str(tmp_path)})
    assert default_pidfile_path(settings) == settings.home / "service.pid"


def test_read_pidfile_none_invalid_or_the_record(tmp_path: Path) -> None:
    path = tmp_path / "service.pid"
    assert read_pidfile(path) is None
    path.write_text(json.dumps({"pid": 12, "create_time": 3.0}), encoding="utf-8")
    assert read_pidfile(path) == PidRecord(12, 3.0)
    for bad in (b"", b"{", b"\xff\xfe{}", b"[]", b'{"pid": 12}'):
        path.write_bytes(bad)
        assert read_pidfile(path) == "invalid", bad
    path.write_bytes(json.dumps({"pid": 12, "create_time": 3.0}).encode().ljust(PIDFILE_MAX))
    assert read_pidfile(path) == PidRecord(12, 3.0)  # exactly the limit: read
    path.write_bytes(json.dumps({"pid": 12, "create_time": 3.0}).encode().ljust(PIDFILE_MAX + 1))
    assert read_pidfile(path) == "invalid"  # one byte over: refused, not read


def test_read_pidfile_never_follows_a_link_nor_waits_on_a_fifo(tmp_path: Path) -> None:
    real = tmp_path / "real.pid"
    real.write_text(json.dumps({"pid": 12, "create_time": 3.0}), encoding="utf-8")
    link = tmp_path / "link.pid"
    link.symlink_to(real)
    assert read_pidfile(link) == "invalid"
    fifo = tmp_path / "fifo.pid"
    os.mkfifo(fifo)
    assert read_pidfile(fifo) == "invalid"


# ----------------------------------------------------------------- real processes, the rule

# listens on the port, and holds a connection to itself open (its ends are not listening)
LISTENER = (
    "import socket, sys, time\n"
    "s = socket.socket()\n"
    "s.bind(('127.0.0.1', int(sys.argv[1])))\n"
    "s.listen()\n"
    "c = socket.create_connection(('127.0.0.1', int(sys.argv[1])))\n"
    "a, _ = s.accept()\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        proc.kill()
        proc.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _settings(port: int) -> Settings:
    return load_settings(overrides={"service.url": (f"http://127.0.0.1:{port}", "--url")})


def _listener(procs: list[subprocess.Popen[bytes]], port: int, *extra: str) -> psutil.Process:
    proc = subprocess.Popen([sys.executable, "-c", LISTENER, str(port), *extra],
                            stdout=subprocess.PIPE)  # fmt: skip
    procs.append(proc)
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"
    return psutil.Process(proc.pid)


def test_a_process_listening_on_the_services_port_is_the_service(
    procs: list[subprocess.Popen[bytes]],
) -> None:
    port, other = _free_port(), _free_port()
    service = _listener(procs, port)
    assert listening_ports([service]) == {port}
    assert is_the_service(service, _settings(port)) is True
    assert is_the_service(service, _settings(other)) is False
    # its argv names another port: never the service, whatever it listens on
    named = _listener(procs, _free_port(), "--port", str(other))
    assert is_the_service(named, _settings(other)) is False


def test_a_stale_pidfile_speaks_against_an_older_process_with_another_argv(
    procs: list[subprocess.Popen[bytes]],
) -> None:
    port = _free_port()
    service = _listener(procs, port)
    later = service.create_time() + 10
    theirs = PidRecord(1, later, ("/v/bin/uvicorn", "other:app"))
    assert is_the_service(service, _settings(port), theirs) is False
    ours = PidRecord(1, later, tuple(service.cmdline()))
    assert is_the_service(service, _settings(port), ours) is True
    earlier = PidRecord(1, service.create_time() - 10, ("/v/bin/uvicorn", "other:app"))
    assert is_the_service(service, _settings(port), earlier) is True


def test_a_gone_process_is_not_the_service(procs: list[subprocess.Popen[bytes]]) -> None:
    port = _free_port()
    service = _listener(procs, port)
    procs[-1].kill()
    procs[-1].wait()
    assert is_the_service(service, _settings(port)) is False
    assert listening_ports([service]) == set()
    other = _free_port()
    assert listening_ports([service, _listener(procs, other)]) == {other}


PARENT = (
    "import subprocess, sys, time\n"
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', 'worker'])\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)


def test_a_worker_under_a_matched_parent_is_not_a_root(
    procs: list[subprocess.Popen[bytes]],
) -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE)
    procs.append(parent)
    assert parent.stdout is not None
    assert parent.stdout.readline() == b"ready\n"
    top = psutil.Process(parent.pid)
    assert wait_for(lambda: len(top.children()) == 1)
    [worker] = top.children()
    try:
        assert [p.pid for p in roots_of([worker, top])] == [top.pid]
        assert [p.pid for p in roots_of([worker])] == [worker.pid]
        parent.kill()
        parent.wait()
        assert [p.pid for p in roots_of([top, worker])] == [worker.pid]  # the parent is gone
    finally:
        worker.kill()


# ------------------------------------------------------------- command lines as the table shows


@pytest.mark.parametrize(
    ("words", "port"),
    [
        (("--port", "1"), 1),
        (("-p1",), 1),
        (("--port", "65535"), 65535),
        (("--port", "65536"), None),
        (("--bind=unix:/run/a=b.sock",), UDS),
        (("--workers", "4"), None),  # a number after another flag is not a port
        (("--host", "127.0.0.1:9000"), None),  # nor host:port after another flag
        (("--port", "8000", "--bind=localhost"), 8000),  # a bind without a port says nothing
    ],
)
def test_argv_port_bounds_and_other_flags(words: tuple[str, ...], port: int | None) -> None:
    assert argv_port(("/v/bin/uvicorn", "app.main:app", *words)) == port


def test_relative_paths_are_made_absolute_from_the_process_cwd() -> None:
    argv = ["venv/bin/uvicorn", "/abs/x", "--port", "8000", "app.main:app", "a/b:c", "-d/x"]
    assert _absolute_words(lambda: "/srv/app", argv) == (
        "/srv/app/venv/bin/uvicorn /abs/x --port 8000 app.main:app a/b:c -d/x"
    )
    # nothing relative (a flag's value with a slash is not a path to resolve): not asked
    assert _absolute_words(lambda: "/srv/app", ["python", "--log=x/y", "/abs"]) is None

    def gone() -> str:
        raise psutil.NoSuchProcess(1)

    def unreadable() -> str:
        raise PermissionError("/proc/1/cwd")

    assert _absolute_words(gone, argv) is None
    assert _absolute_words(unreadable, argv) is None


@pytest.mark.parametrize(
    ("data", "words", "line"),
    [
        (b"python\0-c\0a b\0", ["python", "-c", "a b"], "python -c a b"),
        (b"one\0", ["one"], "one"),
        # a title the process rewrote: one NUL-terminated word with spaces, or spaces only
        (b"uvicorn: worker 1\0", ["uvicorn:", "worker", "1"], "uvicorn: worker 1"),
        (b"uvicorn: worker", ["uvicorn:", "worker"], "uvicorn: worker"),
        (b"uvicorn: worker ", ["uvicorn:", "worker"], "uvicorn: worker"),
        (b" x ", ["", "x"], " x"),
    ],
)
def test_words_and_line_are_psutils_reading_of_proc_cmdline(
    data: bytes, words: list[str], line: str
) -> None:
    assert _words(data) == words
    assert _line(data) == line


def test_the_psutil_pass_matches_by_line_or_relative_path(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    # the pass used where there is no /proc, run here against the same real process table
    argv0 = "venv-y/bin/uvicorn-y"
    procs.append(subprocess.Popen([argv0, "-c", "import time; time.sleep(60)"],
                                  executable=sys.executable, cwd=tmp_path))  # fmt: skip
    pid = procs[-1].pid
    assert wait_for(lambda: psutil.Process(pid).cmdline()[:1] == [argv0])
    protected = protected_pids()
    assert [p.pid for p in _matching_psutil(compile_match(r"uvicorn-y -c"), protected)] == [pid]
    absolute = compile_match(str(tmp_path / argv0))
    assert [p.pid for p in _matching_psutil(absolute, protected)] == [pid]
    assert _matching_psutil(compile_match(r"no-such-service-[0-9]{9}"), protected) == []
    assert _matching_psutil(compile_match(r"uvicorn-y -c"), protected | {pid}) == []
