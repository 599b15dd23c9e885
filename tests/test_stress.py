"""The stress runner against real local HTTP servers; percentiles against known values."""

from __future__ import annotations

import math
import random
import threading

import pytest

from mpsctl.ask import AskExit, ask_once
from mpsctl.errors import ClientError, ConfigError
from mpsctl.settings import Settings, load_settings
from mpsctl.stress import StressPlan, make_plan, parse_levels, run_stress, run_sweep
from mpsctl.stress_results import (
    LatencyStats,
    MemorySample,
    peak_in_flight,
    percentile,
    stress_exit,
)
from tests.conftest import free_port
from tests.test_client import LocalService, local_service_fixture  # noqa: F401 - the fixture


def settings_for(url: str) -> Settings:
    return load_settings(environ={"MPSCTL_SERVICE_URL": url})


# --------------------------------------------------------------------------- pure
def test_nearest_rank_percentile_is_always_a_measured_value() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0  # ceil(0.5*4) = 2nd, not 2.5


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        # nearest rank = ceil(p/100 x n)-th smallest, worked by hand for p 50/90/95/99
        (1, (1, 1, 1, 1)),
        (2, (1, 2, 2, 2)),  # ceil(1.0)=1, ceil(1.8)=2, ceil(1.9)=2, ceil(1.98)=2
        (3, (2, 3, 3, 3)),  # ceil(1.5)=2
        (5, (3, 5, 5, 5)),  # ceil(2.5)=3, ceil(4.5)=5
        (10, (5, 9, 10, 10)),  # ceil(9.0)=9 exactly, ceil(9.5)=10
        (20, (10, 18, 19, 20)),  # ceil(19.0)=19, ceil(19.8)=20
    ],
)
def test_nearest_rank_on_small_samples(n: int, expected: tuple[int, ...]) -> None:
    values = [float(v) for v in range(1, n + 1)]
    assert tuple(percentile(values, p) for p in (50, 90, 95, 99)) == expected
    stats = LatencyStats.of(values[::-1])
    assert stats is not None
    assert tuple(stats.percentiles_s.values()) == expected


def test_percentile_rank_is_not_bumped_by_float_error() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 7) == 7.0  # 0.07 * 100 = 7.000000000000001 in floats
    assert percentile(values, 29) == 29.0


def test_latency_stats_match_a_sort_of_shuffled_values() -> None:
    values = [i / 1000 for i in range(1, 1001)]
    random.Random(4).shuffle(values)
    stats = LatencyStats.of(values)
    assert stats is not None
    assert (stats.count, stats.min_s, stats.max_s) == (1000, 0.001, 1.0)
    assert stats.percentiles_s == {50: 0.5, 90: 0.9, 95: 0.95, 99: 0.99}
    assert math.isclose(stats.mean_s, 0.5005)
    assert LatencyStats.of([]) is None


def test_levels_and_plan_defaults() -> None:
    assert parse_levels("1, 2,4,8") == (1, 2, 4, 8)
    with pytest.raises(ValueError, match="1-256"):
        parse_levels("1,0")
    with pytest.raises(ValueError, match="at most 16 levels"):
        parse_levels(",".join(["1"] * 17))
    assert make_plan("q", None, requests=None, concurrency=None, duration_s=None,
                     max_new_tokens=None, timeout=None).requests == 100  # fmt: skip
    plan = make_plan(None, ("a", "b", "c"), requests=None, concurrency=2, duration_s=None,
                     max_new_tokens=None, timeout=None)  # fmt: skip
    assert (plan.requests, plan.concurrency) == (3, 2)
    with pytest.raises(ConfigError, match="at most 3600"):
        StressPlan(("q",), duration_s=7200)


# --------------------------------------------------------------------------- against servers
def test_latency_statistics_agree_with_a_known_server_delay(local_service: LocalService) -> None:
    local_service.behaviour.sleep_s = 0.05
    plan = StressPlan(("工商银行",), concurrency=4, requests=40)
    result = run_stress(settings_for(local_service.url), plan, token=None)
    assert (result.total, result.ok, dict(result.by_status)) == (40, 40, {"200": 40})
    stats = result.latency
    assert stats is not None
    # The server sleeps 50 ms before answering: no latency can be shorter.
    assert stats.min_s >= 0.05
    # p50 is one of the measured latencies, ordered with the others (nearest-rank).
    measured = sorted(r.latency_s for r in result.records)
    assert stats.percentiles_s[50] == measured[19]
    assert stats.min_s <= stats.percentiles_s[50] <= stats.percentiles_s[99] <= stats.max_s
    assert stats.percentiles_s[50] < 0.05 + 1.0  # sane band, not a speed test
    # 4 workers x 50 ms: the run cannot finish faster than 10 rounds of 50 ms.
    assert result.elapsed_s >= 0.5
    assert result.requests_per_s == pytest.approx(40 / result.elapsed_s)
    assert result.tokens_total == 120  # the server reports 3 tokens per answer


def test_errors_are_counted_by_status_and_kind(local_service: LocalService) -> None:
    local_service.behaviour.every_nth_busy = 3
    result = run_stress(
        settings_for(local_service.url), StressPlan(("q",), requests=30), token=None
    )
    assert dict(result.by_status) == {"200": 20, "503": 10}
    assert dict(result.errors) == {"busy": 10}
    assert "Retry-After: 1" in result.error_examples["busy"]
    assert result.latency is not None
    assert result.latency.count == 20
    assert stress_exit([result]) == AskExit.FAILURE


def test_a_stopped_service_fails_every_request_as_unreachable() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = run_stress(settings_for(url), StressPlan(("q",), requests=5), token=None)
    assert (result.total, result.ok, dict(result.errors)) == (5, 0, {"refused": 5})
    assert result.latency is None
    assert stress_exit([result]) == AskExit.UNREACHABLE


def test_timeouts_are_counted_and_the_run_goes_on(local_service: LocalService) -> None:
    local_service.behaviour.sleep_s = 0.6
    plan = StressPlan(("q",), concurrency=2, requests=4, timeout=0.15)
    result = run_stress(settings_for(local_service.url), plan, token=None, sample_memory=False)
    assert dict(result.errors) == {"timeout": 4}
    assert all(0.15 <= r.latency_s < 0.6 for r in result.records)
    assert stress_exit([result]) == AskExit.TIMEOUT


def test_duration_stops_the_run(local_service: LocalService) -> None:
    local_service.behaviour.sleep_s = 0.02
    plan = StressPlan(("q",), concurrency=2, requests=None, duration_s=0.6)
    result = run_stress(settings_for(local_service.url), plan, token=None)
    assert result.stopped_by == "duration"
    assert 0.6 <= result.elapsed_s < 0.6 + 1.0
    assert result.total == len(local_service.behaviour.received) > 5


def test_memory_is_sampled_before_during_and_after(local_service: LocalService) -> None:
    # The local server runs inside this pytest process: the sampler finds it by its port.
    local_service.behaviour.sleep_s = 0.05
    plan = StressPlan(("q",), concurrency=2, requests=30)
    result = run_stress(settings_for(local_service.url), plan, token=None, sample_interval_s=0.1)
    memory = result.memory
    assert memory.samples >= 4  # before, at least two in the ~0.75 s run, after
    rss = memory.spans["tree_rss_bytes"]
    assert rss.before is not None
    assert rss.after is not None
    assert rss.peak is not None
    assert rss.peak >= max(rss.before, rss.after)
    assert memory.spans["accel_allocated_bytes"].peak is None  # this server reports none
    alive = [t.name for t in threading.enumerate()]
    assert "mpsctl-memory" not in alive  # the sampler thread ended with the run
    assert not any(name.startswith("mpsctl-ask-") for name in alive)


def test_sweep_runs_each_level(local_service: LocalService) -> None:
    local_service.behaviour.sleep_s = 0.01
    plan = StressPlan(("q",), requests=6)
    sweep = run_sweep(settings_for(local_service.url), plan, (1, 3), token=None)
    assert [level.concurrency for level in sweep.levels] == [1, 3]
    assert [level.ok for level in sweep.levels] == [6, 6]
    assert not sweep.interrupted
    assert stress_exit(sweep.levels, partial_is_failure=False) == AskExit.OK


def test_ask_once_maps_failures_to_exit_codes(local_service: LocalService) -> None:
    service = settings_for(local_service.url).service
    result = ask_once(service, "工商银行", token=None)
    assert (result.answer, result.model, result.tokens) == ("echo: 工商银行", "echo", 3)
    local_service.behaviour.token = "right"
    with pytest.raises(ClientError) as info:
        ask_once(service, "q", token="wrong")
    assert info.value.exit_code == AskExit.AUTH


def _sample(in_flight: int | None, seen: int | None) -> MemorySample:
    return MemorySample(0.0, None, None, None, None, None, "cpu", in_flight, 0, seen)


def test_peak_in_flight_from_the_services_counter_or_unknown() -> None:
    """#13 item 16: a short run with no sample during the load (before and after read 0):
    the service's high-water mark, risen from 0 to 2, is the peak; a mark that did not rise
    is the peak only if a sample saw it; without the counter, idle before/after samples
    never count and no sample during the load is unknown, not 0."""
    assert peak_in_flight([_sample(0, 0), _sample(0, 2)]) == 2
    assert peak_in_flight([_sample(0, 3), _sample(1, 3), _sample(0, 3)]) is None
    assert peak_in_flight([_sample(0, 3), _sample(3, 3), _sample(0, 3)]) == 3
    assert peak_in_flight([_sample(0, None), _sample(0, None)]) is None
    assert peak_in_flight([_sample(0, None), _sample(2, None), _sample(0, None)]) == 2
    assert peak_in_flight([_sample(0, 0)]) is None
