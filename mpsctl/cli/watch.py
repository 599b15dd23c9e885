"""``mpsctl watch``: the probe, live, with trends; JSON lines when piped."""

from __future__ import annotations

import click

from mpsctl.cli.app import App
from mpsctl.monitor import record, watch_probes
from mpsctl.probe import take_probe
from mpsctl.render.console import write_json_line


@click.command()
@click.option(
    "--interval",
    "-n",
    default=2.0,
    show_default=True,
    type=click.FloatRange(0.2),
    metavar="SECONDS",
    help="Seconds between probes.",
)
@click.option(
    "--count",
    "-c",
    type=click.IntRange(1),
    metavar="N",
    help="Stop after N probes (default: until Ctrl-C).",
)
@click.option(
    "--record",
    "record_history",
    is_flag=True,
    help="Append every probe to the history (see mpsctl report).",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="One probe JSON document per line (the default when stdout is not a terminal).",
)
@click.pass_obj
def watch(
    app: App, interval: float, count: int | None, record_history: bool, as_json: bool
) -> None:
    """Probe every few seconds: a live dashboard with trends, or JSON lines.

    On a terminal: the probe's tables and sparklines of host memory used, service memory
    and accelerator memory over the last 60 samples, redrawn in place. Piped (or with
    --json): one mpsctl.probe/1 document per line, flushed at once. Exit 0 after --count
    probes, 130 on Ctrl-C. Never imports torch.

    \b
    Examples:
      mpsctl watch
      mpsctl watch --interval 5 --record
      mpsctl watch --count 3 --json | jq -c '{time, verdict}'
    """
    settings = app.settings()
    # a health answer slower than the interval would only delay the next sample
    timeout = max(1.0, min(3.0, interval))
    samples = watch_probes(
        lambda: take_probe(settings, health_timeout=timeout), interval=interval, count=count
    )
    if as_json or not app.out.is_terminal:
        for result in samples:
            if record_history:
                record(settings, result, app.warn, source="watch")
            write_json_line(result.to_json())
        return

    from mpsctl.render.monitor import Trends, watch_sections
    from mpsctl.render.screen import LineScreen

    trends = Trends()
    # redrawn in place, only the lines that changed since the last probe
    with LineScreen(app.out) as screen:
        for result in samples:
            if record_history:
                record(settings, result, app.warn, source="watch")
            trends.add(result)
            screen.update_sections(watch_sections(result, trends, interval))
