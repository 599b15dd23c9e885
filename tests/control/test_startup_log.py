"""Start-up phases read from a service's log while it is written, and how the console shows them."""

from __future__ import annotations

import io
import time
from pathlib import Path

from rich.console import Console

from mpsctl.control.startup_log import follow_phases, phase_of
from mpsctl.render.lifecycle import ConsoleEvents

# lines as the reference service writes them (logging's default format in serve.py)
STAMP = "2026-11-28 05:07:16,085 INFO"


def test_phase_of_reads_the_reference_service_and_uvicorn_lines() -> None:
    assert phase_of(f"{STAMP} mpsctl.server: importing torch and transformers\n") == (
        "importing torch and transformers"
    )
    assert phase_of(f"{STAMP} mpsctl.server: loading model /m/demo-model on cpu") == (
        "loading model /m/demo-model on cpu"
    )
    assert phase_of(f"{STAMP} mpsctl.server: model loaded in 1.0 s: /m on cpu: rss=1") == (
        "model loaded in 1.0 s; starting the server"
    )
    assert phase_of(
        f"{STAMP} uvicorn.error: Uvicorn running on http://127.0.0.1:8000 (Press CTRL+C to quit)"
    ) == ("listening on http://127.0.0.1:8000; waiting for a healthy answer")
    assert phase_of(f"{STAMP} mpsctl.server: memory before loading /m: rss_bytes=1") is None
    assert phase_of("") is None


def test_follow_phases_reports_lines_appended_after_the_offset_even_split(
    tmp_path: Path,
) -> None:
    log = tmp_path / "service.log"
    log.write_text(f"{STAMP} mpsctl.server: loading model /old on cpu\n", encoding="utf-8")
    offset = log.stat().st_size
    seen: list[str] = []
    with follow_phases(log, offset, seen.append), log.open("a", encoding="utf-8") as out:
        out.write(f"{STAMP} mpsctl.server: importing torch and tr")
        out.flush()
        time.sleep(0.3)  # the follower reads the half line and must keep it
        out.write("ansformers\n")
        out.write(f"{STAMP} mpsctl.server: loading model /new on cpu\n")
        out.flush()
    # the last read happens as the block ends: nothing written before it is lost
    assert seen == ["importing torch and transformers", "loading model /new on cpu"]


def test_follow_phases_survives_a_log_that_does_not_exist(tmp_path: Path) -> None:
    seen: list[str] = []
    with follow_phases(tmp_path / "missing.log", 0, seen.append):
        pass
    assert seen == []


def _events(terminal: bool) -> tuple[ConsoleEvents, io.StringIO]:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=terminal, width=100)
    return ConsoleEvents(console, lambda m: None, lambda m: None), buffer


def test_on_a_terminal_the_spinner_says_the_phase() -> None:
    events, buffer = _events(terminal=True)
    with events.waiting("waiting for http://127.0.0.1:1/health (up to 60 s)"):
        events.phase("building the demo checkpoint (first start only: a few seconds)")
    shown = buffer.getvalue()
    assert "building the demo checkpoint (first start only: a few seconds)" in shown
    assert "(still waiting for health)" in shown
    events.phase("after the wait")  # no spinner any more: nothing shown, nothing raised
    assert "after the wait" not in buffer.getvalue()


def test_off_a_terminal_phases_print_nothing() -> None:
    events, buffer = _events(terminal=False)
    with events.waiting("waiting for http://127.0.0.1:1/health (up to 60 s)"):
        events.phase("loading model /m on cpu")
    assert buffer.getvalue() == ""
