"""``mpsctl clean-cache``: Python bytecode caches, and the service's accelerator cache."""

from __future__ import annotations

import click

from mpsctl.cli.app import App, json_option
from mpsctl.control.cache import clean_cache as clean_cache_run
from mpsctl.render.console import write_json
from mpsctl.render.lifecycle import render_clean_cache


@click.command("clean-cache")
@click.option("--include-venv", is_flag=True, help="Clean inside virtualenvs too.")
@click.option("--dry-run", is_flag=True, help="Count what would be removed; remove nothing.")
@json_option
@click.pass_obj
def clean_cache(app: App, include_venv: bool, dry_run: bool, as_json: bool) -> None:
    """Remove __pycache__ dirs and *.pyc under service.workdir; release the service's cache.

    Symlinks are never followed and the walk never leaves the workdir. When the service is
    up it is also asked to release cached accelerator memory (POST service.release_path),
    with accelerator and RSS figures before and after. Bytecode files hold disk, not
    memory: the release is the part that frees memory.

    \b
    Examples:
      mpsctl clean-cache --dry-run
      mpsctl clean-cache
      mpsctl clean-cache --include-venv --json
    """
    result = clean_cache_run(app.settings(), include_venv=include_venv, dry_run=dry_run)
    if as_json:
        write_json(result.to_json())
    else:
        render_clean_cache(app.out, result)
