"""``mpsctl serve`` (the reference service) and ``mpsctl demo-model``."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import click

from mpsctl.cli.app import App
from mpsctl.errors import ConfigError
from mpsctl.settings import DEVICES, DTYPES

DEMO_DIR_NAME = "demo-model"


@click.command()
@click.option("--host", default=None, help="Address to bind (default: host of service.url).")
@click.option("--port", type=int, default=None, help="Port (default: port of service.url).")
@click.option("--model", "model", default=None, help="Local checkpoint dir or hub id.")
@click.option("--demo", is_flag=True, help="Serve a random-weight demo model (answers are noise).")
@click.option("--device", type=click.Choice(DEVICES), default=None, help="Default: auto.")
@click.option("--dtype", type=click.Choice(DTYPES), default=None, help="Default: auto.")
@click.option("--max-new-tokens", type=int, default=None, help="Default tokens per answer.")
@click.option("--max-concurrent", type=int, default=None, help="Queries in flight (default 3).")
@click.option("--max-queue", type=int, default=None, help="Queries waiting for a slot.")
@click.option("--queue-timeout", type=float, default=None, help="Seconds a query may wait.")
@click.option(
    "--cleanup-interval", type=float, default=None, help="Seconds between releases (0: off)."
)
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
      mpsctl serve --demo                         # tiny random model, token in MPSCTL_HOME/token
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
        "memory.device": (opts["device"], "--device"),
        "service.token_env": (opts["token_env"], "--token-env"),
        "service.token_file": (opts["token_file"], "--token-file"),
    }
    settings = app.settings(overrides)

    from mpsctl.server import apply_mps_environment, environment_warnings, resolve_token

    for warning in environment_warnings():
        app.warn(warning)
    token_file = (
        Path(opts["token_file"]).expanduser() if opts["token_file"] else settings.service.token_file
    )
    token = resolve_token(
        token_env=settings.service.token_env,
        token_file=token_file,
        create_if_missing=settings.reference_service and not opts["token_file"],
        no_auth=opts["no_auth"],
    )
    for warning in token.warnings:
        app.warn(warning)
    if token.created is not None:
        app.info(f"created a token for this service: {token.created} (mode 0600)")
    if token.token is None:
        app.warn("authentication is off (--no-auth): anyone who can connect can query")

    host = opts["host"] or settings.service.host
    port = opts["port"] if opts["port"] is not None else settings.service.port
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port: must be 0-65535, got {port}")
    if host in ("0.0.0.0", "::", ""):
        app.warn(f"binding {host or '0.0.0.0'}: the service is reachable from other machines")

    model_id = settings.serve.model
    if opts["demo"]:
        if opts["model"]:
            raise ConfigError("--demo and --model are exclusive")
        model_id = None
    elif model_id is None:
        raise ConfigError("no model: pass --model PATH_OR_ID (or set [serve] model), or --demo")

    for note in apply_mps_environment(settings.memory):
        app.info(f"MPS allocator setting: {note}")

    _configure_logging()
    from mpsctl.server.demo import DEMO_LABEL, ensure_demo_checkpoint

    if model_id is None:
        demo_dir, built = ensure_demo_checkpoint(settings.home / DEMO_DIR_NAME)
        model_id = str(demo_dir)
        app.warn(f"{'built and ' if built else ''}serving the {DEMO_LABEL} from {demo_dir}")

    import uvicorn

    from mpsctl.server.app import ServiceConfig, create_service
    from mpsctl.server.model import ModelHolder

    holder = ModelHolder(
        device=settings.memory.device,
        dtype=settings.serve.dtype,
        max_new_tokens=settings.serve.max_new_tokens,
    )
    holder.load(model_id)
    service = create_service(
        holder,
        ServiceConfig(
            token=token.token,
            max_concurrent=settings.serve.max_concurrent,
            max_queue=settings.serve.max_queue,
            queue_timeout=settings.serve.queue_timeout,
            cleanup_interval=settings.serve.cleanup_interval,
            max_question_bytes=settings.serve.max_question_bytes,
            max_new_tokens_limit=settings.serve.max_new_tokens_limit,
        ),
    )
    app.info(
        f"serving {holder.label} on {holder.device} at http://{host}:{port} "
        f"(token: {token.source}; max {settings.serve.max_concurrent} in flight, "
        f"{settings.serve.max_queue} queued)"
    )
    config = uvicorn.Config(
        service.asgi,
        host=host,
        port=port,
        log_config=None,  # keep the one logging setup below; uvicorn's loggers propagate
        timeout_graceful_shutdown=10,
        lifespan="on",
    )
    uvicorn.Server(config).run()


class _QuietProbes(logging.Filter):
    """Drop successful access lines for /health and /metrics: a cron probe every minute
    would otherwise write 1,440 lines a day that bury the ones an operator looks for."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 5:  # uvicorn: client, method, path, ver, status
            path, status = str(args[2]), args[4]
            if path in ("/health", "/metrics") and status == 200:
                return False
        return True


def _configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from mpsctl.server.auth import RedactQueryTokens

    access = logging.getLogger("uvicorn.access")
    access.addFilter(_QuietProbes())
    access.addFilter(RedactQueryTokens())


@click.command("demo-model")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--size",
    type=click.Choice(["tiny", "0.5b"]),
    default="tiny",
    show_default=True,
    help="tiny: ~200 KB; 0.5b: Qwen2.5-0.5B's layer shapes (~1 GB, real memory pressure).",
)
@click.option("--force", is_flag=True, help="Write into a non-empty directory.")
@click.pass_obj
def demo_model(app: App, directory: Path, size: str, force: bool) -> None:
    """Write a random-weight Qwen2 checkpoint (offline; answers from it are noise).

    It loads with transformers' from_pretrained like any checkpoint, so it can stand in
    for a real model when testing an operator's service, memory limits or mpsctl itself.

    \b
    Examples:
      mpsctl demo-model ./tiny-qwen
      mpsctl demo-model ./qwen-0.5b-shaped --size 0.5b
      mpsctl serve --model ./tiny-qwen --device cpu --no-auth
    """
    from mpsctl.server.demo import build_demo_checkpoint

    path = build_demo_checkpoint(directory, size, force=force)
    click.echo(str(path))
    app.info(f"wrote a {size} random-weight checkpoint (answers are noise)")
