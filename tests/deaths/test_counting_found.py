"""The counting rule on single found failures, each rule at its boundary: which copies are
one record (an echo within 3 lines, a traceback that continues a message, one stamped
record), which files repeat one failure (within 5.0 s, once per file, up to 8 equal
failures back), systemd's note of a kernel kill (where that kill was seen), what counts,
and the ``mpsctl.oom/1`` document of one failure. Every event is parsed from a recorded
line (tests/fixtures); only places and times are set here, to hold one rule per test."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from mpsctl.deaths.allocator import OomEvent, parse_oom
from mpsctl.deaths.counting import Found, counted, counts, merge
from mpsctl.deaths.parsers import DeathEvent, find_deaths
from tests.conftest import read_fixture


def _oom(name: str) -> OomEvent:
    event = parse_oom(read_fixture(name))
    assert event is not None
    return event


def _death(name: str) -> DeathEvent:
    return find_deaths(read_fixture(name))[0]


MPS_OOM = _oom("torch-mps-oom-3.txt")
WATERMARK = _oom("torch-mps-invalid-low-watermark-1.txt")  # a setting refused, not a death
KILL = _death("linux-oomkill-9-journalctl-python-systemd-unit.txt")  # pid 27241, syslog stamp
OTHER_KILL = _death("linux-oomkill-10-journalctl-python-systemd-killed-status9.txt")  # 36707
NOTE = _death("linux-systemd-unit-oom-1-rsyslog-iso.txt")  # systemd: killed by the OOM killer
OOMD = _death("linux-systemd-oomd-1-journal-user-slice.txt")  # systemd-oomd's own kill

T = datetime(2026, 11, 28, 3, 16, 52, tzinfo=timezone.utc)


def at(seconds: float) -> datetime:
    return T + timedelta(seconds=seconds)


def found(event: object = MPS_OOM, file: str | None = "a.log", line: int | None = 1,
          **where: object) -> Found:  # fmt: skip
    return Found(event=event, file=file, line=line, **where)  # type: ignore[arg-type]


def places(entries: list[Found]) -> list[tuple[tuple[str | None, int | None], ...]]:
    return [e.places or ((e.file, e.line),) for e in entries]


def test_the_events_are_what_the_tests_rely_on() -> None:
    assert (MPS_OOM.kind, WATERMARK.kind) == ("oom", "invalid_low_watermark")
    assert (KILL.kind, KILL.pid, OTHER_KILL.pid) == ("kernel_oom_kill", 27241, 36707)  # type: ignore[union-attr]
    assert (NOTE.kind, NOTE.by, OOMD.kind, OOMD.by) == (  # type: ignore[union-attr]
        "oomd_kill", "kernel", "oomd_kill", "systemd-oomd")  # fmt: skip


# ------------------------------------------------------------------------ one file: records


@pytest.mark.parametrize(("gap", "entries"), [(1, 1), (3, 1), (4, 2), (40, 2)])
def test_an_untimed_echo_within_3_lines_of_the_stamped_line_is_its_copy(
    gap: int, entries: int
) -> None:
    stamped = found(line=10, when=T, stamped=True)
    echo = found(line=10 + gap)
    assert len(merge([stamped, echo])) == entries
    assert len(merge([found(line=10 - gap), replace(stamped, line=10)])) == entries  # above it


def test_a_traceback_ending_below_a_stamped_line_is_not_its_echo() -> None:
    # the untimed line ends a traceback of its own: a new record, however close
    stamped = found(line=10, when=T, stamped=True)
    ending = found(line=12, follows=11)
    assert len(merge([stamped, ending])) == 2
    assert len(merge([replace(stamped, follows=3), found(line=12)])) == 1


def test_two_stamped_lines_are_two_records_even_in_one_second() -> None:
    assert len(merge([found(line=1, when=T, stamped=True),
                      found(line=2, when=T, stamped=True)])) == 2  # fmt: skip
    # the traceback under a stamped line carries its record's time: the same record
    assert len(merge([found(line=1, when=T, stamped=True), found(line=9, when=T)])) == 1
    assert len(merge([found(line=1, when=T, stamped=True), found(line=9, when=at(1))])) == 2


@pytest.mark.parametrize(("follows", "entries"), [(None, 1), (4, 1), (5, 1), (6, 2)])
def test_copies_in_one_stamped_record_unless_a_traceback_began_between(
    follows: int | None, entries: int
) -> None:
    # both untimed lines read their record's time; a traceback that began after the first
    # copy's line is a new failure
    first = found(line=5, when=T)
    assert len(merge([first, found(line=9, when=T, follows=follows)])) == entries


def test_without_line_numbers_a_later_traceback_is_never_inside_the_record() -> None:
    assert len(merge([found(line=None, when=T), found(line=None, when=T, follows=1)])) == 2
    assert len(merge([found(line=None, when=T), found(line=None, when=T)])) == 1


def test_a_message_and_the_traceback_it_leads_into_are_one_in_any_input_order() -> None:
    message = found(line=1, leads=2)
    last_line = found(line=6, follows=2)
    [one] = merge([message, last_line])
    assert (one.line, one.places) == (1, (("a.log", 1), ("a.log", 6)))
    [one] = merge([last_line, message])  # read in line order; the entry keeps input order
    assert (one.line, one.places) == (1, (("a.log", 6), ("a.log", 1)))
    assert len(merge([message, found(line=6, follows=3)])) == 2


def test_a_copy_of_a_copy_is_a_copy_of_the_first() -> None:
    [one] = merge([found(line=5, when=T), found(line=7, when=T), found(line=9, when=T)])
    assert one.places == (("a.log", 5), ("a.log", 7), ("a.log", 9))


def test_lines_without_a_number_are_read_after_the_numbered_ones() -> None:
    # a message without a line number cannot be the one a numbered traceback continues
    message = found(line=None, leads=2)
    assert len(merge([message, found(line=6, follows=2)])) == 2


def test_an_untimed_first_copy_takes_its_stamped_copys_time() -> None:
    [one] = merge([found(line=9), found(line=10, when=T, stamped=True)])
    assert (one.line, one.when, one.places) == (9, T, (("a.log", 9), ("a.log", 10)))


def test_a_failure_seen_once_is_returned_as_found() -> None:
    item = found(line=3, when=T)
    assert merge([item]) == [item]
    assert merge([item])[0].places == ()
    assert merge([]) == []


# --------------------------------------------------------------------- across files: one time


@pytest.mark.parametrize(("seconds", "entries"), [(0, 1), (5, 1), (-5, 1), (5.001, 2), (-6, 2)])
def test_the_same_failure_in_two_files_within_5_seconds_is_one(
    seconds: float, entries: int
) -> None:
    merged = merge([found(file="a.log", when=T), found(file="b.log", when=at(seconds))])
    assert len(merged) == entries
    if entries == 1:
        assert merged[0].places == (("a.log", 1), ("b.log", 1))
        assert merged[0].when == T


def test_a_file_without_times_repeats_no_failure_of_another() -> None:
    assert len(merge([found(file="a.log", when=T), found(file="b.log")])) == 2
    assert len(merge([found(file="a.log"), found(file="b.log", when=T)])) == 2
    assert len(merge([found(file="a.log"), found(file="b.log")])) == 2


def test_equal_failures_in_one_file_are_never_matched_with_each_other() -> None:
    assert len(merge([found(line=1, when=T, stamped=True),
                      found(line=90, when=at(1), stamped=True)])) == 2  # fmt: skip
    # two in one file, the other file holds one of them: it joins the first only
    merged = merge([found(file="a.log", line=1, when=T, stamped=True),
                    found(file="b.log", line=1, when=T, stamped=True),
                    found(file="b.log", line=50, when=at(1), stamped=True)])  # fmt: skip
    assert places(merged) == [(("a.log", 1), ("b.log", 1)), (("b.log", 50),)]


def test_an_untimed_candidate_is_passed_over_for_an_older_timed_one() -> None:
    merged = merge([found(file="a.log", line=1, when=T, stamped=True),
                    found(file="a.log", line=100),
                    found(file="b.log", line=1, when=T, stamped=True)])  # fmt: skip
    assert places(merged) == [(("a.log", 1), ("b.log", 1)), (("a.log", 100),)]


def test_a_copy_is_looked_for_among_the_last_8_equal_failures() -> None:
    own = [found(file="a.log", line=n, when=at(10 * n), stamped=True) for n in range(9)]
    # the ninth from the end is too far back to be looked at
    assert len(merge([*own, found(file="b.log", when=at(0))])) == 10
    assert len(merge([*own, found(file="b.log", when=at(10))])) == 9


def test_different_failures_are_never_merged_however_close() -> None:
    assert len(merge([found(KILL, file="a.log", when=T),
                      found(OTHER_KILL, file="b.log", when=T)])) == 2  # fmt: skip
    assert len(merge([found(KILL, line=1), found(OTHER_KILL, line=2)])) == 2


def test_what_failed_leaves_out_where_when_and_the_wording() -> None:
    here = found(KILL, file="a.log", line=1, when=T)
    moved = replace(KILL, line=40, time=123.0, raw="reworded")
    there = found(moved, file="b.log", line=40, when=at(3))
    assert here.identity() == there.identity()
    assert dict(here.identity())["pid"] == "27241"
    assert here.identity() != found(OTHER_KILL).identity()


# -------------------------------------------------------------- systemd's note of a kernel kill


@pytest.mark.parametrize(("seconds", "entries"), [(0, 1), (5, 1), (-3, 1), (5.5, 2)])
def test_systemds_note_in_another_log_is_where_the_kernel_kill_was_seen(
    seconds: float, entries: int
) -> None:
    kill = found(KILL, file="kern.log", line=1, when=T)
    note = found(NOTE, file="syslog", line=7, when=at(seconds))
    merged = merge([kill, note])
    assert [e.kind for e in merged] == ["kernel_oom_kill", "oomd_kill"][:entries]
    if entries == 1:
        assert merged[0].places == (("kern.log", 1), ("syslog", 7))
    assert [e.kind for e in merge([note, kill])][-1] == "kernel_oom_kill"


def test_the_note_joins_the_first_kernel_kill_near_it() -> None:
    merged = merge([found(KILL, file="kern.log", line=1, when=T),
                    found(OTHER_KILL, file="kern.log", line=9, when=at(2)),
                    found(NOTE, file="syslog", line=7, when=at(1))])  # fmt: skip
    assert places(merged) == [(("kern.log", 1), ("syslog", 7)), (("kern.log", 9),)]


def test_only_a_timed_kernel_kill_takes_only_the_note_of_a_kernel_kill() -> None:
    # systemd-oomd's own kill is a kill of its own
    assert len(merge([found(KILL, file="k", when=T), found(OOMD, file="s", when=at(1))])) == 2
    # an allocator failure at the same time is not the kernel's kill
    assert len(merge([found(MPS_OOM, file="k", when=T), found(NOTE, file="s", when=T)])) == 2
    # without a time, neither can be matched
    assert len(merge([found(KILL, file="k"), found(NOTE, file="s", when=T)])) == 2
    assert len(merge([found(KILL, file="k", when=T), found(NOTE, file="s")])) == 2


def test_folding_the_note_keeps_the_other_failures_in_order() -> None:
    merged = merge([found(MPS_OOM, file="app.log", line=3, when=at(-60)),
                    found(KILL, file="kern.log", line=1, when=T),
                    found(NOTE, file="syslog", line=7, when=T),
                    found(OTHER_KILL, file="kern.log", line=9, when=at(60))])  # fmt: skip
    assert [(e.kind, e.file, e.line) for e in merged] == [
        ("oom", "app.log", 3),
        ("kernel_oom_kill", "kern.log", 1),
        ("kernel_oom_kill", "kern.log", 9),
    ]
    assert merged[1].places == (("kern.log", 1), ("syslog", 7))


# --------------------------------------------------------------------------- what counts


def test_a_refused_watermark_setting_is_found_but_not_counted() -> None:
    assert counts(found(MPS_OOM)) is True
    assert counts(found(WATERMARK)) is False
    assert counts(found(KILL)) is True
    listed = counted([found(WATERMARK, line=1), found(MPS_OOM, line=20)])
    assert [e.kind for e in listed] == ["oom"]


# ------------------------------------------------------------------------- the document


def test_only_the_first_line_of_the_raw_text_says_what_its_stamp_lacks() -> None:
    assert found(KILL, when=T).time_note() == (
        "no year or zone in the log: the log file's year, this machine's local time"
    )
    assert found(KILL).time_note() is None  # no time read: nothing to qualify
    # the time came from the record; a stamp on a later line of the raw text is not it
    raw = "RuntimeError: MPS backend out of memory\n2026-11-28 03:16:52,120 ERROR app: x\nend"
    assert found(replace(MPS_OOM, raw=raw), when=T).time_note() is None
    assert found(replace(MPS_OOM, raw=f"{KILL.raw}\nx"), when=T).time_note() == (
        found(KILL, when=T).time_note()
    )


def test_an_exact_kill_document() -> None:
    item = found(KILL, file="kern.log", line=4, when=T, other=True,
                  places=(("kern.log", 4), ("syslog", 2)))  # fmt: skip
    doc = item.to_json()
    assert list(doc)[-6:] == ["time_note", "time_range", "seen_in", "other_process",
                              "summary", "raw"]  # fmt: skip
    assert {k: doc[k] for k in ("file", "line", "time", *list(doc)[-6:-2])} == {
        "file": "kern.log",
        "line": 4,
        "time": "2026-11-28T03:16:52Z",
        "time_note": "no year or zone in the log: the log file's year, this machine's local time",
        "time_range": None,
        "seen_in": [{"file": "kern.log", "line": 4}, {"file": "syslog", "line": 2}],
        "other_process": True,
    }
    assert doc["raw"] == KILL.raw
    assert doc["summary"] == item.summary()
    assert (doc["kind"], doc["pid"]) == ("kernel_oom_kill", 27241)


def test_a_ranged_allocator_failure_document() -> None:
    item = found(MPS_OOM, file=None, line=None, after=at(-300), before=T)
    doc = item.to_json()
    assert list(doc)[-5:] == ["time_note", "time_range", "seen_in", "summary", "raw"]
    assert {k: doc[k] for k in ("file", "line", "time", *list(doc)[-5:-2])} == {
        "file": None,
        "line": None,
        "time": None,
        "time_note": None,
        "time_range": {"after": "2026-11-28T03:11:52Z", "before": "2026-11-28T03:16:52Z"},
        "seen_in": [{"file": None, "line": None}],
    }
    assert (doc["backend"], doc["kind"], doc["raw"]) == ("mps", "oom", MPS_OOM.raw)
    assert doc["summary"] == item.summary()
    assert "other_process" not in doc


@pytest.mark.parametrize(
    ("when", "after", "before"),
    [(T, at(-300), T), (None, at(-300), None), (None, None, T), (None, None, None)],
)
def test_a_time_range_only_when_there_is_no_time_and_both_ends_are_known(
    when: datetime | None, after: datetime | None, before: datetime | None
) -> None:
    assert found(KILL, when=when, after=after, before=before).to_json()["time_range"] is None
