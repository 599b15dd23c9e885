"""memory_report() and release(): the CPU path for real, MPS/CUDA through the backend seam.

The stand-in backends below return SYNTHETIC figures chosen for the arithmetic (no recorded
torch.mps output exists in tests/fixtures); they test our handling, not PyTorch's numbers.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from mpsctl.server.limiter import ConcurrencyLimit
from mpsctl.server.memory import (
    _cuda_section,
    _mps_section,
    memory_report,
    release,
    strtod_ratio,
    watermark_ratios,
)

GIB = 1024**3


class FakeMps:
    """Synthetic stand-in for ``torch.mps`` (figures invented for the test)."""

    def __init__(self, recommended: int | None = 16 * GIB) -> None:
        self.calls: list[str] = []
        self.allocated = 3 * GIB
        self.driver = 5 * GIB
        if recommended is not None:
            self.recommended_max_memory = lambda: recommended

    def current_allocated_memory(self) -> int:
        return self.allocated

    def driver_allocated_memory(self) -> int:
        return self.driver

    def synchronize(self) -> None:
        self.calls.append("synchronize")

    def empty_cache(self) -> None:
        self.calls.append("empty_cache")
        self.driver = self.allocated  # the cache is gone


def test_cpu_report_is_real_and_leaves_accelerators_null() -> None:
    limiter = ConcurrencyLimit(lambda *a: None, max_concurrent=2, max_queue=4)  # type: ignore[arg-type]

    report = memory_report("cpu", limiter=limiter)

    assert report["schema"] == "mpsctl.memory/1"
    assert report["device"] == "cpu"
    assert report["rss_bytes"] > 10 * 2**20
    assert report["mps"] is None
    assert report["cuda"] is None
    assert report["limiter"] == {"in_flight": 0, "queued": 0, "max_concurrent": 2,
                                 "max_queue": 4, "max_in_flight_seen": 0,
                                 "draining": 0}  # fmt: skip
    assert "+" not in report["torch_version"]


def test_mps_defaults_are_pytorchs_and_limit_is_high_times_recommended() -> None:
    section = _mps_section(FakeMps(), environ={}, machine="arm64")

    assert section == {
        "current_allocated_bytes": 3 * GIB,
        "driver_allocated_bytes": 5 * GIB,
        "recommended_max_bytes": 16 * GIB,
        "high_watermark_ratio": 1.7,
        "low_watermark_ratio": 1.4,
        "high_watermark_source": "default",
        "low_watermark_source": "default",
        "limit_bytes": int(1.7 * 16 * GIB),
    }


def test_mps_ratios_come_from_this_process_environment() -> None:
    env = {"PYTORCH_MPS_HIGH_WATERMARK_RATIO": "0.7", "PYTORCH_MPS_LOW_WATERMARK_RATIO": "0.5"}

    section = _mps_section(FakeMps(), environ=env, machine="arm64")

    assert (section["high_watermark_ratio"], section["high_watermark_source"]) == (0.7, "env")
    assert (section["low_watermark_ratio"], section["low_watermark_source"]) == (0.5, "env")
    assert section["limit_bytes"] == int(0.7 * 16 * GIB)


def test_unknown_figures_are_null_never_zero() -> None:
    mps = FakeMps(recommended=None)  # torch < 2.5 has no recommended_max_memory

    def broken() -> int:
        raise RuntimeError("no device")

    mps.current_allocated_memory = broken  # type: ignore[method-assign]

    section = _mps_section(mps, environ={"PYTORCH_MPS_HIGH_WATERMARK_RATIO": "0.0"})

    assert section["recommended_max_bytes"] is None
    assert section["current_allocated_bytes"] is None
    assert section["limit_bytes"] is None


def test_high_ratio_zero_means_no_limit() -> None:
    section = _mps_section(FakeMps(), environ={"PYTORCH_MPS_HIGH_WATERMARK_RATIO": "0.0"})

    assert section["high_watermark_ratio"] == 0.0
    assert section["limit_bytes"] is None


@pytest.mark.parametrize(
    ("text", "value"), [("0.7", 0.7), (" 1e0", 1.0), ("0.5abc", 0.5), ("abc", 0.0), ("", 0.0)]
)
def test_ratio_is_read_like_strtod(text: str, value: float) -> None:
    assert strtod_ratio(text) == value


def test_discrete_gpu_low_default_is_one() -> None:
    assert watermark_ratios({}, machine="x86_64")[2] == 1.0


class FakeCuda:
    """Synthetic stand-in for ``torch.cuda`` (figures invented for the test)."""

    def current_device(self) -> int:
        return 0

    def get_device_name(self, index: int) -> str:
        return "Synthetic GPU"

    def memory_allocated(self, index: int) -> int:
        return 2 * GIB

    def memory_reserved(self, index: int) -> int:
        return 3 * GIB

    def max_memory_allocated(self, index: int) -> int:
        return 4 * GIB

    def mem_get_info(self, index: int) -> tuple[int, int]:
        return 60 * GIB, 80 * GIB


def test_cuda_section_reads_every_counter() -> None:
    section = _cuda_section(FakeCuda())

    assert section == {
        "device_index": 0,
        "name": "Synthetic GPU",
        "allocated_bytes": 2 * GIB,
        "reserved_bytes": 3 * GIB,
        "max_allocated_bytes": 4 * GIB,
        "free_bytes": 60 * GIB,
        "total_bytes": 80 * GIB,
        "limit_bytes": None,  # this torch cannot say which fraction is set: unknown
    }


def test_cuda_limit_uses_the_per_process_fraction() -> None:
    cuda: Any = FakeCuda()
    cuda.get_per_process_memory_fraction = lambda index: 0.5

    assert _cuda_section(cuda)["limit_bytes"] == 40 * GIB


def test_release_synchronizes_then_empties_the_cache() -> None:
    mps = FakeMps()

    result = release("mps", backend=mps)

    assert mps.calls == ["synchronize", "empty_cache"]
    assert result.before.reserved_bytes == 5 * GIB
    assert result.after.reserved_bytes == 3 * GIB
    assert result.reclaimed_bytes == 2 * GIB
    assert result.as_dict()["schema"] == "mpsctl.release/1"


def test_release_on_cpu_collects_garbage_for_real() -> None:
    class Cycle:
        def __init__(self) -> None:
            self.me = self

    for _ in range(100):
        Cycle()

    result = release("cpu")

    assert result.device == "cpu"
    assert result.collected_objects >= 100
    assert result.before.rss_bytes is not None
    assert result.reclaimed_bytes is None
    assert result.as_dict()["after"]["allocated_bytes"] is None


def test_report_detects_the_device_the_service_would_choose() -> None:
    # no stand-in: the real torch of this machine, checked against the service's own choice
    from mpsctl.server.model import choose_device

    report = memory_report()

    assert report["device"] == choose_device("auto")
    for backend in ("mps", "cuda"):
        assert (report[backend] is None) == (report["device"] != backend)


def documented_memory_contract() -> dict[str, Any]:
    """The ``memory`` object of the health-answer example in docs/memory-report.md,
    comments stripped."""
    doc = Path(__file__).resolve().parents[2] / "docs" / "memory-report.md"
    block = doc.read_text(encoding="utf-8").split("```json\n", 1)[1].split("```", 1)[0]
    # "//" comments run to the end of the line and never occur inside the example's strings
    text = re.sub(r"\s*//[^\n]*", "", block)
    contract: dict[str, Any] = json.loads(text)["memory"]
    return contract


def test_report_keys_match_the_documented_contract_exactly() -> None:
    contract = documented_memory_contract()
    limiter = ConcurrencyLimit(lambda *a: None, max_concurrent=2, max_queue=4)  # type: ignore[arg-type]

    cpu = memory_report("cpu", limiter=limiter)

    assert set(cpu) == set(contract)
    assert set(cpu["limiter"]) == set(contract["limiter"])
    assert set(_mps_section(FakeMps(), environ={})) == set(contract["mps"])
    assert set(_cuda_section(FakeCuda())) == set(contract["cuda"])
    assert set(_cuda_section(NeverInitializedCuda())) == set(contract["cuda"])


class NeverInitializedCuda(FakeCuda):
    """A ``torch.cuda`` this process never touched: each call below would create a CUDA
    context (hundreds of MiB of GPU memory) in a process that does not use CUDA."""

    def __init__(self) -> None:
        self.context_calls: list[str] = []

    def is_initialized(self) -> bool:
        return False

    def current_device(self) -> int:
        self.context_calls.append("current_device")
        return 0

    def get_device_name(self, index: int) -> str:
        self.context_calls.append("get_device_name")
        return "Synthetic GPU"

    def mem_get_info(self, index: int) -> tuple[int, int]:
        self.context_calls.append("mem_get_info")
        return 60 * GIB, 80 * GIB

    def synchronize(self) -> None:
        self.context_calls.append("synchronize")

    def empty_cache(self) -> None:
        self.context_calls.append("empty_cache")

    def memory_allocated(self, index: int) -> int:
        return 0  # what torch.cuda answers before initialization, without initializing

    def memory_reserved(self, index: int) -> int:
        return 0


def test_cuda_never_used_by_this_process_is_not_initialized_by_the_report() -> None:
    cuda = NeverInitializedCuda()

    section = _cuda_section(cuda)

    assert cuda.context_calls == []
    assert section["free_bytes"] is None
    assert section["total_bytes"] is None
    assert section["name"] is None
    assert section["limit_bytes"] is None
    assert section["allocated_bytes"] == 0  # measured: this process holds no CUDA memory


def test_release_does_not_initialize_an_unused_cuda() -> None:
    cuda = NeverInitializedCuda()

    result = release("cuda", backend=cuda)

    assert cuda.context_calls == []
    assert result.device == "cuda"
    assert result.before.rss_bytes is not None


def test_cuda_index_unknown_when_the_current_device_cannot_be_read() -> None:
    cuda: Any = FakeCuda()

    def no_device() -> int:
        raise RuntimeError("CUDA driver error")

    cuda.current_device = no_device

    assert _cuda_section(cuda)["device_index"] is None


@pytest.mark.parametrize("text", ["inf", "-inf", "nan", "1e999"])
def test_ratio_strtod_reads_as_non_finite_stays_valid_json(text: str) -> None:
    environ = {"PYTORCH_MPS_HIGH_WATERMARK_RATIO": text, "PYTORCH_MPS_LOW_WATERMARK_RATIO": text}
    section = _mps_section(FakeMps(), environ=environ)

    json.dumps(section, allow_nan=False)  # raises on inf/nan
    assert section["high_watermark_ratio"] is None
    assert section["low_watermark_ratio"] is None
    assert section["limit_bytes"] is None
