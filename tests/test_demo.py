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
from fluxmon.hostlist import decode_hostlist, decode_idset
from fluxmon.resources import ResourceTracker, parse_R
from fluxmon.sources.demo import QUEUE_REQUIRES, DemoSource, simulate, simulate_cluster
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
    resources: list[tuple[ResourceEvent, bool]] = field(default_factory=list)
    stream: list[JobEvent | ResourceEvent] = field(default_factory=list)
    beats: list[float] = field(default_factory=list)

    def events(self, batch: Sequence[JobEvent], *, live: bool = True) -> None:
        assert live
        if self.clock is not None:
            assert all(e.timestamp <= self.clock.now for e in batch)
        self.calls.append(("events", len(batch)))
        self.delivered.extend(batch)
        self.stream.extend(batch)
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
        if self.clock is not None and live:
            assert all(e.timestamp <= self.clock.now for e in batch)
        self.calls.append(("resource_events", len(batch)))
        self.resources.extend((event, live) for event in batch)
        if live:
            self.stream.extend(batch)

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
    """The source connects, declares resources and their history, then paces the stream."""
    clock = FakeClock(START)
    stop = FakeStop(clock)
    downstream = RecordingDownstream(stop, clock, batches=400)
    DemoSource(rate=50.0, seed=3, clock=clock).run(downstream, stop)
    history = simulate_cluster(seed=3, rate=50.0, start=START).history
    assert downstream.calls[:5] == [
        ("connected", "demo: simulated Flux workload, seed=3, rate=50 jobs/s"),
        ("resource_mode", "journal"),
        ("declare_queue_nodes", "batch,debug,gpu"),
        ("resource_events", len(history)),
        ("caught_up", None),
    ]
    assert {name for name, _ in downstream.calls[5:]} == {"events", "resource_events"}
    assert [e for e, live in downstream.resources if not live] == history
    assert any(live for _, live in downstream.resources), "400 batches reach an incident"
    stream = simulate_cluster(seed=3, rate=50.0, start=START).events
    assert downstream.stream == list(itertools.islice(stream, len(downstream.stream)))
    delivered = downstream.delivered
    assert len(delivered) > 40
    assert delivered == first(len(delivered), seed=3, rate=50.0)
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
    assert [name for name, _ in downstream.calls[:5]] == [
        "connected",
        "resource_mode",
        "declare_queue_nodes",
        "resource_events",
        "caught_up",
    ]
    assert downstream.delivered, "50 jobs/s for 0.3 s delivers something"
    lag = time.time() - downstream.delivered[-1].timestamp
    assert 0 <= lag < 1.0


# --- the resource life -------------------------------------------------------------------

#: Cores and GPUs of each queue's nodes (ranks 0-11: 8 cores; 12-15: 8 cores, 2 GPUs).
QUEUE_SLOTS = {"batch": (96, 0), "debug": (96, 0), "gpu": (32, 8)}


@dataclass
class ResourceRun:
    """What a simulated cluster's resource life looked like through a real resource tracker."""

    resources: ResourceTracker
    tracker: Tracker
    names: collections.Counter[str] = field(default_factory=collections.Counter)
    states: set[str] = field(default_factory=set)
    reasons: set[str] = field(default_factory=set)
    drained_at: dict[int, float] = field(default_factory=dict)
    drain_spans: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    checks: int = 0

    def check(self, where: str) -> None:
        """Node states add up; no queue allocates more cores or GPUs than its nodes hold."""
        self.checks += 1
        snap = self.resources.snapshot()
        if sum(snap.nodes.values()) != 16:
            self.problems.append(f"{where}: node states {snap.nodes}")
        self.states |= {state for state, count in snap.nodes.items() if count}
        for queue, (cores, gpus) in QUEUE_SLOTS.items():
            slots = snap.queues[queue]
            if sum(slots.cores.values()) != cores or sum(slots.gpus.values()) != gpus:
                self.problems.append(f"{where}: {queue} {slots}")
        for node in self.resources.nodes.values():
            if not (0 <= node.alloc_cores <= node.cores and 0 <= node.alloc_gpus <= node.gpus):
                self.problems.append(f"{where}: {node.host} holds {node.alloc_cores} cores")


def run_resources(*, seed: int, rate: float, seconds: float) -> ResourceRun:
    """Feed ``seconds`` of a simulated cluster to a job tracker and a resource tracker."""
    resources = ResourceTracker()
    resources.declare_queues(QUEUE_REQUIRES)
    run = ResourceRun(resources, Tracker([resources]))
    cluster = simulate_cluster(seed=seed, rate=rate, start=START)
    for entry in cluster.history:
        assert resources.apply(entry, live=False)
    run.check("history")
    jobs = 0
    for event in cluster.events:
        if event.timestamp > START + seconds:
            break
        if isinstance(event, ResourceEvent):
            assert resources.apply(event), event
            run.names[event.name] += 1
            context = event.context
            if event.name == "drain":
                run.reasons.add(context["reason"])
                ranks = decode_idset(context["idset"])
                assert decode_hostlist(context["nodelist"]) == [f"node{r}" for r in ranks]
                run.drained_at |= dict.fromkeys(ranks, event.timestamp)
            elif event.name == "undrain":
                for rank in decode_idset(context["idset"]):
                    run.drain_spans.append(event.timestamp - run.drained_at.pop(rank))
            run.check(f"{event.name} at {event.timestamp}")
            continue
        if event.name == "alloc":
            assert event.R is not None
            ranks = sorted(parse_R(event.R)[0])
            assert decode_hostlist(event.R["execution"]["nodelist"][0]) == [
                f"node{r}" for r in ranks
            ]
            placed = {resources.nodes[r].state for r in ranks}
            if placed != {"up"}:
                run.problems.append(f"job placed on a {placed} node: {event}")
        run.tracker.apply(event)
        jobs += 1
        if jobs % 500 == 0:
            run.check(f"job event {event.name} at {event.timestamp}")
    run.check("end")
    return run


@pytest.fixture(scope="module")
def resource_run() -> ResourceRun:
    return run_resources(seed=1, rate=0.5, seconds=9000.0)


def test_resource_figures_stay_consistent(resource_run: ResourceRun) -> None:
    """Node states add up to 16 and no queue allocates more than its nodes hold, throughout."""
    assert resource_run.checks > 50
    assert resource_run.problems == []
    assert resource_run.resources.rejected == {}
    assert sum(resource_run.tracker.rejected.values()) == 0


def test_nodes_are_drained_and_undrained_within_the_run(resource_run: ResourceRun) -> None:
    """Drains with realistic reasons happen and end in undrains minutes later."""
    names = resource_run.names
    assert names["drain"] >= 10
    assert names["undrain"] >= names["drain"] - 5
    assert len(resource_run.drained_at) <= 5  # still drained at the end (the long drain too)
    assert all(60.0 <= span <= 4 * 3600.0 for span in resource_run.drain_spans)
    assert {"admin: firmware update", "kernel panic", "nhc: /tmp full"} <= resource_run.reasons
    assert any(reason.startswith("ECC errors on node") for reason in resource_run.reasons)


def test_nodes_go_offline_and_torpid_and_come_back(resource_run: ResourceRun) -> None:
    """Nodes go offline and back online, turn torpid and lively; every node state is seen."""
    names = resource_run.names
    assert names["offline"] >= 2
    assert names["online"] >= names["offline"] - 1
    assert names["torpid"] >= 1
    assert names["lively"] >= names["torpid"] - 1
    assert resource_run.states == {"up", "drained", "draining", "down", "torpid"}


def test_resource_history_is_a_journal_at_connect() -> None:
    """The history starts as flux-core's journal does and leaves one node drained long ago."""
    history = simulate_cluster(seed=5, rate=2.0, start=START).history
    assert [e.name for e in history] == ["restart", "resource-define", "online", "online", "drain"]
    assert history[0].context == {"ranks": "0-15", "online": "", "nodelist": "node[0-15]"}
    R = history[1].context["R"]["execution"]
    assert R["properties"] == {"batch": "0-11", "debug": "0-11", "gpu": "12-15"}
    assert all(e.timestamp < START for e in history)
    assert START - history[-1].timestamp >= 2 * 3600.0
    assert set(history[-1].context) == {"idset", "nodelist", "overwrite", "reason"}


def test_resource_life_is_deterministic_per_seed() -> None:
    """One seed gives the same resource events; another seed gives other ones."""

    def resource_events(seed: int) -> list[ResourceEvent]:
        cluster = simulate_cluster(seed=seed, rate=0.2, start=START)
        stream = itertools.takewhile(lambda e: e.timestamp < START + 3000.0, cluster.events)
        return [*cluster.history, *(e for e in stream if isinstance(e, ResourceEvent))]

    events = resource_events(4)
    assert len(events) > 10
    assert events == resource_events(4)
    assert events != resource_events(5)


@pytest.mark.slow
def test_a_fast_demo_drains_and_reboots_within_two_minutes() -> None:
    """At 50 jobs/s (the end-to-end test's rate) nodes drain, undrain, go offline and online."""
    run = run_resources(seed=1, rate=50.0, seconds=120.0)
    assert run.problems == []
    assert min(run.names[name] for name in ("drain", "undrain", "offline", "online")) >= 1
