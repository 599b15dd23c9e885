"""The memory report and release, from inside the process that owns the memory.

Another process cannot read ``torch.mps`` or ``torch.cuda`` counters, so a service reports
them itself (README.md, "The memory report"). Import into any service::

    from mpsctl.server.memory import memory_report, release

torch is imported inside the functions. The backend calls go through ``_mps_section`` /
``_cuda_section``, which take the ``torch.mps`` / ``torch.cuda`` module as an argument: that
is the seam tests use to feed a stand-in on machines without the accelerator. Every figure
that cannot be measured is ``None`` (JSON null), never 0.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

# Re-exported: services and their tests import these from here (a public path).
from mpsctl.torch_env import DEFAULT_HIGH_RATIO as TORCH_DEFAULT_HIGH_RATIO
from mpsctl.torch_env import DEFAULT_LOW_RATIO as TORCH_DEFAULT_LOW_RATIO_UNIFIED
from mpsctl.torch_env import DEFAULT_LOW_RATIO_DISCRETE as TORCH_DEFAULT_LOW_RATIO_DISCRETE
from mpsctl.torch_env import HIGH_ENV, LOW_ENV, strtod_ratio, watermark_ratios

__all__ = [
    "HIGH_ENV",
    "LOW_ENV",
    "TORCH_DEFAULT_HIGH_RATIO",
    "TORCH_DEFAULT_LOW_RATIO_DISCRETE",
    "TORCH_DEFAULT_LOW_RATIO_UNIFIED",
    "memory_report",
    "release",
    "strtod_ratio",
]

SCHEMA = "mpsctl.memory/1"
RELEASE_SCHEMA = "mpsctl.release/1"


class LimiterLike(Protocol):
    in_flight: int
    max_concurrent: int
    max_queue: int

    @property
    def queued(self) -> int: ...


def detect_device() -> str:
    """The backend a service would pick: mps, else cuda, else cpu."""
    import torch

    if torch.backends.mps.is_available():
        return "mps"
    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


def memory_report(
    device: str | None = None,
    *,
    limiter: LimiterLike | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The ``memory`` object of the health answer (schema ``mpsctl.memory/1``)."""
    import torch

    device = device or detect_device()
    env = os.environ if environ is None else environ
    return {
        "schema": SCHEMA,
        "device": device,
        "torch_version": str(torch.__version__).split("+", 1)[0],
        "pid": os.getpid(),
        "rss_bytes": process_rss_bytes(),
        "mps": _mps_section(torch.mps, env) if device == "mps" else None,
        "cuda": _cuda_section(torch.cuda) if device == "cuda" else None,
        "limiter": _limiter_section(limiter),
    }


def process_rss_bytes() -> int | None:
    # RSS excludes Metal memory on Apple Silicon; the mps section carries that part.
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:
        return None


def _limiter_section(limiter: LimiterLike | None) -> dict[str, int | None] | None:
    if limiter is None:
        return None
    section: dict[str, int | None] = {
        "in_flight": int(limiter.in_flight),
        "queued": int(limiter.queued),
        "max_concurrent": int(limiter.max_concurrent),
        "max_queue": int(limiter.max_queue),
    }
    # the high-water mark since the service started: a client comparing it before and after
    # a run knows the run's peak exactly, which sampling in_flight misses in a short run
    seen = getattr(limiter, "max_in_flight_seen", None)
    section["max_in_flight_seen"] = int(seen) if isinstance(seen, int) else None
    # a stop waits for in_flight to reach 0 while this is 1: new queries are refused
    section["draining"] = int(bool(getattr(limiter, "draining", False)))
    return section


def _measure(func: Callable[[], Any] | None) -> int | None:
    if func is None:
        return None
    try:
        return int(func())
    except Exception:  # a backend that cannot answer: unknown, not zero
        return None


def _mps_section(
    mps: Any, environ: Mapping[str, str], machine: str | None = None
) -> dict[str, Any]:
    recommended = _measure(getattr(mps, "recommended_max_memory", None))  # torch >= 2.5
    high, high_src, low, low_src = watermark_ratios(environ, machine)
    # strtod reads "inf" and "nan" too (PyTorch then refuses them): JSON has no such numbers
    high_ok, low_ok = math.isfinite(high), math.isfinite(low)
    limit = int(high * recommended) if recommended is not None and high_ok and high > 0 else None
    return {
        "current_allocated_bytes": _measure(getattr(mps, "current_allocated_memory", None)),
        "driver_allocated_bytes": _measure(getattr(mps, "driver_allocated_memory", None)),
        "recommended_max_bytes": recommended,
        "high_watermark_ratio": high if high_ok else None,
        "low_watermark_ratio": low if low_ok else None,
        "high_watermark_source": high_src,
        "low_watermark_source": low_src,
        "limit_bytes": limit,
    }


def _cuda_section(cuda: Any, index: int | None = None) -> dict[str, Any]:
    if not _cuda_initialized(cuda):
        # This process has not touched CUDA: it holds no CUDA memory, and asking for the
        # free/total figures or the device name would create a CUDA context (hundreds of
        # MiB on the GPU) in a service that runs elsewhere. Those stay unknown.
        return {
            "device_index": index,
            "name": None,
            "allocated_bytes": 0,
            "reserved_bytes": 0,
            "max_allocated_bytes": 0,
            "free_bytes": None,
            "total_bytes": None,
            "limit_bytes": None,
        }
    if index is None:
        try:
            index = int(cuda.current_device())
        except Exception:
            index = None  # the counters below then read the current device, if any
    free: int | None = None
    total: int | None = None
    with contextlib.suppress(Exception):  # unknown stays None
        free_raw, total_raw = cuda.mem_get_info(index)
        free, total = int(free_raw), int(total_raw)
    try:
        name: str | None = str(cuda.get_device_name(index))
    except Exception:
        name = None
    fraction: float | None = None
    getter = getattr(cuda, "get_per_process_memory_fraction", None)  # newer torch only
    if getter is not None:
        try:
            fraction = float(getter(index))
        except Exception:
            fraction = None
    return {
        "device_index": index,
        "name": name,
        "allocated_bytes": _measure(lambda: cuda.memory_allocated(index)),
        "reserved_bytes": _measure(lambda: cuda.memory_reserved(index)),
        "max_allocated_bytes": _measure(lambda: cuda.max_memory_allocated(index)),
        "free_bytes": free,
        "total_bytes": total,
        # unknown when torch cannot tell us the fraction: it may have been set elsewhere
        "limit_bytes": int(fraction * total) if fraction is not None and total else None,
    }


def _cuda_initialized(cuda: Any) -> bool:
    """False only when ``cuda`` says for sure that this process never initialized CUDA."""
    check = getattr(cuda, "is_initialized", None)
    if check is None:
        return True
    try:
        return bool(check())
    except Exception:
        return True


# --------------------------------------------------------------------------- release
@dataclass(frozen=True)
class MemoryFigures:
    #: bytes in live tensors (mps current_allocated / cuda allocated); None on cpu
    allocated_bytes: int | None
    #: bytes the backend holds, cache included (mps driver_allocated / cuda reserved)
    reserved_bytes: int | None
    rss_bytes: int | None

    def as_dict(self) -> dict[str, int | None]:
        return {
            "allocated_bytes": self.allocated_bytes,
            "reserved_bytes": self.reserved_bytes,
            "rss_bytes": self.rss_bytes,
        }


@dataclass(frozen=True)
class ReleaseResult:
    device: str
    before: MemoryFigures
    after: MemoryFigures
    collected_objects: int
    duration_ms: float

    @property
    def reclaimed_bytes(self) -> int | None:
        """Backend memory given back (reserved before - after); None on cpu or unknown."""
        if self.before.reserved_bytes is None or self.after.reserved_bytes is None:
            return None
        return self.before.reserved_bytes - self.after.reserved_bytes

    def as_dict(self) -> dict[str, Any]:
        return {
            "schema": RELEASE_SCHEMA,
            "device": self.device,
            "before": self.before.as_dict(),
            "after": self.after.as_dict(),
            "reclaimed_bytes": self.reclaimed_bytes,
            "collected_objects": self.collected_objects,
            "duration_ms": round(self.duration_ms, 3),
        }


def memory_figures(device: str, backend: Any = None) -> MemoryFigures:
    """Allocated / reserved / RSS now; ``backend`` is ``torch.mps`` or ``torch.cuda``."""
    if device == "cpu":
        return MemoryFigures(None, None, process_rss_bytes())
    if backend is None:
        backend = _backend_module(device)
    if device == "mps":
        return MemoryFigures(
            _measure(getattr(backend, "current_allocated_memory", None)),
            _measure(getattr(backend, "driver_allocated_memory", None)),
            process_rss_bytes(),
        )
    return MemoryFigures(
        _measure(getattr(backend, "memory_allocated", None)),
        _measure(getattr(backend, "memory_reserved", None)),
        process_rss_bytes(),
    )


def release(device: str | None = None, *, backend: Any = None) -> ReleaseResult:
    """Collect garbage, then empty the backend's cache and synchronize it.

    Only memory no tensor references can come back: drop your own references first
    (``del model``), or this reclaims nothing.
    """
    if device is None:
        device = detect_device()
    if device != "cpu" and backend is None:
        backend = _backend_module(device)
    started = time.perf_counter()
    before = memory_figures(device, backend)
    collected = gc.collect()
    if backend is not None and (device != "cuda" or _cuda_initialized(backend)):
        # synchronize first: cached blocks still used by queued kernels are not freed.
        # (Not on a CUDA this process never used: synchronize() would create a context.)
        for name in ("synchronize", "empty_cache"):
            func = getattr(backend, name, None)
            if func is not None:
                func()
    after = memory_figures(device, backend)
    return ReleaseResult(
        device=device,
        before=before,
        after=after,
        collected_objects=collected,
        duration_ms=(time.perf_counter() - started) * 1000.0,
    )


def _backend_module(device: str) -> Any:
    import torch

    if device == "mps":
        return torch.mps
    if device == "cuda":
        return torch.cuda
    return None
