"""A plan as its ``mpsctl.plan/1`` JSON document: every figure in bytes, every input with
where it came from, both ceilings and which one binds."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mpsctl.plan.plan import Plan

SCHEMA = "mpsctl.plan/1"


def plan_document(plan: Plan) -> dict[str, Any]:
    f, lim = plan.figures, plan.limit
    return {
        "schema": SCHEMA,
        "model": plan.model,
        "model_source": plan.model_source,
        "parameters": plan.parameters,
        "dtype": f.dtype,
        "device": plan.device,
        "device_source": plan.device_source,
        "prompt_tokens": f.prompt_tokens,
        "max_new_tokens": f.max_new_tokens,
        "max_concurrent": plan.max_concurrent,
        "inputs": {i.name: {"value": i.value, "source": i.source} for i in plan.inputs},
        "weights_bytes": f.weights_bytes,
        "kv_cache_per_token_bytes": f.kv_bytes_per_token,
        "kv_cache_per_query_bytes": f.kv_cache_per_query_bytes,
        "logits_bytes": f.logits_bytes,
        "activation_bytes": f.activation_bytes,
        "peak_per_query_bytes": f.peak_per_query_bytes,
        "per_query_bytes": f.per_query_bytes,
        "per_query_growth": f.query_growth,
        "per_query_growth_source": f.growth_source,
        "per_query_counted_bytes": f.per_query_counted_bytes,
        "overhead_bytes": f.overhead_bytes,
        "overhead_source": f.overhead_source,
        "checkpoint_bytes": f.checkpoint_bytes,
        "load_converts_dtype": f.converts,
        "load_spike_bytes": f.load_spike_bytes,
        "load_peak_bytes": plan.load_host_bytes,
        "load_fits": plan.load_fits,
        "total_bytes": plan.total_bytes,
        "limit_bytes": lim.limit_bytes,
        "limit_source": lim.source,
        "usable_bytes": plan.usable_bytes,
        "margin": plan.margin,
        "ceilings": {
            "allocator": {
                "bytes": lim.limit_bytes,
                "usable_bytes": plan.usable_bytes,
                "source": lim.source,
            },
            "ram": {
                "bytes": plan.ram_ceiling_bytes,
                "ram_bytes": lim.ram_bytes,
                "reserve_bytes": lim.reserve_bytes,
                "reserve_source": lim.reserve_source,
                "counts_the_model": lim.unified,
            },
            "binding": plan.binding,
        },
        "recommended_max_bytes": lim.recommended_max_bytes,
        "recommended_max_source": lim.recommended_source,
        "high_watermark_ratio": lim.high_ratio,
        "high_watermark_ratio_source": lim.ratio_source,
        "low_watermark_ratio": lim.low_ratio,
        "ram_bytes": lim.ram_bytes,
        "ram_source": lim.ram_source,
        "limit_above_ram": lim.above_ram,
        "fits": plan.fits,
        "max_concurrent_that_fits": plan.max_concurrent_that_fits,
        "max_new_tokens_for_one_more": plan.max_new_tokens_for_one_more,
        "suggested_high_watermark_ratio": plan.suggested_high,
        "suggested_low_watermark_ratio": plan.suggested_low,
        "smaller_preset_that_fits": plan.smaller_preset,
        "rows": [
            {
                "concurrent": r.concurrent,
                "total_bytes": r.total_bytes,
                "fits": r.fits,
                "above_ram": r.above_ram,
                "refused_by": r.refused_by,
            }
            for r in plan.rows
        ],
        "notes": list(plan.notes),
    }
