"""``mpsctl ask`` end to end: CliRunner against real local servers and the reference service."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from mpsctl.ask import AskExit
from mpsctl.cli import main
from tests.conftest import free_port
from tests.service_fixtures import RunningService
from tests.test_client import LocalService, local_service_fixture  # noqa: F401 - the fixture

TOKEN = "tok-3f9a1c"


def run(*args: str, stdin: bytes | None = None) -> Result:
    return CliRunner().invoke(main, ["ask", *args], input=stdin)


@pytest.fixture
def pointed(local_service: LocalService, monkeypatch: pytest.MonkeyPatch) -> LocalService:
    monkeypatch.setenv("MPSCTL_SERVICE_URL", local_service.url)
    monkeypatch.setenv("MPSCTL_TOKEN", TOKEN)
    local_service.behaviour.token = TOKEN
    return local_service


# --------------------------------------------------------------------------- one question
def test_answer_panel_shows_status_latency_model_and_device(pointed: LocalService) -> None:
    result = run("工商银行")
    assert result.exit_code == 0, result.stderr
    assert "echo: 工商银行" in result.stdout
    assert "HTTP 200 · " in result.stdout
    assert "echo on cpu" in result.stdout
    assert " ms" in result.stdout
    assert TOKEN not in result.stdout + result.stderr
    assert pointed.behaviour.auth_headers == [f"Bearer {TOKEN}"]


def test_escape_sequences_in_an_answer_never_reach_the_terminal(pointed: LocalService) -> None:
    answer = "plain \x1b[31mRED\x1b[0m \x1b]0;pwned\x07 end\nline two"
    pointed.behaviour.raw_body = json.dumps({"answer": answer, "model": "m\x1b[2J"}).encode()
    result = run("hi")
    assert result.exit_code == 0, result.stderr
    assert "\x1b" not in result.stdout
    assert "\x07" not in result.stdout
    assert "plain \\x1b[31mRED\\x1b[0m \\x1b]0;pwned\\x07 end" in result.stdout
    assert "line two" in result.stdout  # newlines are kept


def test_json_from_stdin_round_trips_chinese(pointed: LocalService) -> None:
    result = run("-", "--json", "--max-new-tokens", "5", stdin="工商银行\n".encode())
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["schema"] == "mpsctl.ask/1"
    assert doc["response"]["question"] == "工商银行"
    assert doc["latency_ms"] > 0
    assert json.loads(pointed.behaviour.received[0]) == {
        "question": "工商银行",
        "max_new_tokens": 5,
    }


def test_token_file_and_token_flag(
    pointed: LocalService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MPSCTL_TOKEN")
    (tmp_path / "tok").write_text(TOKEN + "\n")
    assert run("q", "--token-file", str(tmp_path / "tok")).exit_code == 0
    result = run("q", "--token", TOKEN)
    assert result.exit_code == 0
    assert "visible to other users in `ps`" in result.stderr
    assert TOKEN not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("setup", "code", "message"),
    [
        ({"token": "other"}, AskExit.AUTH, "token rejected (HTTP 401)"),
        ({"status": 503, "raw_body": b'{"error": {"kind": "queue_full", "message": "full"}}',
          "retry_after": "2"}, AskExit.BUSY, "service busy (HTTP 503, Retry-After: 2)"),
        ({"status": 200, "raw_body": b"not json"}, AskExit.BAD_ANSWER, "is not JSON: not json"),
        ({"status": 502, "raw_body": b"Bad Gateway from proxy"}, AskExit.SERVER_ERROR,
         "service failed (HTTP 502): Bad Gateway from proxy"),
    ],
)  # fmt: skip
def test_each_failure_is_one_line_and_its_exit_code(
    pointed: LocalService, setup: dict[str, object], code: int, message: str
) -> None:
    for name, value in setup.items():
        setattr(pointed.behaviour, name, value)
    """#13 item 11 too: under --json the failure is also one JSON document on stdout."""
    result = run("q", "--json")
    assert result.exit_code == code
    document = json.loads(result.stdout)
    assert document["schema"] == "mpsctl.error/1"
    assert message in document["error"]
    assert (document["command"], document["exit_code"]) == ("ask", code)
    assert result.stderr.count("\n") == 1
    assert message in result.stderr


def test_timeout_exit_code(pointed: LocalService) -> None:
    pointed.behaviour.sleep_s = 1.0
    result = run("q", "--timeout", "0.2")
    assert result.exit_code == AskExit.TIMEOUT
    assert "timed out after 0.2 s" in result.stderr


def test_no_service_exit_code(monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MPSCTL_SERVICE_URL", url)
    result = run("q")
    assert result.exit_code == AskExit.UNREACHABLE
    assert result.stderr == f"mpsctl: error: no service at {url} — try `mpsctl start`\n"


def test_usage_errors_and_caps() -> None:
    assert run().exit_code == 2
    assert run("q", "-n", "100001").exit_code == 2
    assert run("q", "--duration", "2h").exit_code == 2
    assert run("q", "--sweep", "1,x").exit_code == 2
    assert "Examples:" in run("--help").stdout


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (b"\xff\xfe\x00q\x80", "stdin: the question is not UTF-8 text"),
        (b"\x00\x00\n", "stdin: a binary input (NUL bytes), not a question"),
    ],
)
def test_binary_stdin_is_refused_not_sent(
    pointed: LocalService, given: bytes, message: str
) -> None:
    result = run("-", stdin=given)
    assert result.exit_code == 2
    assert result.stderr == f"mpsctl: error: {message}\n"
    assert pointed.behaviour.received == []  # nothing reached the service


def test_empty_or_binary_questions_file(pointed: LocalService, tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_bytes(b"\n \n")
    (tmp_path / "nul.txt").write_bytes(b"\x00\x00\n")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xd8\xff\xe0 jpeg")
    for name, reason in [
        ("empty.txt", "no questions in the file"),
        ("nul.txt", "a binary file (NUL bytes), not text"),
        ("bin.txt", "not UTF-8"),
    ]:
        result = run("--questions", str(tmp_path / name))
        assert result.exit_code == 2, name
        assert result.stderr == f"mpsctl: error: --questions {tmp_path / name}: {reason}\n"
    assert pointed.behaviour.received == []


def test_token_echoed_by_the_service_never_reaches_any_output(pointed: LocalService) -> None:
    # a debugging proxy that echoes the request headers in its error page, cut past 200 chars
    pointed.behaviour.status = 500
    pointed.behaviour.raw_body = ("x" * 170 + f" Authorization: Bearer {TOKEN}").encode()
    for args in (("q",), ("q", "--json"), ("q", "-n", "3"), ("q", "-n", "3", "--json")):
        result = run(*args)
        assert result.exit_code == AskExit.SERVER_ERROR, args
        assert TOKEN[:5] not in result.stdout + result.stderr, args
    table = run("q", "-n", "2").stdout
    assert "no successful request to measure" in table  # no empty latency table


# --------------------------------------------------------------------------- stress and sweep
def test_stress_json_document(pointed: LocalService) -> None:
    pointed.behaviour.every_nth_busy = 4
    result = run("工商银行", "-n", "20", "-c", "2", "--json")
    assert result.exit_code == AskExit.FAILURE  # some requests failed
    assert result.stderr == ""  # no progress bar when stderr is not a terminal
    doc = json.loads(result.stdout)
    assert doc["schema"] == "mpsctl.stress/1"
    assert (doc["total"], doc["ok"], doc["by_status"]) == (20, 15, {"200": 15, "503": 5})
    assert doc["errors"] == {"busy": 5}
    latency = doc["latency"]
    assert latency["method"] == "nearest-rank"
    assert latency["count"] == 15
    assert latency["min_ms"] <= latency["p50_ms"] <= latency["p99_ms"] <= latency["max_ms"]
    assert doc["tokens_total"] == 45
    assert doc["tokens_per_s"] > 0
    assert doc["memory"]["samples"] >= 2


def test_stress_tables_and_questions_file(pointed: LocalService, tmp_path: Path) -> None:
    (tmp_path / "qs.txt").write_text("工商银行\n\n建设银行\n", encoding="utf-8")
    result = run("--questions", str(tmp_path / "qs.txt"), "-c", "2")
    assert result.exit_code == 0, result.stderr
    questions = sorted(json.loads(b)["question"] for b in pointed.behaviour.received)
    assert questions == ["工商银行", "建设银行"]  # one pass over the file
    for heading in ("requests/s", "p50", "p99", "memory", "service tree RSS"):
        assert heading in result.stdout


def test_sweep_table_and_json(pointed: LocalService) -> None:
    result = run("q", "-n", "6", "--sweep", "1,2", "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["schema"] == "mpsctl.sweep/1"
    assert [level["concurrency"] for level in doc["levels"]] == [1, 2]
    table = run("q", "-n", "4", "--sweep", "1,2").stdout
    for heading in ("concurrency", "p99", "req/s", "peak memory", "errors"):
        assert heading in table


def test_ctrl_c_prints_what_was_gathered(local_service: LocalService) -> None:
    local_service.behaviour.sleep_s = 0.05
    env = {**os.environ, "MPSCTL_SERVICE_URL": local_service.url}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mpsctl", "ask", "q", "-n", "100000", "-c", "2", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while len(local_service.behaviour.received) < 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, _err = proc.communicate(timeout=20)
    assert proc.returncode == AskExit.INTERRUPTED
    doc = json.loads(out)
    assert doc["stopped_by"] == "interrupt"
    # the two requests in flight at Ctrl-C are left out; the rest are all there
    assert 8 <= doc["total"] < 100000
    assert doc["latency"]["count"] == doc["ok"] == doc["total"]


# --------------------------------------------------------------------------- the reference service
def test_reference_service_answers(
    reference_service: RunningService, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MPSCTL_SERVICE_URL", reference_service.url)
    monkeypatch.setenv("MPSCTL_TOKEN", "test-token")
    result = run("工商银行", "--max-new-tokens", "4", "--json")
    assert result.exit_code == 0, result.stderr
    response = json.loads(result.stdout)["response"]
    assert isinstance(response["answer"], str)
    assert response["device"] == "cpu"
    assert 1 <= response["tokens"] <= 4
    # The service counts the question's UTF-8 bytes: 1368 CJK characters are 4104 bytes,
    # over its 4096 limit, so the 422 proves every byte arrived as sent.
    result = run("工商银行" * 342)
    assert result.exit_code == AskExit.FAILURE
    assert "4104 bytes (UTF-8)" in result.stderr
    monkeypatch.setenv("MPSCTL_TOKEN", "wrong-token")
    result = run("工商银行")
    assert result.exit_code == AskExit.AUTH
    assert "wrong-token" not in result.stderr


def test_reference_limiter_503_and_memory_under_load(
    service_factory: Callable[..., RunningService], monkeypatch: pytest.MonkeyPatch
) -> None:
    service = service_factory(max_concurrent=1, max_queue=0)
    monkeypatch.setenv("MPSCTL_SERVICE_URL", service.url)
    monkeypatch.setenv("MPSCTL_TOKEN", "test-token")
    result = run("工商银行", "-n", "16", "-c", "4", "--max-new-tokens", "8", "--json")
    doc = json.loads(result.stdout)
    assert doc["ok"] >= 1
    assert doc["errors"].get("busy", 0) >= 1, doc  # 4 at once against a limit of 1, no queue
    assert doc["by_status"]["503"] == doc["errors"]["busy"]
    assert "Retry-After" in doc["error_examples"]["busy"]
    assert result.exit_code == AskExit.FAILURE
    memory = doc["memory"]
    assert memory["device"] == "cpu"
    rss = memory["tree_rss_bytes"]  # the service process, found by its port
    assert rss["before"] > 0
    assert rss["peak"] >= rss["before"]
    assert memory["reported_rss_bytes"]["peak"] >= memory["reported_rss_bytes"]["before"]
    # #13 item 16: from the service's own high-water mark (0 before, 1 after), not sampling
    assert memory["peak_in_flight"] == 1


SECRET = "MySecretToken42"


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (f"{SECRET}\n# rotated 2026-01-01\n".encode(), "the token must be one line"),
        (f"{SECRET} extra\n".encode(), "the token contains spaces or control characters"),
        ("MySecrétToken42\n".encode(), "the token contains non-ASCII characters"),
    ],
)
def test_a_token_file_that_is_not_one_ascii_line_is_refused_without_echoing_it(
    pointed: LocalService,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    content: bytes,
    reason: str,
) -> None:
    """#13 items 1 and 5: the client applies the service's token rule and never prints the
    token; nothing is sent."""
    monkeypatch.delenv("MPSCTL_TOKEN")
    (tmp_path / "tok2").write_bytes(content)
    result = run("hi", "--token-file", str(tmp_path / "tok2"))
    assert result.exit_code == 2
    assert f"token file {tmp_path / 'tok2'}: {reason}" in result.stderr.replace("\n", " ")
    assert "Secr" not in result.stdout + result.stderr
    assert pointed.behaviour.received == []


def test_a_multi_line_token_variable_or_flag_is_refused_without_echoing_it(
    pointed: LocalService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """#13 item 1: $MPSCTL_TOKEN and --token follow the same rule."""
    monkeypatch.setenv("MPSCTL_TOKEN", f"{SECRET}\nB")
    result = run("hi")
    assert result.exit_code == 2
    assert "$MPSCTL_TOKEN: the token must be one line" in result.stderr
    assert SECRET not in result.stdout + result.stderr
    monkeypatch.delenv("MPSCTL_TOKEN")
    result = run("hi", "--token", f"{SECRET}\tx")
    assert result.exit_code == 2
    assert "--token: the token contains spaces or control characters" in result.stderr
    assert SECRET not in result.stdout + result.stderr
    assert pointed.behaviour.received == []


def test_etc_passwd_as_a_token_file_is_not_printed(
    pointed: LocalService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """#13 item 1: a file of many lines is refused by name, its contents never shown."""
    monkeypatch.delenv("MPSCTL_TOKEN")
    result = run("hi", "--token-file", "/etc/passwd")
    assert result.exit_code == 2
    expected = "mpsctl: error: token file /etc/passwd: the token must be one line"
    assert result.stderr.strip() == expected


def test_escape_sequences_in_an_error_excerpt_never_reach_the_terminal(
    pointed: LocalService,
) -> None:
    """#13 item 7: an error body quoted in the one-line error is escaped too."""
    pointed.behaviour.status = 502
    pointed.behaviour.raw_body = b"Bad \x1b]0;pwned\x07 gateway \x1b[2J"
    result = run("q")
    assert result.exit_code == AskExit.SERVER_ERROR
    assert "\x1b" not in result.stderr
    assert "Bad \\x1b]0;pwned\\x07 gateway \\x1b[2J" in result.stderr
