"""start / status / ask / clean-cache / restart / fix / stop through the CLI, on the real
reference service (``mpsctl serve --demo --device cpu`` on the tiny checkpoint).

The happy paths run here, on the service mpsctl ships; tests/cli/test_lifecycle_cli.py keeps
an ``http.server`` stand-in only for the faults it exists for (dying at start, ignoring
SIGTERM, answering 503). One service is shared by the module: each test starts it when it
is not running (``start`` on a running service is a no-op), so the tests stay independent
while the two cores load the model as rarely as possible.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner, Result

from mpsctl.cli import main
from mpsctl.control import audit
from mpsctl.server.demo import DEMO_LABEL
from tests.conftest import free_port
from tests.service_fixtures import http_request


@dataclass(frozen=True)
class Reference:
    home: Path
    url: str

    def env(self) -> dict[str, str]:
        return {
            "MPSCTL_HOME": str(self.home),
            "MPSCTL_SERVICE_URL": self.url,
            "MPSCTL_MEMORY_DEVICE": "cpu",
            "MPSCTL_SERVICE_START_TIMEOUT": "120",
            "OMP_NUM_THREADS": "1",  # two cores shared: one torch thread per service
        }


@pytest.fixture(scope="module")
def reference_home(
    tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Reference]:
    home = tmp_path_factory.mktemp("reference-home")
    # `serve --demo` reuses a complete demo checkpoint in MPSCTL_HOME instead of building one
    shutil.copytree(tiny_model, home / "demo-model")
    ref = Reference(home, f"http://127.0.0.1:{free_port()}")
    yield ref
    env = {k: v for k, v in os.environ.items() if not k.startswith("MPSCTL_")}
    subprocess.run(
        [sys.executable, "-m", "mpsctl", "stop"], env={**env, **ref.env()}, check=False, timeout=60
    )


@pytest.fixture
def ref(reference_home: Reference, monkeypatch: pytest.MonkeyPatch) -> Reference:
    """The module's reference service settings, in this test's environment (no config file)."""
    for name, value in reference_home.env().items():
        monkeypatch.setenv(name, value)
    return reference_home


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def ensure_running() -> int:
    result = run("start", "--json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["status"] in ("started", "already-running")
    return int(document["pid"])


def test_start_derives_low_and_the_service_gets_both(ref: Reference) -> None:
    run("stop")
    result = run("start", "--high", "0.7", "--json")
    assert result.exit_code == 0, result.stderr
    assert "low watermark ratio set to 0.70 = min(high 0.70, 1.40)" in result.stderr
    document = json.loads(result.stdout)
    assert (document["schema"], document["status"]) == ("mpsctl.start/1", "started")
    environ = psutil.Process(document["pid"]).environ()
    assert environ["PYTORCH_MPS_HIGH_WATERMARK_RATIO"] == "0.7"
    assert environ["PYTORCH_MPS_LOW_WATERMARK_RATIO"] == "0.7"
    assert document["env"]["PYTORCH_MPS_LOW_WATERMARK_RATIO"] == "0.7"
    # the reference service needs a token: start made one, mode 0600, and the service uses it
    token_file = ref.home / "token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    token = token_file.read_text().strip()
    assert http_request(ref.url + "/api/v1/query", "POST", {"question": "x"}).status == 401
    answered = http_request(
        ref.url + "/api/v1/query",
        "POST",
        {"question": "工商银行", "max_new_tokens": 2},
        token=token,
    )
    assert answered.status == 200
    assert (answered.json["model"], answered.json["device"]) == (DEMO_LABEL, "cpu")


def test_status_and_ask_on_the_running_service(ref: Reference) -> None:
    pid = ensure_running()
    status = run("status", "--json")
    assert status.exit_code == 0, status.stdout
    document = json.loads(status.stdout)
    assert (document["schema"], document["state"], document["health"]["ok"]) == (
        "mpsctl.status/1",
        "running",
        True,
    )
    assert document["pid"] == pid
    asked = run("ask", "工商银行", "--json")
    assert asked.exit_code == 0, asked.stderr
    reply = json.loads(asked.stdout)
    assert (reply["schema"], reply["url"], reply["status"]) == (
        "mpsctl.ask/1",
        ref.url + "/api/v1/query",
        200,
    )
    assert (reply["response"]["model"], reply["response"]["device"]) == (DEMO_LABEL, "cpu")
    assert isinstance(reply["response"]["answer"], str)


def test_clean_cache_releases_the_running_services_memory(ref: Reference, tmp_path: Path) -> None:
    ensure_running()
    (tmp_path / "pkg" / "__pycache__").mkdir(parents=True)
    (tmp_path / "pkg" / "__pycache__" / "m.pyc").write_bytes(b"x" * 64)
    result = run("clean-cache", "--json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["schema"] == "mpsctl.clean-cache/1"
    assert document["service_running"] is True
    assert document["release"]["ok"] is True, document["release"]


def test_restart_then_fix_replace_the_process(ref: Reference) -> None:
    first = ensure_running()
    restarted = run("restart", "--json")
    assert restarted.exit_code == 0, restarted.stderr
    document = json.loads(restarted.stdout)
    assert document["stop"]["status"] == "stopped"
    second = document["start"]["pid"]
    assert second != first
    assert not psutil.pid_exists(first) or psutil.Process(first).status() == psutil.STATUS_ZOMBIE
    fixed = run("fix", "--ask", "工商银行", "--json")
    assert fixed.exit_code == 0, fixed.stderr
    report = json.loads(fixed.stdout)
    assert report["status"] == "fixed"
    assert [a["name"] for a in report["actions"]] == ["stop", "clean-cache", "start", "ask"]
    assert isinstance(report["answer"], str)
    healthy = run("fix", "--if-unhealthy")
    assert healthy.exit_code == 0
    assert "nothing to do" in healthy.stdout
    records = audit.read_records(audit.fix_history_path(ref.home))
    assert [r["result"] for r in records][-2:] == ["fixed", "healthy"]
    assert records[-1]["before"]["verdict"] == "OK"


def test_stop_dry_run_then_stop(ref: Reference) -> None:
    pid = ensure_running()
    dry = run("stop", "--dry-run", "--json")
    assert dry.exit_code == 0
    assert json.loads(dry.stdout)["status"] == "dry-run"
    assert psutil.pid_exists(pid)
    stopped = run("stop", "--json")
    assert stopped.exit_code == 0, stopped.stderr
    document = json.loads(stopped.stdout)
    assert (document["schema"], document["status"]) == ("mpsctl.stop/1", "stopped")
    assert document["freed_rss_bytes"] > 0
    assert not (ref.home / "service.pid").exists()
    assert run("status").exit_code == 3  # LSB: not running
    again = run("stop", "--json")
    assert again.exit_code == 0
    assert json.loads(again.stdout)["status"] == "already-stopped"
