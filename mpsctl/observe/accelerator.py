"""Accelerator figures, from the only places that can know them.

``torch.mps`` / ``torch.cuda`` counters live inside the service's process: the service
reports them in its health answer (the memory report, see README). On Linux with NVIDIA,
NVML also gives per-process GPU memory from outside (optional ``nvidia-ml-py``).
Where neither answers, every figure is ``None`` ("unknown"), never 0.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class AcceleratorFigures:
    source: str | None  # "service" | "nvml" | None (unknown)
    device: str | None  # "mps" | "cuda" | "cpu"
    allocated_bytes: int | None  # tensors (MPS current allocated / CUDA allocated)
    driver_allocated_bytes: int | None  # MPS: all Metal memory of the process
    reserved_bytes: int | None  # CUDA caching allocator reserved
    limit_bytes: int | None  # MPS: high ratio x recommended max; CUDA: fraction x total
    recommended_max_bytes: int | None = None
    high_watermark_ratio: float | None = None
    low_watermark_ratio: float | None = None
    total_bytes: int | None = None
    free_bytes: int | None = None

    @property
    def held_bytes(self) -> int | None:
        """What counts against the limit: MPS driver memory, CUDA reserved, else allocated."""
        for value in (self.driver_allocated_bytes, self.reserved_bytes, self.allocated_bytes):
            if value is not None:
                return value
        return None

    @property
    def held_name(self) -> str | None:
        """Which figure ``held_bytes`` is, for every message that shows it or its percent:
        one figure, named the same everywhere (a verdict quoting the driver's figure next to
        a table of the tensors' figure reads as a contradiction)."""
        names = ("driver allocated", "reserved", "allocated")
        values = (self.driver_allocated_bytes, self.reserved_bytes, self.allocated_bytes)
        for name, value in zip(names, values, strict=True):
            if value is not None:
                return name
        return None

    @property
    def limit_percent(self) -> float | None:
        """``held_bytes`` as a percentage of ``limit_bytes``."""
        held = self.held_bytes
        if held is None or not self.limit_bytes:
            return None
        return 100.0 * held / self.limit_bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "device": self.device,
            "allocated_bytes": self.allocated_bytes,
            "driver_allocated_bytes": self.driver_allocated_bytes,
            "reserved_bytes": self.reserved_bytes,
            "limit_bytes": self.limit_bytes,
            "held_bytes": self.held_bytes,
            "held_name": self.held_name,
            "limit_percent": None if self.limit_percent is None else round(self.limit_percent, 1),
            "recommended_max_bytes": self.recommended_max_bytes,
            "high_watermark_ratio": self.high_watermark_ratio,
            "low_watermark_ratio": self.low_watermark_ratio,
            "total_bytes": self.total_bytes,
            "free_bytes": self.free_bytes,
        }


UNKNOWN = AcceleratorFigures(None, None, None, None, None, None)


def json_int(value: Any) -> int | None:
    """A JSON number as an int; None for anything else (booleans included)."""
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def from_memory_report(report: dict[str, Any]) -> AcceleratorFigures:
    """Read a ``mpsctl.memory/1`` report (the service's own figures)."""
    device = report.get("device") if isinstance(report.get("device"), str) else None
    mps = report.get("mps") if isinstance(report.get("mps"), dict) else None
    cuda = report.get("cuda") if isinstance(report.get("cuda"), dict) else None
    if mps is not None:
        return AcceleratorFigures(
            source="service",
            device=device or "mps",
            allocated_bytes=json_int(mps.get("current_allocated_bytes")),
            driver_allocated_bytes=json_int(mps.get("driver_allocated_bytes")),
            reserved_bytes=None,
            limit_bytes=json_int(mps.get("limit_bytes")),
            recommended_max_bytes=json_int(mps.get("recommended_max_bytes")),
            high_watermark_ratio=_float(mps.get("high_watermark_ratio")),
            low_watermark_ratio=_float(mps.get("low_watermark_ratio")),
        )
    if cuda is not None:
        return AcceleratorFigures(
            source="service",
            device=device or "cuda",
            allocated_bytes=json_int(cuda.get("allocated_bytes")),
            driver_allocated_bytes=None,
            reserved_bytes=json_int(cuda.get("reserved_bytes")),
            limit_bytes=json_int(cuda.get("limit_bytes")),
            total_bytes=json_int(cuda.get("total_bytes")),
            free_bytes=json_int(cuda.get("free_bytes")),
        )
    return AcceleratorFigures("service", device, None, None, None, None)


def from_nvml(pids: Iterable[int]) -> AcceleratorFigures | None:
    """Per-process GPU memory of ``pids`` from NVML; None when NVML is absent or silent."""
    wanted = set(pids)
    if not wanted:
        return None
    pynvml = _nvml()
    if pynvml is None:
        return None
    try:
        used = 0
        totals: dict[int, int] = {}  # device index -> its memory, counted once per device
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid in wanted and proc.usedGpuMemory is not None:
                    used += int(proc.usedGpuMemory)
                    if index not in totals:
                        totals[index] = int(pynvml.nvmlDeviceGetMemoryInfo(handle).total)
        if not totals:
            return None
        total = sum(totals.values())
        return AcceleratorFigures(
            source="nvml",
            device="cuda",
            allocated_bytes=None,
            driver_allocated_bytes=None,
            reserved_bytes=used,  # NVML sees the process's whole context, PyTorch cache included
            limit_bytes=total,
            total_bytes=total,
        )
    except Exception:
        return None
    finally:
        with contextlib.suppress(Exception):  # shutdown failing changes nothing we report
            pynvml.nvmlShutdown()


def nvml_total_bytes() -> int | None:
    """GPU 0's total memory from NVML (what a plan for this machine's GPU is held to when
    no service reports its own limit); None when NVML is absent or silent."""
    pynvml = _nvml()
    if pynvml is None:
        return None
    try:
        if pynvml.nvmlDeviceGetCount() < 1:
            return None
        return int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0)).total)
    except Exception:
        return None
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def accelerator_figures(report: dict[str, Any] | None, pids: Iterable[int]) -> AcceleratorFigures:
    if report is not None:
        return from_memory_report(report)
    return from_nvml(pids) or UNKNOWN


def _nvml() -> Any:
    """pynvml, initialised (the caller shuts it down); None without the package or a GPU."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # no driver, no GPU: NVML raises its own error types
        return None
    return pynvml
