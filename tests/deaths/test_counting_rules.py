"""One death once, separate deaths never merged: the counting rule over logs laid out the way
real handlers write them. Every message and kernel line below is a recorded one (fixtures and
corpus); only their arrangement (timestamps, a traceback's frames, a second file) is built here,
to hold one rule per test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mpsctl.deaths.counting import Found, counted
from mpsctl.deaths.scanner import find_events, scan_found
from tests.conftest import read_fixture
from tests.corpus.test_corpus import CORPUS

MPS = read_fixture("torch-mps-oom-3.txt").strip()  # "RuntimeError: MPS backend out of memory ..."
MESSAGE = MPS.removeprefix("RuntimeError: ")
FRAMES = '  File "/srv/app/server.py", line 88, in generate\n    out = model.generate(**inputs)\n'
KILLED = (
    (CORPUS / "k-systemd-6966-var-log-messages-task-row-killed.txt").read_text().splitlines()[1]
)


def deaths(*files: tuple[str, str], tmp_path: Path) -> list[Found]:
    targets = []
    for name, text in files:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        targets.append((name, path))
    return counted([item for item, _ in find_events(targets).events])


def logged(stamp: str) -> str:
    """``log.exception``: the stamped message, then the traceback that repeats it."""
    return f"{stamp} ERROR app: {MESSAGE}\nTraceback (most recent call last):\n{FRAMES}{MPS}\n"


def test_a_handler_line_and_its_traceback_are_one_death(tmp_path: Path) -> None:
    [one] = deaths(("app.log", logged("2026-11-28 03:16:52,120")), tmp_path=tmp_path)
    assert len(one.places) == 2


def test_two_deaths_two_seconds_apart_with_equal_figures_are_two(tmp_path: Path) -> None:
    text = "".join(logged(f"2026-11-28 03:16:{s:02d},120") for s in range(50, 60, 2))
    found = deaths(("app.log", text), tmp_path=tmp_path)
    assert len(found) == 5
    assert [len(f.places) for f in found] == [2] * 5


def test_two_stamped_lines_in_one_second_are_two_deaths(tmp_path: Path) -> None:
    # the shape of a CI log: two tests failing 0.1 ms apart with the same figures
    text = (CORPUS / "r-therock-2118-two-tests-same-figures-ci.txt").read_text("utf-8")
    assert len(deaths(("ci.log", text), tmp_path=tmp_path)) == 2


def test_untimed_tracebacks_far_apart_are_separate_deaths(tmp_path: Path) -> None:
    gap = 'INFO:     127.0.0.1:50312 - "POST /generate HTTP/1.1" 200 OK\n' * 150
    record = f"Traceback (most recent call last):\n{FRAMES}{MPS}\n"
    assert len(deaths(("stderr.log", (record + gap) * 3), tmp_path=tmp_path)) == 3


def test_an_exception_string_and_its_traceback_are_one_death(tmp_path: Path) -> None:
    text = (
        f"Exception processing item!\nException string: '{MESSAGE}\n'\n"
        f"Traceback (most recent call last):\n{FRAMES}{MPS}\n"
    )
    [one] = deaths(("rpc.log", text), tmp_path=tmp_path)
    assert len(one.places) == 2


def test_an_untimed_echo_next_to_the_stamped_line_is_the_same_death(tmp_path: Path) -> None:
    text = f"2026-11-28 03:16:52,120 ERROR app: {MESSAGE}\n{MPS}\n"
    assert len(deaths(("service.log", text), tmp_path=tmp_path)) == 1


def test_one_death_in_three_files_is_one(tmp_path: Path) -> None:
    text = logged("2026-11-28 03:16:52,120")
    found = deaths(("backend.log", text), ("error.log", text), ("app.log", text), tmp_path=tmp_path)
    assert len(found) == 1
    assert {file for file, _ in found[0].places} == {"backend.log", "error.log", "app.log"}


def test_the_same_two_deaths_in_two_files_stay_two(tmp_path: Path) -> None:
    text = logged("2026-11-28 03:16:52,120") + logged("2026-11-28 03:16:53,010")
    found = deaths(("backend.log", text), ("error.log", text), tmp_path=tmp_path)
    assert [len(f.places) for f in found] == [4, 4]


def test_a_kill_line_written_twice_is_one_kill(tmp_path: Path) -> None:
    # memory.oom.group: the kernel prints the victim's Killed process line twice
    [one] = deaths(("kern.log", f"{KILLED}\n{KILLED}\n"), tmp_path=tmp_path)
    assert one.event.pid == 7748  # type: ignore[union-attr]


def test_the_summary_after_the_kill_line_is_the_same_kill(tmp_path: Path) -> None:
    # a journal may hold the kill line before its oom-kill: summary
    text = (CORPUS / "k-ert-7797-dmesg-iso-comma-fraction.txt").read_text("utf-8").splitlines()
    killed, summary = text[7], text[6]
    [one] = deaths(("kern.log", f"{killed}\n{summary}\n"), tmp_path=tmp_path)
    assert (one.event.pid, one.event.constraint) == (1440763, "CONSTRAINT_NONE")  # type: ignore[union-attr]


def test_systemds_note_of_the_kill_is_where_it_was_seen(tmp_path: Path) -> None:
    kill = read_fixture("linux-oomkill-10-journalctl-python-systemd-killed-status9.txt")
    [one] = deaths(("journal.log", kill), tmp_path=tmp_path)
    assert one.kind == "kernel_oom_kill"


def test_a_quoted_kill_in_another_log_at_the_same_time_is_the_same_kill(tmp_path: Path) -> None:
    stamp = "2023-06-13T14:35:38Z"
    report = (CORPUS / "k-npd-766-json-event-quoting-kernel-line.txt").read_text("utf-8")
    [line] = [json.loads("{" + x.strip().rstrip(",") + "}")["message"]
              for x in report.splitlines() if '"message"' in x]  # fmt: skip
    kernel = f"{stamp} node kernel: {line}\n"
    event = json.dumps({"time": stamp, "reason": "OOMKilling", "message": line}) + "\n"
    [one] = deaths(("kern.log", kernel), ("npd.jsonl", event), tmp_path=tmp_path)
    assert len(one.places) == 2


def test_a_json_lines_log_is_scanned_like_any_log(tmp_path: Path) -> None:
    lines = [
        json.dumps({"time": f"2026-11-28T03:16:5{s}Z", "level": "error", "msg": MPS})
        for s in (0, 4)
    ]
    path = tmp_path / "service.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    found = scan_found(path)
    assert [f.kind for f in found] == ["oom", "oom"]
    assert len(counted(found)) == 2


def test_a_jetsam_report_is_known_by_its_header(tmp_path: Path) -> None:
    path = tmp_path / "JetsamEvent-2020-10-15-172958.ips"
    path.write_text(read_fixture("macos-jetsam-2-ips-full-report-highwater.txt"), "utf-8")
    kills = [f for f in scan_found(path) if f.kind == "jetsam_kill"]
    assert kills
    assert all(f.event.page_size for f in kills)  # type: ignore[union-attr]


def test_the_probe_counts_one_death_in_three_logs_once(tmp_path: Path) -> None:
    from datetime import datetime, timedelta, timezone

    from mpsctl.deaths.cursor import new_events

    home = tmp_path / "home"
    now = datetime.now(timezone.utc)
    logs = [tmp_path / name for name in ("backend.log", "error.log", "app.log")]
    for log in logs:
        log.write_text("")
    assert new_events(home, logs, 3600.0, now=now) == []
    stamp = (now + timedelta(seconds=30)).strftime("%Y-%m-%dT%H:%M:%S,120Z")
    for log in logs:
        log.write_text(logged(stamp), encoding="utf-8")
    [one] = new_events(home, logs, 3600.0, now=now + timedelta(minutes=1))
    assert {place["file"] for place in one["seen_in"]} == {str(log) for log in logs}


# --- where a record begins and ends (records.py), on the bytes the scanner reads -----------

REC_TB = b"Traceback (most recent call last):"
REC_FRAMES = b'  File "serve.py", line 9, in answer\n    out = model.generate(ids)\n'
REC_LAST = b"torch.OutOfMemoryError: MPS backend out of memory\n"


def _follows(data: bytes) -> int | None:
    from mpsctl.deaths.records import follows

    return follows(data, data.rindex(b"\n", 0, len(data) - 1) + 1)


@pytest.mark.parametrize(
    ("text", "stamp"),
    [("2024-01-05 10:00:00,123 ERROR x", True), ("[ 7093.543707] x", True),
     ("Jan  5 02:12:02 host kernel: x", True), ("    at frame", False), ("no stamp", False)],
)  # fmt: skip
def test_a_stamped_line_is_any_of_the_log_stamps(text: str, stamp: bool) -> None:
    from mpsctl.deaths.records import stamped

    assert stamped(text) is stamp


def test_the_last_line_of_a_traceback_knows_how_far_up_it_began() -> None:
    assert _follows(REC_TB + b"\n" + REC_FRAMES + REC_LAST) == 3
    # a logger's prefix before the Traceback line on the same line
    assert _follows(b"ERROR:root:" + REC_TB + b"\n" + REC_FRAMES + REC_LAST) == 3
    # a blank line or an unindented line between them: not the traceback's last line
    assert _follows(REC_TB + b"\n\n" + REC_LAST) is None
    assert _follows(REC_TB + b"\n" + b"INFO: done\n" + REC_LAST) is None
    assert _follows(b"INFO: started\n" + REC_LAST) is None


def test_frames_indented_with_a_tab_still_belong_to_the_traceback() -> None:
    tabbed = REC_FRAMES.replace(b"  File", b"\tFile").replace(b"    out", b"\tout")
    assert _follows(REC_TB + b"\n" + tabbed + REC_LAST) == 3


def test_the_first_line_of_a_file_ends_no_traceback() -> None:
    from mpsctl.deaths.records import follows

    data = REC_LAST + REC_TB + b"\n"
    assert follows(data, 0) is None


@pytest.mark.parametrize(("frames", "expected"), [(399, 400), (400, None)])
def test_a_traceback_is_looked_for_up_to_400_lines(frames: int, expected: int | None) -> None:
    data = REC_TB + b"\n" + b"  frame\n" * frames + REC_LAST
    assert _follows(data) == expected


REC_MESSAGE = b"2024-01-05 10:00:00,123 ERROR query failed: MPS backend out of memory"


def _leads(after: bytes) -> int | None:
    from mpsctl.deaths.records import leads

    return leads(REC_MESSAGE + b"\n" + after, len(REC_MESSAGE))


def test_a_message_leads_into_the_traceback_right_below_or_after_its_own_lines() -> None:
    assert _leads(REC_TB + b"\n" + REC_FRAMES + REC_LAST) == 1
    assert _leads(b"  (more of the message)\n" + REC_TB + b"\n" + REC_FRAMES) == 2
    assert _leads(b"ERROR:root:" + REC_TB + b"\n" + REC_FRAMES) == 1
    assert _leads(REC_TB) == 1  # the copy ends on the Traceback line
    assert _leads(b"continued\n" + REC_TB) == 2


@pytest.mark.parametrize("blank", [b"\n", b"   \n"])
def test_a_blank_line_ends_the_record_before_a_traceback(blank: bytes) -> None:
    assert _leads(blank + REC_TB + b"\n" + REC_FRAMES) is None
    assert _leads(blank + REC_TB) is None


def test_a_stamped_line_ends_the_record_before_a_traceback() -> None:
    assert _leads(REC_MESSAGE + b"\n" + REC_TB + b"\n") is None
    assert _leads(b"no traceback follows") is None


@pytest.mark.parametrize(("lines", "expected"), [(7, 8), (8, None)])
def test_a_traceback_is_looked_for_up_to_8_lines_below(lines: int, expected: int | None) -> None:
    assert _leads(b"  more\n" * lines + REC_TB + b"\n") == expected


def test_a_worker_kill_is_quoted_without_trailing_blanks() -> None:
    from mpsctl.deaths.worker_kills import find_worker_kills

    text = read_fixture("gunicorn-sigkill-3-uvicornworker-startup-litellm.txt")
    line = next(line for line in text.splitlines() if "was sent SIGKILL" in line)
    ((index, event),) = find_worker_kills([line + "  \t"])
    assert (index, event.pid, event.raw) == (0, 15825, line)


# --- a found failure's time: exact, a range, or unknown ------------------------------------


def _kill(**where: object) -> Found:
    from mpsctl.deaths.parsers import find_deaths

    (event,) = find_deaths(read_fixture("linux-oomkill-9-journalctl-python-systemd-unit.txt"))
    return Found(event=event, **where)  # type: ignore[arg-type]


def test_a_time_is_exact_a_range_or_unknown() -> None:
    from datetime import datetime, timedelta, timezone

    from mpsctl.deaths.counting import window_start, within

    at = datetime(2026, 1, 21, 3, 16, 52, tzinfo=timezone.utc)
    after, before = at - timedelta(minutes=5), at + timedelta(minutes=5)
    exact = _kill(file="k.log", line=1, when=at, after=after, before=before)
    ranged = _kill(file="k.log", line=1, after=after, before=before)
    unknown = _kill(file="k.log", line=1)
    assert exact.time_text() == "2026-01-21T03:16:52Z"
    assert ranged.time_text() == "between 2026-01-21T03:11:52Z and 2026-01-21T03:21:52Z"
    assert unknown.time_text() is None
    assert _kill(file=None, line=None, after=after).time_text() is None
    assert (window_start(exact), window_start(ranged), window_start(unknown)) == (at, after, None)
    assert within(exact, at) is True
    assert within(exact, at + timedelta(seconds=1)) is False
    assert within(ranged, before) is True
    assert within(ranged, before + timedelta(seconds=1)) is False
    assert within(unknown, at + timedelta(days=365)) is True


def test_a_reader_that_did_not_start_at_the_top_reports_no_line_numbers() -> None:
    from dataclasses import replace

    from mpsctl.deaths.counting import without_lines

    item = replace(_kill(file="a.log", line=7), places=(("a.log", 7), ("b.log", 3)))
    bare = without_lines(item)
    assert (bare.file, bare.line, bare.places) == (
        "a.log",
        None,
        (("a.log", None), ("b.log", None)),
    )
