"""``mpsctl serve`` (the reference service) and ``mpsctl demo-model``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from mpsctl.cli.app import App
from mpsctl.settings_schema import DEVICES, DTYPES


@click.command()
@click.option("--host", default=None, help="Address to bind (default: host of service.url).")
@click.option("--port", type=int, default=None, help="Port (default: port of service.url).")
@click.option("--model", "model", default=None, help="Local checkpoint dir or hub id.")
@click.option("--demo", is_flag=True, help="Serve the built-in tiny demo model (offline).")
@click.option("--device", type=click.Choice(DEVICES), default=None, help="Default: auto.")
@click.option("--dtype", type=click.Choice(DTYPES), default=None, help="Default: auto.")
@click.option("--max-new-tokens", type=int, default=None, help="Default tokens per answer.")
@click.option("--max-concurrent", type=int, default=None, help="Queries in flight (default 3).")
@click.option("--max-queue", type=int, default=None, help="Queries waiting for a slot.")
@click.option("--queue-timeout", type=float, default=None, help="Seconds a query may wait.")
@click.option(
    "--cleanup-interval", type=float, default=None, help="Seconds between releases (0: off)."
)
@click.option(
    "--memory-limit", default=None, metavar="SIZE",
    help="Cap the address space once the model is loaded (8GiB): OOM -> 503, not a kill.",
)  # fmt: skip
@click.option("--token-env", default=None, help="Variable holding the bearer token.")
@click.option("--token-file", default=None, help="File holding the bearer token.")
@click.option("--no-auth", is_flag=True, help="Serve without a token (loopback testing only).")
@click.pass_obj
def serve(app: App, **opts: Any) -> None:
    """Run the reference service in the foreground (FastAPI + uvicorn, one process).

    Loads the model, then answers GET /health, POST /api/v1/query, POST /admin/release,
    POST /admin/reload and GET /metrics. Binds 127.0.0.1 unless told otherwise.
    Stop it with Ctrl-C or SIGTERM; `mpsctl start` runs it in the background.

    \b
    Examples:
      mpsctl serve --demo                         # tiny demo model, token in MPSCTL_HOME/token
      mpsctl serve --model Qwen/Qwen2.5-0.5B-Instruct --device mps --max-concurrent 2
      MPSCTL_TOKEN=s3cret mpsctl serve --model ./qwen --device cpu --port 8001
    """
    overrides = {
        "serve.model": (opts["model"], "--model"),
        "serve.dtype": (opts["dtype"], "--dtype"),
        "serve.max_new_tokens": (opts["max_new_tokens"], "--max-new-tokens"),
        "serve.max_concurrent": (opts["max_concurrent"], "--max-concurrent"),
        "serve.max_queue": (opts["max_queue"], "--max-queue"),
        "serve.queue_timeout": (opts["queue_timeout"], "--queue-timeout"),
        "serve.cleanup_interval": (opts["cleanup_interval"], "--cleanup-interval"),
        "serve.memory_limit": (opts["memory_limit"], "--memory-limit"),
        "memory.device": (opts["device"], "--device"),
        "service.token_env": (opts["token_env"], "--token-env"),
        "service.token_file": (opts["token_file"], "--token-file"),
    }
    settings = app.settings(overrides)

    from mpsctl.server.serve import ServeOptions, run

    run(
        settings,
        ServeOptions(
            host=opts["host"],
            port=opts["port"],
            demo=opts["demo"],
            model_given=bool(opts["model"]),
            token_file=Path(opts["token_file"]).expanduser() if opts["token_file"] else None,
            no_auth=opts["no_auth"],
        ),
        app,
    )


@click.command("demo-model")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--size",
    type=click.Choice(["tiny", "0.5b"]),
    default="tiny",
    show_default=True,
    help="tiny: ~500 KB, trained for a few seconds on built-in questions; "
    "0.5b: Qwen2.5-0.5B's layer shapes, random weights (~1 GB, real memory pressure).",
)
@click.option("--force", is_flag=True, help="Write into a non-empty directory.")
@click.pass_obj
def demo_model(app: App, directory: Path, size: str, force: bool) -> None:
    """Write a demo Qwen2 checkpoint offline (tiny: trained on built-in questions; 0.5b: noise).

    It loads with transformers' from_pretrained like any checkpoint, so it can stand in
    for a real model when testing an operator's service, memory limits or mpsctl itself.

    \b
    Examples:
      mpsctl demo-model ./tiny-qwen
      mpsctl demo-model ./qwen-0.5b-shaped --size 0.5b
      mpsctl serve --model ./tiny-qwen --device cpu --no-auth
    """
    from mpsctl.server.demo import build_demo_checkpoint, demo_label

    path = build_demo_checkpoint(directory, size, force=force)
    click.echo(str(path))
    app.info(f"wrote a {size} checkpoint: {demo_label(path)}")
