"""``mpsctl ask -n/--duration/--sweep``: many questions at once, to measure the service.

A stress run is a fixed pool of worker threads, each with its own kept-alive connection
(``client.KeepAliveConnection``, stdlib ``http.client``: a third of the CPU per request of a
``requests.Session``, which matters when the service shares the machine), taking request
numbers from one shared counter until the count, the duration or Ctrl-C stops them. Every
request records its own latency; statistics are computed afterwards from all of them.

Percentiles and the other results are ``mpsctl.stress_results``.

While the load runs, a background thread samples memory every ``SAMPLE_INTERVAL_S``: the
service's process tree (RSS, and macOS footprint) through ``mpsctl.observe.processes``, and the
accelerator counters the service reports in its health answer (README.md, "The memory report").
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mpsctl.ask import generated_tokens
from mpsctl.client import KeepAliveConnection, ServiceClient, encode_query
from mpsctl.errors import ClientError, ConfigError
from mpsctl.observe.accelerator import from_memory_report, json_int
from mpsctl.settings import Settings
from mpsctl.stress_results import (
    LatencyStats,
    MemorySample,
    MemoryStats,
    RequestRecord,
    StressResult,
    SweepResult,
)
from mpsctl.units import utc_now_iso

if TYPE_CHECKING:
    from mpsctl.plan.plan import Plan

# Hard caps: a stress run must end on its own even when a flag is mistyped.
MAX_REQUESTS = 100_000
MAX_DURATION_S = 3600.0
MAX_CONCURRENCY = 256
MAX_SWEEP_LEVELS = 16  # a sweep runs the whole plan once per level
DEFAULT_STRESS_REQUESTS = 100
SAMPLE_INTERVAL_S = 0.3
HEALTH_SAMPLE_TIMEOUT_S = 1.0


def parse_levels(text: str) -> tuple[int, ...]:
    """``"1,2,4,8"`` -> (1, 2, 4, 8); ValueError with a reason otherwise."""
    try:
        levels = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"expected concurrencies like 1,2,4,8, got {text!r}") from None
    if not levels or any(not 1 <= n <= MAX_CONCURRENCY for n in levels):
        raise ValueError(f"each concurrency must be 1-{MAX_CONCURRENCY}, got {text!r}")
    if len(levels) > MAX_SWEEP_LEVELS:
        raise ValueError(f"at most {MAX_SWEEP_LEVELS} levels, got {len(levels)}")
    return levels


@dataclass(frozen=True)
class StressPlan:
    questions: tuple[str, ...]
    concurrency: int = 1
    requests: int | None = DEFAULT_STRESS_REQUESTS  # None: until duration_s (still capped)
    duration_s: float | None = None
    max_new_tokens: int | None = None
    timeout: float | None = None

    def __post_init__(self) -> None:
        if not self.questions:
            raise ConfigError("a stress run needs a question or --questions FILE")
        if not 1 <= self.concurrency <= MAX_CONCURRENCY:
            raise ConfigError(f"concurrency must be 1-{MAX_CONCURRENCY}")
        if self.requests is not None and not 1 <= self.requests <= MAX_REQUESTS:
            raise ConfigError(f"requests must be 1-{MAX_REQUESTS}")
        if self.duration_s is not None and not 0 < self.duration_s <= MAX_DURATION_S:
            raise ConfigError(f"duration must be above 0 and at most {MAX_DURATION_S:g} s")


def make_plan(
    question: str | None,
    questions: tuple[str, ...] | None,
    *,
    requests: int | None,
    concurrency: int | None,
    duration_s: float | None,
    max_new_tokens: int | None,
    timeout: float | None,
) -> StressPlan:
    """Defaults: one pass over --questions, else 100 requests, unless --duration is given."""
    if question is not None and questions:
        raise ConfigError("give a QUESTION or --questions FILE, not both")
    pool = questions or ((question,) if question is not None else ())
    if requests is None and duration_s is None:
        requests = len(questions) if questions else DEFAULT_STRESS_REQUESTS
    return StressPlan(pool, concurrency or 1, requests, duration_s, max_new_tokens, timeout)


# --------------------------------------------------------------------------- memory sampling
class MemorySampler:
    """Samples the service's memory from a background thread while the load runs."""

    def __init__(self, settings: Settings, interval_s: float = SAMPLE_INTERVAL_S) -> None:
        self.settings = settings
        self.interval_s = interval_s
        self.samples: list[MemorySample] = []
        self._origin = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="mpsctl-memory", daemon=True)
        self._client = ServiceClient(settings.service)
        self._roots = self._find_roots()

    def _find_roots(self) -> list[tuple[int, float]]:
        """The service's root processes, found once: the pidfile or match, else the port."""
        from mpsctl.observe import processes  # psutil stays behind observe/

        if self.settings.service.host not in ("127.0.0.1", "localhost", "::1"):
            return []  # a remote service's processes are not ours to see
        snap = processes.find_service(self.settings)
        if snap.running:
            return [(p.pid, p.create_time) for p in snap.processes if p.pid in snap.roots]
        holder = processes.port_holder(self.settings.service.host, self.settings.service.port)
        return [(holder.pid, holder.create_time)] if isinstance(holder, processes.ProcInfo) else []

    def sample(self) -> MemorySample:
        from mpsctl.observe import processes

        ids = [i for root in self._roots for i in processes.tree_identities(*root)]
        infos = processes.processes_info(ids)
        rss = [p.rss_bytes for p in infos if p.rss_bytes is not None]
        foot = [p.footprint_bytes for p in infos if p.footprint_bytes is not None]
        report = self._report()
        accel = from_memory_report(dict(report))
        limiter: Mapping[str, Any] = report.get("limiter") or {}
        return MemorySample(
            at_s=time.perf_counter() - self._origin,
            tree_rss_bytes=sum(rss) if rss else None,
            tree_footprint_bytes=sum(foot) if foot else None,
            reported_rss_bytes=json_int(report.get("rss_bytes")),
            accel_allocated_bytes=accel.allocated_bytes,
            # Metal's memory for the whole process (MPS), the caching allocator's (CUDA)
            accel_held_bytes=(
                accel.driver_allocated_bytes
                if accel.driver_allocated_bytes is not None
                else accel.reserved_bytes
            ),
            device=report.get("device") if isinstance(report.get("device"), str) else None,
            in_flight=json_int(limiter.get("in_flight")),
            queued=json_int(limiter.get("queued")),
            max_in_flight_seen=json_int(limiter.get("max_in_flight_seen")),
        )

    def _report(self) -> Mapping[str, Any]:
        check = self._client.health(timeout=HEALTH_SAMPLE_TIMEOUT_S)
        body = check.body if isinstance(check.body, Mapping) else {}
        memory = body.get("memory")
        return memory if isinstance(memory, Mapping) else {}

    def start(self) -> None:
        """Take the "before" sample, then sample in the background; times count from here."""
        self.samples.append(self.sample())
        self._origin = time.perf_counter()
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.samples.append(self.sample())

    def halt(self) -> None:
        """End the background thread (waits for a sample in progress, a few seconds at most)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=HEALTH_SAMPLE_TIMEOUT_S * 3)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> MemoryStats:
        """Halt, take the "after" sample, and summarise."""
        self.halt()
        self.samples.append(self.sample())  # "after"
        self._client.close()
        return MemoryStats.of(list(self.samples), self.interval_s)


# --------------------------------------------------------------------------- the runner
ProgressCallback = Callable[[int, int, float], None]  # (done, ok, elapsed_s)


class _Run:
    """State shared by the workers of one stress run."""

    def __init__(self, settings: Settings, plan: StressPlan, token: str | None) -> None:
        self.settings, self.plan, self.token = settings, plan, token
        # Encoded once: the hot loop only sends bytes.
        self.bodies = [encode_query(q, plan.max_new_tokens) for q in plan.questions]
        self.counter = itertools.count()  # next() on it is atomic under the GIL
        self.limit = plan.requests if plan.requests is not None else MAX_REQUESTS
        self.stop = threading.Event()
        self.records: list[RequestRecord] = []  # list.append is atomic under the GIL
        self.examples: dict[str, str] = {}
        self.origin = time.perf_counter()
        self.deadline = self.origin + MAX_DURATION_S

    def begin(self) -> None:
        self.origin = time.perf_counter()
        self.deadline = self.origin + (self.plan.duration_s or MAX_DURATION_S)

    def worker(self) -> None:
        service = self.settings.service
        conn = KeepAliveConnection(service, token=self.token, timeout=self.plan.timeout)
        path, bodies, count = service.query_path, self.bodies, len(self.bodies)
        try:
            while not self.stop.is_set():
                index = next(self.counter)
                started = time.perf_counter()
                if index >= self.limit or started >= self.deadline:
                    return
                status: int | None = None
                tokens = None
                try:
                    reply = conn.post(path, bodies[index % count])
                    status = reply.status
                    error = conn.query_error(reply)
                    latency = reply.latency_s
                except ClientError as exc:
                    error, latency = exc, time.perf_counter() - started
                if error is None:
                    tokens = generated_tokens(reply.body)
                else:
                    self.examples.setdefault(error.kind, str(error))
                kind = None if error is None else error.kind
                self.records.append(
                    RequestRecord(started - self.origin, latency, status, kind, tokens)
                )
        finally:
            conn.close()


def run_stress(
    settings: Settings,
    plan: StressPlan,
    *,
    token: str | None,
    on_progress: ProgressCallback | None = None,
    sample_memory: bool = True,
    sample_interval_s: float = SAMPLE_INTERVAL_S,
) -> StressResult:
    """Drive ``plan.concurrency`` workers until the count or the duration; Ctrl-C stops early
    and returns what was gathered (``stopped_by == "interrupt"``)."""
    run = _Run(settings, plan, token)
    sampler = MemorySampler(settings, sample_interval_s) if sample_memory else None
    started_at = utc_now_iso()
    # Daemon threads, not ThreadPoolExecutor: after Ctrl-C a request still waiting on a hung
    # service must not hold the process until its timeout (the executor joins at exit).
    workers = [
        threading.Thread(target=run.worker, name=f"mpsctl-ask-{i}", daemon=True)
        for i in range(plan.concurrency)
    ]
    stopped_by = "count"
    seen = ok = 0
    try:
        if sampler is not None:
            sampler.start()
        run.begin()  # after the "before" sample: it is not part of the load
        for thread in workers:
            thread.start()
        for thread in workers:
            while thread.is_alive():
                thread.join(0.1)
                if on_progress is not None:
                    # Only the records added since the last tick: O(n) over the run, not O(n²).
                    done = len(run.records)
                    ok += sum(1 for r in run.records[seen:done] if r.kind is None)
                    seen = done
                    on_progress(done, ok, time.perf_counter() - run.origin)
        if plan.duration_s is not None and time.perf_counter() >= run.deadline:
            stopped_by = "duration"
    except KeyboardInterrupt:
        stopped_by = "interrupt"
    finally:
        run.stop.set()  # whatever happened, no worker starts another request
        if sampler is not None:
            sampler.halt()  # and the sampler thread ends (an error here must not leave it)
    elapsed = time.perf_counter() - run.origin
    records = tuple(run.records)  # requests still in flight after Ctrl-C are left out
    memory = sampler.stop() if sampler is not None else MemoryStats.of([], 0.0)
    return _summarize(
        settings,
        plan,
        run,
        records=records,
        elapsed=elapsed,
        stopped_by=stopped_by,
        started_at=started_at,
        memory=memory,
    )


def _summarize(
    settings: Settings,
    plan: StressPlan,
    run: _Run,
    *,
    records: tuple[RequestRecord, ...],
    elapsed: float,
    stopped_by: str,
    started_at: str,
    memory: MemoryStats,
) -> StressResult:
    ok = [r for r in records if r.kind is None]
    tokens = [r.tokens for r in ok if r.tokens is not None]
    statuses = Counter(str(r.status) for r in records if r.status is not None)
    errors = Counter(r.kind for r in records if r.kind is not None)
    return StressResult(
        url=settings.service.query_url,
        started_at=started_at,
        concurrency=plan.concurrency,
        requests_limit=plan.requests,
        duration_limit_s=plan.duration_s,
        stopped_by=stopped_by,
        elapsed_s=elapsed,
        total=len(records),
        ok=len(ok),
        by_status=dict(sorted(statuses.items())),
        errors=dict(errors.most_common()),
        error_examples={k: run.examples[k] for k in errors if k in run.examples},
        latency=LatencyStats.of([r.latency_s for r in ok]),
        tokens_total=sum(tokens) if tokens else None,
        memory=memory,
        records=records,
    )


def run_sweep(
    settings: Settings,
    plan: StressPlan,
    levels: Sequence[int],
    *,
    token: str | None,
    on_level: Callable[[int], ProgressCallback | None] | None = None,
    sample_interval_s: float = SAMPLE_INTERVAL_S,
) -> SweepResult:
    """The same plan at each concurrency in turn; Ctrl-C ends the sweep after that level.

    The served model's memory plan (``mpsctl plan``) comes with it: its predicted peak at
    each level is shown beside the measured one."""
    memory_plan, plan_note = sweep_memory_plan(settings, plan)
    results: list[StressResult] = []
    for level in levels:
        level_plan = StressPlan(
            plan.questions,
            level,
            plan.requests,
            plan.duration_s,
            plan.max_new_tokens,
            plan.timeout,
        )
        progress = on_level(level) if on_level is not None else None
        result = run_stress(
            settings,
            level_plan,
            token=token,
            on_progress=progress,
            sample_interval_s=sample_interval_s,
        )
        results.append(result)
        if result.interrupted:
            return SweepResult(tuple(results), True, memory_plan, plan_note)
    return SweepResult(tuple(results), False, memory_plan, plan_note)


def sweep_memory_plan(settings: Settings, stress: StressPlan) -> tuple[Plan | None, str | None]:
    """The plan of the served model for this run's questions: one token per UTF-8 byte of
    the longest question (the plan's upper bound; the chat template's own tokens are not
    counted), the run's max_new_tokens, and the service's memory report when it answers."""
    from mpsctl.plan.configured import configured_plan

    client = ServiceClient(settings.service)
    try:
        body = client.health(timeout=HEALTH_SAMPLE_TIMEOUT_S * 3).body
    finally:
        client.close()
    report = body.get("memory") if isinstance(body, dict) else None
    longest = max((len(q.encode("utf-8")) for q in stress.questions), default=1)
    try:
        found = configured_plan(
            settings,
            report if isinstance(report, dict) else None,
            max_new_tokens=stress.max_new_tokens,
            prompt_tokens=max(1, longest),
        )
    except Exception as exc:  # the prediction is a comment on the sweep, never its failure
        return None, f"no memory plan: {type(exc).__name__}: {exc}"
    return found.plan, None if found.plan else f"no memory plan: {found.reason}"
