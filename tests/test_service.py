"""Several services in one settings file: [services.NAME] tables, their defaults, their
state directories, their order; and a [service] file (or none) staying exactly one service."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mpsctl.control import audit
from mpsctl.control.lock import lock_path
from mpsctl.deaths.cursor import state_path
from mpsctl.errors import ConfigError, ExitCode, UsageError
from mpsctl.monitor import alerts
from mpsctl.monitor.history import history_dir
from mpsctl.observe.processes.pidfile import default_pidfile_path
from mpsctl.service import select, services
from mpsctl.settings import load_settings

TWO = """
[memory]
high_watermark_ratio = 0.4

[services.chat]
url = "http://127.0.0.1:18101"
after = ["embed"]

[services.chat.memory]
high_watermark_ratio = 0.5

[services.embed]
url = "http://127.0.0.1:18102"

[services.embed.serve]
max_concurrent = 1
"""


def test_a_service_file_is_one_service_with_todays_state_paths(
    write_config, isolated_home: Path
) -> None:
    write_config('[service]\nname = "mvp"\ncommand = ["sleep", "60"]\n')
    settings = load_settings()
    (only,) = services(settings)
    assert (only.name, only.state_dir) == ("mvp", isolated_home)
    # the owning modules compute the same files: nothing moves for one service
    assert only.pidfile == default_pidfile_path(settings)
    assert only.lock == lock_path(isolated_home)
    assert only.state_path("cursor") == state_path(isolated_home)
    assert only.state_path("audit") == audit.fix_history_path(isolated_home)
    assert only.state_path("history") == history_dir(isolated_home)
    assert only.state_path("alert_state") == alerts.state_path(isolated_home)


def test_no_file_is_the_reference_service_in_the_home(isolated_home: Path) -> None:
    (only,) = services(load_settings())
    assert (only.name, only.state_dir) == ("mpsctl-serve", isolated_home)
    assert only.settings.host_dir == isolated_home


def test_services_take_top_level_defaults_and_their_own_tables(
    write_config, isolated_home: Path
) -> None:
    path = write_config(TWO)
    settings = load_settings()
    by_name = {s.name: s for s in services(settings)}
    chat, embed = by_name["chat"].settings, by_name["embed"].settings
    assert (chat.memory.high_watermark_ratio, embed.memory.high_watermark_ratio) == (0.5, 0.4)
    assert (chat.serve.max_concurrent, embed.serve.max_concurrent) == (3, 1)
    assert (chat.service.port, embed.service.port) == (18101, 18102)
    assert chat.home == isolated_home / "services" / "chat"
    assert chat.host_dir == isolated_home
    # the reference service on each one's own port, its log and token in its own state
    assert chat.service.command[-2:] == ("--port", "18101")
    assert chat.service.log_file == isolated_home / "services" / "chat" / "service.log"
    assert chat.sources["memory.high_watermark_ratio"] == f"file {path} [services.chat]"
    assert embed.sources["memory.high_watermark_ratio"] == f"file {path}"


def test_start_order_follows_after_and_the_environment_applies_to_every_service(
    write_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(TWO)
    monkeypatch.setenv("MPSCTL_SERVE_MAX_NEW_TOKENS", "7")
    every = services(load_settings())
    assert [s.name for s in every] == ["embed", "chat"]
    assert {s.settings.serve.max_new_tokens for s in every} == {7}


def test_one_service_is_chosen_by_name(write_config, monkeypatch: pytest.MonkeyPatch) -> None:
    write_config(TWO)
    assert load_settings(service="embed").service.name == "embed"
    monkeypatch.setenv("MPSCTL_SERVICE", "chat")
    assert load_settings().service.port == 18101
    with pytest.raises(ConfigError, match=r"no service named 'cat'; configured: chat, embed"):
        load_settings(service="cat")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[services.a]\nafter = ["b"]\n', r"services\.a\.after: no service named 'b'"),
        (
            '[services.a]\nurl = "http://127.0.0.1:1"\nafter = ["b"]\n'
            '[services.b]\nurl = "http://127.0.0.1:2"\nafter = ["a"]\n',
            r"after makes a circle: a -> b -> a",
        ),
        (
            '[services.a]\nurl = "http://127.0.0.1:9"\n[services.b]\nurl = "http://127.0.0.1:9"\n',
            r"services\.b and services\.a both listen on 127\.0\.0\.1:9; give each",
        ),
        ('[services.a]\nname = "x"\n', r"services\.a\.name: the table's name is the service's"),
        ('[services."a b"]\nurl = "http://127.0.0.1:1"\n', r"a service name is 1 to 64 letters"),
        ("[services.a.history]\nretention_days = 3\n", r"holds one value for the whole host"),
        ('[services.a]\nurll = "x"\n', r"unknown key services\.a\.urll \(did you mean 'url'\?\)"),
        ('[service]\nafter = ["x"]\n', r"after names services of \[services\.NAME\] tables"),
        ("services = 3\n", r"services must hold one table per service"),
        ('[service]\nname = "x"\n[services.a]\n', r"each service is named by its table"),
    ],
)
def test_bad_service_tables_are_one_clear_error(write_config, text: str, message: str) -> None:
    write_config(text)
    with pytest.raises(ConfigError, match=message) as caught:
        load_settings()
    assert caught.value.exit_code == ExitCode.USAGE


def test_changing_commands_need_a_name_or_all(write_config) -> None:
    write_config(TWO)
    settings = load_settings()
    assert [s.name for s in select(settings, ())] == ["embed", "chat"]  # read-only: all
    with pytest.raises(UsageError, match=r"several services are configured \(embed, chat\)"):
        select(settings, (), changes=True)
    assert [s.name for s in select(settings, (), all_=True, changes=True)] == ["embed", "chat"]
    assert [s.name for s in select(settings, ("chat",), changes=True)] == ["chat"]
    with pytest.raises(UsageError, match=r"no service named 'x'; configured: embed, chat"):
        select(settings, ("x",))


def _toml_blocks() -> list[tuple[str, str]]:
    root = Path(__file__).resolve().parent.parent
    found = []
    for doc in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        for number, match in enumerate(re.finditer(r"```toml\n(.*?)```", doc.read_text(), re.S)):
            found.append((f"{doc.name}#{number}", match.group(1)))
    return found


@pytest.mark.parametrize(("where", "text"), _toml_blocks(), ids=[w for w, _ in _toml_blocks()])
def test_every_settings_example_of_the_docs_loads(write_config, where: str, text: str) -> None:
    write_config(text)
    settings = load_settings()
    assert services(settings), where
