"""Plain advice for one out-of-memory event, with its exact numbers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mpsctl.deaths.allocator import OomEvent, short_size
from mpsctl.plan.lines import advice_line, figures_line
from mpsctl.torch_env import (
    DEFAULT_HIGH_RATIO,
    DEFAULT_LOW_RATIO,
    FALLBACK_ENV,
    HIGH_ENV,
    LOW_ENV,
    MAX_RATIO,
)

if TYPE_CHECKING:
    from mpsctl.plan.plan import Plan

#: the high/low ratio pair suggested to keep macOS out of swap (low <= high, as PyTorch demands)
SUGGESTED_HIGH, SUGGESTED_LOW = 0.7, 0.5
_KNOWN_WORKING_SETS = ((5.33, 8), (10.67, 16), (16.0, 24), (21.33, 32), (37.44, 48))


def explain(
    event: OomEvent, high_ratio_hint: float | None = None, plan: Plan | None = None
) -> list[str]:
    """Plain advice with exact numbers. ``high_ratio_hint``: the ratio the service ran with;
    ``plan``: the configured service's memory plan, whose figures the advice then cites."""
    advice = _explain(event, high_ratio_hint)
    if plan is not None and event.kind == "oom":
        advice.append(f"By mpsctl plan, the {figures_line(plan)}: {advice_line(plan)}.")
    return advice


def _explain(event: OomEvent, high_ratio_hint: float | None) -> list[str]:
    if event.kind == "invalid_low_watermark":
        return [
            f"PyTorch refused {LOW_ENV}={event.ratio}: the low ratio must "
            f"be <= the high ratio (or <= {MAX_RATIO:.1f} when high is 0.0). The service fails at "
            "its first MPS allocation.",
            f"The usual cause: {HIGH_ENV} set below {DEFAULT_LOW_RATIO:g} without also "
            f"setting LOW (its default is {DEFAULT_LOW_RATIO:g} on unified memory). Set both, "
            "e.g. HIGH=0.7 "
            "LOW=0.5 (mpsctl.toml [memory] high_watermark_ratio / low_watermark_ratio); "
            "`mpsctl config show` checks the pair before anything starts.",
        ]
    if event.kind == "invalid_high_watermark":
        return [
            f"PyTorch refused {HIGH_ENV}={event.ratio}: it must be a "
            f"number in 0.0-{MAX_RATIO:.1f} (older builds on discrete-GPU Macs: 0.0-1.0). The "
            "service fails at its first MPS allocation.",
            "Note PyTorch reads it with strtod: a non-numeric value silently becomes 0.0 "
            "(no limit) instead of failing. Set it through mpsctl.toml [memory], which "
            "validates it.",
        ]
    if event.backend == "mps":
        return _explain_mps(event, high_ratio_hint)
    return _explain_cuda(event)


def _explain_mps(event: OomEvent, hint: float | None) -> list[str]:
    advice: list[str] = []
    limit = event.max_allowed_bytes
    allocated = (event.allocated_bytes or 0) + (event.other_bytes or 0)
    requested = event.requested_bytes
    if limit is None:
        advice.append(
            f"No limit was set ({HIGH_ENV}=0.0): Metal itself refused "
            f"the allocation with {short_size(allocated)} in use. The Mac is out of memory "
            "and was probably swapping hard before this; set a limit (below) so PyTorch "
            "fails before macOS does."
        )
        working_set = None
    else:
        if hint is not None and hint > 0:
            ratio, how = hint, f"the service's high ratio {hint:g}"
        else:
            ratio = DEFAULT_HIGH_RATIO
            how = (
                f"ratio {ratio:g} assumed: PyTorch's default; "
                "pass --high-ratio if the service ran with another"
            )
        working_set = round(limit / ratio)
        advice.append(
            f"Limit: max allowed {short_size(limit)} = high watermark ratio x the GPU's "
            f"recommendedMaxWorkingSetSize, so that size is {short_size(limit)} / {ratio:g} = "
            f"{short_size(working_set)} ({how}).{_mac_size(working_set)}"
        )
        if requested is not None:
            total = allocated + requested
            if requested * 100 < limit:
                advice.append(
                    f"The process already held {short_size(allocated)} (allocated + other) of "
                    f"{short_size(limit)} and failed on a small request ({short_size(requested)}): "
                    "memory grew up to the limit over time. Look for memory that is never "
                    "freed (a previous model still referenced, caches, growing batches), not "
                    "for one oversized tensor."
                )
            else:
                advice.append(
                    f"One large request: {short_size(requested)} "
                    f"({requested * 100 / limit:.0f}% of the limit) on top of "
                    f"{short_size(allocated)} needed {short_size(total)}. Reduce what one "
                    "step holds: batch size, sequence length, max_new_tokens."
                )
    if (event.other_bytes or 0) > (event.allocated_bytes or 0):
        advice.append(
            f"Other allocations ({short_size(event.other_bytes)}) exceed PyTorch's own heaps "
            f"({short_size(event.allocated_bytes)}): Metal memory held outside the allocator "
            "(MPSGraph caches, other Metal users in the process); torch.mps.empty_cache() "
            "does not free it, a restart does."
        )
    if working_set is not None and hint is not None and 0 < hint <= SUGGESTED_HIGH:
        advice.append(
            f"The service already runs with a low limit (high ratio {hint:g}): a lower one "
            "only makes PyTorch fail sooner. Reduce what the service holds instead (below)."
        )
    elif working_set is not None:
        high, low = SUGGESTED_HIGH, SUGGESTED_LOW
        advice.append(
            f"To keep macOS out of swap set both ratios (low <= high): high {high:g} -> "
            f"{short_size(round(working_set * high))}, low {low:g} -> "
            f"{short_size(round(working_set * low))} ({HIGH_ENV}={high:g} "
            f"{LOW_ENV}={low:g}, or [memory] in mpsctl.toml). A lower "
            "limit makes PyTorch fail sooner, it does not make the model fit."
        )
    advice += [
        "Lower the peak: fewer queries at once (serve.max_concurrent or the service's own "
        "limit) and fewer max_new_tokens per query.",
        "Use a smaller or lower-precision model (e.g. Qwen2.5-0.5B instead of 1.5B, float16 "
        "instead of float32, or a quantized build).",
        f"{FALLBACK_ENV}=1 does not catch out-of-memory errors: it only runs "
        "operators MPS lacks on the CPU. Running on the CPU is the service's own device choice.",
    ]
    return advice


def _mac_size(working_set: int) -> str:
    gib = working_set / 1024**3
    for known, ram in _KNOWN_WORKING_SETS:
        if abs(gib - known) <= known * 0.02:
            return (
                f" That matches an Apple Silicon Mac with {ram} GB of RAM (recommended working "
                f"set {known:g} GiB; the message's rounding explains the difference)."
                if f"{gib:.2f}" != f"{known:.2f}"
                else f" That matches an Apple Silicon Mac with {ram} GB of RAM."
            )
    return ""


def _explain_cuda(event: OomEvent) -> list[str]:
    advice: list[str] = []
    requested = event.requested_bytes
    total = event.total_bytes
    if requested is not None and total is not None and requested > total:
        advice.append(
            f"The request alone ({short_size(requested)}) is larger than the whole GPU "
            f"({short_size(total)}): no setting helps, make the step smaller (batch size, "
            "sequence length, resolution)."
        )
    others = sum(p.bytes for p in event.other_processes)
    if event.other_processes:
        pids = ", ".join(f"{p.pid} ({short_size(p.bytes)})" for p in event.other_processes)
        advice.append(
            f"Other processes hold {short_size(others)} on GPU {event.gpu_index}: {pids}. "
            "Stop them, or run the service on another GPU (CUDA_VISIBLE_DEVICES)."
        )
    if event.process_bytes is not None and total:
        advice.append(
            f"This process holds {short_size(event.process_bytes)} of {short_size(total)} "
            f"({event.process_bytes * 100 / total:.0f}%), "
            f"{short_size(event.free_bytes)} was free."
        )
    if event.allowed_bytes is not None:
        advice.append(
            f"set_per_process_memory_fraction limits this process to "
            f"{short_size(event.allowed_bytes)}: raise the fraction if the GPU is not shared."
        )
    unallocated = event.reserved_unallocated_bytes
    if unallocated is None and event.reserved_bytes is not None and event.allocated_bytes:
        unallocated = max(event.reserved_bytes - event.allocated_bytes, 0)
    if unallocated is not None and requested is not None and unallocated >= requested:
        remedy = (
            # the XPU message's own remedy; the CUDA allocator settings do not apply to it
            "Releasing the cache (torch.xpu.empty_cache()) between requests returns it."
            if event.backend == "xpu"
            else "Start the service with PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True "
            "(PyTorch >= 2.1; older: max_split_size_mb:128)."
        )
        advice.append(
            f"Fragmentation: {short_size(unallocated)} is reserved by PyTorch but unallocated, "
            f"more than the {short_size(requested)} requested, yet no block fitted. {remedy}"
        )
    elif unallocated is not None:
        advice.append(
            f"Only {short_size(unallocated)} is reserved but unallocated: not fragmentation, "
            "the live tensors need more than the GPU has."
        )
    advice += [
        "Lower the peak: fewer queries at once, smaller batches, fewer max_new_tokens.",
        "Use a smaller or lower-precision model (float16/bfloat16, or a quantized build).",
    ]
    return advice
