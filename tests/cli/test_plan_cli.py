"""``mpsctl plan``: the answer without torch, every bad input one line and exit 2."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from mpsctl.cli import main
from tests.service_fixtures import RunningService


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), env={"COLUMNS": "200", **(env or {})})
    return result.exit_code, result.stdout, result.stderr


def test_7b_on_16gb_answers_without_torch(tmp_path: Path) -> None:
    code = (
        "import sys, runpy, json\n"
        "sys.argv = ['mpsctl', 'plan', '--preset', 'qwen2.5-7b', '--ram', '16GiB',\n"
        "            '--max-concurrent', '4', '--json']\n"
        "try:\n"
        "    runpy.run_module('mpsctl', run_name='__main__')\n"
        "except SystemExit as exc:\n"
        "    sys.stderr.write(f'EXIT={exc.code}\\n')\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'requests') if m in sys.modules)\n"
        "sys.stderr.write('HEAVY=' + ','.join(heavy) + '\\n')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path, timeout=60, env=dict(os.environ))  # fmt: skip
    assert "HEAVY=\n" in done.stderr, done.stderr
    assert "EXIT=1\n" in done.stderr  # does not fit
    doc = json.loads(done.stdout)
    assert doc["schema"] == "mpsctl.plan/1"
    for key in ("weights_bytes", "kv_cache_per_query_bytes", "peak_per_query_bytes",
                "total_bytes", "limit_bytes", "ram_bytes"):  # fmt: skip
        assert isinstance(doc[key], int), key
        assert doc[key] > 0, key
    assert doc["ram_bytes"] == 16 * 2**30
    assert (doc["fits"], doc["max_concurrent_that_fits"]) == (False, 0)
    assert doc["smaller_preset_that_fits"] == "qwen2.5-3b"
    assert doc["device"] == "mps"


def test_human_output_names_every_figure_in_bytes() -> None:
    code, out, err = run("plan", "--preset", "qwen2.5-3b", "--ram", "16GiB")
    assert (code, err) == (0, "")
    for label in ("weights", "KV cache per query", "peak per query", "framework overhead",
                  "total at 3", "load peak (host)", "ceiling 1: MPS limit",
                  "ceiling 2: RAM less OS reserve", "working_set", "os_reserve"):  # fmt: skip
        assert label in out
    assert "6,171,877,376 B" in out  # 3_085_938_688 parameters x 2 bytes (float16 on MPS)
    assert "largest max_concurrent that fits with a 10% margin: 109" in out
    assert "watermarks high 1.12 low 1.12" in out


def test_settings_give_the_defaults(write_config) -> None:  # type: ignore[no-untyped-def]
    write_config("[serve]\nmax_concurrent = 2\nmax_new_tokens = 64\ndtype = 'float32'\n"
                 "[memory]\nhigh_watermark_ratio = 0.7\n")  # fmt: skip
    code, out, _ = run("plan", "--preset", "qwen2.5-0.5b", "--ram", "16GiB", "--json")
    doc = json.loads(out)
    assert (doc["max_concurrent"], doc["max_new_tokens"], doc["dtype"]) == (2, 64, "float32")
    assert doc["high_watermark_ratio"] == 0.7
    assert doc["limit_bytes"] == int(0.7 * (16 * 2**30 * 2 // 3))
    assert code == 0


def test_model_dir_reads_headers(tiny_model: Path) -> None:
    code, out, err = run("plan", "--model", str(tiny_model), "--ram", "8GiB", "--dtype",
                         "float32", "--json")  # fmt: skip
    assert (code, err) == (0, "")
    doc = json.loads(out)
    size = (tiny_model / "model.safetensors").stat().st_size
    # float32 checkpoint: the tensor bytes are the file less its header (8 + header length)
    with (tiny_model / "model.safetensors").open("rb") as handle:
        (header,) = struct.unpack("<Q", handle.read(8))
    assert doc["weights_bytes"] == size - 8 - header
    assert "safetensors header" in doc["model_source"]


def test_a_running_service_supplies_its_report(reference_service: RunningService) -> None:
    code, out, err = run("plan", "--preset", "qwen2.5-0.5b", "--json",
                         env={"MPSCTL_SERVICE_URL": reference_service.url})  # fmt: skip
    doc = json.loads(out)
    assert doc["device"] == "cpu"
    assert doc["device_source"] == "the service's memory report"
    assert doc["ram_source"] == "this machine"
    assert "the running service's RSS" in doc["limit_source"]
    assert code in (0, 1), err


def write_model(tmp_path: Path, config: str, safetensors: bytes | None = None) -> Path:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(config)
    if safetensors is not None:
        (model / "model.safetensors").write_bytes(safetensors)
    return model


TRUNCATED = struct.pack("<Q", 4096) + b'{"a":'
NOT_JSON = struct.pack("<Q", 4) + b"\xff\xfe{}"
GOOD_CONFIG = json.dumps({"model_type": "qwen2", "hidden_size": 32, "intermediate_size": 64,
                          "num_hidden_layers": 2, "num_attention_heads": 4,
                          "num_key_value_heads": 2, "vocab_size": 384})  # fmt: skip


@pytest.mark.parametrize(
    ("config", "data", "expected"),
    [
        ("{not json", None, "config.json: not valid JSON"),
        ("[1, 2]", None, "config.json: not a JSON object"),
        ('{"hidden_size": 32}', None, "intermediate_size must be a positive integer (missing)"),
        (GOOD_CONFIG, TRUNCATED, "truncated or corrupt safetensors header"),
        (GOOD_CONFIG, b"\x01\x02", "truncated safetensors file"),
        (GOOD_CONFIG, NOT_JSON, "corrupt safetensors header: not valid JSON"),
        (GOOD_CONFIG, struct.pack("<Q", 11) + b'{"w": 1234}', "corrupt safetensors header (tensor"),
    ],
)  # fmt: skip
def test_bad_model_directory_is_one_line_exit_2(
    tmp_path: Path, config: str, data: bytes | None, expected: str
) -> None:
    model = write_model(tmp_path, config, data)
    code, out, err = run("plan", "--model", str(model), "--ram", "16GiB")
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1, err
    assert err.startswith("mpsctl: error: "), err
    assert expected in err


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--model", "/nonexistent/model"], "--model: no such directory"),
        (["--model", "x", "--preset", "qwen2.5-3b"], "not both"),
        (["--preset", "qwen2.5-3b", "--ram", "lots"], "--ram: expected a size"),
        (["--preset", "qwen2.5-3b", "--high", "0.5", "--low", "0.9"], "low watermark ratio 0.9"),
        (["--preset", "qwen2.5-3b", "--high", "3"], "--high: must be between"),
        (["--preset", "qwen2.5-3b", "--device", "cuda"], "give --gpu-memory SIZE"),
        (["--preset", "qwen2.5-3b", "--chip", "m3"], "--chip: give --ram too"),
        (["--preset", "qwen2.5-3b", "--max-new-tokens", "32600"], "max_position_embeddings"),
        (["--preset", "qwen2.5-9b"], "'--preset'"),
        ([], "no model to plan"),
    ],
)  # fmt: skip
def test_bad_options_are_one_line_exit_2(args: list[str], expected: str) -> None:
    extra = [] if "--ram" in args or "--chip" in args else ["--ram", "16GiB"]
    code, _, err = run("plan", *args, *extra)
    assert code == 2, err
    assert err.count("\n") == 1, err
    assert "Traceback" not in err
    assert expected in err
