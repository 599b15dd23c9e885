"""``mpsctl plan`` output: the inputs and where each came from, the figures (bytes, and
what each is), both ceilings, the table, the answer."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from mpsctl.plan import Plan
from mpsctl.render.console import printable
from mpsctl.units import fmt_bytes

_CEILING_NAMES = {"mps": "MPS limit", "cuda": "CUDA limit", "cpu": "RAM available"}
_REFUSED = {"allocator": "NO (allocator)", "ram": "NO (RAM)", "load": "NO (load)"}


def _bytes(value: int) -> str:
    return f"{value:,} B ({fmt_bytes(value)})"


def _value(value: str | int | float | None, name: str) -> str:
    if isinstance(value, int) and name in ("ram", "os_reserve", "working_set", "gpu_memory"):
        return _bytes(value)
    return "unknown" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def figure_rows(plan: Plan) -> list[tuple[str, str, str]]:
    f, lim = plan.figures, plan.limit
    per_query = (f"{f.kv_bytes_per_token:,} B per token x ({f.prompt_tokens} prompt + "
                 f"{f.max_new_tokens} new tokens)")  # fmt: skip
    rows = [
        ("weights", _bytes(f.weights_bytes),
         f"{plan.parameters:,} parameters x {f.dtype_bytes} bytes ({f.dtype})"),
        ("KV cache per query", _bytes(f.kv_cache_per_query_bytes), per_query),
        ("peak per query", _bytes(f.peak_per_query_bytes),
         f"prefill activations {fmt_bytes(f.activation_bytes)} + last-position logits "
         f"{fmt_bytes(f.logits_bytes)}"),
    ]  # fmt: skip
    if f.query_growth != 1.0:
        rows.append(("counted per query", _bytes(f.per_query_counted_bytes),
                     f"(KV cache + peak) x {f.query_growth:g}: {f.growth_source}"))  # fmt: skip
    rows += [
        ("framework overhead", _bytes(f.overhead_bytes), f.overhead_source),
        (f"total at {plan.max_concurrent}", _bytes(plan.total_bytes),
         f"weights + overhead + {plan.max_concurrent} x per query"),
        ("load peak (host)", _bytes(plan.load_host_bytes),
         f"converts the {fmt_bytes(f.checkpoint_bytes or 0)} checkpoint to {f.dtype}: both "
         "in RAM at once" if f.converts else "the checkpoint is mapped in its own dtype"),
        (f"ceiling 1: {_CEILING_NAMES.get(plan.device, 'limit')}", _bytes(lim.limit_bytes),
         f"{lim.source}; usable less a {plan.margin:.0%} margin: {fmt_bytes(plan.usable_bytes)}"),
        ("ceiling 2: RAM less OS reserve", _bytes(plan.ram_ceiling_bytes),
         f"RAM {fmt_bytes(lim.ram_bytes)} - reserve {fmt_bytes(lim.reserve_bytes)}"
         + ("" if lim.unified else " (host RAM: holds the load, not the model)")),
    ]  # fmt: skip
    return rows


def answer_lines(plan: Plan) -> list[str]:
    margin = f"{plan.margin:.0%}"
    binds = {"allocator": f"the {_CEILING_NAMES.get(plan.device, 'limit')} binds",
             "ram": "RAM less the OS's reserve binds, below the allocator's limit"}[
                 plan.binding]  # fmt: skip
    lines: list[str] = []
    if plan.figures.total_bytes(1) > plan.room_bytes:
        lines.append(f"does not fit even at 1 query ({binds}): use a smaller model or dtype")
    else:
        verdict = "fit" if plan.total_bytes <= plan.room_bytes else "do NOT fit"
        lines.append(f"{plan.max_concurrent} concurrent queries {verdict} ({binds})")
    if not plan.load_fits:
        lines.append(
            f"the load does not fit: {fmt_bytes(plan.load_host_bytes)} of host RAM at its "
            f"peak, more than {fmt_bytes(plan.ram_ceiling_bytes)}; load in the checkpoint's "
            "own dtype (--dtype / serve.dtype) so no converted copy is built, or build the "
            "model on its device (device_map) from the safetensors mapping"
        )
    lines.append(f"largest max_concurrent that fits with a {margin} margin: "
                 f"{plan.max_concurrent_that_fits}")  # fmt: skip
    if plan.max_concurrent_that_fits == 0:
        if plan.smaller_preset:
            lines.append(
                f"the next size down that fits: {plan.smaller_preset} ({plan.figures.dtype})"
            )
        else:
            lines.append("no smaller preset fits either at this dtype")
    if plan.max_new_tokens_for_one_more is not None:
        lines.append(
            f"max_new_tokens {plan.max_new_tokens_for_one_more} would fit "
            f"{plan.max_concurrent_that_fits + 1} concurrent queries"
        )
    if plan.suggested_high is not None:
        lines.append(
            f"watermarks high {plan.suggested_high:.2f} low {plan.suggested_low:.2f} keep "
            f"the MPS limit under RAM less the OS's reserve (the largest high ratio that does)"
        )
    lines.extend(plan.notes)
    return lines


def print_plan(console: Console, plan: Plan) -> None:
    if plan.inputs:
        inputs = Table(title="inputs", title_justify="left")
        for column in ("input", "value", "from"):
            inputs.add_column(column, overflow="fold")
        for item in plan.inputs:
            inputs.add_row(item.name, printable(_value(item.value, item.name)),
                           printable(item.source))  # fmt: skip
        console.print(inputs)
    title = f"{plan.model} on {plan.device}, {plan.figures.dtype}"
    figures = Table(title=printable(title), title_justify="left")
    for column, justify in (("figure", "left"), ("bytes", "right"), ("what it is", "left")):
        figures.add_column(column, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for name, value, what in figure_rows(plan):
        figures.add_row(name, value, printable(what))
    console.print(figures)
    table = Table(title=f"concurrent queries (room: {plan.room_bytes:,} B, the lower ceiling)",
                  title_justify="left")  # fmt: skip
    for column in ("concurrent", "total bytes", "total", "% of room", "fits", "above RAM"):
        table.add_column(column, justify="right")
    for row in plan.rows:
        share = 100.0 * row.total_bytes / max(1, plan.room_bytes)
        table.add_row(str(row.concurrent), f"{row.total_bytes:,}", fmt_bytes(row.total_bytes),
                      f"{share:.1f}%", _REFUSED.get(row.refused_by or "", "yes"),
                      "yes (swap)" if row.above_ram else "no")  # fmt: skip
    console.print(table)
    for line in answer_lines(plan):
        console.print(printable(line))
