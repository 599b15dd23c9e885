"""One masking rule for secrets in `config show`, warnings, errors and the access log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from mpsctl.cli import main
from mpsctl.masking import mask_text, mask_url, masked_env
from mpsctl.monitor.alerts import post_json
from mpsctl.server.auth import redact_query
from tests.conftest import free_port

SECRETS = ("hunter2", "XXSLACKSECRETXX", "pgpass", "sentrykey", "apikey-value", "s3cr3t")


@pytest.fixture
def secret_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "svc.env").write_text(
        "SENTRY_DSN=https://sentrykey@o1.ingest.example/42\nPLAIN=visible\n"
    )
    config = tmp_path / "mpsctl.toml"
    config.write_text(
        "[service]\n"
        'url = "http://admin:hunter2@127.0.0.1:8000"\n'
        'command = ["python", "-m", "app", "--api-key=apikey-value"]\n'
        f'env_file = "{tmp_path / "svc.env"}"\n'
        'env = { DATABASE_URL = "postgres://app:pgpass@db/prod", OPENAI_API_KEY = "s3cr3t" }\n'
        "[alerts]\n"
        'url = "https://hooks.slack.example/services/T000/B000/XXSLACKSECRETXX"\n'
    )
    monkeypatch.setenv("MPSCTL_CONFIG", str(config))
    return config


@pytest.mark.parametrize("as_json", [False, True])
def test_config_show_masks_userinfo_webhook_paths_and_secret_values(
    secret_config: Path, as_json: bool
) -> None:
    result = CliRunner().invoke(main, ["config", "show", *(["--json"] if as_json else [])])

    assert result.exit_code == 0, result.stderr
    for secret in SECRETS:
        assert secret not in result.output
    if as_json:
        values = json.loads(result.stdout)["values"]
        assert values["alerts"]["url"] == "https://hooks.slack.example/services/****"
        assert values["service"]["url"] == "http://admin:****@127.0.0.1:8000"
        assert values["service"]["env"]["DATABASE_URL"] == "postgres://app:****@db/prod"
    else:
        assert "visible" in result.stdout


def test_errors_and_warnings_mask_url_userinfo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MPSCTL_SERVICE_URL", f"http://admin:hunter2@127.0.0.1:{free_port()}")
    monkeypatch.setenv("MPSCTL_TOKEN", "t0ken-for-test")

    result = CliRunner().invoke(main, ["ask", "hello"])

    assert result.exit_code != 0
    assert "hunter2" not in result.output
    assert "admin:****@127.0.0.1" in result.stderr


def test_a_wrong_scheme_webhook_is_reported_without_its_secret() -> None:
    ok, detail = post_json("ftp://user:hunter2@hooks.example/services/XXSLACKSECRETXX", {})

    assert not ok
    assert "hunter2" not in detail
    assert "XXSLACKSECRETXX" not in detail
    assert detail == "not an http(s) URL: 'ftp://user:****@hooks.example/services/****'"


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/q?%74oken=S", "/q?%74oken=REDACTED"),
        ("/q?x=1&tok%65n=S", "/q?x=1&tok%65n=REDACTED"),
        ("/q?x=1;token=S", "/q?x=1;token=REDACTED"),
        ("/q?x=1;a=2&Api%5FKey=S", "/q?x=1;a=2&Api%5FKey=REDACTED"),
        ("/q?%2574oken=S", "/q?%2574oken=REDACTED"),
        ("/q?access+token=S", "/q?access+token=REDACTED"),
        ("/q?question=token;lang=zh", "/q?question=token;lang=zh"),
    ],
)  # fmt: skip
def test_access_log_redaction_decodes_escapes_and_splits_on_both_separators(
    target: str, expected: str
) -> None:
    assert redact_query(target) == expected


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("https://hooks.slack.example/services/T0/B0/abc", "https://hooks.slack.example/services/****"),
        ("postgres://app:pw@db:5432/prod?sslmode=x", "postgres://app:****@db:5432/prod?****"),
        ("https://ghp_tok@github.example/o/r", "https://****@github.example/o/****"),
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
        ("curl -H 'Authorization: Bearer abc.def'", "curl -H 'Authorization: Bearer ****'"),
        ("run --token=abc --port=8000", "run --token=**** --port=8000"),
    ],
)  # fmt: skip
def test_the_one_rule(text: str, shown: str) -> None:
    assert mask_text(text) == shown


def test_secret_named_variables_are_masked_whatever_their_value() -> None:
    env = {"HF_TOKEN": "x", "AWS_SECRET_ACCESS_KEY": "y", "PATH": "/bin", "DB": "mysql://u:p@h/d"}
    assert masked_env(env) == {
        "AWS_SECRET_ACCESS_KEY": "****", "DB": "mysql://u:****@h/d", "HF_TOKEN": "****",
        "PATH": "/bin",
    }  # fmt: skip
    assert mask_url("http://h/health", paths=False) == "http://h/health"


def test_a_pair_inside_another_pairs_value_is_still_masked():
    # `b:0/?token=S` reads as the pair `b:...` whose value holds `token=S`
    assert mask_text("got http://a b:0/?token=hunter2") == "got http://a b:0/?token=****"


def test_a_quoted_url_with_a_space_is_masked_as_one_url():
    shown = mask_text("must start with '/', got 'http://a b/services/T0/B0/s3cret'")
    assert shown == "must start with '/', got 'http://a b/services/****'"
