"""Metric families: golden exposition, label caps, exemplars, scrape-time gauges."""

from __future__ import annotations

import dataclasses
import io
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from fluxmon.app import Parts, build
from fluxmon.events import f58
from fluxmon.metrics import Pending
from fluxmon.testing import ev, jobspec, lifecycle
from tests.conftest import DATA, SCENARIOS, Replayed, json_settings

GOLDEN = DATA / "golden" / "scenarios.prom"

CONTRACT_FAMILIES = {
    "flux_job_events": "counter",
    "flux_jobs_submitted": "counter",
    "flux_jobs_finished": "counter",
    "flux_job_exceptions": "counter",
    "flux_jobs_exited": "counter",
    "flux_job_state_duration_seconds": "histogram",
    "flux_job_queue_wait_seconds": "histogram",
    "flux_job_runtime_seconds": "histogram",
    "flux_job_walltime_used_ratio": "histogram",
    "flux_job_start_latency_seconds": "histogram",
    "flux_job_perilog_duration_seconds": "histogram",
    "flux_jobs": "gauge",
    "flux_jobs_oldest_state_entry_timestamp_seconds": "gauge",
    "fluxmon_build_info": "gauge",
    "fluxmon_connected": "gauge",
    "fluxmon_ready": "gauge",
    "fluxmon_reconnects": "counter",
    "fluxmon_events_processed": "counter",
    "fluxmon_event_errors": "counter",
    "fluxmon_watches": "gauge",
    "fluxmon_watch_errors": "counter",
    "fluxmon_tracked_jobs": "gauge",
    "fluxmon_last_event_timestamp_seconds": "gauge",
    "fluxmon_event_lag_seconds": "histogram",
    "fluxmon_label_overflow": "counter",
}


def exposition(out: Replayed) -> str:
    text = generate_latest(out.parts.registry).decode()
    # The build line names this machine's Python; everything else is deterministic.
    return re.sub(r'python_version="[^"]*"', 'python_version="X"', text)


def test_golden_exposition(replay: Callable[..., Replayed]) -> None:
    """Replaying the recorded jobs gives exactly the committed exposition."""
    text = exposition(replay(SCENARIOS))
    if os.environ.get("FLUXMON_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()


def test_every_contract_family_is_exported(replay: Callable[..., Replayed]) -> None:
    """Every metric family of the design's table is present with its type."""
    text = generate_latest(replay(SCENARIOS).parts.registry).decode()
    types = {f.name: f.type for f in text_string_to_metric_families(text)}
    for name, kind in CONTRACT_FAMILIES.items():
        assert types.get(name) == kind, name
    assert "_created" not in text


def test_created_series_are_dropped_from_fluxmon_registry_only() -> None:
    """fluxmon's registry has no _created series; another registry in the process keeps its."""
    parts = build(json_settings(), io.StringIO(), clock=None)
    parts.pipeline.events(lifecycle(1, 10.0))
    assert "_created" not in generate_latest(parts.registry).decode()
    other = CollectorRegistry()
    Counter("other_things", "Things elsewhere in the process.", registry=other).inc()
    assert "other_things_created" in generate_latest(other).decode()


def test_no_jobid_or_user_in_labels(replay: Callable[..., Replayed]) -> None:
    """No label carries a jobid or a user, in any format."""
    out = replay(SCENARIOS)
    text = generate_latest(out.parts.registry).decode()
    forbidden = {"jobid", "userid", "user", "username", "id"}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            assert not forbidden & set(sample.labels), (family.name, sample.labels)
    for record in out.records("job.finished"):
        assert str(record["id"]) not in text
        assert record["jobid"] not in text


def test_known_series_start_at_zero() -> None:
    """A queue's result, state and error series exist at 0 once the queue is seen."""
    stream = io.StringIO()
    parts = build(json_settings(), stream, clock=None)
    parts.pipeline.events([ev(1, "submit", 1.0, jobspec=jobspec("gpu"), userid=1, urgency=16)])
    get = parts.registry.get_sample_value
    for result in ("completed", "failed", "canceled", "timeout"):
        assert get("flux_jobs_finished_total", {"queue": "gpu", "result": result}) == 0
    for state in ("DEPEND", "PRIORITY", "SCHED", "RUN", "CLEANUP"):
        labels = {"queue": "gpu", "state": state}
        assert get("flux_job_state_duration_seconds_count", labels) == 0
    assert get("flux_jobs", {"queue": "gpu", "state": "RUN"}) == 0
    assert get("fluxmon_event_errors_total", {"reason": "out_of_order"}) == 0
    assert get("fluxmon_label_overflow_total", {"label": "name"}) == 0


def test_exemplars_carry_the_jobid() -> None:
    """Histogram exemplars name the job in f58, visible in OpenMetrics only."""
    parts = build(json_settings(), io.StringIO(), clock=None)
    parts.pipeline.events(lifecycle(6828326912, 10.0))
    om = generate_openmetrics(parts.registry).decode()  # type: ignore[no-untyped-call]
    assert re.search(r'flux_job_queue_wait_seconds_bucket\{.*\} 1.0 # \{jobid="fBQPxhM"\}', om)
    assert "# {" not in generate_latest(parts.registry).decode()


def test_exemplars_can_be_turned_off() -> None:
    """metrics.exemplars = false drops exemplars."""
    base = json_settings()
    settings = dataclasses.replace(base, metrics=dataclasses.replace(base.metrics, exemplars=False))
    parts = build(settings, io.StringIO(), clock=None)
    parts.pipeline.events(lifecycle(6828326912, 10.0))
    assert "# {" not in generate_openmetrics(parts.registry).decode()  # type: ignore[no-untyped-call]


def test_label_cap_overflows_to_other() -> None:
    """Past the cap, new undeclared event names become 'other' and each replacement is counted.

    ``submit`` is declared (flux-core's own), so it takes none of the 5 places.
    """
    base = json_settings()
    settings = dataclasses.replace(base, metrics=dataclasses.replace(base.metrics, label_cap=5))
    parts = build(settings, io.StringIO(), clock=None)
    events = [ev(1, "submit", 1.0, userid=1, urgency=16)]
    events += [ev(1, f"site.event-{i}", 2.0 + i) for i in range(10)]
    parts.pipeline.events(events)
    get = parts.registry.get_sample_value
    names = {
        s.labels["name"]
        for family in parts.registry.collect()
        if family.name == "flux_job_events"
        for s in family.samples
    }
    assert names == {"submit", "other"} | {f"site.event-{i}" for i in range(5)}
    assert (
        get("flux_job_events_total", {"queue": "default", "eventlog": "main", "name": "other"}) == 5
    )
    assert get("fluxmon_label_overflow_total", {"label": "name"}) == 5


def test_state_gauges_at_scrape_time() -> None:
    """flux_jobs and the oldest-entry gauge describe the jobs active at the scrape."""
    parts = build(json_settings(), io.StringIO(), clock=None)
    parts.pipeline.events(lifecycle(1, 10.0)[:4] + lifecycle(2, 20.0)[:4])
    get = parts.registry.get_sample_value
    assert get("flux_jobs", {"queue": "default", "state": "SCHED"}) == 2
    assert get(
        "flux_jobs_oldest_state_entry_timestamp_seconds", {"queue": "default", "state": "SCHED"}
    ) == pytest.approx(10.03)
    assert get("fluxmon_tracked_jobs", {}) == 2
    parts.pipeline.events(lifecycle(1, 10.0)[4:])
    assert get("flux_jobs", {"queue": "default", "state": "SCHED"}) == 1
    assert get("fluxmon_tracked_jobs", {}) == 1


@pytest.mark.promtool
@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_check_metrics(replay: Callable[..., Replayed], tmp_path: Path) -> None:
    """promtool check metrics finds no problem in the exposition."""
    text = generate_latest(replay(SCENARIOS).parts.registry).decode()
    proc = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == ""
    assert proc.stderr.strip() == ""


# --------------------------------------------------------------------------- declared labels


def exceptions_by_type(parts: Parts) -> dict[str, float]:
    """``flux_job_exceptions_total`` summed over queues and severities, by type."""
    out: dict[str, float] = {}
    for family in parts.registry.collect():
        if family.name == "flux_job_exceptions":
            for s in family.samples:
                if s.name == "flux_job_exceptions_total":
                    out[s.labels["type"]] = out.get(s.labels["type"], 0) + s.value
    return out


def minted_then_genuine(parts: Parts, minted: int, genuine: list[str]) -> None:
    """One running job gets ``minted`` user-minted non-fatal exception types, then each
    genuine type once on a job of its own (fatal, as flux-core raises them)."""
    events = lifecycle(1, 10.0)[:6]  # submit .. alloc, start: running
    events += [
        ev(1, "exception", 20.0 + i * 0.001, type=f"minted{i}", severity=1, note="", userid=5)
        for i in range(minted)
    ]
    for n, etype in enumerate(genuine, 2):
        job = lifecycle(n, 30.0 + n)[:6]
        job.append(ev(n, "exception", 31.0 + n, type=etype, severity=0, note="", userid=0))
        events += job
    parts.pipeline.events(events)


def test_minted_exception_types_cannot_push_out_a_genuine_timeout() -> None:
    """200 user-minted types fill the cap (50); timeout and exec still get their own series."""
    parts = build(json_settings(), io.StringIO(), clock=None)
    minted_then_genuine(parts, 200, ["timeout", "exec"])
    by_type = exceptions_by_type(parts)
    assert by_type["timeout"] == 1
    assert by_type["exec"] == 1
    assert sum(1 for t in by_type if t.startswith("minted")) == 50
    assert by_type["other"] == 150
    get = parts.registry.get_sample_value
    assert get("fluxmon_label_overflow_total", {"label": "type"}) == 150


def test_without_declarations_the_genuine_types_would_be_other() -> None:
    """The same stream with nothing declared (the old behaviour) loses timeout to other."""
    parts = build(json_settings(), io.StringIO(), clock=None)
    parts.cap.declare("builtin", {})
    minted_then_genuine(parts, 200, ["timeout"])
    assert "timeout" not in exceptions_by_type(parts)
    assert exceptions_by_type(parts)["other"] == 151


def test_config_declares_queues_types_names_and_returncodes() -> None:
    """Values declared in [metrics] keep their own series even with a cap of 1."""
    base = json_settings()
    settings = dataclasses.replace(
        base,
        metrics=dataclasses.replace(
            base.metrics,
            label_cap=1,
            queues=("gpu", "debug"),
            declared_types=("site-quota",),
            declared_names=("site.audit",),
            declared_returncodes=(42,),
        ),
    )
    parts = build(settings, io.StringIO(), clock=None)
    events = lifecycle(1, 1.0, queue="scratch") + lifecycle(2, 2.0, queue="gpu")
    events += lifecycle(3, 3.0, queue="debug", status=42 << 8)
    events += lifecycle(4, 4.0, queue="batch", status=7 << 8)
    events += lifecycle(6, 5.0, queue="gpu", status=8 << 8)
    events += [ev(5, "submit", 9.0, userid=1, urgency=16, flags=0, version=1)]
    events += [ev(5, "site.audit", 9.1), ev(5, "site.other", 9.2)]
    events += [ev(5, "exception", 9.3, type="site-quota", severity=1, note="")]
    parts.pipeline.events(events)
    get = parts.registry.get_sample_value
    submitted = {
        s.labels["queue"]: s.value
        for f in parts.registry.collect()
        if f.name == "flux_jobs_submitted"
        for s in f.samples
    }
    # scratch took the one undeclared place; batch overflowed; gpu and debug are declared.
    assert submitted == {"scratch": 1, "gpu": 2, "debug": 1, "other": 1, "default": 1}
    assert get("flux_jobs_exited_total", {"queue": "debug", "returncode": "42"}) == 1
    # 7 took the one undeclared place, so 8 is other.
    assert get("flux_jobs_exited_total", {"queue": "other", "returncode": "7"}) == 1
    assert get("flux_jobs_exited_total", {"queue": "gpu", "returncode": "other"}) == 1
    assert get("flux_job_events_total", {"queue": "default", "eventlog": "main",
                                         "name": "site.audit"}) == 1  # fmt: skip
    assert exceptions_by_type(parts) == {"site-quota": 1}


def test_a_reload_declaring_a_value_gives_it_its_own_series_from_then_on() -> None:
    """A type that was becoming other is declared live; its next exception has its series."""
    parts = build(json_settings(), io.StringIO(), clock=None)
    parts.cap.set_limit(1)
    minted_then_genuine(parts, 3, [])
    assert exceptions_by_type(parts) == {"minted0": 1, "other": 2}
    parts.cap.declare("config", {"type": ["minted2"]})
    parts.pipeline.events([ev(1, "exception", 40.0, type="minted2", severity=1, note="", userid=5)])
    assert exceptions_by_type(parts) == {"minted0": 1, "other": 2, "minted2": 1}
    assert parts.cap("type", "minted0") == "minted0"  # declared ones freed no place it holds


def test_a_label_value_that_is_not_utf8_is_escaped() -> None:
    """A lone surrogate that reaches the cap comes out escaped, so the exposition encodes."""
    parts = build(json_settings(), io.StringIO(), clock=None)
    assert parts.cap("queue", "q\udcff") == "q\\udcff"
    generate_latest(parts.registry).decode()


def test_event_lag_is_observed_for_live_main_events_only() -> None:
    """The lag histogram takes each live main event, not exec events nor history."""
    parts = build(json_settings(), io.StringIO(), clock=lambda: 100.0)
    events = lifecycle(1, 10.0, exec_events=True)
    main = [e for e in events if e.eventlog == "eventlog"]
    assert len(main) < len(events)  # the lifecycle has exec events too
    parts.pipeline.events(lifecycle(2, 10.0), live=False)
    parts.pipeline.events(events)
    registry = parts.registry
    assert registry.get_sample_value("fluxmon_event_lag_seconds_count") == len(main)
    want = sum(100.0 - e.timestamp for e in main)
    assert registry.get_sample_value("fluxmon_event_lag_seconds_sum") == pytest.approx(want)


def histogram_state(child: Histogram) -> list[tuple[str, dict[str, str], float, object]]:
    """A histogram child's samples, exemplars reduced to (labels, value)."""
    return [
        (
            s.name,
            s.labels,
            s.value,
            None if s.exemplar is None else (s.exemplar.labels, s.exemplar.value),
        )
        for s in child._child_samples()
        if s.name != "_created"
    ]


@given(
    st.lists(
        st.tuples(
            st.floats(min_value=-5, max_value=400, allow_nan=False) | st.sampled_from([0.5, 1.0]),
            st.sampled_from([None, 1, 2, 2**64 - 1]),
        ),
        max_size=40,
    ),
    st.lists(st.integers(min_value=0, max_value=3), max_size=10),
)
def test_pending_adds_up_as_observe_and_inc_would(
    observations: list[tuple[float, int | None]], increments: list[int]
) -> None:
    """A flush leaves buckets, sums, counts and each bucket's last exemplar as observe does."""
    bounds = (0.1, 0.5, 1.0, 10.0, 300.0)
    direct = Histogram("d", "d", ["q"], registry=None, buckets=bounds).labels("x")
    added = Histogram("a", "a", ["q"], registry=None, buckets=bounds).labels("x")
    direct_count = Counter("dc", "d", registry=None)
    added_count = Counter("ac", "a", registry=None)
    pending = Pending(clock=lambda: 5.0)
    for amount, jobid in observations:
        direct.observe(amount, None if jobid is None else {"jobid": f58(jobid)})
        pending.observe(added, amount, jobid)
    for amount in increments:
        direct_count.inc(amount)
        pending.inc(added_count, amount)
    assert added_count._value.get() == 0  # nothing until the flush
    pending.flush()
    assert histogram_state(added) == histogram_state(direct)
    assert added_count._value.get() == direct_count._value.get()
    pending.flush()  # a second flush adds nothing
    assert histogram_state(added) == histogram_state(direct)


def test_a_batch_reaches_the_metrics_at_its_end_only() -> None:
    """Inside MetricsSink.batch nothing is visible; at its end every count is there."""
    parts = build(json_settings(), io.StringIO(), clock=None)
    get = parts.registry.get_sample_value
    events = lifecycle(6828326912, 10.0) + lifecycle(6828326913, 10.0, status=256)
    with parts.metrics_sink.batch():
        for event in events:
            parts.tracker.apply(event)
        assert get("flux_jobs_finished_total", {"queue": "default", "result": "completed"}) == 0
        labels = {"queue": "default", "state": "RUN"}
        assert get("flux_job_state_duration_seconds_count", labels) == 0
    assert get("flux_jobs_finished_total", {"queue": "default", "result": "completed"}) == 1
    assert get("flux_jobs_finished_total", {"queue": "default", "result": "failed"}) == 1
    assert get("flux_job_state_duration_seconds_count", {"queue": "default", "state": "RUN"}) == 2
    assert get("flux_job_events_total", {"queue": "default", "eventlog": "main",
                                         "name": "submit"}) == 2  # fmt: skip
    assert get("flux_jobs_submitted_total", {"queue": "default"}) == 2
    # Outside a batch (a tracker fed directly) each call reaches the metrics at once.
    parts.tracker.apply(ev(6828326914, "submit", 30.0, jobspec=jobspec("gpu")))
    assert get("flux_jobs_submitted_total", {"queue": "gpu"}) == 1
