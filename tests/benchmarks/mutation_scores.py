"""Per-module mutation scores from a finished ``mutmut run`` (reads ``mutants/**/*.meta``).

Usage, from the repository root after ``mutmut run`` (see HACKING.md, "Mutation testing")::

    python tests/benchmarks/mutation_scores.py            # a Markdown table
    python tests/benchmarks/mutation_scores.py --survivors  # and the surviving mutants' names

score = (killed + timeout) / mutants. A mutant no test reaches counts against the score,
as a gap. Survivors listed in ``ACCEPTED`` (each with why) are shown, but still counted.

The table is headed by the commit it measured. A table is only worth quoting for a tree
that is a commit, so the script refuses (exit 2, one line) while a tracked file differs
from HEAD: commit, run ``mutmut run`` again, then print the table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

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
    "mpsctl.deaths.allocator.x__parse_cuda__mutmut_19": (
        "`group('procs') or ''` -> `or 'XXXX'`: the group always matches (maybe empty), and "
        "'XXXX' holds no process line either"
    ),
    "mpsctl.deaths.allocator.x_parse_oom__mutmut_43": (
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
    "mpsctl.deaths.kernel_oom.x__records__mutmut_33": (
        "the `'kernel' in line` guard -> always try the kernel-tag pattern: the pattern "
        "itself needs 'kernel', the guard only saves time"
    ),
    "mpsctl.deaths.kernel_oom.x_find_kernel_kills__mutmut_51": (
        "the 'invoked oom-killer' guard -> always: the pattern itself needs those words"
    ),
    "mpsctl.deaths.kernel_oom.x_find_kernel_kills__mutmut_67": (
        "the 'Killed process' guard -> always: the pattern itself needs those words"
    ),
    "mpsctl.deaths.kernel_oom.x_find_kernel_kills__mutmut_144": (
        "the 'oom-kill:' guard -> always: the pattern itself needs 'oom-kill:'"
    ),
    "mpsctl.deaths.kernel_oom.x_find_kernel_kills__mutmut_202": (
        "the 'killed as a result' guard -> always: the pattern itself needs those words"
    ),
    "mpsctl.deaths.kernel_oom.x_find_kernel_kills__mutmut_257": (
        "the 'sacrifice child' guard -> always: the pattern itself needs those words"
    ),
    "mpsctl.deaths.kernel_oom.x__records__mutmut_28": (
        "`prefix and prefix.end()` -> always slice: the prefix pattern always matches (every "
        "part is optional), and `line[0:]` is `line` itself, so the kernel-tag fallback "
        "still runs when no prefix was cut"
    ),
    "mpsctl.deaths.kernel_oom.x__records__mutmut_29": "`prefix or prefix.end()`: as _28",
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
    "mpsctl.deaths.records.x_leads__mutmut_4": (
        "`pos < len(data)` -> `<=`: pos is a newline's index or the message's end, so it "
        "equals len(data) only for a message at the very end, whose next line is empty "
        "and ends the search with None either way"
    ),
    "mpsctl.deaths.records.x_leads__mutmut_20": (
        "`nxt < 0` -> `nxt <= 0`: find() starts at pos + 1 >= 1, so nxt is never 0"
    ),
    "mpsctl.deaths.records.x_leads__mutmut_21": "`nxt < 0` -> `nxt < 1`: as _20",
    "mpsctl.deaths.records.x_leads__mutmut_40": "`if nxt < 0` -> `nxt <= 0`: as _20",
    "mpsctl.deaths.records.x_leads__mutmut_41": "`if nxt < 0` -> `nxt < 1`: as _20",
    "mpsctl.deaths.records.x_leads__mutmut_31": (
        "decode('utf-8', ...) -> decode(...): UTF-8 is the default"
    ),
    "mpsctl.deaths.records.x_leads__mutmut_34": (
        "the codec name 'utf-8' -> 'UTF-8': Python's codec lookup ignores case"
    ),
    "mpsctl.server.auth.x_bearer_ok__mutmut_16": (
        "the codec name 'ascii' -> 'ASCII': Python's codec lookup ignores case"
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


def measured_commit(root: Path) -> tuple[str, list[str]]:
    """HEAD's hash at *root* and the tracked files that differ from it (staged or not)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, check=True
        ).stdout

    head = git("rev-parse", "HEAD").strip()
    changed = [
        line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines()
    ]
    return head, changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mutants", type=Path, default=Path("mutants"))
    parser.add_argument("--survivors", action="store_true", help="list surviving mutants")
    parser.add_argument("--repo", type=Path, default=Path("."), help="the measured checkout")
    args = parser.parse_args(argv)
    try:
        commit, changed = measured_commit(args.repo)
    except (OSError, subprocess.CalledProcessError):
        print(f"mutation_scores: error: {args.repo} is not a git checkout", file=sys.stderr)
        return 2
    if changed:
        print(
            f"mutation_scores: error: {len(changed)} tracked file(s) differ from commit "
            f"{commit[:12]} ({', '.join(sorted(changed)[:3])}"
            f"{', ...' if len(changed) > 3 else ''}): commit them and run mutmut again",
            file=sys.stderr,
        )
        return 2
    metas = sorted(args.mutants.rglob("*.py.meta"))
    if not metas:
        print(f"no mutmut results under {args.mutants}/: run `mutmut run` first", file=sys.stderr)
        return 1
    print(f"measured commit: {commit}")
    print("| module | mutants | killed + timeout | survived | no tests | not checked | score |")
    print("|---|---|---|---|---|---|---|")
    listed: list[str] = []
    for meta in metas:
        counts, survivors = status_counts(meta)
        total = sum(counts.values())
        caught = counts["killed"] + counts["timeout"]
        score = f"{100 * caught / total:.1f}%" if total else "-"
        if counts["not checked"] == total:
            score = "not run"
        elif counts["not checked"]:
            score += " (partial run)"
        print(
            f"| {module_of(meta, args.mutants)} | {total} | {caught} | {counts['survived']} "
            f"| {counts['no tests']} | {counts['not checked']} | {score} |"
        )
        listed += survivors
    if args.survivors:
        for name in listed:
            why = ACCEPTED.get(name)
            print(f"{name}" + (f"  (accepted: {why})" if why else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
