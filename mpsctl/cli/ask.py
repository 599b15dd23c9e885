"""``mpsctl ask``: one question, a stress run (-n/-c/--duration) or a concurrency sweep."""

from __future__ import annotations

import sys
from typing import Any

import click

from mpsctl import ask as ask_lib
from mpsctl import stress
from mpsctl.cli.app import App, json_option
from mpsctl.cli.params import DURATION
from mpsctl.cli.service_options import service_option
from mpsctl.client import checked_token, read_token
from mpsctl.render import ask as render
from mpsctl.render.console import write_json
from mpsctl.stress_results import stress_exit


def _parsed(parse: Any) -> Any:
    def callback(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
        try:
            return None if value is None else parse(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None

    return callback


@click.command()
@click.argument("question", required=False)
@click.option("--max-new-tokens", type=click.IntRange(1), help="Tokens to generate at most.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), help="Seconds per answer.")
@click.option(
    "-n",
    "--requests",
    type=click.IntRange(1, stress.MAX_REQUESTS),
    help="Stress: requests in all (default 100).",
)
@click.option(
    "-c",
    "--concurrency",
    type=click.IntRange(1, stress.MAX_CONCURRENCY),
    help="Stress: requests in flight.",
)
@click.option(
    "--duration",
    type=DURATION,
    metavar="DURATION",
    help="Stress: run this long (<= 1h).",
)
@click.option(
    "--questions",
    type=click.Path(exists=True, dir_okay=False),
    help="Stress: one question per line.",
)
@click.option(
    "--sweep",
    metavar="LIST",
    callback=_parsed(stress.parse_levels),
    help="Stress at each concurrency: 1,2,4,8.",
)
@click.option("--token-env", metavar="NAME", help="Variable holding the token.")
@click.option(
    "--token-file", type=click.Path(exists=True, dir_okay=False), help="File holding the token."
)
@click.option(
    "--token", "token_flag", metavar="TOKEN", help="The token itself (visible in `ps`: avoid)."
)
@json_option
@service_option
@click.pass_obj
def ask(app: App, question: str | None, **opts: Any) -> None:
    """Ask the service QUESTION (- reads stdin), or measure it under load.

    Exit codes: 0 answered, 1 failure, 2 usage, 3 no service, 4 token rejected,
    5 busy or out of memory (503), 6 timeout, 7 answer not JSON, 8 server error (5xx), 130 Ctrl-C.

    \b
    Examples:
      mpsctl ask "工商银行"
      echo "工商银行" | mpsctl ask - --json
      mpsctl ask "工商银行" -n 200 -c 8          # stress: latency, errors, memory
      mpsctl ask --questions qs.txt --duration 5m -c 4 --json
      mpsctl ask "工商银行" -n 50 --sweep 1,2,4,8  # what max_concurrent is safe?
      mpsctl ask -s chat "工商银行"               # one of several services
    """
    settings = app.settings({"service.request_timeout": (opts["timeout"], "--timeout")})
    if opts["token_flag"]:
        app.warn("--token is visible to other users in `ps`; prefer $MPSCTL_TOKEN or --token-file")
    token = checked_token(opts["token_flag"], "--token") if opts["token_flag"] else None
    token = token or read_token(
        settings.service, token_env=opts["token_env"], token_file=opts["token_file"]
    )
    if question == "-":
        question = ask_lib.decode_question(sys.stdin.buffer.read())
    stress_flags = ("requests", "concurrency", "duration", "questions", "sweep")
    if all(opts[name] is None for name in stress_flags):
        if not question:
            raise click.UsageError("give a QUESTION, - to read stdin, or --questions FILE")
        answer = ask_lib.ask_once(
            settings.service, question, token=token, max_new_tokens=opts["max_new_tokens"]
        )
        if opts["as_json"]:
            write_json(render.ask_json(answer))
        else:
            app.out.print(render.ask_panel(answer))
        return
    questions = ask_lib.read_questions(opts["questions"]) if opts["questions"] else None
    plan = stress.make_plan(
        question or None,
        questions,
        requests=opts["requests"],
        concurrency=opts["concurrency"],
        duration_s=opts["duration"].seconds if opts["duration"] else None,
        max_new_tokens=opts["max_new_tokens"],
        timeout=None,
    )
    if opts["sweep"]:
        with render.sweep_progress(app.err, plan) as on_level:
            sweep = stress.run_sweep(settings, plan, opts["sweep"], token=token, on_level=on_level)
        if opts["as_json"]:
            write_json(render.sweep_json(sweep))
        else:
            app.out.print(render.sweep_table(sweep))
        raise click.exceptions.Exit(stress_exit(sweep.levels, partial_is_failure=False))
    with render.stress_progress(app.err, plan) as progress:
        result = stress.run_stress(settings, plan, token=token, on_progress=progress)
    if opts["as_json"]:
        write_json(render.stress_json(result))
    else:
        for table in render.stress_tables(result):
            app.out.print(table)
    raise click.exceptions.Exit(stress_exit([result]))
