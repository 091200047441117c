"""Property tests: generated RFC 21 lifecycles, interleaved, exact, and mutated.

The strategies build job lifecycles the way flux-core writes them (one composite per
kind of life), keeping their own model of the states the job passes through, so the
tracker's record of account can be checked against an independent expectation.
"""

from __future__ import annotations

import dataclasses
import functools
import heapq
import io
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Final, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from fluxmon.app import build
from fluxmon.config import load_settings
from fluxmon.events import EXEC, MAIN, STATES, JobEvent, JobState, Result, f58
from fluxmon.jobspec import RLIMIT, jobspec, resource_set
from fluxmon.tracker import Job, NullSink, Tracker

Draw = Callable[[st.SearchStrategy[Any]], Any]

BASE_TS: Final = 1_795_880_016.6594446
#: Increments between consecutive events of one job: often none, often sub-second.
INCREMENTS: Final = st.one_of(
    st.just(0.0),
    st.floats(1e-6, 1.0),
    st.floats(1.0, 7200.0),
)
QUEUES: Final = st.sampled_from([None, "batch", "debug"])
#: Event names of the main eventlog with a meaning in RFC 21 (site names must avoid them).
KNOWN_NAMES: Final = frozenset(
    {
        "submit", "validate", "invalidate", "depend", "priority", "urgency", "alloc",
        "start", "finish", "release", "free", "clean", "exception", "jobspec-update",
        "flux-restart", "prolog-start", "prolog-finish", "epilog-start", "epilog-finish",
        "annotations",
    }
)  # fmt: skip
SITE_NAMES: Final = st.one_of(
    st.sampled_from(["set-flags", "resource-update", "debug.alloc-request", "site.audit"]),
    st.from_regex(r"\Ax-[a-z]{1,8}(\.[a-z]{1,6})?\Z").filter(lambda n: n not in KNOWN_NAMES),
)
PROPERTY_SETTINGS: Final = settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --------------------------------------------------------------------------- the model


class Timeline:
    """One job's events under construction, with the model's own view of its states."""

    def __init__(self, draw: Draw, jobid: int, start: float) -> None:
        self.draw = draw
        self.jobid = jobid
        self.ts = start
        self.events: list[JobEvent] = []
        self.used: set[tuple[str, str, float]] = set()
        self.state: JobState = "NEW"
        self.entered = start
        self.time_in: dict[JobState, float] = dict.fromkeys(STATES[:-1], 0.0)
        self.first: dict[JobState, float] = {"NEW": start}
        self.nnodes = 1

    def emit(
        self,
        name: str,
        context: Mapping[str, Any] | None = None,
        *,
        eventlog: str = MAIN,
        to: JobState | None = None,
        jobspec: Mapping[str, Any] | None = None,
        R: Mapping[str, Any] | None = None,
    ) -> float:
        """Append an event a drawn increment after the previous one; return its time.

        Two events with the same eventlog, name and timestamp would be one event twice
        to any consumer, so a tie is nudged one ulp later.
        """
        ts = self.ts if not self.events else self.ts + self.draw(INCREMENTS)
        while (eventlog, name, ts) in self.used:
            ts = math.nextafter(ts, math.inf)
        self.used.add((eventlog, name, ts))
        self.ts = ts
        self.events.append(
            JobEvent(self.jobid, eventlog, name, ts, dict(context or {}), jobspec, R)
        )
        if to is not None and to != self.state:
            self.time_in[self.state] += ts - self.entered
            self.state = to
            self.entered = ts
            self.first.setdefault(to, ts)
        return ts

    def extras(self, *, exceptions: bool = True) -> None:
        """Zero to two memos, site-defined events or non-fatal exceptions."""
        for _ in range(self.draw(st.integers(0, 2))):
            kind = self.draw(st.sampled_from(["memo", "site", "exception"]))
            if kind == "memo":
                self.emit("memo", {self.draw(st.sampled_from(["uri", "note", "k"])): "v"})
            elif kind == "site" or not exceptions:
                self.emit(self.draw(SITE_NAMES), {"flags": ["debug"]})
            else:
                self.emit(
                    "exception",
                    {
                        "type": self.draw(st.sampled_from(["test", "node-fail", "cancel"])),
                        "severity": self.draw(st.integers(1, 7)),
                        "note": "non-fatal",
                        "userid": 0,
                    },
                )


@dataclasses.dataclass(frozen=True)
class Lifecycle:
    """A job's events and what ``flux jobs`` would say about it."""

    jobid: int
    events: tuple[JobEvent, ...]
    dropped: bool  # invalidated: never finishes
    result: Result | None
    returncode: int | None
    time_in: Mapping[JobState, float]
    first: Mapping[JobState, float]


@dataclasses.dataclass(frozen=True)
class Workload:
    """Several lifecycles merged into one stream by timestamp."""

    jobs: tuple[Lifecycle, ...]
    events: tuple[JobEvent, ...]


def _done(tl: Timeline, result: Result | None, returncode: int | None) -> Lifecycle:
    return Lifecycle(
        tl.jobid, tuple(tl.events), False, result, returncode, dict(tl.time_in), dict(tl.first)
    )


@st.composite
def wait_statuses(draw: Draw) -> tuple[int, int]:
    """A shell wait status and the return code ``flux jobs`` derives from it."""
    kind = draw(st.sampled_from(["exit0", "exit0", "exit", "signal"]))
    if kind == "exit0":
        return 0, 0
    if kind == "exit":
        code = draw(st.integers(1, 255))
        return code << 8, code
    signal = draw(st.integers(1, 64))
    core = draw(st.sampled_from([0, 0x80]))
    return signal | core, -signal


def _submit(tl: Timeline, *, urgency: int = 16) -> None:
    draw = tl.draw
    tl.nnodes = draw(st.integers(1, 3))
    nnodes = tl.nnodes
    spec = jobspec(
        draw(QUEUES),
        draw(st.sampled_from([0, 60.0, 3600])),
        nnodes,
        command=["sh", "-c", "exit 0"],
        nnodes=nnodes if nnodes > 1 else None,
        cwd="/tmp",
        rlimit=RLIMIT,
    )
    tl.emit(
        "submit",
        {"userid": draw(st.sampled_from([0, 1000])), "urgency": urgency, "flags": 0, "version": 1},
        jobspec=spec,
    )


def _pending(tl: Timeline, *, deps: bool = False, hold: bool = False) -> None:
    """NEW → DEPEND → PRIORITY → SCHED, with dependencies and a hold if asked."""
    draw = tl.draw
    description = {"description": "after-success=\u019225aGgs9"}
    if deps:
        tl.emit("dependency-add", description)
    tl.emit("validate", to="DEPEND")
    tl.extras()
    if deps:
        tl.emit("dependency-remove", description)
    tl.emit("depend", to="PRIORITY")
    tl.extras()
    tl.emit("priority", {"priority": 0 if hold else 16}, to="SCHED")
    if hold:
        tl.extras()
        revert = draw(st.sampled_from(["urgency", "urgency", "jobspec-update", "flux-restart"]))
        tl.emit(revert, {"userid": 0, "urgency": 16} if revert == "urgency" else {}, to="PRIORITY")
        tl.extras()
        tl.emit("priority", {"priority": 16}, to="SCHED")
    for _ in range(draw(st.integers(0, 1))):  # a re-prioritisation inside SCHED
        tl.emit("priority", {"priority": draw(st.integers(1, 2**31))})


def _running(tl: Timeline, status: int, fatal: str | None) -> Result:
    """SCHED → RUN → CLEANUP: alloc, prolog, start, exec events, maybe a fatal exception, finish.

    Returns the result flux-core will compute.
    """
    draw = tl.draw
    ranks = "0" if tl.nnodes == 1 else f"0-{tl.nnodes - 1}"
    R = resource_set(tl.ts, tl.nnodes)
    tl.emit(
        "alloc",
        {"annotations": {"sched": {"resource_summary": f"rank{ranks}/core0"}}},
        to="RUN",
        R=R,
    )
    if draw(st.booleans()):
        tl.emit("prolog-start", {"description": "job-manager.prolog"})
        tl.emit("prolog-finish", {"description": "job-manager.prolog", "status": 0})
    tl.emit("init", eventlog=EXEC)
    tl.emit("starting", eventlog=EXEC)
    tl.emit("start")
    tl.emit(
        "shell.init",
        {"service": "0-shell-f25aGgs9", "leader-rank": 0, "size": tl.nnodes},
        eventlog=EXEC,
    )
    tl.emit(
        "shell.start", {"taskmap": {"version": 1, "map": [[0, tl.nnodes, 1, 1]]}}, eventlog=EXEC
    )
    tl.extras()
    if fatal is not None:
        tl.emit(
            "exception",
            {"type": fatal, "severity": 0, "note": "", "userid": 0},
            to="CLEANUP",
        )
    tl.emit(
        "shell.task-exit",
        {"localid": 0, "rank": 0, "state": "Exited", "pid": 6919, "wait_status": status},
        eventlog=EXEC,
    )
    tl.emit("complete", {"status": status}, eventlog=EXEC)
    tl.emit("done", eventlog=EXEC)
    tl.emit("finish", {"status": status}, to="CLEANUP")
    if fatal is not None:
        return {"cancel": "canceled", "timeout": "timeout"}.get(fatal, "failed")  # type: ignore[return-value]
    return "completed" if status == 0 else "failed"


def _cleanup(tl: Timeline) -> None:
    """CLEANUP → INACTIVE: epilog, release, free, clean."""
    tl.extras()
    if tl.draw(st.booleans()):
        tl.emit("epilog-start", {"description": "job-manager.epilog"})
        tl.emit("epilog-finish", {"description": "job-manager.epilog", "status": 0})
    tl.emit("release", {"ranks": "all", "final": True})
    tl.emit("free")
    tl.emit("clean", to="INACTIVE")


# --------------------------------------------------------------------------- one composite per kind


@st.composite
def ran_lives(
    draw: Draw,
    jobid: int,
    start: float,
    *,
    deps: bool | None = False,
    hold: bool = False,
    killed: bool = False,
) -> Lifecycle:
    """Submit to clean through RUN; success or failure by exit code or signal.

    ``deps``: a dependency is added before validate and removed before depend (None:
    drawn). ``hold``: submitted held (urgency 0), released by an urgency event. ``killed``:
    canceled, timed out or failed to exec while running (a fatal exception, then finish).
    """
    tl = Timeline(draw, jobid, start)
    _submit(tl, urgency=0 if hold else 16)
    _pending(tl, deps=draw(st.booleans()) if deps is None else deps, hold=hold)
    statuses = wait_statuses()
    fatal = None
    if killed:
        statuses = st.one_of(statuses, st.sampled_from([(36608, 143), (15, -15), (9, -9)]))
        fatal = draw(st.sampled_from(["cancel", "timeout", "exec"]))
    status, code = draw(statuses)
    result = _running(tl, status, fatal)
    _cleanup(tl)
    return _done(tl, result, code)


@st.composite
def canceled_pending_lives(draw: Draw, jobid: int, start: float) -> Lifecycle:
    """A job canceled (or failed by its dependency) in DEPEND, PRIORITY or SCHED; never ran."""
    tl = Timeline(draw, jobid, start)
    hold = draw(st.booleans())
    _submit(tl, urgency=0 if hold else 16)
    stop_in = draw(st.sampled_from(["DEPEND", "PRIORITY", "SCHED"]))
    etype = draw(st.sampled_from(["cancel", "cancel", "dependency"]))
    tl.emit("validate", to="DEPEND")
    tl.extras()
    if stop_in != "DEPEND":
        tl.emit("depend", to="PRIORITY")
        if stop_in == "SCHED":
            tl.emit("priority", {"priority": 0 if hold else 16}, to="SCHED")
    tl.extras()
    tl.emit("exception", {"type": etype, "severity": 0, "note": "", "userid": 0}, to="CLEANUP")
    tl.extras(exceptions=False)
    tl.emit("clean", to="INACTIVE")
    return _done(
        tl, "canceled" if etype == "cancel" else "failed", -128 if etype == "cancel" else 1
    )


@st.composite
def invalidated_lives(draw: Draw, jobid: int, start: float) -> Lifecycle:
    """A job refused by validation: submit, then invalidate; it is dropped unfinished."""
    tl = Timeline(draw, jobid, start)
    _submit(tl)
    tl.emit("invalidate", {"errmsg": "unknown queue"})
    return Lifecycle(jobid, tuple(tl.events), True, None, None, {}, {})


#: One entry per kind of job, each called with (jobid, start) to give its strategy.
LIFE_KINDS: Final[tuple[Callable[[int, float], st.SearchStrategy[Lifecycle]], ...]] = (
    ran_lives,  # plain: no dependency, no hold
    functools.partial(ran_lives, deps=True),
    functools.partial(ran_lives, deps=None, hold=True),
    canceled_pending_lives,
    functools.partial(ran_lives, deps=None, killed=True),
    invalidated_lives,
)


@st.composite
def workloads(draw: Draw, max_jobs: int = 6) -> Workload:
    """One to ``max_jobs`` lifecycles, started at drawn offsets, merged by timestamp."""
    jobids = draw(st.lists(st.integers(1, 2**63), min_size=1, max_size=max_jobs, unique=True))
    jobs: list[Lifecycle] = []
    for jobid in jobids:
        start = BASE_TS + draw(st.floats(0.0, 3600.0))
        kind = draw(st.sampled_from(LIFE_KINDS))
        jobs.append(draw(kind(jobid, start)))
    merged = heapq.merge(*(job.events for job in jobs), key=lambda e: e.timestamp)
    return Workload(tuple(jobs), tuple(merged))


# --------------------------------------------------------------------------- a recording sink


class Recorder(NullSink):
    """Records what the tracker says, and the state of each job when it finished."""

    def __init__(self) -> None:
        self.accepted = 0
        self.finished: dict[int, tuple[object, ...]] = {}
        self.jobs: dict[int, Job] = {}
        self.left: defaultdict[int, float] = defaultdict(float)
        self.durations: list[tuple[str, float]] = []
        self.rejections: list[str] = []

    def job_event(self, job: Job, event: JobEvent) -> None:
        self.accepted += 1

    def state_left(self, job: Job, state: JobState, seconds: float, event: JobEvent) -> None:
        self.left[job.jobid] += seconds
        self.durations.append((f"state_left {state}", seconds))

    def queued(self, job: Job, seconds: float, event: JobEvent) -> None:
        self.durations.append(("queued", seconds))

    def launched(self, job: Job, seconds: float, event: JobEvent) -> None:
        self.durations.append(("launched", seconds))

    def perilog(self, job: Job, phase: str, seconds: float, event: JobEvent) -> None:
        self.durations.append((phase, seconds))

    def job_finished(self, job: Job) -> None:
        self.jobs[job.jobid] = job
        self.finished[job.jobid] = record_of(job)

    def event_rejected(self, reason: str, detail: str, event: JobEvent | None) -> None:
        self.rejections.append(reason)


def record_of(job: Job) -> tuple[object, ...]:
    """Everything a finished job's record of account is made of."""
    return (
        job.jobid, job.queue, job.result, job.returncode, job.status, job.exc_type,
        job.exc_severity, job.t_submit, job.t_depend, job.t_alloc, job.t_run, job.t_start,
        job.t_cleanup, job.t_inactive, tuple(job.time_in.items()), job.ntasks, job.nnodes,
        job.duration_limit,
    )  # fmt: skip


def feed(events: Sequence[JobEvent]) -> tuple[Tracker, Recorder, int]:
    """A fresh tracker fed ``events``; also how many it accepted."""
    recorder = Recorder()
    tracker = Tracker([recorder])
    accepted = sum(tracker.apply(event) for event in events)
    return tracker, recorder, accepted


# --------------------------------------------------------------------------- 1, 2: exact records


@PROPERTY_SETTINGS
@given(workloads())
def test_finished_jobs_account_for_all_their_time(workload: Workload) -> None:
    """Finished jobs' states sum to their lives; result, returncode, runtime match flux jobs."""
    tracker, recorder, accepted = feed(workload.events)
    assert recorder.rejections == []
    assert accepted == len(workload.events)
    assert tracker.jobs == {}
    expected_finished = {life.jobid for life in workload.jobs if not life.dropped}
    assert set(recorder.jobs) == expected_finished
    for life in workload.jobs:
        if life.dropped:
            continue
        job = recorder.jobs[life.jobid]
        assert job.t_inactive is not None
        assert math.isclose(sum(job.time_in.values()), job.t_inactive - job.t_submit, abs_tol=1e-6)
        for state in STATES[:-1]:
            assert math.isclose(job.time_in[state], life.time_in[state], abs_tol=1e-6), state
        assert job.t_submit == life.first["NEW"]
        assert job.t_depend == life.first.get("DEPEND")
        assert job.t_run == life.first.get("RUN")
        assert job.t_cleanup == life.first.get("CLEANUP")
        assert job.t_inactive == life.first["INACTIVE"]
        if job.ran:
            assert job.runtime == life.first["CLEANUP"] - life.first["RUN"]
        else:
            assert job.runtime is None
        assert job.result == life.result
        assert (job.result == "completed") == _finished_cleanly(life)
        assert job.returncode == life.returncode


def _finished_cleanly(life: Lifecycle) -> bool:
    """True when ``finish`` had status 0 and no fatal exception came before it."""
    for event in life.events:
        if event.eventlog != MAIN:
            continue
        if event.name == "exception" and event.context["severity"] == 0:
            return False
        if event.name == "finish":
            return bool(event.context["status"] == 0)
    return False


@PROPERTY_SETTINGS
@given(workloads())
def test_state_visits_cover_everything_after_new(workload: Workload) -> None:
    """The seconds of every state visit reported for a job add up to t_inactive - t_depend."""
    _, recorder, _ = feed(workload.events)
    for life in workload.jobs:
        if life.dropped:
            assert life.jobid not in recorder.left
            continue
        job = recorder.jobs[life.jobid]
        assert job.t_inactive is not None
        assert job.t_depend is not None
        assert math.isclose(recorder.left[life.jobid], job.t_inactive - job.t_depend, abs_tol=1e-6)


# --------------------------------------------------------------------------- 3: monotonic counters

MONOTONIC_SUFFIXES: Final = ("_total", "_count", "_bucket", "_sum")
SampleKey = tuple[str, tuple[tuple[str, str], ...]]


def _monotonic_samples(registry: CollectorRegistry) -> Iterator[tuple[SampleKey, float]]:
    for family in registry.collect():
        for sample in family.samples:
            if sample.name.endswith(MONOTONIC_SUFFIXES):
                yield (sample.name, tuple(sorted(sample.labels.items()))), sample.value


@pytest.mark.slow
@settings(PROPERTY_SETTINGS, max_examples=40)
@given(workloads(), st.lists(st.integers(1, 40), min_size=1, max_size=30))
def test_counters_never_go_down(workload: Workload, sizes: list[int]) -> None:
    """Through the real pipeline, in batches of any size, no counter, bucket or sum decreases."""
    parts = build(load_settings(None), io.StringIO(), clock=None)
    previous: dict[SampleKey, float] = {}
    events = list(workload.events)
    position, turn = 0, 0
    while position < len(events):
        size = sizes[turn % len(sizes)]
        parts.pipeline.events(events[position : position + size])
        position, turn = position + size, turn + 1
        current = dict(_monotonic_samples(parts.registry))
        for key, value in current.items():
            assert value >= previous.get(key, 0.0), key
        previous = current
    submitted = sum(
        value for (name, _), value in previous.items() if name == "flux_jobs_submitted_total"
    )
    assert submitted == len(workload.jobs)
    assert sum(parts.tracker.rejected.values()) == 0


# --------------------------------------------------------------------------- 4: mutated streams


def bad(event: JobEvent, **fields: object) -> JobEvent:
    """``event`` with fields replaced by values of any type (what a buggy source might send)."""
    replaced: JobEvent = cast(Any, event)._replace(**fields)
    return replaced


BAD_TIMESTAMPS: Final = st.sampled_from(
    ["1795880016.5", None, math.nan, math.inf, -math.inf, True, 10**400, [1.0], -1.0, 0]
)
BAD_NAMES: Final = st.sampled_from([5, None, "", b"submit", "annotations", "submit"])
BAD_CONTEXTS: Final = st.sampled_from([[], None, "status=0", 7, [("status", 0)]])
BAD_EVENTLOGS: Final = st.sampled_from(["bogus", None, 1, "main", EXEC, MAIN])
BAD_VALUES: Final[st.SearchStrategy[object]] = st.one_of(
    st.sampled_from(["0", "x", 99, -1, None, math.nan, True, 10**30, [], {}, 1.5, 2**70]),
    st.text(max_size=4),
)
BAD_JOBSPECS: Final = st.sampled_from(
    [
        [],
        "jobspec",
        {"attributes": "x"},
        {"attributes": {"system": {"queue": 5, "duration": "x"}}},
        {"attributes": {"system": {"duration": math.inf, "queue": ""}}},
        {"resources": [{"type": "node", "count": {"min": "x"}}], "tasks": "t"},
        {"resources": [{"type": "slot", "count": True, "with": 3}], "tasks": [{"count": 2}]},
    ]
)
BAD_RS: Final = st.sampled_from(
    [
        [],
        {"execution": []},
        {"execution": {"R_lite": [{"rank": "5-2"}]}},
        {"execution": {"R_lite": [{"rank": "\u00b2"}]}},
        {"execution": {"R_lite": [{"rank": 3}]}},
        {"execution": {"R_lite": [{"rank": "0-"}]}},
    ]
)


@st.composite
def jobids_of_any_type(draw: Draw, original: object) -> object:
    """A jobid as a buggy source might send it."""
    jobid = original if type(original) is int and 0 < original < 2**64 else 1
    return draw(
        st.sampled_from([str(jobid), -jobid, True, False, f58(jobid), 2**64 + jobid, 1.5, None])
    )


@st.composite
def mutated_streams(draw: Draw) -> list[JobEvent]:
    """A generated stream with events dropped, duplicated, reordered, and fields broken."""
    events = list(draw(workloads(max_jobs=4)).events)
    for _ in range(draw(st.integers(1, 12))):
        if not events:
            break
        i = draw(st.integers(0, len(events) - 1))
        j = draw(st.integers(0, len(events) - 1))
        event = events[i]
        op = draw(
            st.sampled_from(
                [
                    "drop", "duplicate", "swap", "move", "timestamp", "name", "context",
                    "jobid", "eventlog", "value", "delete", "jobspec", "R",
                ]
            )
        )  # fmt: skip
        if op == "drop":
            del events[i]
        elif op == "duplicate":
            events.insert(j, event)
        elif op == "swap":
            events[i], events[j] = events[j], events[i]
        elif op == "move":
            events.insert(j, events.pop(i))
        elif op == "timestamp":
            events[i] = bad(event, timestamp=draw(BAD_TIMESTAMPS))
        elif op == "name":
            events[i] = bad(event, name=draw(BAD_NAMES))
        elif op == "context":
            events[i] = bad(event, context=draw(BAD_CONTEXTS))
        elif op == "jobid":
            events[i] = bad(event, jobid=draw(jobids_of_any_type(event.jobid)))
        elif op == "eventlog":
            events[i] = bad(event, eventlog=draw(BAD_EVENTLOGS))
        elif op == "value" and isinstance(event.context, Mapping):
            keys = sorted(event.context) or ["status"]
            key = draw(st.sampled_from(keys))
            events[i] = bad(event, context={**event.context, key: draw(BAD_VALUES)})
        elif op == "delete" and isinstance(event.context, Mapping) and event.context:
            key = draw(st.sampled_from(sorted(event.context)))
            events[i] = bad(event, context={k: v for k, v in event.context.items() if k != key})
        elif op == "jobspec":
            events[i] = bad(event, jobspec=draw(BAD_JOBSPECS))
        elif op == "R":
            events[i] = bad(event, R=draw(BAD_RS))
    return events


@pytest.mark.slow
@settings(PROPERTY_SETTINGS, max_examples=200)
@given(mutated_streams())
def test_mutated_streams_never_raise_and_are_accounted_for(events: list[JobEvent]) -> None:
    """Broken input never raises, each event is accepted or refused once, no duration is < 0."""
    recorder = Recorder()
    tracker = Tracker([recorder])
    accepted = 0
    for event in events:
        applied, refused = recorder.accepted, len(recorder.rejections)
        ok = tracker.apply(event)
        assert ok is True or ok is False
        accepted += ok
        applied, refused = recorder.accepted - applied, len(recorder.rejections) - refused
        if ok:  # applied once, or a journal-only event that is skipped silently
            assert (applied, refused) == ((0, 0) if event.name == "annotations" else (1, 0))
        else:
            assert (applied, refused) == (0, 1)
    assert accepted + len(recorder.rejections) == len(events)
    assert sum(tracker.rejected.values()) == len(recorder.rejections)
    assert Counter(recorder.rejections) == +Counter(tracker.rejected)
    negative = [(what, seconds) for what, seconds in recorder.durations if not seconds >= 0]
    assert negative == []
    for job in tracker.jobs.values():
        assert all(seconds >= 0 for seconds in job.time_in.values()), job.time_in
        assert sum(job.time_in.values()) + (job.last_main_ts - job.entered) >= 0


# --------------------------------------------------------------------------- 5: duplicates


@PROPERTY_SETTINGS
@given(workloads())
def test_duplicates_are_idempotent(workload: Workload) -> None:
    """Every event fed twice gives the same finished records and exactly N duplicate refusals."""
    _, once, _ = feed(workload.events)
    doubled = [copy for event in workload.events for copy in (event, event)]
    tracker, twice, accepted = feed(doubled)
    assert twice.finished == once.finished
    assert accepted == len(workload.events)
    assert Counter(twice.rejections) == Counter({"duplicate": len(workload.events)})
    assert tracker.jobs == {}


# --------------------------------------------------------------------------- regressions


# f58() never terminates on a negative id, and the log sink and exemplars call it:
# such a jobid must be refused before any sink sees the job.
@pytest.mark.parametrize("jobid", [-5, 2**64], ids=["negative", "too-large"])
def test_out_of_range_jobid_is_malformed(jobid: int) -> None:
    """A submit whose integer jobid is not a FLUID (0..2**64-1) is refused as malformed."""
    tracker = Tracker([NullSink()])
    event = JobEvent(jobid, MAIN, "submit", BASE_TS, {"userid": 0, "urgency": 16})
    assert tracker.apply(event) is False
    assert tracker.rejected["malformed"] == 1
