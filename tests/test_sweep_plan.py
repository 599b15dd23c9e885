"""``ask --sweep`` on the real tiny model: the plan's predicted peak beside the measured one."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from pathlib import Path

from click.testing import CliRunner

from mpsctl.cli import main
from mpsctl.plan.memory import OVERHEAD_ESTIMATE_BYTES
from mpsctl.settings import load_settings
from mpsctl.stress import StressPlan, run_sweep
from tests.service_fixtures import RunningService


def _data_bytes(checkpoint: Path) -> int:
    data = (checkpoint / "model.safetensors").read_bytes()
    return len(data) - 8 - int.from_bytes(data[:8], "little")


def _point_at(service: RunningService, model: Path, write_config: Callable[..., Path]) -> None:
    command = [sys.executable, "-m", "mpsctl", "serve", "--model", str(model)]
    write_config(
        f'[service]\nurl = "{service.url}"\ncommand = {json.dumps(command)}\n'
        '[serve]\nmax_new_tokens = 16\n[memory]\ndevice = "cpu"\n'
    )


def test_sweep_predicts_each_level_from_the_served_checkpoint(
    reference_service: RunningService, tiny_model: Path, write_config: Callable[..., Path]
) -> None:
    _point_at(reference_service, tiny_model, write_config)
    settings = load_settings()
    sweep = run_sweep(
        settings, StressPlan(("工商银行",), requests=4), (1, 2), token=reference_service.token
    )
    assert [level.ok for level in sweep.levels] == [4, 4]
    plan = sweep.plan
    assert plan is not None, sweep.plan_note
    f = plan.figures
    assert f.weights_bytes == _data_bytes(tiny_model)  # float32 on the CPU, as saved
    assert f.prompt_tokens == len("工商银行".encode())  # one token per byte: 12
    assert f.max_new_tokens == 16
    assert f.overhead_bytes == OVERHEAD_ESTIMATE_BYTES  # a CPU service reports no overhead
    for level in sweep.levels:
        n = level.concurrency
        # on the CPU each query counts its tensors x the measured growth (3.0)
        per_query = math.ceil(3.0 * (f.kv_cache_per_query_bytes + f.peak_per_query_bytes))
        assert sweep.predicted_peak_bytes(n) == f.weights_bytes + f.overhead_bytes + n * per_query
        measured = level.memory.peak_bytes
        assert measured is not None
        # the model of a whole process: within a factor of two of the measured RSS
        assert 0.5 < measured / sweep.predicted_peak_bytes(n) < 2.0  # type: ignore[operator]


def test_sweep_table_and_json_show_predicted_next_to_measured(
    reference_service: RunningService, tiny_model: Path, write_config: Callable[..., Path]
) -> None:
    _point_at(reference_service, tiny_model, write_config)
    env = {"MPSCTL_TOKEN": reference_service.token or "", "COLUMNS": "250"}
    result = CliRunner().invoke(main, ["ask", "工商银行", "-n", "2", "--sweep", "1,2", "--json"],
                                env=env)  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["plan"]["schema"] == "mpsctl.plan/1"
    assert doc["plan"]["weights_bytes"] == _data_bytes(tiny_model)
    for level in doc["levels"]:
        n = level["concurrency"]
        assert level["memory"]["predicted_peak_bytes"] == (
            doc["plan"]["weights_bytes"] + doc["plan"]["overhead_bytes"]
            + n * doc["plan"]["per_query_counted_bytes"]
        )  # fmt: skip
    table = CliRunner().invoke(main, ["ask", "工商银行", "-n", "2", "--sweep", "1,2"], env=env)
    assert table.exit_code == 0, table.output
    for heading in ("peak memory", "predicted", "measured/predicted", "predicted by mpsctl plan"):
        assert heading in table.stdout


def test_a_model_that_cannot_be_planned_is_a_note_not_a_failure(
    reference_service: RunningService, write_config: Callable[..., Path]
) -> None:
    write_config(
        f'[service]\nurl = "{reference_service.url}"\ncommand = ["my-service"]\n'
        '[serve]\nmodel = "Qwen/Qwen2.5-0.5B-Instruct"\n'
    )
    sweep = run_sweep(
        load_settings(), StressPlan(("q",), requests=1), (1,), token=reference_service.token
    )
    assert sweep.levels[0].ok == 1
    assert sweep.plan is None
    assert sweep.plan_note == (
        "no memory plan: Qwen/Qwen2.5-0.5B-Instruct is not a local model directory"
    )
