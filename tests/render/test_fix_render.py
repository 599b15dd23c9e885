"""fix's rendering: a test answer is shown, escaped on a terminal."""

from __future__ import annotations

import io

from rich.console import Console

from mpsctl.control.fix import FixAction, FixResult
from mpsctl.render.lifecycle import render_fix

ANSWER = "ok \x1b]0;pwned\x07 \x1b[31mred"


def result() -> FixResult:
    action = FixAction("ask", True, ANSWER, 0.1)
    return FixResult("fixed", "manual", {"verdict": "OK"}, {"verdict": "OK"}, (action,), True,
                     True, "fixed", "2026-01-01T00:00:00Z", ANSWER)  # fmt: skip


def shown(*, terminal: bool, raw: bool = False) -> str:
    buffer = io.StringIO()
    console = Console(
        file=buffer, force_terminal=terminal, width=200, markup=False, highlight=False
    )
    render_fix(console, result(), raw=raw)
    return buffer.getvalue()


def test_fix_ask_answer_is_escaped_on_a_terminal() -> None:
    """#13 item 7: `fix --ask` shows the answer's control characters escaped, as `ask` does;
    --raw (or a pipe) shows them as they are."""
    text = shown(terminal=True)
    assert "test answer: ok \\x1b]0;pwned\\x07 \\x1b[31mred" in text
    assert "\x1b]0;" not in text
    assert "\x1b[31mred" not in text
    assert "\x1b[31mred" in shown(terminal=True, raw=True)
    assert "\x1b[31mred" in shown(terminal=False)


def test_fix_table_on_cpu_says_what_probe_says() -> None:
    """#13 item 24 (first half): a service on the CPU has no accelerator figure; fix's
    before/after rows say so in probe's words instead of "unknown"."""
    from mpsctl.control.fix import probe_figures
    from mpsctl.observe.accelerator import from_memory_report
    from mpsctl.probe import HealthFigures, ProbeResult
    from mpsctl.render.probe import CPU_ACCELERATOR, accelerator_table
    from mpsctl.settings import load_settings

    accelerator = from_memory_report({"device": "cpu"})
    assert accelerator.device == "cpu"
    health = HealthFigures(True, True, 200, 3.0, None, "ok")
    probe = ProbeResult("2026-01-01T00:00:00Z", "svc", "http://x", None, None, health,
                        accelerator, (), (), load_settings().thresholds)  # fmt: skip
    figures = probe_figures(probe)
    fixed = FixResult("healthy", "manual", figures, figures, (), False, True, "healthy",
                      "2026-01-01T00:00:00Z")  # fmt: skip
    buffer = io.StringIO()
    console = Console(file=buffer, width=200, markup=False, highlight=False)
    render_fix(console, fixed)
    console.print(accelerator_table(probe))
    rows = [line for line in buffer.getvalue().splitlines() if "accelerator" in line]
    assert len(rows) == 2
    assert all(row.count(CPU_ACCELERATOR) == 2 for row in rows), rows
    assert CPU_ACCELERATOR in buffer.getvalue().split("Accelerator", 1)[1]
