"""Cluster resources from events: hostlists, the resource tracker, its metrics, records, replay."""

from __future__ import annotations

import dataclasses
import io
import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.openmetrics.exposition import generate_latest as om

from fluxmon import cli
from fluxmon.app import Parts, RecordDownstream, build
from fluxmon.config import LogFormat
from fluxmon.events import MAIN, JobEvent, ResourceEvent
from fluxmon.hostlist import (
    decode_hostlist,
    decode_idset,
    encode_hostlist,
    encode_idset,
    hostlist_contains,
)
from fluxmon.logquery import Query, filter_lines
from fluxmon.resources import NODE_STATES, ResourceTracker, drain_reason_label, parse_R
from fluxmon.sources.replay import (
    LineError,
    ReplaySource,
    format_resource_event,
    parse_entry,
)
from fluxmon.testing import parse_log
from fluxmon.tracker import Tracker
from tests.conftest import json_settings

# --- helpers ----------------------------------------------------------------------------


def instance_R(
    nodes: int,
    *,
    cores: int = 4,
    gpus: int = 0,
    prefix: str = "host",
    properties: dict[str, str] | None = None,
) -> dict[str, Any]:
    """An RFC 20 R of ``nodes`` ranks named ``prefix0..``, each with ``cores`` and ``gpus``."""
    children = {"core": f"0-{cores - 1}"}
    if gpus:
        children["gpu"] = f"0-{gpus - 1}"
    execution: dict[str, Any] = {
        "R_lite": [{"rank": f"0-{nodes - 1}", "children": children}],
        "nodelist": [f"{prefix}[0-{nodes - 1}]"],
        "starttime": 0.0,
        "expiration": 0.0,
    }
    if properties:
        execution["properties"] = properties
    return {"version": 1, "execution": execution}


def job_R(ranks: str, cores: str = "0-1", gpus: str | None = None) -> dict[str, Any]:
    """A job's R on ``ranks`` with ``cores`` (and ``gpus``) on each."""
    children = {"core": cores}
    if gpus:
        children["gpu"] = gpus
    hosts = encode_hostlist(f"host{r}" for r in decode_idset(ranks))
    return {
        "version": 1,
        "execution": {"R_lite": [{"rank": ranks, "children": children}], "nodelist": [hosts]},
    }


def define(nodes: int = 4, ts: float = 10.0, **kw: Any) -> list[ResourceEvent]:
    """``restart`` (all online) then ``resource-define`` of ``nodes`` nodes."""
    return [
        ResourceEvent(
            "restart",
            ts,
            {
                "ranks": f"0-{nodes - 1}",
                "online": f"0-{nodes - 1}",
                "nodelist": f"host[0-{nodes - 1}]",
            },
        ),
        ResourceEvent(
            "resource-define", ts, {"method": "configuration", "R": instance_R(nodes, **kw)}
        ),
    ]


def job_life(
    jobid: int,
    ts: float,
    R: dict[str, Any],
    *,
    queue: str = "batch",
    end: bool = True,
    jobspec: dict[str, Any] | None = None,
) -> list[JobEvent]:
    """A job submitted at ``ts``, allocated ``R`` at ts+1, freed and cleaned at ts+10."""
    spec = jobspec or {"attributes": {"system": {"queue": queue}}}
    events = [
        JobEvent(jobid, MAIN, "submit", ts, {"userid": 1, "urgency": 16}, jobspec=spec),
        JobEvent(jobid, MAIN, "validate", ts, {}),
        JobEvent(jobid, MAIN, "depend", ts, {}),
        JobEvent(jobid, MAIN, "priority", ts, {"priority": 1}),
        JobEvent(jobid, MAIN, "alloc", ts + 1, {}, R=R),
        JobEvent(jobid, MAIN, "start", ts + 2, {}),
    ]
    if end:
        events += [
            JobEvent(jobid, MAIN, "finish", ts + 9, {"status": 0}),
            JobEvent(jobid, MAIN, "release", ts + 10, {"ranks": "all", "final": True}),
            JobEvent(jobid, MAIN, "free", ts + 10, {}),
            JobEvent(jobid, MAIN, "clean", ts + 10, {}),
        ]
    return events


def fresh() -> tuple[Parts, io.StringIO]:
    """A built pipeline with JSON logs."""
    stream = io.StringIO()
    return build(json_settings(), stream, clock=None), stream


def value(parts: Parts, metric: str, **labels: str) -> float | None:
    """One sample of the registry."""
    return parts.registry.get_sample_value(metric, labels)


def records(stream: io.StringIO, msg: str) -> list[dict[str, Any]]:
    """The JSON records named ``msg``."""
    return [r for r in parse_log(stream.getvalue()) if r["msg"] == msg]


def rejected(parts: Parts, reason: str) -> float:
    """``fluxmon_event_errors_total{reason}``."""
    return value(parts, "fluxmon_event_errors_total", reason=reason) or 0.0


# --- idsets and hostlists -----------------------------------------------------------------


def test_idset_decode_and_encode() -> None:
    """RFC 22 idsets decode to sorted ids and encode back to their shortest range form."""
    assert decode_idset("0-3,7") == [0, 1, 2, 3, 7]
    assert decode_idset("[5,1-2]") == [1, 2, 5]
    assert decode_idset("") == []
    assert encode_idset([7, 0, 1, 2, 3, 9, 10]) == "0-3,7,9-10"
    assert encode_idset([]) == ""


@pytest.mark.parametrize("text", ["0-4294967295", "3-1", "a", "1,,2", "-1", "1-2-3"])
def test_idset_refuses_hostile_text(text: str) -> None:
    """An idset that is not one, or names more ids than the limit, is refused, not expanded."""
    with pytest.raises(ValueError, match=r"."):
        decode_idset(text, limit=1000)


def test_hostlist_decode_and_encode() -> None:
    """RFC 29 hostlists expand in order with padding and compress back the same way."""
    hosts = decode_hostlist("host[15-18,20],login1,n[01-03]x")
    assert hosts == [
        "host15",
        "host16",
        "host17",
        "host18",
        "host20",
        "login1",
        "n01x",
        "n02x",
        "n03x",
    ]
    assert encode_hostlist(hosts) == "host[15-18,20],login1,n[01-03]x"
    assert encode_hostlist(["vm", "vm"]) == "vm,vm"
    assert encode_hostlist(["host3"]) == "host3"


@given(st.lists(st.sampled_from(["a", "b1x", "node"]) | st.integers(0, 200).map(lambda n: f"h{n}")))
def test_hostlist_round_trips(hosts: list[str]) -> None:
    """Any list of hosts survives encode then decode, order and repeats kept."""
    assert decode_hostlist(encode_hostlist(hosts)) == hosts


@pytest.mark.parametrize("text", ["h[1-", "h]1", "h[[1]]", "h[1-99999999]", "h[a]", "a,,b"])
def test_hostlist_refuses_hostile_text(text: str) -> None:
    """A hostlist that is not one, or too large, is refused."""
    with pytest.raises(ValueError, match=r"."):
        decode_hostlist(text, limit=1000)


def test_hostlist_contains_the_compressed_host() -> None:
    """host17 is found in host[15-18]; host19 and bad text are not."""
    assert hostlist_contains("host[15-18]", "host17")
    assert not hostlist_contains("host[15-18]", "host19")
    assert not hostlist_contains("host[15-", "host15")


# --- the tracker ------------------------------------------------------------------------


def test_parse_R_reads_cores_gpus_hosts_and_properties() -> None:
    """R_lite ranks, their core and GPU counts, the nodelist and properties are read."""
    R = instance_R(3, cores=8, gpus=2, properties={"gpu": "1-2"})
    ranks, hosts, props = parse_R(R)
    assert ranks == {0: (8, 2), 1: (8, 2), 2: (8, 2)}
    assert hosts == ["host0", "host1", "host2"]
    assert props == {"gpu": [1, 2]}


def test_real_broker_order_restart_online_then_define() -> None:
    """flux-core's own order (restart, online before resource-define) gives the right nodes."""
    t = ResourceTracker()
    events = [
        ResourceEvent("restart", 1.0, {"ranks": "0-1", "online": "", "nodelist": "vm,vm"}),
        ResourceEvent("online", 2.0, {"idset": "0"}),
        ResourceEvent(
            "resource-define",
            3.0,
            {"method": "dynamic-discovery", "R": instance_R(2, cores=2, prefix="vm")},
        ),
        ResourceEvent("online", 4.0, {"idset": "1"}),
    ]
    assert all(t.apply(e) for e in events)
    snap = t.snapshot()
    assert snap.nodes == {"down": 0, "drained": 0, "draining": 0, "torpid": 0, "up": 2}
    assert snap.queues["default"].cores == {"allocated": 0, "free": 4, "unavailable": 0}


def test_drain_overwrite_follows_flux_core() -> None:
    """overwrite 0 leaves a drained node alone, 1 replaces the reason, 2 the time too."""
    t = ResourceTracker()
    for e in define(2):
        t.apply(e)
    t.apply(ResourceEvent("drain", 20.0, {"idset": "0", "reason": "a", "overwrite": 0}))
    t.apply(ResourceEvent("drain", 21.0, {"idset": "0", "reason": "b", "overwrite": 0}))
    assert (t.nodes[0].reason, t.nodes[0].drained_since) == ("a", 20.0)
    t.apply(ResourceEvent("drain", 22.0, {"idset": "0", "reason": "c", "overwrite": 1}))
    assert (t.nodes[0].reason, t.nodes[0].drained_since) == ("c", 20.0)
    t.apply(ResourceEvent("drain", 23.0, {"idset": "0", "reason": "d", "overwrite": 2}))
    assert (t.nodes[0].reason, t.nodes[0].drained_since) == ("d", 23.0)
    t.apply(
        ResourceEvent("drain", 24.0, {"idset": "1", "reason": "old broker"})
    )  # no overwrite key
    assert t.nodes[1].drained
    assert t.snapshot().oldest_drain == 23.0


def test_node_states_follow_the_precedence() -> None:
    """down > drained/draining > torpid > up, each node counted once."""
    t = ResourceTracker()
    for e in define(5):
        t.apply(e)
    t.apply(ResourceEvent("offline", 11.0, {"idset": "0"}))
    t.apply(ResourceEvent("drain", 11.0, {"idset": "0-2", "reason": "x", "overwrite": 0}))
    t.apply(ResourceEvent("torpid", 11.0, {"idset": "2-3"}))
    tracker = Tracker([t])
    for je in job_life(1, 12.0, job_R("1"), end=False):
        tracker.apply(je)
    assert t.snapshot().nodes == {"down": 1, "drained": 1, "draining": 1, "torpid": 1, "up": 1}


def test_allocation_per_queue_from_properties() -> None:
    """Queues over property subsets: cores and GPUs allocated, free, unavailable add up."""
    t = ResourceTracker()
    t.declare_queues({"batch": [], "gpu": ["gpu"]})
    for e in define(4, cores=4, gpus=2, properties={"gpu": "2-3"}):
        t.apply(e)
    tracker = Tracker([t])
    for je in job_life(1, 20.0, job_R("2-3", "0-3", "0"), queue="gpu", end=False):
        tracker.apply(je)
    t.apply(ResourceEvent("drain", 30.0, {"idset": "0", "reason": "x", "overwrite": 0}))
    snap = t.snapshot()
    assert snap.queues["gpu"].cores == {"allocated": 8, "free": 0, "unavailable": 0}
    assert snap.queues["gpu"].gpus == {"allocated": 2, "free": 2, "unavailable": 0}
    assert snap.queues["batch"].cores == {"allocated": 8, "free": 4, "unavailable": 4}
    tracker.apply(JobEvent(1, MAIN, "finish", 40.0, {"status": 0}))
    tracker.apply(JobEvent(1, MAIN, "free", 41.0, {}))
    assert t.snapshot().queues["gpu"].cores["allocated"] == 0


def test_history_alloc_counts_after_a_reconnect() -> None:
    """A job running when fluxmon connects (its alloc in history) holds its cores."""
    t = ResourceTracker()
    for e in define(2):
        t.apply(e, live=False)
    tracker = Tracker([t])
    for je in job_life(7, 5.0, job_R("0-1", "0-3"), end=False):
        tracker.apply(je, live=False)
    assert t.snapshot().queues["default"].cores["allocated"] == 8


def test_reconnect_counts_only_what_it_missed() -> None:
    """The first connect's history is not counted; a reconnect counts only newer history."""
    parts, stream = fresh()
    history = [
        *define(2),
        ResourceEvent("drain", 20.0, {"idset": "0", "reason": "x", "overwrite": 0}),
    ]
    parts.pipeline.connected("first")
    parts.pipeline.resource_events(history, live=False)
    assert value(parts, "flux_node_drains_total", reason="x") is None
    assert value(parts, "flux_resource_nodes", state="drained") == 1
    live = ResourceEvent("drain", 25.0, {"idset": "1", "reason": "x", "overwrite": 0})
    parts.pipeline.resource_events([live], live=True)
    assert value(parts, "flux_node_drains_total", reason="x") == 1
    parts.pipeline.disconnected("gone")
    missed = ResourceEvent("undrain", 30.0, {"idset": "0", "overwrite": 0})
    parts.pipeline.connected("again")
    parts.pipeline.resource_events([*history, live, missed], live=False)
    assert value(parts, "flux_node_drains_total", reason="x") == 1
    assert value(parts, "flux_resource_events_total", name="undrain") == 1
    assert value(parts, "flux_resource_events_total", name="drain") == 1
    assert value(parts, "flux_node_drain_duration_seconds_sum") == 10.0
    assert len(records(stream, "node.undrain")) == 1
    assert value(parts, "flux_resource_nodes", state="drained") == 1


# --- metrics and records through the daemon's pipeline ---------------------------------------


def test_metrics_and_records_of_a_drain_undrain_offline_online_life() -> None:
    """Gauges, counters, histograms with exemplars and node.* records of one life."""
    parts, stream = fresh()
    p = parts.pipeline
    p.declare_queue_nodes({})
    p.resource_mode("journal")
    p.resource_events(define(20, cores=4), live=True)
    p.resource_events(
        [
            ResourceEvent(
                "drain",
                100.0,
                {
                    "idset": "15-18",
                    "nodelist": "host[15-18]",
                    "reason": "host16 disk 3 failed",
                    "overwrite": 0,
                },
            ),
            ResourceEvent("offline", 110.0, {"idset": "3"}),
            ResourceEvent(
                "undrain", 400.0, {"idset": "15-16", "nodelist": "host[15-16]", "overwrite": 0}
            ),
            ResourceEvent("online", 710.0, {"idset": "3"}),
        ]
    )
    assert value(parts, "fluxmon_resource_mode", mode="journal") == 1
    assert value(parts, "flux_resource_nodes", state="drained") == 2
    assert value(parts, "flux_resource_nodes", state="up") == 18
    assert sum(value(parts, "flux_resource_nodes", state=s) or 0 for s in NODE_STATES) == 20
    assert value(parts, "flux_resource_cores", queue="default", state="unavailable") == 8
    assert value(parts, "flux_resource_cores", queue="default", state="free") == 72
    assert value(parts, "flux_node_drains_total", reason="HOST disk N failed") == 4
    assert value(parts, "flux_node_drain_duration_seconds_sum") == 600.0
    assert value(parts, "flux_node_down_duration_seconds_sum") == 600.0
    assert value(parts, "flux_resource_oldest_drain_timestamp_seconds") == 100.0
    assert value(parts, "flux_resource_events_total", name="drain") == 1
    drain = records(stream, "node.drain")[0]
    assert (drain["nodelist"], drain["ranks"], drain["reason"]) == (
        "host[15-18]",
        "15-18",
        "host16 disk 3 failed",
    )
    undrain = records(stream, "node.undrain")[0]
    assert (undrain["nodelist"], undrain["drained_seconds"]) == ("host[15-16]", 300.0)
    assert records(stream, "node.offline")[0]["nodelist"] == "host3"
    assert records(stream, "node.online")[-1]["down_seconds"] == 600.0
    text = om(parts.registry).decode()  # type: ignore[no-untyped-call]
    assert 'duration_seconds_bucket{le="300.0"} 2.0 # {node="host16"} 300.0' in text


def test_job_finished_carries_nodelist_cores_gpus_name_bank_project() -> None:
    """job.finished gains the job's hostlist, ncores, ngpus, name, bank and project."""
    parts, stream = fresh()
    parts.pipeline.resource_events(define(20, cores=4, gpus=1))
    spec = {"attributes": {"system": {"job": {"name": "sim"}, "bank": "physics", "project": "p1"}}}
    parts.pipeline.events(job_life(5, 20.0, job_R("15-18", "0-3", "0"), jobspec=spec))
    rec = records(stream, "job.finished")[0]
    assert (rec["nodelist"], rec["ncores"], rec["ngpus"]) == ("host[15-18]", 16, 4)
    assert (rec["name"], rec["bank"], rec["project"]) == ("sim", "physics", "p1")
    assert value(parts, "flux_resource_cores", queue="default", state="allocated") == 0


def test_logs_node_finds_jobs_on_a_host_in_a_compressed_hostlist(tmp_path: Path) -> None:
    """``fluxmon logs --node host17`` keeps job.finished with nodelist host[15-18] only."""
    parts, stream = fresh()
    parts.pipeline.resource_events(define(20))
    parts.pipeline.events(job_life(5, 20.0, job_R("15-18")) + job_life(6, 20.0, job_R("1-2")))
    parts.pipeline.resource_events(
        [ResourceEvent("drain", 50.0, {"idset": "17", "reason": "x", "overwrite": 0})]
    )
    lines = stream.getvalue().encode().splitlines(keepends=True)
    out = io.BytesIO()
    assert filter_lines(lines, Query(nodes=frozenset({"host17"})), out) == 2
    found = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(r["msg"], r.get("id")) for r in found] == [("job.finished", 5), ("node.drain", None)]
    assert filter_lines(lines, Query(nodes=frozenset({"host19"})), io.BytesIO()) == 0


# --- hostile input --------------------------------------------------------------------------


def test_bad_resource_input_is_counted_logged_never_fatal() -> None:
    """Malformed events, unknown ranks, undrain of a node not drained, early events: refused."""
    parts, stream = fresh()
    p = parts.pipeline
    p.resource_events([ResourceEvent("online", 1.0, {"idset": "0"})])
    assert rejected(parts, "before_define") == 1
    p.resource_events(define(4))
    p.resource_events(
        [
            ResourceEvent("drain", 20.0, {"idset": 5}),  # not a string
            ResourceEvent("drain", 20.0, {"idset": "0", "overwrite": "yes"}),
            ResourceEvent("offline", 20.0, {"idset": "0-4294967295"}),
            ResourceEvent("resource-define", 20.0, {"R": {"execution": []}}),
            ResourceEvent("offline", 21.0, {"idset": "2-9"}),
            ResourceEvent("undrain", 22.0, {"idset": "1"}),
            ResourceEvent("x" * 500, 22.0, {}),
            ResourceEvent(None, "now", []),  # type: ignore[arg-type]
        ]
    )
    assert rejected(parts, "malformed") == 5
    assert rejected(parts, "unknown_rank") == 1
    assert rejected(parts, "not_drained") == 1
    assert value(parts, "flux_resource_nodes", state="down") == 2  # ranks 2-3 applied
    assert value(parts, "flux_resource_events_total", name="other") == 1
    assert {r["reason"] for r in records(stream, "event.rejected")} >= {
        "malformed",
        "unknown_rank",
        "not_drained",
        "before_define",
    }


def test_job_R_with_ranks_outside_the_instance() -> None:
    """A job R naming ranks the instance lacks is refused for those ranks; cores stay exact."""
    parts, _ = fresh()
    parts.pipeline.resource_events(define(4))
    parts.pipeline.events(job_life(9, 20.0, job_R("2-7", "0-1"), end=False))
    assert rejected(parts, "unknown_rank") == 1
    assert value(parts, "flux_resource_cores", queue="default", state="allocated") == 4
    parts.pipeline.events(job_life(10, 20.0, {"execution": {"R_lite": "x"}}, end=False))
    assert rejected(parts, "malformed") == 1
    parts.pipeline.events(
        [JobEvent(9, MAIN, "finish", 40.0, {"status": 0}), JobEvent(9, MAIN, "free", 41.0, {})]
    )
    assert value(parts, "flux_resource_cores", queue="default", state="allocated") == 0


def test_drain_reason_label_rule() -> None:
    """Hostnames and hostlists become HOST, digit runs N, and the text is cut at 64."""
    assert drain_reason_label("node17 bad disk 3", {"node17"}) == "HOST bad disk N"
    assert drain_reason_label("fail on host[1-4].", set()) == "fail on HOST"
    assert drain_reason_label("ECC 0x1f at rank 12", set()) == "ECC NxNf at rank N"
    assert drain_reason_label(None) == "none"
    assert len(drain_reason_label("y" * 500)) == 64


def test_many_distinct_reasons_are_capped() -> None:
    """Reasons that stay distinct after normalising are capped at the label cap."""
    parts, _ = fresh()
    parts.pipeline.resource_events(define(200))
    words = [f"reason{chr(97 + i % 26)}{chr(97 + i // 26)}" for i in range(200)]
    parts.pipeline.resource_events(
        [
            ResourceEvent("drain", 20.0 + i, {"idset": str(i), "reason": w, "overwrite": 0})
            for i, w in enumerate(words)
        ]
    )
    assert value(parts, "flux_node_drains_total", reason="other") == 150
    assert (value(parts, "fluxmon_label_overflow_total", label="reason") or 0) == 150


# --- replay format ------------------------------------------------------------------------


def test_resource_lines_round_trip_and_replay(tmp_path: Path) -> None:
    """A resource line parses to a ResourceEvent, formats back, and replays in file order."""
    event = ResourceEvent("drain", 20.0, {"idset": "1", "reason": "x", "overwrite": 0})
    assert parse_entry(format_resource_event(event)) == event
    with pytest.raises(LineError, match="resource must be true"):
        parse_entry('{"resource": 1, "name": "drain", "timestamp": 1}')
    with pytest.raises(LineError, match="finite"):
        parse_entry('{"resource": true, "name": "drain", "timestamp": 1e999}')
    with pytest.raises(LineError, match="context"):
        parse_entry('{"resource": true, "name": "drain", "timestamp": 1, "context": []}')
    path = tmp_path / "r.jsonl"
    lines = [format_resource_event(e) for e in [*define(2), event]]
    lines.append('{"resource": true, "name": 3, "timestamp": 1}')
    path.write_text("\n".join(lines) + "\n")
    parts, _ = fresh()
    ReplaySource([path]).run(parts.pipeline, threading.Event())
    assert value(parts, "flux_resource_nodes", state="drained") == 1
    assert rejected(parts, "malformed") == 1


# --- properties ----------------------------------------------------------------------------

_ACTIONS = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "alloc",
                "free",
                "release",
                "clean",
                "drain",
                "undrain",
                "offline",
                "online",
                "define",
                "forget",
            ]
        ),
        st.integers(0, 5),  # job or rank
        st.integers(0, 5),  # second rank
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(_ACTIONS, st.booleans())
def test_allocated_never_negative_and_zero_when_idle(
    actions: Sequence[tuple[str, int, int]], split: bool
) -> None:
    """Over any order of job and resource events, allocated cores per queue stay >= 0,
    node states add up to the nodes, and with every job gone nothing is allocated."""
    t = ResourceTracker()
    t.declare_queues({"a": [], "b": ["fast"]} if split else {})
    tracker = Tracker([t])
    ts = 1.0
    started: set[int] = set()
    for name, x, y in actions:
        ts += 1.0
        low, high = min(x, y), max(x, y)
        if name == "define":
            for e in define(4 + x % 3, ts, properties={"fast": "0-1"}):
                t.apply(e)
        elif name in ("drain", "undrain", "offline", "online"):
            t.apply(
                ResourceEvent(
                    name, ts, {"idset": f"{low}-{high}", "reason": "r", "overwrite": x % 3}
                )
            )
        elif name == "alloc" and x not in started:
            started.add(x)
            for je in job_life(x + 1, ts, job_R(f"{low}-{high}", "0-2", "0"), end=False):
                tracker.apply(je)
        elif name == "forget":
            tracker.forget(x + 1)
            t.release(x + 1)
        elif name in ("free", "release", "clean"):
            context = {"final": True} if name == "release" else {}
            tracker.apply(JobEvent(x + 1, MAIN, "finish", ts, {"status": 0}))
            tracker.apply(JobEvent(x + 1, MAIN, name, ts, context))
        snap = t.snapshot()
        assert sum(snap.nodes.values()) == len(t.nodes)
        for slots in snap.queues.values():
            assert min(slots.cores.values()) >= 0
            assert min(slots.gpus.values()) >= 0
        assert all(n.alloc_cores >= 0 and n.jobs >= 0 for n in t.nodes.values())
    for jobid in list(t.allocs):
        tracker.apply(JobEvent(jobid, MAIN, "finish", ts + 1, {"status": 0}))
        tracker.apply(JobEvent(jobid, MAIN, "free", ts + 1, {}))
        t.release(jobid)  # a job the tracker refused to end is forgotten
    snap = t.snapshot()
    for slots in snap.queues.values():
        assert slots.cores["allocated"] == 0
        assert slots.gpus["allocated"] == 0
    assert all(n.alloc_cores == 0 and n.jobs == 0 for n in t.nodes.values())


def test_record_writes_resource_lines_that_replay() -> None:
    """``fluxmon record``'s downstream writes resource lines that parse back to the events."""
    out = io.StringIO()
    parts, _ = fresh()
    downstream = RecordDownstream(out, parts.log, threading.Event(), None)
    events = [*define(2), ResourceEvent("drain", 20.0, {"idset": "1", "reason": "x"})]
    downstream.resource_events(events, live=False)
    downstream.resource_mode("poll")
    downstream.declare_queue_nodes({"batch": []})
    assert [parse_entry(line) for line in out.getvalue().splitlines()] == events
    assert downstream.events_written == 3


@pytest.mark.parametrize("fmt", ["logfmt", "json"])
def test_logs_node_cli_on_a_log_file(
    fmt: LogFormat, tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    """``fluxmon logs --node host17 FILE`` prints the job on host[15-18] in either format."""
    stream = io.StringIO()
    base = json_settings()
    parts = build(
        dataclasses.replace(base, log=dataclasses.replace(base.log, format=fmt)), stream, clock=None
    )
    parts.pipeline.resource_events(define(20))
    parts.pipeline.events(job_life(5, 20.0, job_R("15-18")) + job_life(6, 20.0, job_R("1-2")))
    path = tmp_path / "fluxmon.log"
    path.write_text(stream.getvalue())
    status = cli.main(["logs", "--node", "host17", "--msg", "job.finished", str(path)])
    lines = capsysbinary.readouterr().out.splitlines()
    assert status == 0
    assert len(lines) == 1
    assert b"host[15-18]" in lines[0]
    assert cli.main(["logs", "--node", "host19", str(path)]) == 1


def test_job_R_with_unreadable_children_leaves_counts_unknown() -> None:
    """An R whose core idset cannot be read gives no ncores, and the job still runs."""
    parts, stream = fresh()
    bad = {"execution": {"R_lite": [{"rank": "0", "children": {"core": "0-" + "9" * 5000}}]}}
    parts.pipeline.events(job_life(3, 20.0, bad))
    rec = records(stream, "job.finished")[0]
    assert (rec["ncores"], rec["result"]) == (None, "completed")


def test_excluded_ranks_are_no_nodes_and_their_events_are_ignored() -> None:
    """Ranks excluded at define (context exclude, or not in R) are not counted nor refused."""
    parts, _ = fresh()
    restart = ResourceEvent("restart", 1.0, {"ranks": "0-4", "online": "", "nodelist": "h[0-4]"})
    R = instance_R(4, prefix="h")  # rank 4 is not in R
    parts.pipeline.resource_events(
        [
            restart,
            ResourceEvent("resource-define", 2.0, {"R": R, "exclude": "0"}),
            ResourceEvent("online", 3.0, {"idset": "0-4"}),
        ]
    )
    assert value(parts, "flux_resource_nodes", state="up") == 3
    assert sum(value(parts, "flux_resource_nodes", state=s) or 0 for s in NODE_STATES) == 3
    assert rejected(parts, "unknown_rank") == 0
    assert value(parts, "flux_resource_cores", queue="default", state="free") == 12


def test_torpid_lively_reason_update_and_resource_update() -> None:
    """torpid/lively move nodes and write records; a reason change is a drain update."""
    parts, stream = fresh()
    p = parts.pipeline
    p.resource_events(define(3))
    p.resource_events(
        [
            ResourceEvent("torpid", 20.0, {"idset": "1-2"}),
            ResourceEvent("lively", 21.0, {"idset": "2"}),
            ResourceEvent("drain", 22.0, {"idset": "0", "reason": "a", "overwrite": 0}),
            ResourceEvent("drain", 23.0, {"idset": "0", "reason": "b", "overwrite": 1}),
            ResourceEvent("resource-update", 24.0, {"expiration": 99.5}),
        ]
    )
    assert value(parts, "flux_resource_nodes", state="torpid") == 1
    assert value(parts, "flux_resource_nodes", state="up") == 1
    assert [r["nodelist"] for r in records(stream, "node.torpid")] == ["host[1-2]"]
    assert [r["nodelist"] for r in records(stream, "node.lively")] == ["host2"]
    drains = records(stream, "node.drain")
    assert [(r["reason"], r["update"]) for r in drains] == [("a", False), ("b", True)]
    assert value(parts, "flux_node_drains_total", reason="a") == 1
    assert value(parts, "flux_node_drains_total", reason="b") is None
    assert parts.pipeline.resources.expiration == 99.5
    assert value(parts, "flux_resource_events_total", name="resource-update") == 1


#: Text of idsets and hostlists for R: valid, empty, backwards, too many ids, not text.
_r_text = st.one_of(
    st.sampled_from(["0", "0-3", "1,3-5", "", "[0-1]", "3-1", "0-999999999", "x", "0-"]),
    st.text(alphabet="0123456789-,[] ", max_size=12),
)
_r_hosts = st.sampled_from(["node0", "node[0-3]", "n[1-2],m7", "", "a[1-", "b[3-1]", "c[0-9]"])


@settings(max_examples=200)
@given(
    st.lists(
        st.tuples(_r_text, _r_text | st.none() | st.integers(), _r_text | st.none()), max_size=4
    ),
    st.lists(_r_hosts, max_size=3) | _r_hosts | st.integers(),
    st.dictionaries(st.sampled_from(["gpu-big", "ssd"]), _r_text, max_size=2),
)
def test_parse_R_memo_changes_no_result(
    lite: list[tuple[str, object, object]], nodelist: object, props: dict[str, str]
) -> None:
    """parse_R gives the result or error it gave unmemoised, with its memo cold and warm."""
    from fluxmon import resources

    R = {
        "execution": {
            "R_lite": [
                {"rank": rank, "children": {"core": core, "gpu": gpu}} for rank, core, gpu in lite
            ],
            "nodelist": nodelist,
            "properties": props,
        }
    }

    def outcome() -> tuple[str, object]:
        try:
            return "value", parse_R(R)
        except ValueError as err:
            return type(err).__name__, str(err)

    def plain_ids(text: object) -> list[int]:
        return decode_idset(text, resources.MAX_RANKS)  # type: ignore[arg-type]

    with (
        mock.patch.object(resources, "_ids_of", plain_ids),
        mock.patch.object(resources, "_hosts_of", decode_hostlist),
    ):
        unmemoised = outcome()
    resources._IDSETS.clear()
    resources._HOSTLISTS.clear()
    cold = outcome()
    warm = outcome()
    assert cold == warm == unmemoised
    if cold[0] == "value":  # the properties are the caller's own lists, not the memo's
        value = cold[1]
        assert isinstance(value, tuple)
        for ids in value[2].values():
            ids.append(-1)
        assert outcome() == warm
