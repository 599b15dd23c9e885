"""Regenerate the key table of docs/configuration.md from the settings schema, and the
module map of HACKING.md from the package's files and their docstrings.

python docs/generate.py          # rewrite the generated parts
python docs/generate.py --check  # exit 1 when one is stale (the tests run this)
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TARGET = HERE / "configuration.md"
BEGIN = "<!-- BEGIN GENERATED: settings keys (python docs/generate.py) -->"
END = "<!-- END GENERATED -->"
HACKING = HERE.parent / "HACKING.md"
MAP_BEGIN = "<!-- BEGIN GENERATED: module map (python docs/generate.py) -->"
PACKAGE = HERE.parent / "mpsctl"

#: keys whose default is worked out from other settings when mpsctl starts
DERIVED = {
    "service.command": "the reference service: `python -m mpsctl serve --demo` on the host "
    "and port of `service.url`",
    "service.log_file": "`$MPSCTL_HOME/service.log` for the reference service, else "
    '`"backend.log"` (relative to `workdir`)',
    "service.token_file": "`$MPSCTL_HOME/token` for the reference service (created on first "
    "start), else unset",
}


def toml_value(value: Any) -> str:
    """A default as it would be written in mpsctl.toml."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float) and value.is_integer():
        return f"`{int(value)}`"
    if isinstance(value, (int, float)):
        return f"`{value}`"
    if isinstance(value, str):
        return f'`"{value}"`'
    if isinstance(value, tuple):
        return "`[" + ", ".join(toml_value(v).strip("`") for v in value) + "]`"
    if isinstance(value, dict):  # an inline table
        pairs = (f"{k} = {toml_value(v).strip('`')}" for k, v in value.items())
        return "`{" + ", ".join(pairs) + "}`"
    raise TypeError(f"no TOML form for {value!r}")


def table() -> str:
    """The generated Markdown: one table per section of the schema."""
    sys.path.insert(0, str(HERE.parent))
    from mpsctl.settings_schema import SCHEMA, env_name

    out: list[str] = []
    for section, keys in SCHEMA.items():
        out += [f"### `[{section}]`", "", "| key | environment | default | meaning |"]
        out.append("|---|---|---|---|")
        for name, key in keys.items():
            dotted = f"{section}.{name}"
            # a bare object() is the schema's marker for a derived default; a new derived
            # key needs its sentence in DERIVED (a KeyError here says which)
            derived = type(key.default) is object
            default = DERIVED[dotted] if derived else toml_value(key.default)
            meaning = key.help.replace("|", "\\|")
            out.append(f"| `{name}` | `{env_name(dotted)}` | {default} | {meaning} |")
        out.append("")
    return "\n".join(out)


def module_map() -> str:
    """Every module of the package, in the order of its folders, with the first sentence of
    its docstring: the map is as current as the tree and its docstrings."""
    lines = []
    for path in sorted(PACKAGE.rglob("*.py"), key=lambda p: (p.parent.parts, p.name)):
        docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        paragraph = " ".join(docstring.split("\n\n")[0].split())
        sentence = paragraph.split(". ")[0].rstrip(".")
        lines.append(f"- `{path.relative_to(PACKAGE.parent).as_posix()}`: {sentence}.")
    return "\n".join(lines) + "\n"


def render(current: str, begin: str, generated: str, where: Path) -> str:
    """``current`` with the text between ``begin`` and the end marker replaced."""
    head, found, rest = current.partition(begin)
    if not found or END not in rest:
        raise SystemExit(f"{where}: the markers {begin!r} and {END!r} are missing")
    tail = rest.split(END, 1)[1]
    return f"{head}{begin}\n{generated}{END}{tail}"


def main(argv: list[str]) -> int:
    stale = []
    for target, begin, generate in ((TARGET, BEGIN, table), (HACKING, MAP_BEGIN, module_map)):
        current = target.read_text(encoding="utf-8")
        wanted = render(current, begin, generate(), target)
        if "--check" in argv:
            if current != wanted:
                stale.append(target.name)
        else:
            target.write_text(wanted, encoding="utf-8")
    if stale:
        print(f"stale: {', '.join(stale)}; run: python docs/generate.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
