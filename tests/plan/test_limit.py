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


# --- each ceiling's figure and the words that say where it came from -----------------------


def test_pytorchs_default_ratio_when_none_is_set() -> None:
    from mpsctl.plan.limit import MacFacts

    limit = mps_limit(16 * GIB, "--ram", None, None, None, mac=MacFacts(working_set=8 * GIB))
    assert (limit.device, limit.limit_bytes, limit.high_ratio, limit.low_ratio) == (
        "mps", int(1.7 * 8 * GIB), 1.7, 1.4,
    )  # fmt: skip
    assert limit.source == "high ratio 1.7 x recommended working set"
    assert limit.ratio_source == "PyTorch's default 1.7 (no ratio set)"
    assert (limit.ram_bytes, limit.ram_source, limit.unified) == (16 * GIB, "--ram", True)
    assert limit.above_ram is False
    assert limit.ram_ceiling_bytes == 12 * GIB


@pytest.mark.parametrize(
    ("high", "where", "said"),
    [
        (1.7, "default", "mpsctl's default [memory] high_watermark_ratio 1.7 (PyTorch's "
                         "default too)"),
        (1.7, "flag --high-ratio", "flag --high-ratio 1.7 (PyTorch's default too)"),
        (1.2, None, "[memory] high_watermark_ratio (set) 1.2 (PyTorch's default would be 1.7: "
                    "max allowed 13.60 GB on this Mac)"),
        (1.2, "mpsctl.toml", "[memory] high_watermark_ratio (mpsctl.toml) 1.2 (PyTorch's default "
                             "would be 1.7: max allowed 13.60 GB on this Mac)"),
    ],
)  # fmt: skip
def test_a_set_ratio_says_where_it_was_set(high: float, where: str | None, said: str) -> None:
    from mpsctl.plan.limit import MacFacts

    limit = mps_limit(
        16 * GIB, "--ram", high, None, None, mac=MacFacts(working_set=8 * GIB), high_source=where
    )
    assert limit.ratio_source == said
    assert limit.limit_bytes == int(high * 8 * GIB)


def test_ratio_zero_turns_the_limit_off_so_the_memory_is_the_ceiling() -> None:
    from mpsctl.plan.limit import MacFacts

    unified = mps_limit(16 * GIB, "--ram", 0.0, 0.5, None, mac=MacFacts(working_set=8 * GIB))
    assert (unified.limit_bytes, unified.high_ratio, unified.low_ratio) == (16 * GIB, 0.0, 0.5)
    assert unified.source == (
        "high ratio 0.0 disables the MPS limit: the memory itself is the only ceiling"
    )
    discrete = mps_limit(32 * GIB, "--ram", 0.0, None, None, mac=MacFacts(discrete_gpu=4 * GIB))
    assert (discrete.limit_bytes, discrete.unified, discrete.low_ratio) == (4 * GIB, False, None)


@pytest.mark.parametrize(
    ("high", "low", "discrete", "expected"),
    [(1.2, None, False, 1.2), (1.7, None, False, 1.4), (1.4, None, False, 1.4),
     (1.7, None, True, 1.0), (0.8, None, True, 0.8), (1.7, 0.3, False, 0.3), (1.7, 0.0, True, 0.0)],
)  # fmt: skip
def test_the_low_ratio_pytorch_uses(
    high: float, low: float | None, discrete: bool, expected: float
) -> None:
    from mpsctl.plan.limit import effective_low

    assert effective_low(high, low, discrete=discrete) == expected
    if not discrete:
        assert effective_low(high, low) == expected


def test_a_low_ratio_set_is_kept() -> None:
    from mpsctl.plan.limit import MacFacts

    limit = mps_limit(16 * GIB, "--ram", 1.5, 0.3, None, mac=MacFacts(working_set=8 * GIB))
    assert (limit.high_ratio, limit.low_ratio) == (1.5, 0.3)


def test_a_discrete_gpus_low_ratio_defaults_to_one() -> None:
    from mpsctl.plan.limit import MacFacts

    limit = mps_limit(32 * GIB, "--ram", 1.5, None, None, mac=MacFacts(discrete_gpu=4 * GIB))
    assert (limit.limit_bytes, limit.low_ratio, limit.unified) == (6 * GIB, 1.0, False)


@pytest.mark.parametrize(
    "report",
    [None, {}, {"mps": None}, {"mps": {"recommended_max_bytes": True}},
     {"mps": {"recommended_max_bytes": 0}}, {"mps": {"recommended_max_bytes": "8"}},
     {"mps": {"recommended_max_bytes": -1}}],
)  # fmt: skip
def test_a_report_without_a_positive_working_set_is_not_read(report: dict | None) -> None:  # type: ignore[type-arg]
    from mpsctl.plan.limit import MacFacts

    limit = mps_limit(16 * GIB, "--ram", None, None, report, mac=MacFacts(working_set=8 * GIB))
    assert limit.recommended_max_bytes == 8 * GIB
    read = mps_limit(16 * GIB, "--ram", None, None, {"mps": {"recommended_max_bytes": 1}})
    assert read.recommended_max_bytes == 1


def test_the_os_reserve_given_replaces_the_default() -> None:
    from mpsctl.plan.limit import OS_RESERVE_BYTES, OS_RESERVE_SOURCE, cpu_limit, cuda_limit

    assert OS_RESERVE_BYTES == 4 * GIB
    for limit in (
        mps_limit(16 * GIB, "r", None, None, None, reserve=(GIB, "--os-reserve")),
        cuda_limit(16 * GIB, "r", None, gpu_memory=(8 * GIB, "--gpu-memory"),
                   reserve=(GIB, "--os-reserve")),
        cpu_limit(16 * GIB, "r", None, reserve=(GIB, "--os-reserve")),
    ):  # fmt: skip
        assert (limit.reserve_bytes, limit.reserve_source) == (GIB, "--os-reserve")
        assert limit.ram_ceiling_bytes == 15 * GIB
    default = cpu_limit(16 * GIB, "r", None)
    assert (default.reserve_bytes, default.reserve_source) == (4 * GIB, OS_RESERVE_SOURCE)
    assert cpu_limit(GIB, "r", None).ram_ceiling_bytes == 0


def test_cuda_takes_the_services_figure_then_a_size_given() -> None:
    from mpsctl.errors import ConfigError
    from mpsctl.plan.limit import cuda_limit

    report = {"cuda": {"limit_bytes": 70 * GIB}}
    served = cuda_limit(64 * GIB, "r", report, gpu_memory=(80 * GIB, "--gpu-memory"))
    assert (served.device, served.limit_bytes, served.unified) == ("cuda", 70 * GIB, False)
    assert (served.ram_bytes, served.ram_source) == (64 * GIB, "r")
    tiny = cuda_limit(64 * GIB, "r", {"cuda": {"limit_bytes": 1}})
    assert tiny.limit_bytes == 1
    assert served.source == "the service's memory report (device total x per-process fraction)"
    for bad in ({"cuda": {"limit_bytes": True}}, {"cuda": {"limit_bytes": 0}}, {"cuda": 5}, None):
        given = cuda_limit(64 * GIB, "r", bad, gpu_memory=(80 * GIB, "NVML"))
        assert (given.limit_bytes, given.source) == (
            80 * GIB, "NVML (per-process fraction 1.0, PyTorch's default)",
        )  # fmt: skip
    with pytest.raises(ConfigError) as caught:
        cuda_limit(64 * GIB, "r", {"cuda": {"limit_bytes": 0}})
    assert str(caught.value) == (
        "--device cuda: the GPU's memory is unknown: give --gpu-memory SIZE (e.g. 80GiB), "
        "or plan with the service running"
    )


def test_the_cpu_limit_is_what_is_available_at_most_the_ram() -> None:
    from mpsctl.plan.limit import cpu_limit

    unknown = cpu_limit(16 * GIB, "/proc/meminfo", None)
    assert (unknown.device, unknown.limit_bytes, unknown.unified) == ("cpu", 16 * GIB, True)
    assert unknown.source == "RAM (/proc/meminfo): all of it, as available is unknown"
    assert (unknown.ram_bytes, unknown.ram_source) == (16 * GIB, "/proc/meminfo")
    some = cpu_limit(16 * GIB, "/proc/meminfo", 10 * GIB)
    assert (some.limit_bytes, some.source) == (10 * GIB, "RAM available now")
    odd = cpu_limit(16 * GIB, "/proc/meminfo", 20 * GIB, "--available")
    assert (odd.limit_bytes, odd.source) == (16 * GIB, "--available")


@pytest.mark.parametrize(
    ("working_set", "reserve", "expected"),
    [(8 * GIB, 4 * GIB, 1.5), (4 * GIB, 4 * GIB, 2.0), (7 * GIB, 4 * GIB, 1.71),
     (12 * GIB, 4 * GIB, 1.0), (8 * GIB, 20 * GIB, 0.0)],
)  # fmt: skip
def test_the_largest_ratio_within_ram(working_set: int, reserve: int, expected: float) -> None:
    from mpsctl.plan.limit import MacFacts, ram_ceiling_ratio

    limit = mps_limit(16 * GIB, "r", None, None, None, mac=MacFacts(working_set=working_set),
                      reserve=(reserve, "set"))  # fmt: skip
    assert ram_ceiling_ratio(limit) == expected


def test_the_ratio_within_a_discrete_gpu_is_its_own_memory() -> None:
    from mpsctl.plan.limit import MacFacts, cpu_limit, ram_ceiling_ratio

    limit = mps_limit(32 * GIB, "r", None, None, None, mac=MacFacts(discrete_gpu=4 * GIB))
    assert ram_ceiling_ratio(limit) == 1.0
    assert ram_ceiling_ratio(cpu_limit(16 * GIB, "r", None)) is None
