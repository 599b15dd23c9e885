"""``mpsctl oom``: configured logs (dated names) or given files, JSON and people."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from mpsctl.cli import main
from tests.conftest import read_fixture

SEED_LINE = (
    "MPS backend out of memory (MPS allocated: 20.14 GiB, other allocations: 384.00 KiB, "
    "max allowed: 20.13 GiB). Tried to allocate 6.00 KiB on private pool."
)


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), env={"COLUMNS": "200"})
    return result.exit_code, result.stdout, result.stderr


def test_given_file_json_has_exact_bytes_line_and_time(tmp_path: Path) -> None:
    log = tmp_path / "error.log"
    log.write_text(f"2026-01-21T19:38:39Z INFO ok\n2026-01-21T19:38:40Z ERROR {SEED_LINE}\n")
    code, out, err = run("oom", str(log), "--json")
    assert (code, err) == (0, "")
    doc = json.loads(out)
    assert doc["schema"] == "mpsctl.oom/1"
    assert doc["count"] == 1
    [event] = doc["events"]
    assert event["backend"] == "mps"
    assert (event["file"], event["line"], event["time"]) == (str(log), 2, "2026-01-21T19:38:40Z")
    # by hand: 2014 x 2**30 / 100 = 21625160335.36, 2013 x 2**30 / 100 = 21614422917.12
    assert event["allocated_bytes"] == 21_625_160_335
    assert event["other_bytes"] == 393_216
    assert event["max_allowed_bytes"] == 21_614_422_917
    assert event["requested_bytes"] == 6_144
    assert event["summary"] == (
        "MPS allocated 20.14 GiB, other 384 KiB, max allowed 20.13 GiB, requested 6 KiB, "
        "private pool"
    )
    assert event["complete"] is True
    assert any("11.84 GiB" in a for a in event["advice"])


def test_configured_logs_include_dated_names_and_warn_about_missing(
    tmp_path: Path, write_config: Callable[[str], Path]
) -> None:
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs/error_2026-01-20.log").write_text(read_fixture("torch-cuda-oom-new-1.txt"))
    (tmp_path / "logs/error_2026-01-21.log").write_text(read_fixture("torch-mps-oom-6-gib.txt"))
    write_config(
        '[service]\ncommand = ["x"]\nlog_file = "backend.log"\nlog_globs = ["logs/error_*.log"]\n'
    )
    code, out, err = run("oom", "--json")
    assert code == 0
    assert "backend.log: no such file" in err
    doc = json.loads(out)
    assert [(Path(e["file"]).name, e["backend"]) for e in doc["events"]] == [
        ("error_2026-01-21.log", "mps"),
        ("error_2026-01-20.log", "cuda"),
    ]
    # 194.87 MiB: 19487 x 2**20 / 100 = 204336005.12
    assert doc["events"][1]["reserved_unallocated_bytes"] == 204_336_005


def test_configured_high_ratio_is_used_for_the_working_set(
    tmp_path: Path, write_config: Callable[[str], Path]
) -> None:
    log = tmp_path / "e.log"
    log.write_text(read_fixture("torch-mps-oom-6-gib.txt"))
    write_config("[memory]\nhigh_watermark_ratio = 1.0\nlow_watermark_ratio = 0.8\n")
    code, out, _ = run("oom", str(log), "--json")
    assert code == 0
    advice = json.loads(out)["events"][0]["advice"][0]
    assert "/ 1 = 18.13 GiB" in advice
    code, out, _ = run("oom", str(log), "--json", "--high-ratio", "1.7")
    assert "/ 1.7 = 10.66 GiB" in json.loads(out)["events"][0]["advice"][0]


def test_human_output_shows_summary_and_advice(tmp_path: Path) -> None:
    log = tmp_path / "w.log"
    log.write_text(read_fixture("torch-mps-invalid-low-watermark-1.txt"))
    code, out, _ = run("oom", str(log))
    assert code == 0
    assert "invalid low watermark ratio 1.4" in out
    assert "HIGH=0.7" in out
    assert "1 event(s) in 1 file." in out


def test_since_filters_old_events_and_nothing_found_is_success(tmp_path: Path) -> None:
    log = tmp_path / "old.log"
    log.write_text(f"2020-01-01T00:00:00Z {SEED_LINE}\n")
    code, out, _ = run("oom", str(log), "--since", "24h", "--json")
    assert code == 0
    assert json.loads(out)["events"] == []
    code, out, _ = run("oom", str(log), "--since", "24h")
    assert "No out-of-memory events in 1 file since 24h." in out


@pytest.mark.parametrize(("args", "code", "message"), [
    (["nope.log"], 1, "mpsctl: error: nope.log: no such file\n"),
    (["."], 1, "mpsctl: error: .: is a directory"),
    (["--since", "soon"], 2, "mpsctl: error: --since: invalid duration 'soon'"),
])  # fmt: skip
def test_errors_are_one_line(args: list[str], code: int, message: str) -> None:
    exit_code, out, err = run("oom", *args)
    assert exit_code == code
    assert out == ""
    assert err.startswith(message)
    assert err.count("\n") == 1


def test_help_has_examples() -> None:
    code, out, _ = run("oom", "--help")
    assert code == 0
    assert "Examples:" in out
    assert "mpsctl oom --since 24h" in out


def test_the_configured_services_events_cite_its_memory_plan(
    tmp_path: Path, write_config: Callable[[str], Path]
) -> None:
    (tmp_path / "logs").mkdir()
    log = tmp_path / "logs/error_2026-01-21.log"
    log.write_text(read_fixture("torch-mps-oom-6-gib.txt"))
    write_config(
        '[service]\ncommand = ["x"]\nlog_globs = ["logs/error_*.log"]\n'
        '[serve]\nmodel = "qwen2.5-7b"\ndtype = "float16"\nmax_concurrent = 4\n'
        '[memory]\ndevice = "mps"\nhigh_watermark_ratio = 1.0\nlow_watermark_ratio = 0.8\n'
    )
    code, out, _ = run("oom", "--json")
    assert code == 0
    [event] = json.loads(out)["events"]
    planned = json.loads(run("plan", "--json")[1])
    cited = event["advice"][-1]
    # Qwen2.5-7B: 7,615,616,512 parameters x 2 bytes (float16)
    assert cited.startswith(
        "By mpsctl plan, the plan for qwen2.5-7b (float16 on mps): weights 15231233024 bytes"
    )
    # KV: 2 x 28 layers x 4 KV heads x 128 head dim x 2 bytes x (256 + 128) positions
    assert f"KV cache {2 * 28 * 4 * 128 * 2 * 384} bytes per query" in cited
    assert f"4 at once need {planned['total_bytes']} bytes" in cited
    assert f"max_concurrent that fits: {planned['max_concurrent_that_fits']}:" in cited
    # a file given by hand may come from another service: no plan is cited for it
    code, out, _ = run("oom", str(log), "--json")
    assert not any("mpsctl plan" in a for a in json.loads(out)["events"][0]["advice"])
