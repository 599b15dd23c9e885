"""``mpsctl probe`` with several services: each one's probe, then the host's sum."""

from __future__ import annotations

from pathlib import Path

import click

from mpsctl.cli.app import App
from mpsctl.host_probe import host_probe
from mpsctl.probe import take_probe
from mpsctl.render.console import write_json
from mpsctl.service import services
from mpsctl.settings import Settings


def probe_services(
    app: App,
    host: Settings,
    *,
    as_json: bool,
    nagios: bool,
    timeout: float,
    record_history: bool,
    alert_url: str | None,
    alert_cmd: str | None,
    prometheus: Path | None,
) -> None:
    """Probe every service, print the host view, exit with its verdict. History and
    alerts stay per service (each under its own state directory); the textfile holds
    every service's gauges, labelled ``service="NAME"``."""
    every = services(host)
    results = [take_probe(s.settings, health_timeout=timeout) for s in every]
    view = host_probe(results, host.thresholds)
    if as_json:
        write_json(view.to_json())
    elif nagios:
        summary = "; ".join(view.reasons) or f"{len(results)} services OK"
        blame = f" (look at {view.blame})" if view.blame else ""
        click.echo(f"MPSCTL {view.verdict.name} - {summary.replace('|', '/')}{blame}")
    else:
        from mpsctl.render.probe import print_host_probe

        print_host_probe(app.out, view)
    for service, result in zip(every, results, strict=True):
        settings = service.settings
        url, cmd = alert_url or settings.alerts.url, alert_cmd or settings.alerts.command
        if record_history or url or cmd:
            from mpsctl.monitor import after_probe

            after_probe(settings, result, record_history=record_history, alert_url=alert_url,
                        alert_cmd=alert_cmd, prometheus=None, warn=app.warn)  # fmt: skip
    if prometheus is not None:
        from mpsctl.errors import MpsctlError
        from mpsctl.monitor.prometheus import write_services_textfile

        try:
            write_services_textfile(prometheus, results)
        except MpsctlError as exc:
            app.warn(f"--prometheus: {exc}")
    raise click.exceptions.Exit(int(view.verdict))
