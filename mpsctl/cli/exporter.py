"""``mpsctl exporter``: the probe's gauges on a Prometheus /metrics endpoint."""

from __future__ import annotations

import time
from functools import partial
from urllib.parse import urlsplit

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
@click.option(
    "--alertmanager",
    "show",
    flag_value="alertmanager",
    help="Print an Alertmanager configuration (route, receiver, inhibit rules), then exit.",
)
@click.option(
    "--scrape-config",
    "show",
    flag_value="scrape",
    help="Print the Prometheus scrape jobs for this exporter (and the service), then exit.",
)
@click.option(
    "--webhook-url",
    default="http://127.0.0.1:9095/mpsctl",
    show_default=True,
    metavar="URL",
    help="With --alertmanager: where the receiver posts the alerts.",
)
@click.option(
    "--time-scale",
    default=1.0,
    type=click.FloatRange(0, 1, min_open=True),
    metavar="F",
    help="With --rules, --alertmanager, --scrape-config: multiply every duration by F "
    "(tests, demos).",
)
@click.option(
    "--runbook-base",
    metavar="URL",
    help="With --rules: put URL (where this version's docs/ folder is published, e.g. "
    "https://git.example.com/mpsctl/blob/v1.0/) in front of every runbook_url.",
)
@click.pass_obj
def exporter(
    app: App,
    port: int,
    host: str,
    timeout: float,
    min_interval: float,
    show: str | None,
    webhook_url: str,
    time_scale: float,
    runbook_base: str | None,
) -> None:
    """Serve the probe's figures as Prometheus gauges on http://HOST:PORT/metrics.

    Each scrape takes one probe (scrapes are serialised; those closer than --min-interval
    share one), so a scrape lasts at most about --timeout seconds. Unknown figures are
    omitted, never 0. The watchdog's restarts and refusals (from MPSCTL_HOME's fix history)
    are counters. Runs until Ctrl-C (exit 130). Needs prometheus_client
    (pip install 'mpsctl[metrics]'). For cron instead: mpsctl probe --prometheus FILE.prom.
    --rules and --dashboard print the alert rules and the Grafana dashboard shipped with
    this version; --alertmanager and --scrape-config what Alertmanager and Prometheus need
    beside them (see docs/fleet.md). With several services ([services.NAME]) every scrape
    serves each one's gauges, labelled service="NAME".

    \b
    Examples:
      mpsctl exporter
      mpsctl exporter --port 9808 --host 127.0.0.1
      mpsctl exporter --rules > /etc/prometheus/rules/mpsctl.yml
      mpsctl exporter --dashboard > mpsctl-dashboard.json
      mpsctl exporter --alertmanager --webhook-url https://hooks.example.com/am
      mpsctl exporter --scrape-config --host 10.0.0.11
      mpsctl exporter --rules --time-scale 0.05   # the same rules, 20x faster
      mpsctl exporter --rules --runbook-base https://git.example.com/mpsctl/blob/v1.0/
    """
    if show is not None:
        text = _config_text(app, show, host, port, webhook_url, time_scale, runbook_base)
        click.echo(text, nl=False)
        return
    every = app.services()
    if host not in ("127.0.0.1", "::1", "localhost"):
        app.warn(f"listening on {host}: anyone who can reach it sees host and service details")
    if len(every) > 1:
        from mpsctl.monitor.prometheus import start_services_exporter

        served = start_services_exporter(
            [(partial(take_probe, s.settings, health_timeout=timeout), s.state_dir)
             for s in every],
            host, port, min_interval=min_interval,
        )  # fmt: skip
    else:
        settings = every[0].settings
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


def _config_text(
    app: App,
    show: str,
    host: str,
    port: int,
    webhook_url: str,
    time_scale: float,
    runbook_base: str | None,
) -> str:
    from mpsctl import contrib
    from mpsctl.monitor import prom_config

    if show == "rules":
        return prom_config.rules_text(time_scale, runbook_base)
    if show == "dashboard":
        return contrib.read_text(contrib.DASHBOARD)
    if show == "alertmanager":
        return prom_config.alertmanager_config(webhook_url, time_scale)
    from mpsctl.service import services as configured

    shown = f"[{host}]" if ":" in host else host
    # the reference service serves its own /metrics: every configured one that runs it
    targets = [
        urlsplit(s.settings.service.url).netloc
        for s in configured(app.host_settings())
        if prom_config.serves_metrics(s.settings.reference_service, s.settings.service.command)
    ]
    return prom_config.scrape_config([f"{shown}:{port}"], targets, time_scale)
