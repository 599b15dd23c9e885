"""The first pass: ``rg`` and ``grep -F`` on the prefilter strings give exactly the hits of the
Python search for every needle, on every recorded file and on a large mixed log."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mpsctl.deaths import grep_pass
from mpsctl.deaths.first_pass import ALL_NEEDLES, PREFILTER_NEEDLES, find_in_range
from mpsctl.deaths.grep_pass import grep_hits
from mpsctl.deaths.scanner import find_events, scan_found
from tests.conftest import FIXTURES, read_fixture

TOOLS = [tool for tool in ("rg", "grep") if shutil.which(tool)]
RECORDED = sorted(p.name for p in FIXTURES.iterdir() if p.suffix in (".txt", ".log", ".ips"))


@pytest.fixture(params=TOOLS)
def tool(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(grep_pass, "_GREP", [])
    monkeypatch.setenv("MPSCTL_GREP", request.param)
    return str(request.param)


def test_every_needle_holds_a_prefilter_string() -> None:
    # a needle without one would be missed by the fast pass alone
    for needle in ALL_NEEDLES:
        assert any(short in needle for short in PREFILTER_NEEDLES), needle
    # ripgrep's many-literal SIMD search: 17 strings cost 15x what 16 do
    assert len(PREFILTER_NEEDLES) <= 16


def both(path: Path, start: int = 0) -> tuple[list[tuple[int, int]] | None, list[tuple[int, int]]]:
    size = path.stat().st_size
    with path.open("rb") as handle:
        fast = grep_hits(handle, start, size, PREFILTER_NEEDLES, ALL_NEEDLES)
        reference = find_in_range(handle, start, size)[1]
    return fast, reference


@pytest.mark.parametrize("name", RECORDED)
def test_each_recorded_file_gives_the_same_hits(tool: str, name: str, tmp_path: Path) -> None:
    path = tmp_path / name
    path.write_bytes((FIXTURES / name).read_bytes())
    fast, reference = both(path)
    assert fast == reference


def test_a_large_mixed_log_gives_the_same_hits_from_any_offset(tool: str, tmp_path: Path) -> None:
    filler = b"2026-01-21 19:38:40,123 INFO uvicorn.access 127.0.0.1 POST /generate 200\n" * 3000
    # near misses: a prefilter string without a needle must add no hit
    near = b"x killed nothing; the pool filled; oom-kill disabled; Out of memo\n"
    log = tmp_path / "big.log"
    with log.open("wb") as out:
        for name in RECORDED:
            out.write(filler + near)
            out.write((FIXTURES / name).read_bytes())
        out.write(b"no newline at the end: out of memory")
    fast, reference = both(log)
    assert fast == reference
    assert len(reference) > 150
    middle = log.stat().st_size // 2 + 7  # in the middle of a line
    fast, reference = both(log, middle)
    assert fast == reference
    assert reference


def test_output_that_is_not_the_files_lines_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "a.log"
    log.write_bytes(b"fine\nRuntimeError: MPS backend out of memory\n")
    liar = tmp_path / "liar"
    # right line number and offset, other text: e.g. a tool that transcoded the file
    liar.write_text("#!/bin/sh\ncat >/dev/null\necho '2:5:RuntimeError: CUDA out of memory'\n")
    liar.chmod(0o755)
    monkeypatch.setattr(grep_pass, "_GREP", [])
    monkeypatch.setenv("MPSCTL_GREP", str(liar))
    with log.open("rb") as handle:
        assert grep_hits(handle, 0, log.stat().st_size, PREFILTER_NEEDLES, ALL_NEEDLES) is None
    truth = "2:5:RuntimeError: MPS backend out of memory"
    liar.write_text(f"#!/bin/sh\ncat >/dev/null\necho '{truth}'\n")
    with log.open("rb") as handle:
        assert grep_hits(handle, 0, log.stat().st_size, PREFILTER_NEEDLES, ALL_NEEDLES) == [(31, 1)]


@pytest.mark.skipif(not shutil.which("grep"), reason="needs grep as the second choice")
def test_grep_answers_when_the_default_rg_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "a.log"
    log.write_bytes((FIXTURES / "torch-mps-oom-2.txt").read_bytes() * 3)
    broken = tmp_path / "rg"
    broken.write_text("#!/bin/sh\ncat >/dev/null\necho 'rg: unknown option' >&2\nexit 2\n")
    broken.chmod(0o755)
    monkeypatch.delenv("MPSCTL_GREP", raising=False)
    monkeypatch.setattr(grep_pass, "_GREP", [str(broken)])
    fast, reference = both(log)
    assert fast == reference
    assert len({line for _offset, line in reference}) == 3  # one line per message
    monkeypatch.setenv("MPSCTL_GREP", str(broken))  # named by the user: no second choice
    fast, reference = both(log)
    assert fast is None


def test_many_files_take_one_run_of_rg_and_find_what_one_run_each_finds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``mpsctl oom`` over many logs (dated files, rotated copies): one process start per
    file costs more than searching a small file, so one run of the tool searches them all."""
    real = grep_pass.bundled_rg() or shutil.which("rg")
    assert real is not None, "ripgrep is a dependency: its wheel puts rg beside the scripts"
    calls = tmp_path / "calls"
    wrapper = tmp_path / "rg-counting"
    wrapper.write_text(f'#!/bin/sh\necho run >> "{calls}"\nexec "{real}" "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("MPSCTL_GREP", str(wrapper))
    monkeypatch.setattr(grep_pass, "_GREP", [])
    oom = read_fixture("torch-mps-oom-3.txt")
    logs = []
    for n in range(20):
        log = tmp_path / f"error-2026-01-{n + 1:02d}.log"
        lines = [f"2026-01-{n + 1:02d} 10:00:{s:02d},000 INFO ok {s}\n" for s in range(50)]
        if n % 3 == 0:  # one failure in every third file, at its own time
            lines.insert(n + 5, f"2026-01-{n + 1:02d} 10:30:00,000 ERROR {oom.strip()}\n")
        log.write_text("".join(lines))
        logs.append((log.name, log))
    together = find_events(logs)
    assert calls.read_text().count("run") == 1
    one_each = [item for label, path in logs for item in scan_found(path, label=label)]
    assert calls.read_text().count("run") == 1 + len(logs)
    assert len(together.events) == len(one_each) == 7
    assert sorted((f.file, f.line) for f, _ in together.events) == sorted(
        (f.file, f.line) for f in one_each
    )
