"""A sink with a bug: counted as an internal error, logged once, the event's other effects stand."""

from __future__ import annotations

import io

import pytest

from fluxmon.app import Parts, build
from fluxmon.events import JobEvent
from fluxmon.testing import lifecycle, parse_log
from fluxmon.tracker import sink_kind
from tests.conftest import json_settings


def built() -> tuple[Parts, io.StringIO]:
    stream = io.StringIO()
    return build(json_settings(), stream, clock=None), stream


def break_sink(parts: Parts, kind: str, method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make one method of the sink of ``kind`` raise (on ``finish`` only, for job_event)."""
    (sink,) = [s for s in parts.tracker.sinks if sink_kind(s) == kind]
    original = getattr(sink, method)

    def broken(*args: object) -> None:
        event = args[-1]
        if not isinstance(event, JobEvent) or event.name == "finish":
            raise RuntimeError(f"bug in the {kind} sink")
        original(*args)

    monkeypatch.setattr(sink, method, broken)


def test_where_series_exist_at_zero() -> None:
    """fluxmon_internal_errors_total has a 0 series for each sink from the start."""
    parts, _ = built()
    get = parts.registry.get_sample_value
    assert get("fluxmon_internal_errors_total", {"where": "metrics"}) == 0
    assert get("fluxmon_internal_errors_total", {"where": "logs"}) == 0


def test_a_failing_metrics_sink_is_an_internal_error_not_a_refusal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The metrics sink raising on finish: counted under metrics, logs still see every event."""
    parts, stream = built()
    break_sink(parts, "metrics", "job_event", monkeypatch)
    parts.pipeline.events(lifecycle(1, 10.0) + lifecycle(2, 20.0))
    get = parts.registry.get_sample_value
    assert get("fluxmon_internal_errors_total", {"where": "metrics"}) == 2
    assert get("fluxmon_internal_errors_total", {"where": "logs"}) == 0
    for reason in parts.tracker.rejected:
        assert get("fluxmon_event_errors_total", {"reason": reason}) == 0
    # The later sink (logs) saw the finish events; the jobs finished and were counted.
    records = parse_log(stream.getvalue())
    finishes = [r for r in records if r["msg"] == "job.event" and r["name"] == "finish"]
    assert len(finishes) == 2
    assert [r["id"] for r in records if r["msg"] == "job.finished"] == [1, 2]
    labels = {"queue": "default", "result": "completed"}
    assert get("flux_jobs_finished_total", labels) == 2
    assert parts.tracker.jobs == {}
    # One traceback for the kind; the second failure is only counted.
    (internal,) = [r for r in records if r["msg"] == "fluxmon.internal_error"]
    assert internal["level"] == "error"
    assert internal["where"] == "metrics"
    assert internal["error"] == "RuntimeError: bug in the metrics sink"
    assert "Traceback (most recent call last)" in internal["traceback"]
    assert "bug in the metrics sink" in internal["traceback"]


def test_a_failing_log_sink_leaves_the_metrics_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """The log sink raising on job.finished: counted under logs, job metrics unaffected."""
    parts, stream = built()
    break_sink(parts, "logs", "job_finished", monkeypatch)
    parts.pipeline.events(lifecycle(1, 10.0) + lifecycle(2, 20.0, status=3 << 8))
    get = parts.registry.get_sample_value
    assert get("fluxmon_internal_errors_total", {"where": "logs"}) == 2
    assert get("fluxmon_internal_errors_total", {"where": "metrics"}) == 0
    assert get("flux_jobs_finished_total", {"queue": "default", "result": "completed"}) == 1
    assert get("flux_jobs_finished_total", {"queue": "default", "result": "failed"}) == 1
    assert get("flux_jobs_exited_total", {"queue": "default", "returncode": "3"}) == 1
    assert sum(parts.tracker.rejected.values()) == 0
    records = parse_log(stream.getvalue())
    assert [r["where"] for r in records if r["msg"] == "fluxmon.internal_error"] == ["logs"]
    assert not [r for r in records if r["msg"] == "job.finished"]


def test_the_job_is_not_half_applied(monkeypatch: pytest.MonkeyPatch) -> None:
    """After a sink fails on a job's finish, the finish stands and the later events apply."""
    parts, _ = built()
    break_sink(parts, "metrics", "job_event", monkeypatch)
    events = lifecycle(1, 10.0)
    cut = [e.name for e in events].index("finish") + 1
    parts.pipeline.events(events[:cut])
    job = parts.tracker.jobs[1]
    assert (job.state, job.status) == ("CLEANUP", 0)
    parts.pipeline.events(events[cut:])
    assert parts.tracker.jobs == {}
    labels = {"queue": "default", "result": "completed"}
    assert parts.registry.get_sample_value("flux_job_runtime_seconds_count", labels) == 1
