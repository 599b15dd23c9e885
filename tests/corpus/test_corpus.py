"""Every text of the memory-death corpus (tests/fixtures/corpus) against the events written
down for it by reading the text, before any scanner ran on it (expected.toml).

Each file is scanned as a log would be; the events that come out (each failure once) must be
exactly the expected ones, in order, with every figure the text states; a near-miss must give
none. Sizes in the expectations are written as the text prints them ("102104 kB", "19.45 GB")
and turned into bytes here with the 1024-based units the kernel and PyTorch use.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import tomllib

from mpsctl.deaths.counting import Found
from mpsctl.deaths.scanner import counts, find_events

CORPUS = Path(__file__).resolve().parents[1] / "fixtures" / "corpus"
EXPECTED: list[dict[str, Any]] = tomllib.loads((CORPUS / "expected.toml").read_text("utf-8"))[
    "file"
]
BY_NAME = {entry["name"]: entry for entry in EXPECTED}

_UNITS = {
    "bytes": 1, "B": 1, "kB": 1024, "KB": 1024, "KiB": 1024,
    "MB": 1024**2, "MiB": 1024**2, "GB": 1024**3, "GiB": 1024**3, "TB": 1024**4, "TiB": 1024**4,
}  # fmt: skip
_SIZE = re.compile(r"^(\d+(?:\.\d+)?) (\w+)$")


def expected_value(key: str, value: Any) -> Any:
    """``"102104 kB"`` -> 104554496 for a ``*_bytes`` field; anything else as written."""
    if key.endswith("_bytes") and isinstance(value, str):
        match = _SIZE.match(value)
        assert match, f"bad size in expected.toml: {value!r}"
        return round(float(match.group(1)) * _UNITS[match.group(2)])
    return value


def found_in(path: Path) -> list[Found]:
    """The failures ``mpsctl oom FILE`` reports for one corpus file, each once."""
    report = find_events([(path.name, path)])
    return [item for item, _advice in report.events]


def corpus_copy(tmp_path: Path, name: str) -> Path:
    """A copy in a fresh folder, so a test never writes next to the recorded text."""
    target = tmp_path / Path(name).name
    shutil.copyfile(CORPUS / name, target)
    return target


def test_every_corpus_file_has_expectations_and_a_source() -> None:
    on_disk = {p.relative_to(CORPUS).as_posix() for p in CORPUS.rglob("*.txt")}
    assert on_disk == set(BY_NAME)
    sources = (CORPUS / "SOURCES.md").read_text("utf-8")
    for entry in EXPECTED:
        assert entry["source"]
        assert entry["what"]
        assert entry["name"] in sources, entry["name"]
    texts = [e for e in EXPECTED if not e["name"].startswith("near/")]
    near = [e for e in EXPECTED if e["name"].startswith("near/")]
    assert len(texts) >= 100
    assert len(near) >= 20
    assert all(e.get("event") for e in texts)
    assert not any(e.get("event") for e in near)


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_corpus_file_gives_exactly_its_expected_events(tmp_path: Path, name: str) -> None:
    entry = BY_NAME[name]
    wanted = entry.get("event", [])
    found = found_in(corpus_copy(tmp_path, name))
    got = [item.to_json() for item in found]
    summary = [(g["kind"], g.get("pid"), g.get("raw", "")[:60]) for g in got]
    assert len(got) == len(wanted), summary
    for index, (doc, expected) in enumerate(zip(got, wanted, strict=True)):
        for key, value in expected.items():
            actual = doc.get(key)
            if key == "pids":
                actual = list(actual or [])
            assert actual == expected_value(key, value), (index, key, doc.get("raw"))
    memory_deaths = sum(1 for e in wanted if not e.get("after_timeout"))
    assert sum(1 for item in found if counts(item)) == memory_deaths
