"""doctor: one test per problem it must find, each against the real environment/process."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest
from click.testing import CliRunner

from mpsctl.cli import main
from mpsctl.monitor.torch_version import torch_version_in
from mpsctl.torch_env import env_checks, strtod
from tests.conftest import free_port
from tests.monitor import mps_report, stub_service


@pytest.fixture(autouse=True)
def dead_url(monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MPSCTL_SERVICE_URL", url)
    return url


def doctor() -> tuple[int, dict[str, Any]]:
    result = CliRunner().invoke(main, ["doctor", "--json"])
    return result.exit_code, json.loads(result.stdout)


def levels(doc: dict[str, Any]) -> dict[str, str]:
    """check id -> the worst level it was reported with."""
    order = ["ok", "info", "warning", "error"]
    out: dict[str, str] = {}
    for check in doc["checks"]:
        if order.index(check["level"]) >= order.index(out.get(check["id"], "ok")):
            out[check["id"]] = check["level"]
    return out


def test_clean_setup_has_no_problem() -> None:
    code, doc = doctor()
    assert code == 0, [c for c in doc["checks"] if c["level"] in ("warning", "error")]
    assert doc["schema"] == "mpsctl.doctor/1"
    assert doc["ok"] is True


def test_high_alone_in_the_environment_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTORCH_MPS_HIGH_WATERMARK_RATIO", "0.5")  # a common "lower it" recipe
    code, doc = doctor()
    assert code == 1
    (check,) = [c for c in doc["checks"] if c["id"] == "env.high_without_low"]
    assert check["level"] == "error"
    assert "invalid low watermark ratio 1.4" in check["message"]
    assert "PYTORCH_MPS_LOW_WATERMARK_RATIO" in check["fix"]


def test_enable_mps_0_is_flagged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTORCH_ENABLE_MPS", "0")
    code, doc = doctor()
    assert code == 1
    (check,) = [c for c in doc["checks"] if c["id"] == "env.enable_mps"]
    assert "no such variable" in check["message"]
    assert "device" in check["fix"]


def test_a_ratio_pytorch_reads_as_zero_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTORCH_MPS_HIGH_WATERMARK_RATIO", "seventy")
    monkeypatch.setenv("PYTORCH_MPS_LOW_WATERMARK_RATIO", "0.5")
    code, doc = doctor()
    assert code == 1
    assert levels(doc)["env.ratio_not_a_number"] == "error"


def test_fallback_is_explained_not_a_problem(
    monkeypatch: pytest.MonkeyPatch,
    write_config,  # type: ignore[no-untyped-def]
) -> None:
    monkeypatch.setenv("PYTORCH_ENABLE_MPS_FALLBACK", "1")
    write_config("[memory]\nmps_fallback = true\n")
    _code, doc = doctor()
    found = levels(doc)
    assert found["env.mps_fallback"] == "info"
    assert found["config.mps_fallback"] == "info"
    messages = " ".join(c["message"] for c in doc["checks"] if "fallback" in c["id"])
    assert "NOT move work to the CPU after an out-of-memory error" in messages


def test_reload_and_all_interfaces_in_the_command(write_config) -> None:  # type: ignore[no-untyped-def]
    write_config(
        '[service]\ncommand = "uvicorn app.main:app --host 0.0.0.0 --port 8000 --reload"\n'
    )
    code, doc = doctor()
    assert code == 1
    found = levels(doc)
    assert found["service.reload"] == "warning"
    assert found["service.bind_all"] == "warning"


def test_all_interfaces_in_the_url(
    write_config,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    monkeypatch.setenv("MPSCTL_SERVICE_URL", f"http://0.0.0.0:{free_port()}")
    code, doc = doctor()
    assert code == 1
    assert levels(doc)["service.bind_all"] == "warning"


def test_token_file_readable_by_others(tmp_path: Path, write_config) -> None:  # type: ignore[no-untyped-def]
    token = tmp_path / "token"
    token.write_text("secret\n")
    token.chmod(0o644)
    write_config(f'[service]\ntoken_file = "{token}"\n')
    code, doc = doctor()
    assert code == 1
    (check,) = [c for c in doc["checks"] if c["id"] == "token.permissions"]
    assert check["level"] == "warning"
    assert check["fix"] == f"chmod 600 {token}"


def test_running_service_lacks_the_configured_watermarks(
    write_config,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    monkeypatch.delenv("MPSCTL_SERVICE_URL")
    with stub_service() as service:  # started without any PYTORCH_* variable
        write_config(service.config("[memory]\nhigh_watermark_ratio = 0.7\n"
                                    "low_watermark_ratio = 0.5\n"))  # fmt: skip
        code, doc = doctor()
    assert code == 1
    (check,) = [c for c in doc["checks"] if c["id"] == "service.watermarks_stale"]
    assert check["level"] == "warning"
    assert check["fix"] == "mpsctl restart"
    assert "PYTORCH_MPS_HIGH_WATERMARK_RATIO=unset" in check["message"]


def test_running_service_started_with_high_alone(
    write_config,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    monkeypatch.delenv("MPSCTL_SERVICE_URL")
    env = {**os.environ, "PYTORCH_MPS_HIGH_WATERMARK_RATIO": "0.5"}
    with stub_service(env=env) as service:
        write_config(service.config())
        code, doc = doctor()
    assert code == 1
    assert levels(doc)["service_env.high_without_low"] == "error"
    assert levels(doc)["env.pytorch_vars"] == "ok"  # this shell is clean; the service is not


def test_limit_above_physical_memory(
    write_config,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    monkeypatch.delenv("MPSCTL_SERVICE_URL")
    ram = psutil.virtual_memory().total
    # as on Apple Silicon: recommendedMaxWorkingSetSize about 2/3 of RAM; high 2.0 -> 4/3 RAM
    report = mps_report(ram * 2 // 3, high=2.0, low=1.4)
    with stub_service(memory=report) as service:
        write_config(service.config())
        code, doc = doctor()
    assert code == 1
    above = [c for c in doc["checks"] if c["id"] == "limit.above_ram"]
    assert [c["level"] for c in above] == ["warning", "ok"]  # running 2.0 bad, configured 1.0 ok
    assert "above physical memory" in above[0]["message"]
    assert "swap" in above[0]["message"]


def test_limit_unknown_without_the_service_says_so() -> None:
    _code, doc = doctor()
    (check,) = [c for c in doc["checks"] if c["id"] == "limit.above_ram"]
    assert check["level"] == "info"
    assert check["message"].startswith("MPS limit unknown")


def test_missing_log_files(write_config) -> None:  # type: ignore[no-untyped-def]
    write_config('[service]\nlog_globs = ["logs/error_*.log"]\n')
    code, doc = doctor()
    assert code == 1
    assert levels(doc)["logs.missing"] == "warning"


def test_a_dated_error_log_not_written_yet_is_normal(tmp_path: Path, write_config) -> None:  # type: ignore[no-untyped-def]
    """#13 item 22: logs/error_*.log matching no file while logs/ exists is the normal state
    before the first error: information, exit 0; a pattern whose directory is missing still
    warns."""
    (tmp_path / "logs").mkdir()
    write_config('[service]\nlog_globs = ["logs/error_*.log"]\n')
    code, doc = doctor()
    (check,) = [c for c in doc["checks"] if "log_globs" in c["message"]]
    assert check["level"] == "info"
    assert "matches no file yet" in check["message"]
    assert code == 0, [c for c in doc["checks"] if c["level"] != "ok"]


def test_torch_from_the_system_site_packages_is_found(tmp_path: Path, write_config) -> None:  # type: ignore[no-untyped-def]
    """#13 item 22: a venv made with --system-site-packages (here: torch reached through a
    path outside the venv's own site-packages) imports torch; doctor says which version
    instead of "torch is not installed"."""
    import torch  # the test environment's real torch: its metadata is what must be found

    venv = tmp_path / "svc-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages",
                    str(venv)], check=True, timeout=120)  # fmt: skip
    (site,) = venv.glob("lib/python*/site-packages")
    torch_site = Path(torch.__file__).resolve().parent.parent
    (site / "outside.pth").write_text(f"{torch_site}\n")
    assert not list(venv.glob("lib/python*/site-packages/torch-*.dist-info"))
    assert torch_version_in(venv) == importlib.metadata.version("torch")
    write_config('[service]\ncommand = ["uvicorn", "app.main:app"]\nvenv = "svc-venv"\n')
    _code, doc = doctor()
    (check,) = [c for c in doc["checks"] if c["id"] == "torch.version"]
    assert "not installed" not in check["message"]
    assert torch_version_in(tmp_path) is None  # not a venv: unknown, no error


def test_torch_without_recommended_max_memory(tmp_path: Path, write_config) -> None:  # type: ignore[no-untyped-def]
    info = tmp_path / "venv/lib/python3.11/site-packages/torch-2.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: torch\nVersion: 2.1.0\n\n")
    write_config('[service]\ncommand = ["uvicorn", "app.main:app"]\nvenv = "venv"\n')
    code, doc = doctor()
    assert code == 1
    (check,) = [c for c in doc["checks"] if c["id"] == "torch.version"]
    assert check["level"] == "warning"
    assert "torch 2.1.0" in check["message"]
    assert "recommended_max_memory" in check["message"]
    assert torch_version_in(tmp_path / "venv") == "2.1.0"


def test_invalid_settings_are_a_finding_not_a_crash(write_config) -> None:  # type: ignore[no-untyped-def]
    write_config("[memory]\nhigh_watermark_ratio = 0.5\nlow_watermark_ratio = 0.9\n")
    code, doc = doctor()
    assert code == 1
    assert levels(doc)["config.load"] == "error"


def test_text_output_lists_findings_with_fixes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTORCH_MPS_HIGH_WATERMARK_RATIO", "0.7")
    result = CliRunner().invoke(main, ["doctor"])
    assert result.exit_code == 1
    assert "ERROR   env.high_without_low" in result.stdout
    assert "fix: also set PYTORCH_MPS_LOW_WATERMARK_RATIO" in result.stdout


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"PYTORCH_MPS_HIGH_WATERMARK_RATIO": "0.7", "PYTORCH_MPS_LOW_WATERMARK_RATIO": "0.9"},
         "x.low_above_high"),
        ({"PYTORCH_MPS_LOW_WATERMARK_RATIO": "1.9"}, "x.low_above_high"),
        ({"PYTORCH_MPS_HIGH_WATERMARK_RATIO": "2.5"}, "x.ratio_out_of_range"),
        ({"PYTORCH_MPS_HIGH_WATERMARK_RATIO": "0.0"}, "x.high_zero"),
        ({"PYTORCH_MPS_HIGH_WATERMARK_RATIO": ""}, "x.ratio_not_a_number"),
        ({"PYTORCH_MPS_HIGH_WATERMARK_RATIO": "0.7GB", "PYTORCH_MPS_LOW_WATERMARK_RATIO": "0.5"},
         "x.ratio_trailing_text"),
    ],
)  # fmt: skip
def test_pytorch_readings(env: dict[str, str], expected: str) -> None:
    # exactly that one finding: no second error, and no "ok" line beside it
    assert [c.id for c in env_checks("x", env, "here", "")] == [expected]


def test_strtod_reads_like_c() -> None:
    assert strtod("0.7") == (0.7, "")
    assert strtod("abc") == (0.0, "abc")
    assert strtod(" 1e-1x") == (0.1, "x")


def test_alert_targets_that_cannot_work(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MPSCTL_ALERTS_COMMAND", "no-such-notifier --now")
    code, doc = doctor()
    assert code == 1
    ids = [c["id"] for c in doc["checks"] if c["level"] == "warning"]
    assert ids.count("alerts.command") == 1
    # a URL urllib would open but that is no web hook is refused when the settings load
    monkeypatch.setenv("MPSCTL_ALERTS_URL", "file:///etc/passwd")
    _code, doc = doctor()
    (load,) = [c for c in doc["checks"] if c["id"] == "config.load"]
    assert load["level"] == "error"
    assert "MPSCTL_ALERTS_URL: expected an http:// or https:// URL" in load["message"]


def _data_bytes(checkpoint: Path) -> int:
    """The tensor bytes of a safetensors file: its size less the length and the header."""
    data = (checkpoint / "model.safetensors").read_bytes()
    return len(data) - 8 - int.from_bytes(data[:8], "little")


def test_doctor_cites_the_plan_of_the_served_model(tiny_model: Path, write_config) -> None:  # type: ignore[no-untyped-def]
    command = ["python", "-m", "mpsctl", "serve", "--model", str(tiny_model)]
    write_config(f'[service]\ncommand = {json.dumps(command)}\n[memory]\ndevice = "cpu"\n')
    _code, doc = doctor()
    (check,) = [c for c in doc["checks"] if c["id"] == "plan.fits"]
    assert check["level"] == "ok", check
    assert check["message"].startswith("plan for model (float32 on cpu): weights ")
    assert f"weights {_data_bytes(tiny_model)} bytes" in check["message"]
    assert "max_concurrent that fits: " in check["message"]


def test_doctor_warns_when_the_plan_does_not_fit(write_config) -> None:  # type: ignore[no-untyped-def]
    write_config(
        '[service]\ncommand = ["my-service"]\n'
        '[serve]\nmodel = "qwen2.5-72b"\ndtype = "float32"\nmax_concurrent = 2\n'
        '[memory]\ndevice = "cpu"\n'
    )
    code, doc = doctor()
    assert code == 1
    (check,) = [c for c in doc["checks"] if c["id"] == "plan.fits"]
    assert check["level"] == "warning"
    planned = json.loads(
        CliRunner().invoke(main, ["plan", "--preset", "qwen2.5-72b", "--json"]).stdout
    )
    # 72.7 billion float32 parameters: 290 GB, on no test machine's RAM
    assert planned["weights_bytes"] == 72_706_203_648 * 4
    assert check["message"].startswith(
        f"does not fit: plan for qwen2.5-72b (float32 on cpu): weights {planned['weights_bytes']} "
        # KV: 2 x 80 layers x 8 KV heads x 128 head dim x 4 bytes x (256 + 128) positions
        f"bytes (270.85 GiB), KV cache {2 * 80 * 8 * 128 * 4 * 384} bytes per query "
        "(256 prompt + 128 new tokens)"
    )
    assert check["message"].endswith("max_concurrent that fits: 0")
    assert check["fix"].startswith("it does not fit even at 1 query: use a smaller model or dtype")


def test_doctor_says_why_a_hub_model_has_no_plan(write_config) -> None:  # type: ignore[no-untyped-def]
    write_config('[service]\ncommand = ["my-service"]\n[serve]\nmodel = "Qwen/Qwen2.5-7B"\n')
    _code, doc = doctor()
    (check,) = [c for c in doc["checks"] if c["id"] == "plan.fits"]
    assert check == {
        "id": "plan.fits",
        "level": "info",
        "message": "no memory plan: Qwen/Qwen2.5-7B is not a local model directory",
        "fix": "mpsctl plan --preset NAME plans a published size",
    }
