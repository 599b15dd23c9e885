"""``mpsctl config show | init``."""

from __future__ import annotations

import shlex
from pathlib import Path

import click
from rich import box
from rich.table import Table

from mpsctl.cli.app import App, json_option
from mpsctl.cli.service_options import service_option
from mpsctl.errors import MpsctlError
from mpsctl.render.console import write_json
from mpsctl.service_env import shown_service_env
from mpsctl.settings import TEMPLATE, Settings
from mpsctl.settings_schema import SCHEMA
from mpsctl.storage import write_new_file


@click.group()
def config() -> None:
    """Show or create the settings file.

    \b
    Examples:
      mpsctl config show
      mpsctl config show --json | jq .values.memory
      mpsctl config init ./mpsctl.toml
    """


@config.command("show")
@json_option
@service_option
@click.pass_obj
def show(app: App, as_json: bool) -> None:
    """Print every effective setting and where it came from.

    Each key can also be set by the variable MPSCTL_<SECTION>_<KEY>, for example
    MPSCTL_SERVICE_URL or MPSCTL_MEMORY_HIGH_WATERMARK_RATIO.

    \b
    Examples:
      mpsctl config show
      MPSCTL_MEMORY_HIGH_WATERMARK_RATIO=0.6 mpsctl config show --json
      mpsctl config show -s chat     # one of several [services.NAME]
    """
    settings = app.settings()
    env, env_error = shown_service_env(settings)  # what the service will get from start
    if as_json:
        write_json(
            {
                "schema": "mpsctl.config/1",
                "config_file": str(settings.config_file) if settings.config_file else None,
                "home": str(settings.home),
                "reference_service": settings.reference_service,
                "values": settings.as_dict(),
                "sources": settings.sources,
                "service_env": env,
                "service_env_error": env_error,
            }
        )
        return
    where = str(settings.config_file) if settings.config_file else "none (built-in defaults)"
    app.out.print(_settings_table(settings, where))
    started = Table(
        title="The service's environment (what start gives it; secrets masked)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    started.add_column("variable", no_wrap=True)
    started.add_column("value", overflow="fold")
    if env_error:
        started.add_row("(cannot build)", env_error)
    for name, value in env.items():
        started.add_row(name, value)
    app.out.print(started)


def _short_source(source: str) -> str:
    """``file /long/path`` -> ``file`` (the path is in the title); ``env NAME`` -> ``env``."""
    for prefix in ("file ", "env "):
        if source.startswith(prefix):
            rest = source.split(" (", 1)
            return prefix.strip() + (f" ({rest[1]}" if len(rest) > 1 else "")
    return source.replace(" (the reference service, derived from service.url)", " (from url)")


def _settings_table(settings: Settings, where: str) -> Table:
    # fits 80 columns: keys under their [section], sources shortened (--json has them whole)
    table = Table(
        title=f"Settings file: {where}\nState (MPSCTL_HOME): {settings.home}",
        title_justify="left",
        caption="env = MPSCTL_<SECTION>_<KEY>; mpsctl config show --json has full sources",
        caption_justify="left",
        box=box.SIMPLE_HEAD,
    )
    table.add_column("key", no_wrap=True)
    table.add_column("value", overflow="fold")
    table.add_column("from", overflow="fold", max_width=24)
    values = settings.as_dict()
    for section, keys in SCHEMA.items():
        table.add_row(f"[{section}]", "", "", style="bold")
        for key in keys:
            value = values[section][key]
            if value is None:
                shown = "(unset)"
            elif isinstance(value, list):
                shown = shlex.join(str(v) for v in value) if key == "command" else str(value)
            else:
                shown = str(value)
            table.add_row(f"  {key}", shown, _short_source(settings.sources[f"{section}.{key}"]))
    return table


@config.command("init")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path), default="mpsctl.toml")
@click.option("--force", is_flag=True, help="Replace an existing file (a .bak copy is kept).")
@click.pass_obj
def init(app: App, path: Path, force: bool) -> None:
    """Write a commented settings template (never overwrites without --force).

    \b
    Examples:
      mpsctl config init                 # ./mpsctl.toml
      mpsctl config init ~/.config/mpsctl/mpsctl.toml
    """
    try:
        backup = write_new_file(path, TEMPLATE, force=force)
    except FileExistsError as exc:
        if exc.filename is None:  # write_new_file's own "the file is there"
            raise MpsctlError(f"{path} exists; use --force to replace it") from None
        # mkdir of the parent: a file stands where a directory should be
        raise MpsctlError(f"cannot write {path}: {exc.filename} is not a directory") from None
    except OSError as exc:
        raise MpsctlError(f"cannot write {path}: {exc.strerror or exc}") from None
    if backup is not None:
        app.info(f"previous file kept as {backup}")
    app.info(f"wrote {path}")
