"""Secrets written the other ways a command line carries them: an option and its value as
two words (``--api-key KEY``, the form most servers document), a quoted ``NAME="value"``,
and HTTP Basic credentials. ``config show`` once printed all three in clear."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mpsctl.errors import ConfigError
from mpsctl.masking import mask_argv, mask_text
from mpsctl.settings import load_settings

SECRETS = ("s3cret-one", "s3cret-two", "dXNlcjpzM2NyZXQ=", "s3cret-four", "s3cret-five")


@pytest.mark.parametrize("as_json", [False, True])
def test_config_show_masks_option_values_quoted_values_and_basic_credentials(
    tmp_path: Path, as_json: bool
) -> None:
    config = tmp_path / "mpsctl.toml"
    config.write_text(
        "[service]\n"
        'command = ["vllm", "serve", "m", "--api-key", "s3cret-one", "--token", "s3cret-two",'
        ' "--max-new-tokens", "128", "--token-file", "/run/tok"]\n'
        "[alerts]\n"
        """command = 'curl -H "Authorization: Basic dXNlcjpzM2NyZXQ=" --password s3cret-four"""
        """ -d @- https://h.example/x; HF_TOKEN="s3cret-five" true'\n"""
    )
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    env = {"MPSCTL_HOME": str(home), "PATH": "/usr/bin:/bin", "COLUMNS": "300"}
    args = ["config", "show", *(["--json"] if as_json else [])]

    done = subprocess.run(
        [sys.executable, "-m", "mpsctl", "--config", str(config), *args],
        capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    for secret in SECRETS:
        assert secret not in done.stdout + done.stderr
    if as_json:
        shown = json.loads(done.stdout)["values"]["service"]["command"]
        assert shown[3:] == ["--api-key", "****", "--token", "****", "--max-new-tokens", "128",
                             "--token-file", "/run/tok"]  # fmt: skip
    else:
        assert "--max-new-tokens 128" in done.stdout
        assert "--token-file /run/tok" in done.stdout


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("serve --token s3cret", "serve --token ****"),
        ("serve --api-key 's3 cret' --port 8000", "serve --api-key **** --port 8000"),
        ('TOKEN="s3cret" python', "TOKEN=**** python"),
        ("Authorization: Basic dXNlcjpwYXNz", "Authorization: Basic ****"),
        # counts and file or variable names are no secret
        ("serve --max-new-tokens 128", "serve --max-new-tokens 128"),
        ("serve --token-env MPSCTL_TOKEN --token-file /run/t", None),
        ("a basic setup", None),
        ("Basic configuration", None),
        ("serve --no-auth (loopback only)", None),
        ("`--token` is visible to other users in `ps`", None),
        ("uvicorn app:app --ssl-keyfile /etc/k.pem --kill-signal TERM", None),
        ("serve --token --verbose", None),
    ],
)
def test_option_values_in_free_text(text: str, shown: str | None) -> None:
    assert mask_text(text) == (text if shown is None else shown)


def test_an_argv_masks_the_word_after_a_secret_option() -> None:
    argv = ["app", "--api-key", "K", "--password=P", "--max-tokens", "9", "--key-file", "f"]
    assert mask_argv(argv) == [
        "app", "--api-key", "****", "--password=****", "--max-tokens", "9", "--key-file", "f",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "value", ["http://a b:0/?token=hunter2", "http://a b/services/T0/B0/s3cret"]
)
def test_a_refused_url_with_a_space_is_masked_past_the_space(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A value with a space in its host is no URL to the plain pattern, which stopped at the
    space and showed the rest (found by tests/test_hostile_properties.py)."""
    monkeypatch.setenv("MPSCTL_SERVICE_HEALTH_PATH", value)
    with pytest.raises(ConfigError) as refused:
        load_settings()
    assert "must start with '/'" in str(refused.value)
    assert "hunter2" not in str(refused.value)
    assert "s3cret" not in str(refused.value)
