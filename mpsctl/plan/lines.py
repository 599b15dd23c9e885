"""A plan in words, each figure in bytes: the lines start, doctor and oom cite."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mpsctl.units import fmt_bytes

if TYPE_CHECKING:
    from mpsctl.plan.plan import Plan

_LIMIT_NAMES = {"mps": "MPS limit", "cuda": "CUDA limit", "cpu": "RAM available"}


def limit_phrase(plan: Plan) -> str:
    """``1234 bytes usable (1.1 GiB: the MPS limit 1.3 GiB less the 10% margin)``."""
    name = _LIMIT_NAMES.get(plan.device, "limit")
    return (
        f"{plan.usable_bytes} bytes usable ({fmt_bytes(plan.usable_bytes)}: the {name} "
        f"{fmt_bytes(plan.limit.limit_bytes)} less the {plan.margin:.0%} margin)"
    )


def figures_line(plan: Plan) -> str:
    """The plan's figures in one line, each in bytes: what oom and doctor cite."""
    f = plan.figures
    n = plan.max_concurrent
    return (
        f"plan for {plan.model} ({f.dtype} on {plan.device}): weights {f.weights_bytes} bytes "
        f"({fmt_bytes(f.weights_bytes)}), KV cache {f.kv_cache_per_query_bytes} bytes per "
        f"query ({f.prompt_tokens} prompt + {f.max_new_tokens} new tokens), peak "
        f"{f.peak_per_query_bytes} bytes per query, overhead {f.overhead_bytes} bytes; "
        f"{n} at once need {plan.total_bytes} bytes ({fmt_bytes(plan.total_bytes)}) of "
        f"{limit_phrase(plan)}; max_concurrent that fits: {plan.max_concurrent_that_fits}"
    )


def advice_line(plan: Plan) -> str:
    """What to change so the configured service fits, by the plan's numbers."""
    fit = plan.max_concurrent_that_fits
    if fit == 0:
        smaller = ""
        if plan.smaller_preset:
            smaller = f" (the largest preset that fits: {plan.smaller_preset})"
        return (
            "it does not fit even at 1 query: use a smaller model or dtype"
            f"{smaller}; mpsctl plan shows the figures"
        )
    if not plan.fits:
        more = plan.max_new_tokens_for_one_more
        tokens = f", or max_new_tokens {more} for {fit + 1} at once" if more is not None else ""
        return f"set serve.max_concurrent = {fit}{tokens}; mpsctl plan shows the figures"
    return f"serve.max_concurrent = {plan.max_concurrent} fits (up to {fit} would)"
