"""``mpsctl exporter``: the probe's gauges on a Prometheus /metrics endpoint."""

from __future__ import annotations

import time

import click

from mpsctl.cli.app import App
from mpsctl.monitor.prometheus import start_exporter
from mpsctl.probe import take_probe


@click.command()
@click.option(
    "--port",
    default=9808,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port to listen on (0: any free port, printed on stderr).",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind (0.0.0.0 exposes host details to the network).",
)
@click.option(
    "--timeout",
    default=3.0,
    show_default=True,
    type=click.FloatRange(0.1, 30),
    help="Seconds for the health request of each scrape's probe.",
)
@click.option(
    "--min-interval",
    default=1.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Scrapes closer than this share one probe.",
)
@click.option(
    "--rules",
    "show",
    flag_value="rules",
    help="Print the Prometheus alert rules for these metrics, then exit.",
)
@click.option(
    "--dashboard",
    "show",
    flag_value="dashboard",
    help="Print the Grafana dashboard JSON for these metrics, then exit.",
)
@click.pass_obj
def exporter(
    app: App, port: int, host: str, timeout: float, min_interval: float, show: str | None
) -> None:
    """Serve the probe's figures as Prometheus gauges on http://HOST:PORT/metrics.

    Each scrape takes one probe (scrapes are serialised; those closer than --min-interval
    share one), so a scrape lasts at most about --timeout seconds. Unknown figures are
    omitted, never 0. The watchdog's restarts and refusals (from MPSCTL_HOME's fix history)
    are counters. Runs until Ctrl-C (exit 130). Needs prometheus_client
    (pip install 'mpsctl[metrics]'). For cron instead: mpsctl probe --prometheus FILE.prom.
    --rules and --dashboard print the alert rules and the Grafana dashboard shipped with
    this version (see docs/fleet.md).

    \b
    Examples:
      mpsctl exporter
      mpsctl exporter --port 9808 --host 127.0.0.1
      mpsctl exporter --rules > /etc/prometheus/rules/mpsctl.yml
      mpsctl exporter --dashboard > mpsctl-dashboard.json
    """
    if show is not None:
        from mpsctl import contrib

        click.echo(contrib.read_text(contrib.RULES if show == "rules" else contrib.DASHBOARD),
                   nl=False)  # fmt: skip
        return
    settings = app.settings()
    if host not in ("127.0.0.1", "::1", "localhost"):
        app.warn(f"listening on {host}: anyone who can reach it sees host and service details")
    served = start_exporter(
        lambda: take_probe(settings, health_timeout=timeout),
        host,
        port,
        min_interval=min_interval,
        home=settings.home,
    )
    app.info(f"serving {served.url} (Ctrl-C to stop)")
    try:
        while served.thread.is_alive():
            time.sleep(0.5)
    finally:
        served.shutdown()
    raise click.ClickException("the metrics server stopped")
