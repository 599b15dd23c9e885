"""The OOM parser (mpsctl.deaths.allocator) on recorded messages: whole JSON shapes, each fallback,
exact sizes and summaries; plus the scan's time stamps and hit de-duplication.

Every message is a recorded fixture (tests/fixtures/SOURCES.md) or a recorded fixture cut
short, the way a log rotation or a console cuts it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from mpsctl.deaths.allocator import (
    OtherProcess,
    mentions_oom,
    parse_oom,
    short_size,
    size_to_bytes,
    summary,
)
from mpsctl.deaths.scanner import scan_file
from mpsctl.logtime import iso, line_time
from tests.conftest import read_fixture

KIB, MIB, GIB, TIB = 1024, 1024**2, 1024**3, 1024**4


def message(name: str) -> str:
    """The fixture's line that holds the message (the last non-empty one)."""
    return read_fixture(name).rstrip("\n").splitlines()[-1]


# --------------------------------------------------------------------------- sizes
@pytest.mark.parametrize(
    ("number", "unit", "expected"),
    [("3", "bytes", 3), ("3", "B", 3), ("2", "KB", 2 * KIB), ("2", "KiB", 2 * KIB),
     ("2", "MB", 2 * MIB), ("2", "MiB", 2 * MIB), ("2", "GB", 2 * GIB), ("2", "GiB", 2 * GIB),
     ("2", "TB", 2 * TIB), ("2", "TiB", 2 * TIB), ("1.5", "KiB", 1536)],
)  # fmt: skip
def test_size_to_bytes_every_unit_is_1024_based(number: str, unit: str, expected: int) -> None:
    assert size_to_bytes(number, unit) == expected


@pytest.mark.parametrize(
    ("value", "text"),
    [(None, "unknown"), (0, "0 bytes"), (1023, "1023 bytes"), (1024, "1 KiB"),
     (1536, "1.5 KiB"), (10 * KIB, "10 KiB"), (MIB - 1, "1024 KiB"), (MIB, "1 MiB"),
     (round(129.21 * MIB), "129.21 MiB"), (GIB, "1 GiB"), (round(20.14 * GIB), "20.14 GiB"),
     (TIB, "1 TiB"), (2 * TIB + TIB // 4, "2.25 TiB")],
)  # fmt: skip
def test_short_size_boundaries(value: int | None, text: str) -> None:
    assert short_size(value) == text


# --------------------------------------------------------------------------- MPS
def test_mps_message_as_json() -> None:
    event = parse_oom(read_fixture("torch-mps-oom-2.txt"))
    assert event is not None
    line = message("torch-mps-oom-2.txt")
    assert event.as_dict() == {
        "backend": "mps",
        "kind": "oom",
        "file": None,
        "line": None,
        "time": None,
        "allocated_bytes": round(1.45 * GIB),
        "other_bytes": round(7.42 * GIB),
        "max_allowed_bytes": round(9.07 * GIB),
        "requested_bytes": round(563.62 * MIB),
        "pool": "private",
        "complete": True,
        "summary": "MPS allocated 1.45 GiB, other 7.42 GiB, max allowed 9.07 GiB, "
        "requested 563.62 MiB, private pool",
        "raw": line,
    }


def test_mps_message_cut_before_the_request_is_incomplete() -> None:
    line = message("torch-mps-oom-6-gib.txt")
    cut = line[: line.index(" Tried to allocate")]
    event = parse_oom(f"earlier line\n{cut}\nnext line")
    assert event is not None
    assert (event.backend, event.kind, event.complete) == ("mps", "oom", False)
    assert (event.allocated_bytes, event.other_bytes, event.max_allowed_bytes) == (
        round(15.72 * GIB),
        round(2.41 * MIB),
        round(18.13 * GIB),
    )
    assert (event.requested_bytes, event.pool) == (None, None)
    assert event.raw == cut  # its own line only, not the neighbours
    assert summary(event) == (
        "MPS allocated 15.72 GiB, other 2.41 MiB, max allowed 18.13 GiB, requested unknown"
    )
    assert event.as_dict()["complete"] is False


def test_raw_is_the_whole_logged_line_without_trailing_space() -> None:
    text = read_fixture("torch-mps-oom-11-traceback.txt")
    event = parse_oom(
        "2026-01-21 10:00:00 INFO before\n" + text.rstrip("\n") + "   \nafter\nand more"
    )
    assert event is not None
    assert event.raw == message("torch-mps-oom-11-traceback.txt").rstrip()
    # a message on the text's second line, after an empty first one
    second = parse_oom("\n" + message("torch-mps-oom-2.txt"))
    assert second is not None
    assert second.raw == message("torch-mps-oom-2.txt")
    assert event.raw.startswith("RuntimeError: MPS backend out of memory")


# --------------------------------------------------------------------------- CUDA
def test_cuda_new_wording_with_another_process_as_json() -> None:
    event = parse_oom(read_fixture("torch-cuda-oom-new-3-other-process.txt"))
    assert event is not None
    doc = event.as_dict()
    assert doc == {
        "backend": "cuda",
        "kind": "oom",
        "file": None,
        "line": None,
        "time": None,
        "requested_bytes": 204 * MIB,
        "gpu_index": 0,
        "total_bytes": round(47.53 * GIB),
        "free_bytes": round(94.88 * MIB),
        "process_bytes": None,
        "other_processes": [{"pid": 1381433, "bytes": round(47.43 * GIB)}],
        "allowed_bytes": None,
        "allocated_bytes": round(47.03 * GIB),
        "reserved_bytes": None,
        "reserved_unallocated_bytes": round(83.38 * MIB),
        "complete": True,
        "summary": "CUDA GPU 0: requested 204 MiB, total 47.53 GiB, free 94.88 MiB, "
        "allocated by PyTorch 47.03 GiB, reserved but unallocated 83.38 MiB, "
        "process 1381433 47.43 GiB",
        "raw": message("torch-cuda-oom-new-3-other-process.txt"),
    }
    assert event.other_processes == (OtherProcess(pid=1381433, bytes=round(47.43 * GIB)),)


def test_cuda_new_wording_this_process() -> None:
    event = parse_oom(read_fixture("torch-cuda-oom-new-1.txt"))
    assert event is not None
    assert event.process_bytes == round(23.60 * GIB)
    assert event.as_dict()["process_bytes"] == round(23.60 * GIB)
    assert event.other_processes == ()
    assert summary(event) == (
        "CUDA GPU 0: requested 22 MiB, total 23.65 GiB, free 11.06 MiB, this process 23.6 GiB, "
        "allocated by PyTorch 22.9 GiB, reserved but unallocated 194.87 MiB"
    )


def test_cuda_old_wording_as_json() -> None:
    event = parse_oom(read_fixture("torch-cuda-oom-old-1.txt"))
    assert event is not None
    assert event.as_dict() == {
        "backend": "cuda",
        "kind": "oom",
        "file": None,
        "line": None,
        "time": None,
        "requested_bytes": 512 * MIB,
        "gpu_index": 0,
        "total_bytes": round(15.90 * GIB),
        "free_bytes": round(415.88 * MIB),
        "process_bytes": None,
        "other_processes": [],
        "allowed_bytes": None,
        "allocated_bytes": round(13.13 * GIB),
        "reserved_bytes": round(14.80 * GIB),
        "reserved_unallocated_bytes": None,
        "complete": True,
        "summary": "CUDA GPU 0: requested 512 MiB, total 15.9 GiB, free 415.88 MiB, "
        "allocated by PyTorch 13.13 GiB, reserved by PyTorch 14.8 GiB",
        "raw": message("torch-cuda-oom-old-1.txt"),
    }


@pytest.mark.parametrize(
    "name",
    ["torch-cuda-oom-new-2-torch-OutOfMemoryError.txt", "torch-cuda-oom-old-2-max-split.txt"],
)
def test_cuda_raw_is_the_message_line_inside_a_traceback(name: str) -> None:
    line = message(name)
    event = parse_oom(f'Traceback (most recent call last):\n  File "x.py", line 1\n{line}\nnext')
    assert event is not None
    assert event.complete
    assert event.raw == line


def test_cuda_cached_wording_is_reserved_but_unallocated() -> None:
    event = parse_oom(read_fixture("torch-cuda-oom-legacy-cached-1.txt"))
    assert event is not None
    assert (event.reserved_bytes, event.reserved_unallocated_bytes) == (None, round(4.68 * MIB))
    assert summary(event) == (
        "CUDA GPU 0: requested 12.5 MiB, total 10.92 GiB, free 9.28 GiB, "
        "allocated by PyTorch 8.57 MiB, reserved but unallocated 4.68 MiB"
    )


# With torch.cuda.set_per_process_memory_fraction, CUDACachingAllocator.cpp inserts
# `format_size(allowed_memory_maximum) + " allowed; "` before "Of the allocated memory": this
# message was recorded on a real GPU by tests/gpu/run_gpu_checks.sh.
def test_cuda_allowed_bytes_recorded_with_a_memory_fraction() -> None:
    event = parse_oom(read_fixture("torch-cuda-oom-new-4-fraction-allowed-h200.txt"))
    assert event is not None
    assert event.complete
    assert event.requested_bytes == 14 * MIB
    assert event.allowed_bytes == 830 * MIB
    assert event.as_dict()["allowed_bytes"] == 830 * MIB
    assert event.total_bytes == round(139.80 * GIB)
    assert event.free_bytes == round(138.32 * GIB)
    assert event.process_bytes == round(1.47 * GIB)
    assert event.allocated_bytes == round(754.84 * MIB)
    assert event.reserved_unallocated_bytes == round(63.16 * MIB)
    assert "allowed 830 MiB" in summary(event)


@pytest.mark.parametrize(
    "name",
    ["torch-cuda-oom-new-1.txt", "torch-cuda-oom-old-1.txt", "torch-cuda-oom-2.1-capacty-1.txt"],
)
def test_bare_cuda_head_is_an_incomplete_cuda_event(name: str) -> None:
    line = message(name)
    head = "CUDA out of memory. Tried to allocate "
    start = line.index(head) + len(head)
    # cut right after the requested size: only the head survives
    cut = line[: line.index(" ", line.index(" ", start) + 1)]
    cut = cut.rstrip(".")
    event = parse_oom("Traceback (most recent call last):\n" + cut + "\nnext")
    assert event is not None
    requested = parse_oom(line)
    assert requested is not None
    assert event.as_dict() == {
        "backend": "cuda",
        "kind": "oom",
        "file": None,
        "line": None,
        "time": None,
        "requested_bytes": requested.requested_bytes,
        "gpu_index": None,
        "total_bytes": None,
        "free_bytes": None,
        "process_bytes": None,
        "other_processes": [],
        "allowed_bytes": None,
        "allocated_bytes": None,
        "reserved_bytes": None,
        "reserved_unallocated_bytes": None,
        "complete": False,
        "summary": f"CUDA GPU: requested {short_size(requested.requested_bytes)}",
        "raw": cut,
    }


# --------------------------------------------------------------------------- invalid ratio
@pytest.mark.parametrize(
    ("name", "which", "ratio", "env"),
    [
        ("torch-mps-invalid-low-watermark-1.txt", "low", "1.4", "PYTORCH_MPS_LOW_WATERMARK_RATIO"),
        (
            "torch-mps-invalid-high-watermark-1.txt",
            "high",
            "1.7",
            "PYTORCH_MPS_HIGH_WATERMARK_RATIO",
        ),
    ],
)
def test_invalid_watermark_as_json(name: str, which: str, ratio: str, env: str) -> None:
    event = parse_oom("Traceback (most recent call last):\n" + read_fixture(name))
    assert event is not None
    assert event.as_dict() == {
        "backend": "mps",
        "kind": f"invalid_{which}_watermark",
        "file": None,
        "line": None,
        "time": None,
        "ratio": ratio,
        "complete": True,
        "summary": f"invalid {which} watermark ratio {ratio} ({env})",
        "raw": message(name),
    }


def test_invalid_watermark_ratio_drops_sentence_punctuation() -> None:
    recorded = message("torch-mps-invalid-low-watermark-1.txt")
    for end in (".", ",", ";", ":", ".;"):
        event = parse_oom(recorded + end)
        assert event is not None
        assert event.ratio == "1.4", end


# --------------------------------------------------------------------------- mentions_oom
@pytest.mark.parametrize(
    "name",
    ["torch-mps-oom-2.txt", "torch-mps-oom-12-logits-traceback.txt", "torch-cuda-oom-new-1.txt",
     "torch-cuda-oom-old-1.txt", "torch-cuda-oom-legacy-cached-1.txt",
     "torch-mps-invalid-low-watermark-1.txt", "torch-mps-invalid-high-watermark-1.txt"],
)  # fmt: skip
def test_mentions_oom_on_each_message_line(name: str) -> None:
    assert mentions_oom(message(name)) is True


@pytest.mark.parametrize(
    "line",
    [
        # recorded lines that say "out of memory" but are no allocator message
        read_fixture("torch-cuda-error-oom-1-comma-so.txt").splitlines()[0],
        read_fixture("torch-cpu-oom-7-cant-allocate-CPUAllocator67-realesrgan.txt").splitlines()[1],
        read_fixture("torch-cuda-error-runtime-error-2-THCStorage-legacy.txt").splitlines()[0],
        # mpsctl's own note that names the low watermark ratio
        "low watermark ratio set to 0.70 = min(high 0.70, 1.40)",
        "",
        "2026-01-21 10:00:00 INFO request done",
    ],
)
def test_mentions_oom_refuses_other_lines(line: str) -> None:
    assert mentions_oom(line) is False
    assert parse_oom(line) is None


# --------------------------------------------------------------------------- times
@pytest.mark.parametrize(
    ("stamp", "utc"),
    [
        ("2026-01-21T14:38:40-05:00", datetime(2026, 1, 21, 19, 38, 40, tzinfo=timezone.utc)),
        ("2026-01-21 14:38:40 -0500", datetime(2026, 1, 21, 19, 38, 40, tzinfo=timezone.utc)),
        ("[2026-01-21 23:59:59 -0230]", datetime(2026, 1, 22, 2, 29, 59, tzinfo=timezone.utc)),
        ("2026-01-22T01:08:40+05:30", datetime(2026, 1, 21, 19, 38, 40, tzinfo=timezone.utc)),
        ("2026-01-21T19:38:40.250Z", datetime(2026, 1, 21, 19, 38, 40, 250000, timezone.utc)),
    ],
)
def test_line_time_offsets_give_the_right_instant(stamp: str, utc: datetime) -> None:
    assert line_time(f"{stamp} ERROR query failed") == utc


def test_a_stamp_may_start_up_to_64_characters_into_the_line() -> None:
    stamp = "2026-01-21T19:38:40Z"
    utc = datetime(2026, 1, 21, 19, 38, 40, tzinfo=timezone.utc)
    assert line_time("x" * 64 + stamp + " boom") == utc
    assert line_time("x" * 65 + stamp + " boom") is None  # inside the message, not its stamp


@pytest.fixture
def utc_minus_5() -> Iterator[None]:
    """This machine's local time is UTC-5."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = "EST5"  # POSIX form: no tz database needed
    time.tzset()
    yield
    if before is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = before
    time.tzset()


@pytest.mark.usefixtures("utc_minus_5")
def test_naive_stamps_are_local_time_and_come_back_as_utc() -> None:
    moment = line_time("2026-01-21 14:38:40,500 ERROR query failed")
    assert moment == datetime(2026, 1, 21, 19, 38, 40, 500000, tzinfo=timezone.utc)
    assert moment is not None
    assert moment.tzinfo == timezone.utc
    assert iso(moment) == "2026-01-21T19:38:40Z"
    assert iso(datetime(2026, 1, 21, 19, 38, 40, tzinfo=timezone.utc)) == "2026-01-21T19:38:40Z"


def test_scan_file_reports_a_negative_offset_in_utc(tmp_path: Path) -> None:
    log = tmp_path / "service.log"
    log.write_text(
        "2026-01-21T14:38:40-05:00 ERROR query failed\n"
        + read_fixture("torch-mps-oom-12-logits-traceback.txt")
    )
    [event] = scan_file(log)
    assert event.time == "2026-01-21T19:38:40Z"
    assert event.when == datetime(2026, 1, 21, 19, 38, 40, tzinfo=timezone.utc)
    assert iso(datetime(2026, 1, 21, 14, 38, 40, tzinfo=timezone.utc)) == "2026-01-21T14:38:40Z"


# --------------------------------------------------------------------------- de-duplication
def test_a_line_holding_two_messages_is_one_event(tmp_path: Path) -> None:
    # a log that quotes the exception twice on one line (message + repr) is one failure
    first = message("torch-mps-oom-2.txt")
    log = tmp_path / "service.log"
    log.write_text(f"ERROR query failed: {first} | {first}\n{message('torch-mps-oom-6-gib.txt')}\n")
    events = list(scan_file(log))
    assert [(e.line, e.allocated_bytes) for e in events] == [
        (1, round(1.45 * GIB)),
        (2, round(15.72 * GIB)),
    ]


def test_a_wrapped_message_is_one_event_and_the_next_line_still_counts(tmp_path: Path) -> None:
    line = message("torch-mps-oom-6-gib.txt")
    at = line.index(" Tried to allocate")
    log = tmp_path / "service.log"
    log.write_text(
        line[:at]
        + "\n"
        + line[at + 1 :]
        + "\n"
        + read_fixture("torch-cpu-oom-7-cant-allocate-CPUAllocator67-realesrgan.txt")
        + message("torch-cuda-oom-old-1.txt")
        + "\n"
    )
    events = list(scan_file(log))
    assert [(e.line, e.backend, e.complete) for e in events] == [
        (1, "mps", True),
        (5, "cuda", True),
    ]
    assert events[0].requested_bytes == round(5.81 * GIB)


def _corpus(name: str) -> str:
    return (Path(__file__).parents[1] / "fixtures" / "corpus" / name).read_text("utf-8")


@pytest.mark.parametrize(
    ("text", "head"),
    [
        (_corpus("r-pytorch-175431-hip-oom-gpu7-memory-status.txt"), "ROCm (HIP) GPU 7: "),
        (_corpus("x-torch-xpu-ops-3011-xpu-oom-kib-allocated.txt"), "XPU GPU 0: "),
        (read_fixture("torch-cuda-oom-new-1.txt"), "CUDA GPU 0: "),
    ],
)
def test_the_summary_names_the_gpu_api_of_the_message(text: str, head: str) -> None:
    event = parse_oom(text)
    assert event is not None
    assert summary(event).startswith(f"{head}requested ")


def test_another_process_is_listed_only_with_a_plausible_pid_and_figure() -> None:
    text = read_fixture("torch-cuda-oom-new-3-other-process.txt")
    assert "Process 1381433 has" in text
    nine = parse_oom(text.replace("Process 1381433 has", "Process 123456789 has"))
    ten = parse_oom(text.replace("Process 1381433 has", "Process 1234567890 has"))
    assert nine is not None
    assert ten is not None
    assert [p.pid for p in nine.other_processes] == [123456789]
    assert ten.other_processes == ()  # a 10-digit pid is a damaged line, not a process
    huge = parse_oom(text.replace("has 47.43 GiB memory", "has 99999999999999999999 GiB memory"))
    assert huge is not None
    assert huge.other_processes == ()  # a figure past 63 bits: no process line


def test_mentions_oom_on_the_first_line_of_each_message() -> None:
    mps = read_fixture("torch-mps-oom-3.txt").strip()
    head, tail = mps.split(". Tried to allocate", 1)
    assert mentions_oom(head + ".")  # the message cut before "Tried to allocate"
    legacy = read_fixture("torch-cuda-oom-legacy-cached-1.txt").splitlines()[0]
    assert mentions_oom(legacy.split("CUDA out of memory. ", 1)[1])  # "Tried to allocate ..."
    assert mentions_oom(read_fixture("torch-mps-invalid-low-watermark-1.txt"))
    assert not mentions_oom("Tried to allocate" + tail)  # no figures a pattern reads
    assert not mentions_oom("kernel: Out of memory: Killed process 27241 (python)")
    assert not mentions_oom("set the watermark ratio in the settings")
