"""``mpsctl probe``: one look, a verdict, a cron-friendly exit code."""

from __future__ import annotations

from pathlib import Path

import click

from mpsctl.cli.app import App, ConventionCommand, json_option
from mpsctl.errors import MpsctlError, ProbeExit
from mpsctl.probe import take_probe
from mpsctl.render.console import printable, write_json

PAIR = "WARN,CRIT"


def unknown_document(message: str) -> dict[str, object]:
    """The ``mpsctl.probe/1`` document of a probe that could not run: UNKNOWN, with why."""
    return {"schema": "mpsctl.probe/1", "verdict": "UNKNOWN",
            "exit_code": int(ProbeExit.UNKNOWN), "reasons": [f"UNKNOWN: {message}"]}  # fmt: skip


# monitoring-plugin convention: a bad option or config is UNKNOWN (3), never CRITICAL (2)
@click.command(cls=ConventionCommand, failure_exit_code=int(ProbeExit.UNKNOWN))
@json_option
@click.option("--nagios", is_flag=True, help="One monitoring-plugin line with perfdata.")
@click.option("--host-used", metavar=PAIR, help="Host memory used % thresholds.")
@click.option("--service-gib", metavar=PAIR, help="Service memory (GiB) thresholds.")
@click.option("--accel-percent", metavar=PAIR, help="Accelerator % of its limit thresholds.")
@click.option("--swap-used", metavar=PAIR, help="Swap used % thresholds.")
@click.option("--timeout", default=3.0, show_default=True, type=click.FloatRange(0.1, 60),
              help="Seconds for the health request.")  # fmt: skip
@click.option("--record", "record_history", is_flag=True,
              help="Append this probe to the history (mpsctl report reads it).")  # fmt: skip
@click.option("--alert-url", metavar="URL",
              help="POST a JSON alert on a verdict change (default alerts.url).")  # fmt: skip
@click.option("--alert-cmd", metavar="CMD",
              help="Run CMD with the alert JSON on stdin (default alerts.command).")  # fmt: skip
@click.option("--prometheus", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Write the gauges to FILE (.prom) for a textfile collector.")  # fmt: skip
@click.pass_obj
def probe(
    app: App,
    as_json: bool,
    nagios: bool,
    host_used: str | None,
    service_gib: str | None,
    accel_percent: str | None,
    swap_used: str | None,
    timeout: float,
    record_history: bool,
    alert_url: str | None,
    alert_cmd: str | None,
    prometheus: Path | None,
) -> None:
    """Host memory, the service's processes, its accelerator figures, health, a verdict.

    Exit codes follow the monitoring-plugin convention: 0 OK, 1 WARNING, 2 CRITICAL,
    3 UNKNOWN. A stopped service is CRITICAL, with the reason. Never imports torch.
    Several services ([services.NAME]): each one's probe, then their sum against RAM and
    the accelerator's one limit; the verdict is the worst and names the service to blame.
    --record, alerts (sent once per verdict change, plus a recovery notice) and
    --prometheus never change the exit code: their failures are warnings on stderr.

    \b
    Examples:
      mpsctl probe
      mpsctl probe --json | jq .verdict
      mpsctl probe --nagios --host-used 80,90
      mpsctl probe --record --alert-url https://hooks.example.com/mpsctl
    """
    overrides = {
        "thresholds.host_used_percent": (host_used, "--host-used"),
        "thresholds.service_memory_gib": (service_gib, "--service-gib"),
        "thresholds.accelerator_limit_percent": (accel_percent, "--accel-percent"),
        "thresholds.swap_used_percent": (swap_used, "--swap-used"),
    }
    try:
        host = app.host_settings(overrides)
        if host.members:
            from mpsctl.cli.probe_host import probe_services

            probe_services(app, host, as_json=as_json, nagios=nagios, timeout=timeout,
                           record_history=record_history, alert_url=alert_url,
                           alert_cmd=alert_cmd, prometheus=prometheus)  # fmt: skip
        settings = app.settings(overrides)
    except MpsctlError as exc:
        # A monitoring system still gets its document: UNKNOWN, with the reason (under
        # --nagios the CLI's failure path prints the UNKNOWN line, for click's errors too).
        if as_json:
            write_json(unknown_document(str(exc)))
        raise
    result = take_probe(settings, health_timeout=timeout)
    # a cron probe runs every minute: import tables and the monitoring code only when used
    if as_json:
        write_json(result.to_json())
    elif nagios:
        from mpsctl.render.nagios import nagios_line

        # a plugin line is read by Nagios and by people: no control character in either
        click.echo(printable(nagios_line(result)))
    else:
        from mpsctl.render.probe import print_probe

        print_probe(app.out, result)
    alerts = alert_url or alert_cmd or settings.alerts.url or settings.alerts.command
    if record_history or prometheus is not None or alerts:
        from mpsctl.monitor import after_probe

        # after the output: an unreachable alert target may take seconds
        after_probe(settings, result, record_history=record_history, alert_url=alert_url,
                    alert_cmd=alert_cmd, prometheus=prometheus, warn=app.warn)  # fmt: skip
    raise click.exceptions.Exit(int(result.verdict))
