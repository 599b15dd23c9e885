"""Several services configured carelessly or on purpose badly: names that are one directory
on a case-insensitive file system, one port written two ways, an `after` chain as long as
the file. Each is one clear error (or works), never two services sharing their state or a
traceback."""

from __future__ import annotations

import pytest

from mpsctl.errors import ConfigError, ExitCode
from mpsctl.plan.budget import check_start, host_budget
from mpsctl.service import services
from mpsctl.settings import Settings, load_settings


def test_names_equal_but_for_case_are_refused(write_config) -> None:
    # macOS's file system folds case: services/Chat and services/chat are one directory,
    # so the two services would share a pidfile, a lock and an audit trail
    write_config(
        '[services.chat]\nurl = "http://127.0.0.1:18201"\n'
        '[services.Chat]\nurl = "http://127.0.0.1:18202"\n'
    )
    with pytest.raises(ConfigError, match=r"\[services\.Chat\]: the name differs only in case "
                       r"from \[services\.chat\]") as caught:  # fmt: skip
        load_settings()
    assert caught.value.exit_code == ExitCode.USAGE


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("http://localhost:18203", "http://127.0.0.1:18203"),
        ("http://127.0.0.1:18203", "http://LOCALHOST:18203"),
        ("http://0.0.0.0:18203", "http://127.0.0.1:18203"),
        ("http://[::1]:18203", "http://[0:0::1]:18203"),
        ("http://[::1]:18203", "http://localhost:18203"),
        ("http://[::]:18203", "http://127.0.0.1:18203"),
        ("http://127.0.0.1:80", "http://127.0.0.1/"),
        ("http://localhost.:18203", "http://localhost:18203"),
    ],
)
def test_one_port_written_two_ways_is_one_address(write_config, first: str, second: str) -> None:
    write_config(f'[services.a]\nurl = "{first}"\n[services.b]\nurl = "{second}"\n')
    with pytest.raises(ConfigError, match=r"services\.b and services\.a both listen on "):
        load_settings()


@pytest.mark.parametrize(
    ("text", "environ", "origin"),
    [
        ("[services.a]\n[services.b]\n", {}, r"\(no url set: the default\)"),
        (
            '[service]\nurl = "http://127.0.0.1:18210"\n[services.a]\n[services.b]\n',
            {},
            r"\(\[service\] url is a default for every service\)",
        ),
        (
            '[services.a]\nurl = "http://127.0.0.1:18211"\n'
            '[services.b]\nurl = "http://127.0.0.1:18212"\n',
            {"MPSCTL_SERVICE_URL": "http://127.0.0.1:18213"},
            r"\(MPSCTL_SERVICE_URL sets every service's url\)",
        ),
    ],
)
def test_a_shared_address_says_where_it_came_from(
    write_config, monkeypatch: pytest.MonkeyPatch, text: str, environ: dict[str, str], origin: str
) -> None:
    write_config(text)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=origin):
        load_settings()


def test_a_shared_address_never_echoes_the_urls_credentials(write_config) -> None:
    write_config(
        '[services.a]\nurl = "http://127.0.0.1:18214"\n'
        '[services.b]\nurl = "http://admin:hunter2@127.0.0.1:18214/x?token=s3cret"\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "both listen on 127.0.0.1:18214" in str(caught.value)
    for secret in ("admin", "hunter2", "s3cret"):
        assert secret not in str(caught.value)


def test_two_addresses_on_one_port_are_two_services(write_config) -> None:
    # two distinct loopback addresses may each bind the same port
    write_config(
        '[services.a]\nurl = "http://127.0.0.1:18204"\n[services.b]\nurl = "http://127.0.0.2:18204"\n'
    )
    assert [s.name for s in services(load_settings())] == ["a", "b"]


def test_a_long_after_chain_is_ordered_without_recursion(write_config) -> None:
    # s0 after s1 after s2 ... : the file's order is the reverse of the start order, deeper
    # than Python's default recursion limit
    count = 1500
    text = ""
    for i in range(count):
        text += f'[services.s{i}]\nurl = "http://127.0.0.1:{20000 + i}"\n'
        if i + 1 < count:
            text += f'after = ["s{i + 1}"]\n'
    write_config(text)
    order = [s.name for s in services(load_settings())]
    assert order == [f"s{i}" for i in reversed(range(count))]


def test_a_long_circle_is_named(write_config) -> None:
    count = 1200
    text = ""
    for i in range(count):
        text += f'[services.s{i}]\nurl = "http://127.0.0.1:{20000 + i}"\n'
        text += f'after = ["s{(i + 1) % count}"]\n'
    write_config(text)
    with pytest.raises(ConfigError, match=r"after makes a circle: s0 -> s1 -> .* -> s1199 -> s0$"):
        load_settings()


def test_a_service_after_itself_is_a_circle(write_config) -> None:
    write_config('[services.a]\nurl = "http://127.0.0.1:18205"\nafter = ["a"]\n')
    with pytest.raises(ConfigError, match=r"after makes a circle: a -> a$"):
        load_settings()


def test_diamond_after_starts_each_once(write_config) -> None:
    write_config(
        '[services.top]\nurl = "http://127.0.0.1:18206"\nafter = ["left", "right"]\n'
        '[services.left]\nurl = "http://127.0.0.1:18207"\nafter = ["base"]\n'
        '[services.right]\nurl = "http://127.0.0.1:18208"\nafter = ["base", "base"]\n'
        '[services.base]\nurl = "http://127.0.0.1:18209"\n'
    )
    assert [s.name for s in services(load_settings())] == ["base", "left", "right", "top"]


def _preset_host(write_config, budget: int | None) -> Settings:
    top = "" if budget is None else f"[host]\nbudget = {budget}\n"
    write_config(
        top + '[memory]\ndevice = "cpu"\n'
        '[services.a]\ncommand = ["serve", "--model", "qwen2.5-0.5b"]\n'
        'url = "http://127.0.0.1:18221"\nlog_file = "a.log"\n'
        '[services.b]\ncommand = ["serve", "--model", "qwen2.5-0.5b"]\n'
        'url = "http://127.0.0.1:18222"\nlog_file = "b.log"\n'
    )
    return load_settings()


def test_a_budget_exactly_the_planned_sum_fits_and_one_byte_less_refuses(write_config) -> None:
    host = _preset_host(write_config, None)
    total = host_budget(host, host.members).sum_bytes
    assert total > 0
    host = _preset_host(write_config, total)
    a, b = host.members
    assert check_start(host, [a], b)[1] is None
    host = _preset_host(write_config, total - 1)
    a, b = host.members
    _, problem = check_start(host, [a], b)
    assert problem is not None
    assert problem.startswith("starting b would put the planned memory")


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ('[services."a\\nb"]\nurl = "http://127.0.0.1:1"\n', '[services."a\\nb"]'),
        ('[services."x\\u001b[31m"]\nurl = "http://127.0.0.1:1"\n', '[services."x\\u001b[31m"]'),
        ('["mem\\nory"]\nx = 1\n', 'unknown section ["mem\\nory"]'),
        ('[memory]\n"high\\nx" = 1\n', 'unknown key memory."high\\nx"'),
        ('[services.a]\n"ur\\nl" = 1\n', 'unknown key services.a."ur\\nl"'),
        (f"[services.{'x' * 65}]\n", "a service name is 1 to 64 letters"),
        ('[services.".."]\n', '[services.".."]: a service name is 1 to 64'),
        ('[services."a/b"]\n', '[services."a/b"]: a service name is 1 to 64'),
        ('[services."café"]\n', '[services."café"]: a service name is 1 to 64'),
    ],
)
def test_a_bad_name_is_shown_quoted_on_one_line(write_config, text: str, shown: str) -> None:
    write_config(text)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert shown in message
    assert "\n" not in message
    assert "\x1b" not in message


@pytest.mark.parametrize(
    ("text", "origin"),
    [
        # two own commands in one workdir, no log_file: both append to backend.log
        (
            '[services.a]\ncommand = ["x"]\nurl = "http://127.0.0.1:18231"\n'
            '[services.b]\ncommand = ["y"]\nurl = "http://127.0.0.1:18232"\n',
            r"backend\.log \(no log_file set: the default, in the service's workdir\)",
        ),
        (
            '[service]\nlog_file = "out.log"\n'
            '[services.a]\nurl = "http://127.0.0.1:18233"\n'
            '[services.b]\nurl = "http://127.0.0.1:18234"\n',
            r"out\.log \(a log_file outside \[services\.NAME\] is every service's\)",
        ),
        (
            '[services.a]\nurl = "http://127.0.0.1:18235"\nlog_file = "x/../same.log"\n'
            '[services.b]\nurl = "http://127.0.0.1:18236"\nlog_file = "same.log"\n',
            r"same\.log; give each service its own log_file",
        ),
    ],
)
def test_two_services_writing_one_log_are_refused(write_config, text: str, origin: str) -> None:
    # `logs -s a` would show b's lines, and the OOM reader would blame a for b's deaths
    write_config(text)
    with pytest.raises(ConfigError, match=r"services\.b and services\.a both write their output "
                       r"to .*" + origin):  # fmt: skip
        load_settings()


def test_reference_services_each_log_in_their_own_state(write_config) -> None:
    write_config(
        '[services.a]\nurl = "http://127.0.0.1:18237"\n'
        '[services.b]\nurl = "http://127.0.0.1:18238"\n'
    )
    a, b = load_settings().members
    assert a.service.log_file != b.service.log_file
