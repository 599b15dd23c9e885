"""The verdict: does the model fit at this concurrency, and what would.

``plan_for_settings(settings, report=None)`` is the one call other commands use (start's
warning, oom advice, doctor, ask --sweep): it plans the configured model and concurrency.
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mpsctl.errors import ConfigError
from mpsctl.plan.arch import DTYPE_BYTES, Architecture, read_model_dir
from mpsctl.plan.limit import (
    OS_RESERVE_BYTES,
    OS_RESERVE_SOURCE,
    Limit,
    MacFacts,
    cpu_limit,
    cuda_limit,
    effective_low,
    mps_limit,
    ram_ceiling_ratio,
)
from mpsctl.plan.memory import Figures, compute_figures
from mpsctl.plan.presets import PRESETS
from mpsctl.plan.verdict import SCHEMA, Input, Plan, Row

if TYPE_CHECKING:
    from mpsctl.settings import Settings

__all__ = ["SCHEMA", "Input", "Plan", "Row", "Target", "make_plan", "plan_for_settings"]
#: a typical question inside the chat template; pass --prompt-tokens for yours
DEFAULT_PROMPT_TOKENS = 256
#: no model takes more positions (the longest contexts published are a few million)
MAX_TOKENS = 2**31
#: rows of the concurrency table at most
MAX_ROWS = 64


# --------------------------------------------------------------------------- choices
@dataclass(frozen=True)
class Target:
    """The machine a plan is for, by flags; what is left None is this machine's."""

    ram: int | None = None
    mac: MacFacts = field(default_factory=MacFacts)
    #: the GPU's memory and where it came from (--gpu-memory, NVML)
    gpu_memory: tuple[int, str] | None = None
    reserve: int | None = None

    @property
    def other_machine(self) -> bool:
        return self.ram is not None or self.mac != MacFacts()


def resolve_device(
    requested: str, report: dict[str, Any] | None, *, other_machine: bool = False,
    gpu_memory: bool = False,
) -> tuple[str, str]:  # fmt: skip
    """``auto`` without torch: the service's own device, else what this machine has; a
    plan for another machine (``--ram``) is a plan for a Mac with that much memory, one
    with ``--gpu-memory`` a plan for CUDA."""
    if requested != "auto":
        return requested, "set"
    if gpu_memory:
        return "cuda", "auto with --gpu-memory: an NVIDIA GPU of that size"
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


def check_tokens(prompt_tokens: int, max_new_tokens: int) -> None:
    """Token counts no model takes would only make the arithmetic absurd."""
    if prompt_tokens + max_new_tokens > MAX_TOKENS:
        raise ConfigError(f"{prompt_tokens} prompt + {max_new_tokens} new tokens: more than "
                          f"{MAX_TOKENS} positions, which no model has")  # fmt: skip


def positions_problem(plan: Plan) -> str | None:
    """Why the plan's prompt and reply do not fit the model's positions, if they do not."""
    f = plan.figures
    if plan.max_positions is None or f.prompt_tokens + f.max_new_tokens <= plan.max_positions:
        return None
    return (f"{f.prompt_tokens} prompt + {f.max_new_tokens} new tokens = "
            f"{f.prompt_tokens + f.max_new_tokens}, more than {plan.model}'s "
            f"max_position_embeddings ({plan.max_positions})")  # fmt: skip


# --------------------------------------------------------------------------- the plan
def _count_that_fit(figures: Figures, room: int) -> int:
    spare = room - figures.fixed_bytes
    return max(0, spare // figures.per_query_counted_bytes) if spare > 0 else 0


def _tokens_for(figures: Figures, room: int, concurrent: int) -> int | None:
    """max_new_tokens at which ``concurrent`` queries fit, or None when none does."""
    share = (room - figures.fixed_bytes) // concurrent * 100 // figures.growth_percent
    tokens = (share - figures.peak_per_query_bytes) // figures.kv_bytes_per_token
    tokens -= figures.prompt_tokens
    return int(tokens) if tokens >= 1 else None


def _refused_by(plan: Plan, total: int) -> str | None:
    if total > plan.room_bytes:
        return plan.binding
    return None if plan.load_fits else "load"


def _notes(limit: Limit, figures: Figures) -> list[str]:
    notes: list[str] = []
    if limit.unified and limit.limit_bytes > limit.ram_ceiling_bytes:
        notes.append(
            f"the allocator's limit ({limit.limit_bytes} bytes) is above RAM less the OS's "
            f"reserve ({limit.ram_ceiling_bytes} bytes): past that the machine swaps, or the "
            "service is killed, before any out-of-memory error"
        )
    if figures.converts:
        notes.append(
            f"loading converts the checkpoint ({figures.checkpoint_bytes} bytes) to "
            f"{figures.dtype}: the host holds both for a moment ({figures.load_spike_bytes} "
            "bytes more); loading in the checkpoint's own dtype avoids it"
        )
    if figures.query_growth != 1.0:
        notes.append(
            f"on the CPU each query counts {figures.query_growth:g}x its tensors: "
            f"{figures.growth_source}"
        )
    return notes


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
    inputs: tuple[Input, ...] = (),
) -> Plan:
    if dtype not in DTYPE_BYTES:
        raise ConfigError(f"unknown dtype {dtype!r} (expected {', '.join(DTYPE_BYTES)})")
    check_tokens(prompt_tokens, max_new_tokens)
    overhead, overhead_source = report_overhead(report, device)
    figures = compute_figures(arch, dtype, prompt_tokens=prompt_tokens,
                              max_new_tokens=max_new_tokens, overhead_bytes=overhead,
                              overhead_source=overhead_source, device=device)  # fmt: skip
    high = ram_ceiling_ratio(limit)
    low = None if high is None else effective_low(high, None, discrete=not limit.unified)
    draft = Plan(model=arch.name, model_source=arch.source, parameters=arch.parameters,
                 device=device, device_source=device_source, max_concurrent=max_concurrent,
                 figures=figures, limit=limit, rows=(), max_concurrent_that_fits=0,
                 max_new_tokens_for_one_more=None, suggested_high=high, suggested_low=low,
                 smaller_preset=None, notes=tuple(_notes(limit, figures)),
                 inputs=inputs, max_positions=arch.max_positions)  # fmt: skip
    problem = positions_problem(draft)
    if problem is not None:
        draft = replace(draft, notes=(f"does not fit the model: {problem}", *draft.notes))
    room = draft.room_bytes
    fit = _count_that_fit(figures, room) if draft.load_fits else 0
    rows = []
    for n in range(1, min(max_concurrent, MAX_ROWS) + 1):
        total = figures.total_bytes(n)
        refused = _refused_by(draft, total)
        rows.append(Row(n, total, refused is None,
                        limit.unified and total > limit.ram_ceiling_bytes, refused))  # fmt: skip
    smaller = None
    if fit == 0 and search_smaller:
        smaller = _smaller_preset(arch, dtype, device, device_source, limit, prompt_tokens,
                                  max_new_tokens, report)  # fmt: skip
    more = _tokens_for(figures, room, fit + 1) if draft.load_fits else None
    return replace(draft, rows=tuple(rows), max_concurrent_that_fits=int(fit),
                   max_new_tokens_for_one_more=more, smaller_preset=smaller)  # fmt: skip


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
    target: Target | None = None,
    high_source: str | None = None,
) -> Limit:
    """The limit for ``device``; ``ram`` None means this machine (its RAM, and for the CPU
    what is available now)."""
    target = target or Target(ram=ram)
    available = None
    if ram is None:
        from mpsctl.observe.ram import available_bytes, ram_bytes

        ram, ram_source = ram_bytes(), "this machine"
        available = available_bytes()
    else:
        ram_source = "--ram"
    reserve = (OS_RESERVE_BYTES, OS_RESERVE_SOURCE)
    if target.reserve is not None:
        reserve = (target.reserve, "--os-reserve")
    if device == "mps":
        return mps_limit(ram, ram_source, high, low, report, mac=target.mac,
                         high_source=high_source, reserve=reserve)  # fmt: skip
    if device == "cuda":
        return cuda_limit(ram, ram_source, report, gpu_memory=target.gpu_memory, reserve=reserve)
    rss = report.get("rss_bytes") if report else None
    if available is not None and isinstance(rss, int) and not isinstance(rss, bool):
        # a running service's memory is not available now, but the planned one replaces it
        return cpu_limit(ram, ram_source, available + rss, "RAM available now + the running "
                         "service's RSS (the planned service replaces it)",
                         reserve=reserve)  # fmt: skip
    return cpu_limit(ram, ram_source, available, reserve=reserve)


def _source(settings: Settings, key: str) -> str:
    where = settings.sources.get(key, "default")
    return "mpsctl's default" if where == "default" else where


def plan_for_settings(
    settings: Settings,
    report: dict[str, Any] | None = None,
    *,
    model_dir: str | None = None,
    preset: str | None = None,
    prompt_tokens: int = DEFAULT_PROMPT_TOKENS,
    ram: int | None = None,
    target: Target | None = None,
    prompt_source: str = "default",
) -> Plan:
    """Plan the configured model ([serve] model, dtype, max_concurrent, max_new_tokens;
    [memory] device and watermarks) on this machine, or on the ``target`` machine.

    ``report`` is the service's ``mpsctl.memory/1`` report, when one answered: it supplies
    the device, the recommended working set, the CUDA limit and the framework overhead.
    """
    target = target or Target(ram=ram)
    model_source = "--model" if model_dir else "--preset" if preset else None
    if model_dir is None and preset is None:
        model_dir = settings.serve.model
        model_source = f"serve.model ({_source(settings, 'serve.model')})"
        if model_dir and model_dir.lower() in PRESETS:
            model_dir, preset = None, model_dir
        elif model_dir and not Path(model_dir).expanduser().is_dir():
            raise ConfigError(
                f"serve.model {model_dir!r} is not a local directory: give --model DIR "
                "or --preset NAME"
            )
    arch = load_architecture(model_dir, preset)
    device, device_source = resolve_device(
        settings.memory.device, report, other_machine=target.other_machine,
        gpu_memory=target.gpu_memory is not None,
    )  # fmt: skip
    if device_source == "set":
        device_source = _source(settings, "memory.device")
    if report is not None and report.get("device") != device:
        report = None  # figures of another device say nothing about this one
    dtype = resolve_dtype(settings.serve.dtype, device)
    high = settings.memory.high_watermark_ratio
    high_source = settings.sources.get("memory.high_watermark_ratio")
    limit = machine_limit(device, ram=target.ram, high=high,
                          low=settings.memory.low_watermark_ratio, report=report, target=target,
                          high_source=high_source)  # fmt: skip
    dtype_source = _source(settings, "serve.dtype")
    if settings.serve.dtype == "auto":
        dtype_source += f" (auto: {dtype} on {device}, as the reference service chooses)"
    inputs: tuple[Input, ...] = (
        Input("model", arch.name, model_source or arch.source),
        Input("device", device, device_source),
        Input("dtype", dtype, dtype_source),
        Input("max_concurrent", settings.serve.max_concurrent,
              _source(settings, "serve.max_concurrent")),
        Input("max_new_tokens", settings.serve.max_new_tokens,
              _source(settings, "serve.max_new_tokens")),
        Input("prompt_tokens", prompt_tokens,
              "mpsctl's default (a typical question in the chat template)"
              if prompt_source == "default" else prompt_source),
        Input("ram", limit.ram_bytes, limit.ram_source),
        Input("os_reserve", limit.reserve_bytes, limit.reserve_source),
    )  # fmt: skip
    if device == "mps":
        inputs += (
            Input("high_watermark_ratio", limit.high_ratio, limit.ratio_source or ""),
            Input("low_watermark_ratio", limit.low_ratio,
                  _source(settings, "memory.low_watermark_ratio")),
            Input("working_set", limit.recommended_max_bytes, limit.recommended_source or ""),
        )  # fmt: skip
    if device == "cuda":
        inputs += (Input("gpu_memory", limit.limit_bytes, limit.source),)
    return make_plan(arch, dtype=dtype, device=device, device_source=device_source, limit=limit,
                     max_concurrent=settings.serve.max_concurrent,
                     max_new_tokens=settings.serve.max_new_tokens,
                     prompt_tokens=prompt_tokens, report=report, inputs=inputs)  # fmt: skip
