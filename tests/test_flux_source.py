"""The Flux source against a fake of flux-core 0.88's bindings (no Flux needed).

The fake (``tests/fakeflux.py``) runs on a virtual clock: a broker with the recorded
jobs, a reactor that delivers responses in time order, a stop flag whose ``wait`` lets
virtual time pass. Checked against flux-core 0.88's Python bindings in
``/opt/flux/lib/flux/python3.11/flux`` (``future.py`` then/reset/_THEN_HANDLES and
continuation_callback, ``rpc.py`` RPC.get, ``kvs.py`` WatchImplementation,
``job/event.py``, ``eventlog.py``, ``job/list.py``, ``abc/journal.py``,
``core/handle.py`` reactor_run, ``core/watchers.py``), job-info's ``guest_watch.c``
(C, read in a public flux-core snapshot) and the recorded
``tests/data/journal-raw-responses.jsonl``; the fake's docstring has the detail,
including what was modelled without a check.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import itertools
import json
import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Final

import pytest

from fluxmon.app import Parts, build, record, restore_metrics, serve
from fluxmon.config import Settings, load_settings
from fluxmon.events import EXEC, MAIN
from fluxmon.exitcodes import EX_OK, EX_UNAVAILABLE
from fluxmon.metrics import SelfMetrics
from fluxmon.sources.flux import HOLD_SECONDS, Checkpoint, FluxSource, FluxUnavailable
from fluxmon.sources.flux.connection import FINISHED_REMEMBERED, Memory
from fluxmon.sources.flux.gather import GATHER_SECONDS
from fluxmon.sources.replay import ReplaySource
from fluxmon.testing import parse_log
from tests.conftest import DATA, SCENARIOS, expected
from tests.fakeflux import (
    NS_RACE,
    FakeBindings,
    FakeBroker,
    FakeJob,
    FakeRPC,
    VirtualStop,
    broker_from_raw_journal,
    entry,
    late_exec,
    load_raw_journal,
    load_scenario,
)

URI = "local:///fake/flux"
REPLAY_JOURNAL = DATA / "journal.replay.jsonl"
BY_STEM = {p.stem: p for p in SCENARIOS}
#: Before the first scenario job's submit: every scenario job is live.
SCENARIO_START = 1795880016.0


# -- helpers ---------------------------------------------------------------------------


#: The ``flux.exec_read`` of the test running now (see :func:`exec_read`).
_EXEC_READ: list[str] = ["at-clean"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run each test in both ``flux.exec_read`` modes, or those its ``exec_read`` mark names."""
    if "exec_read" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("exec_read")
        modes = marker.args if marker is not None else ("at-clean", "live")
        metafunc.parametrize("exec_read", modes, indirect=True)


@pytest.fixture(autouse=True)
def exec_read(request: pytest.FixtureRequest) -> Iterator[str]:
    """The ``flux.exec_read`` that :func:`make_settings` gives by default in this test."""
    _EXEC_READ[0] = request.param
    yield request.param
    _EXEC_READ[0] = "at-clean"


def make_settings(**flux: Any) -> Settings:
    """Default settings, JSON logs, the test's ``exec_read``, and ``flux`` overrides."""
    base = load_settings(None)
    flux.setdefault("exec_read", _EXEC_READ[0])
    return dataclasses.replace(
        base,
        log=dataclasses.replace(base.log, format="json"),
        flux=dataclasses.replace(base.flux, **flux),
    )


@dataclasses.dataclass
class Run:
    """A FluxSource run on a fake broker: the pipeline's parts and its log."""

    broker: FakeBroker
    parts: Parts
    log: io.StringIO
    stop: VirtualStop
    source: FluxSource

    def records(self, msg: str | None = None) -> list[dict[str, Any]]:
        """Log records, optionally only those with ``msg``."""
        return [r for r in parse_log(self.log.getvalue()) if msg is None or r["msg"] == msg]

    def sample(self, name: str, /, **labels: str) -> float | None:
        """One sample's value."""
        return self.parts.registry.get_sample_value(name, labels)

    def samples(self, name: str) -> list[tuple[dict[str, str], float]]:
        """Every sample called ``name`` with its labels."""
        return [
            (s.labels, s.value)
            for family in self.parts.registry.collect()
            for s in family.samples
            if s.name == name
        ]

    def events_counted(self) -> Counter[tuple[str, str]]:
        """``flux_job_events_total`` summed over queues, by (eventlog, name)."""
        out: Counter[tuple[str, str]] = Counter()
        for labels, value in self.samples("flux_job_events_total"):
            out[(labels["eventlog"], labels["name"])] += int(value)
        return out

    def finished(self) -> dict[int, dict[str, Any]]:
        """job.finished records by id (without the log timestamp); one per job."""
        records = self.records("job.finished")
        out = {r["id"]: strip(r) for r in records}
        assert len(out) == len(records), "a job finished twice"
        return out


def strip(record: dict[str, Any]) -> dict[str, Any]:
    """A log record without its wall-clock timestamp."""
    return {k: v for k, v in record.items() if k != "ts"}


def fake_source(
    broker: FakeBroker,
    settings: Settings,
    stats: Any,
    log: Any,
    *,
    bindings: FakeBindings | None = None,
    seed: int = 1,
    checkpoint: Checkpoint | None = None,
) -> FluxSource:
    """A FluxSource on the fake broker's bindings and virtual clock."""
    return FluxSource(
        settings.flux,
        uri=URI,
        bindings=bindings or FakeBindings(broker),
        stats=stats,
        log=log,
        clock=broker.clock,
        monotonic=broker.clock,
        rng=random.Random(seed),
        checkpoint=checkpoint,
    )


def prepare(broker: FakeBroker, settings: Settings, stop: VirtualStop, **kw: Any) -> Run:
    """The pipeline and a FluxSource for ``broker``, not started."""
    stream = io.StringIO()
    parts = build(settings, stream, clock=None)
    source = fake_source(broker, settings, parts.self_metrics, parts.log, **kw)
    return Run(broker, parts, stream, stop, source)


def run_source(
    broker: FakeBroker,
    settings: Settings | None = None,
    *,
    bindings: FakeBindings | None = None,
    stop: VirtualStop | None = None,
    idle_after: float | None = 0.0,
    seed: int = 1,
) -> Run:
    """Run a FluxSource on ``broker`` until it is idle (past ``idle_after``) or stopped."""
    stop = stop or VirtualStop(broker)
    if idle_after is not None:
        broker.stop_when_idle(stop, after=idle_after)
    run = prepare(broker, settings or make_settings(), stop, bindings=bindings, seed=seed)
    run.source.run(run.parts.pipeline, stop)
    return run


def scenario_jobs(
    names: Iterable[str] | None = None, transform: Callable[[FakeJob], FakeJob] | None = None
) -> list[FakeJob]:
    """Scenario files as fake jobs."""
    paths = SCENARIOS if names is None else [BY_STEM[n] for n in names]
    jobs = [load_scenario(p) for p in paths]
    return [transform(j) for j in jobs] if transform else jobs


def scenario_broker(transform: Callable[[FakeJob], FakeJob] | None = None) -> FakeBroker:
    """Every recorded scenario job, all submitted after connect."""
    return FakeBroker(scenario_jobs(transform=transform), start=SCENARIO_START)


def replay_finished(paths: Iterable[Path | str]) -> dict[int, dict[str, Any]]:
    """job.finished records (by id) of files replayed through a fresh pipeline."""
    stream = io.StringIO()
    parts = build(make_settings(), stream, clock=None)
    ReplaySource(list(paths)).run(parts.pipeline, threading.Event())
    return {r["id"]: strip(r) for r in parse_log(stream.getvalue()) if r["msg"] == "job.finished"}


def implied(events: list[dict[str, Any]]) -> tuple[str, int]:
    """(result, returncode) as flux-core and ``flux jobs`` derive them from main events."""
    ran = any(e["name"] == "alloc" for e in events)
    status = next((e["context"]["status"] for e in events if e["name"] == "finish"), None)
    fatal = next(
        (e["context"] for e in events
         if e["name"] == "exception" and e["context"]["severity"] == 0),
        None,
    )  # fmt: skip
    if ran and status == 0:
        result = "completed"
    elif fatal is not None and fatal["type"] in ("cancel", "timeout"):
        result = "canceled" if fatal["type"] == "cancel" else "timeout"
    else:
        result = "failed"
    if status is not None:
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status)
    elif result == "canceled" and not ran:
        code = -128
    else:
        code = 1
    return result, code


def truth(broker: FakeBroker, jobids: Iterable[int]) -> Counter[tuple[str, str]]:
    """The jobs' eventlog lines by (eventlog label, name): what should be counted."""
    return Counter(broker.eventlog_lines(jobids))


def truth_without_exec(broker: FakeBroker, victim: int) -> Counter[tuple[str, str]]:
    """What should be counted when ``victim``'s exec events are given up: its main events."""
    others = [j for j in broker.jobs if j != victim]
    return truth(broker, others) + Counter(
        {k: v for k, v in truth(broker, [victim]).items() if k[0] == "main"}
    )


def exec_fault_run(fault: Callable[[FakeJob], None]) -> tuple[FakeBroker, Run, int]:
    """The scenario with ``fault`` done to one job (b-exit3): the broker, the run, the job."""
    broker = scenario_broker()
    victim = expected()["b-exit3"]["id"]
    fault(broker.jobs[victim])
    return broker, run_source(broker), victim


def watches(broker: FakeBroker, eventlog: str) -> Counter[int]:
    """Watches the broker was asked for on ``eventlog``, by job."""
    return Counter(w.jobid for w in broker.watches_opened if w.eventlog == eventlog)


def allocated(broker: FakeBroker) -> set[int]:
    """Jobs that reached alloc."""
    return {j.jobid for j in broker.jobs.values() if j.first("alloc") is not None}


def expected_by_id() -> dict[int, dict[str, Any]]:
    """expected.json keyed by jobid."""
    return {want["id"]: want for want in expected().values()}


def assert_results(run: Run, jobids: Iterable[int]) -> None:
    """Each job finished once, with the result and return code of expected.json."""
    want = expected_by_id()
    finished = run.finished()
    for jobid in jobids:
        assert finished[jobid]["result"] == want[jobid]["result"], jobid
        assert finished[jobid]["returncode"] == want[jobid]["returncode"], jobid


# -- journal mode on the recorded journal ----------------------------------------------------


def test_journal_history_is_silent_and_ready_comes_at_the_sentinel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """History rebuilds state without counting or logging; ready turns 1 at the sentinel.

    Each journal response is probed as it is read (several are read per callback when
    they are queued together).
    """
    broker, history_ids = broker_from_raw_journal()
    seen: list[tuple[int, bool, float | None]] = []
    registry_probe: list[Run] = []
    read = FakeRPC.get

    def probed(fut: FakeRPC) -> Any:
        payload = read(fut)
        if fut.kind == "journal" and registry_probe:
            ready = registry_probe[0].sample("fluxmon_ready")
            seen.append((payload["id"], registry_probe[0].parts.pipeline.is_ready, ready))
        return payload

    monkeypatch.setattr(FakeRPC, "get", probed)
    # Build the parts first so the probe can read them during the run.
    stop = VirtualStop(broker)
    broker.stop_when_idle(stop)
    run = prepare(broker, make_settings(), stop)
    registry_probe.append(run)
    run.source.run(run.parts.pipeline, stop)

    history, live = load_raw_journal()
    sentinel_at = [i for i, (jobid, _, _) in enumerate(seen) if jobid == -1]
    assert sentinel_at == [len(history)]
    prior = seen[: len(history) + 1]
    after = seen[len(history) + 1 :]
    assert after
    assert [(ready, gauge) for _, ready, gauge in prior] == [(False, 0.0)] * len(prior)
    assert [(ready, gauge) for _, ready, gauge in after] == [(True, 1.0)] * len(after)
    assert run.sample("fluxmon_ready") == 1
    assert run.sample("fluxmon_connected") == 1

    logged = {r["id"] for r in run.records("job.event")} | set(run.finished())
    assert history_ids
    assert not logged & history_ids
    (caught_up,) = run.records("history.caught_up")
    assert caught_up["history_events"] == sum(len(r["events"]) for r in history)
    live_events = [e for r in live for e in r["events"]]
    not_annotations = [e for e in live_events if e["name"] != "annotations"]
    assert len(not_annotations) < len(live_events)
    assert sum(run.events_counted().values()) == len(not_annotations)
    assert len(run.records("job.event")) == len(not_annotations)
    assert run.sample("flux_job_events_total", queue="default", eventlog="main",
                      name="annotations") is None  # fmt: skip


def test_journal_stream_is_kept_past_its_first_response() -> None:
    """The journal future outlives the keep-alive count, so live jobs after the sentinel arrive."""
    broker = scenario_broker()
    run = run_source(broker)
    assert broker.journals_opened == [SCENARIO_START]
    # A journal future collected after its first response (the sentinel) ends the
    # stream silently: no live job would be reported.
    assert set(run.finished()) == set(broker.jobs)
    assert run.events_counted() == truth(broker, broker.jobs)


class RequestFailsOnce(FakeBindings):
    """The first journal request fails to send (the broker went away after ``connect``)."""

    failed = False

    def journal(self, handle: Any) -> FakeRPC:
        """EPIPE once, then the fake's journal."""
        if not self.failed:
            self.failed = True
            raise OSError(errno.EPIPE, "Broken pipe")
        return super().journal(handle)


def test_first_request_failing_to_send_is_a_disconnect_not_a_crash() -> None:
    """An OSError sending the first request ends that connection; fluxmon reconnects."""
    broker = scenario_broker()
    run = run_source(broker, bindings=RequestFailsOnce(broker))
    (down,) = run.records("source.disconnected")
    assert down["error"] == "request failed: EPIPE Broken pipe"
    assert not run.records("source.failed")
    assert [ok for _, ok in broker.connects] == [True, True]
    assert len(run.records("source.connected")) == 1  # the failed connection never was
    assert set(run.finished()) == set(broker.jobs)
    assert run.events_counted() == truth(broker, broker.jobs)


def test_journal_finished_records_match_the_journal_and_its_replay() -> None:
    """Every live job finishes once, as the journal implies and as the replay file says."""
    broker, history_ids = broker_from_raw_journal()
    run = run_source(broker)
    _, live = load_raw_journal()
    by_job: dict[int, list[dict[str, Any]]] = {}
    for resp in live:
        for e in resp["events"]:
            by_job.setdefault(resp["id"], []).append({"context": {}, **e})
    finished = run.finished()
    assert set(finished) == set(by_job)
    results: Counter[str] = Counter()
    for jobid, events in by_job.items():
        result, code = implied(events)
        results[result] += 1
        assert (finished[jobid]["result"], finished[jobid]["returncode"]) == (result, code), jobid
    assert len(results) > 1  # the recording has more than successes
    replayed = replay_finished([REPLAY_JOURNAL])
    assert set(replayed) == set(finished) | history_ids
    for jobid, rec in finished.items():
        assert rec == replayed[jobid], jobid
    assert run.sample("fluxmon_tracked_jobs") == 0
    assert not run.records("source.callback_failed")


# -- exec watches ----------------------------------------------------------------------------


@pytest.mark.exec_read("live")
@pytest.mark.parametrize("late", [False, True], ids=["on-time", "exec-after-clean"])
def test_exec_watch_per_allocated_job(late: bool) -> None:
    """One exec watch (no WAITCREATE) per allocated job; exec events counted once, clean held."""
    broker = scenario_broker(late_exec if late else None)
    run = run_source(broker)
    exec_watches = watches(broker, EXEC)
    assert set(exec_watches) == allocated(broker)
    assert set(exec_watches.values()) == {1}
    assert not watches(broker, MAIN)
    for opened in broker.watches_opened:
        job = broker.jobs[opened.jobid]
        assert not opened.waitcreate
        alloc = job.first("alloc")
        assert alloc is not None
        # Opened at the flush that delivers the job's alloc (GATHER_SECONDS at most).
        assert alloc <= opened.time <= alloc + GATHER_SECONDS + 1e-6, opened
        if late and job.exec_events:
            clean = job.first("clean")
            assert clean is not None
            assert job.exec_visible_at(0) > clean
    assert run.events_counted() == truth(broker, broker.jobs)
    assert sum(v for (log, _), v in run.events_counted().items() if log == "exec") > 0
    assert run.sample("fluxmon_event_errors_total", reason="unknown_job") == 0
    assert not [r for r in run.records("event.rejected")]
    assert run.sample("fluxmon_watches", eventlog="exec") == 0
    assert run.sample("fluxmon_watches", eventlog="main") == 0
    assert run.samples("fluxmon_watch_errors_total") == []
    assert abandoned(run) == {}
    assert_results(run, broker.jobs)
    assert run.sample("fluxmon_tracked_jobs") == 0
    assert broker.collected_watches == 0
    assert broker.dropped_callbacks == 0


@pytest.mark.exec_read("at-clean")
def test_exec_eventlog_read_once_per_allocated_job_at_its_clean() -> None:
    """At-clean: no exec watch; one read per allocated job after its clean; counts exact."""
    broker = scenario_broker()
    run = run_source(broker)
    assert broker.watches_opened == []
    reads = Counter(jobid for _, jobid in broker.exec_reads)
    assert set(reads) == allocated(broker)
    assert set(reads.values()) == {1}
    for when, jobid in broker.exec_reads:
        clean = broker.jobs[jobid].first("clean")
        assert clean is not None
        assert when >= clean
    assert run.events_counted() == truth(broker, broker.jobs)
    assert sum(v for (log, _), v in run.events_counted().items() if log == "exec") > 0
    assert not run.records("event.rejected")
    assert abandoned(run) == {}
    assert run.samples("fluxmon_watch_errors_total") == []
    assert_results(run, broker.jobs)
    assert run.sample("fluxmon_tracked_jobs") == 0
    # Each job's exec events are logged before its finish.
    wanted = ("job.event", "job.finished")
    order = [(r["msg"], r["id"]) for r in run.records() if r["msg"] in wanted]
    for jobid in allocated(broker):
        mine = [msg for msg, j in order if j == jobid]
        assert mine[-1] == "job.finished"
        assert mine.count("job.finished") == 1


@pytest.mark.exec_read("at-clean")
@pytest.mark.parametrize("code", [errno.EPERM, errno.EIO])
def test_exec_eventlog_read_error_is_counted_and_the_job_finishes(code: int) -> None:
    """At-clean: a read failing is counted by errno and abandoned; the job still finishes."""
    broker, run, victim = exec_fault_run(lambda job: job.watch_errno.update({EXEC: code}))
    name = errno.errorcode[code]
    assert run.samples("fluxmon_watch_errors_total") == [({"errno": name}, 1.0)]
    (record,) = run.records("source.exec_abandoned")
    assert (record["id"], record["reason"]) == (victim, "error")
    assert name in record["detail"]
    assert run.events_counted() == truth_without_exec(broker, victim)
    assert_results(run, broker.jobs)
    assert run.sample("fluxmon_tracked_jobs") == 0


@pytest.mark.exec_read("at-clean")
def test_exec_eventlog_never_created_is_no_error() -> None:
    """At-clean: ENOENT (a job allocated but never started has no exec eventlog) is not a fault."""
    broker = scenario_broker()
    never_started = [
        job.jobid
        for job in broker.jobs.values()
        if job.first("alloc") is not None and job.first("start") is None
    ]
    victim = expected()["b-exit3"]["id"]
    broker.jobs[victim].watch_errno[EXEC] = errno.ENOENT
    run = run_source(broker)
    assert run.samples("fluxmon_watch_errors_total") == []
    assert abandoned(run) == {}
    assert run.events_counted() == truth_without_exec(broker, victim)
    assert_results(run, broker.jobs)
    assert not [j for j in never_started if broker.jobs[j].exec_events]


@pytest.mark.exec_read("at-clean")
def test_exec_eventlog_read_unanswered_is_abandoned_after_the_hold() -> None:
    """At-clean: a read still unanswered HOLD_SECONDS after the clean is given up, counted."""

    def hang(job: FakeJob) -> None:
        job.exec_read_delay = None

    broker, run, victim = exec_fault_run(hang)
    assert abandoned(run) == {"timeout": 1}
    (record,) = run.records("source.exec_abandoned")
    assert (record["id"], record["reason"]) == (victim, "timeout")
    finished = run.finished()
    assert set(finished) == set(broker.jobs)
    assert run.events_counted() == truth_without_exec(broker, victim)
    assert_results(run, broker.jobs)


@pytest.mark.exec_read("at-clean")
def test_exec_eventlog_read_cut_by_a_drop_is_read_again_not_abandoned() -> None:
    """At-clean: a drop while a read is awaited holds the clean over; the next connection reads."""
    job = load_scenario(BY_STEM["b-exit3"])
    job.exec_read_delay = 3.0
    broker = FakeBroker([job], start=SCENARIO_START)
    clean = job.first("clean")
    assert clean is not None
    broker.drop(clean + 1.0, down_for=1.0)
    run = run_source(broker, make_settings(reconnect_min=1.0, reconnect_max=2.0))
    assert len(run.records("source.disconnected")) == 1
    assert [jobid for _, jobid in broker.exec_reads] == [job.jobid, job.jobid]
    assert abandoned(run) == {}
    assert run.events_counted() == truth(broker, [job.jobid])
    assert set(run.finished()) == {job.jobid}


@pytest.mark.exec_read("at-clean")
def test_hostile_exec_eventlog_lines_are_refused_and_the_rest_counted() -> None:
    """At-clean: lines that are not JSON or not entries are refused as malformed, one each."""
    job = load_scenario(BY_STEM["b-exit3"])
    broker = FakeBroker([job], start=SCENARIO_START)
    good = list(job.exec_events)

    class Hostile(FakeBindings):
        """The exec eventlog comes back with bad lines among the good ones."""

        def exec_eventlog(self, handle: Any, jobid: int) -> Any:
            """Good lines, a line that is not JSON, an entry without a name, an array."""
            future = FakeRPC(handle, "exec-read")
            lines = [json.dumps(e) for e in good]
            lines[1:1] = ['{"timestamp": 1.0, "name":', '{"timestamp": 2.0}', "[1, 2]", ""]
            future.push({"id": jobid, EXEC: "\n".join(lines) + "\n"})
            return future

    run = run_source(broker, bindings=Hostile(broker))
    assert run.sample("fluxmon_event_errors_total", reason="malformed") == 3
    assert len(run.records("event.rejected")) == 3
    assert run.events_counted() == truth(broker, [job.jobid])
    assert set(run.finished()) == {job.jobid}


@pytest.mark.exec_read("at-clean")
def test_live_journal_events_are_delivered_gathered_per_interval() -> None:
    """Live main events taken within GATHER_SECONDS of a batch's first one are in that batch."""
    broker = scenario_broker()
    stop = VirtualStop(broker)
    broker.stop_when_idle(stop)
    run = prepare(broker, make_settings(exec_events=False), stop)
    pipeline = run.parts.pipeline
    batches: list[list[float]] = []
    deliver = pipeline.events

    def spy(batch: Any, *, live: bool = True) -> None:
        if live and batch:
            batches.append([e.timestamp for e in batch])
        deliver(batch, live=live)

    pipeline.events = spy  # type: ignore[method-assign]
    run.source.run(pipeline, stop)
    events = sum(len(b) for b in batches)
    assert events == sum(v for (log, _), v in truth(broker, broker.jobs).items() if log == "main")
    assert len(batches) < events / 2  # gathered, not one batch per journal response
    for earlier, later in itertools.pairwise(batches):
        # The journal sends an event at its timestamp; the fake clock has no delays.
        assert min(later) > min(earlier) + GATHER_SECONDS - 1e-6 or min(later) < min(earlier)


def test_no_exec_watch_when_exec_events_are_off() -> None:
    """With flux.exec_events = false no watch is opened and only main events are counted."""
    broker = scenario_broker()
    run = run_source(broker, make_settings(exec_events=False))
    assert broker.watches_opened == []
    counted = run.events_counted()
    assert counted
    assert all(log == "main" for log, _ in counted)
    assert counted == Counter({k: v for k, v in truth(broker, broker.jobs).items()
                               if k[0] == "main"})  # fmt: skip
    assert_results(run, broker.jobs)


@pytest.mark.exec_read("live")
def test_max_watches_caps_exec_watches_and_counts_the_rest() -> None:
    """Past flux.max_watches a job is not watched and counts errno="limit", once warned."""
    broker = scenario_broker(late_exec)  # watches stay open longer, so they overlap
    run = run_source(broker, make_settings(max_watches=2))
    opened = watches(broker, EXEC)
    refused = len(allocated(broker)) - len(opened)
    assert refused > 0
    assert run.sample("fluxmon_watch_errors_total", errno="limit") == refused
    assert len(run.records("source.watch_limit")) == 1
    assert abandoned(run) == {"limit": refused}
    given_up = run.records("source.exec_abandoned")
    assert {r["id"] for r in given_up} == allocated(broker) - set(opened)
    assert {r["reason"] for r in given_up} == {"limit"}
    assert sum(v for (log, _), v in run.events_counted().items() if log == "exec") == sum(
        len(broker.jobs[j].exec_events) for j in opened
    )
    assert_results(run, broker.jobs)
    assert run.sample("fluxmon_watches", eventlog="exec") == 0


@pytest.mark.exec_read("live")
@pytest.mark.parametrize("code", [errno.EPERM, errno.ENOENT], ids=["EPERM", "ENOENT"])
def test_exec_watch_error_is_counted_and_the_daemon_goes_on(code: int) -> None:
    """One job's exec watch failing is counted by errno; every job still finishes."""
    broker, run, victim = exec_fault_run(lambda job: job.watch_errno.update({EXEC: code}))
    name = errno.errorcode[code]
    assert run.samples("fluxmon_watch_errors_total") == [({"errno": name}, 1.0)]
    (warning,) = run.records("source.watch_failed")
    assert warning["id"] == victim
    assert warning["error"].startswith(name)
    assert abandoned(run) == {"error": 1}
    (record,) = run.records("source.exec_abandoned")
    assert (record["id"], record["reason"]) == (victim, "error")
    assert name in record["detail"]
    assert run.events_counted() == truth_without_exec(broker, victim)
    assert_results(run, broker.jobs)
    assert run.sample("fluxmon_watches", eventlog="exec") == 0
    assert run.sample("fluxmon_tracked_jobs") == 0


class WaitcreateBindings(FakeBindings):
    """Bindings that open every watch with WAITCREATE (what fluxmon did before issue 9)."""

    def watch(self, handle: Any, jobid: int, eventlog: str, *, waitcreate: bool) -> Any:
        """Any watch, always with WAITCREATE."""
        return super().watch(handle, jobid, eventlog, waitcreate=True)


def abandoned(run: Run) -> dict[str, float]:
    """fluxmon_exec_watches_abandoned_total by reason, zeros left out."""
    return {
        labels["reason"]: value
        for labels, value in run.samples("fluxmon_exec_watches_abandoned_total")
        if value
    }


def race_broker() -> tuple[FakeBroker, FakeJob]:
    """One job with exec events, alone on a broker."""
    job = load_scenario(BY_STEM["b-exit3"])
    assert job.exec_events
    return FakeBroker([job], start=SCENARIO_START), job


class LateExecWatch(FakeBindings):
    """Bindings whose exec watches reach job-info just after the guest namespace is removed.

    As when the source lags behind the job (a burst of events, watch mode's polling): the
    watch is opened between the namespace's removal and ``release`` (``NS_RACE``).
    """

    def watch(self, handle: Any, jobid: int, eventlog: str, *, waitcreate: bool) -> Any:
        """Let virtual time pass into the job's race window before the exec watch is opened."""
        if eventlog == EXEC:
            release = self.broker.jobs[jobid].first("release")
            assert release is not None
            self.broker.advance(release - NS_RACE / 2 - self.broker.now)
        return super().watch(handle, jobid, eventlog, waitcreate=waitcreate)


def run_timed(
    broker: FakeBroker, bindings: FakeBindings, idle_after: float
) -> tuple[Run, list[tuple[float, str, str]]]:
    """Run the source; also return (virtual time, eventlog, name) of each event delivered."""
    stop = VirtualStop(broker)
    broker.stop_when_idle(stop, after=idle_after)
    run = prepare(broker, make_settings(), stop, bindings=bindings)
    delivered: list[tuple[float, str, str]] = []
    pipeline = run.parts.pipeline
    apply = pipeline.events

    def events(batch: Any, *, live: bool = True) -> None:
        delivered.extend((broker.now, e.eventlog, e.name) for e in batch)
        apply(batch, live=live)

    pipeline.events = events  # type: ignore[method-assign]
    run.source.run(pipeline, stop)
    return run, delivered


@pytest.mark.exec_read("live")
def test_exec_watch_reaching_a_removed_namespace_delivers_every_event() -> None:
    """A watch reaching the guest namespace after its removal reads all exec events, no hold."""
    broker, job = race_broker()
    clean = job.first("clean")
    assert clean is not None
    run, delivered = run_timed(broker, LateExecWatch(broker), clean + HOLD_SECONDS + 1)
    (opened,) = broker.watches_opened
    assert not opened.waitcreate
    release = job.first("release")
    assert release is not None
    assert release - NS_RACE <= opened.time < release  # it did land in the race window
    assert broker.hung_watches == 0
    assert run.events_counted() == truth(broker, [job.jobid])
    assert abandoned(run) == {}
    assert run.records("source.exec_abandoned") == []
    # clean came last, held only until the watch ended: far less than HOLD_SECONDS
    when, eventlog, name = delivered[-1]
    assert (eventlog, name) == (MAIN, "clean")
    assert when - clean < 0.1
    assert set(run.finished()) == {job.jobid}


@pytest.mark.exec_read("live")
def test_waitcreate_watch_in_the_race_hangs_and_is_abandoned_counted_and_logged() -> None:
    """With WAITCREATE the same watch never answers: after the hold it is counted and logged."""
    broker, job = race_broker()
    clean = job.first("clean")
    assert clean is not None
    run = run_source(broker, bindings=WaitcreateBindings(broker))
    assert broker.hung_watches == 0  # opened at alloc, WAITCREATE does no harm
    assert abandoned(run) == {}
    broker, job = race_broker()

    class Both(LateExecWatch, WaitcreateBindings):
        """Late and with WAITCREATE: the watch fluxmon lost events to."""

    run, delivered = run_timed(broker, Both(broker), clean + HOLD_SECONDS + 1)
    assert broker.hung_watches == 1
    when, eventlog, name = delivered[-1]
    assert (eventlog, name) == (MAIN, "clean")
    assert when - clean == pytest.approx(HOLD_SECONDS, abs=0.5)
    assert abandoned(run) == {"timeout": 1}
    (record,) = run.records("source.exec_abandoned")
    assert record["id"] == job.jobid
    assert record["reason"] == "timeout"
    assert record["received"] == 0
    assert "10 s" in record["detail"]
    assert not [k for k in run.events_counted() if k[0] == "exec"]
    assert set(run.finished()) == {job.jobid}  # the held clean was released after the hold
    assert run.sample("fluxmon_watches", eventlog="exec") == 0


@pytest.mark.exec_read("live")
def test_exec_watch_of_a_purged_job_is_abandoned_with_its_errno() -> None:
    """A job whose exec eventlog is gone (purged) before its watch opens: ENOENT, counted."""
    job = load_scenario(BY_STEM["b-exit3"])
    cleaned = job.first("clean")
    assert cleaned is not None
    clean: float = cleaned
    job = dataclasses.replace(job, purge_at=clean)
    broker = FakeBroker([job], start=SCENARIO_START)

    class OpenAfterPurge(FakeBindings):
        """Exec watches reach the broker after the job was purged."""

        def watch(self, handle: Any, jobid: int, eventlog: str, *, waitcreate: bool) -> Any:
            """Let the job end and be purged first."""
            if eventlog == EXEC:
                self.broker.advance(clean + 1.0 - self.broker.now)
            return super().watch(handle, jobid, eventlog, waitcreate=waitcreate)

    run = run_source(broker, bindings=OpenAfterPurge(broker))
    assert run.sample("fluxmon_watch_errors_total", errno="ENOENT") == 1
    assert abandoned(run) == {"error": 1}
    (record,) = run.records("source.exec_abandoned")
    assert record["id"] == job.jobid
    assert record["reason"] == "error"
    assert record["detail"].startswith("watch ended: ENOENT")
    assert set(run.finished()) == {job.jobid}


# -- watch mode ------------------------------------------------------------------------------


@pytest.mark.parametrize("why", ["EPERM", "ENOSYS"])
def test_fallback_to_watch_mode(why: str) -> None:
    """EPERM (guest) or ENOSYS: one fallback warning, watch mode, each event delivered once."""
    broker = scenario_broker()
    guest = 1000
    foreign = expected()["a-success"]["id"]
    if why == "EPERM":
        for job in broker.jobs.values():
            job.userid = guest
        broker.jobs[foreign].userid = 2000
        bindings = FakeBindings(broker, userid=guest)
    else:
        broker.journal_service = False
        broker.version = "0.60.0"  # older than the journal
        bindings = FakeBindings(broker)
    last = max(e["timestamp"] for j in broker.jobs.values() for e in j.main)
    settings = make_settings(poll_interval=1.0)
    run = run_source(broker, settings, bindings=bindings, idle_after=last + 5.0)

    (fallback,) = [r for r in run.records("source.fallback") if r.get("stream") != "resources"]
    assert why in fallback["reason"]
    assert fallback["mode"] == "watch"
    (connected,) = run.records("source.connected")
    assert "watch mode" in connected["detail"]
    assert why in connected["detail"]
    assert run.sample("fluxmon_connected") == 1
    assert run.sample("fluxmon_ready") == 1
    assert broker.job_lists, "job-list was never polled"
    assert set(watches(broker, MAIN)) == set(broker.jobs)
    assert set(watches(broker, MAIN).values()) == {1}
    readable = [j for j in broker.jobs if why != "EPERM" or j != foreign]
    assert run.events_counted() == truth(broker, readable)
    assert_results(run, readable)
    assert set(run.finished()) == set(readable)
    errors = run.samples("fluxmon_watch_errors_total")
    assert errors == ([({"errno": "EPERM"}, 1.0)] if why == "EPERM" else [])
    assert run.sample("fluxmon_watches", eventlog="main") == 0
    assert run.sample("fluxmon_watches", eventlog="exec") == 0
    assert run.sample("fluxmon_tracked_jobs") == 0


def test_enosys_from_a_broker_with_the_journal_is_a_reconnect_not_a_fallback() -> None:
    """ENOSYS from flux-core >= 0.61 (job-manager not loaded yet): reconnect, then journal mode."""
    broker = scenario_broker()
    broker.journal_service = False
    broker.at(SCENARIO_START + 2.0, lambda: setattr(broker, "journal_service", True))
    run = run_source(broker, make_settings(reconnect_min=1.0, reconnect_max=2.0))
    assert not run.records("source.fallback")
    down = run.records("source.disconnected")
    assert down
    assert all("ENOSYS" in r["error"] and "job-manager" in r["error"] for r in down)
    connected = run.records("source.connected")
    assert len(connected) == 1
    assert "journal mode" in connected[0]["detail"]
    assert not broker.job_lists
    assert run.events_counted() == truth(broker, broker.jobs)
    assert_results(run, broker.jobs)


def test_journal_mode_forced_does_not_fall_back() -> None:
    """flux.mode = "journal" with EPERM: no fallback, disconnected with the reason."""
    broker = scenario_broker()
    stop = VirtualStop(broker, max_waits=1)
    run = run_source(
        broker,
        make_settings(mode="journal"),
        bindings=FakeBindings(broker, userid=1000),
        stop=stop,
        idle_after=None,
    )
    assert not run.records("source.fallback")
    assert not run.records("source.connected")
    (down,) = run.records("source.disconnected")
    assert "EPERM" in down["error"]
    assert run.sample("fluxmon_connected") == 0
    assert broker.watches_opened == []
    assert broker.job_lists == []


# -- reconnects ------------------------------------------------------------------------------

DROP_AT = 1795880019.30
DOWN_FOR = 1.7


def reconnect_broker(fail_futures: bool = True) -> tuple[FakeBroker, int, int, int]:
    """Scenario jobs, connect after a-success ended; a drop at 19.30 while g1-g4 run.

    While down (until 21.0): g1-g4 finish, g4 is purged, k runs start to end, i starts.
    Returns the broker, the history job, the purged job and the job run while away.
    """
    jobs = {j.jobid: j for j in scenario_jobs()}
    ids = {stem: want["id"] for stem, want in expected().items()}
    purged = ids["g4-dep-failing-parent"]
    jobs[purged].purge_at = 1795880020.0
    start = 1795880016.75
    broker = FakeBroker(jobs.values(), start=start)
    broker.drop(DROP_AT, down_for=DOWN_FOR, fail_futures=fail_futures)
    away = ids["k-exec-nonexistent-cmd"]
    assert broker.jobs[away].submit_time > DROP_AT
    assert (broker.jobs[away].first("clean") or 0) < DROP_AT + DOWN_FOR
    return broker, ids["a-success"], purged, away


def seen_before_drop(job: FakeJob) -> Counter[tuple[str, str]]:
    """The job's lines visible before the drop (all a source could see of a purged job)."""
    out: Counter[tuple[str, str]] = Counter()
    for e in job.eventlog:
        if e["timestamp"] < DROP_AT:
            out[("main", e["name"])] += 1
    for i, e in enumerate(job.exec_events):
        if job.exec_visible_at(i) < DROP_AT:
            out[("exec", e["name"])] += 1
    return out


def run_reconnect(fail_futures: bool) -> tuple[Run, int, int, int, list[tuple[float, float]]]:
    """The reconnect scenario; also returns (connected, ready) gauges seen while away."""
    broker, history_job, purged, away = reconnect_broker(fail_futures)
    stop = VirtualStop(broker)
    while_away: list[tuple[float, float]] = []
    probe: list[Run] = []

    def on_wait(_: float) -> None:
        if probe:
            while_away.append(
                (
                    probe[0].sample("fluxmon_connected") or 0.0,
                    probe[0].sample("fluxmon_ready") or 0.0,
                )
            )

    stop.on_wait = on_wait
    broker.stop_when_idle(stop, after=DROP_AT + DOWN_FOR)
    run = prepare(broker, make_settings(reconnect_min=1.0, reconnect_max=8.0), stop, seed=3)
    probe.append(run)
    run.source.run(run.parts.pipeline, stop)
    return run, history_job, purged, away, while_away


@pytest.mark.parametrize("fail_futures", [True, False], ids=["futures-fail", "reactor-raises"])
def test_reconnect_resumes_without_double_counting(fail_futures: bool) -> None:
    """A dropped connection: disconnected with a reason, one reconnect, main events once."""
    run, history_job, purged, away, while_away = run_reconnect(fail_futures)
    broker = run.broker
    (down,) = run.records("source.disconnected")
    assert "ECONNRESET" in down["error"] or "reset" in down["error"].lower()
    assert while_away
    assert all(c == 0 and r == 0 for c, r in while_away)
    assert [ok for _, ok in broker.connects] == [True] + [False] * (len(broker.connects) - 2) + [
        True
    ]
    assert run.sample("fluxmon_reconnects_total") == 1
    assert run.sample("fluxmon_connected") == 1
    assert run.sample("fluxmon_ready") == 1
    assert len(run.records("source.connected")) == 2

    (forgotten,) = run.records("job.forgotten")
    assert forgotten["id"] == purged
    assert forgotten["reason"]
    assert run.sample("fluxmon_tracked_jobs") == 0

    counted = run.events_counted()
    others = [j for j in broker.jobs if j not in (history_job, purged)]
    want = truth(broker, others) + seen_before_drop(broker.jobs[purged])
    main = Counter({k: v for k, v in counted.items() if k[0] == "main"})
    assert main == Counter({k: v for k, v in want.items() if k[0] == "main"})
    for key, value in counted.items():
        assert value <= want[key], key  # nothing counted twice
    # The job that ran start to end while fluxmon was away is counted from history.
    away_main = [r for r in run.records("job.event") if r["id"] == away and r["eventlog"] == "main"]
    assert len(away_main) == len(broker.jobs[away].eventlog)
    finished = run.finished()
    assert set(finished) == set(others)
    assert_results(run, others)
    assert away in finished
    assert run.sample("fluxmon_watches", eventlog="exec") == 0
    assert not run.records("source.callback_failed")


def test_reconnect_counts_exec_events_of_jobs_that_finished_while_away() -> None:
    """Exec lines written while away, by jobs that finished then, are counted once."""
    run, history_job, purged, _, _ = run_reconnect(True)
    broker = run.broker
    others = [j for j in broker.jobs if j not in (history_job, purged)]
    want = truth(broker, others) + seen_before_drop(broker.jobs[purged])
    assert run.events_counted() == want


def rolled_back(
    keep: int,
    then: list[tuple[str, dict[str, Any]]],
    *,
    after: float,
    keep_exec: int = 0,
    rerun_exec: bool,
) -> tuple[Run, FakeJob, Counter[tuple[str, str]], int]:
    """a-success finishes, then its broker crashes and rolls it back to ``keep`` main events.

    ``then`` (name, context) follow from ``after`` s after the crash, 0.1 s apart (the
    broker is down for 2 s); with ``rerun_exec`` the job's shell runs again between the
    third and the fourth.
    Returns the run, the job, the events it had before the crash and how many of them
    the broker has no more.
    """
    job = load_scenario(BY_STEM["a-success"])
    alloc = job.first("alloc")
    assert alloc is not None  # the journal sends annotations, never in the eventlog
    job.main.insert(5, entry("annotations", alloc + 1e-4, annotations={"sched": {}}))
    broker = FakeBroker([job], start=SCENARIO_START)
    before = truth(broker, [job.jobid])
    crash = float(job.main[-1]["timestamp"]) + 1.0
    broker.drop(crash, down_for=2.0)
    main = [entry(name, crash + after + 0.1 * i, **ctx) for i, (name, ctx) in enumerate(then)]
    exec_events = (
        [
            entry(name, crash + after + 0.25 + 0.01 * i)
            for i, name in enumerate(("init", "starting"))
        ]
        if rerun_exec
        else []
    )
    broker.roll_back(crash, job.jobid, keep=keep, then=main, keep_exec=keep_exec,
                     then_exec=exec_events)  # fmt: skip
    dropped = len(job.eventlog) - sum(e["name"] != "annotations" for e in job.main[:keep])
    run = run_source(broker, make_settings(reconnect_min=1.0, reconnect_max=2.0))
    return run, job, before, dropped


RERUN: Final[list[tuple[str, dict[str, Any]]]] = [
    ("flux-restart", {}),
    ("priority", {"priority": 16}),
    ("alloc", {}),
    ("start", {}),
    ("finish", {"status": 0}),
    ("release", {"ranks": "all", "final": True}),
    ("free", {}),
    ("clean", {}),
]


def test_a_job_the_rolled_back_broker_runs_again_is_counted_twice_and_finishes_twice() -> None:
    """A finished job rolled back to SCHED and run again: rewound, each run counted once."""
    # The re-run happens while fluxmon is away: all of it is in the history it reads.
    run, job, before, dropped = rolled_back(4, RERUN, after=0.5, rerun_exec=True)
    assert run.sample("fluxmon_reconnects_total") == 1
    assert run.records("event.rejected") == []
    (rewound,) = run.records("job.rewound")
    assert (rewound["id"], rewound["was_state"]) == (job.jobid, "INACTIVE")
    assert (rewound["events_dropped"], rewound["events_new"]) == (dropped, len(RERUN))
    assert dropped == 6
    assert run.sample("fluxmon_jobs_rewound_total") == 1
    new = Counter(("main", name) for name, _ in RERUN) + Counter(
        {("exec", "init"): 1, ("exec", "starting"): 1}
    )
    assert run.events_counted() == before + new
    finished = [r for r in run.records("job.finished") if r["id"] == job.jobid]
    assert [r["result"] for r in finished] == ["completed", "completed"]
    assert finished[1]["t_run"] > finished[0]["t_inactive"]  # the second is the new run
    assert run.sample("fluxmon_tracked_jobs") == 0


def test_a_running_job_the_broker_rolled_back_ends_as_the_broker_says() -> None:
    """A job rolled back to RUN and failed by the restarted broker: its end is counted."""
    then: list[tuple[str, dict[str, Any]]] = [
        ("exception", {"type": "exec", "severity": 0, "userid": 0, "note": "no guest ns"}),
        ("release", {"ranks": "all", "final": True}),
        ("free", {}),
        ("clean", {}),
    ]
    # The broker keeps submit .. start (annotations after alloc included) and the exec
    # eventlog's first two lines; its new events come after fluxmon reconnected.
    run, job, before, dropped = rolled_back(7, then, after=5.0, keep_exec=2, rerun_exec=False)
    assert run.records("event.rejected") == []
    (rewound,) = run.records("job.rewound")
    assert (rewound["events_dropped"], rewound["events_new"]) == (4, 0)
    assert dropped == 4
    # init and starting, read again from the exec eventlog, are not counted twice.
    assert run.events_counted() == before + Counter(("main", name) for name, _ in then)
    finished = [r for r in run.records("job.finished") if r["id"] == job.jobid]
    assert [(r["result"], r["exception_type"]) for r in finished] == [
        ("completed", None),
        ("failed", "exec"),
    ]
    assert run.sample("fluxmon_tracked_jobs") == 0


def test_events_a_known_job_has_at_or_before_since_are_not_skipped() -> None:
    """History that goes on from what was delivered is delivered whole, even before ``since``."""
    job = load_scenario(BY_STEM["a-success"])
    job.main = job.main[:6]  # submit .. start: fluxmon sees it running
    job.exec_events = []
    start = float(job.main[-1]["timestamp"])
    other = load_scenario(BY_STEM["b-exit3"])
    other = other.shifted(start + 5.0 - other.submit_time)  # its events set ``since``
    crash = float(other.main[-1]["timestamp"]) + 1.0
    broker = FakeBroker([job, other], start=SCENARIO_START)
    broker.drop(crash, down_for=2.0)
    # The broker's history holds an end older than the other job's events (a clock step).
    end: list[tuple[str, dict[str, Any]]] = [
        ("finish", {"status": 0}),
        ("release", {"ranks": "all", "final": True}),
        ("free", {}),
        ("clean", {}),
    ]
    then = [entry(name, start + 1.0 + 0.1 * i, **ctx) for i, (name, ctx) in enumerate(end)]
    broker.roll_back(crash, job.jobid, keep=6, then=then)
    run = run_source(broker, make_settings(reconnect_min=1.0, reconnect_max=2.0))
    assert run.records("job.rewound") == []
    assert run.records("event.rejected") == []
    assert set(run.finished()) == {job.jobid, other.jobid}
    logged = [r["name"] for r in run.records("job.event") if r["id"] == job.jobid]
    assert logged == [e["name"] for e in job.eventlog]


def test_a_rewound_jobs_checkpoint_count_is_the_brokers_history(tmp_path: Path) -> None:
    """After a rewind, the count a checkpoint saves for the job is what the broker kept of it."""
    job = load_scenario(BY_STEM["a-success"])
    alloc = job.first("alloc")
    assert alloc is not None
    job.main.insert(5, entry("annotations", alloc + 1e-4, annotations={"sched": {}}))
    broker = FakeBroker([job], start=SCENARIO_START)
    crash = float(job.main[-1]["timestamp"]) + 1.0
    broker.drop(crash, down_for=2.0)
    then = [entry("exception", crash + 50.0, type="exec", severity=0, userid=0, note="x")]
    # submit .. start (and the annotation) are kept; the job is running again.
    broker.roll_back(crash, job.jobid, keep=7, then=then, keep_exec=2, then_exec=[])
    checkpoint = Checkpoint(tmp_path)
    stop = VirtualStop(broker)
    broker.at(crash + 10.0, stop.set)  # reconnected, the job not yet ended
    run = prepare(broker, make_settings(reconnect_min=1.0, reconnect_max=2.0), stop,
                  checkpoint=checkpoint)  # fmt: skip
    run.source.run(run.parts.pipeline, stop)
    assert len(run.records("job.rewound")) == 1
    memory = run.source.memory
    kept = sum(e["name"] != "annotations" for e in job.main[:7])
    assert memory.delivered(job.jobid) == [float(e["timestamp"]) for e in job.eventlog[:kept]]
    assert memory.main_count[job.jobid] == kept
    saved = {jobid: main for jobid, main, _ in json.loads(checkpoint.path.read_text())["jobs"]}
    assert saved == {job.jobid: kept}


def test_a_rollback_while_fluxmon_was_down_is_rewound_from_the_checkpoint(tmp_path: Path) -> None:
    """The broker and fluxmon both went down (a node crash); the broker ran a job again.

    The restart compares the broker's history with the checkpoint's fingerprint of the
    finished job: rewound, the new run counted and finished once more, nothing refused,
    and the restored counters plus the new run equal everything the job did.
    """
    job = load_scenario(BY_STEM["a-success"])
    broker = FakeBroker([job], start=SCENARIO_START)
    before = truth(broker, [job.jobid])
    dropped = len(job.eventlog) - 4  # the broker keeps submit .. depend
    crash = float(job.main[-1]["timestamp"]) + 1.0
    main = [entry(name, crash + 0.5 + 0.1 * i, **ctx) for i, (name, ctx) in enumerate(RERUN)]
    rerun_exec = [entry(name, crash + 0.75 + 0.01 * i) for i, name in enumerate(("init", "exit"))]
    broker.roll_back(crash, job.jobid, keep=4, then=main, then_exec=rerun_exec)
    settings = make_settings()

    def start_run(stop: VirtualStop) -> Run:
        checkpoint = Checkpoint(tmp_path)
        run = prepare(broker, settings, stop, checkpoint=checkpoint)
        restore_metrics(run.parts, checkpoint.metrics, str(checkpoint.path))
        run.source.capture = run.parts.metrics_state.capture
        return run

    stop = VirtualStop(broker)
    broker.at(crash - 0.5, stop.set)  # fluxmon stops (or dies) before the broker crashes
    first = start_run(stop)
    first.source.run(first.parts.pipeline, stop)
    assert [r["id"] for r in first.records("job.finished")] == [job.jobid]
    broker.advance(5.0)  # both down; the broker comes back and runs the job again
    stop = VirtualStop(broker)
    broker.stop_when_idle(stop)
    second = start_run(stop)
    second.source.run(second.parts.pipeline, stop)
    assert second.records("event.rejected") == []
    (rewound,) = second.records("job.rewound")
    assert (rewound["id"], rewound["was_state"]) == (job.jobid, "INACTIVE")
    assert (rewound["events_dropped"], rewound["events_new"]) == (dropped, len(RERUN))
    new = Counter(("main", name) for name, _ in RERUN) + Counter(
        {("exec", "init"): 1, ("exec", "exit"): 1}
    )
    assert second.events_counted() == before + new
    assert [r["id"] for r in second.records("job.finished")] == [job.jobid]
    assert second.sample("fluxmon_tracked_jobs") == 0


def test_a_reconnect_whose_history_agrees_rewinds_nothing() -> None:
    """Without a rollback, a reconnect in the middle of jobs rewinds none of them."""
    run, *_ = run_reconnect(True)
    assert run.records("job.rewound") == []
    assert run.sample("fluxmon_jobs_rewound_total") == 0


def test_memory_of_finished_jobs_is_bounded() -> None:
    """The source remembers the main-event timestamps of at most FINISHED_REMEMBERED jobs."""
    memory = Memory()
    for jobid in range(FINISHED_REMEMBERED + 10):
        memory.applied_to(jobid, 1.0, submit=True, last=False)
        memory.applied_to(jobid, 2.0, submit=False, last=True)
    memory.applied_to(99_999, 3.0, submit=False, last=False)  # no submit: not remembered
    assert len(memory.finished) == FINISHED_REMEMBERED
    assert memory.applied == {}
    assert memory.delivered(0) is None
    assert memory.delivered(FINISHED_REMEMBERED + 9) == [1.0, 2.0]


def test_held_clean_survives_a_dropped_connection() -> None:
    """A job whose clean is held for late exec events when the link drops still finishes once."""
    job = late_exec(load_scenario(BY_STEM["b-exit3"]), after_clean=2.0)
    clean = job.first("clean")
    assert clean is not None
    broker = FakeBroker([job], start=SCENARIO_START)
    broker.drop(clean + 0.5, down_for=1.0)  # clean delivered and held, exec not yet
    run = run_source(broker, make_settings(reconnect_min=1.0, reconnect_max=2.0))
    assert run.sample("fluxmon_reconnects_total") == 1
    assert set(run.finished()) == {job.jobid}
    assert run.sample("fluxmon_tracked_jobs") == 0
    # the watch cut by the drop is opened again: every exec event counted, none given up
    assert run.events_counted() == truth(broker, [job.jobid])
    assert abandoned(run) == {}


@pytest.mark.exec_read("live")
def test_exec_watch_cut_by_a_connection_error_is_read_again_not_abandoned() -> None:
    """An exec watch failing with ECONNRESET ends the connection; the next one re-reads it all."""
    job = late_exec(load_scenario(BY_STEM["b-exit3"]), after_clean=2.0)
    broker = FakeBroker([job], start=SCENARIO_START)

    class ResetOnce(FakeBindings):
        """The first exec watch is answered with ECONNRESET."""

        reset = False

        def watch(self, handle: Any, jobid: int, eventlog: str, *, waitcreate: bool) -> Any:
            """A watch; the first exec one fails with ECONNRESET."""
            future = super().watch(handle, jobid, eventlog, waitcreate=waitcreate)
            if eventlog == EXEC and not self.reset:
                self.reset = True
                future.push(OSError(errno.ECONNRESET, "Connection reset by peer"))
            return future

    run = run_source(broker, make_settings(reconnect_min=1.0, reconnect_max=2.0),
                     bindings=ResetOnce(broker))  # fmt: skip
    (down,) = run.records("source.disconnected")
    assert "ECONNRESET" in down["error"]
    assert run.sample("fluxmon_watch_errors_total", errno="ECONNRESET") == 1
    assert watches(broker, EXEC) == Counter({job.jobid: 2})
    assert abandoned(run) == {}
    assert run.events_counted() == truth(broker, [job.jobid])
    assert set(run.finished()) == {job.jobid}


def test_first_connection_failure_raises_and_exits_69() -> None:
    """Broker unreachable at start: FluxUnavailable; serve maps it to exit status 69."""
    broker = scenario_broker()
    broker.down_until = broker.now + 100.0
    with pytest.raises(FluxUnavailable, match="Connection refused"):
        run_source(broker)
    assert broker.connects == [(SCENARIO_START, False)]

    settings = make_settings()
    settings = dataclasses.replace(
        settings, http=dataclasses.replace(settings.http, listen=("127.0.0.1", 0))
    )

    def factory(parts: Parts) -> FluxSource:
        return fake_source(broker, settings, parts.self_metrics, parts.log)

    log = io.StringIO()
    assert serve(settings, factory, mode="flux", log_stream=log, environ={}) == EX_UNAVAILABLE
    assert any(r["msg"] == "source.unavailable" for r in parse_log(log.getvalue()))


def test_reconnect_backoff_is_capped_exponential_with_jitter() -> None:
    """While the broker stays down, waits double up to reconnect_max, each jittered."""
    broker = scenario_broker()
    broker.drop(SCENARIO_START + 1.0, down_for=10_000.0)
    stop = VirtualStop(broker, max_waits=8)
    seed = 11
    run = run_source(
        broker,
        make_settings(reconnect_min=1.0, reconnect_max=8.0),
        stop=stop,
        idle_after=None,
        seed=seed,
    )
    retry = [r["retry_in"] for r in run.records("source.reconnect_failed")]
    assert retry == [2.0, 4.0, 8.0, 8.0, 8.0, 8.0, 8.0]
    assert retry == sorted(retry)
    assert max(retry) == 8.0
    rng = random.Random(seed)
    bases = [1.0, *retry]
    assert stop.waits == pytest.approx([b * (0.5 + 0.5 * rng.random()) for b in bases])
    assert all(b / 2 <= w <= b <= 8.0 for w, b in zip(stop.waits, bases, strict=True))
    assert [ok for _, ok in broker.connects] == [True] + [False] * 7
    assert run.sample("fluxmon_connected") == 0


# -- malformed input -------------------------------------------------------------------------


def test_malformed_journal_payloads_are_refused_and_the_stream_goes_on() -> None:
    """Bad payloads count as malformed; the jobs after them are still followed to the end."""
    broker, _ = broker_from_raw_journal()
    _, live = load_raw_journal()
    jobid = live[0]["id"]
    t0 = live[0]["events"][0]["timestamp"] + 0.001
    bad = [
        {"id": "x"},
        {"id": jobid, "events": [{"timestamp": t0}]},
        {"id": jobid, "events": ["oops"]},
        "not an object",
        {"id": jobid},
    ]
    for i, payload in enumerate(bad):
        broker.inject(t0 + i * 1e-4, payload)
    run = run_source(broker)
    assert run.sample("fluxmon_event_errors_total", reason="malformed") == len(bad)
    assert len(run.records("event.rejected")) == len(bad)
    assert not run.records("source.callback_failed")
    finished = run.finished()
    assert jobid in finished
    assert len(finished) == len({r["id"] for r in live})
    assert run.sample("fluxmon_ready") == 1


def test_non_numeric_timestamp_is_refused_as_malformed() -> None:
    """An entry with a string timestamp is refused as malformed, not a callback failure."""
    broker, _ = broker_from_raw_journal()
    _, live = load_raw_journal()
    jobid = live[0]["id"]
    t0 = live[0]["events"][0]["timestamp"] + 0.001
    broker.inject(t0, {"id": jobid, "events": [{"name": "memo", "timestamp": "soon"}]})
    run = run_source(broker)
    assert run.sample("fluxmon_event_errors_total", reason="malformed") == 1
    assert not run.records("source.callback_failed")


# -- fluxmon record --------------------------------------------------------------------------


def record_with(
    broker: FakeBroker, *, count: int | None = None, interrupt_when_idle: bool = False
) -> tuple[int, str, list[dict[str, Any]]]:
    """``fluxmon.app.record`` on the fake; Ctrl-C (SIGINT) once the broker is idle."""
    settings = make_settings()
    if interrupt_when_idle:
        fired: list[bool] = []

        def interrupt() -> None:
            if not fired:
                fired.append(True)
                signal.raise_signal(signal.SIGINT)

        broker.idle_hooks.append(interrupt)

    def factory(stats: SelfMetrics, log: Any) -> FluxSource:
        return fake_source(broker, settings, stats, log, seed=5)

    out, err = io.StringIO(), io.StringIO()
    status = record(factory, settings, out, err, count=count)
    return status, out.getvalue(), parse_log(err.getvalue())


def test_record_writes_a_replayable_journal(tmp_path: Path) -> None:
    """fluxmon record until Ctrl-C writes what replays to the recorded journal's records."""
    assert threading.current_thread() is threading.main_thread()
    broker, _ = broker_from_raw_journal()
    status, text, log = record_with(broker, interrupt_when_idle=True)
    assert status == EX_OK
    recorded = [json.loads(line) for line in text.splitlines()]
    reference = [json.loads(line) for line in REPLAY_JOURNAL.read_text().splitlines()]
    assert sorted(recorded, key=json.dumps) == sorted(reference, key=json.dumps)
    path = tmp_path / "recorded.jsonl"
    path.write_text(text)
    assert replay_finished([path]) == replay_finished([REPLAY_JOURNAL])
    assert [r["msg"] for r in log].count("fluxmon.stop") == 1


def test_record_count_stops_after_n_jobs_with_exec_events(tmp_path: Path) -> None:
    """record --count 3 stops once three jobs finish live; exec lines are recorded too."""
    broker = scenario_broker()
    status, text, log = record_with(broker, count=3)
    assert status == EX_OK
    lines = [json.loads(line) for line in text.splitlines()]
    cleans = [e["id"] for e in lines if e["name"] == "clean" and e["eventlog"] == MAIN]
    first = ["a-success", "b-exit3", "c-signal-kill9"]
    assert cleans == [expected()[s]["id"] for s in first]
    assert any(e["eventlog"] == EXEC for e in lines)
    assert broker.agenda, "record did not stop before the broker ran out of jobs"
    path = tmp_path / "recorded.jsonl"
    path.write_text(text)
    assert replay_finished([path]) == replay_finished([BY_STEM[s] for s in first])
    (stopped,) = [r for r in log if r["msg"] == "fluxmon.stop"]
    assert stopped["jobs"] == 3


def test_record_exits_69_when_flux_is_unreachable() -> None:
    """fluxmon record against a broker that is down exits 69 with one error record."""
    broker = scenario_broker()
    broker.down_until = broker.now + 10.0
    status, text, log = record_with(broker)
    assert status == EX_UNAVAILABLE
    assert text == ""
    assert [r["msg"] for r in log if r["level"] == "error"] == ["source.unavailable"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_record_stops_on_a_signal_with_a_complete_flushed_file(signum: int, tmp_path: Path) -> None:
    """SIGINT or SIGTERM mid-stream: exit 0, every line on disk replays, counts in the log."""
    broker = scenario_broker()
    settings = make_settings()
    broker.at(SCENARIO_START + 2.0, lambda: signal.raise_signal(signum))  # a-d done, e runs

    def factory(stats: SelfMetrics, log: Any) -> FluxSource:
        return fake_source(broker, settings, stats, log)

    path = tmp_path / "recorded.jsonl"
    err = io.StringIO()
    handler = signal.getsignal(signum)
    with path.open("a", encoding="utf-8") as out:
        status = record(factory, settings, out, err)
        on_disk = path.read_text()  # what was flushed, before the file is closed
    assert status == EX_OK
    assert signal.getsignal(signum) is handler
    assert broker.agenda, "record did not stop at the signal"
    assert on_disk.endswith("\n")
    lines = [json.loads(line) for line in on_disk.splitlines()]
    finished = {e["id"] for e in lines if e["name"] == "clean" and e["eventlog"] == MAIN}
    assert len(finished) >= 4
    assert set(replay_finished([path])) == finished
    log = parse_log(err.getvalue())
    (stopped,) = [r for r in log if r["msg"] == "fluxmon.stop"]
    assert (stopped["events"], stopped["jobs"]) == (len(lines), len(finished))
    last = [r for r in log if r["msg"] == "record.progress"][-1]
    assert (last["events"], last["jobs"]) == (len(lines), len(finished))


def test_record_reports_progress_while_it_runs() -> None:
    """record logs record.progress (events, jobs) periodically, and once more at the stop."""
    broker = scenario_broker()
    settings = make_settings()
    broker.at(SCENARIO_START + 1.0, lambda: time.sleep(0.5))  # real time passes mid-stream

    def factory(stats: SelfMetrics, log: Any) -> FluxSource:
        return fake_source(broker, settings, stats, log)

    err = io.StringIO()
    assert record(factory, settings, io.StringIO(), err, count=3, progress_every=0.05) == EX_OK
    log = parse_log(err.getvalue())
    progress = [r for r in log if r["msg"] == "record.progress"]
    (stopped,) = [r for r in log if r["msg"] == "fluxmon.stop"]
    assert len(progress) >= 2
    assert progress[0]["events"] > 0
    assert [r["events"] for r in progress] == sorted(r["events"] for r in progress)
    assert (progress[-1]["events"], progress[-1]["jobs"]) == (stopped["events"], 3)
    assert [r["msg"] for r in log][-2:] == ["record.progress", "fluxmon.stop"]


# -- the fake itself behaves like the bindings -----------------------------------------------


def test_fake_reactor_stops_on_an_escaping_exception_and_drops_unreferenced_futures() -> None:
    """Like flux-core's: a raising callback stops run(); an unkept, unreset future is dropped."""
    broker, _ = broker_from_raw_journal()
    bindings = FakeBindings(broker)
    handle = bindings.connect(URI)

    def boom(fut: Any) -> None:
        fut.get()
        raise ValueError("boom")

    journal = bindings.journal(handle)
    journal.then(boom)
    with pytest.raises(ValueError, match="boom"):
        bindings.run(handle)
    assert broker.callbacks == 1

    calls: list[int] = []
    handle2 = bindings.connect(URI)
    bindings.journal(handle2).then(lambda f: calls.append(f.get()["id"]))  # no reset, no ref
    timer_calls: list[float] = []
    timer = bindings.timer(handle2, 0.5, lambda: timer_calls.append(broker.now))
    broker.idle_hooks.append(lambda: bindings.stop(handle2) if len(timer_calls) > 3 else None)
    bindings.run(handle2)
    assert len(calls) == 1  # one response, then the future was collected
    assert timer_calls == pytest.approx([timer_calls[0] + 0.5 * i for i in range(len(timer_calls))])
    timer.stop()
    fut = bindings.journal(handle2)
    fut.then(lambda f: None)
    with pytest.raises(OSError, match="already exists") as info:
        fut.then(lambda f: None)
    assert info.value.errno == errno.EEXIST


def test_fake_watch_waits_for_creation_and_ends_with_none() -> None:
    """An exec watch opened at alloc waits, streams every exec line, then gives None."""
    job = load_scenario(BY_STEM["b-exit3"])
    broker = FakeBroker([job], start=SCENARIO_START)
    bindings = FakeBindings(broker)
    handle = bindings.connect(URI)
    alloc = job.first("alloc")
    assert alloc is not None
    broker.advance(alloc - broker.now)
    got: list[Any] = []
    watch = bindings.watch(handle, job.jobid, EXEC, waitcreate=False)

    def on_event(fut: Any) -> None:
        event = fut.get_event()
        got.append(event)
        if event is None:
            bindings.stop(handle)

    watch.then(on_event)
    bindings.run(handle)
    assert [e.name for e in got[:-1]] == [e["name"] for e in job.exec_events]
    assert all(isinstance(e.context, dict) for e in got[:-1])
    assert got[-1] is None
    unknown = bindings.watch(handle, 12345, EXEC, waitcreate=False)
    with pytest.raises(OSError, match="not found") as info:
        unknown.get_event()
    assert info.value.errno == errno.ENOENT


def test_restart_from_checkpoint_counts_each_event_once(tmp_path: Path) -> None:
    """A restart with a checkpoint counts what happened while down, once, and nothing twice."""
    broker = scenario_broker()
    settings = make_settings()
    checkpoint = Checkpoint(tmp_path)

    def one_run(stop_at: float | None) -> Run:
        stop = VirtualStop(broker)
        if stop_at is None:
            broker.stop_when_idle(stop)
        else:
            broker.at(stop_at, stop.set)
        run = prepare(broker, settings, stop, checkpoint=checkpoint)
        run.source.run(run.parts.pipeline, stop)
        return run

    before = one_run(stop_at=SCENARIO_START + 2.0)  # a-d done, e running
    assert checkpoint.path.exists()
    broker.advance(2.0)  # fluxmon is down while g1-g4 run and finish
    after = one_run(stop_at=None)
    assert after.records("checkpoint.loaded")
    assert after.records("job.rewound") == []  # the broker's history goes on from the save
    assert before.events_counted() + after.events_counted() == truth(broker, broker.jobs)
    first, second = before.finished(), after.finished()
    ids = {name: job["id"] for name, job in expected().items()}
    assert {ids["a-success"], ids["b-exit3"], ids["c-signal-kill9"]} <= set(first)
    # e-cancel-running was running at the stop; the g chain ran while fluxmon was down.
    assert {ids["e-cancel-running"], ids["g1-dep-chain-head"], ids["g4-dep-failing-parent"]} <= (
        set(second)
    )
    assert not set(first) & set(second)
    assert set(first) | set(second) == set(broker.jobs)
    assert after.sample("fluxmon_tracked_jobs") == 0


def test_unreadable_checkpoint_is_logged_and_ignored(tmp_path: Path) -> None:
    """A corrupt checkpoint file is reported and fluxmon starts as if there were none."""
    (tmp_path / "fluxmon.checkpoint.json").write_text("{not json")
    run = run_source(scenario_broker())
    stream = io.StringIO()
    log = build(make_settings(), stream, clock=None).log
    assert Checkpoint(tmp_path).load(log, time.time()) == (0.0, 0.0)
    assert "checkpoint.invalid" in stream.getvalue()
    assert run.sample("fluxmon_tracked_jobs") == 0


NOW = 1_796_000_000.0


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        pytest.param('{"since": true}', "format version None", id="bool-no-version"),
        pytest.param('{"since": 1}', "format version None", id="int-no-version"),
        pytest.param(
            '{"version": 1, "since": true, "exec_since": 0.0}', "since is true", id="bool"
        ),
        pytest.param('{"version": 1, "since": 1, "exec_since": 0.0}', "since is 1,", id="int"),
        pytest.param('{"version": 2, "since": 5.0, "exec_since": 0.0}', "version 2", id="v2"),
        pytest.param('{"version": 1, "since": 5.0}', "exec_since is null", id="missing"),
        pytest.param('{"version": 1, "since": NaN, "exec_since": 0.0}', "not a finite", id="nan"),
        pytest.param('{"version": 1, "since": 0.0, "exec_since": 0.0}', "since is 0", id="zero"),
        pytest.param('{"version": 1, "since": -5.0, "exec_since": 0.0}', ">= 0", id="negative"),
        pytest.param(
            f'{{"version": 1, "since": {NOW + 3600.0}, "exec_since": 0.0}}',
            "since is 3600 s in the future",
            id="future",
        ),
        pytest.param(
            f'{{"version": 1, "since": {NOW}, "exec_since": {NOW + 1e6}}}',
            "exec_since is 1000000 s in the future",
            id="exec-future",
        ),
        pytest.param("[1795880016.5, 0.0]", "not a JSON object but list", id="list"),
        pytest.param("[" * 100_000, "", id="deep"),
        pytest.param(
            f'{{"version": 1, "since": {NOW}, "exec_since": 0.0, "active": [[1, 0, 2.5]]}}',
            "active has [1, 0, 2.5], not [jobid, main, timestamp]",
            id="active-count-0",
        ),
        pytest.param(
            f'{{"version": 1, "since": {NOW}, "exec_since": 0.0, "finished": [[1, 2, true]]}}',
            "finished has [1, 2, true]",
            id="finished-bool",
        ),
        pytest.param(
            f'{{"version": 1, "since": {NOW}, "exec_since": 0.0, "finished": '
            f"[{', '.join(['[1, 2, 3.5]'] * 1025)}]}}",
            "finished is not a list of at most 1024",
            id="finished-too-many",
        ),
        pytest.param(
            f'{{"version": 1, "since": {NOW}, "exec_since": 0.0, "resources_since": NaN}}',
            "resources_since is NaN",
            id="resources-nan",
        ),
        pytest.param(
            f'{{"version": 1, "since": {NOW}, "exec_since": 0.0, '
            f'"resources_since": {NOW + 7200.0}}}',
            "resources_since is 7200 s in the future",
            id="resources-future",
        ),
    ],
)
def test_a_checkpoint_fluxmon_did_not_write_is_not_trusted(
    tmp_path: Path, content: str, problem: str
) -> None:
    """A checkpoint off in version, type, range or time is named with its problem, counted
    and ignored."""
    (tmp_path / "fluxmon.checkpoint.json").write_text(content)
    stream = io.StringIO()
    log = build(make_settings(), stream, clock=None).log
    checkpoint = Checkpoint(tmp_path)
    counted: list[str] = []
    checkpoint.on_error = counted.append
    assert checkpoint.load(log, NOW) == (0.0, 0.0)
    assert counted == ["invalid"]
    [record] = parse_log(stream.getvalue())
    assert record["msg"] == "checkpoint.invalid"
    assert record["path"] == str(tmp_path / "fluxmon.checkpoint.json")
    assert problem in record["error"]


def test_fingerprints_and_the_resource_position_round_trip(tmp_path: Path) -> None:
    """What save writes of jobs' fingerprints and of the resource stream, load reads back."""
    log = build(make_settings(), io.StringIO(), clock=None).log
    active, finished = {7: (3, NOW - 2.5)}, {8: (9, NOW - 4.5), 9: (1, NOW - 9.0)}
    Checkpoint(tmp_path).save(
        NOW, NOW, log, submits=NOW, jobs={7: (3, 1)},
        fingerprints=(active, finished), resource_since=NOW - 1.0,
    )  # fmt: skip
    loaded = Checkpoint(tmp_path)
    assert loaded.load(log, NOW) == (NOW, NOW)
    assert (loaded.active, loaded.finished) == (active, finished)
    assert loaded.resource_since == NOW - 1.0


def test_a_checkpoint_within_the_skew_and_written_by_save_is_trusted(tmp_path: Path) -> None:
    """What save writes loads back, including timestamps a little ahead of this host's clock."""
    log = build(make_settings(), io.StringIO(), clock=None).log
    Checkpoint(tmp_path).save(NOW + 60.0, NOW - 1.5, log)
    assert json.loads((tmp_path / "fluxmon.checkpoint.json").read_text())["version"] == 1
    assert Checkpoint(tmp_path).load(log, NOW) == (NOW + 60.0, NOW - 1.5)


def test_foreign_job_refused_once_while_it_stays_listed() -> None:
    """In watch mode, another user's long job is refused (EPERM) once, not at every poll."""
    broker = scenario_broker()
    guest = 1000
    foreign = expected()["i-nonfatal-exception"]["id"]  # runs for 3 s
    for job in broker.jobs.values():
        job.userid = guest
    broker.jobs[foreign].userid = 2000
    last = max(e["timestamp"] for j in broker.jobs.values() for e in j.main)
    run = run_source(
        broker,
        make_settings(poll_interval=0.1),
        bindings=FakeBindings(broker, userid=guest),
        idle_after=last + 1.0,
    )
    assert len(broker.job_lists) > 40  # the job was listed by many polls
    assert run.sample("fluxmon_watch_errors_total", errno="EPERM") == 1


def _capped(settings: Settings, cap: int) -> Settings:
    return dataclasses.replace(
        settings, metrics=dataclasses.replace(settings.metrics, label_cap=cap)
    )


def test_the_instances_configured_queues_are_declared_at_connect() -> None:
    """Queues from job-manager.queue-list keep their own series (at 0) under a full cap."""
    broker = scenario_broker()
    broker.queue_list = {"queues": ["zeta", "alpha"]}
    run = run_source(broker, _capped(make_settings(), 1))
    [record] = run.records("source.queues")
    assert record["queues"] == "alpha,zeta"
    for queue in ("alpha", "zeta"):
        assert run.sample("flux_jobs", queue=queue, state="RUN") == 0
    # The one undeclared place went to the first queue a job brought; the rest are other.
    assert run.sample("fluxmon_label_overflow_total", label="queue")


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        pytest.param(OSError(errno.ENOSYS, "Function not implemented"), "ENOSYS", id="enosys"),
        pytest.param({"queues": [1, "batch"]}, "not a list of names", id="not-names"),
        pytest.param({"queues": ["\ud800"]}, "UTF-8", id="surrogate"),
        pytest.param({"names": []}, "KeyError", id="no-key"),
    ],
)
def test_a_queue_list_that_cannot_be_read_is_logged_and_the_source_goes_on(
    answer: Any, error: str
) -> None:
    """No queue list, or a hostile one: source.queues_unknown says why; events still flow."""
    broker = scenario_broker()
    broker.queue_list = answer
    run = run_source(broker)
    [record] = run.records("source.queues_unknown")
    assert error in record["error"]
    assert not run.records("source.queues")
    assert run.events_counted() == truth(broker, broker.jobs)


def event_keys(records: list[dict[str, Any]]) -> list[tuple[int, str, int, str, float]]:
    """(id, eventlog, seq, name, event_ts) of each job.event record, in log order."""
    return [
        (r["id"], r["eventlog"], r["seq"], r["name"], r["event_ts"])
        for r in records
        if r["msg"] == "job.event"
    ]


def eventlog_keys(
    broker: FakeBroker, jobids: Iterable[int]
) -> set[tuple[int, str, int, str, float]]:
    """The key of every line of the jobs' main and exec eventlogs, as records carry it."""
    out = set()
    for jobid in jobids:
        job = broker.jobs[jobid]
        for label, entries in (("main", job.eventlog), ("exec", job.exec_events)):
            for seq, line in enumerate(entries):
                out.add((jobid, label, seq, line["name"], float(line["timestamp"])))
    return out


def kill_and_restart(
    directory: Path,
    kill_after: float,
    history: float,
    transform: Callable[[FakeJob], FakeJob] | None = None,
    *,
    counters: bool = False,
) -> str | None:
    """SIGKILL fluxmon ``kill_after`` s into a run, restart it; check the records of both.

    The kill keeps only what was on disk and in the log at that moment (no exit save).
    With ``history`` some jobs ran before the first start (taken as history, never
    logged), and the first start had no checkpoint file yet. Returns the checkpoint
    file as the kill left it. With ``counters`` the daemon's way is taken: the
    checkpoint carries the metrics (saved once a second), the restart restores them,
    and the restarted counters must equal every event after the history exactly;
    records since the last save may then be logged again (the same keys).
    """
    for stale in directory.iterdir():
        stale.unlink()
    start = SCENARIO_START + history
    broker = FakeBroker(scenario_jobs(transform=transform), start=start)
    settings = make_settings()
    checkpoint = Checkpoint(directory)
    at_kill: dict[str, Any] = {}

    def kill(stop: VirtualStop, run: Run) -> None:
        at_kill["file"] = checkpoint.path.read_text() if checkpoint.path.exists() else None
        at_kill["log"] = run.log.getvalue()
        stop.set()

    def start_run(stop: VirtualStop, checkpoint: Checkpoint) -> Run:
        run = prepare(broker, settings, stop, checkpoint=checkpoint)
        if counters:
            restore_metrics(run.parts, checkpoint.metrics, str(checkpoint.path))
            run.source.capture = run.parts.metrics_state.capture
        return run

    stop = VirtualStop(broker)
    first = start_run(stop, checkpoint)
    broker.at(start + kill_after, lambda: kill(stop, first))
    first.source.run(first.parts.pipeline, stop)
    if at_kill["file"] is None:
        checkpoint.path.unlink(missing_ok=True)
    else:
        checkpoint.path.write_text(at_kill["file"])
    broker.advance(1.0)  # fluxmon is down for a second
    stop = VirtualStop(broker)
    broker.stop_when_idle(stop)
    second = start_run(stop, Checkpoint(directory))
    second.source.run(second.parts.pipeline, stop)

    before = parse_log(at_kill["log"])
    after = second.records()
    # History: what the broker held at the first start, up to its newest event.
    horizon = max(
        (e["timestamp"] for j in broker.jobs.values() for e in j.main if e["timestamp"] <= start),
        default=0.0,
    )
    logged = event_keys(before) + event_keys(after)
    news = {k for k in eventlog_keys(broker, broker.jobs) if k[4] > horizon}
    assert set(logged) == news
    finished = [r["id"] for r in before + after if r["msg"] == "job.finished"]
    assert sorted(set(finished)) == sorted(
        j.jobid for j in broker.jobs.values() if (j.first("clean") or 0.0) > horizon
    )
    if counters:
        assert second.events_counted() == Counter((k[1], k[3]) for k in news)
    else:
        assert len(logged) == len(set(logged)), "a job.event logged twice"
        assert len(finished) == len(set(finished)), "a job.finished logged twice"
    assert checkpoint.path.exists()
    file: str | None = at_kill["file"]
    return file


@pytest.mark.parametrize("history", [0.0, 1.5], ids=["no-history", "history"])
@pytest.mark.parametrize("kill_after", [0.05, 0.4, 1.1, 2.0, 2.6, 3.3, 5.0])
def test_kill_repeats_nothing_and_loses_nothing(
    tmp_path: Path, kill_after: float, history: float
) -> None:
    """A SIGKILL at any moment, then a restart: every eventlog line logged once, every job once.

    Without a log writer thread a batch's records are out before its checkpoint is
    saved, so here even the one batch in flight is not repeated.
    """
    kill_and_restart(tmp_path, kill_after, history)


@pytest.mark.parametrize("history", [0.0, 1.5], ids=["no-history", "history"])
@pytest.mark.parametrize("kill_after", [0.05, 0.4, 1.1, 2.0, 2.6, 3.3, 5.0])
def test_counters_across_a_kill_equal_the_eventlogs(
    tmp_path: Path, kill_after: float, history: float
) -> None:
    """With the metrics in the checkpoint, a kill at any moment leaves the counters exact."""
    file = kill_and_restart(tmp_path, kill_after, history, counters=True)
    if file is not None:
        assert "metrics" in json.loads(file)


def test_kill_while_a_clean_is_held_still_finishes_the_job_once(
    tmp_path: Path, exec_read: str
) -> None:
    """A kill while a job's clean waits for its exec eventlog: the restart logs its finish once."""

    def slow(job: FakeJob) -> FakeJob:
        if exec_read == "live":  # the watch ends half a second after the clean
            return late_exec(job, after_clean=0.5)
        return dataclasses.replace(job, exec_read_delay=0.5)  # the read at the clean

    cleans = sorted(
        clean
        for job in scenario_jobs()
        if job.exec_events and (clean := job.first("clean")) is not None
    )
    held = []
    for clean in cleans[:3]:
        file = kill_and_restart(tmp_path, clean - SCENARIO_START + 0.25, 0.0, slow)
        assert file is not None
        held.append(json.loads(file).get("held"))
    assert all(held), held


def test_checkpoint_follows_each_live_batch_not_a_timer(tmp_path: Path) -> None:
    """The checkpoint holds the newest delivered timestamp right after a batch, with no wait."""
    broker = scenario_broker()
    checkpoint = Checkpoint(tmp_path)
    stop = VirtualStop(broker)
    run = prepare(broker, make_settings(), stop, checkpoint=checkpoint)
    seen: list[float] = []

    def look() -> None:
        data = json.loads(checkpoint.path.read_text())
        seen.append(data["since"])
        newest = max(r["event_ts"] for r in run.records("job.event") if r["eventlog"] == "main")
        assert data["since"] >= newest
        stop.set()

    broker.at(SCENARIO_START + 0.7, look)
    run.source.run(run.parts.pipeline, stop)
    assert seen


def test_checkpoint_waits_for_the_log_writer(tmp_path: Path) -> None:
    """Saves go through after_written: none is made before the writer says records are out."""
    broker = scenario_broker()
    checkpoint = Checkpoint(tmp_path)
    stop = VirtualStop(broker)
    broker.stop_when_idle(stop)
    run = prepare(broker, make_settings(), stop, checkpoint=checkpoint)
    waiting: list[Callable[[], None]] = []
    run.source.after_written = waiting.append
    run.source.run(run.parts.pipeline, stop)
    assert waiting
    assert not checkpoint.path.exists()
    waiting[-1]()
    since = json.loads(checkpoint.path.read_text())["since"]
    assert since == max(e["timestamp"] for j in broker.jobs.values() for e in j.eventlog)


def test_history_split_by_what_was_delivered_of_each_job() -> None:
    """Events the journal sends late with an older timestamp are news if they were not delivered.

    Job 1 had its submit delivered, job 2 ended before the save, job 3 was never
    delivered; job 1's ``validate`` (job-ingest's timestamp) comes after job 2's clean.
    """
    from fluxmon.sources.flux.journal import split_history
    from fluxmon.testing import ev

    history = [
        ev(2, "submit", 1.0),
        ev(1, "submit", 1.1),
        ev(2, "validate", 1.2),
        ev(2, "clean", 1.6),
        ev(1, "annotations", 1.65),
        ev(1, "validate", 1.15),
        ev(1, "depend", 1.7),
        ev(3, "submit", 1.5),
        ev(3, "validate", 1.55),
    ]
    old, news = split_history(history, {1: (1, 0)}, submits=1.1)
    assert [(e.jobid, e.name) for e in news] == [
        (1, "validate"), (1, "depend"), (3, "submit"), (3, "validate"),
    ]  # fmt: skip
    assert [(e.jobid, e.name) for e in old] == [
        (2, "submit"), (1, "submit"), (2, "validate"), (2, "clean"), (1, "annotations"),
    ]  # fmt: skip


def test_the_newest_save_alone_has_every_active_jobs_counts(tmp_path: Path) -> None:
    """Positions carry only changed jobs; running just the newest save still writes them all."""
    broker = scenario_broker()
    checkpoint = Checkpoint(tmp_path)
    stop = VirtualStop(broker)
    broker.at(SCENARIO_START + 3.0, stop.set)
    run = prepare(broker, make_settings(), stop, checkpoint=checkpoint)
    waiting: list[Callable[[], None]] = []
    run.source.after_written = waiting.append
    run.source.run(run.parts.pipeline, stop)
    assert len(waiting) > 1
    waiting[-1]()
    data = json.loads(checkpoint.path.read_text())
    memory = run.source.memory
    want = {
        jobid: [memory.main_count.get(jobid, 0), memory.exec_count.get(jobid, 0)]
        for jobid in set(memory.main_count) | set(memory.exec_count)
    }
    assert len(want) == 3  # active at the stop; the newest position changed just one
    assert {jobid: [n, e] for jobid, n, e in data["jobs"]} == want
    assert data["submits"] == max(
        j.submit_time for j in broker.jobs.values() if j.submit_time <= SCENARIO_START + 3.0
    )
