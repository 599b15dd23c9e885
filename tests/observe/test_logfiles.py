"""Log resolution (dated names), tail from the end, following through rotation."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpsctl.observe import logfiles
from mpsctl.observe.logfiles import (
    LogLine,
    LogSource,
    LogView,
    Notice,
    follow,
    read_last_lines,
    resolve_logs,
)
from mpsctl.settings import load_settings

CONFIG = """
[service]
workdir = "mvp"
command = ["uvicorn", "app.main:app"]
log_file = "backend.log"
log_globs = ["logs/error_*.log", "logs/app_*.log"]
log_backups = 2
"""


@pytest.fixture
def mvp(tmp_path: Path, write_config) -> Path:  # type: ignore[no-untyped-def]
    root = tmp_path / "mvp"
    (root / "logs").mkdir(parents=True)
    write_config(CONFIG)
    return root


def put(path: Path, text: str | bytes, mtime: float | None = None) -> Path:
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def test_dated_names_sort_by_date_in_name_before_mtime(mvp: Path) -> None:
    now = time.time()
    put(mvp / "logs/error_2026-01-21.log", "new\n", mtime=now - 3600)  # older mtime
    put(mvp / "logs/error_2026-01-20.log", "old\n", mtime=now)
    put(mvp / "backend.log", "b\n")
    sources = resolve_logs(load_settings())
    assert [(s.label, s.path) for s in sources] == [
        ("backend", mvp / "backend.log"),
        ("error", mvp / "logs/error_2026-01-21.log"),
        ("app", None),
    ]
    every = resolve_logs(load_settings(), newest_only=False, select=["error"])
    assert [s.path.name for s in every if s.path] == [
        "error_2026-01-21.log",
        "error_2026-01-20.log",
    ]


def test_all_files_include_rotated_backups_and_select_picks(mvp: Path) -> None:
    put(mvp / "backend.log", "b\n")
    put(mvp / "backend.log.1", "b1\n")
    put(mvp / "logs/app_2026-01-21.log", "a\n")
    every = resolve_logs(load_settings(), newest_only=False)
    assert [s.path.name for s in every if s.path] == [
        "backend.log", "backend.log.1", "app_2026-01-21.log"
    ]  # fmt: skip
    assert [s.label for s in resolve_logs(load_settings(), select=["backend"])] == ["backend"]
    assert [s.label for s in resolve_logs(load_settings(), select=["app"])] == ["app"]


class CountingFile(io.FileIO):
    """A real file that counts the bytes read through it."""

    read_bytes = 0

    def read(self, size: int | None = -1, /) -> bytes:
        data = super().read(size) or b""
        self.read_bytes += len(data)
        return data


def test_tail_reads_from_the_end_only(tmp_path: Path) -> None:
    path = tmp_path / "huge.log"
    with path.open("wb") as handle:
        handle.truncate(256 * 1024 * 1024)  # sparse: 256 MiB of zeros, no disk used
        handle.seek(0, os.SEEK_END)
        handle.write(b"".join(b"line %d\n" % i for i in range(1000)))
    with CountingFile(path, "rb") as handle:
        lines = read_last_lines(handle, os.path.getsize(path), 3)
        assert lines == ["line 997", "line 998", "line 999"]
        assert handle.read_bytes < 1024 * 1024


def test_tail_filters_and_keeps_a_final_unterminated_line(tmp_path: Path) -> None:
    path = put(tmp_path / "a.log", "one ok\ntwo\nthree ok\nfour")
    with path.open("rb") as handle:
        assert read_last_lines(handle, path.stat().st_size, 2) == ["three ok", "four"]
        keep = read_last_lines(handle, path.stat().st_size, 5, keep=lambda t: "ok" in t)
        assert keep == ["one ok", "three ok"]


def test_tail_merges_files_in_time_order_and_replaces_bad_utf8(tmp_path: Path) -> None:
    a = put(tmp_path / "a.log", "2026-01-21 10:00:01 a1\n2026-01-21 10:00:04 a2\n  more a2\n")
    b = put(tmp_path / "b.log", b"2026-01-21 10:00:02 b1\n2026-01-21 10:00:05 b\xff2\n")
    view = LogView([LogSource("a", a), LogSource("b", b)])
    lines, notices = view.tail(2)
    view.close()
    assert notices == []
    assert [(line.label, line.text) for line in lines] == [
        ("b", "2026-01-21 10:00:02 b1"),
        ("a", "2026-01-21 10:00:04 a2"),
        ("a", "  more a2"),
        ("b", "2026-01-21 10:00:05 b\ufffd2"),
    ]


def test_tail_merge_keeps_each_files_own_order(tmp_path: Path) -> None:
    # two workers wrote a.log: its stamps step back once; the merge must not reorder a.log
    a = put(tmp_path / "a.log", "2026-01-21 10:00:05 a1\n2026-01-21 10:00:03 a2\n")
    b = put(tmp_path / "b.log", "2026-01-21 10:00:04 b1\n2026-01-21 10:00:06 b2\n")
    view = LogView([LogSource("a", a), LogSource("b", b)])
    lines, _ = view.tail(5)
    view.close()
    assert [line.text[-2:] for line in lines] == ["b1", "a1", "a2", "b2"]


def texts(items: list[LogLine | Notice]) -> list[str]:
    return [i.text if isinstance(i, LogLine) else "! " + i.message for i in items]


def test_follow_picks_up_appended_lines_and_waits_for_the_newline(tmp_path: Path) -> None:
    log = put(tmp_path / "backend.log", "old\n")
    view = LogView([LogSource("backend", log)])
    view.tail(10)
    with log.open("ab") as handle:
        handle.write(b"new 1\nnew \xff2\npart")
    assert texts(view.poll()) == ["new 1", "new \ufffd2"]
    with log.open("ab") as handle:
        handle.write(b"ial\n")
    assert texts(view.poll()) == ["partial"]
    assert view.poll() == []
    view.close()


def test_follow_switches_to_a_newer_dated_file(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    today = put(logs / "error_2026-01-21.log", "a\n")
    view = LogView([LogSource("error", today, str(logs / "error_*.log"))])
    view.tail(5)
    with today.open("ab") as handle:
        handle.write(b"last of the day\n")
    put(logs / "error_2026-01-22.log", "after midnight\n")
    items = view.poll()
    view.close()
    assert texts(items) == [
        "last of the day",
        f"! error log: now following {logs / 'error_2026-01-22.log'}",
        "after midnight",
    ]


def test_follow_survives_rename_rotation_and_truncation(tmp_path: Path) -> None:
    log = put(tmp_path / "backend.log", "start\n")
    view = LogView([LogSource("backend", log)])
    view.tail(5)
    with log.open("ab") as handle:
        handle.write(b"before rotation\n")
    log.rename(tmp_path / "backend.log.1")
    assert texts(view.poll()) == ["before rotation"]  # drained from the renamed file
    put(log, "fresh file\n")
    items = texts(view.poll())
    assert items == [f"! backend log: {log} was replaced (rotated)", "fresh file"]
    put(log, "t\n")  # same inode, shorter: truncated
    assert texts(view.poll()) == [f"! backend log: {log} was truncated", "t"]
    view.close()


def test_rotation_between_two_polls_loses_no_line(tmp_path: Path) -> None:
    # logrotate's rename + create happen between two polls: the rest of the old file first
    log = put(tmp_path / "backend.log", "start\n")
    view = LogView([LogSource("backend", log)])
    view.tail(5)
    with log.open("ab") as handle:
        handle.write(b"old 1\nold 2 no newline")
    log.rename(tmp_path / "backend.log.1")
    put(log, "new 1\n")
    assert texts(view.poll()) == [
        "old 1",
        "old 2 no newline",
        f"! backend log: {log} was replaced (rotated)",
        "new 1",
    ]
    view.close()


def test_missing_file_is_reported_once_then_followed_when_it_appears(tmp_path: Path) -> None:
    log = tmp_path / "later.log"
    view = LogView([LogSource("later", log)])
    lines, notices = view.tail(5)
    assert lines == []
    assert [n.message for n in notices] == [f"later log: {log}: no such file"]
    assert notices[0].warning
    assert view.poll() == []  # not reported again
    put(log, "hello\n")
    assert texts(view.poll()) == [f"! later log: {log} appeared", "hello"]
    view.close()


def test_follow_loop_uses_the_injected_sleep_and_stop(tmp_path: Path) -> None:
    log = put(tmp_path / "a.log", "")
    view = LogView([LogSource("a", log)], keep=lambda t: "keep" in t)
    view.tail(1)
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        with log.open("ab") as handle:
            handle.write(b"keep %d\ndrop\n" % len(sleeps))

    seen = list(follow(view, interval=0.3, sleep=sleep, should_stop=lambda: len(sleeps) >= 4))
    view.close()
    assert texts(seen) == ["keep 1", "keep 2", "keep 3"]
    assert sleeps == [0.3] * 4  # polls: before any sleep, then after sleeps 1-3


def test_a_source_unpacks_as_label_and_path(mvp: Path) -> None:
    pairs = [(label, path) for label, path in resolve_logs(load_settings())]
    assert pairs[0] == ("backend", mvp / "backend.log")


def _best_time(data: bytes, repeat: int = 5) -> float:
    # CPU time of this process: a busy neighbour on a shared machine does not count
    best = float("inf")
    for _ in range(repeat):
        began = time.process_time()
        lines = read_last_lines(io.BytesIO(data), len(data), 2)
        best = min(best, time.process_time() - began)
        assert lines[0] == "first"
        # a line past MAX_LINE_BYTES is shown cut, with the count of bytes left out
        shown, _, left_out = lines[1].partition(" [... ")
        length = len(data) - len(b"first\n") - 1
        assert len(shown) == min(length, logfiles.MAX_LINE_BYTES)
        assert left_out == (
            ""
            if length <= logfiles.MAX_LINE_BYTES
            else f"{length - logfiles.MAX_LINE_BYTES:,} more bytes of this line not shown]"
        )
    return best


def test_a_long_last_line_costs_time_linear_in_its_length() -> None:
    """#13 item 14: a line 16x longer takes about 16x longer, not 256x (it was re-copied once
    per 64 KiB block read backwards: 50 MB took 25 s). The bound leaves a wide margin."""
    short = b"first\n" + b"x" * (1024 * 1024) + b"\n"
    long = b"first\n" + b"x" * (16 * 1024 * 1024) + b"\n"
    ratio = _best_time(long) / max(_best_time(short), 1e-4)
    assert ratio < 80, ratio


@settings(max_examples=150, deadline=None)
@given(
    lines=st.lists(st.text(alphabet="ab\r工", max_size=40), max_size=12),
    final_newline=st.booleans(),
    block=st.integers(min_value=1, max_value=9),
    count=st.integers(min_value=0, max_value=15),
)
def test_last_lines_match_splitlines_for_any_block_size(
    lines: list[str], final_newline: bool, block: int, count: int
) -> None:
    """#13 item 14: the rewritten backwards reader returns what splitting the whole file does,
    whatever the block size (lines much longer than a block included)."""
    text = "\n".join(lines) + ("\n" if final_newline and lines else "")
    data = text.encode()
    expected = [line.rstrip("\r") for line in text.split("\n")]
    if text.endswith("\n") or not text:
        expected.pop()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(logfiles, "BACK_BLOCK", block)
        got = read_last_lines(io.BytesIO(data), len(data), count)
    assert got == (expected[-count:] if count else [])


def test_follow_lists_the_directory_only_when_it_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import glob

    logs = tmp_path / "logs"
    logs.mkdir()
    for day in range(1, 29):  # a month of dated logs: listing them every 0.25 s adds up
        put(logs / f"error_2026-02-{day:02d}.log", "old\n")
    newest = logs / "error_2026-02-28.log"
    view = LogView([LogSource("error", newest, str(logs / "error_*.log"))])
    view.tail(1)
    listings: list[str] = []
    real_glob = glob.glob

    def counting_glob(pattern: str, *args: object, **kwargs: object) -> list[str]:
        listings.append(pattern)
        return real_glob(pattern, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(glob, "glob", counting_glob)
    seen: list[str] = []
    for n in range(20):
        with newest.open("ab") as handle:  # appending changes the file, not the directory
            handle.write(f"line {n}\n".encode())
        seen += texts(view.poll())
    assert seen == [f"line {n}" for n in range(20)]
    assert len(listings) == 1  # the first poll's; then only a stat of the directory
    put(logs / "error_2026-03-01.log", "next month\n")
    assert texts(view.poll()) == [
        f"! error log: now following {logs / 'error_2026-03-01.log'}",
        "next month",
    ]
    assert len(listings) == 2
    view.close()
