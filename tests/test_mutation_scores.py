"""The mutation score script quotes a table only for a tree that is a commit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parent / "benchmarks" / "mutation_scores.py"


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def _checkout(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    (repo / "mutants" / "pkg").mkdir(parents=True)
    (repo / "mod.py").write_text("x = 1\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "mod.py")
    _git(repo, "commit", "-q", "-m", "one")
    codes = {"pkg.mod.x_f__mutmut_1": 1, "pkg.mod.x_f__mutmut_2": 0, "pkg.mod.x_f__mutmut_3": 5}
    (repo / "mutants" / "pkg" / "mod.py.meta").write_text(json.dumps({"exit_code_by_key": codes}))
    unrun = {"pkg.other.x_g__mutmut_1": None}
    (repo / "mutants" / "pkg" / "other.py.meta").write_text(json.dumps({"exit_code_by_key": unrun}))
    return repo


def _run(repo: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--repo", str(repo), "--mutants", str(repo / "mutants")],
        capture_output=True,
        text=True,
    )


def test_a_clean_tree_prints_its_commit_and_the_table(tmp_path: Path) -> None:
    repo = _checkout(tmp_path)
    done = _run(repo)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"measured commit: {_git(repo, 'rev-parse', 'HEAD')}"
    assert lines[-2:] == [
        "| pkg/mod.py | 3 | 1 | 1 | 1 | 0 | 33.3% |",
        "| pkg/other.py | 1 | 0 | 0 | 0 | 1 | not run |",
    ]


def test_a_modified_tracked_file_refuses_the_table(tmp_path: Path) -> None:
    repo = _checkout(tmp_path)
    (repo / "mod.py").write_text("x = 2\n")
    (repo / "untracked.py").write_text("")  # untracked files do not change what was measured
    done = _run(repo)
    head = _git(repo, "rev-parse", "HEAD")[:12]
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == (
        f"mutation_scores: error: 1 tracked file(s) differ from commit {head} (mod.py): "
        "commit them and run mutmut again\n"
    )
