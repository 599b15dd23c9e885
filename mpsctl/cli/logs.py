"""``mpsctl logs``: the last lines of every service log, merged in time order; ``-f`` follows."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import click
from rich.text import Text

from mpsctl.cli.app import App
from mpsctl.cli.params import DURATION
from mpsctl.cli.service_options import service_option
from mpsctl.deaths.allocator import mentions_oom
from mpsctl.durations import Period
from mpsctl.errors import ExitCode, MpsctlError
from mpsctl.observe.logfiles import (
    LogLine,
    LogView,
    Notice,
    follow,
    resolve_logs,
    sources_from_globs,
)
from mpsctl.render.console import allow_raw, for_terminal

_COLOURS = ("cyan", "magenta", "green", "yellow", "blue", "red")


@click.command()
@click.option(
    "-n",
    "--lines",
    "count",
    default=50,
    show_default=True,
    type=click.IntRange(0),
    help="Lines from the end of each file.",
)
@click.option(
    "-f",
    "--follow",
    "following",
    is_flag=True,
    help="Keep printing new lines; switches to a newer dated, rotated or truncated file.",
)
@click.option("--error", "pick_error", is_flag=True, help="Logs whose glob names 'error'.")
@click.option("--app", "pick_app", is_flag=True, help="Logs whose glob names 'app'.")
@click.option("--backend", "pick_backend", is_flag=True, help="service.log_file only.")
@click.option(
    "--file",
    "globs",
    multiple=True,
    metavar="GLOB",
    help="Another file or glob (relative to here; the newest match). Repeatable.",
)
@click.option(
    "--since", type=DURATION, metavar="DURATION", help="Only lines newer than this (1h, 30m)."
)
@click.option("--grep", "pattern", metavar="REGEX", help="Only lines matching REGEX.")
@click.option(
    "--oom",
    "only_oom",
    is_flag=True,
    help="Only memory failures: OOM, watermark errors, OOM kills.",
)
@click.option(
    "--raw",
    is_flag=True,
    help="Print control characters as they are (on a terminal they are shown as \\x1b etc.).",
)
@service_option
@click.pass_obj
def logs(
    app: App, *, count: int, following: bool, pick_error: bool, pick_app: bool,
    pick_backend: bool, globs: tuple[str, ...], since: Period | None, pattern: str | None,
    only_oom: bool, raw: bool,
) -> None:  # fmt: skip
    """Print the last lines of service.log_file and service.log_globs (newest dated files).

    Lines are prefixed by a short source name and merged in time order where they carry a
    timestamp. Missing files are reported once on stderr. Ctrl-C ends -f (exit 130).
    On a terminal, control characters in log lines (escape sequences that could recolour,
    retitle or rewrite the screen) are shown escaped (\\x1b); --raw prints them as they are.

    \b
    Examples:
      mpsctl logs -n 100
      mpsctl logs -f --error --backend
      mpsctl logs --since 1h --grep 'query|timeout'
      mpsctl logs --oom --file 'mvp/logs/error_*.log'
      mpsctl logs -s embed -f                  # one of several services
    """
    if raw:
        allow_raw(app.out)
    picks = [
        n for n, on in (("error", pick_error), ("app", pick_app), ("backend", pick_backend)) if on
    ]
    sources = sources_from_globs(globs, Path.cwd())
    if picks or not globs:
        configured = resolve_logs(app.settings(), select=picks)
        if picks and not configured:
            raise MpsctlError(
                f"no configured log matches --{'/--'.join(picks)}", exit_code=ExitCode.USAGE
            )
        sources = configured + sources
    view = LogView(sources, keep=_keep(pattern, only_oom), since=since.before() if since else None)
    width = max(len(s.label) for s in sources)
    styles = {s.label: _COLOURS[i % len(_COLOURS)] for i, s in enumerate(sources)}

    def show(item: LogLine | Notice) -> None:
        if isinstance(item, Notice):
            (app.warn if item.warning else app.info)(item.message)
            return
        text = for_terminal(item.text, app.out, raw=raw)
        line = Text.assemble((item.label.ljust(width), styles[item.label]), " | ", text)
        app.out.print(line, soft_wrap=True)

    try:
        lines, notices = view.tail(count)
        for notice in notices:
            show(notice)
        for line in lines:
            show(line)
        if not following:
            if view.open_count() == 0:
                raise MpsctlError("no log file found")
            return
        for item in follow(view):
            show(item)
    finally:
        view.close()


def _keep(pattern: str | None, only_oom: bool) -> Callable[[str], bool] | None:
    tests: list[Callable[[str], object]] = []
    if pattern is not None:
        try:
            tests.append(re.compile(pattern).search)
        except re.error as exc:
            raise MpsctlError(
                f"--grep: invalid regular expression: {exc}", exit_code=ExitCode.USAGE
            ) from None
    if only_oom:
        from mpsctl.deaths.parsers import parse_death

        tests.append(lambda text: mentions_oom(text) or parse_death(text) is not None)
    if not tests:
        return None
    return lambda text: all(test(text) for test in tests)
