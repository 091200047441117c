"""The flux_* counters and histograms saved with the checkpoint and restored at start."""

from __future__ import annotations

import dataclasses
import io
import json
import math
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from fluxmon.app import Parts, build, restore_metrics
from fluxmon.config import Settings, load_settings
from fluxmon.sources.replay import ReplaySource
from fluxmon.testing import ev

DATA = Path(__file__).parent / "data"


def settings(**metrics: Any) -> Settings:
    """Default settings with ``metrics`` overrides."""
    base = load_settings(None)
    return dataclasses.replace(base, metrics=dataclasses.replace(base.metrics, **metrics))


def fresh(conf: Settings | None = None) -> Parts:
    """A pipeline with nothing applied."""
    return build(conf or settings(), io.StringIO(), clock=None)


def replayed() -> Parts:
    """A pipeline that applied the recorded journal (real flux-core 0.88 events)."""
    parts = fresh()
    import threading

    ReplaySource([str(DATA / "journal.replay.jsonl")]).run(parts.pipeline, threading.Event())
    return parts


def flux_lines(parts: Parts) -> list[str]:
    """The ``flux_*`` counter and histogram samples (the gauges are computed at scrape time)."""
    return [
        f"{sample.name}{sorted(sample.labels.items())} {sample.value}"
        for family in parts.registry.collect()
        if family.name.startswith("flux_") and family.type in ("counter", "histogram")
        for sample in family.samples
    ]


def roundtrip(parts: Parts) -> Any:
    """A capture as the checkpoint file holds it."""
    return json.loads(json.dumps(parts.metrics_state.capture()))


def test_a_restored_state_renders_what_was_captured() -> None:
    """Capture after a real journal, restore into a fresh pipeline: the same flux_* exposition."""
    before = replayed()
    state = roundtrip(before)
    after = fresh()
    problems: list[str] = []
    restored = after.metrics_state.restore(state, problems.append)
    assert problems == []
    assert restored > 10
    assert flux_lines(after) == flux_lines(before)
    assert any(line.startswith("flux_job_events_total[") for line in flux_lines(after))


def test_capture_reads_the_values_prometheus_client_keeps() -> None:
    """A counter's value and a histogram's buckets and sum come out as they went in.

    This is the canary for the prometheus_client internals the capture reads.
    """
    parts = fresh()
    sink = parts.metrics_sink
    for jobid in (1, 2, 3):
        parts.tracker.apply(ev(jobid, "submit", 10.0 + jobid, jobspec={"attributes": {}}))
    qs = sink.series("default")
    qs.queue_wait.observe(0.3)
    state = parts.metrics_state.capture()
    [(labels, value)] = [
        (labels, value)
        for labels, value in state["flux_job_events"]["series"]
        if labels[2] == "submit"
    ]
    assert (labels, value) == (["default", "main", "submit"], 3.0)
    [(labels, buckets, total)] = state["flux_job_queue_wait_seconds"]["series"]
    assert labels == ["default"]
    assert sum(buckets) == 1.0
    assert total == pytest.approx(0.3)
    assert state["flux_job_queue_wait_seconds"]["bounds"][-1] == "+Inf"


def valid_state() -> dict[str, Any]:
    """A small state as fluxmon writes it."""
    parts = fresh()
    parts.tracker.apply(ev(1, "submit", 10.0, jobspec={"attributes": {}}))
    parts.metrics_sink.series("default").queue_wait.observe(2.0)
    state: dict[str, Any] = roundtrip(parts)
    return state


def with_change(path: str, value: Any) -> dict[str, Any]:
    """``valid_state()`` with one value replaced (``family/key`` or ``family/series/0/i``)."""
    state = valid_state()
    *parents, last = path.split("/")
    node: Any = state
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[int(last) if isinstance(node, list) else last] = value
    return state


EVENTS = "flux_job_events"  # the family name (samples add _total)
WAIT = "flux_job_queue_wait_seconds"


@pytest.mark.parametrize(
    ("state", "problem"),
    [
        ([1, 2], "metrics is list, not an object"),
        ({"flux_bogus_total": {}}, "not a family fluxmon saves"),
        (with_change(f"{EVENTS}/type", "histogram"), "type 'histogram', not counter"),
        (with_change(f"{EVENTS}/labels", ["queue"]), "labels differ"),
        (with_change(f"{WAIT}/bounds", [1.0, "+Inf"]), "bucket bounds changed"),
        (with_change(f"{EVENTS}/series", {}), "series is not a list"),
        (with_change(f"{EVENTS}/series/0", [["default", "main", "submit"]]), "not a list of 2"),
        (with_change(f"{EVENTS}/series/0/1", -1.0), "negative"),
        (with_change(f"{EVENTS}/series/0/1", math.nan), "not a finite float"),
        (with_change(f"{EVENTS}/series/0/1", True), "not a finite float"),
        (with_change(f"{EVENTS}/series/0/1", 3), "not a finite float"),
        (with_change(f"{EVENTS}/series/0/0", ["default", "BOGUS", "x"]), "label eventlog"),
        (with_change(f"{EVENTS}/series/0/0", ["default", "main"]), "not 3 values"),
        (with_change(f"{EVENTS}/series/0/0", ["default", "main", 7]), "label name"),
        (with_change(f"{WAIT}/series/0/1", [1.0]), "do not match the bounds"),
        (with_change(f"{WAIT}/series/0/2", math.inf), "a sum is not a finite float"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_a_saved_state_fluxmon_did_not_write_is_refused_by_family(state: Any, problem: str) -> None:
    """Each bad family is named and left at zero; the others are restored; nothing raises."""
    parts = fresh()
    problems: list[str] = []
    parts.metrics_state.restore(state, problems.append)
    assert len(problems) == 1, problems
    assert problem in problems[0]
    registry = parts.registry
    if isinstance(state, dict) and EVENTS in state and problem not in ("labels differ",):
        broken_events = any(
            p.startswith(f"metrics {EVENTS}:") for p in problems
        )  # the bad family stays at zero, the good one is back
        value = registry.get_sample_value(
            EVENTS + "_total", {"queue": "default", "eventlog": "main", "name": "submit"}
        )
        assert value == (None if broken_events else 1.0)


def test_restored_label_values_go_through_the_label_cap() -> None:
    """Queues past the cap are added to ``other``: no count is lost, no series is added."""
    source = fresh(settings(label_cap=10))
    for i in range(6):
        source.tracker.apply(ev(i + 1, "submit", 10.0 + i, jobspec=queue_spec(f"q{i}")))
    state = roundtrip(source)
    target = fresh(settings(label_cap=2))
    target.metrics_state.restore(state, pytest.fail)
    per_queue = {
        labels["queue"]: value
        for family in target.registry.collect()
        for s in family.samples
        if s.name == "flux_jobs_submitted_total"
        for labels, value in [(s.labels, s.value)]
    }
    assert per_queue == {"q0": 1.0, "q1": 1.0, "other": 4.0}


def queue_spec(queue: str) -> dict[str, Any]:
    """A jobspec naming ``queue``."""
    return {"attributes": {"system": {"queue": queue}}}


def test_restored_metrics_are_hidden_until_history_is_caught_up(tmp_path: Path) -> None:
    """A scrape between the restart and catching up sees no flux_* counter go down: none at all."""
    state = roundtrip(replayed())
    parts = fresh()
    restore_metrics(parts, state, str(tmp_path / "fluxmon.checkpoint.json"))
    assert flux_lines(parts) == []
    assert "fluxmon_tracked_jobs" in generate_latest(parts.registry).decode()
    parts.pipeline.connected("test")
    parts.pipeline.caught_up()
    assert any(line.startswith("flux_job_events_total[") for line in flux_lines(parts))


def test_no_saved_metrics_changes_nothing(tmp_path: Path) -> None:
    """A checkpoint from before metrics were saved: counters start at zero and are shown."""
    parts = fresh()
    restore_metrics(parts, None, str(tmp_path / "fluxmon.checkpoint.json"))
    parts.tracker.apply(ev(1, "submit", 10.0, jobspec={"attributes": {}}))
    assert any(line.startswith("flux_job_events_total[") for line in flux_lines(parts))


def test_resource_counters_and_histograms_are_restored() -> None:
    """Drains by reason and the (unlabelled) drain-duration histogram come back as saved."""
    from fluxmon.events import ResourceEvent
    from tests.test_resources import define

    parts = fresh()
    pipeline = parts.pipeline
    pipeline.declare_queue_nodes({})
    pipeline.resource_events(define(8, cores=4), live=True)
    drain = {"idset": "1-2", "nodelist": "host[1-2]", "reason": "bad dimm", "overwrite": 0}
    pipeline.resource_events(
        [
            ResourceEvent("drain", 100.0, drain),
            ResourceEvent("undrain", 400.0, {"idset": "1", "nodelist": "host1", "overwrite": 0}),
        ],
        live=True,
    )
    assert parts.registry.get_sample_value("flux_node_drains_total", {"reason": "bad dimm"}) == 2
    after = fresh()
    after.metrics_state.restore(roundtrip(parts), pytest.fail)
    assert flux_lines(after) == flux_lines(parts)
    assert after.registry.get_sample_value("flux_node_drain_duration_seconds_count") == 1


def test_a_refused_family_is_logged_and_counted(tmp_path: Path) -> None:
    """restore_metrics names each refused family and counts it under metrics_invalid."""
    state = valid_state()
    state[WAIT]["bounds"] = [1.0, "+Inf"]
    stream = io.StringIO()
    parts = build(settings(), stream, clock=None)
    restore_metrics(parts, state, str(tmp_path / "fluxmon.checkpoint.json"))
    kind = {"kind": "metrics_invalid"}
    assert parts.registry.get_sample_value("fluxmon_checkpoint_errors_total", kind) == 1
    assert "checkpoint.metrics_invalid" in stream.getvalue()
    assert "flux_job_queue_wait_seconds" in stream.getvalue()
