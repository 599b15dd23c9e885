"""The early SIGTERM of a bare ``mpsctl stop`` (``mpsctl.control.quick_stop``) against real
situations where it once did what the full path would not: every stop here is the command as
typed, with real processes, sockets and files.

The rule: the early path signals nothing the full path would leave alone, leaves nothing the
full path would stop, and reports the same (its drain note says "no client was connected").
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from mpsctl.masking import mask_argv
from tests.conftest import free_port
from tests.control.fakes import FakeService, fake_service, spawned, wait_for
from tests.control.test_quick_stop import (
    QUICK_NOTE,
    SECRET,
    gone,
    mpsctl,
    started,
    stop_json,
)

__all__ = ["fake_service", "spawned"]  # fixtures

Make = Callable[..., FakeService]

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the early path is Linux's"
)


def test_a_wrapper_that_execs_the_service_is_recorded_as_it_runs_and_stopped(
    isolated_home: Path, write_config: Callable[..., Path], tmp_path: Path, spawned: list
) -> None:
    # `exec` keeps the pid and the start time, not the command line: start records the one
    # the healthy service shows, so later runs know it (before, both paths called the
    # pidfile reused and left the service running with nothing managing it)
    port = free_port()
    script = tmp_path / "fake_service.py"
    from tests.control.fakes import FAKE_SERVICE

    script.write_text(FAKE_SERVICE, encoding="utf-8")
    wrapper = tmp_path / "run.sh"
    wrapper.write_text(
        f"#!/bin/sh\nexec {sys.executable} {script} uvicorn app.main:app --port {port}\n"
    )
    wrapper.chmod(0o755)
    write_config(
        f'[service]\ncommand = ["{wrapper}"]\nurl = "http://127.0.0.1:{port}"\n'
        f'workdir = "{tmp_path}"\nlog_file = "service.log"\nstop_timeout = 2\n'
    )
    proc = started(isolated_home)
    try:
        record = json.loads((isolated_home / "service.pid").read_text())
        assert record["argv"] == proc.cmdline()
        assert str(script) in record["argv"]
        dry = json.loads(mpsctl("stop", "--dry-run", "--json").stdout)
        assert dry["pidfile_state"] == "ok"
        code, doc = stop_json()
        assert (code, doc["status"]) == (0, "stopped")
        assert doc["drain"]["note"] == QUICK_NOTE
        assert wait_for(lambda: gone(proc))
    finally:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()


def test_a_pid_that_runs_another_program_now_is_never_signalled(
    fake_service: Make, isolated_home: Path
) -> None:
    # pid and start time are the recorded ones, the program is not (it exec'd something
    # else after start recorded it): the full path calls the pidfile "reused" and signals
    # nothing; so must the early path
    fake_service()
    proc = started(isolated_home)
    path = isolated_home / "service.pid"
    record = json.loads(path.read_text())
    record["argv"] = ["/usr/sbin/some-other-daemon", "--foreground"]
    path.write_text(json.dumps(record))
    try:
        full = mpsctl("stop", "--dry-run", "--json")
        assert json.loads(full.stdout)["pidfile_state"] == "reused"
        code, doc = stop_json()
        assert (code, doc["status"], doc["pidfile_state"]) == (0, "already-stopped", "reused")
        assert not gone(proc)
    finally:
        proc.kill()


ORPHAN_SERVICE = """
import runpy, subprocess, sys
# a helper left in the service's process group whose parent exited (a daemonised worker):
# no descendant of the service, reached only through the group
helper = f"{sys.executable} -c 'import time; time.sleep(120)' {sys.argv[1]} &"
subprocess.Popen(["sh", "-c", helper]).wait()
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_a_group_member_outside_the_tree_gets_sigterm_as_in_the_full_path(
    fake_service: Make, isolated_home: Path, tmp_path: Path
) -> None:
    fake = fake_service()
    wrapper = tmp_path / "orphaning.py"
    wrapper.write_text(ORPHAN_SERVICE, encoding="utf-8")
    text = fake.config.read_text().replace(
        f'"{sys.executable}", "{fake.script}"', f'"{sys.executable}", "{wrapper}", "{fake.script}"'
    )
    fake.config.write_text(text)
    proc = started(isolated_home)

    def orphans() -> list[psutil.Process]:
        found = []
        for p in psutil.process_iter(["cmdline", "status"]):
            cmd = p.info["cmdline"] or []
            helper = "time.sleep(120)" in " ".join(cmd) and str(fake.script) in cmd
            if helper and p.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(p)
        return found

    assert wait_for(lambda: len(orphans()) == 1)
    orphan = orphans()[0]
    assert orphan.pid not in {c.pid for c in proc.children(recursive=True)}
    assert os.getpgid(orphan.pid) == proc.pid
    code, doc = stop_json()
    assert (code, doc["status"]) == (0, "stopped")
    assert doc["drain"]["note"] == QUICK_NOTE  # the early path ran
    assert gone(proc)
    assert wait_for(lambda: gone(orphan), timeout=5)  # SIGTERM reached it through the group


SLOW_SERVICE = r"""
import http.server, json, sys, threading, time
port = int(sys.argv[sys.argv.index("--port") + 1])
in_flight = [0]
lock = threading.Lock()

class Handler(http.server.BaseHTTPRequestHandler):
    def _send(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/health":
            memory = {"schema": "mpsctl.memory/1", "device": "cpu",
                      "limiter": {"in_flight": in_flight[0], "limit": 4}}
            self._send({"status": "ok", "model_loaded": True, "memory": memory})
        else:  # a query that takes a while
            with lock:
                in_flight[0] += 1
            time.sleep(1.5)
            with lock:
                in_flight[0] -= 1
            self._send({"answer": "done"})

    def do_POST(self):  # the reference service's drain endpoint
        self._send({"in_flight": in_flight[0]})

    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


def test_a_client_that_half_closed_is_still_drained(
    isolated_home: Path, write_config: Callable[..., Path], tmp_path: Path
) -> None:
    # an HTTP/1.0 client that sends its query and shuts its side down (nc -N, some load
    # balancers): the service's socket is in CLOSE_WAIT, not ESTABLISHED, while the answer
    # is computed; the full path drains it
    port = free_port()
    script = tmp_path / "slow_service.py"
    script.write_text(SLOW_SERVICE, encoding="utf-8")
    write_config(
        f'[service]\ncommand = ["{sys.executable}", "{script}", "--port", "{port}"]\n'
        f'url = "http://127.0.0.1:{port}"\nworkdir = "{tmp_path}"\nlog_file = "service.log"\n'
        "stop_timeout = 2\ndrain_timeout = 10\n"
    )
    proc = started(isolated_home)
    answer: list[bytes] = []

    def client() -> None:
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"GET /slow HTTP/1.0\r\nHost: x\r\n\r\n")
            s.shutdown(socket.SHUT_WR)
            answer.append(b"".join(iter(lambda: s.recv(4096), b"")))

    thread = threading.Thread(target=client)
    thread.start()
    try:
        assert wait_for(lambda: any(c.status == "CLOSE_WAIT" for c in proc.net_connections("tcp")))
        code, doc = stop_json()
    finally:
        thread.join(10)
    assert (code, doc["status"]) == (0, "stopped")
    assert answer[0].startswith(b"HTTP/1.0 200"), answer  # answered before the SIGTERM
    assert (doc["drain"]["in_flight"], doc["drain"]["drained"]) == (1, 1)
    assert gone(proc)


@pytest.mark.parametrize("tamper", ["bom", "nan", "utf16"])
def test_a_pidfile_the_full_path_cannot_read_is_never_signalled(
    fake_service: Make, isolated_home: Path, tamper: str
) -> None:
    fake_service()
    proc = started(isolated_home)
    path = isolated_home / "service.pid"
    record = json.loads(path.read_text())
    if tamper == "bom":  # a byte-order mark: not the JSON the full path reads
        path.write_bytes(b"\xef\xbb\xbf" + json.dumps(record).encode())
    elif tamper == "utf16":
        path.write_bytes(json.dumps(record).encode("utf-16"))
    else:  # NaN is no start time: it must not compare equal to every process's
        path.write_text(json.dumps(record).replace(str(record["create_time"]), "NaN"))
    try:
        code, doc = stop_json()
        assert (code, doc["status"]) == (0, "already-stopped"), doc
        assert doc["pidfile_state"] == "invalid"
        assert not gone(proc)
    finally:
        proc.kill()


def test_a_create_time_too_large_for_a_float_is_an_invalid_pidfile(
    fake_service: Make, isolated_home: Path
) -> None:
    fake_service()
    path = isolated_home / "service.pid"
    assert mpsctl("stop").returncode == 0  # records the settings; nothing runs
    path.write_text('{"pid": 5, "create_time": 1' + "0" * 400 + ', "url": "http://x"}')
    result = mpsctl("stop", "--json")
    assert "Traceback" not in result.stderr
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["pidfile_state"] == "invalid"


def test_the_command_shown_is_the_full_paths(fake_service: Make, isolated_home: Path) -> None:
    # an empty argument (--root-path "") is a word of the command line as psutil reads it
    fake_service("--fake-flag", "", "--api-key", "", "tail")
    proc = started(isolated_home)
    expected = " ".join(mask_argv(proc.cmdline()))
    code, doc = stop_json()
    assert code == 0, doc
    assert (doc["drain"] or {}).get("note") == QUICK_NOTE, (doc["message"], doc["pidfile_state"])
    assert doc["processes"][0]["command"] == expected


def test_the_early_path_reads_the_command_line_as_psutil_does() -> None:
    from mpsctl.observe.procfs import split_cmdline

    title = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)", "", "a b", "--x"]
    )
    try:
        proc = psutil.Process(title.pid)
        raw = Path(f"/proc/{title.pid}/cmdline").read_bytes()
        assert split_cmdline(raw.decode()) == proc.cmdline()
    finally:
        title.kill()
        title.wait()


EDITED_ON_SIGTERM = """
import runpy, signal, sys
config = sys.argv[1]

def edited(*args):
    # the settings file edited in the moment between the early SIGTERM and the full path's
    # reading of the settings (an operator's editor, a configuration manager)
    with open(config, "a", encoding="utf-8") as f:
        f.write("[service]\\nbroken = 1\\n")

signal.signal(signal.SIGTERM, edited)
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_settings_that_fail_after_the_early_sigterm_say_it_was_sent(
    fake_service: Make, isolated_home: Path, tmp_path: Path
) -> None:
    fake = fake_service()
    wrapper = tmp_path / "edited_on_sigterm.py"
    wrapper.write_text(EDITED_ON_SIGTERM, encoding="utf-8")
    text = fake.config.read_text().replace(
        f'"{sys.executable}", "{fake.script}"',
        f'"{sys.executable}", "{wrapper}", "{fake.config}", "{fake.script}"',
    )
    fake.config.write_text(text)
    proc = started(isolated_home)
    try:
        result = mpsctl("stop")
        assert result.returncode == 2, result.stderr
        assert "invalid TOML" in result.stderr
        # nothing may read as "nothing was done": the service was signalled
        assert f"SIGTERM was sent to pid {proc.pid}" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    finally:
        proc.kill()


DEEP = "[" * 30000 + "]" * 30000  # under the 64 KiB limit, too deep for json's recursion


def test_a_record_nested_too_deep_is_rewritten_not_a_traceback(
    fake_service: Make, isolated_home: Path
) -> None:
    fake_service()
    isolated_home.mkdir(mode=0o700)
    facts = isolated_home / "stop-facts.json"
    facts.write_text(DEEP)
    result = mpsctl("stop")
    assert (result.returncode, result.stderr) == (0, "")
    assert isinstance(json.loads(facts.read_text()), dict)  # recorded again


def test_a_pidfile_nested_too_deep_is_invalid_not_a_traceback(
    fake_service: Make, isolated_home: Path
) -> None:
    fake_service()
    assert mpsctl("stop").returncode == 0  # records the settings; nothing runs
    (isolated_home / "service.pid").write_text(DEEP)
    result = mpsctl("stop", "--json")
    assert "Traceback" not in result.stderr
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["pidfile_state"] == "invalid"


SLOW_EXIT = """
import os, runpy, signal, sys, time
signal.signal(signal.SIGTERM, lambda *a: (time.sleep(1.5), os._exit(0)))
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_settings_edited_during_a_stop_are_not_recorded_with_the_old_ones(
    fake_service: Make, isolated_home: Path, tmp_path: Path
) -> None:
    # the record written at the end of a stop describes the settings it loaded at the start:
    # it must not be filed under the inputs of the settings as they are at the end
    old = fake_service()
    wrapper = tmp_path / "slow_exit.py"
    wrapper.write_text(SLOW_EXIT, encoding="utf-8")
    old_text = old.config.read_text().replace(
        f'"{sys.executable}", "{old.script}"', f'"{sys.executable}", "{wrapper}", "{old.script}"'
    )
    old.config.write_text(old_text)
    kept = tmp_path / "old.toml"
    kept.write_text(old_text)
    new_port = free_port()
    new_text = old_text.replace(str(old.port), str(new_port))
    started(isolated_home)
    # the full path (--wait 0): it takes the lock once it has loaded the settings
    stopping = subprocess.Popen([sys.executable, "-m", "mpsctl", "stop", "--wait", "0"],
                                env={**os.environ, "MPSCTL_TOKEN": SECRET},  # as mpsctl()'s
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        lock = isolated_home / "mpsctl.lock"
        assert wait_for(lambda: lock.read_text().endswith(" stop\n"), timeout=5)
        swap = tmp_path / "swap.toml"
        swap.write_text(new_text)  # the operator switches to the new settings meanwhile
        swap.replace(old.config)
    finally:
        assert stopping.wait(20) == 0
    # the old configuration, started explicitly in the same MPSCTL_HOME
    again = mpsctl("--config", str(kept), "start")
    assert again.returncode == 0, again.stderr
    proc = psutil.Process(json.loads((isolated_home / "service.pid").read_text())["pid"])
    try:
        full = mpsctl("stop", "--dry-run")
        assert "nothing signalled" in full.stderr  # another configuration's service
        result = mpsctl("stop")
        assert result.returncode != 0, result.stderr
        assert not gone(proc)
    finally:
        proc.kill()


def test_a_symlinked_settings_file_is_recorded(
    fake_service: Make, isolated_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # dotfile managers (stow, chezmoi) link the settings file: the record is still kept, and
    # pointing the link at another file makes it stale
    fake = fake_service()
    link = tmp_path / "linked.toml"
    link.symlink_to(fake.config)
    monkeypatch.setenv("MPSCTL_CONFIG", str(link))
    proc = started(isolated_home)
    code, doc = stop_json()
    assert (code, doc["drain"]["note"]) == (0, QUICK_NOTE)
    assert gone(proc)
    other = tmp_path / "other.toml"
    other.write_text(fake.config.read_text())
    proc = started(isolated_home)
    link.unlink()
    link.symlink_to(other)  # the same settings, another file: the record no longer counts
    code, doc = stop_json()
    assert code == 0
    assert doc["drain"]["note"] != QUICK_NOTE
    assert gone(proc)
