"""A plan's verdict: the figures against both ceilings, and its ``mpsctl.plan/1`` document
(every figure in bytes, every input with where it came from, which ceiling binds)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mpsctl.plan.limit import Limit
from mpsctl.plan.memory import Figures

SCHEMA = "mpsctl.plan/1"
#: the share of the limit kept free: the allocator's caching and fragmentation, and
#: whatever the model does that this arithmetic does not count
MARGIN = 0.10


@dataclass(frozen=True)
class Row:
    concurrent: int
    total_bytes: int
    fits: bool
    #: above RAM less the OS's reserve (unified memory): the machine would swap
    above_ram: bool
    #: the ceiling that refuses this row first: "allocator", "ram" or "load"; None: fits
    refused_by: str | None = None


@dataclass(frozen=True)
class Input:
    """One input of the plan, and where it came from (a flag, the settings file, the
    environment, the running service, a preset, a default)."""

    name: str
    value: str | int | float | None
    source: str


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
    inputs: tuple[Input, ...] = field(default_factory=tuple)
    #: the model's max_position_embeddings, when its config says
    max_positions: int | None = None

    @property
    def total_bytes(self) -> int:
        return self.figures.total_bytes(self.max_concurrent)

    @property
    def usable_bytes(self) -> int:
        """The allocator's ceiling less the margin."""
        return int(self.limit.limit_bytes * (1 - self.margin))

    @property
    def ram_ceiling_bytes(self) -> int:
        return self.limit.ram_ceiling_bytes

    @property
    def load_host_bytes(self) -> int:
        """The host RAM loading needs: on a discrete GPU only the overhead and a converted
        CPU copy with its source (a checkpoint in the target dtype streams from its mapping
        into the GPU)."""
        f = self.figures
        if self.limit.unified:
            return f.load_peak_bytes
        return f.overhead_bytes + (f.weights_bytes + f.load_spike_bytes if f.converts else 0)

    @property
    def load_fits(self) -> bool:
        room = self.ram_ceiling_bytes
        if self.device == "cpu":
            room = min(room, self.usable_bytes)
        return self.load_host_bytes <= room

    @property
    def room_bytes(self) -> int:
        """What the model and its queries may hold: the lower of the two ceilings (the RAM
        ceiling only where the device's memory is RAM)."""
        if self.limit.unified:
            return min(self.usable_bytes, self.ram_ceiling_bytes)
        return self.usable_bytes

    @property
    def binding(self) -> str:
        """The ceiling the model and its queries meet first: "ram" (RAM less the OS's
        reserve, below the allocator's limit on unified memory) or "allocator"."""
        if self.limit.unified and self.ram_ceiling_bytes < self.usable_bytes:
            return "ram"
        return "allocator"

    @property
    def positions_fit(self) -> bool:
        f = self.figures
        return self.max_positions is None or (
            f.prompt_tokens + f.max_new_tokens <= self.max_positions
        )

    @property
    def fits(self) -> bool:
        return self.positions_fit and self.load_fits and self.total_bytes <= self.room_bytes

    def to_json(self) -> dict[str, Any]:
        return plan_document(self)


def plan_document(plan: Plan) -> dict[str, Any]:
    """The ``mpsctl.plan/1`` document of ``plan``."""
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
        "positions_fit": plan.positions_fit,
        "max_position_embeddings": plan.max_positions,
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
