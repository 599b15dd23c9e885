"""``mpsctl report``: what the recorded probe history says about a period."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import click

from mpsctl.cli.app import App, json_option
from mpsctl.cli.params import DURATION
from mpsctl.durations import Period
from mpsctl.monitor.report import build_report, plot_report
from mpsctl.render.console import write_json


@click.command()
@click.option(
    "--since",
    type=DURATION,
    default="24h",
    show_default=True,
    metavar="DURATION",
    help="Period to cover, back from now (90m, 24h, 7d).",
)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE.png",
    help="Also draw memory over time to a PNG (needs matplotlib).",
)
@json_option
@click.pass_obj
def report(app: App, since: Period, plot_path: Path | None, as_json: bool) -> None:
    """Min/avg/p95/max of each recorded figure, verdicts, OOM events and restarts.

    Reads the history that `mpsctl probe --record` and `mpsctl watch --record` append to
    (MPSCTL_HOME/history/probe-YYYY-MM-DD.jsonl) and the restarts `mpsctl fix` logged in
    history/fix.jsonl. Unknown readings are skipped, never counted as 0. --plot draws host,
    service and accelerator memory, the accelerator limit and the restarts (the `plot`
    extra: pip install 'mpsctl[plot]').

    \b
    Examples:
      mpsctl report
      mpsctl report --since 7d --plot memory.png
      mpsctl report --json | jq .figures.service_memory_bytes
    """
    settings = app.settings()
    until = datetime.now(timezone.utc)
    start = since.before(until)
    result = build_report(settings.home, start, until)
    if result.samples == 0:
        app.warn(
            f"no probe history since {result.since}: record it with "
            "`mpsctl probe --record` (see `mpsctl cron`)"
        )
    if plot_path is not None:
        plot_report(result, plot_path, title=f"mpsctl: {settings.service.name} memory")
        app.info(f"plot written to {plot_path}")
    if as_json:
        write_json(result.to_json())
        return
    from mpsctl.render.monitor import print_report

    print_report(app.out, result)
