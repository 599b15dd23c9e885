"""The verdict: does the model fit at this concurrency, and what would.

``plan_for_settings(settings, report=None)`` is the one call other commands use (start's
warning, oom advice, doctor, ask --sweep): it plans the configured model and concurrency.
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mpsctl.errors import ConfigError
from mpsctl.plan.arch import DTYPE_BYTES, Architecture, read_model_dir
from mpsctl.plan.limit import (
    Limit,
    cpu_limit,
    cuda_limit,
    effective_low,
    mps_limit,
    ram_ceiling_ratio,
)
from mpsctl.plan.memory import Figures, compute_figures
from mpsctl.plan.presets import PRESETS

if TYPE_CHECKING:
    from mpsctl.settings import Settings

SCHEMA = "mpsctl.plan/1"
#: the share of the limit kept free: the allocator's caching and fragmentation, and
#: whatever the model does that this arithmetic does not count
MARGIN = 0.10
#: a typical question inside the chat template; pass --prompt-tokens for yours
DEFAULT_PROMPT_TOKENS = 256
#: rows of the concurrency table at most
MAX_ROWS = 64


@dataclass(frozen=True)
class Row:
    concurrent: int
    total_bytes: int
    fits: bool
    above_ram: bool


@dataclass(frozen=True)
class Plan:
    model: str
    model_source: str
    parameters: int
    device: str
    device_source: str
    max_concurrent: int
    figures: Figures
    limit: Limit
    rows: tuple[Row, ...]
    max_concurrent_that_fits: int
    max_new_tokens_for_one_more: int | None
    suggested_high: float | None
    suggested_low: float | None
    smaller_preset: str | None
    margin: float = MARGIN
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def total_bytes(self) -> int:
        return self.figures.total_bytes(self.max_concurrent)

    @property
    def usable_bytes(self) -> int:
        return int(self.limit.limit_bytes * (1 - self.margin))

    @property
    def fits(self) -> bool:
        return self.total_bytes <= self.usable_bytes

    def to_json(self) -> dict[str, Any]:
        f, lim = self.figures, self.limit
        return {
            "schema": SCHEMA,
            "model": self.model,
            "model_source": self.model_source,
            "parameters": self.parameters,
            "dtype": f.dtype,
            "device": self.device,
            "device_source": self.device_source,
            "prompt_tokens": f.prompt_tokens,
            "max_new_tokens": f.max_new_tokens,
            "max_concurrent": self.max_concurrent,
            "weights_bytes": f.weights_bytes,
            "kv_cache_per_token_bytes": f.kv_bytes_per_token,
            "kv_cache_per_query_bytes": f.kv_cache_per_query_bytes,
            "logits_bytes": f.logits_bytes,
            "activation_bytes": f.activation_bytes,
            "peak_per_query_bytes": f.peak_per_query_bytes,
            "per_query_bytes": f.per_query_bytes,
            "overhead_bytes": f.overhead_bytes,
            "overhead_source": f.overhead_source,
            "total_bytes": self.total_bytes,
            "limit_bytes": lim.limit_bytes,
            "limit_source": lim.source,
            "usable_bytes": self.usable_bytes,
            "margin": self.margin,
            "recommended_max_bytes": lim.recommended_max_bytes,
            "recommended_max_source": lim.recommended_source,
            "high_watermark_ratio": lim.high_ratio,
            "low_watermark_ratio": lim.low_ratio,
            "ram_bytes": lim.ram_bytes,
            "ram_source": lim.ram_source,
            "limit_above_ram": lim.above_ram,
            "fits": self.fits,
            "max_concurrent_that_fits": self.max_concurrent_that_fits,
            "max_new_tokens_for_one_more": self.max_new_tokens_for_one_more,
            "suggested_high_watermark_ratio": self.suggested_high,
            "suggested_low_watermark_ratio": self.suggested_low,
            "smaller_preset_that_fits": self.smaller_preset,
            "rows": [
                {
                    "concurrent": r.concurrent,
                    "total_bytes": r.total_bytes,
                    "fits": r.fits,
                    "above_ram": r.above_ram,
                }
                for r in self.rows
            ],
            "notes": list(self.notes),
        }


# --------------------------------------------------------------------------- choices
def resolve_device(
    requested: str, report: dict[str, Any] | None, *, other_machine: bool = False
) -> tuple[str, str]:
    """``auto`` without torch: the service's own device, else what this machine has; a
    plan for another machine (``--ram``) is a plan for a Mac with that much memory."""
    if requested != "auto":
        return requested, "set"
    if other_machine:
        return "mps", "auto with --ram: a Mac with that much unified memory"
    if report and report.get("device") in ("mps", "cuda", "cpu"):
        return str(report["device"]), "the service's memory report"
    if sys.platform == "darwin" and platform.machine() == "arm64":
        return "mps", "auto: Apple Silicon"
    if os.path.exists("/proc/driver/nvidia/version"):
        return "cuda", "auto: an NVIDIA driver is loaded"
    return "cpu", "auto: no MPS or NVIDIA driver"


def resolve_dtype(requested: str, device: str) -> str:
    """As the reference service chooses (mpsctl.server.model.choose_dtype)."""
    if requested != "auto":
        return requested
    # CUDA: bfloat16 where the GPU supports it (Ampere and later), which a plan assumes
    return {"mps": "float16", "cuda": "bfloat16"}.get(device, "float32")


def report_overhead(report: dict[str, Any] | None, device: str) -> tuple[int | None, str | None]:
    """What the service holds beyond its tensors, by its own report."""
    section = report.get(device) if report else None
    if not isinstance(section, dict):
        return None, None
    pairs = {"mps": ("driver_allocated_bytes", "current_allocated_bytes"),
             "cuda": ("reserved_bytes", "allocated_bytes")}.get(device)  # fmt: skip
    if pairs is None:
        return None, None
    held, live = section.get(pairs[0]), section.get(pairs[1])
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (held, live)):
        return None, None
    assert isinstance(held, int)
    assert isinstance(live, int)
    return max(0, held - live), f"the service's memory report ({pairs[0]} - {pairs[1]})"


def load_architecture(model_dir: str | None, preset: str | None) -> Architecture:
    if model_dir and preset:
        raise ConfigError("give --model or --preset, not both")
    if preset:
        key = preset.lower()
        if key not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r} (expected one of {', '.join(PRESETS)})")
        return PRESETS[key]
    if model_dir:
        return read_model_dir(Path(model_dir).expanduser())
    raise ConfigError("no model to plan: give --model DIR or --preset NAME (or set serve.model)")


# --------------------------------------------------------------------------- the plan
def _count_that_fit(figures: Figures, usable: int) -> int:
    room = usable - figures.fixed_bytes
    return max(0, room // figures.per_query_bytes) if room > 0 else 0


def _tokens_for(figures: Figures, usable: int, concurrent: int) -> int | None:
    """max_new_tokens at which ``concurrent`` queries fit, or None when none does."""
    share = (usable - figures.fixed_bytes) // concurrent - figures.peak_per_query_bytes
    tokens = share // figures.kv_bytes_per_token - figures.prompt_tokens
    return int(tokens) if tokens >= 1 else None


def make_plan(
    arch: Architecture,
    *,
    dtype: str,
    device: str,
    device_source: str,
    limit: Limit,
    max_concurrent: int,
    max_new_tokens: int,
    prompt_tokens: int,
    report: dict[str, Any] | None = None,
    search_smaller: bool = True,
) -> Plan:
    if dtype not in DTYPE_BYTES:
        raise ConfigError(f"unknown dtype {dtype!r} (expected {', '.join(DTYPE_BYTES)})")
    overhead, overhead_source = report_overhead(report, device)
    figures = compute_figures(arch, dtype, prompt_tokens=prompt_tokens,
                              max_new_tokens=max_new_tokens, overhead_bytes=overhead,
                              overhead_source=overhead_source)  # fmt: skip
    usable = int(limit.limit_bytes * (1 - MARGIN))
    fit = _count_that_fit(figures, usable)
    rows = tuple(
        Row(n, figures.total_bytes(n), figures.total_bytes(n) <= usable,
            figures.total_bytes(n) > limit.ram_bytes)
        for n in range(1, min(max_concurrent, MAX_ROWS) + 1)
    )  # fmt: skip
    notes: list[str] = []
    high = ram_ceiling_ratio(limit)
    low = None if high is None else effective_low(high, None)
    if limit.above_ram:
        notes.append(
            f"the limit ({limit.limit_bytes} bytes) is above RAM ({limit.ram_bytes} bytes): "
            "past RAM the machine swaps instead of raising an out-of-memory error"
        )
    smaller = None
    if fit == 0 and search_smaller:
        smaller = _smaller_preset(arch, dtype, device, device_source, limit, prompt_tokens,
                                  max_new_tokens, report)  # fmt: skip
    return Plan(
        model=arch.name,
        model_source=arch.source,
        parameters=arch.parameters,
        device=device,
        device_source=device_source,
        max_concurrent=max_concurrent,
        figures=figures,
        limit=limit,
        rows=rows,
        max_concurrent_that_fits=int(fit),
        max_new_tokens_for_one_more=_tokens_for(figures, usable, int(fit) + 1),
        suggested_high=high,
        suggested_low=low,
        smaller_preset=smaller,
        notes=tuple(notes),
    )


def _smaller_preset(arch: Architecture, dtype: str, device: str, device_source: str,
                    limit: Limit, prompt: int, new: int,
                    report: dict[str, Any] | None) -> str | None:  # fmt: skip
    """The largest preset with fewer parameters that fits one query here."""
    for name, candidate in reversed(PRESETS.items()):
        if candidate.parameters >= arch.parameters:
            continue
        plan = make_plan(candidate, dtype=dtype, device=device, device_source=device_source,
                         limit=limit, max_concurrent=1, max_new_tokens=new,
                         prompt_tokens=prompt, report=report, search_smaller=False)  # fmt: skip
        if plan.max_concurrent_that_fits >= 1:
            return name
    return None


def machine_limit(
    device: str,
    *,
    ram: int | None,
    high: float | None,
    low: float | None,
    report: dict[str, Any] | None,
) -> Limit:
    """The limit for ``device``; ``ram`` None means this machine (its RAM, and for the CPU
    what is available now)."""
    available = None
    if ram is None:
        from mpsctl.observe.ram import available_bytes, ram_bytes

        ram, ram_source = ram_bytes(), "this machine"
        available = available_bytes()
    else:
        ram_source = "--ram"
    if device == "mps":
        return mps_limit(ram, ram_source, high, low, report)
    if device == "cuda":
        return cuda_limit(ram, ram_source, report)
    rss = report.get("rss_bytes") if report else None
    if available is not None and isinstance(rss, int) and not isinstance(rss, bool):
        # a running service's memory is not available now, but the planned one replaces it
        return cpu_limit(ram, ram_source, available + rss, "RAM available now + the running "
                         "service's RSS (the planned service replaces it)")  # fmt: skip
    return cpu_limit(ram, ram_source, available)


def plan_for_settings(
    settings: Settings,
    report: dict[str, Any] | None = None,
    *,
    model_dir: str | None = None,
    preset: str | None = None,
    prompt_tokens: int = DEFAULT_PROMPT_TOKENS,
    ram: int | None = None,
) -> Plan:
    """Plan the configured model ([serve] model, dtype, max_concurrent, max_new_tokens;
    [memory] device and watermarks) on this machine, or on one with ``ram`` bytes.

    ``report`` is the service's ``mpsctl.memory/1`` report, when one answered: it supplies
    the device, the recommended working set, the CUDA limit and the framework overhead.
    """
    if model_dir is None and preset is None:
        model_dir = settings.serve.model
        if model_dir and model_dir.lower() in PRESETS:
            model_dir, preset = None, model_dir
        elif model_dir and not Path(model_dir).expanduser().is_dir():
            raise ConfigError(
                f"serve.model {model_dir!r} is not a local directory: give --model DIR "
                "or --preset NAME"
            )
    arch = load_architecture(model_dir, preset)
    device, device_source = resolve_device(
        settings.memory.device, report, other_machine=ram is not None
    )
    if report is not None and report.get("device") != device:
        report = None  # figures of another device say nothing about this one
    dtype = resolve_dtype(settings.serve.dtype, device)
    limit = machine_limit(device, ram=ram, high=settings.memory.high_watermark_ratio,
                          low=settings.memory.low_watermark_ratio, report=report)  # fmt: skip
    return make_plan(arch, dtype=dtype, device=device, device_source=device_source, limit=limit,
                     max_concurrent=settings.serve.max_concurrent,
                     max_new_tokens=settings.serve.max_new_tokens,
                     prompt_tokens=prompt_tokens, report=report)  # fmt: skip
