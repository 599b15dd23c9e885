"""Run the speed benchmarks and write their output into HACKING.md (its measured section).

    python tests/benchmarks/speed_table.py [--quick] [--print]

Each benchmark runs as its own process, one after the other, with the arguments listed in
BENCHES; their printed tables (ours, the floor, ratio min/median, the goal) are copied into
HACKING.md between the two marker lines, under the commit they were measured on. The tree
must be clean (a table must name the code it measured); ``--print`` writes to stdout instead
of HACKING.md, ``--quick`` runs fewer rounds (a smoke run, never for the table).
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HACKING = REPO / "HACKING.md"
BEGIN = "<!-- speed-table: written by tests/benchmarks/speed_table.py, do not edit by hand -->"
END = "<!-- /speed-table -->"
BENCHES: list[tuple[str, list[str], list[str]]] = [
    # script, arguments for the table, arguments for --quick
    ("bench_probe.py", ["--runs", "15"], ["--runs", "3", "--processes", "500"]),
    (
        "bench_lifecycle.py",
        ["--runs", "10", "--library-runs", "3"],
        ["--runs", "3", "--library-runs", "0"],
    ),
    (
        "bench_oom_scan.py",
        ["--sizes", "64", "256", "--repeat", "3", "--grep"],
        ["--sizes", "16", "64", "--repeat", "1", "--files", "5"],
    ),
    ("bench_demo_start.py", ["--runs", "3"], ["--runs", "1"]),
]


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                          check=True).stdout.strip()  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds: a smoke run")
    parser.add_argument("--print", dest="to_stdout", action="store_true",
                        help="print the section instead of writing HACKING.md")  # fmt: skip
    args = parser.parse_args()
    if git("status", "--porcelain", "--untracked-files=no"):
        print("speed_table: the working tree differs from HEAD: commit first, so the table "
              "names the code it measured", file=sys.stderr)  # fmt: skip
        return 2
    commit = git("rev-parse", "--short=12", "HEAD")
    load = os.getloadavg()
    lines = [
        BEGIN,
        f"Measured on commit `{commit}`, {datetime.date.today().isoformat()}, "
        f"{os.cpu_count()} CPUs, load average before the runs {load[0]:.1f}; "
        f"python {sys.version.split()[0]}, {sys.platform}. Each block is the benchmark's own "
        "output, run from the checkout root:",
        "",
    ]
    for script, full, quick in BENCHES:
        argv = [sys.executable, str(REPO / "tests" / "benchmarks" / script),
                *(quick if args.quick else full)]  # fmt: skip
        print(f"speed_table: running {script} ...", file=sys.stderr)
        done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=False)
        shown = " ".join(["python", f"tests/benchmarks/{script}", *argv[2:]])
        lines += [f"`{shown}` (exit {done.returncode}):", "", "```text",
                  done.stdout.rstrip(), "```", ""]  # fmt: skip
    lines.append(END)
    section = "\n".join(lines)
    if args.to_stdout:
        print(section)
        return 0
    text = HACKING.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        print(f"speed_table: {HACKING} has no marker lines", file=sys.stderr)
        return 2
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    HACKING.write_text(head + section + tail, encoding="utf-8")
    print(f"speed_table: wrote the measured section of {HACKING} (commit {commit})",
          file=sys.stderr)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
