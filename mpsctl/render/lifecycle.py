"""Tables and lines for start / stop / restart / status / clean-cache / fix."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from rich import box
from rich.console import Console
from rich.status import Status
from rich.table import Table
from rich.text import Text

from mpsctl.control.cache import CleanCacheResult
from mpsctl.control.fix import FixResult
from mpsctl.control.start import StartFailed, StartResult
from mpsctl.render.console import for_terminal
from mpsctl.render.probe import CPU_ACCELERATOR
from mpsctl.render.service_text import short_command
from mpsctl.units import fmt_bytes, fmt_percent, fmt_seconds


class ConsoleEvents:
    """Progress on stderr: warnings, notes, and a spinner only when stderr is a terminal,
    whose text says what the service is doing (the phases read from its log). Off a
    terminal the phases are not printed: a cron job's mail gets the result, not the steps."""

    def __init__(
        self, err: Console, warn: Callable[[str], None], info: Callable[[str], None]
    ) -> None:
        self.err = err
        self._warn = warn
        self._info = info
        self._status: Status | None = None

    def warn(self, message: str) -> None:
        self._warn(message)

    def info(self, message: str) -> None:
        self._info(message)

    def waiting(self, message: str) -> contextlib.AbstractContextManager[object]:
        if self.err.is_terminal:
            return self._spinner(message)
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def _spinner(self, message: str) -> Iterator[Status]:
        with self.err.status(message) as status:
            self._status = status
            try:
                yield status
            finally:
                self._status = None

    def phase(self, message: str) -> None:
        status = self._status
        if status is not None:
            # Text, not markup: a path in the message may hold brackets
            text = Text.assemble(message, ("  (still waiting for health)", "dim"))
            text.no_wrap, text.overflow = True, "ellipsis"
            status.update(text)


def start_line(result: StartResult) -> str:
    latency = "" if result.health_latency_ms is None else f" ({result.health_latency_ms:g} ms)"
    if result.status == "already-running":
        how = "" if result.found_by == "pidfile" else f" (found by {result.found_by})"
        return (
            f"{result.name} is already running: pid {result.pid}{how}, "
            f"healthy at {result.url}{latency}"
        )
    return (
        f"{result.name} started: pid {result.pid}, healthy at {result.url} after "
        f"{fmt_seconds(result.startup_s)}"
    )


def render_start(out: Console, result: StartResult) -> None:
    """The summary line, then what the service runs with: command, env, limit, files."""
    out.print(start_line(result), soft_wrap=True)
    table = Table(show_header=False, box=box.SIMPLE, padding=(0, 1))
    table.add_column("", style="bold", no_wrap=True)
    table.add_column("", overflow="fold")
    table.add_row("command", " ".join(result.argv))
    env = " ".join(f"{k}={v}" for k, v in result.torch_env.items()) or "(no PYTORCH_* set)"
    table.add_row("env", env)
    if result.limit.recommended_max_bytes is not None:
        table.add_row("MPS limit", result.limit.describe())
    rotated = " (the previous one was rotated to .1)" if result.log_rotated else ""
    table.add_row("log", f"{result.log_file}{rotated}")
    if result.pidfile is not None:
        table.add_row("pidfile", str(result.pidfile))
    out.print(table)


def render_start_failure(err: Console, exc: StartFailed) -> None:
    if exc.log_tail:
        err.print(f"last {len(exc.log_tail)} lines of {exc.log_file}:", soft_wrap=True)
        for line in exc.log_tail:
            err.print("  " + line, soft_wrap=True)
    else:
        err.print(f"(nothing in {exc.log_file} from this start)", soft_wrap=True)


def render_clean_cache(out: Console, result: CleanCacheResult) -> None:
    py = result.python
    verb = "would free" if py.dry_run else "freed"
    out.print(
        f"Python caches under {py.workdir}: {py.dirs_removed} __pycache__ dir(s), "
        f"{py.files_removed} file(s), {verb} {fmt_bytes(py.freed_bytes)}"
    )
    if py.skipped_venvs:
        out.print(f"  skipped {len(py.skipped_venvs)} virtualenv(s) (--include-venv to clean)")
    for mount in py.skipped_mounts:
        out.print(f"  left alone {mount}: another file system (a mount inside the workdir)")
    for error in py.errors:
        out.print(f"  could not remove {error}")
    if not result.service_running:
        out.print("service not running: no accelerator cache to release")
        return
    rel = result.release
    if rel is None:
        out.print("dry run: the service's cache was not released")
        return
    if not rel.ok:
        out.print(f"release failed: {rel.error}")
        return
    table = Table(title=f"release ({rel.device or 'unknown device'})", title_justify="left")
    for column in ("", "before", "after"):
        table.add_column(column, justify="right" if column else "left")
    table.add_row(
        "accelerator reserved",
        fmt_bytes(rel.reserved_before_bytes),
        fmt_bytes(rel.reserved_after_bytes),
    )
    table.add_row(
        "accelerator allocated",
        fmt_bytes(rel.allocated_before_bytes),
        fmt_bytes(rel.allocated_after_bytes),
    )
    table.add_row("service RSS", fmt_bytes(rel.rss_before_bytes), fmt_bytes(rel.rss_after_bytes))
    out.print(table)


def _cell(figures: dict[str, Any] | None, key: str) -> str:
    if figures is None:
        return "-"
    value = figures.get(key)
    if (
        key.startswith("accelerator_")
        and value is None
        and figures.get("accelerator_device") == "cpu"
    ):
        return CPU_ACCELERATOR
    if key.endswith("_bytes"):
        return fmt_bytes(value)
    if key.endswith("_percent"):
        return fmt_percent(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    return "unknown" if value is None else str(value)


def render_fix(out: Console, result: FixResult, *, raw: bool = False) -> None:
    """The actions and the before/after table; the test answer (and the ask step's detail,
    which quotes it) escaped on a terminal unless ``raw``, as ``ask`` shows answers."""
    if result.actions:
        table = Table(title="actions", title_justify="left")
        for column in ("step", "ok", "took", "detail"):
            table.add_column(column)
        for action in result.actions:
            ok = "yes" if action.ok else "FAILED"
            detail = for_terminal(action.detail, out, raw=raw)
            table.add_row(action.name, ok, fmt_seconds(action.elapsed_s), detail)
        out.print(table)
    table = Table(title=f"fix: {result.status}", title_justify="left")
    for column in ("", "before", "after"):
        table.add_column(column)
    rows = (
        ("verdict", "verdict"),
        ("running", "running"),
        ("healthy", "healthy"),
        ("pid", "pid"),
        ("service RSS", "service_rss_bytes"),
        ("service footprint", "service_footprint_bytes"),
        ("accelerator held", "accelerator_held_bytes"),
        ("accelerator limit", "accelerator_limit_bytes"),
        ("host memory used", "host_used_percent"),
    )
    for label, key in rows:
        table.add_row(label, _cell(result.before, key), _cell(result.after, key))
    out.print(table)
    if result.answer is not None:
        answer = for_terminal(short_command(result.answer, 200), out, raw=raw)
        out.print(f"test answer: {answer}", soft_wrap=True)
    out.print(result.message, soft_wrap=True)
