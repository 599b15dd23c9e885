"""The mutation score script quotes a table only for the files that were measured: each
module's results carry the commit and the hashes of the module, the selected test files and
the configuration they were measured from; a change to any of them refuses the table, a
change elsewhere does not."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).parent / "benchmarks" / "mutation_scores.py"

CONFIG = """\
[tool.mutmut]
source_paths = ["pkg"]
only_mutate = ["pkg/mod.py", "pkg/other.py"]
pytest_add_cli_args_test_selection = ["tests/test_mod.py"]
"""


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mutation_scores", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def _commit(repo: Path, message: str) -> str:
    _git(repo, "add", "-A", ".")
    _git(repo, "commit", "-q", "-m", message)
    return _git(repo, "rev-parse", "HEAD")


def _measured(tmp_path: Path, modules: tuple[str, ...] = ("pkg/mod.py", "pkg/other.py")) -> Path:
    """A real checkout whose modules were measured at its first commit (recorded the way
    ``run`` records them after ``mutmut run``)."""
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "tests").mkdir()
    (repo / "pyproject.toml").write_text(CONFIG)
    (repo / "pkg" / "mod.py").write_text("x = 1\n")
    (repo / "pkg" / "other.py").write_text("y = 1\n")
    (repo / "tests" / "test_mod.py").write_text("def test_x(): pass\n")
    (repo / "README").write_text("one\n")
    (repo / ".gitignore").write_text("mutants/\n")
    _git(repo, "init", "-q")
    commit = _commit(repo, "one")
    (repo / "mutants" / "pkg").mkdir(parents=True)
    codes = {"pkg.mod.x_f__mutmut_1": 1, "pkg.mod.x_f__mutmut_2": 0, "pkg.mod.x_f__mutmut_3": 5,
             "pkg.mod.x_f__mutmut_4": -24}  # fmt: skip
    (repo / "mutants" / "pkg" / "mod.py.meta").write_text(json.dumps({"exit_code_by_key": codes}))
    unrun = {"pkg.other.x_g__mutmut_1": None}
    (repo / "mutants" / "pkg" / "other.py.meta").write_text(json.dumps({"exit_code_by_key": unrun}))
    scores = _script()
    config = scores.mutmut_config(repo)
    hashes = {m: scores.file_hashes(repo, config, m) for m in modules}
    scores.write_record(
        repo / "mutants", hashes, commit=commit, started="2026-01-01T00:00:00Z", wall_s=5
    )
    return repo


def _run(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--repo", str(repo), *args],
        capture_output=True,
        text=True,
    )


def test_the_table_names_the_commit_each_module_was_measured_at(tmp_path: Path) -> None:
    repo = _measured(tmp_path)
    head = _git(repo, "rev-parse", "HEAD")
    done = _run(repo)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"measured at {head}",
        "| module | mutants | killed + timeout | of which timeout | survived | no tests "
        "| not checked | score | commit |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| pkg/mod.py | 4 | 2 | 1 | 1 | 1 | 0 | 50.0% | {head[:12]} |",
        f"| pkg/other.py | 1 | 0 | 0 | 0 | 0 | 1 | not run | {head[:12]} |",
    ]


def test_a_later_commit_of_other_files_still_quotes_the_measured_one(tmp_path: Path) -> None:
    repo = _measured(tmp_path)
    measured = _git(repo, "rev-parse", "HEAD")
    (repo / "README").write_text("two\n")
    (repo / "pkg" / "unmeasured.py").write_text("z = 1\n")
    later = _commit(repo, "two")
    (repo / "README").write_text("three, not committed\n")
    done = _run(repo)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == f"measured at {measured}"
    assert later not in done.stdout


def test_a_changed_module_refuses_the_table(tmp_path: Path) -> None:
    repo = _measured(tmp_path)
    head = _git(repo, "rev-parse", "HEAD")
    (repo / "pkg" / "mod.py").write_text("x = 2\n")
    _commit(repo, "two")  # committed or not: the file is not the one measured
    done = _run(repo)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        f"mutation_scores: error: pkg/mod.py was measured at {head[:12]}, and pkg/mod.py "
        "differ(s) from what was measured: run it again\n"
    )


def test_a_changed_test_file_or_configuration_refuses_the_table(tmp_path: Path) -> None:
    repo = _measured(tmp_path)
    (repo / "tests" / "test_mod.py").write_text("def test_x(): assert 1\n")
    done = _run(repo)
    assert (done.returncode, done.stdout) == (2, "")
    assert "pkg/mod.py was measured at" in done.stderr
    assert "tests/test_mod.py differ(s)" in done.stderr
    assert done.stderr.count("\n") == 1
    (repo / "tests" / "test_mod.py").write_text("def test_x(): pass\n")
    assert _run(repo).returncode == 0  # the measured bytes again
    (repo / "pyproject.toml").write_text(CONFIG.replace("tests/test_mod.py", "tests/"))
    done = _run(repo)
    assert done.returncode == 2
    assert "pyproject.toml [tool.mutmut]" in done.stderr


def test_results_not_recorded_by_run_get_no_score(tmp_path: Path) -> None:
    repo = _measured(tmp_path, modules=("pkg/other.py",))
    done = _run(repo)
    assert done.returncode == 0, done.stderr
    assert "| pkg/mod.py | 4 | 2 | 1 | 1 | 1 | 0 | not recorded | - |" in done.stdout.splitlines()


def test_a_module_never_run_needs_no_record(tmp_path: Path) -> None:
    repo = _measured(tmp_path, modules=("pkg/mod.py",))
    done = _run(repo)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "| pkg/other.py | 1 | 0 | 0 | 0 | 0 | 1 | not run | - |"


def test_run_refuses_to_measure_files_that_are_not_committed(tmp_path: Path) -> None:
    repo = _measured(tmp_path)
    head = _git(repo, "rev-parse", "HEAD")
    (repo / "tests" / "test_mod.py").write_text("def test_x(): assert 1\n")
    done = _run(repo, "run", "pkg/mod.py")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        f"mutation_scores: error: 1 measured file(s) differ from commit {head[:12]} "
        "(tests/test_mod.py): commit first\n"
    )
    done = _run(repo, "run", "pkg/nope.py")
    assert (done.returncode, done.stderr) == (
        2,
        "mutation_scores: error: not in only_mutate: pkg/nope.py\n",
    )


def test_a_module_pattern_matches_its_mutants_only() -> None:
    pattern = _script().mutant_pattern("mpsctl/deaths/allocator.py")
    assert pattern == "mpsctl.deaths.allocator.x*"
    from fnmatch import fnmatch

    assert fnmatch("mpsctl.deaths.allocator.x_parse_oom__mutmut_1", pattern)
    assert fnmatch("mpsctl.deaths.allocator.xǁOomEventǁas_dict__mutmut_2", pattern)
    assert not fnmatch("mpsctl.deaths.allocator_advice.x_advice__mutmut_1", pattern)
