"""``mpsctl oom``: find out-of-memory events in the logs and explain each one."""

from __future__ import annotations

from pathlib import Path

import click

from mpsctl.cli.app import App, json_option
from mpsctl.cli.params import DURATION
from mpsctl.cli.service_options import service_option
from mpsctl.deaths.counting import Found
from mpsctl.deaths.scanner import find_events
from mpsctl.durations import Period
from mpsctl.errors import MpsctlError
from mpsctl.observe.logfiles import resolve_logs
from mpsctl.render.console import write_json
from mpsctl.torch_env import DEFAULT_HIGH_RATIO, HIGH_ENV, MAX_RATIO


@click.command()
@click.argument("files", nargs=-1, type=click.Path(path_type=Path))
@click.option("--since", type=DURATION, metavar="DURATION",
              help="Only events newer than this (24h, 7d).")  # fmt: skip
@click.option("--high-ratio", type=click.FloatRange(0.0, MAX_RATIO), metavar="R",
              help=f"{HIGH_ENV} the service ran with (default: memory.high_watermark_ratio "
                   f"when configured, else {DEFAULT_HIGH_RATIO:g}).")  # fmt: skip
@click.option("--all", "everyone", is_flag=True,
              help="Also list other processes' kills from the OS logs (labelled).")  # fmt: skip
@json_option
@service_option
@click.pass_obj
def oom(
    app: App,
    files: tuple[Path, ...],
    since: Period | None,
    high_ratio: float | None,
    everyone: bool,
    as_json: bool,
) -> None:
    """Find memory failures in the service's logs (or FILES) and explain each.

    Scans service.log_file (and its rotated copies) and every file matching
    service.log_globs, dated names included. Recognises every MPS and CUDA out-of-memory
    wording exact to the byte, and every other memory death: the kernel OOM killer,
    systemd-oomd, macOS jetsam (log lines and JetsamEvent .ips reports), gunicorn workers
    killed by SIGKILL, PyTorch's CPU allocator, CUDA runtime errors and MPS array limits.
    One failure logged several times (message and traceback, several files) is one event.
    Without FILES it also reads the kernel log / jetsam reports for kills of the service,
    where readable (oom.system_logs): a kill of its pid (this run or a recorded earlier one),
    or of its process name while a run of it was alive; --all lists the others too, labelled.
    Exit 0 when the scan ran, events or not; 1 when a FILE is missing.

    \b
    Examples:
      mpsctl oom --since 24h
      mpsctl oom mvp/logs/error_2026-01-21.log
      mpsctl oom --json | jq '.events[] | .max_allowed_bytes'
      mpsctl oom -s chat --since 24h   # one of several services
    """
    targets: list[tuple[str, Path]] = []
    for path in files:
        if path.is_dir():
            raise MpsctlError(f"{path}: is a directory (give log files, or no FILES)")
        if not path.is_file():
            raise MpsctlError(
                f"{path}: " + ("not a regular file" if path.exists() else "no such file")
            )
        targets.append((str(path), path))
    plan = None
    if high_ratio is None or not files:
        settings = app.settings()
        if high_ratio is None and settings.sources["memory.high_watermark_ratio"] != "default":
            high_ratio = settings.memory.high_watermark_ratio
        if not files:
            for source in resolve_logs(settings, newest_only=False):
                if source.path is None or not source.path.is_file():
                    app.warn(f"{source.path or source.pattern}: no such file")
                else:
                    targets.append((str(source.path), source.path))
            # the configured service's own logs: its memory plan explains its events
            from mpsctl.plan.configured import configured_plan, saved_report

            plan = configured_plan(settings, saved_report(settings)).plan
    kills: list[Found] = []
    places: list[str] = []
    if not files:
        from mpsctl.deaths.how_it_died import service_kills

        kills, places = service_kills(settings, since.before() if since else None, others=everyone)
    try:
        report = find_events(
            targets, since.before() if since else None, high_ratio=high_ratio, ram_bytes=_ram(),
            extra=kills, system_logs=places, plan=plan,
            # another machine's log is not compared with this machine's RAM
            recorded_here=not files,
        )  # fmt: skip
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        raise MpsctlError(f"{where}{exc.strerror or exc}") from None
    if as_json:
        write_json(report.to_json())
        return
    from mpsctl.render.oom import print_events

    print_events(app.out, list(report.events), len(targets), since.text if since else None)


def _ram() -> int | None:
    """This machine's RAM, for the kernel kills' figures (None when it cannot be read)."""
    try:
        from mpsctl.observe.ram import ram_bytes

        return ram_bytes()
    except Exception:  # advice without the machine's figure is still advice
        return None
