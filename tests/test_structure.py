"""The house's shape, drawn from the source: floors, no circles, rooms that say what they hold.

The import graph is read with ``ast`` from every module under ``mpsctl/`` (imports inside
functions and under ``TYPE_CHECKING`` included: a lazy import is still an arrow). A room is a
package directly under ``mpsctl/`` or a top-level module; the floors below are the ones
HACKING.md names, lowest first.
"""

from __future__ import annotations

import ast
import itertools
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mpsctl"

FLOORS: tuple[tuple[str, ...], ...] = (
    ("mpsctl", "errors", "units", "logtime", "durations", "paths", "storage", "tokens", "torch_env",
     "masking", "setting_values", "settings_schema", "settings", "settings_services", "service",
     "service_env", "contrib"),
    ("observe", "client", "server"),
    ("plan", "ask"),
    ("deaths", "stress_results"),
    ("probe", "host_probe"),
    ("control", "stress"),
    ("monitor",),
    ("render",),
    ("cli", "__main__", "entry"),
)  # fmt: skip
#: pairs of names one letter apart that stay: ``cli/serve.py`` is the ``mpsctl serve`` command
#: (command modules are named for their command) and ``server/`` is what it runs
ONE_LETTER_ALLOWED = {frozenset({"serve", "server"})}
#: every memory-death parser's entry point and the one counting rule, by the module that holds it
DEATH_ENTRIES = {
    "parse_oom": "allocator",
    "find_torch_errors": "torch_errors",
    "find_kernel_kills": "kernel_oom",
    "find_oomd": "systemd_oomd",
    "find_jetsam": "jetsam",
    "find_worker_kills": "worker_kills",
    "find_deaths": "parsers",
    "merge": "counting",
}
#: words only a memory-death parser looks for in log text
DEATH_WORDS = re.compile(r"oom|out of memory|killed process|jetsam|sigkill|cpuallocator", re.I)


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(package: Path = PACKAGE) -> dict[str, Path]:
    return {module_name(p, package): p for p in sorted(package.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The mpsctl modules ``name`` imports (``from a import b`` is ``a.b`` when that is one)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            for alias in node.names:
                if f"{source}.{alias.name}" in known:
                    found.add(f"{source}.{alias.name}")
                elif source in known:
                    found.add(source)
    found.discard(name)
    return found


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    mods = modules(package)
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def room_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    rooms: dict[str, set[str]] = defaultdict(set)
    for source, targets in graph.items():
        rooms[room(source)].update(room(t) for t in targets if room(t) != room(source))
    return dict(rooms)


def floor_of() -> dict[str, int]:
    return {name: level for level, names in enumerate(FLOORS) for name in names}


def one_letter_apart(a: str, b: str) -> bool:
    """Levenshtein distance exactly 1: one letter changed, added or removed."""
    if abs(len(a) - len(b)) > 1 or a == b:
        return False
    if len(a) == len(b):
        return sum(x != y for x, y in zip(a, b, strict=True)) == 1
    short, long = sorted((a, b), key=len)
    return any(long[:i] + long[i + 1 :] == short for i in range(len(long)))


# --------------------------------------------------------------------------- the tests
def test_every_room_stands_on_a_declared_floor() -> None:
    floors = floor_of()
    assert sorted({room(m) for m in modules()} - set(floors)) == []


def test_no_import_runs_back_up_a_floor() -> None:
    floors = floor_of()
    upward = sorted(
        f"{source} -> {target}"
        for source, targets in import_graph().items()
        for target in targets
        if floors.get(room(target), -1) > floors.get(room(source), -1)
    )
    assert upward == []


def test_no_circles_between_modules_or_between_rooms() -> None:
    graph = import_graph()
    assert circles(graph) == []
    assert circles(room_graph(graph)) == []


def test_observe_holds_at_most_twelve_modules() -> None:
    assert len(list((PACKAGE / "observe").rglob("*.py"))) <= 12


def test_the_deaths_package_holds_every_parser_and_the_counting_rule() -> None:
    defined: dict[str, set[str]] = defaultdict(set)
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef) and node.name in DEATH_ENTRIES:
                defined[node.name].add(name)
    assert dict(defined) == {
        entry: {f"mpsctl.deaths.{module}"} for entry, module in DEATH_ENTRIES.items()
    }


def test_no_pattern_outside_deaths_reads_a_memory_death() -> None:
    """A regex about OOM kills, jetsam or allocator failures outside deaths/ is a parser in
    the wrong room."""
    misplaced = []
    for name, path in modules().items():
        if room(name) == "deaths":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "compile"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
                and DEATH_WORDS.search(node.args[0].value)
            ):
                misplaced.append(f"{name}:{node.lineno}")
    assert misplaced == []


def test_no_two_module_names_differ_by_one_letter() -> None:
    names = {name.rsplit(".", 1)[-1] for name in modules()}
    close = [
        (a, b)
        for a, b in itertools.combinations(sorted(names), 2)
        if one_letter_apart(a, b) and frozenset({a, b}) not in ONE_LETTER_ALLOWED
    ]
    assert close == []


def test_the_rules_can_fail() -> None:
    """The checks above on a tiny house with each fault: they must all see it."""
    graph = {"mpsctl.a": {"mpsctl.b"}, "mpsctl.b": {"mpsctl.a"}, "mpsctl.c": set()}
    assert circles(graph) == [["mpsctl.a", "mpsctl.b"]]
    assert one_letter_apart("death", "deaths")
    assert one_letter_apart("match", "watch")
    assert not one_letter_apart("oom", "ram")


def hacking_layout() -> str:
    text = (ROOT / "HACKING.md").read_text(encoding="utf-8")
    start = text.index("## Layout and rules")
    return text[start : text.index("\n## ", start + 1)]


def test_hacking_names_the_floors_this_test_enforces() -> None:
    """HACKING's numbered list of floors, room by room, is FLOORS."""
    floors = []
    for line in re.findall(r"^  \d\. (.*(?:\n     .*)*)", hacking_layout(), re.M):
        names = re.findall(r"`(?:mpsctl/)?([A-Za-z_]+)(?:\.py|/)`", line.split(";")[0])
        names += re.findall(r"`([a-z_]+)/`", ";".join(line.split(";")[1:]))
        floors.append(tuple("mpsctl" if n == "__init__" else n for n in names))
    assert [set(f) for f in floors] == [set(f) for f in FLOORS]


def test_hacking_module_map_lists_every_module_and_no_other() -> None:
    generated = hacking_layout().split("<!-- BEGIN GENERATED: module map", 1)[1]
    listed = re.findall(r"^- `(mpsctl/[^`]+\.py)`: ", generated.split("<!-- END", 1)[0], re.M)
    on_disk = sorted(p.relative_to(ROOT).as_posix() for p in PACKAGE.rglob("*.py"))
    assert sorted(listed) == on_disk


def test_every_module_says_what_it_holds() -> None:
    silent = [name for name, path in modules().items()
              if not ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))]  # fmt: skip
    assert silent == []
