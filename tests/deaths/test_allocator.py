"""OOM recogniser: every recorded wording to the exact byte, explanations, streaming scan."""

from __future__ import annotations

import os
import time
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path

import pytest

from mpsctl.deaths import allocator, first_pass, scanner
from mpsctl.deaths.allocator import parse_oom, summary
from mpsctl.deaths.allocator_advice import explain
from mpsctl.deaths.scanner import scan_file
from mpsctl.observe.logtime import line_time
from tests.conftest import FIXTURES, read_fixture

KIB, MIB, GIB = 1024, 1024**2, 1024**3
_SCALE = {"bytes": 1, "KB": KIB, "KiB": KIB, "MB": MIB, "MiB": MIB, "GB": GIB, "GiB": GIB}


def exact(text: str) -> int:
    """``"7.43 GB"`` -> 7977901752: worked out here in exact decimal arithmetic (PyTorch's
    GB/MB/KB are 1024-based), independently of the parser's own float path."""
    number, unit = text.split()
    return int((Decimal(number) * _SCALE[unit]).to_integral_value(ROUND_HALF_EVEN))


# An operator's MPS out-of-memory message, wrapped over two lines as pasted from a log.
SEED = (
    "MPS backend out of memory (MPS allocated: 20.14 GiB, other allocations: 384.00 KiB, "
    "max allowed: 20.13 GiB).\n    Tried to allocate 6.00 KiB on private pool."
)

# fixture -> (allocated, other, max allowed, requested, pool), copied from the fixture's text
MPS_CASES = {
    "torch-mps-oom-1.txt": ("7.43 GB", "24.46 GB", "32.00 GB", "129.21 MB", "private"),
    "torch-mps-oom-2.txt": ("1.45 GB", "7.42 GB", "9.07 GB", "563.62 MB", "private"),
    "torch-mps-oom-3.txt": ("8.89 GB", "172.98 MB", "9.07 GB", "6.25 MB", "private"),
    "torch-mps-oom-4-shared-pool-bytes.txt": (
        "1.02 GB", "0 bytes", "15.87 GB", "256 bytes", "shared"
    ),
    "torch-mps-oom-6-gib.txt": ("15.72 GiB", "2.41 MiB", "18.13 GiB", "5.81 GiB", "private"),
    "torch-mps-oom-7-shared-pool.txt": ("16.00 GB", "3.31 GB", "18.13 GB", "256 bytes", "shared"),
    "torch-mps-oom-9-intel-discrete.txt": (
        "2.44 GB", "4.34 GB", "6.77 GB", "10.58 MB", "private"
    ),
    "torch-mps-oom-11-traceback.txt": ("7.23 GB", "1.54 GB", "9.07 GB", "896.00 MB", "private"),
    "torch-mps-oom-12-logits-traceback.txt": (
        "12.74 GB", "4.39 GB", "18.13 GB", "1.02 GB", "private"
    ),
}  # fmt: skip


@pytest.mark.parametrize(
    ("pattern", "backend", "kinds"),
    [
        ("torch-mps-oom-*.txt", "mps", {"oom"}),
        ("torch-cuda-oom-*.txt", "cuda", {"oom"}),
        ("torch-mps-invalid-*.txt", "mps", {"invalid_low_watermark", "invalid_high_watermark"}),
    ],
)
def test_every_recorded_message_parses_and_has_exact_figures_below(
    pattern: str, backend: str, kinds: set[str]
) -> None:
    # torch-cpu-oom-*, torch-cuda-error-*, torch-mps-ndarray-* are other failures (test_deaths)
    paths = sorted(FIXTURES.glob(pattern))
    assert paths
    for path in paths:
        event = parse_oom(path.read_text(encoding="utf-8"))
        assert event is not None, path.name
        assert (event.backend, event.complete) == (backend, True), path.name
        assert event.kind in kinds, path.name
        # each one's figures are pinned by a case below
        assert path.name in {**MPS_CASES, **CUDA_CASES, **WATERMARK_CASES}, path.name


@pytest.mark.parametrize(("name", "expected"), MPS_CASES.items())
def test_every_mps_fixture_parses_to_exact_bytes(name: str, expected: tuple) -> None:
    text = read_fixture(name)
    event = parse_oom(text)
    assert event is not None
    allocated, other, limit, requested, pool = expected
    # the sizes really are the fixture's words, in order
    assert f"MPS allocated: {allocated}, other allocations: {other}, max allowed: {limit})" in text
    assert f"Tried to allocate {requested} on {pool} pool" in text
    assert (event.backend, event.kind, event.complete) == ("mps", "oom", True)
    assert event.allocated_bytes == exact(allocated)
    assert event.other_bytes == exact(other)
    assert event.max_allowed_bytes == exact(limit)
    assert event.requested_bytes == exact(requested)
    assert event.pool == pool
    assert event.raw == text.strip().splitlines()[-1]  # the message's own line, verbatim


def test_a_few_mps_sizes_as_literal_integers() -> None:
    # hand arithmetic, no helper: 907 x 2**30 / 100 = 9738838343.68;
    # 56362 x 2**20 / 100 = 590998405.12
    event = parse_oom(read_fixture("torch-mps-oom-2.txt"))
    assert event is not None
    assert event.max_allowed_bytes == 9_738_838_344
    assert event.requested_bytes == 590_998_405
    shared = parse_oom(read_fixture("torch-mps-oom-4-shared-pool-bytes.txt"))
    assert shared is not None
    assert (shared.other_bytes, shared.requested_bytes) == (0, 256)


_CUDA_NONE = {
    "gpu_index": 0, "total_bytes": None, "free_bytes": None, "process_bytes": None,
    "other_processes": (), "allowed_bytes": None, "allocated_bytes": None,
    "reserved_bytes": None, "reserved_unallocated_bytes": None,
}  # fmt: skip

# fixture -> every CUDA field (sizes as the fixture prints them); absent parts are None
CUDA_CASES = {
    "torch-cuda-oom-new-1.txt": {
        "requested_bytes": "22.00 MiB", "total_bytes": "23.65 GiB", "free_bytes": "11.06 MiB",
        "process_bytes": "23.60 GiB", "allocated_bytes": "22.90 GiB",
        "reserved_unallocated_bytes": "194.87 MiB",
    },
    "torch-cuda-oom-new-2-torch-OutOfMemoryError.txt": {
        "requested_bytes": "22.78 GiB", "total_bytes": "31.47 GiB", "free_bytes": "12.73 GiB",
        "process_bytes": "18.73 GiB", "allocated_bytes": "9.08 GiB",
        "reserved_unallocated_bytes": "9.35 GiB",
    },
    "torch-cuda-oom-new-3-other-process.txt": {
        "requested_bytes": "204.00 MiB", "total_bytes": "47.53 GiB", "free_bytes": "94.88 MiB",
        "other_processes": ((1381433, "47.43 GiB"),), "allocated_bytes": "47.03 GiB",
        "reserved_unallocated_bytes": "83.38 MiB",
    },
    "torch-cuda-oom-new-4-fraction-allowed-h200.txt": {
        "requested_bytes": "14.00 MiB", "total_bytes": "139.80 GiB", "free_bytes": "138.32 GiB",
        "process_bytes": "1.47 GiB", "allowed_bytes": "830.00 MiB",
        "allocated_bytes": "754.84 MiB", "reserved_unallocated_bytes": "63.16 MiB",
    },
    "torch-cuda-oom-2.1-capacty-1.txt": {
        "requested_bytes": "32.00 MiB", "total_bytes": "4.00 GiB", "free_bytes": "41.56 MiB",
        "process_bytes": "3.44 GiB", "allocated_bytes": "2.58 GiB",
        "reserved_unallocated_bytes": "1.90 MiB",
    },
    "torch-cuda-oom-2.1-capacty-no-procinfo.txt": {
        "requested_bytes": "1.70 GiB", "total_bytes": "6.00 GiB", "free_bytes": "0 bytes",
        "allocated_bytes": "2.93 GiB", "reserved_unallocated_bytes": "2.30 GiB",
    },
    "torch-cuda-oom-old-1.txt": {
        "requested_bytes": "512.00 MiB", "total_bytes": "15.90 GiB",
        "allocated_bytes": "13.13 GiB", "free_bytes": "415.88 MiB", "reserved_bytes": "14.80 GiB",
    },
    "torch-cuda-oom-old-2-max-split.txt": {
        "requested_bytes": "1.69 GiB", "total_bytes": "14.56 GiB",
        "allocated_bytes": "649.97 MiB", "free_bytes": "1.31 GiB", "reserved_bytes": "1.01 GiB",
    },
    # 1.0-era "cached" is the reserved-but-unallocated part, not reserved in total
    "torch-cuda-oom-legacy-cached-1.txt": {
        "requested_bytes": "12.50 MiB", "total_bytes": "10.92 GiB",
        "allocated_bytes": "8.57 MiB", "free_bytes": "9.28 GiB",
        "reserved_unallocated_bytes": "4.68 MiB",
    },
}  # fmt: skip


@pytest.mark.parametrize(("name", "given"), CUDA_CASES.items())
def test_every_cuda_fixture_parses_to_exact_bytes(name: str, given: dict) -> None:
    text = read_fixture(name)
    event = parse_oom(text)
    assert event is not None
    assert (event.backend, event.kind, event.complete) == ("cuda", "oom", True)
    expected = dict(_CUDA_NONE, **given)
    for key, value in expected.items():
        if key == "other_processes":
            want = tuple(allocator.OtherProcess(pid, exact(size)) for pid, size in value)
            assert all(f"Process {pid} has {size} memory in use" in text for pid, size in value)
        elif isinstance(value, str):
            assert value in text, key  # the size really is in the fixture
            want = exact(value)
        else:
            want = value
        assert getattr(event, key) == want, key


WATERMARK_CASES = {
    "torch-mps-invalid-low-watermark-1.txt": ("invalid_low_watermark", "1.4"),
    "torch-mps-invalid-high-watermark-1.txt": ("invalid_high_watermark", "1.7"),
}


@pytest.mark.parametrize(("name", "kind", "ratio"), [(n, *v) for n, v in WATERMARK_CASES.items()])
def test_invalid_watermark_is_its_own_kind(name: str, kind: str, ratio: str) -> None:
    event = parse_oom(read_fixture(name))
    assert event is not None
    assert (event.backend, event.kind, event.ratio) == ("mps", kind, ratio)
    assert event.requested_bytes is None
    assert any("<= the high ratio" in a or "0.0-2.0" in a for a in explain(event))


def test_pasted_message_gives_the_exact_summary() -> None:
    event = parse_oom(SEED)
    assert event is not None
    assert summary(event) == (
        "MPS allocated 20.14 GiB, other 384 KiB, max allowed 20.13 GiB, requested 6 KiB, "
        "private pool"
    )
    assert event.raw == SEED
    assert (event.allocated_bytes, event.other_bytes, event.requested_bytes) == (
        21_625_160_335,  # 2014 x 2**30 / 100 = 21625160335.36
        393_216,  # 384 x 1024
        6_144,
    )
    assert event.max_allowed_bytes == 21_614_422_917  # 2013 x 2**30 / 100 = 21614422917.12


def test_mps_variant_without_max_allowed_synthetic() -> None:
    # SYNTHETIC, not a recorded sample: built from the format in MPSAllocator.mm that PyTorch
    # prints when PYTORCH_MPS_HIGH_WATERMARK_RATIO=0.0 (no "max allowed", no advice sentence).
    text = (
        "MPS backend out of memory (MPS allocated: 30.50 GiB, other allocations: 1.25 GiB). "
        "Tried to allocate 2.00 GiB on private pool."
    )
    event = parse_oom(text)
    assert event is not None
    assert event.max_allowed_bytes is None
    assert (event.allocated_bytes, event.requested_bytes) == (round(30.5 * GIB), 2 * GIB)
    assert summary(event) == (
        "MPS allocated 30.5 GiB, other 1.25 GiB, no limit (high ratio 0.0), requested 2 GiB, "
        "private pool"
    )
    assert "No limit was set" in explain(event)[0]


def test_explain_pasted_message_gives_working_set_pair_and_fallback_truth() -> None:
    event = parse_oom(SEED)
    assert event is not None
    text = "\n".join(explain(event))
    assert "20.13 GiB / 1.7 = 11.84 GiB" in text
    assert "assumed" in text
    assert "high 0.7 -> 8.29 GiB, low 0.5 -> 5.92 GiB" in text
    assert "PYTORCH_ENABLE_MPS_FALLBACK=1 does not catch" in text
    assert "concurrent" in text or "at once" in text
    assert "smaller" in text


def test_explain_uses_the_known_ratio() -> None:
    event = parse_oom(read_fixture("torch-mps-oom-6-gib.txt"))
    assert event is not None
    default = "\n".join(explain(event))
    # 18.13 / 1.7 = 10.6647: the message's rounding of the 16 GB Mac's 10.67 GiB
    assert "18.13 GiB / 1.7 = 10.66 GiB" in default
    assert "16 GB of RAM (recommended working set 10.67 GiB" in default
    # 0.7 x 10.66 = 7.46, 0.5 x 10.66 = 5.33: low <= high, both under the 18.13 GiB limit
    assert "high 0.7 -> 7.47 GiB, low 0.5 -> 5.33 GiB" in default
    known = "\n".join(explain(event, high_ratio_hint=1.0))
    assert "/ 1 = 18.13 GiB" in known
    assert "assumed" not in known
    assert "One large request: 5.81 GiB" in known
    already_low = "\n".join(explain(event, high_ratio_hint=0.5))
    assert "already runs with a low limit (high ratio 0.5)" in already_low
    assert "high 0.7" not in already_low  # never suggest raising a limit as the cure


@pytest.mark.parametrize("name", [*MPS_CASES, *CUDA_CASES, *WATERMARK_CASES])
def test_no_advice_claims_fallback_or_enable_mps_helps(name: str) -> None:
    event = parse_oom(read_fixture(name))
    assert event is not None
    for line in explain(event):
        assert "PYTORCH_ENABLE_MPS=" not in line  # no such variable in PyTorch
        if "PYTORCH_ENABLE_MPS_FALLBACK" in line:
            assert "does not catch out-of-memory" in line


def test_explain_cuda_fragmentation_and_other_processes() -> None:
    fragmented = parse_oom(read_fixture("torch-cuda-oom-2.1-capacty-no-procinfo.txt"))
    assert fragmented is not None
    assert any("expandable_segments:True" in a for a in explain(fragmented))
    crowded = parse_oom(read_fixture("torch-cuda-oom-new-3-other-process.txt"))
    assert crowded is not None
    advice = "\n".join(explain(crowded))
    assert "Other processes hold 47.43 GiB on GPU 0: 1381433" in advice
    assert "not fragmentation" in advice
    own = parse_oom(read_fixture("torch-cuda-oom-new-1.txt"))
    assert own is not None
    assert any("This process holds 23.6 GiB of 23.65 GiB" in a for a in explain(own))


def test_unrelated_lines_are_not_events() -> None:
    assert parse_oom("kernel: Out of memory: Killed process 4242 (python3)") is None
    assert parse_oom("we ran out of memory yesterday") is None
    assert parse_oom("PYTORCH_MPS_HIGH_WATERMARK_RATIO=0.7") is None


def test_line_time_formats() -> None:
    local = datetime(2026, 1, 21, 19, 38, 40, 123000).astimezone(timezone.utc)
    assert line_time("2026-01-21 19:38:40,123 ERROR app: boom") == local
    utc = datetime(2026, 1, 21, 19, 38, 40, tzinfo=timezone.utc)
    assert line_time("2026-01-21T19:38:40Z boom") == utc
    assert line_time("[2026-01-22 03:38:40 +0800] [12] [ERROR] boom") == utc
    assert line_time("INFO 2026-01-21T20:38:40.5+01:00 x") == utc.replace(microsecond=500000)
    assert line_time("RuntimeError: MPS backend out of memory") is None
    assert line_time("x" * 80 + " 2026-01-21 19:38:40") is None  # inside the message


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def test_scan_file_traceback_takes_the_record_time_and_line(tmp_path: Path) -> None:
    log = write(
        tmp_path / "error.log",
        "2026-01-21T19:38:40Z ERROR query failed\nTraceback (most recent call last):\n"
        + read_fixture("torch-mps-oom-12-logits-traceback.txt")
        + "2026-01-21T19:39:00Z INFO next\n",
    )
    [event] = list(scan_file(log))
    assert (event.file, event.line, event.time) == (str(log), 5, "2026-01-21T19:38:40Z")
    assert event.max_allowed_bytes == round(18.13 * GIB)


def test_scan_file_joins_a_wrapped_message_and_survives_bad_utf8(tmp_path: Path) -> None:
    log = write(tmp_path / "b.log", b"\xff\xfe junk\n" + SEED.encode() + b"\n\xc3(\n")
    [event] = list(scan_file(log))
    assert event.complete
    assert event.line == 2
    assert event.time is None
    assert summary(event).startswith("MPS allocated 20.14 GiB")


def test_scan_file_keeps_a_cut_message_as_incomplete(tmp_path: Path) -> None:
    head = (
        "MPS backend out of memory (MPS allocated: 1 GB, other allocations: 2 GB, "
        "max allowed: 3 GB)."
    )
    log = write(tmp_path / "c.log", head + "\nsomething else\n")
    [event] = list(scan_file(log))
    assert not event.complete
    assert (event.max_allowed_bytes, event.requested_bytes) == (3 * GIB, None)


def test_scan_file_across_chunk_boundaries(tmp_path: Path) -> None:
    chunk = first_pass.CHUNK_BYTES
    filler = "2026-01-21T10:00:00Z INFO nothing to see here\n"
    one = read_fixture("torch-mps-oom-6-gib.txt").strip()
    parts: list[str] = []
    size = 0

    def pad_to(offset: int) -> None:
        nonlocal size
        while size + len(filler) <= offset:
            parts.append(filler)
            size += len(filler)
        parts.append("x" * (offset - size) + "\n")
        size = offset + 1

    def add(text: str) -> None:
        nonlocal size
        parts.append(text)
        size += len(text.encode())

    pad_to(chunk - 32)  # the needle "out of memory" straddles the first boundary
    add("RuntimeError: " + one + "\n")
    # the next chunk holds no needle: only the straddle check can find the first message
    pad_to(3 * chunk - 60)  # the wrapped second half lies in the next chunk
    add(SEED + "\n")
    pad_to(3 * chunk + 5000)
    add("RuntimeError: invalid low watermark ratio 1.4\n")
    content = "".join(parts)
    data = content.encode()
    first = data.find(b"out of memory")
    assert first < chunk < first + 13
    assert data.find(b"out of memory", first + 1) > 2 * chunk
    assert data.find(b"Tried", 3 * chunk - 60) > 3 * chunk
    log = write(tmp_path / "big.log", content)
    events = list(scan_file(log))
    lines = content.split("\n")
    expected = [
        i + 1
        for i, text in enumerate(lines)
        if "out of memory" in text or "watermark ratio" in text
    ]
    assert [e.line for e in events] == expected
    assert [e.kind for e in events] == ["oom", "oom", "invalid_low_watermark"]
    assert all(e.complete for e in events)
    assert events[1].requested_bytes == 6 * KIB
    # the stamped line above is an INFO record, not the failure's: it lends no time
    assert events[0].time is None


def test_scan_file_since_filters_by_time_and_mtime(tmp_path: Path) -> None:
    now = datetime.now(timezone.utc)
    old = (now - timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    new = (now - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    line = read_fixture("torch-mps-oom-3.txt")
    log = write(tmp_path / "t.log", f"{old} {line}{new} {line}")
    since = now - timedelta(hours=24)
    assert [e.line for e in scan_file(log, since)] == [2]
    untimed = write(tmp_path / "u.log", line)
    assert len(list(scan_file(untimed, since))) == 1
    stale = time.time() - 3 * 86400
    os.utime(untimed, (stale, stale))
    assert list(scan_file(untimed, since)) == []


@pytest.mark.parametrize("chunk", [16, 17, 64, 251, 4096])
def test_tiny_chunks_find_every_message_exactly_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    # Chunk sizes below the needle length and odd ones: every needle is cut by a boundary at
    # some offset; each message must still be found once, on its own line.
    monkeypatch.setattr(first_pass, "CHUNK_BYTES", chunk)
    lines = ["2026-01-21T09:00:00Z INFO fine"]
    for n, name in enumerate(["torch-mps-oom-2.txt", "torch-cuda-oom-old-1.txt"] * 3):
        lines += ["x" * n, "2026-01-21T10:00:00Z " + read_fixture(name).strip()]
    lines += ["RuntimeError: invalid high watermark ratio 1.7", "out of memoryout of memory"]
    log = write(tmp_path / "t.log", "\n".join(lines) + "\n")
    events = list(scan_file(log))
    assert [e.line for e in events] == [3, 5, 7, 9, 11, 13, 14]
    assert [e.backend for e in events] == ["mps", "cuda"] * 3 + ["mps"]
    assert events[0].requested_bytes == exact("563.62 MB")
    assert events[1].reserved_bytes == exact("14.80 GiB")


def test_parallel_scan_equals_the_single_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Spawned workers must give the same hits, with the same line numbers, as one process,
    # including for a message that the boundary between two workers cuts in half.
    lines = []
    for n in range(40):
        lines += [f"2026-01-21T10:00:{n:02d}Z INFO " + "y" * (n * 37 % 300)] * (n % 7 + 1)
        lines.append("2026-01-21T10:01:00Z " + read_fixture("torch-mps-oom-6-gib.txt").strip())
    text = "\n".join(lines) + "\n"
    data = text.encode()
    # pad the end so that the middle (the boundary of two workers) falls 5 bytes into a needle
    needle = next(p for p in _positions(data, b"out of memory") if 2 * p + 10 >= len(data) + 2)
    text += "z" * (2 * needle + 10 - len(data) - 1) + "\n"
    log = write(tmp_path / "big.log", text)
    size = log.stat().st_size
    assert needle < size // 2 < needle + len(b"out of memory")
    serial = list(scan_file(log))
    assert len(serial) == 40
    with log.open("rb") as handle:
        single = first_pass.find_in_range(handle, 0, size)[1]
    monkeypatch.setattr(first_pass, "PARALLEL_MIN_BYTES", 1)
    for workers in (2, 3, 7):
        assert first_pass.parallel_hits(log, log.stat(), size, workers=workers) == single
    assert list(scan_file(log)) == serial


def _positions(data: bytes, needle: bytes) -> list[int]:
    found, at = [], data.find(needle)
    while at >= 0:
        found.append(at)
        at = data.find(needle, at + 1)
    return found


def test_recent_events_reads_the_tail_and_needs_a_time(tmp_path: Path) -> None:
    now = datetime.now(timezone.utc)
    stamp = "%Y-%m-%dT%H:%M:%SZ"
    old = (now - timedelta(days=3)).strftime(stamp)
    new = (now - timedelta(minutes=5)).strftime(stamp)
    oom_line = read_fixture("torch-mps-oom-3.txt")
    filler = f"{old} INFO fine\n" * 120_000  # ~3.5 MiB of old lines before the recent part
    log = write(
        tmp_path / "e.log",
        f"{old} {oom_line}{filler}{new} ERROR failed\n{oom_line}{oom_line.strip()} again\n",
    )
    untimed = write(tmp_path / "u.log", oom_line)
    events = scanner.recent_events(
        [log, untimed, tmp_path / "missing.log", None], time.time() - 3600
    )
    # the message and its copy in the same record are one failure
    assert [(e["file"], e["line"], e["time"]) for e in events] == [(str(log), None, new)]
    assert len(events[0]["seen_in"]) == 2
    assert events[0]["max_allowed_bytes"] == round(9.07 * GIB)
