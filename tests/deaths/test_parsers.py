"""Memory deaths: every recorded sample found with its exact figures, counted once, never a crash.

Expected figures are read off each fixture by hand: the kernel prints kB (x 1024), jetsam
reports pages (x the report's pageSize) and MB limits (x 1024**2).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpsctl.deaths.advice import explain, summary
from mpsctl.deaths.kernel_oom import KILL_MAX_LINES
from mpsctl.deaths.line_prefix import prefix_time
from mpsctl.deaths.parsers import (
    KINDS,
    CpuAllocFailure,
    JetsamKill,
    KernelOomKill,
    NdarrayLimit,
    WorkerKilled,
    find_deaths,
    is_memory_death,
    parse_death,
    pids_of,
)
from mpsctl.deaths.prefilter import DEATH_KINDS
from mpsctl.units import size_value, to_int
from tests.conftest import FIXTURES, read_fixture

KIB, MIB, GIB = 1024, 1024**2, 1024**3
UTC = timezone.utc


def ev(**fields: Any) -> dict[str, Any]:
    """The fields an event must have (only these are compared)."""
    return fields


def kill(
    pid: int, process: str, vm: int, anon: int, file: int, shmem: int | None, **more: Any
) -> dict[str, Any]:
    """A complete kernel kill; sizes in kB as printed."""
    return ev(
        kind="kernel_oom_kill", pid=pid, process=process, total_vm_bytes=vm * KIB,
        anon_rss_bytes=anon * KIB, file_rss_bytes=file * KIB,
        shmem_rss_bytes=None if shmem is None else shmem * KIB, complete=True, **more,
    )  # fmt: skip


def worker(pid: int, after_timeout: bool) -> dict[str, Any]:
    return ev(kind="worker_killed", pid=pid, signal=9, after_timeout=after_timeout)


def cpu(requested: int | None, wording: str, code: int | None, **more: Any) -> dict[str, Any]:
    return ev(
        kind="cpu_alloc",
        backend="cpu",
        requested_bytes=requested,
        wording=wording,
        error_code=code,
        **more,
    )


def device(error: str, exception: str | None, **more: Any) -> dict[str, Any]:
    return ev(kind="device_error", backend="cuda", error=error, exception=exception, **more)


CANT, NOT_ENOUGH = "can't allocate memory", "not enough memory"
K8S_POD = (
    "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-11017d9ed95ddc35b24735fce3953"
    "31554737a0676defb9930e07b0ee6d802e5.scope/container/kubelet.slice/kubelet-kubepods.slice/"
    "kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-pod17d1d0b1_bbeb_4252_a45c_c9f426"
    "d1cb34.slice"
)
K8S_TASK = (
    K8S_POD
    + "/cri-containerd-799855c3e9e23ea07677c581b96f444dffb0932d7a907973bb08a8391803c559.scope"
)
V1_SCOPE = (
    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0330b2c1_a15b_4cdd_b5e5_72d4a9"
    "0bee82.slice/docker-b27201334a41cd0749d053b18378d7ea65617b8e26277197ea25c974da1a5a8a.scope"
)
ADJ = {"oom_score_adj": -997, "uid": 0, "cgroup": True}

# fmt: off
EXPECTED: dict[str, list[dict[str, Any]]] = {
    # ---- Linux kernel OOM killer
    "linux-oomkill-1-dmesg-T.txt": [
        kill(1483, "uvicorn", 116345136, 3558264, 0, 0, pgtables_bytes=50724 * KIB, uid=0,
             oom_score_adj=0, cgroup=False, line=1),
        kill(3455, "uvicorn", 116419464, 3559396, 0, 0, pgtables_bytes=50768 * KIB, line=2),
        kill(2485, "uvicorn", 115749896, 3557108, 0, 0, pgtables_bytes=50460 * KIB, line=3),
    ],
    "linux-oomkill-3-dmesg-legacy-sacrifice-child.txt": [
        kill(21518, "python2", 13345928, 12721928, 4, None, score=752, line=1),
    ],
    "linux-oomkill-4-kernlog-sacrifice-child-oom-reaper.txt": [
        kill(15889, "ytmdl", 5119936, 5029560, 0, 0, score=279, line=4),
    ],
    "linux-oomkill-5-dmesg-T-sacrifice-child-python.txt": [
        kill(89879, "python", 146328, 0, 1824, 0, score=1031, line=1),
        kill(89746, "python", 118026216, 109819332, 3324, 0, score=1031, line=3),
    ],
    "linux-oomkill-6-memcg-syslog-python3.txt": [
        kill(15617, "python3", 11892, 4292, 3428, 0, cgroup=True, uid=None, line=1),
        kill(15674, "python3", 11892, 4292, 3424, 0, cgroup=True, line=3),
        kill(15623, "python3", 11892, 4292, 3420, 0, cgroup=True, line=5),
    ],
    "linux-oomkill-7-memcg-dmesg-uwsgi-calltrace.txt": [
        kill(63214, "uwsgi", 3149468, 164992, 52176, 92, pgtables_bytes=1372 * KIB,
             oom_score_adj=986, cgroup=True, line=1),
        ev(kind="kernel_oom_kill", pid=None, trigger="uwsgi", trigger_pid=63635,
             complete=False, line=3),
    ],
    "linux-oomkill-8-memcg-dmesg-k8s-negative-adj.txt": [
        kill(140339, "python3", 120832, 15596, 8924, 0, pgtables_bytes=276 * KIB, **ADJ),
        kill(141313, "mount", 22008, 164, 1012, 0, pgtables_bytes=80 * KIB, **ADJ),
        kill(141314, "mount", 22008, 168, 940, 0, pgtables_bytes=80 * KIB, **ADJ),
        kill(141315, "mount", 22008, 164, 1052, 0, pgtables_bytes=88 * KIB, **ADJ),
        kill(141316, "mount", 22008, 168, 940, 0, pgtables_bytes=84 * KIB, **ADJ),
        kill(141317, "mount", 22008, 168, 964, 0, pgtables_bytes=84 * KIB, **ADJ),
        kill(141320, "python3", 153376, 24100, 9088, 0, pgtables_bytes=332 * KIB, **ADJ),
    ],
    "linux-oomkill-9-journalctl-python-systemd-unit.txt": [
        kill(27241, "python", 1374456, 128664, 1600, 0, pgtables_bytes=1252 * KIB, line=1),
    ],
    "linux-oomkill-10-journalctl-python-systemd-killed-status9.txt": [
        kill(36707, "python", 770504, 35644, 1544, 0, pgtables_bytes=1032 * KIB, line=1),
    ],
    "linux-oomkill-12-syslog-2012-oom_adj-table-python.txt": [
        kill(25456, "python", 1088968, 865208, 0, None, score=334, line=6),
    ],
    "linux-oomkill-13-syslog-gunicorn-hardwrapped.txt": [
        kill(11438, "gunicorn", 3812556, 1220624, 0, 0, pgtables_bytes=2912 * KIB, line=1),
    ],
    "linux-oomkill-14-memcg-cgroupv1-sacrifice-child-dmesg-T.txt": [
        kill(28438, "java", 20255636, 466160, 13684, None, score=0, cgroup=True, line=3),
        ev(kind="kernel_oom_kill", pid=None, complete=False, trigger="java", trigger_pid=14881,
             cpuset="1e479e759020fa0b6c72def90973540a2d33982fea2ad67a96373b4da751a820", line=5),
    ],
    "linux-oomkill-15-syslog-rhel7-python-docker-calltrace.txt": [
        ev(kind="kernel_oom_kill", pid=None, complete=False, trigger="python", trigger_pid=21154,
             cpuset="7489263afb020169f14630e2e4d15cd5e3c0ffa53e80134ddc5ba38e1c11c08f", line=1),
    ],
    "linux-oomkill-17-dmesg-T-constraint-memcg-k8s-uvicorn.txt": [
        ev(kind="kernel_oom_kill", pid=32550, process="uvicorn", uid=525287,
             constraint="CONSTRAINT_MEMCG", cgroup=True, memcg=K8S_POD, task_memcg=K8S_TASK,
             cpuset="user.slice", anon_rss_bytes=None, complete=False, line=4),
    ],
    "linux-oomkill-18-syslog-cgroupv1-task-killed-as-result-of-limit.txt": [
        ev(kind="kernel_oom_kill", pid=None, cgroup=True, memcg=V1_SCOPE, task_memcg=V1_SCOPE,
             memcg_usage_bytes=1048576 * KIB, memcg_limit_bytes=1048576 * KIB, complete=False,
             line=1),
    ],
    "linux-oomkill-20-dmesg-T-kernel616-invoked-oom-killer-calltrace.txt": [
        ev(kind="kernel_oom_kill", pid=None, trigger="postgres", trigger_pid=1073875,
             complete=False, line=1),
    ],
    # ---- systemd-oomd and systemd's note of a kernel kill
    "linux-systemd-oomd-1-journal-user-slice.txt": [
        ev(kind="oomd_kill", by="systemd-oomd",
             cgroup="/user.slice/user-1001.slice/user@1001.service/app.slice/app-org.gnome."
             "Terminal.slice/vte-spawn-dbb4a75e-031f-480d-924b-5de5af7579d2.scope",
             unit="vte-spawn-dbb4a75e-031f-480d-924b-5de5af7579d2.scope",
             monitored_cgroup="/user.slice/user-1001.slice/user@1001.service",
             trigger="memory pressure", pressure_percent="51.07", limit_percent="50.00",
             duration="20s", processes_killed=12, pids=(), marked=False, line=1),
    ],
    "linux-systemd-oomd-3-journal-truncated-service.txt": [
        ev(kind="oomd_kill", by="systemd-oomd",
             cgroup="/testsuite.slice/testsuite-55.slice/testsuite-55-workload.slice/"
             "testsuite-55-testbloat.service", unit="testsuite-55-testbloat.service",
             monitored_cgroup="/testsuite.slice/testsuite-55.slice/testsuite-55-workload.slice",
             pressure_percent=None, pids=(63, 66), processes_killed=2, line=4),
    ],
    "linux-systemd-oomd-4-marked-for-killing-dmesg-style.txt": [
        ev(kind="oomd_kill", by="systemd-oomd", cgroup="/system.slice/systemd-journald.service",
             unit="systemd-journald.service", monitored_cgroup="/system.slice",
             pressure_percent="85.03", limit_percent="80.00", duration="2s", pids=(407,),
             processes_killed=1, marked=True, line=7),
    ],
    "linux-systemd-unit-oom-1-rsyslog-iso.txt": [
        ev(kind="oomd_kill", by="kernel", unit="user-1021.slice",
             units=("user-1021.slice", "system-postgresql.slice", "user@1021.service",
                    "user.slice", "system.slice"),
             time=datetime(2026, 2, 8, 0, 40, 7, 136582, tzinfo=UTC), line=1),
    ],
    # ---- jetsam
    "macos-jetsam-1-ips-process-entry-per-process-limit.txt": [
        ev(kind="jetsam_kill", pid=4624, process="RebornTunnel", reason="per-process-limit",
             resident_pages=960, page_size=None, resident_bytes=None, source="ips", line=1),
    ],
    "macos-jetsam-2-ips-full-report-highwater.txt": [
        ev(kind="jetsam_kill", pid=2527, process="wifianalyticsd", reason="highwater",
             resident_pages=382, page_size=16384, resident_bytes=382 * 16384, source="ips",
             time=datetime(2020, 10, 15, 16, 29, 58, 790000, tzinfo=UTC), line=65),
    ],
    "macos-jetsam-3-ios-syslog-killing_specific_process.txt": [
        ev(kind="jetsam_kill", pid=2776, process="Pythonista3", reason="per-process-limit",
             limit_bytes=3072 * MIB, limit_kind="ActiveHard", available_pages=42511,
             source="log", complete=True, line=1),
    ],
    "macos-jetsam-4-unified-log-killed-by-jetsam-reason.txt": [
        ev(kind="jetsam_kill", pid=1509, process="Tunnel", reason="per-process-limit",
             limit_bytes=50 * MIB, limit_kind="ActiveHard", source="log", complete=True, line=1),
    ],
    # zone_map_exhaustion wakes jetsam; no process is killed in these lines
    "macos-jetsam-6-macos-log-zone-map-exhaustion-memorystatus.txt": [],
    # ---- gunicorn / uvicorn
    "gunicorn-sigkill-1-perhaps-oom-sync-docker.txt": [worker(21, False), worker(22, False)],
    "gunicorn-sigkill-2-uvicornworker-timeout-then-sigkill-ci.txt": [
        worker(2977, True),
        worker(2976, True),
    ],
    "gunicorn-sigkill-3-uvicornworker-startup-litellm.txt": [worker(15825, False)],
    "gunicorn-sigkill-4-rich-console-wrapped.txt": [
        worker(40, False), worker(47, True), worker(67, True), worker(79, True),
    ],
    "gunicorn-sigkill-6-log-viewer-prefix-abbrev-levels.txt": [worker(14, False)],
    "gunicorn-silent-1-no-kill-line-booting-loop.txt": [],
    # signal 6 lines are gunicorn's SIGABRT after WORKER TIMEOUT; the signal 9 one follows one
    "gunicorn-timeout-1-signal6-signal9.txt": [worker(7284, True)],
    "gunicorn-timeout-2-legacy-2010-format.txt": [],
    "gunicorn-timeout-3-journald-exited-code1.txt": [],
    # a child's death or a shell's "Killed" does not say memory
    "uvicorn-child-died-1-multiprocess-supervisor.txt": [],
    "uvicorn-child-died-2-docker-compose-prefix.txt": [],
    "uvicorn-killed-1-bash-job-killed.txt": [],
    # ---- PyTorch CPU allocator
    "torch-cpu-oom-1-posix_memalign-CPUAllocator56.txt": [cpu(None, "posix_memalign", 12, line=4)],
    "torch-cpu-oom-2-cant-allocate-errcode12-CPUAllocator65.txt": [
        cpu(4000000000000000, CANT, 12, line=4)
    ],
    # "%dGB. Buy new RAM!27": an unformatted size is no size
    "torch-cpu-oom-3-windows-buy-new-ram-format-bug-CPUAllocator62.txt": [
        cpu(None, NOT_ENOUGH, None)
    ],
    "torch-cpu-oom-4-windows-buy-new-ram-CPUAllocator72.txt": [cpu(113246208, NOT_ENOUGH, None)],
    "torch-cpu-oom-5-windows-buy-new-ram-traceback-CPUAllocator73.txt": [
        cpu(318767104000, NOT_ENOUGH, None, line=6)
    ],
    "torch-cpu-oom-7-cant-allocate-CPUAllocator67-realesrgan.txt": [cpu(264896512, CANT, 12)],
    "torch-cpu-oom-8-cant-allocate-CPUAllocator71.txt": [cpu(64597662208, CANT, 12)],
    "torch-cpu-oom-10-cant-allocate-alloc_cpu75-err0.txt": [cpu(132426121216, CANT, 12)],
    "torch-cpu-oom-11-windows-not-enough-memory-actions-runner-alloc_cpu81.txt": [
        cpu(1069551616, NOT_ENOUGH, None)
    ],
    "torch-cpu-oom-12-windows-not-enough-memory-conda-alloc_cpu81.txt": [
        cpu(1981808640, NOT_ENOUGH, None)
    ],
    "torch-cpu-oom-13-windows-not-enough-memory-impl-alloc_cpu72.txt": [
        cpu(29491200, NOT_ENOUGH, None)
    ],
    # ---- CUDA errors
    "torch-cuda-error-oom-1-comma-so.txt": [device("out of memory", "RuntimeError", line=1)],
    "torch-cuda-error-oom-2-dsa-no-period.txt": [device("out of memory", "RuntimeError")],
    "torch-cuda-error-oom-4-acceleratorerror.txt": [
        device("out of memory", "torch.AcceleratorError", line=7)
    ],
    "torch-cuda-error-oom-5-console-wrapped.txt": [device("out of memory", None, line=6)],
    "torch-cuda-error-cublas-alloc-failed-1-frames.txt": [
        device("CUBLAS_STATUS_ALLOC_FAILED", "RuntimeError", call="cublasCreate(handle)")
    ],
    "torch-cuda-error-cublas-alloc-failed-3-windows-matmul.txt": [
        device("CUBLAS_STATUS_ALLOC_FAILED", "RuntimeError", call="cublasCreate(handle)", line=5)
    ],
    "torch-cuda-error-runtime-error-2-THCStorage-legacy.txt": [
        device("out of memory", "RuntimeError", legacy_code=2)
    ],
    # often memory in practice, but the message does not say so
    "torch-cuda-error-cudnn-no-valid-algorithm.txt": [],
    # ---- MPS array size limits
    "torch-mps-ndarray-1-total-bytes-2pow32-mm724.txt": [
        ev(kind="ndarray_limit", backend="mps", limit="total_bytes", limit_value=2**32,
             limit_bytes=4 * GIB, array_class="MPSNDArray",
             selector="initWithDevice:descriptor:"),
    ],
    "torch-mps-ndarray-2-total-bytes-isTextureBacked-mm850-abort.txt": [
        ev(kind="ndarray_limit", limit="total_bytes", limit_value=2**32,
             selector="initWithDevice:descriptor:isTextureBacked:"),
    ],
    "torch-mps-ndarray-4-temporary-product-dims-zsh-abort.txt": [
        ev(kind="ndarray_limit", limit="dimension_product", limit_value=2**31,
             limit_bytes=None, array_class="MPSTemporaryNDArray"),
    ],
}
# fmt: on

_DEATH_PREFIXES = (
    "linux-", "macos-jetsam-", "gunicorn-", "uvicorn-", "torch-cpu-oom-", "torch-cuda-error-",
    "torch-mps-ndarray",
)  # fmt: skip


def test_every_recorded_death_sample_has_expectations() -> None:
    on_disk = {p.name for p in FIXTURES.iterdir() if p.name.startswith(_DEATH_PREFIXES)}
    assert on_disk == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recorded_sample(name: str) -> None:
    events = find_deaths(read_fixture(name), zone=UTC)
    expected = EXPECTED[name]
    assert [e.kind for e in events] == [e["kind"] for e in expected]
    for event, fields in zip(events, expected, strict=True):
        got = {key: getattr(event, key) for key in fields}
        assert got == fields
        assert all(part in read_fixture(name) for part in event.raw.split("\n"))
        json.dumps(event.to_json())
        assert summary(event)
        assert explain(event)


@pytest.mark.parametrize(
    "name",
    sorted(
        p.name
        for p in FIXTURES.glob("torch-*")
        if p.name.startswith(("torch-mps-oom", "torch-cuda-oom", "torch-mps-invalid"))
    ),
)
def test_caching_allocator_messages_are_not_deaths(name: str) -> None:
    """Those are ``oom`` events of mpsctl.deaths.allocator; here they must not count twice."""
    assert find_deaths(read_fixture(name)) == []


def test_legacy_pair_is_one_event_with_both_lines() -> None:
    (event,) = find_deaths(read_fixture("linux-oomkill-3-dmesg-legacy-sacrifice-child.txt"))
    assert isinstance(event, KernelOomKill)
    assert "score 752 or sacrifice child" in event.raw
    assert "Killed process 21518" in event.raw


def test_a_header_without_its_kill_line_does_not_take_a_much_later_kill() -> None:
    # the recorded header and call trace (uptime 7093 s), then a recorded kill line from
    # another log written three hours of uptime later: two events, not one
    header = read_fixture("linux-oomkill-7-memcg-dmesg-uwsgi-calltrace.txt").splitlines()[2:]
    kill_line = read_fixture("linux-oomkill-8-memcg-dmesg-k8s-negative-adj.txt").splitlines()[0]
    first, second = find_deaths("\n".join([*header, kill_line]))
    assert isinstance(first, KernelOomKill)
    assert isinstance(second, KernelOomKill)
    assert (first.trigger, first.trigger_pid, first.pid, first.complete) == (
        "uwsgi", 63635, None, False,
    )  # fmt: skip
    assert (second.pid, second.complete, second.line) == (140339, True, len(header) + 1)


def test_a_header_without_stamps_is_cut_off_by_distance_in_lines() -> None:
    text = read_fixture("linux-oomkill-3-dmesg-legacy-sacrifice-child.txt")
    lines = [line.split("] ", 1)[-1] for line in text.splitlines()]  # the stamps removed
    kill = next(i for i, line in enumerate(lines) if "Killed process" in line)
    near = find_deaths("\n".join(lines))
    assert [e.complete for e in near if isinstance(e, KernelOomKill)] == [True]
    spread = [*lines[:kill], *["."] * (KILL_MAX_LINES + 1), *lines[kill:]]
    far = [e for e in find_deaths("\n".join(spread)) if isinstance(e, KernelOomKill)]
    assert [e.complete for e in far] == [False, True]


ANON = "anon-rss:4292kB"
MEMCG_LINE = read_fixture("linux-oomkill-6-memcg-syslog-python3.txt").splitlines()[0]


def test_oversized_figure_is_none_and_the_event_is_kept() -> None:
    line = MEMCG_LINE.replace(ANON, "anon-rss:" + "9" * 400 + "kB")
    (event,) = find_deaths(line)
    assert isinstance(event, KernelOomKill)
    assert event.anon_rss_bytes is None
    assert event.total_vm_bytes == 11892 * KIB
    assert "9" * 400 in event.raw
    # 2**63 / 1024 kB fits as digits but not as bytes
    assert (
        find_deaths(MEMCG_LINE.replace(ANON, f"anon-rss:{2**63 // 1024 + 1}kB"))[0].anon_rss_bytes
        is None
    )  # type: ignore[union-attr]


def test_oversized_everywhere_else() -> None:
    huge = "9" * 400
    cpu_line = read_fixture("torch-cpu-oom-8-cant-allocate-CPUAllocator71.txt").replace(
        "64597662208", huge
    )
    event = parse_death(cpu_line)
    assert isinstance(event, CpuAllocFailure)
    assert event.requested_bytes is None
    jetsam = read_fixture("macos-jetsam-4-unified-log-killed-by-jetsam-reason.txt")
    event = parse_death(jetsam.replace("50 MB", f"{huge} MB"))
    assert isinstance(event, JetsamKill)
    assert event.limit_bytes is None
    assert event.pid == 1509
    gunicorn = read_fixture("gunicorn-sigkill-3-uvicornworker-startup-litellm.txt")
    event = parse_death(gunicorn.replace("(pid:15825) was sent", f"(pid:{huge}) was sent"))
    assert isinstance(event, WorkerKilled)
    assert event.pid is None
    ndarray = read_fixture("torch-mps-ndarray-1-total-bytes-2pow32-mm724.txt")
    assert isinstance(parse_death(ndarray.replace("2**32", f"2**{huge}")), NdarrayLimit)


def test_sizes_helpers() -> None:
    assert to_int("3558264", KIB) == 3643662336
    assert to_int("9" * 19) is None
    assert to_int("-5") is None
    assert to_int("") is None
    assert size_value("3072", MIB) == 3221225472
    assert size_value("1e400", MIB) is None
    assert size_value("nan", 1) is None


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=300))
def test_no_text_raises(text: str) -> None:
    find_deaths(text)
    find_deaths(MEMCG_LINE[:60] + text + MEMCG_LINE[60:])


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=80))
def test_noise_after_a_kill_keeps_the_kill(noise: str) -> None:
    events = find_deaths(MEMCG_LINE + noise.replace("\n", " ").replace("\r", " "))
    assert events
    assert isinstance(events[0], KernelOomKill)
    assert events[0].pid == 15617


# ---------------------------------------------------------------- times
NOV = datetime(2026, 11, 28, 4, 0, tzinfo=UTC)
STAMP = datetime(2026, 11, 28, 3, 16, 52, tzinfo=UTC)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("[Sat Nov 28 03:16:52 2026] Out of memory: ...", STAMP),
        ("Nov 28 03:16:52 host kernel: Out of memory", STAMP),
        ("Nov 28 03:16:52.250000 host kernel: x", STAMP.replace(microsecond=250000)),
        # a December line read in November is last year's
        ("Dec 31 23:59:59 host kernel: x", datetime(2025, 12, 31, 23, 59, 59, tzinfo=UTC)),
        ("2026-11-27T22:16:52-05:00 host kernel: x", STAMP),
        ("2026-11-28T04:16:52+0100 host kernel: x", STAMP),
        ("2026-11-28T03:16:52.136582+00:00 host systemd[1]: x",
         STAMP.replace(microsecond=136582)),
        ("Sat 2026-11-28 03:16:52 UTC host kernel: x", STAMP),
        ("Sat 2026-11-28 04:16:52 +0100 host kernel: x", STAMP),
        ("2026-11-28 03:16:52,250 app ERROR x", STAMP.replace(microsecond=250000)),
        ("2026-11-28T03:16:52Z host kernel: x", STAMP),
        ("[Sat Feb 30 03:16:52 2026] impossible date", None),
        ("no stamp at all", None),
    ],
)  # fmt: skip
def test_prefix_time(line: str, expected: datetime | None) -> None:
    assert prefix_time(line, now=NOV, zone=UTC) == expected


def test_syslog_needs_a_year_and_uptime_needs_boot() -> None:
    assert prefix_time("Nov 28 03:16:52 host kernel: x") is None
    assert prefix_time("[35881895.791331] Out of memory") is None
    boot = datetime(2025, 1, 1, tzinfo=UTC)
    moment = prefix_time("[35881895.791331] Out of memory", boot=boot)
    assert moment == boot + timedelta(seconds=35881895, microseconds=791331)
    after_syslog = prefix_time("Apr 30 16:34:37 gdnafr kernel: [17323087.561183] x", boot=boot)
    assert after_syslog is None  # a syslog stamp without a year is not guessed from uptime


def test_find_deaths_dates_with_the_context_given() -> None:
    text = read_fixture("linux-oomkill-6-memcg-syslog-python3.txt")
    assert find_deaths(text)[0].time is None
    first = find_deaths(text, now=NOV, zone=UTC)[0]
    assert first.time == datetime(2026, 5, 15, 23, 9, 27, tzinfo=UTC)
    legacy = read_fixture("linux-oomkill-3-dmesg-legacy-sacrifice-child.txt")
    boot = datetime(2019, 1, 1, tzinfo=UTC)
    event = find_deaths(legacy, boot=boot)[0]
    assert event.time == boot + timedelta(seconds=35881895, microseconds=791331)


# ---------------------------------------------------------------- words
def test_kernel_summary_and_advice_use_exact_figures() -> None:
    event = find_deaths(read_fixture("linux-oomkill-1-dmesg-T.txt"))[0]
    # 3558264 kB = 3643662336 bytes = 3.39 GiB; of 24 GiB: 14 %
    assert (
        summary(event) == "killed by the kernel OOM killer: uvicorn, pid 1483 (anon-rss 3.39 GiB)"
    )
    text = " ".join(explain(event, ram_bytes=24 * GIB))
    assert "3.39 GiB" in text
    assert "14% of the machine's 24 GiB RAM" in text
    assert "whole machine ran out" in text
    assert "memory limit" in text
    assert "concurrency" in text


def test_cut_report_does_not_guess_what_ran_out() -> None:
    name = "linux-oomkill-20-dmesg-T-kernel616-invoked-oom-killer-calltrace.txt"
    (event,) = find_deaths(read_fixture(name))
    assert summary(event) == (
        "the kernel OOM killer ran (invoked by postgres, pid 1073875); "
        "the kill itself is not in the log"
    )
    words = " ".join(explain(event))
    assert "do not say whether" in words
    assert "whole machine" not in words


def test_memcg_advice_names_the_limit() -> None:
    name = "linux-oomkill-18-syslog-cgroupv1-task-killed-as-result-of-limit.txt"
    (event,) = find_deaths(read_fixture(name))
    assert "not in the log" in summary(event)
    assert "(limit 1 GiB)" in " ".join(explain(event))


def test_other_kinds_words() -> None:
    jetsam = parse_death(read_fixture("macos-jetsam-3-ios-syslog-killing_specific_process.txt"))
    assert jetsam is not None
    assert (
        summary(jetsam)
        == "killed by jetsam (per-process-limit, limit 3 GiB): Pythonista3, pid 2776"
    )
    assert "ActiveHard limit was 3 GiB" in " ".join(explain(jetsam))
    cpu_event = parse_death(
        read_fixture("torch-cpu-oom-5-windows-buy-new-ram-traceback-CPUAllocator73.txt")
    )
    assert cpu_event is not None
    # 318767104000 bytes = 296.88 GiB > 64 GiB
    assert "more than the machine's whole RAM (64 GiB)" in " ".join(
        explain(cpu_event, ram_bytes=64 * GIB)
    )
    ndarray = parse_death(read_fixture("torch-mps-ndarray-1-total-bytes-2pow32-mm724.txt"))
    assert ndarray is not None
    words = " ".join(explain(ndarray))
    assert "not an out-of-memory" in words
    assert "watermark ratios do not change it" in words
    timeout = find_deaths(read_fixture("gunicorn-timeout-1-signal6-signal9.txt"))[0]
    assert "not evidence of memory exhaustion" in " ".join(explain(timeout))
    cuda = parse_death(read_fixture("torch-cuda-error-oom-4-acceleratorerror.txt"))
    assert cuda is not None
    assert "The GPU has 24 GiB; PyTorch may use 90% of it." in explain(
        cuda, device_total_bytes=24 * GIB, memory_fraction=0.9
    )


def test_to_json_shape() -> None:
    doc = find_deaths(read_fixture("macos-jetsam-2-ips-full-report-highwater.txt"))[0].to_json()
    assert doc["kind"] == "jetsam_kill"
    assert doc["resident_bytes"] == 6258688
    assert doc["time"] == "2020-10-15T16:29:58.790000+00:00"
    assert list(doc)[-1] == "raw"
    cpu_doc = parse_death(read_fixture("torch-cpu-oom-10-cant-allocate-alloc_cpu75-err0.txt"))
    assert cpu_doc is not None
    assert cpu_doc.to_json()["backend"] == "cpu"
    assert cpu_doc.to_json()["requested_bytes"] == 132426121216
    oomd = find_deaths(read_fixture("linux-systemd-oomd-3-journal-truncated-service.txt"))[0]
    assert oomd.to_json()["pids"] == [63, 66]
    assert "backend" not in oomd.to_json()


def test_structured_json_with_a_reason_is_not_a_jetsam_report() -> None:
    line = '{"event": "shutdown", "reason": "per-process-limit", "pid": 4624, "name": "api"}'
    assert find_deaths(line) == []


def test_exception_name_is_read_only_just_before_the_message() -> None:
    line = read_fixture("torch-cuda-error-oom-4-acceleratorerror.txt").splitlines()[6]
    event = parse_death("x" * 100_000 + " " + line)
    assert event is not None
    assert event.to_json()["exception"] == "torch.AcceleratorError"


def test_counting_helpers() -> None:
    timeouts = find_deaths(read_fixture("gunicorn-sigkill-4-rich-console-wrapped.txt"))
    assert [is_memory_death(e) for e in timeouts] == [True, False, False, False]
    assert [pids_of(e) for e in timeouts] == [(40,), (47,), (67,), (79,)]
    oomd = find_deaths(read_fixture("linux-systemd-oomd-3-journal-truncated-service.txt"))[0]
    assert pids_of(oomd) == (63, 66)
    cuda = parse_death(read_fixture("torch-cuda-error-oom-1-comma-so.txt"))
    assert cuda is not None
    assert pids_of(cuda) == ()
    assert is_memory_death(cuda)
    kinds = {e.kind for name in EXPECTED for e in find_deaths(read_fixture(name))}
    corpus = FIXTURES / "corpus"
    kinds |= {e.kind for p in corpus.glob("m-*.txt") for e in find_deaths(p.read_text("utf-8"))}
    assert kinds == set(KINDS)
    assert DEATH_KINDS == KINDS  # the probe's totals name the same kinds without the parsers


# --- the kernel report's rules, each at its boundary -------------------------------------

UWSGI_HEADER = read_fixture("linux-oomkill-7-memcg-dmesg-uwsgi-calltrace.txt").splitlines()[2:]
K8S_KILL = read_fixture("linux-oomkill-8-memcg-dmesg-k8s-negative-adj.txt").splitlines()[0]
PG_HEADER = read_fixture("linux-oomkill-20-dmesg-T-kernel616-invoked-oom-killer-calltrace.txt")
JOURNAL_KILL = read_fixture("linux-oomkill-9-journalctl-python-systemd-unit.txt").splitlines()[0]
MEMCG_SUMMARY = read_fixture("linux-oomkill-17-dmesg-T-constraint-memcg-k8s-uvicorn.txt")
MEMCG_SUMMARY = MEMCG_SUMMARY.splitlines()[3]


def kernel_kills(lines: list[str]) -> list[tuple[int, KernelOomKill]]:
    from mpsctl.deaths.kernel_oom import find_kernel_kills

    return find_kernel_kills(lines)


@pytest.mark.parametrize(("seconds", "one"), [("60.000000", True), ("60.000001", False)])
def test_a_kill_line_joins_its_header_up_to_exactly_60_seconds_of_uptime(
    seconds: str, one: bool
) -> None:
    header = [UWSGI_HEADER[0].replace("[ 7093.543707]", "[ 7093.500000]"), *UWSGI_HEADER[1:]]
    stamp = f"[{7093.5 + float(seconds):13.6f}]"
    kill = K8S_KILL.replace("[18026.221140]", stamp)
    found = kernel_kills([*header, kill])
    if one:
        assert [(i, e.trigger, e.trigger_pid, e.pid, e.complete) for i, e in found] == [
            (0, "uwsgi", 63635, 140339, True)
        ]
    else:
        assert [(i, e.trigger, e.pid, e.complete) for i, e in found] == [
            (0, "uwsgi", None, False), (len(header), None, 140339, True),
        ]  # fmt: skip


@pytest.mark.parametrize(("stamp", "one"), [("17:52:31", True), ("17:52:32", False)])
def test_wall_clock_stamps_part_a_header_from_a_kill_a_minute_later(stamp: str, one: bool) -> None:
    header = PG_HEADER.splitlines()
    kill_text = JOURNAL_KILL.split("kernel: ", 1)[1]
    kill = f"[Mon Dec  8 {stamp} 2025] {kill_text}"
    found = kernel_kills([*header, kill])
    expected = [(0, "postgres", 27241, True)] if one else [
        (0, "postgres", None, False), (len(header), None, 27241, True)
    ]  # fmt: skip
    assert [(i, e.trigger, e.pid, e.complete) for i, e in found] == expected


def test_a_kill_from_another_year_of_a_yearless_syslog_is_another_kill() -> None:
    # the 2025 header (dmesg -T) and a yearless syslog kill line: far apart in time
    header = PG_HEADER.splitlines()
    found = kernel_kills([*header, JOURNAL_KILL])
    assert [(i, e.trigger, e.pid, e.complete) for i, e in found] == [
        (0, "postgres", None, False), (len(header), None, 27241, True),
    ]  # fmt: skip


def test_a_report_far_down_a_log_is_still_one_kill() -> None:
    # the line limit counts from the report's own first line, not from the file's start
    noise = ["."] * (KILL_MAX_LINES + 100)
    header = [line.replace("[ 7093.", "[18026.") for line in UWSGI_HEADER]
    found = kernel_kills([*noise, *header, K8S_KILL])
    assert [(i, e.trigger, e.pid, e.complete) for i, e in found] == [
        (len(noise), "uwsgi", 140339, True)
    ]


def test_the_same_kill_line_again_keeps_the_first_figures_and_adds_the_missing() -> None:
    cut = K8S_KILL.split(", file-rss:", 1)[0]  # ends after anon-rss
    again = K8S_KILL.replace("total-vm:120832kB", "total-vm:999kB")
    (index, event), (later, other) = kernel_kills([cut, again, MEMCG_LINE])
    assert (later, other.pid, other.process) == (2, 15617, "python3")
    assert index == 0
    assert event.total_vm_bytes == 120832 * KIB
    assert event.anon_rss_bytes == 15596 * KIB
    assert event.file_rss_bytes == 8924 * KIB
    assert event.oom_score_adj == -997
    assert event.raw == f"{cut}\n{again}"
    assert event.complete is True


def test_a_summary_written_after_its_kill_line_joins_it_and_the_kill_lines_figures_stand() -> None:
    stamp = "[Fri Aug 21 22:26:52 2026] "
    kill = f"{stamp}Memory cgroup out of memory: Killed process 32550 (uvicorn-w1) UID:7"
    (index, event), (later, other) = kernel_kills([kill, MEMCG_SUMMARY, MEMCG_LINE])
    assert (later, other.pid, other.complete) == (2, 15617, True)
    assert (index, event.pid, event.process, event.uid) == (0, 32550, "uvicorn-w1", 7)
    assert (event.constraint, event.cgroup, event.complete) == ("CONSTRAINT_MEMCG", True, True)
    assert event.task_memcg is not None
    assert event.task_memcg.endswith(".scope")
    assert event.raw == f"{kill}\n{MEMCG_SUMMARY}"


def test_a_summary_cut_before_its_pid_after_a_kill_is_a_report_of_its_own() -> None:
    cut = MEMCG_SUMMARY.split(",task=", 1)[0]
    found = kernel_kills([K8S_KILL, cut])
    assert [(i, e.pid, e.constraint, e.complete) for i, e in found] == [
        (0, 140339, None, True), (1, None, "CONSTRAINT_MEMCG", False),
    ]  # fmt: skip


def test_a_reports_first_cpu_and_cpuset_lines_name_its_trigger() -> None:
    # a second stack dump inside the report (another CPU line, another cpuset line) does not
    # replace what the first said
    header = read_fixture("linux-oomkill-15-syslog-rhel7-python-docker-calltrace.txt")
    lines = header.splitlines()
    cpu = next(line for line in lines if " CPU: " in line)
    cpuset = next(line for line in lines if " cpuset=" in line)
    extra = [cpu.replace("PID: 21154", "PID: 999"), cpuset.replace("cpuset=", "cpuset=other")]
    ((_, event),) = kernel_kills([*lines, *extra])
    assert (event.trigger, event.trigger_pid, event.complete) == ("python", 21154, False)
    assert event.cpuset == cpuset.split("cpuset=", 1)[1].split(" ", 1)[0]
    assert event.cpuset is not None
    assert not event.cpuset.startswith("other")


def test_a_second_cgroup_line_or_score_line_starts_another_cut_report() -> None:
    cg = read_fixture("linux-oomkill-18-syslog-cgroupv1-task-killed-as-result-of-limit.txt")
    task_in = next(line for line in cg.splitlines() if "killed as a result" in line)
    other = task_in.replace("Task in /kubepods.slice", "Task in /other.slice")
    found = kernel_kills([task_in, other])
    assert [(i, e.complete, e.cgroup) for i, e in found] == [(0, False, True), (1, False, True)]
    assert found[0][1].task_memcg != found[1][1].task_memcg
    legacy = read_fixture("linux-oomkill-5-dmesg-T-sacrifice-child-python.txt")
    score = next(line for line in legacy.splitlines() if "sacrifice child" in line)
    lower = score.replace("score 1031", "score 7")
    found = kernel_kills([score, lower])
    assert [(i, e.score, e.complete, e.cgroup) for i, e in found] == [
        (0, 1031, False, False), (1, 7, False, False),
    ]  # fmt: skip
    memcg = score.replace("Out of memory: Kill", "Memory cgroup out of memory: Kill")
    ((_, event),) = kernel_kills([memcg])
    assert (event.score, event.cgroup) == (1031, True)


def test_a_reports_first_memory_usage_line_gives_the_cgroups_limit() -> None:
    cg = read_fixture("linux-oomkill-18-syslog-cgroupv1-task-killed-as-result-of-limit.txt")
    lines = cg.splitlines()[:3]
    lines[1] = lines[1].replace("usage 1048576kB", "usage 1048000kB")
    later = lines[1].replace("usage 1048000kB, limit 1048576kB", "usage 1kB, limit 2kB")
    ((_, event),) = kernel_kills([*lines, later])
    assert (event.memcg_usage_bytes, event.memcg_limit_bytes) == (1048000 * KIB, GIB)
    assert event.raw == "\n".join(lines[:2])


def test_two_summaries_without_kill_lines_are_two_cut_reports() -> None:
    other = MEMCG_SUMMARY.replace(",task=uvicorn,pid=32550,", ",task=pause,pid=32415,")
    found = kernel_kills([MEMCG_SUMMARY, other])
    assert [(i, e.process, e.pid, e.complete) for i, e in found] == [
        (0, "uvicorn", 32550, False), (1, "pause", 32415, False),
    ]  # fmt: skip


def test_a_kill_line_cut_after_the_pid_keeps_the_summarys_process_name() -> None:
    summary = MEMCG_SUMMARY
    cut = "[Fri Aug 21 22:26:52 2026] Memory cgroup out of memory: Killed process 32550"
    ((_, event),) = kernel_kills([summary, cut])
    assert (event.pid, event.process, event.uid, event.complete) == (32550, "uvicorn", 525287, True)
    named = cut + " (uvicorn-w1) total-vm:100kB"
    ((_, event),) = kernel_kills([summary, named])
    assert (event.pid, event.process, event.total_vm_bytes) == (32550, "uvicorn-w1", 100 * KIB)


def test_a_process_name_with_an_equals_sign_is_read_whole() -> None:
    # a comm is whatever the process named itself (prctl PR_SET_NAME), "=" included
    summary = MEMCG_SUMMARY.replace(",task=uvicorn,", ",task=w=1,")
    ((_, event),) = kernel_kills([summary])
    assert (event.process, event.pid, event.constraint, event.complete) == (
        "w=1", 32550, "CONSTRAINT_MEMCG", False,
    )  # fmt: skip


def test_an_oversized_negative_oom_score_adj_is_none() -> None:
    line = K8S_KILL.replace("oom_score_adj:-997", "oom_score_adj:-" + "9" * 30)
    ((_, event),) = kernel_kills([line])
    assert (event.pid, event.oom_score_adj, event.total_vm_bytes) == (140339, None, 120832 * KIB)


def test_a_line_wrapped_at_exactly_64_columns_is_rejoined() -> None:
    posted = read_fixture("linux-oomkill-13-syslog-gunicorn-hardwrapped.txt").splitlines()
    whole = "".join(posted[:3])
    lines = [whole[i : i + 64] for i in range(0, len(whole), 64)]
    assert len(lines[0]) == 64
    ((index, event),) = kernel_kills(lines)
    assert (index, event.pid, event.process) == (0, 11438, "gunicorn")
    assert (event.anon_rss_bytes, event.pgtables_bytes) == (1220624 * KIB, 2912 * KIB)
    assert event.raw == "\n".join(lines)


def test_lines_are_quoted_without_trailing_blanks() -> None:
    # a terminal copy pads lines with spaces: the quote keeps each line's text only
    posted = read_fixture("linux-oomkill-13-syslog-gunicorn-hardwrapped.txt").splitlines()
    ((_, event),) = kernel_kills([*posted[:2], posted[2] + "   "])
    assert event.raw == "\n".join(posted[:3])
    ((_, event),) = kernel_kills([JOURNAL_KILL + " \t "])
    assert event.raw == JOURNAL_KILL


def test_a_kernel_tag_after_an_unknown_stamp_is_cut_before_reading_the_trigger() -> None:
    # a syslog written with another language's month names: the kernel's text follows "kernel: "
    header = read_fixture("linux-oomkill-15-syslog-rhel7-python-docker-calltrace.txt")
    lines = [line.replace("Jun 13 ", "Juin 13 ", 1) for line in header.splitlines()]
    ((_, event),) = kernel_kills(lines)
    assert (event.trigger, event.trigger_pid, event.complete) == ("python", 21154, False)


@pytest.mark.parametrize(("gap", "one"), [(KILL_MAX_LINES, True), (KILL_MAX_LINES + 1, False)])
def test_a_kill_line_joins_its_header_up_to_exactly_2000_lines_later(gap: int, one: bool) -> None:
    header = [line.split("] ", 1)[1] for line in UWSGI_HEADER]  # no stamps: lines only
    kill = K8S_KILL.split("] ", 1)[1]
    lines = [*header, *["."] * (gap - len(header)), kill]
    assert lines.index(kill) == gap
    found = kernel_kills(lines)
    expected = [(0, "uwsgi", 140339, True)] if one else [
        (0, "uwsgi", None, False), (gap, None, 140339, True)
    ]  # fmt: skip
    assert [(i, e.trigger, e.pid, e.complete) for i, e in found] == expected


# --- systemd's memory kills: which lines make one event ------------------------------------

UNIT_NOTES = read_fixture("linux-systemd-unit-oom-1-rsyslog-iso.txt").splitlines()
OOMD_3 = read_fixture("linux-systemd-oomd-3-journal-truncated-service.txt").splitlines()


def oomd(lines: list[str]) -> list[tuple[int, Any]]:
    from mpsctl.deaths.systemd_oomd import find_oomd

    return find_oomd(lines)


def test_systemds_notes_of_one_kernel_kill_are_one_event_only_while_adjacent() -> None:
    found = oomd([f"{UNIT_NOTES[0]}  ", UNIT_NOTES[1]])
    assert [(i, e.by, e.unit, e.units) for i, e in found] == [
        (0, "kernel", "user-1021.slice", ("user-1021.slice", "system-postgresql.slice")),
    ]
    assert found[0][1].raw == "\n".join(UNIT_NOTES[:2])
    apart = oomd([UNIT_NOTES[0], "unrelated", UNIT_NOTES[1]])
    assert [(i, e.unit, e.units) for i, e in apart] == [
        (0, "user-1021.slice", ("user-1021.slice",)),
        (2, "system-postgresql.slice", ("system-postgresql.slice",)),
    ]


def test_other_words_about_the_oom_killer_do_not_stop_the_scan() -> None:
    lines = ["the worker was killed by the OOM killer, see above", f"{UNIT_NOTES[0]} "]
    ((index, event),) = oomd(lines)
    assert (index, event.by, event.unit, event.raw) == (
        1,
        "kernel",
        "user-1021.slice",
        UNIT_NOTES[0],
    )


def test_a_kernel_note_after_an_oomd_kill_is_its_own_event() -> None:
    lines = [OOMD_3[3], UNIT_NOTES[0]]
    found = oomd(lines)
    assert [(i, e.by, e.unit) for i, e in found] == [
        (0, "systemd-oomd", "testsuite-55-testbloat.service"), (1, "kernel", "user-1021.slice"),
    ]  # fmt: skip


def test_a_kill_count_joins_the_kill_of_its_unit_or_stands_alone() -> None:
    # the count line alone (its kill line not in the text): an event with the count
    ((index, alone),) = oomd([OOMD_3[4] + " \t"])  # quoted without trailing blanks
    assert (index, alone.by, alone.unit, alone.units, alone.processes_killed, alone.cgroup) == (
        0, "systemd-oomd", "testsuite-55-testbloat.service", ("testsuite-55-testbloat.service",),
        2, None,
    )  # fmt: skip
    assert alone.raw == OOMD_3[4]
    # two kills of other units, then the count: it joins the kill of its own unit
    other = OOMD_3[3].replace("testsuite-55-testbloat.service", "other.service")
    found = oomd([OOMD_3[3], other, OOMD_3[4] + "  "])
    assert [(e.unit, e.processes_killed) for _, e in found] == [
        ("testsuite-55-testbloat.service", 2), ("other.service", None),
    ]  # fmt: skip
    assert found[0][1].raw == f"{OOMD_3[3]}\n{OOMD_3[4]}"
    # a second count for a unit already counted is another event
    twice = oomd([OOMD_3[3], OOMD_3[4], OOMD_3[4]])
    assert [(i, e.processes_killed, e.cgroup is None) for i, e in twice] == [
        (0, 2, False), (2, 2, True),
    ]  # fmt: skip


def test_attempts_belong_to_the_next_kill_only() -> None:
    found = oomd([*OOMD_3[:3], OOMD_3[3] + "  ", OOMD_3[4], OOMD_3[3]])
    assert [(i, e.pids) for i, e in found] == [(3, (63, 66)), (5, ())]
    first = found[0][1]
    assert (first.unit, first.units) == (
        "testsuite-55-testbloat.service", ("testsuite-55-testbloat.service",),
    )  # fmt: skip
    assert first.raw == f"{OOMD_3[3]}\n{OOMD_3[4]}"


def test_a_quoted_kill_without_prefix_or_reason_is_not_oomds() -> None:
    text = OOMD_3[3].split("systemd-oomd[34]: ", 1)[1]
    bare = text.split(" due to ", 1)[0]
    assert oomd([f"someone wrote: {bare}"]) == []
    assert oomd([f"the systemd-oomd manual says: {bare}"]) == []
    ((_, event),) = oomd([f"someone wrote: {text}"])
    assert (event.trigger, event.marked) == ("memory pressure", False)


# --- a JetsamEvent report's killed entry: exactly its own {...} ----------------------------

IPS_FULL = read_fixture("macos-jetsam-2-ips-full-report-highwater.txt")
IPS_ENTRY = read_fixture("macos-jetsam-1-ips-process-entry-per-process-limit.txt")


def jetsam(text: str) -> list[tuple[int, JetsamKill]]:
    from mpsctl.deaths.jetsam import find_jetsam

    return find_jetsam(text, text.splitlines())


def killed_object(text: str) -> tuple[int, str]:
    """The killed entry of the full report, found by its recorded first and last lines."""
    start = text.index('{\n  "uuid" : "f71f1e2b')
    end = text.index('"cpuTime" : 0.634077\n}', start) + len('"cpuTime" : 0.634077\n}')
    return text.count("\n", 0, start), text[start:end]


def test_a_full_reports_killed_entry_is_its_whole_object_with_nested_ones() -> None:
    line, entry = killed_object(IPS_FULL)
    ((index, event),) = jetsam(IPS_FULL)
    assert (index, event.raw) == (line, entry)
    assert (event.pid, event.process, event.reason, event.source) == (
        2527, "wifianalyticsd", "highwater", "ips",
    )  # fmt: skip
    assert (event.resident_pages, event.page_size, event.resident_bytes) == (
        382, 16384, 382 * 16384,
    )  # fmt: skip
    assert event.time == datetime(2020, 10, 15, 16, 29, 58, 790000, tzinfo=timezone.utc)


def test_a_nested_object_before_the_reason_stays_inside_the_entry() -> None:
    # the same entry with its keys in another order: "physicalPages" {...} before "reason"
    moved = IPS_FULL.replace('  "reason" : "highwater",\n', "").replace(
        '      41\n    ]\n  },\n  "pid" : 2527,',
        '      41\n    ]\n  },\n  "reason" : "highwater",\n  "pid" : 2527,',
    )
    assert moved.count('"reason"') == 1
    line, entry = killed_object(moved)
    ((index, event),) = jetsam(moved)
    assert (index, event.raw, event.pid, event.reason) == (line, entry, 2527, "highwater")


def test_a_copy_cut_before_its_opening_brace_starts_at_the_text() -> None:
    cut = IPS_ENTRY.split("\n", 1)[1]  # the "{" line lost
    ((index, event),) = jetsam(cut)
    assert index == 0
    assert event.raw == cut[: cut.index("},  ") + 1]
    assert event.raw.startswith('    "uuid"')
    assert (event.pid, event.process, event.resident_pages, event.page_size) == (
        4624, "RebornTunnel", 960, None,
    )  # fmt: skip
    # the next entry's "{" at the very end of the copy is not this entry's start
    ((index, event),) = jetsam(cut + "\n{")
    assert event.raw.startswith('    "uuid"')
    ((index, event),) = jetsam(" " + IPS_ENTRY)
    assert (index, event.raw[:1]) == (0, "{")
    ((index, event),) = jetsam("\n\n" + IPS_ENTRY)
    assert (index, event.pid) == (2, 4624)


def test_other_json_with_a_reason_is_skipped_and_the_scan_goes_on() -> None:
    other = '{"pid" : 5, "reason" : "crash"}\n{"name" : "x", "reason" : "quit"}\n'
    found = jetsam(other + IPS_FULL + "\n" + other)
    assert [(e.pid, e.reason) for _, e in found] == [(2527, "highwater")]


def test_an_entry_without_a_name_or_readable_pages_is_still_reported() -> None:
    entry = '{\n  "rpages" : null,\n  "reason" : "per-process-limit",\n  "pid" : 77\n}'
    ((index, event),) = jetsam(entry)
    assert (index, event.pid, event.process, event.resident_pages, event.reason) == (
        0, 77, None, None, "per-process-limit",
    )  # fmt: skip


# --- jetsam log lines: a fatal limit joins its kill, or is reported alone -------------------

PYTHONISTA = read_fixture("macos-jetsam-3-ios-syslog-killing_specific_process.txt").splitlines()


def test_a_fatal_limit_line_without_its_kill_is_an_incomplete_event() -> None:
    limit = next(line for line in PYTHONISTA if "exceeded mem limit" in line)
    ((index, event),) = jetsam(limit + "  ")
    assert (index, event.pid, event.process, event.complete, event.raw) == (
        0, 2776, "Pythonista3", False, limit,
    )  # fmt: skip
    assert (event.limit_bytes, event.limit_kind) == (3072 * MIB, "ActiveHard")
    nameless = "16:12:49.226  kernel: memorystatus: exceeded mem limit: ActiveHard 50 MB (fatal)"
    ((index, event),) = jetsam(nameless)
    assert (index, event.pid, event.process, event.complete) == (0, None, None, False)
    assert event.limit_bytes == 50 * MIB
    # a limit that is not fatal is no event
    assert jetsam(limit.replace(" (fatal)", "")) == []


def test_a_fatal_limit_joins_the_kill_of_its_pid() -> None:
    lines = [line for line in PYTHONISTA if "exceeded mem limit" in line or "killing_" in line]
    ((index, event),) = jetsam("\n".join(f"{line}  " for line in lines))
    assert (index, event.pid, event.complete, event.limit_bytes) == (0, 2776, True, 3072 * MIB)
    assert event.raw == "\n".join(lines)


CORPUS_DIR = FIXTURES / "corpus"
# iOS 26.6: the limit line names no process; the kernel's kill line right below names it
RADIANCE = (
    (CORPUS_DIR / "j-radiance-595-exceeded-no-name-killing-no-prefix.txt")
    .read_text(encoding="utf-8")
    .splitlines()
)
NAMELESS = RADIANCE[2]
NAMELESS_KILL = RADIANCE[3]
# iOS 26.5 unified log: each record wrapped under its stamp line, blank lines between
WRAPPED = (
    (CORPUS_DIR / "j-incident-webcontent-unified-log-wrapped.txt")
    .read_text(encoding="utf-8")
    .splitlines()
)


def test_a_nameless_limit_joins_the_next_kill_for_a_limit() -> None:
    assert "exceeded mem limit" in NAMELESS
    assert "killing_specific_process pid 1879" in NAMELESS_KILL
    found = jetsam("\n".join(RADIANCE))
    assert [(i, e.pid, e.limit_bytes, e.complete) for i, e in found] == [(2, 1879, 50 * MIB, True)]
    # the same kill in a copy that wraps records: the limit's record, a blank line, the
    # kernel's "killing process ... in high band" record and the stamp lines come between
    nameless = [line.replace("com.apple.WebKit.WebContent [2752] ", "") for line in WRAPPED]
    assert nameless[1] == "memorystatus: exceeded mem limit:"
    found = jetsam("\n".join(nameless))
    assert [(i, e.pid, e.limit_bytes, e.complete) for i, e in found] == [
        (1, 2752, 2048 * MIB, True)
    ]


def test_a_nameless_limit_whose_kill_is_not_in_the_text_is_still_a_kill() -> None:
    # more than 20 lines to the next kill: that is another process's; the limit's own kill
    # line was not copied, and the limit is reported as a kill of its own, incomplete
    between = RADIANCE[:2] * 10
    found = jetsam("\n".join([NAMELESS, *between, NAMELESS_KILL]))
    assert sorted((i, e.pid, e.limit_bytes, e.complete) for i, e in found) == [
        (0, None, 50 * MIB, False),
        (21, 1879, None, True),
    ]
    found = jetsam("\n".join([NAMELESS, *between[:-1], NAMELESS_KILL]))  # 20 lines below
    assert [(i, e.pid, e.limit_bytes) for i, e in found] == [(0, 1879, 50 * MIB)]
    # a second nameless limit before any kill: the first one's kill line is missing
    found = jetsam("\n".join([NAMELESS, RADIANCE[1], NAMELESS, NAMELESS_KILL]))
    assert sorted((i, e.pid, e.limit_bytes, e.complete) for i, e in found) == [
        (0, None, 50 * MIB, False),
        (2, 1879, 50 * MIB, True),
    ]


def test_a_kill_for_another_reason_leaves_a_nameless_limit_to_the_next_kill() -> None:
    text = (CORPUS_DIR / "j-ios-memory-exhaustion-writeup-run-together.txt").read_text("utf-8")
    zone_map = next(line for line in text.splitlines() if "(zone-map-exhaustion" in line)
    found = jetsam("\n".join([NAMELESS, zone_map, NAMELESS_KILL]))
    joined = [(e.pid, e.limit_bytes) for _, e in found if e.pid == 1879]
    assert joined == [(1879, 50 * MIB)]
    assert all(e.limit_bytes is None for _, e in found if e.pid != 1879)
    assert all(e.complete for _, e in found)


def test_two_kills_on_one_line_quote_each_its_own_text() -> None:
    kill = next(line for line in PYTHONISTA if "killing_" in line)
    text = kill.split("memorystatus: ", 1)[1]
    other = text.replace("pid 2776 [Pythonista3]", "pid 41 [backboardd]")
    found = jetsam(f"{text} {other}")
    assert [(e.pid, e.raw) for _, e in found] == [(2776, text), (41, other)]
