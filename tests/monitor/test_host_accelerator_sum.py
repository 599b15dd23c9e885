"""The host view of two services on one Mac: their accelerator memory together against the
one recommended working set they share (docs/services.md, "The host view"), from each
service's own ``mpsctl.memory/1`` report served on its /health (real HTTP stand-ins: there
is no torch.mps on Linux)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from click.testing import CliRunner

from mpsctl.cli import main
from tests.monitor import mps_report, stub_service

GIB = 1024**3


def test_two_services_over_their_shared_working_set_get_a_warning_not_a_traceback(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    # each allowed 0.7 of the same 16 GiB working set: 22.4 GiB together, more than it holds
    report = mps_report(16 * GIB, high=0.7)
    with stub_service(report) as one, stub_service(report) as two:
        write_config(
            "".join(
                f'[services.{name}]\nurl = "{stub.url}"\nmatch = "{stub.marker}"\n'
                f'command = ["true"]\nlog_file = "{tmp_path / name}.log"\n'
                for name, stub in (("a", one), ("b", two))
            )
        )
        result = CliRunner().invoke(main, ["probe", "--json"])
    assert not result.stderr, result.stderr
    view = json.loads(result.stdout)
    assert view["schema"] == "mpsctl.host-probe/1"
    assert result.exit_code == view["exit_code"]
    assert view["host"]["accelerator_ceiling_bytes"] == 16 * GIB
    assert view["host"]["accelerator_limits_bytes"] == 2 * int(0.7 * 16 * GIB)
    host = [r for r in view["reasons"] if ": host: " in r]
    assert host == [r for r in host if r.startswith("WARNING: host: ")], host
    assert any("accelerator limits add up to 22.40 GiB" in r for r in host), host
