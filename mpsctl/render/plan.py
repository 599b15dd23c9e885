"""``mpsctl plan`` output: the figures (bytes, and what each is), the table, the answer."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from mpsctl.plan import Plan
from mpsctl.units import fmt_bytes


def _bytes(value: int) -> str:
    return f"{value:,} B ({fmt_bytes(value)})"


def figure_rows(plan: Plan) -> list[tuple[str, str, str]]:
    f, lim = plan.figures, plan.limit
    rows = [
        ("weights", _bytes(f.weights_bytes),
         f"{plan.parameters:,} parameters x {f.dtype_bytes} bytes ({f.dtype})"),
        ("KV cache per query", _bytes(f.kv_cache_per_query_bytes),
         f"{f.kv_bytes_per_token:,} B per token x ({f.prompt_tokens} prompt + "
         f"{f.max_new_tokens} new tokens)"),
        ("peak per query", _bytes(f.peak_per_query_bytes),
         f"prefill activations {fmt_bytes(f.activation_bytes)} + last-position logits "
         f"{fmt_bytes(f.logits_bytes)}"),
        ("framework overhead", _bytes(f.overhead_bytes), f.overhead_source),
        (f"total at {plan.max_concurrent}", _bytes(plan.total_bytes),
         f"weights + overhead + {plan.max_concurrent} x (KV cache + peak)"),
        ("limit", _bytes(lim.limit_bytes), lim.source),
    ]  # fmt: skip
    if lim.recommended_max_bytes is not None:
        rows.append(("recommended working set", _bytes(lim.recommended_max_bytes),
                     lim.recommended_source or ""))  # fmt: skip
    rows.append(("RAM", _bytes(lim.ram_bytes), lim.ram_source))
    return rows


def answer_lines(plan: Plan) -> list[str]:
    margin = f"{plan.margin:.0%}"
    lines: list[str] = []
    if plan.max_concurrent_that_fits == 0:
        lines.append("does not fit even at 1 query: use a smaller model or dtype")
        if plan.smaller_preset:
            lines.append(
                f"the next size down that fits: {plan.smaller_preset} ({plan.figures.dtype})"
            )
        else:
            lines.append("no smaller preset fits either at this dtype")
    else:
        verdict = "fits" if plan.fits else "does NOT fit"
        lines.append(
            f"{plan.max_concurrent} concurrent: {verdict}; largest max_concurrent that fits "
            f"with a {margin} margin: {plan.max_concurrent_that_fits}"
        )
    if plan.max_new_tokens_for_one_more is not None:
        lines.append(
            f"max_new_tokens {plan.max_new_tokens_for_one_more} would fit "
            f"{plan.max_concurrent_that_fits + 1} concurrent queries"
        )
    if plan.suggested_high is not None:
        lines.append(
            f"watermarks high {plan.suggested_high:.2f} low {plan.suggested_low:.2f} keep "
            f"the limit under RAM (the largest high ratio that does)"
        )
    lines.extend(plan.notes)
    return lines


def print_plan(console: Console, plan: Plan) -> None:
    title = f"{plan.model} on {plan.device} ({plan.device_source}), {plan.figures.dtype}"
    figures = Table(title=title, title_justify="left")
    for column, justify in (("figure", "left"), ("bytes", "right"), ("what it is", "left")):
        figures.add_column(column, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for name, value, what in figure_rows(plan):
        figures.add_row(name, value, what)
    console.print(figures)
    table = Table(title=f"concurrent queries (limit less a {plan.margin:.0%} margin: "
                  f"{plan.usable_bytes:,} B)", title_justify="left")  # fmt: skip
    for column in ("concurrent", "total bytes", "total", "% of limit", "fits", "above RAM"):
        table.add_column(column, justify="right")
    for row in plan.rows:
        share = 100.0 * row.total_bytes / plan.limit.limit_bytes
        table.add_row(str(row.concurrent), f"{row.total_bytes:,}", fmt_bytes(row.total_bytes),
                      f"{share:.1f}%", "yes" if row.fits else "NO",
                      "yes (swap)" if row.above_ram else "no")  # fmt: skip
    console.print(table)
    for line in answer_lines(plan):
        console.print(line)
