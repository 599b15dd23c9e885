"""Per-module mutation scores from a finished ``mutmut run`` (reads ``mutants/**/*.meta``).

Usage, from the repository root (see HACKING.md, "Mutation testing")::

    python tests/benchmarks/mutation_scores.py run mpsctl/deaths/counting.py ...  # or: run all
    python tests/benchmarks/mutation_scores.py              # a Markdown table
    python tests/benchmarks/mutation_scores.py --survivors  # and the surviving mutants' names

score = (killed + timeout) / mutants. A mutant no test reaches counts against the score,
as a gap. Timeouts are shown on their own too: a test that runs torch in mutmut's forked
worker can spin in torch's OpenMP threads until mutmut's CPU limit kills it, whatever the
mutant (plan/arch.py's mutants all "timed out" so; with ``OMP_NUM_THREADS=1`` in the
environment of ``run`` they run normally, and most of those survive). Survivors
listed in ``ACCEPTED`` (each with why) are shown, but still counted.

``run`` wraps ``mutmut run`` over whole modules and records, next to mutmut's results
(``mutants/measured.json``), what each module was measured from: the commit, a hash of the
module, of every selected test file and of the ``[tool.mutmut]`` table. It refuses to start
while any of those files differs from that commit. The table names each module's commit, and
the script refuses (exit 2, one line) to print it while a measured module, a selected test
file or the configuration differs from what was measured; a module whose results were not
recorded by ``run`` (run by mutmut itself, or a ``run`` interrupted) gets no score. A later
commit that changes only other files can still quote the table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

#: what ``run`` recorded, per module, next to mutmut's results
RECORD = "measured.json"
#: the configuration's pseudo-path among the hashed files
CONFIG_KEY = "pyproject.toml [tool.mutmut]"

# mutmut 3.8.1's exit-code meanings (mutmut/stats.py, status_by_exit_code)
_STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 36: "timeout"}
_STATUS.update(dict.fromkeys((-24, 24, 152, 255), "timeout"))

#: survivors that only change wording or cannot change behaviour, each with the reason
#: (mutmut numbers mutants per function: re-check the names when that function changes)
ACCEPTED: dict[str, str] = {
    "mpsctl.observe.macos.x_parse_vm_stat__mutmut_12": (
        "`page_size <= 0` -> `<= 1`: only a page size of exactly 1 byte tells them apart, "
        "which no vm_stat prints (4096 or 16384)"
    ),
    "mpsctl.observe.macos.x_parse_vm_stat__mutmut_25": (
        "the error message quotes 61 instead of 60 characters of the bad line: wording only"
    ),
    "mpsctl.logtime.x_line_time__mutmut_7": (
        "no end bound on the stamp search: a stamp found past the bound starts after "
        "character 64 and is refused anyway; the bound only saves scanning long lines"
    ),
    "mpsctl.logtime.x_line_time__mutmut_10": (
        "the search bound 104 -> 105: the longest stamp (36 characters) starting at 64 ends "
        "at 100, inside either bound"
    ),
    "mpsctl.logtime.x_line_time__mutmut_83": (
        "offset minutes `digits[2:4]` -> `digits[2:5]`: the regex gives exactly 4 digits"
    ),
    "mpsctl.torch_env.x_command_checks__mutmut_30": (
        "`url_host or ''` -> `or 'XXXX'`: neither string is 0.0.0.0 or ::, so no warning changes"
    ),
    "mpsctl.torch_env.x_env_checks__mutmut_84": (
        "`0.0 <= low` -> `0.0 < low` before the low-above-high check: a low of exactly 0.0 "
        "is never above any ceiling (all are >= 0), so the check finds nothing either way"
    ),
    "mpsctl.torch_env.x_env_checks__mutmut_152": (
        "the default of an unset PYTORCH_ENABLE_MPS_FALLBACK, '' -> 'XXXX': neither is '1'"
    ),
    "mpsctl.deaths.allocator.x__line_span__mutmut_4": (
        "`rfind('\\n', 0, start)` -> `rfind('\\n', None, start)`: None means 0 here"
    ),
    "mpsctl.deaths.allocator.x__line_span__mutmut_23": (
        "`last < 0` -> `last <= 0`: `last` is a newline found at or after the match's end, "
        "which is > 0, so it is never 0"
    ),
    "mpsctl.deaths.allocator.x__line_span__mutmut_24": "`last < 0` -> `last < 1`: as _23",
    "mpsctl.deaths.allocator.x__parse_cuda__mutmut_41": (
        "`group('procs') or ''` -> `or 'XXXX'`: the group always matches (maybe empty), and "
        "'XXXX' holds no process line either"
    ),
    "mpsctl.deaths.allocator.x_parse_oom__mutmut_48": (
        "the ratio's trailing punctuation set gains 'X': PyTorch prints the ratio as a number, "
        "which never ends in X"
    ),
    "mpsctl.deaths.allocator.x_short_size__mutmut_33": (
        "rstrip('0') -> rstrip('XX0XX'): a formatted float never ends in X"
    ),
    "mpsctl.deaths.allocator.x_short_size__mutmut_34": (
        "rstrip('.') -> rstrip('XX.XX'): a formatted float never ends in X"
    ),
    "mpsctl.deaths.kernel_oom.x__records__mutmut_2": (
        "the first `previous_len` 0 -> None: read only when `joinable`, which is False until "
        "a first line has set both"
    ),
    "mpsctl.deaths.kernel_oom.x__records__mutmut_3": "the first `previous_len` 0 -> 1: as _2",
    "mpsctl.deaths.kernel_oom.x__records__mutmut_4": (
        "the first `joinable` False -> None: both are false"
    ),
    "mpsctl.deaths.kernel_oom.x__records__mutmut_5": (
        "the first `joinable` False -> True: the first line still cannot join, as the "
        "previous length (0) is below the 64-column wrap"
    ),
    "mpsctl.deaths.kernel_oom.x__records__mutmut_43": (
        "the `'kernel' in line` guard -> always try the kernel-tag pattern: the pattern "
        "itself needs 'kernel', the guard only saves time"
    ),
    "mpsctl.deaths.kernel_oom.x_find_kernel_kills__mutmut_51": (
        "the 'invoked oom-killer' guard -> always: the pattern itself needs those words"
    ),
    "mpsctl.deaths.kernel_oom.x_find_kernel_kills__mutmut_68": (
        "the 'Killed process' guard -> always: the pattern itself needs those words"
    ),
    "mpsctl.deaths.kernel_oom.x_find_kernel_kills__mutmut_148": (
        "the 'oom-kill:' guard -> always: the pattern itself needs 'oom-kill:'"
    ),
    "mpsctl.deaths.kernel_oom.x_find_kernel_kills__mutmut_206": (
        "the 'killed as a result' guard -> always: the pattern itself needs those words"
    ),
    "mpsctl.deaths.kernel_oom.x_find_kernel_kills__mutmut_261": (
        "the 'sacrifice child' guard -> always: the pattern itself needs those words"
    ),
    "mpsctl.deaths.kernel_oom.x__records__mutmut_38": (
        "`prefix and prefix.end()` -> always slice: the prefix pattern always matches (every "
        "part is optional), and `line[0:]` is `line` itself, so the kernel-tag fallback "
        "still runs when no prefix was cut"
    ),
    "mpsctl.deaths.kernel_oom.x__records__mutmut_39": "`prefix or prefix.end()`: as _38",
    "mpsctl.deaths.kernel_oom.x__stamp__mutmut_7": (
        "zone utc -> None (the local zone) for naive stamps: only differences between two "
        "stamps of one log count, and one zone shifts both (tests run in UTC)"
    ),
    "mpsctl.deaths.kernel_oom.x__stamp__mutmut_10": "zone left out (None): as _7",
    "mpsctl.deaths.kernel_oom.x__read_killed__mutmut_3": (
        "the scratch record's `start` -> None: _read_killed never reads it"
    ),
    "mpsctl.deaths.kernel_oom.x__read_killed__mutmut_55": (
        "`group('rest') or ''` -> `or 'XXXX'`: 'XXXX' holds no figure either"
    ),
    "mpsctl.server.auth.x_redact_query__mutmut_18": (
        "the step over the split parts 2 -> 1 also visits the separators ('&', ';'), which "
        "hold no '=' and so are never rewritten"
    ),
    "mpsctl.tokens.x_read_token_text__mutmut_18": (
        "the codec name 'utf-8' -> 'UTF-8': Python's codec lookup ignores case"
    ),
    "mpsctl.deaths.systemd_oomd.x_find_oomd__mutmut_4": (
        "the first `last_unit_line` -2 -> 2: it is compared only while the last event is a "
        "unit note, which has set it"
    ),
    "mpsctl.deaths.systemd_oomd.x_find_oomd__mutmut_5": "the first `last_unit_line` -> -3: as _4",
    "mpsctl.deaths.systemd_oomd.x_find_oomd__mutmut_41": (
        "the figures searched from the line's start, not from the cgroup's end: their words "
        "hold spaces, so they cannot stand inside the cgroup path, and before it stands "
        "only the program's prefix and the verb"
    ),
    "mpsctl.deaths.systemd_oomd.x_find_oomd__mutmut_82": (
        "`rsplit('/', 1)[-1]` -> `rsplit('/')[-1]`: the last part is the same"
    ),
    "mpsctl.deaths.systemd_oomd.x_find_oomd__mutmut_85": (
        "`rsplit('/', 1)[-1]` -> `rsplit('/', 2)[-1]`: the last part is the same"
    ),
    "mpsctl.plan.limit.x_mps_limit__mutmut_34": (
        "the placeholder limit (0) or source ('') of the base record: every path that "
        "returns replaces both"
    ),
    "mpsctl.plan.limit.x_mps_limit__mutmut_35": (
        "the placeholder limit (0) or source ('') of the base record: every path that "
        "returns replaces both"
    ),
    "mpsctl.plan.limit.x_mps_limit__mutmut_57": (
        "the placeholder limit (0) or source ('') of the base record: every path that "
        "returns replaces both"
    ),
    "mpsctl.plan.limit.x_mps_limit__mutmut_58": (
        "the placeholder limit (0) or source ('') of the base record: every path that "
        "returns replaces both"
    ),
    "mpsctl.plan.limit.x_cuda_limit__mutmut_17": (
        "the placeholder limit (0) or source ('') of the base record: every path that "
        "returns replaces both"
    ),
    "mpsctl.plan.limit.x_cuda_limit__mutmut_18": (
        "the placeholder limit (0) or source ('') of the base record: every path that "
        "returns replaces both"
    ),
    "mpsctl.plan.limit.x_cuda_limit__mutmut_34": (
        "the placeholder limit (0) or source ('') of the base record: every path that "
        "returns replaces both"
    ),
    "mpsctl.plan.limit.x_cuda_limit__mutmut_35": (
        "the placeholder limit (0) or source ('') of the base record: every path that "
        "returns replaces both"
    ),
    "mpsctl.deaths.systemd_oomd.x_find_oomd__mutmut_91": (
        "units' `rsplit('/', 1)[-1]` -> `rsplit('/')[-1]`: the last part is the same"
    ),
    "mpsctl.deaths.systemd_oomd.x_find_oomd__mutmut_94": (
        "units' `rsplit('/', 1)[-1]` -> `rsplit('/', 2)[-1]`: the last part is the same"
    ),
    "mpsctl.deaths.records.x_follows__mutmut_5": (
        "`pos > 0` -> `pos > 1`: at pos 1 the line above is the empty first line, which "
        "ends the search with None either way"
    ),
    "mpsctl.deaths.records.x_follows__mutmut_10": (
        "`rfind(b'\\n', 0, end)` -> `rfind(b'\\n', None, end)`: None means 0 here"
    ),
    "mpsctl.deaths.records.x_follows__mutmut_17": (
        "`rfind(b'\\n', 0, end)` -> `rfind(b'\\n', 1, end)`: misses only a newline at byte 0; "
        "the line then starts with that newline, which counts as indented and ends the "
        "search at pos 0 with None, as the empty line would; a Traceback line is still "
        "found by its end"
    ),
    "mpsctl.deaths.jetsam.x__find_ips__mutmut_59": (
        "`text.count('\\n', 0, start)` -> `count('\\n', None, start)`: None means 0 here"
    ),
    "mpsctl.deaths.jetsam.x__enclosing_object__mutmut_3": (
        "the default start 0 -> None: `text[None:end]` is `text[0:end]`"
    ),
    "mpsctl.deaths.jetsam.x__enclosing_object__mutmut_34": (
        "the default end len(text) -> None: `text[start:None]` is `text[start:]`"
    ),
    "mpsctl.deaths.records.x_leads__mutmut_26": (
        "decode('utf-8', ...) -> decode(...): UTF-8 is the default"
    ),
    "mpsctl.deaths.records.x_leads__mutmut_29": (
        "the codec name 'utf-8' -> 'UTF-8': Python's codec lookup ignores case"
    ),
    "mpsctl.server.auth.x_bearer_ok__mutmut_16": (
        "the codec name 'ascii' -> 'ASCII': Python's codec lookup ignores case"
    ),
    "mpsctl.deaths.allocator.x__parse_cuda__mutmut_10": (
        "the head's group 2 -> 3 as the test for the first form: the number (2) and its unit "
        "(3) match together or not at all"
    ),
    "mpsctl.deaths.allocator.x__parse_cuda__mutmut_26": (
        "`group('api') or ''` -> `or 'XXXX'`: neither is a key of _BACKENDS, both give 'cuda'"
    ),
    "mpsctl.deaths.kernel_oom.x__records__mutmut_26": (
        "the '   ' guard -> always strip terminal padding: the pattern needs 24 spaces in a "
        "row, the guard only saves time"
    ),
    "mpsctl.observe.processes.matching.x__proc_command_lines__mutmut_13": (
        "the read size 1 << 16 -> 2 << 16: the loop reads to the end of the file either way"
    ),
    "mpsctl.observe.processes.matching.x__proc_command_lines__mutmut_14": (
        "the read size 1 << 16 -> 1 << 17: as _13"
    ),
    "mpsctl.observe.processes.matching.x_is_the_service__mutmut_9": (
        "the candidate's pidfile_argv -> None: is_service never reads it (whether the argv is "
        "the pidfile's reaches it as argv_same)"
    ),
    "mpsctl.observe.processes.matching.x_is_the_service__mutmut_19": "as _9",
    "mpsctl.observe.processes.matching.x_argv_port__mutmut_13": (
        "the word after the last one '' -> 'XXXX': neither is a port nor a host:port"
    ),
    "mpsctl.observe.processes.pidfile.x_read_pidfile__mutmut_5": (
        "follow=False -> follow=None: read_regular only tests it for truth"
    ),
    "mpsctl.observe.processes.pidfile.x_read_pidfile__mutmut_11": (
        "the codec name 'utf-8' -> 'UTF-8': Python's codec lookup ignores case"
    ),
    "mpsctl.setting_values.x_parse_url__mutmut_37": (
        "the port's top bound 65535 -> 65536: urlsplit's .port raises ValueError above 65535 "
        "(read as port 0, refused), so 65536 never reaches the comparison"
    ),
    "mpsctl.setting_values.x_parse_opt_size__mutmut_18": (
        "the letters stripped off the unit gain 'X' twice and a space: both are in the set already"
    ),
    "mpsctl.deaths.counting.x__in_line_order__mutmut_8": (
        "`line or 0` -> `line or 1`: only a line of None reaches the `or`, and those all sort "
        "after the numbered ones by the first key, among themselves by index"
    ),
}


def module_of(meta: Path, root: Path) -> str:
    return str(meta.relative_to(root).with_suffix("").with_suffix(".py"))


def status_counts(meta: Path) -> tuple[Counter[str], list[str]]:
    codes = json.loads(meta.read_text(encoding="utf-8"))["exit_code_by_key"]
    counts: Counter[str] = Counter()
    survivors = []
    for name, code in codes.items():
        status = "not checked" if code is None else _STATUS.get(code, "suspicious")
        counts[status] += 1
        if status == "survived":
            survivors.append(name)
    return counts, sorted(survivors)


def _git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True, check=True
    ).stdout


def mutmut_config(root: Path) -> dict[str, Any]:
    with (root / "pyproject.toml").open("rb") as f:
        table: dict[str, Any] = tomllib.load(f).get("tool", {}).get("mutmut", {})
    return table


def file_hashes(root: Path, config: dict[str, Any], module: str) -> dict[str, str]:
    """sha256 of what a module's verdicts depend on: the module, each selected test file (or
    folder) and the configuration (a missing file hashes as "missing")."""

    def digest(path: str) -> str:
        target = root / path
        if target.is_dir():  # a selected folder: every file in it, by name
            h = hashlib.sha256()
            for file in sorted(p for p in target.rglob("*") if p.is_file()):
                if "__pycache__" not in file.parts:
                    h.update(f"{file.relative_to(target)}\0".encode() + file.read_bytes())
            return h.hexdigest()
        try:
            return hashlib.sha256(target.read_bytes()).hexdigest()
        except FileNotFoundError:
            return "missing"

    hashes = {module: digest(module)}
    for test in config.get("pytest_add_cli_args_test_selection", []):
        hashes[test] = digest(test)
    canonical = json.dumps(config, sort_keys=True).encode()
    hashes[CONFIG_KEY] = hashlib.sha256(canonical).hexdigest()
    return hashes


def mutant_pattern(module: str) -> str:
    """mutmut's name pattern for every mutant of ``module`` (``pkg/mod.py`` ->
    ``pkg.mod.x*``: functions are ``x_name``, methods ``xǁClassǁname``)."""
    return module.removesuffix(".py").replace("/", ".") + ".x*"


def run(root: Path, modules: list[str], max_children: int) -> int:
    """``mutmut run`` over whole modules, then record what each was measured from."""
    config = mutmut_config(root)
    configured = list(config.get("only_mutate", []))
    if modules == ["all"]:
        modules = configured
    unknown = [m for m in modules if m not in configured]
    if unknown:
        print(f"mutation_scores: error: not in only_mutate: {', '.join(unknown)}", file=sys.stderr)
        return 2
    commit = _git(root, "rev-parse", "HEAD").strip()
    watched = ["pyproject.toml", *modules, *config.get("pytest_add_cli_args_test_selection", [])]
    changed = _git(root, "status", "--porcelain", "--", *watched).splitlines()
    if changed:
        print(
            f"mutation_scores: error: {len(changed)} measured file(s) differ from commit "
            f"{commit[:12]} ({', '.join(sorted(c[3:] for c in changed)[:3])}): commit first",
            file=sys.stderr,
        )
        return 2
    before = {m: file_hashes(root, config, m) for m in modules}
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    clock = time.monotonic()
    done = subprocess.run(
        ["mutmut", "run", "--max-children", str(max_children), *map(mutant_pattern, modules)],
        cwd=root,
    )
    wall = round(time.monotonic() - clock)
    if done.returncode != 0:
        print(f"mutation_scores: error: mutmut run exited {done.returncode}", file=sys.stderr)
        return done.returncode
    write_record(root / "mutants", before, commit=commit, started=started, wall_s=wall)
    print(f"recorded {len(modules)} module(s) at {commit[:12]}: {wall} s wall")
    return 0


def write_record(
    mutants: Path, hashes: dict[str, dict[str, str]], *, commit: str, started: str, wall_s: int
) -> None:
    """Record, per module in ``hashes``, the files it was measured from (kept for others)."""
    path = mutants / RECORD
    record = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    for module, files in hashes.items():
        record[module] = {
            "commit": commit,
            "started": started,
            "wall_s": wall_s,
            "modules_in_run": len(hashes),
            "files": files,
        }
    path.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def stale(root: Path, mutants: Path, modules: list[str]) -> str | None:
    """Why the results under ``mutants`` are not those of this tree's files, or None."""
    path = mutants / RECORD
    record = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    config = mutmut_config(root)
    for module in modules:
        entry = record.get(module)
        if entry is None:
            continue  # listed as "not recorded", with no score
        now = file_hashes(root, config, module)
        differ = sorted(k for k in now.keys() | entry["files"].keys()
                        if now.get(k) != entry["files"].get(k))  # fmt: skip
        if differ:
            return (
                f"{module} was measured at {entry['commit'][:12]}, and "
                f"{', '.join(differ[:3])}{', ...' if len(differ) > 3 else ''} "
                "differ(s) from what was measured: run it again"
            )
    return None


def table(mutants: Path, survivors: bool) -> int:
    metas = sorted(mutants.rglob("*.py.meta"))
    path = mutants / RECORD
    record = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    modules = [module_of(meta, mutants) for meta in metas]
    commits = sorted({record[m]["commit"] for m in modules if m in record})
    for commit in commits:
        print(f"measured at {commit}")
    print(
        "| module | mutants | killed + timeout | of which timeout | survived | no tests "
        "| not checked | score | commit |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    listed: list[str] = []
    for meta in metas:
        counts, names = status_counts(meta)
        total = sum(counts.values())
        caught = counts["killed"] + counts["timeout"]
        score = f"{100 * caught / total:.1f}%" if total else "-"
        if counts["not checked"] == total:
            score = "not run"
        elif counts["not checked"]:
            score += " (partial run)"
        module = module_of(meta, mutants)
        commit = record.get(module, {}).get("commit", "-")[:12]
        if module not in record and counts["not checked"] < total:
            score = "not recorded"  # run by mutmut itself, or an interrupted `run`
        print(
            f"| {module} | {total} | {caught} | {counts['timeout']} | {counts['survived']} "
            f"| {counts['no tests']} | {counts['not checked']} | {score} | {commit} |"
        )
        listed += names
    if survivors:
        for name in listed:
            why = ACCEPTED.get(name)
            print(f"{name}" + (f"  (accepted: {why})" if why else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mutants", type=Path, default=None, help="default: REPO/mutants")
    parser.add_argument("--survivors", action="store_true", help="list surviving mutants")
    parser.add_argument("--repo", type=Path, default=Path("."), help="the measured checkout")
    parser.add_argument("--max-children", type=int, default=2, help="for run")
    parser.add_argument("command", nargs="*", help="run MODULE... (or: run all)")
    args = parser.parse_args(argv)
    mutants = args.mutants or args.repo / "mutants"
    try:
        _git(args.repo, "rev-parse", "HEAD")
    except (OSError, subprocess.CalledProcessError):
        print(f"mutation_scores: error: {args.repo} is not a git checkout", file=sys.stderr)
        return 2
    if args.command:
        if args.command[0] != "run" or len(args.command) < 2:
            print("mutation_scores: error: usage: run MODULE... | run all", file=sys.stderr)
            return 2
        return run(args.repo, args.command[1:], args.max_children)
    metas = sorted(mutants.rglob("*.py.meta"))
    if not metas:
        print(f"no mutmut results under {mutants}/: run `mutmut run` first", file=sys.stderr)
        return 1
    # a module none of whose mutants was run is listed as "not run", and needs no record
    ran = [module_of(m, mutants) for m in metas if status_counts(m)[0].keys() - {"not checked"}]
    why = stale(args.repo, mutants, ran)
    if why:
        print(f"mutation_scores: error: {why}", file=sys.stderr)
        return 2
    return table(mutants, args.survivors)


if __name__ == "__main__":
    sys.exit(main())
