"""LineScreen: a block redrawn in place, only its changed lines written."""

from __future__ import annotations

import io
import os
import pty
import re
import subprocess
import sys

from rich.console import Console

from mpsctl.render.screen import (
    CLEAR_LINE_END,
    CLEAR_TO_END,
    HIDE_CURSOR,
    SHOW_CURSOR,
    LineScreen,
    Section,
)


def terminal(buffer: io.StringIO, height: int = 20) -> Console:
    return Console(file=buffer, width=40, height=height, force_terminal=True,
                   color_system=None, markup=False, highlight=False)  # fmt: skip


def test_second_draw_writes_only_the_changed_line() -> None:
    buffer = io.StringIO()
    with LineScreen(terminal(buffer)) as screen:
        screen.update("header 1\nsame\nfigure 10")
        first = buffer.getvalue()
        assert screen.lines_written == 3
        screen.update("header 2\nsame\nfigure 10")
        second = buffer.getvalue()[len(first) :]
        assert screen.lines_written == 1
    assert first.startswith(HIDE_CURSOR)
    assert buffer.getvalue().endswith(SHOW_CURSOR)
    # up three rows, the new first line, then two steps over the unchanged ones
    assert second == "\x1b[3F" + "header 2\x1b[K\n" + "\n\n"


def test_a_shorter_block_clears_what_it_left_below() -> None:
    buffer = io.StringIO()
    screen = LineScreen(terminal(buffer))
    screen.update("a\nb\nc")
    mark = len(buffer.getvalue())
    screen.update("a\nB")
    assert buffer.getvalue()[mark:] == "\x1b[3F" + "\n" + "B\x1b[K\n" + CLEAR_TO_END
    assert screen.shown == ["a", "B"]


def test_a_block_taller_than_the_terminal_is_cut_to_fit() -> None:
    buffer = io.StringIO()
    screen = LineScreen(terminal(buffer, height=5))
    screen.update("\n".join(f"line {n}" for n in range(10)))
    assert screen.shown == [f"line {n}" for n in range(4)]


def test_watch_on_a_real_terminal_redraws_in_place() -> None:
    main_fd, child_fd = pty.openpty()
    env = {**os.environ, "MPSCTL_SERVICE_URL": "http://127.0.0.1:9", "COLUMNS": "100",
           "LINES": "60"}  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "mpsctl", "watch", "--count", "2", "--interval", "0.2"],
        stdin=child_fd, stdout=child_fd, stderr=child_fd, env=env,
    )  # fmt: skip
    os.close(child_fd)
    chunks = []
    while True:
        try:
            data = os.read(main_fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(main_fd)
    assert proc.wait(timeout=60) == 0
    out = b"".join(chunks).decode("utf-8", "replace")
    moved = re.search(r"\x1b\[(\d+)F", out)
    assert moved is not None  # the second draw moved up over the first, not below it
    first, second = out[: moved.start()], out[moved.end() :]
    assert "mpsctl watch - " in first
    assert int(moved.group(1)) == first.count("\n")  # to the first draw's top line
    rewritten = [line for line in second.split("\n") if CLEAR_LINE_END in line]
    assert 0 < len(rewritten) < first.count("\n") // 2  # most lines were unchanged


def test_sections_whose_data_did_not_change_are_not_rendered_again() -> None:
    buffer = io.StringIO()
    screen = LineScreen(terminal(buffer))
    made: list[str] = []

    def section(name: str, text: str) -> Section:
        def make() -> str:
            made.append(name)
            return text

        return (text, make)

    screen.update_sections([section("top", "12:00"), section("table", "a\nb")])
    assert screen.shown == ["12:00", "", "a", "b"]
    screen.update_sections([section("top", "12:02"), section("table", "a\nb")])
    assert made == ["top", "table", "top"]  # the table's data was the same: kept as drawn
    assert screen.sections_rendered == 1
    assert screen.shown == ["12:02", "", "a", "b"]
    assert screen.lines_written == 1
