"""A real out-of-memory error end to end, no stand-ins: the reference service serving the
``0.5b`` demo checkpoint under a real address-space limit (``serve --memory-limit``), a
question that needs more than the limit, PyTorch's own ``DefaultCPUAllocator`` refusal, 503
``out_of_memory`` with Retry-After, the memory given back, the next small question answered,
and ``mpsctl oom`` / ``mpsctl probe`` reading the service's log.

The tiny demo model is too small for any question to need much memory (4,096 bytes of
question allocate about a megabyte), so this test builds the 0.5b one (random weights,
Qwen2.5-0.5B's layer shapes): its MLP needs about 80 MB per layer for a few thousand tokens.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from mpsctl.cli import main
from tests.service_fixtures import start_service, stop_process

QUERY = "/api/v1/query"
#: above what the loaded model uses: room for a short question, not for a long one
HEADROOM = 160 * 1024 * 1024


@pytest.fixture(scope="session")
def half_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 0.5b demo checkpoint (about 1.4 GB, ~20 s to build on two busy cores)."""
    from mpsctl.server.demo import build_demo_checkpoint

    return build_demo_checkpoint(tmp_path_factory.mktemp("half-model") / "model", "0.5b")


def vm(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {key} for {pid}")


def test_a_real_cpu_oom_is_503_then_recovered_then_reported_once(
    half_model: Path,
    tmp_path: Path,
    write_config,  # type: ignore[no-untyped-def]
) -> None:
    env = {"MPSCTL_SERVE_MAX_QUESTION_BYTES": "20000"}
    small = {"question": "工商银行", "max_new_tokens": 2}
    # what the loaded model and one short answer take, with the allocator settings a
    # limited service has (serve.one_malloc_arena) under a limit never reached
    probe_run = start_service(half_model, tmp_path / "a", token=None, env=env,
                              extra_args=["--memory-limit", str(100 << 30)])  # fmt: skip
    try:
        assert probe_run.request("POST", QUERY, small, timeout=120).status == 200
        used = vm(probe_run.proc.pid, "VmSize")
    finally:
        stop_process(probe_run.proc)

    limit = used + HEADROOM
    svc = start_service(
        half_model, tmp_path / "b", token=None, env=env,
        extra_args=["--memory-limit", str(limit)],
    )  # fmt: skip
    try:
        assert "memory limit: address space capped at" in svc.log()
        # ~4,000 tokens: each MLP activation is 4,000 x 4,864 floats, the MLP needs several
        failed = svc.request("POST", QUERY, {"question": "a " * 4000, "max_new_tokens": 1},
                             timeout=300)  # fmt: skip
        assert failed.status == 503, failed.body
        assert failed.json["error"]["kind"] == "out_of_memory"
        assert "DefaultCPUAllocator: can't allocate memory" in failed.json["error"]["message"]
        assert int(failed.headers["retry-after"]) > 0
        assert "released memory after the out-of-memory error" in svc.log()
        assert vm(svc.proc.pid, "VmSize") <= limit
        answered = svc.request("POST", QUERY, small, timeout=120)
        assert answered.status == 200, answered.body
    finally:
        stop_process(svc.proc)

    log = svc.log_path
    [requested] = {int(n) for n in re.findall(r"you tried to allocate (\d+) bytes", svc.log())}
    result = CliRunner().invoke(main, ["oom", "--json", str(log)])
    doc = json.loads(result.stdout)
    [event] = doc["events"]
    assert (event["kind"], event["backend"]) == ("cpu_alloc", "cpu")
    assert event["requested_bytes"] == requested
    assert event["time"] is not None

    write_config(f'[service]\ncommand = ["x"]\nlog_file = "{log}"\nurl = "{svc.url}"\n')
    for _ in range(2):  # each probe of the hour sees the one failure once
        probe = json.loads(CliRunner().invoke(main, ["probe", "--json"]).stdout)
        assert [e["kind"] for e in probe["oom"]["events"]] == ["cpu_alloc"]


def test_concurrent_ooms_under_a_tight_limit_are_503s_not_an_abort(
    half_model: Path, tmp_path: Path
) -> None:
    """Eight long questions at once with 16 MiB of headroom. Before, each worker thread's
    malloc arena reserved 64 MiB of address space and the tokenizers library started its
    thread pool at its first use: a small allocation failed and the process aborted
    (SIGABRT), or a thread could not start (500, and the tokenizer broken for good). Now
    each question is a 503 out_of_memory, counted, and the service answers on."""
    import threading

    env = {"MPSCTL_SERVE_MAX_QUESTION_BYTES": "20000"}
    small = {"question": "工商银行", "max_new_tokens": 2}
    # the same allocator settings as the limited service, under a limit never reached
    probe_run = start_service(half_model, tmp_path / "a", token=None, env=env,
                              extra_args=["--memory-limit", str(100 << 30)])  # fmt: skip
    try:
        assert probe_run.request("POST", QUERY, small, timeout=120).status == 200
        used = vm(probe_run.proc.pid, "VmSize")
    finally:
        stop_process(probe_run.proc)
    svc = start_service(
        half_model, tmp_path / "b", token=None, max_concurrent=8, env=env,
        extra_args=["--memory-limit", str(used + 16 * 1024 * 1024)],
    )  # fmt: skip
    try:
        statuses: list[int] = []

        def ask() -> None:
            answer = svc.request("POST", QUERY, {"question": "a " * 4000, "max_new_tokens": 1},
                                 timeout=300)  # fmt: skip
            statuses.append(answer.status)

        threads = [threading.Thread(target=ask) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
        assert svc.proc.poll() is None, svc.log()[-2000:]
        assert statuses == [503] * 8, (statuses, svc.log()[-3000:])
        assert svc.request("POST", QUERY, small, timeout=120).status == 200
        metrics = svc.request("GET", "/metrics").body.decode()
        assert "mpsctl_out_of_memory_total 8.0" in metrics
    finally:
        stop_process(svc.proc)
