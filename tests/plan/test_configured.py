"""The plan of the configured service: what start, doctor, oom and ask --sweep cite."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from mpsctl.plan import plan_for_settings
from mpsctl.plan.configured import configured_plan, saved_report, served_model, start_notes
from mpsctl.plan.lines import figures_line
from mpsctl.settings import load_settings


def _command_config(write_config: Callable[..., Path], model: str, extra: str = "") -> None:
    command = [sys.executable, "-m", "mpsctl", "serve", "--model", model, "--port", "8123"]
    write_config(f"[service]\ncommand = {json.dumps(command)}\n{extra}")


def test_the_demo_command_plans_the_demo_checkpoint_once_it_is_built(
    isolated_home: Path, tiny_model: Path
) -> None:
    settings = load_settings()  # the reference service: serve --demo
    demo = isolated_home / "demo-model"
    assert served_model(settings) == str(demo)
    before = configured_plan(settings)
    assert before.plan is None
    assert before.expected
    assert start_notes(settings) == ([], [])  # the first start says nothing about a plan

    shutil.copytree(tiny_model, demo)
    after = configured_plan(settings)
    assert after.plan is not None
    assert (
        after.plan.figures.weights_bytes
        == plan_for_settings(settings, model_dir=str(demo)).figures.weights_bytes
    )
    assert start_notes(settings) == ([], [])  # the tiny demo fits: nothing to say


def test_start_model_flag_and_command_model_are_what_is_planned(
    write_config: Callable[..., Path], tiny_model: Path, tmp_path: Path
) -> None:
    _command_config(write_config, str(tiny_model))
    settings = load_settings()
    assert served_model(settings) == str(tiny_model)
    assert served_model(settings, "/elsewhere") == "/elsewhere"
    found = configured_plan(settings)
    assert found.plan is not None
    assert (
        found.plan.figures.weights_bytes
        == plan_for_settings(settings, model_dir=str(tiny_model)).figures.weights_bytes
    )
    assert configured_plan(settings, model=str(tmp_path)).plan is None


def test_a_hub_id_is_one_info_line_and_no_warning(write_config: Callable[..., Path]) -> None:
    _command_config(write_config, "Qwen/Qwen2.5-0.5B-Instruct")
    assert start_notes(load_settings()) == (
        [],
        [
            "no memory plan: Qwen/Qwen2.5-0.5B-Instruct is not a local model directory "
            "(mpsctl plan --preset NAME plans a published size)"
        ],
    )


def test_a_directory_without_config_or_with_a_corrupt_one_never_raises(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    _command_config(write_config, str(empty))
    assert start_notes(load_settings()) == (
        [],
        [f"no memory plan: {empty} has no config.json (mpsctl plan --preset NAME plans a "
         "published size)"],
    )  # fmt: skip
    (empty / "config.json").write_text("{not json", encoding="utf-8")
    warnings, infos = start_notes(load_settings())
    assert warnings == []
    assert len(infos) == 1
    assert infos[0].startswith(f"no memory plan: {empty}: ")


def test_a_preset_that_does_not_fit_is_a_warning_with_the_plans_numbers(
    write_config: Callable[..., Path],
) -> None:
    # a 72B model in float32 on the CPU: 290 GB of weights, more than any test machine has
    write_config(
        '[service]\ncommand = ["my-service"]\n'
        '[serve]\nmodel = "qwen2.5-72b"\ndtype = "float32"\n[memory]\ndevice = "cpu"\n'
    )
    settings = load_settings()
    warnings, infos = start_notes(settings)
    assert infos == []
    assert len(warnings) == 1
    plan = plan_for_settings(settings, preset="qwen2.5-72b")
    # 72.7 billion parameters x 4 bytes, 3 queries: the weights alone are 290 GB
    assert plan.total_bytes > 290 * 10**9
    assert warnings[0].startswith(
        "the memory plan does not fit: qwen2.5-72b (float32 on cpu) at "
        f"serve.max_concurrent = 3 needs {plan.total_bytes} bytes ("
    )
    assert "bytes usable (" in warnings[0]
    assert ": the RAM available " in warnings[0]
    smaller = plan.smaller_preset and f" (the largest preset that fits: {plan.smaller_preset})"
    assert warnings[0].endswith(
        f"it does not fit even at 1 query: use a smaller model or dtype{smaller or ''}; "
        "mpsctl plan shows the figures"
    )


def test_figures_line_cites_each_figure_in_bytes(write_config: Callable[..., Path]) -> None:
    write_config('[serve]\nmodel = "qwen2.5-7b"\ndtype = "float16"\n')
    settings = load_settings()
    plan = plan_for_settings(settings, preset="qwen2.5-7b", ram=16 * 1024**3)
    line = figures_line(plan)
    f = plan.figures
    for figure in (f.weights_bytes, f.kv_cache_per_query_bytes, f.peak_per_query_bytes,
                   f.overhead_bytes, plan.total_bytes, plan.usable_bytes):  # fmt: skip
        assert f" {figure} bytes" in line
    assert line.endswith(f"max_concurrent that fits: {plan.max_concurrent_that_fits}")
    # Qwen2.5-7B: 7,615,616,512 parameters x 2 bytes in float16
    assert f.weights_bytes == 7_615_616_512 * 2


def test_saved_report_drops_the_rss_of_a_service_that_is_gone(isolated_home: Path) -> None:
    settings = load_settings()
    assert saved_report(settings) is None
    isolated_home.mkdir(parents=True, exist_ok=True)
    (isolated_home / "last_health.json").write_text(
        json.dumps({"memory": {"schema": "mpsctl.memory/1", "device": "cpu", "rss_bytes": 5}}),
        encoding="utf-8",
    )
    assert saved_report(settings) == {"schema": "mpsctl.memory/1", "device": "cpu"}
    (isolated_home / "last_health.json").write_text("[1, 2", encoding="utf-8")
    assert saved_report(settings) is None


def test_a_service_of_ones_own_with_no_model_configured_says_nothing_at_start(
    write_config: Callable[..., Path],
) -> None:
    write_config('[service]\ncommand = ["my-service"]\n')
    settings = load_settings()
    found = configured_plan(settings)
    assert (found.plan, found.reason, found.expected) == (
        None,
        "no model configured (serve.model)",
        True,
    )
    assert start_notes(settings) == ([], [])
