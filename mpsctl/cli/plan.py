"""``mpsctl plan``: will this model fit, at this concurrency, on this machine."""

from __future__ import annotations

from typing import Any

import click

from mpsctl.cli.app import App, json_option
from mpsctl.errors import ExitCode, MpsctlError
from mpsctl.plan.plan import DEFAULT_PROMPT_TOKENS
from mpsctl.plan.presets import PRESETS
from mpsctl.render.console import write_json

DTYPES = ("float16", "bfloat16", "float32")


@click.command()
@click.option(
    "--model",
    "model_dir",
    metavar="DIR",
    help="Model directory: config.json and safetensors headers (default serve.model).",
)
@click.option(
    "--preset",
    type=click.Choice(list(PRESETS), case_sensitive=False),
    help="A published Qwen2.5 architecture (no download).",
)
@click.option("--dtype", type=click.Choice(DTYPES), help="Weights dtype (default serve.dtype).")
@click.option(
    "--max-concurrent",
    type=click.IntRange(1, 4096),
    metavar="N",
    help="Queries in flight (default serve.max_concurrent).",
)
@click.option(
    "--max-new-tokens",
    type=click.IntRange(1),
    metavar="N",
    help="Tokens generated per query (default serve.max_new_tokens).",
)
@click.option(
    "--prompt-tokens",
    type=click.IntRange(1),
    default=DEFAULT_PROMPT_TOKENS,
    show_default=True,
    metavar="N",
    help="Prompt length in tokens, chat template included.",
)
@click.option(
    "--ram",
    metavar="SIZE",
    help="Plan for a machine with this RAM (16GiB; GB means GiB); default this one.",
)
@click.option(
    "--device",
    type=click.Choice(("mps", "cuda", "cpu")),
    help="Backend to plan for (default memory.device; auto: this machine's).",
)
@click.option("--high", type=float, metavar="R", help="MPS high watermark ratio.")
@click.option("--low", type=float, metavar="R", help="MPS low watermark ratio.")
@json_option
@click.pass_obj
def plan(app: App, model_dir: str | None, preset: str | None, dtype: str | None,
         max_concurrent: int | None, max_new_tokens: int | None, prompt_tokens: int,
         ram: str | None, device: str | None, high: float | None, low: float | None,
         as_json: bool) -> None:  # fmt: skip
    """Will the model fit at this concurrency? Weights, KV cache and peak per query,
    against the MPS limit (high ratio x recommended working set), the CUDA device or RAM.

    Never imports torch. Planning for this machine (no --ram) reads the running service's
    memory report when it answers. Exit 0 when the plan fits, 1 when it does not, 2 on
    bad input. Several services ([services.NAME]): each one's planned peak, their sum
    against the host's one ceiling (host.budget, else the device's), exit 1 over it.

    \b
    Examples:
      mpsctl plan --preset qwen2.5-7b --ram 16GiB --max-concurrent 4
      mpsctl plan --model ~/models/Qwen2.5-0.5B-Instruct --dtype float16
      mpsctl plan --json | jq .max_concurrent_that_fits
    """
    from mpsctl.plan import plan_for_settings
    from mpsctl.plan.limit import parse_size

    overrides: dict[str, tuple[Any, str]] = {
        "serve.dtype": (dtype, "--dtype"),
        "serve.max_concurrent": (max_concurrent, "--max-concurrent"),
        "serve.max_new_tokens": (max_new_tokens, "--max-new-tokens"),
        "memory.device": (device, "--device"),
        "memory.high_watermark_ratio": (high, "--high"),
        "memory.low_watermark_ratio": (low, "--low"),
    }
    host = app.host_settings(overrides)
    if host.members and model_dir is None and preset is None:
        from mpsctl.cli.plan_host import plan_services

        plan_services(app, host, ram, as_json)
    settings = app.settings(overrides)
    try:
        ram_bytes = None if ram is None else parse_size(ram)
    except ValueError as exc:
        raise MpsctlError(f"--ram: {exc}", exit_code=ExitCode.USAGE) from None
    report = None if ram is not None else _service_report(settings)
    result = plan_for_settings(settings, report, model_dir=model_dir, preset=preset,
                               prompt_tokens=prompt_tokens, ram=ram_bytes)  # fmt: skip
    if as_json:
        write_json(result.to_json())
    else:
        from mpsctl.render.plan import print_plan

        print_plan(app.out, result)
    raise click.exceptions.Exit(ExitCode.OK if result.fits else ExitCode.FAILURE)


def _service_report(settings: Any) -> dict[str, Any] | None:
    """The running service's memory report, or None when nothing answers quickly."""
    from mpsctl.client import ServiceClient

    client = ServiceClient(settings.service)
    try:
        body = client.health(timeout=2.0).body
    finally:
        client.close()
    memory = body.get("memory") if isinstance(body, dict) else None
    return memory if isinstance(memory, dict) else None
