"""``mpsctl plan``: will this model fit, at this concurrency, on this machine."""

from __future__ import annotations

from dataclasses import replace
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
@click.option(
    "--working-set",
    metavar="SIZE",
    help="The Mac's recommendedMaxWorkingSetSize, when known (torch.mps.recommended_max_memory()).",
)
@click.option("--chip", metavar="NAME", help="Apple chip (m3, m1-max): its published reading.")
@click.option("--discrete-gpu", metavar="SIZE", help="An Intel Mac's GPU memory (e.g. 4GiB).")
@click.option("--gpu-memory", metavar="SIZE", help="CUDA: the GPU's memory (e.g. 80GiB).")
@click.option("--os-reserve", metavar="SIZE", help="RAM the OS keeps for itself (default 4GiB).")
@json_option
@click.pass_obj
def plan(app: App, model_dir: str | None, preset: str | None, dtype: str | None,
         max_concurrent: int | None, max_new_tokens: int | None, prompt_tokens: int,
         ram: str | None, device: str | None, high: float | None, low: float | None,
         working_set: str | None, chip: str | None, discrete_gpu: str | None,
         gpu_memory: str | None, os_reserve: str | None, as_json: bool) -> None:  # fmt: skip
    """Will the model fit at this concurrency? Weights, KV cache and peak per query,
    against the MPS limit (high ratio x recommended working set), the CUDA device or RAM.

    Two ceilings, always both: the allocator's (no out-of-memory error) and RAM less the
    OS's reserve (no swap); the load spike of a dtype conversion counts too. Never imports
    torch. Planning for this machine (no --ram) reads the running service's memory report
    when it answers. Exit 0 when the plan fits, 1 when it does not, 2 on bad input. Several
    services ([services.NAME]): each one's planned peak, their sum against the host's one
    ceiling (host.budget, else the device's), exit 1 over it.

    \b
    Examples:
      mpsctl plan --preset qwen2.5-7b --ram 16GiB --max-concurrent 4
      mpsctl plan --preset qwen2.5-3b --ram 16GiB --chip m3
      mpsctl plan --preset qwen2.5-72b --device cuda --gpu-memory 80GiB
      mpsctl plan --model ~/models/Qwen2.5-0.5B-Instruct --dtype float16
      mpsctl plan --json | jq .max_concurrent_that_fits
    """
    from mpsctl.plan import plan_for_settings
    from mpsctl.plan.limit import MacFacts
    from mpsctl.plan.plan import Target

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
    sizes = {flag: _size(flag, text) for flag, text in (
        ("--ram", ram), ("--working-set", working_set), ("--discrete-gpu", discrete_gpu),
        ("--gpu-memory", gpu_memory), ("--os-reserve", os_reserve))}  # fmt: skip
    if chip is not None and ram is None:
        raise MpsctlError("--chip: give --ram too (published readings are per RAM size)",
                          exit_code=ExitCode.USAGE)  # fmt: skip
    mac = MacFacts(working_set=sizes["--working-set"], chip=chip,
                   discrete_gpu=sizes["--discrete-gpu"])  # fmt: skip
    gpu = sizes["--gpu-memory"]
    target = Target(ram=sizes["--ram"], mac=mac, reserve=sizes["--os-reserve"],
                    gpu_memory=None if gpu is None else (gpu, "--gpu-memory"))  # fmt: skip
    report = None if target.other_machine or gpu is not None else _service_report(settings)
    if report is None and gpu is None and not target.other_machine:
        from mpsctl.observe.accelerator import nvml_total_bytes

        total = nvml_total_bytes()
        if total is not None:  # this machine's GPU, when no service reports its limit
            target = replace(target, gpu_memory=(total, "NVML: GPU 0's total memory"))
    source = click.get_current_context().get_parameter_source("prompt_tokens")
    result = plan_for_settings(
        settings, report, model_dir=model_dir, preset=preset, prompt_tokens=prompt_tokens,
        target=target, prompt_source="default" if source is None or source.name == "DEFAULT"
        else "flag --prompt-tokens",
    )  # fmt: skip
    from mpsctl.plan.plan import positions_problem

    problem = positions_problem(result)
    if problem is not None:  # not a memory question: the model cannot take these tokens
        raise MpsctlError(problem, exit_code=ExitCode.USAGE)
    if as_json:
        write_json(result.to_json())
    else:
        from mpsctl.render.plan import print_plan

        print_plan(app.out, result)
    raise click.exceptions.Exit(ExitCode.OK if result.fits else ExitCode.FAILURE)


def _size(flag: str, text: str | None) -> int | None:
    from mpsctl.plan.limit import parse_size

    try:
        return None if text is None else parse_size(text)
    except ValueError as exc:
        raise MpsctlError(f"{flag}: {exc}", exit_code=ExitCode.USAGE) from None


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
