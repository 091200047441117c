"""The RFC 21 tracker: transitions, results, refusals, as flux-core's job-list computes them."""

from __future__ import annotations

import math
import sys

import pytest

from fluxmon.events import EXEC, JobEvent
from fluxmon.testing import RecordingSink, ev, jobspec, lifecycle
from fluxmon.tracker import Job, NullSink, Tracker, returncode_of


def run(*events: JobEvent, live: bool = True) -> tuple[Tracker, RecordingSink]:
    sink = RecordingSink()
    tracker = Tracker([sink])
    for event in events:
        tracker.apply(event, live)
    return tracker, sink


def head(jobid: int = 1, t0: float = 100.0, **kw: object) -> list[JobEvent]:
    """submit .. priority: the job is in SCHED at t0+0.03."""
    return [
        ev(jobid, "submit", t0, jobspec=jobspec(), userid=5, urgency=16, flags=0),
        ev(jobid, "validate", t0 + 0.01),
        ev(jobid, "depend", t0 + 0.02),
        ev(jobid, "priority", t0 + 0.03, priority=16),
    ]


@pytest.mark.parametrize(
    ("status", "code"),
    [
        pytest.param(0, 0, id="exit-0"),
        pytest.param(3 << 8, 3, id="exit-3"),
        pytest.param(137 << 8, 137, id="shell-exit-137"),
        pytest.param(9, -9, id="shell-killed-9"),
        pytest.param(15 | 0x80, -15, id="signal-with-core"),
    ],
)
def test_returncode_from_wait_status(status: int, code: int) -> None:
    """Return codes follow flux jobs: exit code, or minus the signal."""
    assert returncode_of(status, "failed") == code


@pytest.mark.parametrize(
    ("result", "code"),
    [
        pytest.param("canceled", -128, id="canceled"),
        pytest.param("failed", 1, id="failed"),
        pytest.param("timeout", None, id="timeout"),
        pytest.param("completed", None, id="completed"),
    ],
)
def test_returncode_without_status(result: str, code: int | None) -> None:
    """With no finish status, canceled is -128 and failed is 1, as flux jobs says."""
    assert returncode_of(None, result) == code  # type: ignore[arg-type]


def test_lifecycle_states_and_durations() -> None:
    """A plain job visits every state once and each visit's duration is reported."""
    tracker, sink = run(*lifecycle(7, 1000.0, runtime=2.0, wait=0.5))
    assert tracker.jobs == {}
    (job,) = sink.finished
    assert job.result == "completed"
    assert [s for _, s, _ in sink.left] == ["DEPEND", "PRIORITY", "SCHED", "RUN", "CLEANUP"]
    assert dict((s, d) for _, s, d in sink.left)["RUN"] == pytest.approx(2.0)
    assert job.queue_wait == pytest.approx(0.53)
    kinds = {k for _, k, _ in sink.waits}
    assert "queue" in kinds
    assert "launch" in kinds


def test_priority_and_sched_can_be_entered_twice() -> None:
    """urgency sends SCHED back to PRIORITY; both visits are observed."""
    _, sink = run(
        *head(),
        ev(1, "urgency", 101.0, urgency=20, userid=5),
        ev(1, "priority", 101.5, priority=20),
        ev(1, "alloc", 102.0),
    )
    visits = [s for _, s, _ in sink.left]
    assert visits.count("PRIORITY") == 2
    assert visits.count("SCHED") == 2


def test_priority_inside_sched_is_reprioritisation() -> None:
    """A priority event while in SCHED changes nothing."""
    tracker, sink = run(*head(), ev(1, "priority", 100.5, priority=3))
    assert tracker.jobs[1].state == "SCHED"
    assert [s for _, s, _ in sink.left].count("SCHED") == 0


def test_held_time_is_counted_in_sched() -> None:
    """A held job (priority 0) waits in SCHED, and its held time is kept apart."""
    events = [
        *head()[:3],
        ev(1, "priority", 100.03, priority=0),
        ev(1, "urgency", 110.0, urgency=16, userid=5),
        ev(1, "priority", 110.01, priority=16),
        ev(1, "exception", 111.0, type="cancel", severity=0, note="", userid=5),
        ev(1, "clean", 111.1),
    ]
    _, sink = run(*events)
    (job,) = sink.finished
    assert job.time_held == pytest.approx(110.0 - 100.03)
    assert job.result == "canceled"
    assert job.returncode == -128


def test_cancel_pending_never_ran() -> None:
    """A job canceled while pending is canceled with -128 and no runtime."""
    _, sink = run(
        *head(),
        ev(1, "exception", 105.0, type="cancel", severity=0, note="", userid=5),
        ev(1, "clean", 105.1),
    )
    (job,) = sink.finished
    assert (job.result, job.returncode, job.ran, job.runtime) == ("canceled", -128, False, None)
    assert job.t_cleanup == 105.0


def test_finish_after_fatal_exception_keeps_cleanup_time() -> None:
    """CLEANUP is entered at the exception; the later finish only records the status."""
    _, sink = run(
        *head(),
        ev(1, "alloc", 101.0),
        ev(1, "start", 101.1),
        ev(1, "exception", 103.0, type="timeout", severity=0, note="expired", userid=0),
        ev(1, "finish", 103.5, status=9),
        ev(1, "clean", 104.0),
    )
    (job,) = sink.finished
    assert job.t_cleanup == 103.0
    assert job.runtime == pytest.approx(2.0)
    assert (job.result, job.returncode) == ("timeout", -9)


def test_fatal_exception_before_finish_zero_is_not_success() -> None:
    """finish status 0 after a fatal exception is not a success (job-list rule)."""
    _, sink = run(
        *head(),
        ev(1, "alloc", 101.0),
        ev(1, "exception", 102.0, type="node-failure", severity=0, note="", userid=0),
        ev(1, "finish", 102.5, status=0),
        ev(1, "clean", 103.0),
    )
    assert sink.finished[0].result == "failed"


def test_fatal_exception_after_finish_zero_keeps_success() -> None:
    """An exception during CLEANUP after a clean finish leaves the job completed."""
    _, sink = run(
        *head(),
        ev(1, "alloc", 101.0),
        ev(1, "finish", 102.0, status=0),
        ev(1, "exception", 102.5, type="epilog", severity=0, note="", userid=0),
        ev(1, "clean", 103.0),
    )
    assert sink.finished[0].result == "completed"
    assert sink.exceptions == [(1, "epilog", 0)]


def test_most_severe_exception_wins() -> None:
    """A later fatal exception replaces an earlier non-fatal one as the job's exception."""
    _, sink = run(
        *head(),
        ev(1, "exception", 100.5, type="test", severity=3, note="warn", userid=0),
        ev(1, "exception", 101.0, type="cancel", severity=0, note="", userid=0),
        ev(1, "exception", 101.2, type="other", severity=0, note="", userid=0),
        ev(1, "clean", 101.5),
    )
    (job,) = sink.finished
    assert (job.exc_type, job.exc_severity, job.result) == ("cancel", 0, "canceled")


def test_invalidate_drops_the_job() -> None:
    """invalidate forgets the job without finishing it."""
    tracker, sink = run(ev(1, "submit", 1.0, userid=1, urgency=16), ev(1, "invalidate", 1.1))
    assert tracker.jobs == {}
    assert sink.finished == []


def test_rewind_lets_a_finished_job_be_taken_afresh() -> None:
    """After rewind, a finished job's history is accepted again instead of refused."""
    events = lifecycle(3, 50.0)
    tracker, sink = run(*events)
    assert tracker.apply(events[0]) is False  # a repeat of a finished job's submit
    assert tracker.rejected["duplicate"] == 1
    assert tracker.rewind(3) == "INACTIVE"
    for event in events[:4]:
        assert tracker.apply(event, live=False)
    assert tracker.rewind(3) == "SCHED"
    assert tracker.jobs == {}
    assert tracker.rewind(3) is None
    assert tracker.rewind(4) is None
    for event in events:
        assert tracker.apply(event)
    assert len(sink.finished) == 2
    assert tracker.rejected["duplicate"] == 1


def test_history_rebuilds_state_silently() -> None:
    """Events replayed with live=False rebuild state but report nothing."""
    events = lifecycle(3, 50.0)
    tracker, sink = run(*events[:5], live=False)
    assert tracker.jobs[3].state == "RUN"
    assert sink.events == []
    assert sink.left == []
    for event in events[5:]:
        tracker.apply(event)
    (job,) = sink.finished
    assert job.t_submit == 50.0
    assert sum(job.time_in.values()) == pytest.approx(job.t_inactive - job.t_submit)  # type: ignore[operator]


def test_exec_events_out_of_order_are_fine() -> None:
    """Exec eventlog timestamps come from other hosts and need not be ordered."""
    _, sink = run(
        *head(),
        ev(1, "alloc", 101.0),
        ev(1, "shell.init", 101.5, EXEC),
        ev(1, "starting", 101.2, EXEC),
    )
    assert sink.rejected == []
    assert [n for _, n, _ in sink.events][-2:] == ["shell.init", "starting"]


def test_perilog_durations() -> None:
    """prolog and epilog durations are measured start to finish."""
    _, sink = run(
        *head(),
        ev(1, "alloc", 101.0),
        ev(1, "prolog-start", 101.0, description="job-manager.prolog"),
        ev(1, "prolog-finish", 102.5, description="job-manager.prolog", status=0),
        ev(1, "start", 102.6),
        ev(1, "finish", 103.0, status=0),
        ev(1, "epilog-start", 103.1, description="job-manager.epilog"),
        ev(1, "epilog-finish", 104.1, description="job-manager.epilog", status=0),
        ev(1, "clean", 104.2),
    )
    phases = {k: v for _, k, v in sink.waits}
    assert phases["prolog"] == pytest.approx(1.5)
    assert phases["epilog"] == pytest.approx(1.0)
    assert phases["launch"] == pytest.approx(1.6)


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        pytest.param(ev(9, "validate", 100.0), "unknown_job", id="unknown-job"),
        pytest.param(ev(1, "priority", 100.03, priority=16), "duplicate", id="duplicate"),
        pytest.param(ev(1, "alloc", 99.0), "out_of_order", id="older-than-last"),
        pytest.param(ev(1, "validate", 100.5), "malformed", id="validate-again-is-no-op"),
        pytest.param(ev(1, "finish", 101.0, status="0"), "malformed", id="finish-status-str"),
        pytest.param(ev(1, "exception", 101.0, type="x", severity=9), "malformed", id="sev-9"),
        pytest.param(ev(1, "exception", 101.0, severity=0), "malformed", id="exc-no-type"),
        pytest.param(JobEvent(1, "bogus", "alloc", 101.0, {}), "malformed", id="bad-eventlog"),
        pytest.param(JobEvent(1, "eventlog", "alloc", math.nan, {}), "malformed", id="nan-ts"),
        pytest.param(JobEvent(1, "eventlog", 5, 101.0, {}), "malformed", id="int-name"),  # type: ignore[arg-type]
        pytest.param(JobEvent(1, "eventlog", "alloc", 101.0, []), "malformed", id="list-ctx"),  # type: ignore[arg-type]
        pytest.param(JobEvent("1", "eventlog", "alloc", 101.0, {}), "malformed", id="str-id"),  # type: ignore[arg-type]
        pytest.param(ev(1, "submit", 101.0), "duplicate", id="second-submit"),
        pytest.param(JobEvent(1, "eventlog", "alloc", 10**400, {}), "malformed", id="huge-int-ts"),
        pytest.param(
            ev(1, "alloc", 101.0, R={"execution": {"R_lite": [{"rank": "0-\u00b2"}]}}),
            "malformed",
            id="R-rank-not-a-number",
        ),
    ],
)
def test_refusals(bad: JobEvent, reason: str) -> None:
    """Bad input is refused with a reason, counted, and the job carries on."""
    tracker, sink = run(*head())
    accepted = tracker.apply(bad)
    if bad.name == "validate" and bad.jobid == 1:
        # A repeated once-only state is accepted as a no-op, like job-list does.
        assert accepted
        assert sink.rejected == []
        return
    assert not accepted
    assert [r for r, _, _ in sink.rejected] == [reason]
    assert tracker.rejected[reason] == 1
    tracker.apply(ev(1, "alloc", 102.0))
    assert tracker.jobs[1].state == "RUN"


def test_backward_transition_is_refused() -> None:
    """An event that would send a job back to an earlier state is refused."""
    events = [*head(), ev(1, "alloc", 101.0), ev(1, "finish", 102.0, status=0)]
    events = [e for e in events if e.name != "depend"]
    tracker, sink = run(*events)
    assert not tracker.apply(ev(1, "depend", 102.5))
    assert [r for r, _, _ in sink.rejected] == ["invalid_transition"]
    assert tracker.jobs[1].state == "CLEANUP"


def test_snapshot_counts_and_oldest() -> None:
    """The snapshot gives jobs per (queue, state) and the earliest entry time."""
    tracker, _ = run(*head(1, 100.0), *head(2, 200.0), ev(1, "alloc", 300.0))
    snap = tracker.snapshot()
    assert snap[("default", "SCHED")] == (1, 200.03)
    assert snap[("default", "RUN")] == (1, 300.0)


def test_nnodes_from_R_and_ntasks_from_jobspec() -> None:
    """nnodes comes from R's R_lite ranks; ntasks from the jobspec's slots."""
    submit = ev(1, "submit", 1.0, jobspec=jobspec(slots=4), userid=1, urgency=16)
    R = {"version": 1, "execution": {"R_lite": [{"rank": "0-2,5", "children": {"core": "0"}}]}}
    tracker, _ = run(
        submit,
        ev(1, "validate", 1.1),
        ev(1, "depend", 1.2),
        ev(1, "priority", 1.3, priority=1),
        ev(1, "alloc", 1.4, R=R),
    )
    assert (tracker.jobs[1].ntasks, tracker.jobs[1].nnodes) == (4, 4)


def test_a_jobspec_that_cannot_be_read_refuses_the_submit() -> None:
    """A jobspec whose numbers cannot be read is refused as malformed and no job is created."""
    spec = jobspec()
    spec["attributes"]["system"]["duration"] = 10**400
    tracker, sink = run(ev(1, "submit", 100.0, jobspec=spec, userid=5, urgency=16))
    assert [r for r, _, _ in sink.rejected] == ["malformed"]
    assert tracker.jobs == {}


class Exploding(NullSink):
    """A sink with a bug: every call it gets raises."""

    kind = "exploding"

    def job_event(self, job: Job, event: JobEvent) -> None:
        raise RuntimeError(f"bug on {event.name}")

    def state_left(self, job: Job, state: str, seconds: float, event: JobEvent) -> None:
        raise RuntimeError("bug on state_left")

    def queued(self, job: Job, seconds: float, event: JobEvent) -> None:
        raise RuntimeError("bug on queued")

    def job_finished(self, job: Job) -> None:
        raise RuntimeError("bug on job_finished")


def test_a_raising_sink_does_not_stop_the_event() -> None:
    """A sink's exception is reported under its kind; the event and the other sinks go on."""
    reported: list[tuple[str, str]] = []
    recorder = RecordingSink()
    tracker = Tracker([Exploding(), recorder])
    tracker.on_sink_error = lambda kind, error: reported.append((kind, str(error)))
    events = lifecycle(1, 100.0)
    assert all(tracker.apply(event) for event in events)
    assert [name for _, name, _ in recorder.events] == [e.name for e in events]
    assert [job.jobid for job in recorder.finished] == [1]
    assert recorder.finished[0].result == "completed"
    assert [state for _, state, _ in recorder.left] == [
        "DEPEND", "PRIORITY", "SCHED", "RUN", "CLEANUP"
    ]  # fmt: skip
    assert tracker.jobs == {}
    assert sum(tracker.rejected.values()) == 0
    calls = len(events) + len(recorder.left) + 1 + 1  # job_event, state_left, queued, finished
    assert tracker.sink_errors == {"exploding": calls}
    assert len(reported) == calls
    assert ("exploding", "bug on finish") in reported
    assert ("exploding", "bug on job_finished") in reported


def test_a_sink_without_a_kind_is_reported_by_class_name() -> None:
    """A sink with no kind attribute is named by its class, never by anything in the input."""

    class Broken(NullSink):
        def event_rejected(self, reason: str, detail: str, event: JobEvent | None) -> None:
            raise ValueError(detail)

    tracker = Tracker([Broken()])
    assert not tracker.apply(ev(1, "alloc", 100.0))
    assert tracker.sink_errors == {"Broken": 1}
    assert tracker.rejected["unknown_job"] == 1


class SeqSink(NullSink):
    """Keeps (jobid, eventlog, seq, name) of each applied event."""

    def __init__(self) -> None:
        self.keys: list[tuple[int, str, int, str]] = []

    def job_event(self, job: Job, event: JobEvent) -> None:
        """Record the event's key."""
        self.keys.append((job.jobid, event.eventlog, job.seq, event.name))


def test_seq_counts_each_eventlog_from_zero() -> None:
    """seq is the event's 0-based index in its job's main or exec eventlog, counted apart."""
    sink = SeqSink()
    tracker = Tracker([sink])
    for event in lifecycle(1, 100.0, exec_events=True) + lifecycle(2, 200.0):
        tracker.apply(event)
    for jobid in (1, 2):
        for eventlog in ("main", EXEC):
            seqs = [s for j, log, s, _ in sink.keys if j == jobid and log == eventlog]
            assert seqs == list(range(len(seqs)))
    assert any(log == EXEC for _, log, _, _ in sink.keys)


def test_seq_is_the_same_after_history_is_replayed_silently() -> None:
    """A restart that re-applies the first events as history gives later events the same seq."""
    events = lifecycle(1, 100.0, exec_events=True)
    everything = SeqSink()
    tracker = Tracker([everything])
    for event in events:
        tracker.apply(event)
    for cut in range(len(events)):
        resumed = SeqSink()
        tracker = Tracker([resumed])
        for i, event in enumerate(events):
            tracker.apply(event, live=i >= cut)
        assert resumed.keys == everything.keys[cut:]


def test_refused_events_take_no_seq() -> None:
    """A duplicate is refused and does not advance the count: the next event keeps its index."""
    sink = SeqSink()
    tracker = Tracker([sink])
    first = head()
    for event in [*first, first[-1], ev(1, "alloc", 101.0)]:
        tracker.apply(event)
    assert [(s, n) for _, _, s, n in sink.keys] == [
        (0, "submit"), (1, "validate"), (2, "depend"), (3, "priority"), (4, "alloc")
    ]  # fmt: skip


def test_repeats_are_recognised_by_key_in_any_key_order() -> None:
    """A repeat with its context's keys reordered (nested too) is a duplicate; another is not."""
    alloc = {"annotations": {"sched": {"resource_summary": "rank0", "t": 1}}, "x": [1, {"a": 2}]}
    reordered = {
        "x": [1, {"a": 2}],
        "annotations": {"sched": {"t": 1, "resource_summary": "rank0"}},
    }
    tracker, _ = run(*head())
    assert tracker.apply(JobEvent(1, "eventlog", "alloc", 101.0, alloc))
    assert not tracker.apply(JobEvent(1, "eventlog", "alloc", 101.0, reordered))
    # Same name and time, another context: a distinct event (applied, a no-op repeat).
    assert tracker.apply(JobEvent(1, "eventlog", "alloc", 101.0, {**alloc, "x": [1, {"a": 3}]}))
    assert tracker.apply(ev(1, "memo", 101.0, a=1))
    assert not tracker.apply(ev(1, "memo", 101.0, a=1))  # the third event at that time
    assert not tracker.apply(JobEvent(1, "eventlog", "alloc", 101.0, alloc))
    assert tracker.apply(ev(1, "memo", 101.0, a=[1]))  # a list is not its element
    assert tracker.rejected["duplicate"] == 3


def test_exec_repeats_are_recognised_past_the_array() -> None:
    """A job's exec keys move from an array to a set; repeats are refused either way."""
    tracker, _ = run(*head(), ev(1, "alloc", 101.0))
    for i in range(100):
        assert tracker.apply(ev(1, "shell.task-exit", 102.0 + i, EXEC, rank=i, taskmap={"m": [i]}))
        assert not tracker.apply(ev(1, "shell.task-exit", 102.0 + i, EXEC, taskmap={"m": [i]},
                                    rank=i))  # fmt: skip
    for i in range(100):
        assert not tracker.apply(
            ev(1, "shell.task-exit", 102.0 + i, EXEC, rank=i, taskmap={"m": [i]})
        )
        assert tracker.apply(
            ev(1, "shell.task-exit", 102.0 + i, EXEC, rank=i + 1, taskmap={"m": [i]})
        )
    assert tracker.rejected["duplicate"] == 200
    assert isinstance(tracker.jobs[1].exec_seen, set)


def test_the_tracker_keeps_no_event_context() -> None:
    """Applied events' contexts are not held (keys are kept): nothing refers to them after."""
    contexts: list[dict[str, object]] = [
        {"priority": 16},
        {"annotations": {"sched": {"resource_summary": "rank0"}}},
        {"service": "x", "size": 1},
        {"taskmap": {"version": 1, "map": [[0, 1, 1, 1]]}},
    ]
    before = [sys.getrefcount(context) for context in contexts]
    events = [
        *head()[:3],
        JobEvent(1, "eventlog", "priority", 100.03, contexts[0]),
        JobEvent(1, "eventlog", "alloc", 101.0, contexts[1]),
        JobEvent(1, EXEC, "shell.init", 101.1, contexts[2]),
        JobEvent(1, EXEC, "shell.start", 101.2, contexts[3]),
    ]
    tracker, _ = run(*events)
    del events
    assert tracker.jobs[1].state == "RUN"
    assert [sys.getrefcount(context) for context in contexts] == before
