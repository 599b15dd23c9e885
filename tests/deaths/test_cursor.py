"""The probe's OOM count: untimed lines counted once with a time range, only new bytes read,
and a damaged line next to a real OOM hides nothing."""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

from click.testing import CliRunner

from mpsctl.cli import main
from mpsctl.deaths.cursor import new_events, nothing_new, read_state
from mpsctl.paths import home_dir
from tests.conftest import free_port, read_fixture

HOUR = 3600.0


def probe_count(home: Path, log: Path, now: datetime) -> list[dict]:  # type: ignore[type-arg]
    return new_events(home, [log], HOUR, now=now)


def test_an_untimed_oom_is_counted_once_with_an_honest_range(tmp_path: Path) -> None:
    home = tmp_path / "home"
    log = tmp_path / "backend.log"
    old = (datetime.now(timezone.utc) - timedelta(hours=3)).strftime("%Y-%m-%d %H:%M:%S")
    log.write_text(f"{old} INFO uvicorn running\n")  # a timestamped line 3 h ago, then stderr
    t0 = datetime.now(timezone.utc)
    assert probe_count(home, log, t0) == []
    # uvicorn's stderr: a real CPU allocator failure, no timestamp on any line
    with log.open("a") as out:
        out.write(read_fixture("torch-cpu-oom-2-cant-allocate-errcode12-CPUAllocator65.txt"))
    t1 = t0 + timedelta(minutes=5)
    [event] = probe_count(home, log, t1)
    assert event["kind"] == "cpu_alloc"
    assert event["requested_bytes"] == 4_000_000_000_000_000
    assert event["time"] is None  # never the 3-hour-old stamp above it
    assert event["time_range"] == {
        "after": t0.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "before": t1.isoformat(timespec="seconds").replace("+00:00", "Z"),
    }
    # the next probes: nothing new; the same death stays in the window (once) for an hour
    # from when it was first seen, then leaves it
    assert probe_count(home, log, t1 + timedelta(minutes=1)) == [event]
    assert probe_count(home, log, t1 + timedelta(minutes=59)) == [event]
    assert probe_count(home, log, t1 + timedelta(minutes=61)) == []
    assert read_state(home)[str(log)]["offset"] == log.stat().st_size


def test_only_new_bytes_are_read_and_timed_events_stay_for_the_window(tmp_path: Path) -> None:
    home = tmp_path / "home"
    log = tmp_path / "error.log"
    now = datetime.now(timezone.utc)
    stamp = (now - timedelta(minutes=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    message = read_fixture("torch-mps-oom-3.txt").strip()
    # the untimed INFO lines after it put the message outside the bytes the cursor
    # fingerprints (the last FINGERPRINT_BYTES before its offset)
    log.write_text(f"{stamp} ERROR {message}\n" + "INFO uvicorn: a request\n" * 400)
    assert len(probe_count(home, log, now)) == 1
    # the bytes already read are changed in place: a cursor that re-read them would notice
    data = log.read_bytes().replace(b"out of memory", b"out of mem0ry")
    with log.open("r+b") as out:
        out.write(data)
    [again] = probe_count(home, log, now + timedelta(minutes=1))  # remembered, not re-read
    assert again["time"] == stamp
    assert probe_count(home, log, now + timedelta(hours=2)) == []  # out of the window


def test_a_rotated_log_is_read_from_its_start(tmp_path: Path) -> None:
    home = tmp_path / "home"
    log = tmp_path / "backend.log"
    log.write_text("starting\n" * 100)
    now = datetime.now(timezone.utc)
    assert probe_count(home, log, now) == []
    os.rename(log, tmp_path / "backend.log.1")
    log.write_text(read_fixture("torch-cpu-oom-8-cant-allocate-CPUAllocator71.txt"))
    found = probe_count(home, log, now + timedelta(minutes=1))
    assert [e["kind"] for e in found] == ["cpu_alloc"]


def test_probe_counts_a_real_oom_next_to_an_overflowing_line(
    tmp_path: Path,
    write_config,  # type: ignore[no-untyped-def]
) -> None:
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    now = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S")
    bad = (
        "MPS backend out of memory (MPS allocated: " + "9" * 400 + " GB, other allocations: "
        "1.00 GB, max allowed: 18.13 GB). Tried to allocate 1.00 MB on private pool."
    )
    real = read_fixture("torch-mps-oom-3.txt").strip()
    (tmp_path / "backend.log").write_text(f"{now} ERROR {bad}\n{now} ERROR {real}\n")
    del stamp
    write_config(
        f'[service]\ncommand = ["x"]\nlog_file = "backend.log"\n'
        f'url = "http://127.0.0.1:{free_port()}"\n'
    )
    result = CliRunner().invoke(main, ["probe", "--json"])
    doc = json.loads(result.stdout)
    events = doc["oom"]["events"]
    assert len(events) == 2, result.stderr
    assert {e["allocated_bytes"] for e in events} >= {None}
    assert any(e["max_allowed_bytes"] == round(9.07 * 1024**3) for e in events)
    nagios = CliRunner().invoke(main, ["probe", "--nagios"])
    assert nagios.exit_code != 0
    assert "out-of-memory" in nagios.stdout
    assert home_dir().is_dir()


def test_new_ordinary_lines_move_the_cursor_without_the_scanner_and_an_oom_still_counts(
    tmp_path: Path,
) -> None:
    """The probe's quick check of a log written all the time (its access log): new bytes
    without any prefilter string move the cursor; an OOM written after them is still found
    once, by the scanner, exactly as without the quick check."""
    home = tmp_path / "home"
    log = tmp_path / "backend.log"
    now = datetime.now(timezone.utc)
    log.write_text('INFO:     127.0.0.1:50000 - "GET /health HTTP/1.1" 200 OK\n')
    assert nothing_new(home, log, now=now) is False  # no cursor yet: the scanner must run
    assert probe_count(home, log, now) == []
    with log.open("a") as out:
        out.write('INFO:     127.0.0.1:50002 - "POST /query HTTP/1.1" 200 OK\n' * 100)
    assert nothing_new(home, log, now=now) is True
    assert read_state(home)[str(log)]["offset"] == log.stat().st_size
    with log.open("a") as out:
        out.write(read_fixture("torch-cpu-oom-2-cant-allocate-errcode12-CPUAllocator65.txt"))
    assert nothing_new(home, log, now=now) is False  # a prefilter string: not quick
    assert read_state(home)[str(log)]["offset"] < log.stat().st_size  # left as it was
    [event] = probe_count(home, log, now + timedelta(minutes=1))
    assert event["kind"] == "cpu_alloc"
    # an untimed event is remembered for an hour from when it was first seen: the probe must
    # report it again, so the quick check (which reports nothing) steps aside meanwhile
    assert nothing_new(home, log, now=now) is False
    [again] = probe_count(home, log, now + timedelta(minutes=2))
    assert again["kind"] == "cpu_alloc"
    # a rotated log (another inode) is never quick: it is read from its start
    log.unlink()
    log.write_text('INFO:     127.0.0.1:50004 - "GET /health HTTP/1.1" 200 OK\n')
    assert nothing_new(home, log, now=now) is False


def test_a_log_truncated_and_regrown_past_the_offset_is_scanned_again(tmp_path: Path) -> None:
    """Truncated in place (copytruncate) and grown past the old offset before the next probe:
    the bytes before the offset are not the ones read, so the whole file is new."""
    home = tmp_path / "home"
    log = tmp_path / "backend.log"
    log.write_text("INFO uvicorn: a request\n" * 100)
    now = datetime.now(timezone.utc)
    assert probe_count(home, log, now) == []
    with log.open("r+b") as out:  # same inode, new content longer than the old offset
        out.truncate(0)
        out.write(read_fixture("torch-cpu-oom-8-cant-allocate-CPUAllocator71.txt").encode())
        out.write(b"INFO uvicorn: a request\n" * 200)
    found = probe_count(home, log, now + timedelta(minutes=1))
    assert [e["kind"] for e in found] == ["cpu_alloc"]


def test_a_malformed_cursor_entry_is_replaced_and_counting_goes_on(tmp_path: Path) -> None:
    """One entry of the wrong type (hand-edited, another version's) no longer breaks every
    later probe: it counts as no cursor and the probe writes a good one."""
    home = tmp_path / "home"
    home.mkdir()
    log = tmp_path / "backend.log"
    log.write_text("INFO uvicorn: a request\n")
    for bad in (5, {"offset": "12", "dev": 1, "ino": 2}, {"recent": [1]}, ["x"]):
        (home / "oom_cursor.json").write_text(json.dumps({"files": {str(log): bad}}))
        now = datetime.now(timezone.utc)
        assert probe_count(home, log, now) == []
        entry = read_state(home)[str(log)]
        assert entry["offset"] == log.stat().st_size
    with log.open("a") as out:  # an untimed OOM: counted only with a good cursor behind it
        out.write(read_fixture("torch-cpu-oom-8-cant-allocate-CPUAllocator71.txt"))
    found = probe_count(home, log, datetime.now(timezone.utc) + timedelta(minutes=1))
    assert [e["kind"] for e in found] == ["cpu_alloc"]


def test_a_cursor_state_that_is_a_fifo_or_dev_zero_is_no_cursor(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    log = tmp_path / "backend.log"
    log.write_text("INFO uvicorn: a request\n")
    os.mkfifo(home / "oom_cursor.json")
    assert read_state(home) == {}
    (home / "oom_cursor.json").unlink()
    (home / "oom_cursor.json").symlink_to("/dev/zero")
    assert read_state(home) == {}
    assert probe_count(home, log, datetime.now(timezone.utc)) == []
    assert read_state(home)[str(log)]["offset"] == log.stat().st_size  # replaced by a file
