"""``mpsctl ask`` output: the answer panel, the stress report, the sweep table, their JSON."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from mpsctl.ask import AskResult
from mpsctl.render.console import printable
from mpsctl.stress import ProgressCallback, StressPlan
from mpsctl.stress_results import (
    MEMORY_FIELDS,
    LatencyStats,
    MemoryStats,
    StressResult,
    SweepResult,
)
from mpsctl.units import fmt_bytes

_MEMORY_LABELS = {
    "tree_rss_bytes": "service tree RSS",
    "tree_footprint_bytes": "service tree footprint",
    "reported_rss_bytes": "service RSS (its report)",
    "accel_allocated_bytes": "accelerator allocated",
    "accel_held_bytes": "accelerator held (cache incl.)",
}


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def _ms_json(seconds: float) -> float:
    return round(seconds * 1000, 3)


# --------------------------------------------------------------------------- one answer
def ask_panel(result: AskResult) -> Panel:
    where = " on ".join(x for x in (result.model, result.device) if x) or "model unknown"
    # a Text: rich reads a str title as markup, and the model's name comes from the service
    title = Text(printable(f"HTTP {result.status} · {_ms(result.latency_s)} · {where}"))
    if result.answer is not None:
        content = Text(printable(result.answer))
    else:  # a service whose answer field we do not know: show its JSON as it came
        content = Text(printable(json.dumps(result.body, ensure_ascii=False, indent=2)))
    subtitle = f"{result.tokens} tokens" if result.tokens is not None else None
    return Panel(content, title=title, title_align="left", subtitle=subtitle)


def ask_json(result: AskResult) -> dict[str, Any]:
    return {
        "schema": "mpsctl.ask/1",
        "url": result.url,
        "status": result.status,
        "latency_ms": _ms_json(result.latency_s),
        "response": dict(result.body),
    }


# --------------------------------------------------------------------------- stress
@contextlib.contextmanager
def stress_progress(console: Console, plan: StressPlan) -> Iterator[ProgressCallback | None]:
    """A progress bar on stderr when it is a terminal; nothing otherwise (logs stay clean)."""
    if not console.is_terminal:
        yield None
        return
    by_time = plan.requests is None
    total = plan.duration_s if by_time else plan.requests
    columns = [
        TextColumn(f"c={plan.concurrency}"),
        BarColumn(),
        TextColumn("{task.fields[done]} done, {task.fields[ok]} ok"),
        TimeElapsedColumn(),
    ]
    if not by_time:
        columns.insert(2, MofNCompleteColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("ask", total=total, done=0, ok=0)

        def update(done: int, ok: int, elapsed_s: float) -> None:
            progress.update(task, completed=elapsed_s if by_time else done, done=done, ok=ok)

        yield update


@contextlib.contextmanager
def sweep_progress(
    console: Console, plan: StressPlan
) -> Iterator[Callable[[int], ProgressCallback | None] | None]:
    """One progress bar per concurrency level of a sweep (stderr, terminals only)."""
    if not console.is_terminal:
        yield None
        return
    with contextlib.ExitStack() as stack:

        def on_level(level: int) -> ProgressCallback | None:
            stack.close()  # the previous level's bar
            level_plan = dataclasses.replace(plan, concurrency=level)
            return stack.enter_context(stress_progress(console, level_plan))

        yield on_level


def _latency_json(stats: LatencyStats | None) -> dict[str, Any] | None:
    if stats is None:
        return None
    doc: dict[str, Any] = {"count": stats.count, "method": "nearest-rank"}
    doc["min_ms"] = _ms_json(stats.min_s)
    doc.update({f"p{p}_ms": _ms_json(v) for p, v in stats.percentiles_s.items()})
    doc.update(max_ms=_ms_json(stats.max_s), mean_ms=_ms_json(stats.mean_s))
    return doc


def _memory_json(memory: MemoryStats) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "samples": memory.samples,
        "interval_s": memory.interval_s,
        "device": memory.device,
        "peak_in_flight": memory.peak_in_flight,
        "peak_queued": memory.peak_queued,
    }
    for name, span in memory.spans.items():
        doc[name] = {"before": span.before, "peak": span.peak, "after": span.after}
    return doc


def stress_json(result: StressResult) -> dict[str, Any]:
    return {
        "schema": "mpsctl.stress/1",
        "url": result.url,
        "started_at": result.started_at,
        "concurrency": result.concurrency,
        "requests_limit": result.requests_limit,
        "duration_limit_s": result.duration_limit_s,
        "stopped_by": result.stopped_by,
        "elapsed_s": round(result.elapsed_s, 3),
        "total": result.total,
        "ok": result.ok,
        "by_status": dict(result.by_status),
        "errors": dict(result.errors),
        "error_examples": dict(result.error_examples),
        "requests_per_s": round(result.requests_per_s, 2),
        "ok_per_s": round(result.ok_per_s, 2),
        "latency": _latency_json(result.latency),
        "tokens_total": result.tokens_total,
        "tokens_per_s": None if result.tokens_per_s is None else round(result.tokens_per_s, 2),
        "memory": _memory_json(result.memory),
    }


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "none"


def stress_tables(result: StressResult) -> list[Table]:
    summary = Table(title="stress run", show_header=False)
    summary.add_column("what", no_wrap=True)
    summary.add_column("value", overflow="fold")
    summary.add_row("service", result.url)
    summary.add_row("concurrency", str(result.concurrency))
    stopped = "Ctrl-C (partial results)" if result.interrupted else result.stopped_by
    summary.add_row(
        "requests", f"{result.total} in {result.elapsed_s:.2f} s (stopped by {stopped})"
    )
    summary.add_row("ok", str(result.ok))
    summary.add_row("by status", _counts(result.by_status))
    summary.add_row("errors", _counts(result.errors))
    for kind, message in result.error_examples.items():
        summary.add_row(f"  {kind}", message)
    summary.add_row("requests/s", f"{result.requests_per_s:.1f} ({result.ok_per_s:.1f} ok/s)")
    if result.tokens_per_s is not None:
        summary.add_row("tokens/s", f"{result.tokens_per_s:.1f} ({result.tokens_total} tokens)")

    tables = [summary]
    stats = result.latency
    if stats is None:
        summary.add_row("latency", "no successful request to measure")
    else:
        latency = Table(title="latency of successful requests (nearest-rank)")
        for name in ["min", *(f"p{p}" for p in stats.percentiles_s), "max"]:
            latency.add_column(name, justify="right")
        latency.add_row(
            _ms(stats.min_s), *(_ms(v) for v in stats.percentiles_s.values()), _ms(stats.max_s)
        )
        tables.append(latency)

    memory = Table(title=f"memory ({result.memory.samples} samples)")
    for column in ("", "before", "peak", "after"):
        memory.add_column(column, justify="right" if column else "left")
    for name in MEMORY_FIELDS:
        span = result.memory.spans.get(name)
        if span is not None and span.peak is not None:
            row = (fmt_bytes(span.before), fmt_bytes(span.peak), fmt_bytes(span.after))
            memory.add_row(_MEMORY_LABELS[name], *row)
    if memory.row_count:
        tables.append(memory)
    else:
        summary.add_row("memory", "not measured (no service process or memory report found)")
    return tables


# --------------------------------------------------------------------------- sweep
def sweep_json(result: SweepResult) -> dict[str, Any]:
    levels = []
    for level in result.levels:
        doc = stress_json(level)
        doc["memory"]["predicted_peak_bytes"] = result.predicted_peak_bytes(level.concurrency)
        levels.append(doc)
    return {
        "schema": "mpsctl.sweep/1",
        "interrupted": result.interrupted,
        "levels": levels,
        "plan": None if result.plan is None else result.plan.to_json(),
        "plan_note": result.plan_note,
    }


def _ratio(measured: int | None, predicted: int | None) -> str:
    if measured is None or not predicted:
        return "-"
    return f"{measured / predicted:.2f}"


def sweep_table(result: SweepResult) -> Table:
    title = "concurrency sweep" + (" (interrupted)" if result.interrupted else "")
    table = Table(title=title)
    with_accel = any(lv.memory.spans["accel_allocated_bytes"].peak for lv in result.levels)
    planned = result.plan is not None
    columns = ["concurrency", "ok/total", "p50", "p99", "req/s", "peak memory"]
    columns += ["predicted", "measured/predicted"] if planned else []
    columns += ["peak accel"] if with_accel else []
    for column in columns:  # numbers never wrap; the errors column takes what is left
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("errors", overflow="fold")
    for level in result.levels:
        stats = level.latency
        row = [
            str(level.concurrency),
            f"{level.ok}/{level.total}",
            _ms(stats.percentiles_s[50] if stats else None),
            _ms(stats.percentiles_s[99] if stats else None),
            f"{level.requests_per_s:.1f}",
            fmt_bytes(level.memory.peak_bytes),
        ]
        if planned:
            predicted = result.predicted_peak_bytes(level.concurrency)
            row += [fmt_bytes(predicted), _ratio(level.memory.peak_bytes, predicted)]
        if with_accel:
            row.append(fmt_bytes(level.memory.spans["accel_allocated_bytes"].peak))
        table.add_row(*row, _counts(level.errors))
    if result.plan is not None:
        plan, f = result.plan, result.plan.figures
        table.caption = (
            f"predicted by mpsctl plan for {plan.model} ({f.dtype} on {plan.device}): weights "
            f"{fmt_bytes(f.weights_bytes)} + overhead {fmt_bytes(f.overhead_bytes)} + n x "
            f"{fmt_bytes(f.per_query_bytes)} (KV cache and peak of one query: "
            f"{f.prompt_tokens} prompt + {f.max_new_tokens} new tokens)"
        )
    elif result.plan_note:
        table.caption = result.plan_note
    return table
