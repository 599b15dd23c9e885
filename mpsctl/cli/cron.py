"""``mpsctl cron``: print the crontab block (or launchd plists) that runs mpsctl unattended."""

from __future__ import annotations

from pathlib import Path

import click

from mpsctl.cli.app import App
from mpsctl.monitor.cron import (
    build_schedule,
    crontab_text,
    launchd_path,
    launchd_plist,
    prepare_home,
)


@click.command()
@click.option("--launchd", is_flag=True, help="Print launchd plists (macOS) instead of crontab.")
@click.option(
    "--job",
    type=click.Choice(["probe", "fix"]),
    help="With --launchd: print only this job's plist (a file of its own).",
)
@click.option("--alert-url", metavar="URL", help="Add --alert-url URL to the probe job.")
@click.option("--alert-cmd", metavar="CMD", help="Add --alert-cmd CMD to the probe job.")
@click.option(
    "--prometheus",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="Add --prometheus FILE (a textfile-collector .prom file) to the probe job.",
)
@click.option(
    "--fix-every",
    default=5,
    show_default=True,
    type=click.IntRange(1, 59),
    metavar="MINUTES",
    help="Minutes between watchdog runs.",
)
@click.pass_obj
def cron(
    app: App,
    launchd: bool,
    job: str | None,
    alert_url: str | None,
    alert_cmd: str | None,
    prometheus: Path | None,
    fix_every: int,
) -> None:
    """Print the schedule: probe --record (and alerts) every minute, fix --if-unhealthy.

    Prints, never installs. Paths are absolute (this Python with -m mpsctl, the settings
    file, MPSCTL_HOME) and this shell's MPSCTL_* settings are carried, since cron starts
    with a bare environment; the token is never printed. fix exits 75 when another mpsctl
    run holds the lock: the line treats that as success. Errors go to MPSCTL_HOME/cron.log
    (MPSCTL_HOME is created now if missing: the shell opens that log before mpsctl runs).

    \b
    Examples:
      mpsctl cron                      # then: crontab -e, paste
      mpsctl cron --alert-url https://hooks.example.com/mpsctl
      mpsctl cron --launchd --job probe > ~/Library/LaunchAgents/io.github.mpsctl.probe.plist
    """
    if job is not None and not launchd:
        raise click.UsageError("--job goes with --launchd")
    schedule = build_schedule(
        app.settings(),
        alert_url=alert_url,
        alert_cmd=alert_cmd,
        prometheus=prometheus,
        fix_minutes=fix_every,
    )
    for note in schedule.notes:
        app.info(note)
    prepare_home(schedule)
    if not launchd:
        click.echo(crontab_text(schedule), nl=False)
        return
    jobs = [j for j in schedule.jobs if job is None or j.name == job]
    for number, item in enumerate(jobs):
        if job is None:
            click.echo(
                ("\n" if number else "") + f"# save as {launchd_path(item)}, then: "
                f"launchctl load {launchd_path(item)}"
            )
        click.echo(launchd_plist(schedule, item), nl=False)
