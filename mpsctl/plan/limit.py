"""The ceiling a plan meets: the MPS limit, the CUDA device, or RAM on the CPU.

MPS: PyTorch refuses an allocation once the process's Metal memory would pass
``high watermark ratio x recommendedMaxWorkingSetSize`` (aten/src/ATen/mps/MPSAllocator).
The working set comes from the service's memory report (``torch.mps.recommended_max_memory()``)
when there is one; else it is estimated from RAM with the readings below.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from mpsctl.errors import ConfigError
from mpsctl.torch_env import DEFAULT_HIGH_RATIO as TORCH_DEFAULT_HIGH_RATIO
from mpsctl.torch_env import DEFAULT_LOW_RATIO as TORCH_DEFAULT_LOW_RATIO
from mpsctl.torch_env import MAX_RATIO
from mpsctl.units import GIB

#: Metal's recommendedMaxWorkingSetSize as published for real Macs:
#: 2/3 of RAM at 8, 16 and 32 GB (5461.34, 10922.67 and 21845.34 MiB in llama.cpp logs:
#: mozilla-ai/llamafile#42, abetlen/llama-cpp-python#687, ggml-org/llama.cpp#2011),
#: 3/4 at 64 and 96 GB (49152 and 73728 MiB: ggml-org/llama.cpp#1870 and #3213).
#: A 128 GB M5 Max on macOS 26 reads ~84% (antirez/ds4#893): 3/4 stays on the safe side.
SMALL_MAC_FRACTION = (2, 3)
LARGE_MAC_FRACTION = (3, 4)
LARGE_MAC_FROM_BYTES = 48 * GIB  # between the 32 GB (2/3) and 64 GB (3/4) readings


@dataclass(frozen=True)
class Limit:
    device: str
    limit_bytes: int
    source: str
    ram_bytes: int
    ram_source: str
    recommended_max_bytes: int | None = None
    recommended_source: str | None = None
    high_ratio: float | None = None
    low_ratio: float | None = None

    @property
    def above_ram(self) -> bool:
        return self.limit_bytes > self.ram_bytes


def estimated_working_set(ram: int) -> tuple[int, str]:
    num, den = LARGE_MAC_FRACTION if ram >= LARGE_MAC_FROM_BYTES else SMALL_MAC_FRACTION
    return ram * num // den, f"estimate: {num}/{den} of RAM (Metal's reading on Macs of that size)"


def effective_low(high: float, low: float | None) -> float:
    """PyTorch's default low ratio caps the low one when none is set: min(high, default)."""
    return low if low is not None else min(high, TORCH_DEFAULT_LOW_RATIO)


def mps_limit(
    ram: int, ram_source: str, high: float | None, low: float | None,
    report: dict[str, Any] | None,
) -> Limit:  # fmt: skip
    mps = report.get("mps") if report else None
    recommended = mps.get("recommended_max_bytes") if isinstance(mps, dict) else None
    if isinstance(recommended, int) and not isinstance(recommended, bool) and recommended > 0:
        rec_source = "the service's memory report (torch.mps.recommended_max_memory())"
    else:
        recommended, rec_source = estimated_working_set(ram)
    ratio = TORCH_DEFAULT_HIGH_RATIO if high is None else high
    if ratio == 0.0:
        # 0.0 turns PyTorch's check off: nothing refuses an allocation before RAM runs out,
        # and past RAM macOS swaps instead of raising an out-of-memory error
        return Limit("mps", ram, "high ratio 0.0 disables the MPS limit: RAM is the only ceiling",
                     ram, ram_source, recommended, rec_source, 0.0, low)  # fmt: skip
    limit = int(ratio * recommended)
    where = " (PyTorch's default)" if high is None else ""
    source = f"high ratio {ratio:g}{where} x recommended working set"
    return Limit("mps", limit, source, ram, ram_source, recommended, rec_source, ratio,
                 effective_low(ratio, low))  # fmt: skip


def cuda_limit(ram: int, ram_source: str, report: dict[str, Any] | None) -> Limit:
    cuda = report.get("cuda") if report else None
    limit = cuda.get("limit_bytes") if isinstance(cuda, dict) else None
    if not isinstance(limit, int) or isinstance(limit, bool) or limit <= 0:
        raise ConfigError(
            "--device cuda: the device's memory is known only to a running service "
            "(its memory report); start it, or plan for mps or cpu"
        )
    return Limit("cuda", limit, "the service's memory report (device total x per-process "
                 "fraction)", ram, ram_source)  # fmt: skip


def cpu_limit(
    ram: int, ram_source: str, available: int | None, source: str = "RAM available now"
) -> Limit:
    if available is None:
        return Limit("cpu", ram, f"RAM ({ram_source}): all of it, as available is unknown",
                     ram, ram_source)  # fmt: skip
    return Limit("cpu", min(available, ram), source, ram, ram_source)


def ram_ceiling_ratio(limit: Limit) -> float | None:
    """The largest high ratio (2 decimals, rounded down) whose limit stays within RAM."""
    if limit.device != "mps" or not limit.recommended_max_bytes:
        return None
    return min(MAX_RATIO, math.floor(100 * limit.ram_bytes / limit.recommended_max_bytes) / 100)


_UNITS = {"b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1024**2, "mb": 1024**2,
          "mib": 1024**2, "g": GIB, "gb": GIB, "gib": GIB, "t": 1024**4, "tb": 1024**4,
          "tib": 1024**4}  # fmt: skip
_SIZE = re.compile(r"((?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?)([a-z]*)")
#: sizes a plan takes: below 1 MiB no model runs; above 1 PiB no machine has
MIN_SIZE_BYTES = 1024**2
MAX_SIZE_BYTES = 1024**5


def parse_size(text: str) -> int:
    """``16GiB``, ``16GB``, ``16g``, ``17179869184B``: a Mac sold with "16 GB" has 16 GiB,
    so GB and GiB both mean 2**30 here. A number without a unit is refused: ``16`` would
    be 16 bytes, never what was meant."""
    raw = text.strip().lower().replace(" ", "")
    match = _SIZE.fullmatch(raw)
    if match is None:
        raise ValueError(f"expected a size like 16GiB, got {text!r}")
    number, unit = match.groups()
    if not unit:
        raise ValueError(f"{text} has no unit: did you mean {number}GiB? (or {number}B for "
                         "bytes)")  # fmt: skip
    if unit not in _UNITS:
        raise ValueError(f"unknown unit {unit!r} in {text!r} (use B, KiB, MiB, GiB, TiB)")
    value = float(number) * _UNITS[unit]
    if value < MIN_SIZE_BYTES:
        raise ValueError(f"{text} is less than 1 MiB")
    if value > MAX_SIZE_BYTES:
        raise ValueError(f"{text} is more than 1 PiB")
    return int(value)
