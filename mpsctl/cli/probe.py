"""``mpsctl probe``: one look, a verdict, a cron-friendly exit code."""

from __future__ import annotations

import click

from mpsctl.cli.app import App, json_option
from mpsctl.observe.probe import take_probe
from mpsctl.render.console import write_json
from mpsctl.render.probe import nagios_line, print_probe

PAIR = "WARN,CRIT"


@click.command()
@json_option
@click.option("--nagios", is_flag=True, help="One monitoring-plugin line with perfdata.")
@click.option("--host-used", metavar=PAIR, help="Host memory used %% thresholds.")
@click.option("--service-gib", metavar=PAIR, help="Service memory (GiB) thresholds.")
@click.option("--accel-percent", metavar=PAIR, help="Accelerator %% of its limit thresholds.")
@click.option("--swap-used", metavar=PAIR, help="Swap used %% thresholds.")
@click.option("--timeout", default=3.0, show_default=True, type=click.FloatRange(0.1, 60),
              help="Seconds for the health request.")  # fmt: skip
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
) -> None:
    """Host memory, the service's processes, its accelerator figures, health, a verdict.

    Exit codes follow the monitoring-plugin convention: 0 OK, 1 WARNING, 2 CRITICAL,
    3 UNKNOWN. A stopped service is CRITICAL, with the reason. Never imports torch.

    \b
    Examples:
      mpsctl probe
      mpsctl probe --json | jq .verdict
      mpsctl probe --nagios --host-used 80,90
    """
    settings = app.settings(
        {
            "thresholds.host_used_percent": (host_used, "--host-used"),
            "thresholds.service_memory_gib": (service_gib, "--service-gib"),
            "thresholds.accelerator_limit_percent": (accel_percent, "--accel-percent"),
            "thresholds.swap_used_percent": (swap_used, "--swap-used"),
        }
    )
    result = take_probe(settings, health_timeout=timeout)
    if as_json:
        write_json(result.to_json())
    elif nagios:
        click.echo(nagios_line(result))
    else:
        print_probe(app.out, result)
    raise click.exceptions.Exit(int(result.verdict))
