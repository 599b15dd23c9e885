"""The MPS limit against real readings: Metal's working set and real OOM messages."""

from __future__ import annotations

import re

import pytest

from mpsctl.plan.limit import estimated_working_set, mps_limit, parse_size
from mpsctl.plan.plan import make_plan
from mpsctl.plan.presets import PRESETS
from mpsctl.server.memory import _mps_section
from tests.conftest import read_fixture

GIB = 2**30
MIB = 2**20


def readings() -> list[tuple[int, float]]:
    """(RAM GB, working set MiB) of the rows that state both, in MiB-labelled units."""
    found = []
    for line in read_fixture("planning-recommended-working-set.tsv").splitlines()[1:]:
        _chip, ram, printed, *_ = line.split("\t")
        match = re.search(r"recommendedMaxWorkingSetSize\s*=\s*([\d.,]+) Mi?B", printed)
        if not ram.isdigit() or match is None:
            continue
        value = float(match.group(1).replace(",", "."))
        # 2023 llama.cpp (ggml_metal_init) printed MiB under an "MB" label; newer builds
        # (ggml_metal_device_init) divide by 10**6
        mib = value * 10**6 / MIB if "ggml_metal_device_init" in printed else value
        found.append((int(ram), mib))
    return found


def test_estimate_matches_every_published_reading_within_half_a_percent() -> None:
    rows = readings()
    assert {ram for ram, _ in rows} >= {8, 16, 32, 64, 96}
    for ram, mib in rows:
        estimate, _ = estimated_working_set(ram * GIB)
        assert estimate / MIB == pytest.approx(mib, rel=0.005), (ram, mib)


@pytest.mark.parametrize(("ram_gb", "max_allowed"), [(16, "18.13 GB"), (8, "9.07 GB"),
                                                     (64, "81.60 GB")])  # fmt: skip
def test_default_ratio_limit_is_the_max_allowed_real_ooms_print(
    ram_gb: int, max_allowed: str
) -> None:
    text = read_fixture("planning-mps-oom-with-ram.txt")
    assert f"max allowed: {max_allowed}" in text  # the poster's message with that RAM
    limit = mps_limit(ram_gb * GIB, "--ram", None, None, None)  # PyTorch's default high 1.7
    assert f"{limit.limit_bytes / GIB:.2f} GB" == max_allowed


class RecordedMps:
    """torch.mps as it stood in a real 16 GB out-of-memory message (planning fixture):
    MPS allocated 18.02 GB, other allocations 107.10 MB; the working set is the 16 GB
    Mac's published reading (10922.67 MiB)."""

    def current_allocated_memory(self) -> int:
        return int(18.02 * GIB)

    def driver_allocated_memory(self) -> int:
        return int(18.02 * GIB) + int(107.10 * MIB)

    def recommended_max_memory(self) -> int:
        return int(10922.67 * MIB)


def test_a_service_report_gives_working_set_and_overhead() -> None:
    assert "MPS allocated: 18.02 GB, other allocations: 107.10 MB" in read_fixture(
        "planning-mps-oom-with-ram.txt"
    )
    report = {"device": "mps", "mps": _mps_section(RecordedMps(), {}, machine="arm64")}
    limit = mps_limit(16 * GIB, "this machine", None, None, report)
    assert limit.recommended_max_bytes == int(10922.67 * MIB)
    assert "memory report" in (limit.recommended_source or "")
    plan = make_plan(PRESETS["qwen2.5-0.5b"], dtype="float16", device="mps", device_source="set",
                     limit=limit, max_concurrent=2, max_new_tokens=64, prompt_tokens=64,
                     report=report)  # fmt: skip
    # overhead = driver - current = the message's "other allocations"
    assert plan.figures.overhead_bytes == int(107.10 * MIB)
    assert "memory report" in plan.figures.overhead_source


SIZES = [("16GiB", 16 * GIB), ("16 GB", 16 * GIB), ("512m", 512 * MIB),
         ("17179869184B", 16 * GIB), ("1.5g", 3 * GIB // 2), ("  2 G ", 2 * GIB),
         ("1MiB", MIB), ("1048576b", MIB), ("1024k", MIB), ("1024KB", MIB), ("1024kib", MIB),
         ("1mb", MIB), ("2t", 2 * 1024 * GIB), ("2TB", 2 * 1024 * GIB), ("1tib", 1024 * GIB),
         ("1024TiB", 1024**5), (".5g", GIB // 2), ("1.g", GIB), ("1e3MiB", 1000 * MIB),
         ("2E+1g", 20 * GIB), ("1e-0g", GIB)]  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), SIZES)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "expected a size like 16GiB, got ''"),
        ("GiB", "expected a size like 16GiB, got 'GiB'"),
        ("-1G", "expected a size like 16GiB, got '-1G'"),
        ("nanG", "expected a size like 16GiB, got 'nanG'"),
        ("16G!", "expected a size like 16GiB, got '16G!'"),
        ("16XB", "unknown unit 'xb' in '16XB' (use B, KiB, MiB, GiB, TiB)"),
        ("1PiB", "unknown unit 'pib' in '1PiB' (use B, KiB, MiB, GiB, TiB)"),
        ("16", "16 has no unit: did you mean 16GiB? (or 16B for bytes)"),
        ("0", "0 has no unit: did you mean 0GiB? (or 0B for bytes)"),
        ("0.5B", "0.5B is less than 1 MiB"),
        ("1048575B", "1048575B is less than 1 MiB"),
        ("1023.99KiB", "1023.99KiB is less than 1 MiB"),
        ("1e300G", "1e300G is more than 1 PiB"),
        ("2048TiB", "2048TiB is more than 1 PiB"),
        ("1024.01TiB", "1024.01TiB is more than 1 PiB"),
    ],
)
def test_parse_size_refuses(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        parse_size(text)
