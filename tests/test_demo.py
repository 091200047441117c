"""Tests for fluxmon.sources.demo: the simulated cluster and its real-time source."""

from __future__ import annotations

import collections
import itertools
import re
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import pytest

from fluxmon.events import EXEC, MAIN, JobEvent, JobState, ResourceEvent
from fluxmon.sources.demo import DemoSource, simulate
from fluxmon.tracker import Job, NullSink, Tracker

START = 1_795_880_000.0


def first(n: int, *, seed: int = 1, rate: float = 2.0) -> list[JobEvent]:
    return list(itertools.islice(simulate(seed=seed, rate=rate, start=START), n))


def by_job(events: Sequence[JobEvent]) -> dict[int, list[JobEvent]]:
    jobs: dict[int, list[JobEvent]] = collections.defaultdict(list)
    for event in events:
        jobs[event.jobid].append(event)
    return jobs


@pytest.fixture(scope="module")
def sample() -> list[JobEvent]:
    return first(30_000)


# --- the stream ----------------------------------------------------------------------


def test_same_seed_same_events() -> None:
    """Two simulations with one seed yield identical streams."""
    assert first(5000, seed=7) == first(5000, seed=7)


def test_other_seed_other_events() -> None:
    """A different seed gives a different stream."""
    assert first(5000, seed=7) != first(5000, seed=8)


def test_timestamps_nondecreasing_from_start(sample: list[JobEvent]) -> None:
    """Events come in timestamp order, none before ``start``."""
    stamps = [e.timestamp for e in sample]
    assert stamps[0] >= START
    assert all(a <= b for a, b in itertools.pairwise(stamps))


def test_jobids_are_increasing_fluids(sample: list[JobEvent]) -> None:
    """Jobids grow with submission order and fit in 64 bits, as FLUIDs do."""
    ids = [e.jobid for e in sample if e.name == "submit"]
    assert ids == sorted(set(ids))
    assert all(0 < jobid < 2**64 for jobid in ids)


# Main eventlog per job, memo and non-fatal exceptions left out (they may come anywhere).
RFC21 = re.compile(
    r"submit(?P<dep> dependency-add)? validate"
    r"(?: exception clean"  # dependency failed, or canceled while waiting on it
    r"|(?P<met> dependency-remove)? depend priority(?: urgency priority)?"
    r"(?: exception clean"  # canceled pending
    r"| alloc(?: prolog-start prolog-finish)? start(?: exception)? finish"
    r"(?: epilog-start epilog-finish)? release free clean))"
)


def main_names(events: Sequence[JobEvent]) -> str:
    return " ".join(
        e.name
        for e in events
        if e.eventlog == MAIN
        and e.name != "memo"
        and not (e.name == "exception" and e.context["severity"] > 0)
    )


def test_main_eventlogs_follow_rfc21(sample: list[JobEvent]) -> None:
    """Every finished job's main eventlog runs in the order flux-core writes it."""
    finished = [evs for evs in by_job(sample).values() if evs[-1].name == "clean"]
    assert len(finished) > 500
    for events in finished:
        match = RFC21.fullmatch(main_names(events))
        assert match, main_names(events)
        if match["met"]:
            assert match["dep"], "dependency-remove without dependency-add"


def test_exec_events_between_alloc_and_finish(sample: list[JobEvent]) -> None:
    """The exec eventlog runs from init (after alloc) to done (before finish)."""
    for events in by_job(sample).values():
        names = [(e.eventlog, e.name) for e in events]
        if (EXEC, "init") not in names or (MAIN, "finish") not in names:
            continue
        assert names.index((MAIN, "alloc")) < names.index((EXEC, "init"))
        assert names.index((EXEC, "done")) < names.index((MAIN, "finish"))
        assert names.index((MAIN, "start")) < names.index((EXEC, "shell.init"))


def test_submit_carries_jobspec_with_queue_and_alloc_carries_R(sample: list[JobEvent]) -> None:
    """``submit`` has a jobspec naming its queue, ``alloc`` an R; no other event has either."""
    queues = set()
    for event in sample:
        if event.name == "submit":
            assert event.jobspec is not None
            system = event.jobspec["attributes"]["system"]
            queues.add(system["queue"])
            assert system["duration"] >= 0
            assert event.jobspec["tasks"][0]["slot"] == "task"
            assert set(event.context) == {"userid", "urgency", "flags", "version"}
        elif event.name == "alloc":
            assert event.R is not None
            execution = event.R["execution"]
            assert execution["R_lite"]
            assert execution["nodelist"]
            assert "resource_summary" in event.context["annotations"]["sched"]
        else:
            assert event.jobspec is None
            assert event.R is None
    assert queues == {"batch", "debug", "gpu"}


def test_finish_status_matches_exec_complete(sample: list[JobEvent]) -> None:
    """A job's ``finish`` status is the wait status its exec eventlog ``complete`` gave."""
    checked = 0
    for events in by_job(sample).values():
        finish = [e.context["status"] for e in events if e.name == "finish"]
        complete = [e.context["status"] for e in events if e.name == "complete"]
        if finish and complete:
            assert finish == complete
            checked += 1
    assert checked > 500


# --- through the tracker ---------------------------------------------------------------


@dataclass
class Recorder(NullSink):
    """Keeps what the tracker reports, for the assertions below."""

    rejections: list[tuple[str, str]] = field(default_factory=list)
    results: collections.Counter[str] = field(default_factory=collections.Counter)
    queues: set[str] = field(default_factory=set)
    returncodes: set[int | None] = field(default_factory=set)
    exceptions: set[tuple[str, int]] = field(default_factory=set)
    left: collections.Counter[JobState] = field(default_factory=collections.Counter)
    priority_visits: collections.Counter[int] = field(default_factory=collections.Counter)
    perilogs: set[str] = field(default_factory=set)
    eventlogs: set[str] = field(default_factory=set)

    def event_rejected(self, reason: str, detail: str, event: JobEvent | None) -> None:
        self.rejections.append((reason, f"{detail}: {event}"))

    def job_event(self, job: Job, event: JobEvent) -> None:
        self.eventlogs.add(event.eventlog)

    def job_finished(self, job: Job) -> None:
        assert job.result is not None
        self.results[job.result] += 1
        self.queues.add(job.queue)
        self.returncodes.add(job.returncode)

    def exception(self, job: Job, etype: str, severity: int, event: JobEvent) -> None:
        self.exceptions.add((etype, severity))

    def state_left(self, job: Job, state: JobState, seconds: float, event: JobEvent) -> None:
        assert seconds >= 0
        self.left[state] += 1
        if state == "PRIORITY":
            self.priority_visits[job.jobid] += 1

    def perilog(self, job: Job, phase: str, seconds: float, event: JobEvent) -> None:
        assert 0 < seconds <= 3.0
        self.perilogs.add(phase)


def events_of_jobs(n_jobs: int) -> Iterator[JobEvent]:
    """The stream up to (not including) the submit of job ``n_jobs + 1``."""
    submits = 0
    for event in simulate(seed=1, rate=2.0, start=START):
        if event.name == "submit":
            submits += 1
            if submits > n_jobs:
                return
        yield event


@pytest.fixture(scope="module")
def recorded() -> Recorder:
    recorder = Recorder()
    tracker = Tracker([recorder])
    for event in events_of_jobs(3000):
        tracker.apply(event)
    return recorder


def test_tracker_rejects_nothing(recorded: Recorder) -> None:
    """The tracker accepts every simulated event."""
    assert recorded.rejections == []


def test_every_result_and_queue_occurs(recorded: Recorder) -> None:
    """Jobs complete, fail, are canceled and time out, in all three queues; most complete."""
    assert set(recorded.results) == {"completed", "failed", "canceled", "timeout"}
    assert recorded.results["completed"] > 0.7 * sum(recorded.results.values())
    assert recorded.queues == {"batch", "debug", "gpu"}


def test_return_codes(recorded: Recorder) -> None:
    """Return codes include success, exit codes, signals and canceled-before-running."""
    codes = {c for c in recorded.returncodes if c is not None}
    assert 0 in codes
    assert {1, 2, 127, 137, 143} <= codes
    assert -9 in codes  # the job shell was SIGKILLed
    assert -128 in codes


def test_exception_types(recorded: Recorder) -> None:
    """Fatal cancel, timeout, dependency and exec exceptions occur, and non-fatal ones."""
    fatal = {etype for etype, severity in recorded.exceptions if severity == 0}
    assert {"cancel", "timeout", "dependency", "exec"} <= fatal
    assert any(severity > 0 for _, severity in recorded.exceptions)


def test_states_left(recorded: Recorder) -> None:
    """Jobs leave every metric state, and a released hold visits PRIORITY twice."""
    for state in ("DEPEND", "PRIORITY", "SCHED", "RUN", "CLEANUP"):
        assert recorded.left[state] > 0, state
    assert max(recorded.priority_visits.values()) == 2


def test_perilog_and_exec_eventlog(recorded: Recorder) -> None:
    """Prologs and epilogs are measured and exec eventlog events reach the tracker."""
    assert recorded.perilogs == {"prolog", "epilog"}
    assert recorded.eventlogs == {MAIN, EXEC}


def test_rate_must_be_positive() -> None:
    """A rate of zero jobs per second is refused up front."""
    with pytest.raises(ValueError, match="rate"):
        simulate(seed=1, rate=0.0, start=START)
    with pytest.raises(ValueError, match="rate"):
        DemoSource(rate=-1.0, seed=1)


# --- the live source -----------------------------------------------------------------


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeStop(threading.Event):
    """A stop flag whose waits advance the fake clock instead of sleeping."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        assert timeout is not None
        assert timeout > 0
        self.waits.append(timeout)
        self.clock.now += timeout
        return self.is_set()


@dataclass
class RecordingDownstream:
    """Records what a source tells it; sets ``stop`` after ``batches`` event batches."""

    stop: threading.Event
    clock: FakeClock | None = None
    batches: int = 1_000_000
    calls: list[tuple[str, object]] = field(default_factory=list)
    delivered: list[JobEvent] = field(default_factory=list)
    beats: list[float] = field(default_factory=list)

    def events(self, batch: Sequence[JobEvent], *, live: bool = True) -> None:
        assert live
        if self.clock is not None:
            assert all(e.timestamp <= self.clock.now for e in batch)
        self.calls.append(("events", len(batch)))
        self.delivered.extend(batch)
        if sum(name == "events" for name, _ in self.calls) >= self.batches:
            self.stop.set()

    def connected(self, detail: str, *, flux_version: str | None = None) -> None:
        self.calls.append(("connected", detail))

    def disconnected(self, error: str) -> None:
        self.calls.append(("disconnected", error))

    def caught_up(self) -> None:
        self.calls.append(("caught_up", None))

    def declare_queues(self, names: Sequence[str]) -> None:
        self.calls.append(("declare_queues", ",".join(names)))

    def resource_events(self, batch: Sequence[ResourceEvent], *, live: bool = True) -> None:
        self.calls.append(("resource_events", len(batch)))

    def resource_mode(self, mode: str) -> None:
        self.calls.append(("resource_mode", mode))

    def declare_queue_nodes(self, requires: Mapping[str, Sequence[str]]) -> None:
        self.calls.append(("declare_queue_nodes", ",".join(requires)))

    def reject_input(self, reason: str, detail: str) -> None:
        self.calls.append(("reject_input", reason))

    def forget(self, jobids: Iterable[int], reason: str) -> None:
        self.calls.append(("forget", reason))

    def rewind(
        self, jobid: int, *, events_dropped: int, events_new: int, finished: bool = False
    ) -> None:
        self.calls.append(("rewind", str(jobid)))

    def heartbeat(self, quiet_for: float = 0.0) -> None:
        self.beats.append(self.clock.now if self.clock is not None else 0.0)


def test_source_paces_the_simulation() -> None:
    """The source says connected, then caught up, then hands out the stream as time passes."""
    clock = FakeClock(START)
    stop = FakeStop(clock)
    downstream = RecordingDownstream(stop, clock, batches=40)
    DemoSource(rate=2.0, seed=3, clock=clock).run(downstream, stop)
    assert downstream.calls[0] == (
        "connected",
        "demo: simulated Flux workload, seed=3, rate=2 jobs/s",
    )
    assert downstream.calls[1] == ("caught_up", None)
    assert {name for name, _ in downstream.calls[2:]} == {"events"}
    delivered = downstream.delivered
    assert len(delivered) > 40
    assert delivered == first(len(delivered), seed=3, rate=2.0)
    assert all(0 < pause <= 0.5 for pause in stop.waits)


def test_source_returns_when_stopped() -> None:
    """Setting the stop flag ends ``run`` at once, even mid-wait on the real clock."""
    stop = threading.Event()
    downstream = RecordingDownstream(stop)
    thread = threading.Thread(
        target=DemoSource(rate=50.0, seed=1).run, args=(downstream, stop), daemon=True
    )
    thread.start()
    time.sleep(0.3)
    began = time.monotonic()
    stop.set()
    thread.join(timeout=2.0)
    assert not thread.is_alive()
    assert time.monotonic() - began < 0.2
    assert [name for name, _ in downstream.calls[:2]] == ["connected", "caught_up"]
    assert downstream.delivered, "50 jobs/s for 0.3 s delivers something"
    lag = time.time() - downstream.delivered[-1].timestamp
    assert 0 <= lag < 1.0
