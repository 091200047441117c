"""The resource stream (``resource.journal``, else a ``resource.status`` poll) on the fake.

The fake broker replays ``tests/data/resources/journal.jsonl``, recorded from a flux-core
0.88 broker; ``steps.json`` beside it is the truth after each step (the
``resource.status`` payload): what the delivered events imply is compared with it.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import itertools
import json
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import pytest

from fluxmon.app import build
from fluxmon.config import Settings, load_settings
from fluxmon.events import InvalidEvent, JobEvent, ResourceEvent
from fluxmon.sources.flux import FluxSource
from fluxmon.sources.flux.resources import (
    ResourceDownstream,
    StatusSeen,
    format_idset,
    journal_event,
    parse_idset,
    queue_requires,
    read_status,
    status_events,
)
from fluxmon.testing import parse_log
from tests.conftest import DATA
from tests.fakeflux import FakeBindings, FakeBroker, VirtualStop, load_resource_recording

RECORDING: Final = DATA / "resources"
STEPS: Final = json.loads((RECORDING / "steps.json").read_text())
QUEUES: Final = {"queues": {"batch": {"requires": ["batch"]}, "debug": {"requires": ["debug"]}}}


@dataclasses.dataclass
class JobsOnly:
    """A downstream of job events only (no resource methods); keeps disconnects."""

    rejected: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    disconnects: list[str] = dataclasses.field(default_factory=list)

    def events(self, batch: Sequence[JobEvent], *, live: bool = True) -> None:
        """Jobs: not looked at here."""

    def connected(self, detail: str, *, flux_version: str | None = None) -> None:
        """Not looked at here."""

    def disconnected(self, error: str) -> None:
        self.disconnects.append(error)

    def caught_up(self) -> None:
        """Not looked at here."""

    def declare_queues(self, names: Sequence[str]) -> None:
        """Not looked at here."""

    def reject_input(self, reason: str, detail: str) -> None:
        self.rejected.append((reason, detail))

    def forget(self, jobids: Iterable[int], reason: str) -> None:
        """Not looked at here."""

    def rewind(
        self, jobid: int, *, events_dropped: int, events_new: int, finished: bool = False
    ) -> None:
        """Not looked at here."""

    def heartbeat(self, quiet_for: float = 0.0) -> None:
        """Not looked at here."""


@dataclasses.dataclass
class Recorder(JobsOnly):
    """A downstream that keeps the resource events the source delivers."""

    resources: list[tuple[ResourceEvent, bool]] = dataclasses.field(default_factory=list)
    modes: list[str] = dataclasses.field(default_factory=list)
    queue_nodes: list[Mapping[str, Sequence[str]]] = dataclasses.field(default_factory=list)

    def resource_events(self, batch: Sequence[ResourceEvent], *, live: bool = True) -> None:
        self.resources.extend((event, live) for event in batch)

    def resource_mode(self, mode: str) -> None:
        self.modes.append(mode)

    def declare_queue_nodes(self, requires: Mapping[str, Sequence[str]]) -> None:
        self.queue_nodes.append(requires)


@dataclasses.dataclass
class State:
    """What a sequence of resource events implies (the tracker's job, kept minimal)."""

    online: set[int] = dataclasses.field(default_factory=set)
    torpid: set[int] = dataclasses.field(default_factory=set)
    drained: dict[int, str | None] = dataclasses.field(default_factory=dict)

    def apply(self, event: ResourceEvent) -> None:
        ctx = event.context
        ids = set(parse_idset(ctx.get("idset", ""), "idset"))
        match event.name:
            case "resource-define":  # a new instance R: what was known is void
                self.online, self.torpid, self.drained = set(), set(), {}
            case "restart":
                self.online = set(parse_idset(ctx["online"], "online"))
            case "online":
                self.online |= ids
            case "offline":
                self.online -= ids
            case "torpid":
                self.torpid |= ids
            case "lively":
                self.torpid -= ids
            case "drain":
                for rank in ids:
                    if rank not in self.drained or ctx.get("overwrite"):
                        self.drained[rank] = ctx.get("reason")
            case "undrain":
                for rank in ids:
                    del self.drained[rank]

    def matches(self, status: Mapping[str, Any]) -> None:
        """Assert this is what a ``resource.status`` payload says."""
        assert format_idset(self.online) == status["online"]
        assert format_idset(self.torpid) == status["torpid"]
        truth: dict[int, str | None] = {}
        for ids, info in status["drain"].items():
            for rank in parse_idset(ids, "drain"):
                truth[rank] = info.get("reason")
        assert self.drained == truth


def settings() -> Settings:
    """Default settings with JSON logs."""
    base = load_settings(None)
    return dataclasses.replace(base, log=dataclasses.replace(base.log, format="json"))


def recorded_broker(connect_after: str = "connect") -> tuple[FakeBroker, list[dict[str, Any]]]:
    """The recording on a fake broker; fluxmon connects after step ``connect_after``.

    Returns the broker and the recorded entries, each with its step.
    """
    lines = [json.loads(line) for line in (RECORDING / "journal.jsonl").read_text().splitlines()]
    entries = [{**e, "step": line["step"]} for line in lines for e in line["payload"]["events"]]
    steps = [line["step"] for line in lines]
    last = max(i for i, step in enumerate(steps) if step == connect_after)
    before = [e["timestamp"] for line in lines[: last + 1] for e in line["payload"]["events"]]
    after = [e["timestamp"] for line in lines[last + 1 :] for e in line["payload"]["events"]]
    broker = FakeBroker(start=(max(before) + min(after)) / 2 if after else max(before) + 1.0)
    broker.config = QUEUES
    for e, R in load_resource_recording(RECORDING / "journal.jsonl"):
        broker.resource_event(e["timestamp"], e, R)
    return broker, entries


def run(
    broker: FakeBroker,
    *,
    bindings: FakeBindings | None = None,
    since: float = 0.0,
    after: float = 0.0,
    stop: VirtualStop | None = None,
) -> tuple[Recorder, list[dict[str, Any]], FluxSource]:
    """Run a FluxSource until the broker is idle past ``after``; its downstream and log."""
    config = settings()
    stream = io.StringIO()
    parts = build(config, stream, clock=None)
    stop = stop or VirtualStop(broker)
    broker.stop_when_idle(stop, after=after)
    source = FluxSource(
        config.flux,
        uri="local:///fake",
        bindings=bindings or FakeBindings(broker),
        stats=parts.self_metrics,
        log=parts.log,
        clock=broker.clock,
        monotonic=broker.clock,
        rng=random.Random(1),
    )
    source.resource_memory.since = since
    recorder = Recorder()
    assert isinstance(recorder, ResourceDownstream)
    source.run(recorder, stop)
    return recorder, parse_log(stream.getvalue()), source


def last_timestamp(entries: list[dict[str, Any]]) -> float:
    """The newest recorded timestamp."""
    return max(float(e["timestamp"]) for e in entries)


# -- journal mode --------------------------------------------------------------------------


def test_history_then_live_in_recorded_order() -> None:
    """History comes as history with resource-define first and R in it, then each entry live."""
    broker, entries = recorded_broker()
    recorder, _, source = run(broker, after=last_timestamp(entries))
    assert recorder.modes == ["journal"]
    assert recorder.queue_nodes == [{"batch": ["batch"], "debug": ["debug"]}]
    assert recorder.rejected == []
    delivered = recorder.resources
    history = [event for event, live in delivered if not live]
    connect = [e["name"] for e in entries if e["step"] == "connect"]
    assert connect[:2] == ["restart", "resource-define"]  # as the broker posts them
    assert [e.name for e in history] == ["resource-define", "restart", *connect[2:]]
    R = history[0].context["R"]
    assert R["execution"]["properties"] == {"batch": "2-3", "debug": "0-1"}
    assert history[0].context["method"] == "configuration"
    live = [(e.name, e.timestamp, dict(e.context)) for e, is_live in delivered if is_live]
    recorded_live = [
        (e["name"], e["timestamp"], e.get("context", {})) for e in entries if e["step"] != "connect"
    ]
    assert live == recorded_live
    assert source.resource_memory.since == last_timestamp(entries)
    assert len(broker.resource_journals_opened) == 1


def test_delivered_events_imply_flux_resource_status_at_each_step() -> None:
    """Folding what was delivered up to each step gives that step's resource.status."""
    broker, entries = recorded_broker()
    recorder, _, _ = run(broker, after=last_timestamp(entries))
    step_of = {e["timestamp"]: e["step"] for e in entries}
    label = {"initial": "connect", "jobs-running": "jobs"}  # truth step: journal step
    state = State()
    delivered = [event for event, _ in recorder.resources]
    for step in STEPS:
        name = label.get(step["step"], step["step"])
        for event in delivered:
            if step_of[event.timestamp] == name:
                state.apply(event)
        state.matches(step["status"])


def test_resumed_history_newer_than_since_is_live() -> None:
    """After a restart, history newer than the checkpoint's resource_since is counted live."""
    broker, entries = recorded_broker(connect_after="rejoin-3")
    drain_1 = next(e["timestamp"] for e in entries if e["step"] == "drain-1")
    recorder, _, _ = run(broker, since=drain_1, after=last_timestamp(entries))
    for event, live in recorder.resources:
        if event.name == "resource-define":
            assert not live
        else:
            assert live == (event.timestamp > drain_1), event
    connect = sum(e["step"] == "connect" for e in entries)
    assert sum(live for _, live in recorder.resources) == len(entries) - connect - 1


def test_the_checkpoint_keeps_the_resource_position(tmp_path: Path) -> None:
    """A run with a checkpoint saves the newest resource entry delivered; a restart resumes it."""
    from fluxmon.sources.flux.checkpoint import Checkpoint

    broker, entries = recorded_broker()
    config = settings()
    parts = build(config, io.StringIO(), clock=None)
    stop = VirtualStop(broker)
    broker.stop_when_idle(stop, after=last_timestamp(entries))
    source = FluxSource(
        config.flux, uri="local:///fake", bindings=FakeBindings(broker),
        stats=parts.self_metrics, log=parts.log, clock=broker.clock, monotonic=broker.clock,
        rng=random.Random(1), checkpoint=Checkpoint(tmp_path),
    )  # fmt: skip
    source.run(parts.pipeline, stop)
    saved = json.loads((tmp_path / "fluxmon.checkpoint.json").read_text())
    assert saved["resources_since"] == last_timestamp(entries)
    again = FluxSource(
        config.flux, uri="local:///fake", bindings=FakeBindings(broker),
        stats=parts.self_metrics, log=parts.log, clock=broker.clock,
        checkpoint=Checkpoint(tmp_path),
    )  # fmt: skip
    assert again.resource_memory.since == last_timestamp(entries)


def test_broker_restart_counts_only_the_new_run() -> None:
    """After a broker restart the old run's drains are history, the new run's entries live."""
    _, entries = recorded_broker()
    restart = load_resource_recording(RECORDING / "journal-restart.jsonl")
    broker = FakeBroker(start=max(e["timestamp"] for e, _ in restart) + 1.0)
    for e, R in restart:
        broker.resource_event(e["timestamp"], e, R)
    recorder, _, _ = run(broker, since=last_timestamp(entries), after=broker.now + 1.0)
    names = [(e.name, live) for e, live in recorder.resources]
    assert names[0] == ("resource-define", True)
    old = [e for e, _ in restart if e["timestamp"] <= last_timestamp(entries)]
    assert {e["name"] for e in old} == {"drain", "undrain"}
    assert names[1 : 1 + len(old)] == [(e["name"], False) for e in old]
    assert all(live for _, live in names[1 + len(old) :])
    assert names[1 + len(old)] == ("restart", True)
    status = json.loads((RECORDING / "restart-status.json").read_text())["status"]
    state = State()
    for event, _ in recorder.resources:
        state.apply(event)
    state.matches(status)


def test_reconnect_delivers_each_entry_live_once() -> None:
    """A dropped connection replays history as history: no entry is delivered live twice."""
    broker, entries = recorded_broker()
    torpid = next(e["timestamp"] for e in entries if e["step"] == "torpid-3")
    broker.drop(torpid + 0.1, down_for=3.0)  # lively-3 and more happen while away
    recorder, _, _ = run(broker, after=last_timestamp(entries))
    assert len(broker.resource_journals_opened) == 2
    assert len(recorder.disconnects) == 1
    live = [(e.name, e.timestamp) for e, is_live in recorder.resources if is_live]
    recorded = [(e["name"], e["timestamp"]) for e in entries if e["step"] != "connect"]
    assert sorted(live) == sorted(recorded)
    assert len(live) == len(set(live))
    replayed = [e.name for e, is_live in recorder.resources if not is_live]
    assert replayed.count("resource-define") == 2  # each connection's history starts with it


def one(name: str, timestamp: object = 1.0, **context: object) -> str:
    """A response with one entry, as JSON text."""
    return json.dumps({"events": [{"name": name, "timestamp": timestamp, "context": context}]})


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("not json", "resource journal response:"),
        ('["a list"]', "without events"),
        ('{"events": "x"}', "without events"),
        ('{"events": [{"timestamp": 1.0}]}', "required: name, timestamp"),
        (one("online", idset="1-x"), "idset"),
        (one("drain", idset="1", reason=7), "reason"),
        (one("resource-define", method="configuration"), "without an R"),
        (one("online", "soon", idset="1"), "timestamp"),
        (one("offline", idset="0-99999999"), "names over"),
        ('{"events": []}', "second sentinel"),
    ],
)
def test_malformed_response_refused_and_stream_goes_on(text: str, why: str) -> None:
    """A hostile response is refused as malformed with its reason; later entries still come."""
    broker, entries = recorded_broker()
    first_live = min(e["timestamp"] for e in entries if e["step"] != "connect")
    broker.inject_resource(first_live - 0.05, text)
    recorder, records, _ = run(broker, after=last_timestamp(entries))
    assert len(recorder.rejected) == 1
    reason, detail = recorder.rejected[0]
    assert reason == "malformed"
    assert why in detail
    live = [e for e, is_live in recorder.resources if is_live]
    assert len(live) == sum(e["step"] != "connect" for e in entries)
    assert not [r for r in records if r.get("level") == "error"]


def test_stream_end_loses_the_connection_and_reconnects() -> None:
    """ENODATA (resource module unloaded) ends the connection; the next one starts over."""
    broker, entries = recorded_broker()
    first_live = min(e["timestamp"] for e in entries if e["step"] != "connect")

    def end() -> None:
        for handle in broker.handles:
            for fut in handle.alive_futures():
                if getattr(fut, "kind", "") == "resource-journal":
                    fut.push(OSError(errno.ENODATA, "No data available"))

    broker.at(first_live - 0.05, end)
    recorder, _, _ = run(broker, after=last_timestamp(entries))
    assert any("resource journal ended" in why for why in recorder.disconnects)
    assert len(broker.resource_journals_opened) == 2
    live = [(e.name, e.timestamp) for e, is_live in recorder.resources if is_live]
    assert len(live) == len(set(live)) == sum(e["step"] != "connect" for e in entries)


# -- poll mode -----------------------------------------------------------------------------


def poll_state(recorder: Recorder) -> State:
    """What the delivered events imply."""
    state = State()
    for event, _ in recorder.resources:
        state.apply(event)
    return state


@pytest.mark.parametrize("refusal", ["ENOSYS", "EPERM"])
def test_journal_refused_falls_back_to_polling_status(refusal: str) -> None:
    """ENOSYS or EPERM: logged once with why, then resource.status polls give the same state."""
    broker, entries = recorded_broker()
    bindings = None
    if refusal == "ENOSYS":
        broker.version = "0.70.0"
        broker.resources.journal_errno = errno.ENOSYS
    else:
        bindings = FakeBindings(broker, userid=1000)
    interval = settings().flux.poll_interval
    end = last_timestamp(entries) + 2 * interval
    recorder, records, _ = run(broker, bindings=bindings, after=end)
    assert recorder.modes == ["poll"]
    fallbacks = [r for r in records if r["msg"] == "source.fallback" and r.get("mode") == "poll"]
    assert len(fallbacks) == 1
    assert refusal in fallbacks[0]["reason"]
    if refusal == "ENOSYS":
        assert "older than 0.72" in fallbacks[0]["reason"]
    first = recorder.resources[0][0]
    assert first.name == "resource-define"
    assert first.context["R"] == STEPS[0]["status"]["R"]
    assert not any(live for _, live in recorder.resources[:2])  # define, online: history
    poll_state(recorder).matches(broker.resources.status())
    polls = broker.status_polls
    assert len(polls) >= (end - polls[0]) // interval
    gaps = [b - a for a, b in itertools.pairwise(polls)]
    assert min(gaps) >= interval


def test_poll_reconnect_diffs_against_what_was_delivered() -> None:
    """In poll mode a reconnect does not define everything again: only changes come, live."""
    broker, entries = recorded_broker()
    broker.resources.journal_errno = errno.ENOSYS
    drain_1 = next(e["timestamp"] for e in entries if e["step"] == "drain-1")
    broker.drop(drain_1 + 0.1, down_for=3.0)
    interval = settings().flux.poll_interval
    recorder, records, _ = run(broker, after=last_timestamp(entries) + 2 * interval)
    assert len(recorder.disconnects) == 1
    assert [e.name for e, _ in recorder.resources].count("resource-define") == 1
    assert recorder.modes == ["poll", "poll"]
    fallbacks = [r for r in records if r["msg"] == "source.fallback" and r.get("mode") == "poll"]
    assert len(fallbacks) == 1  # logged once, not at each connection
    poll_state(recorder).matches(broker.resources.status())


def test_poll_after_journal_starts_from_the_journal_state() -> None:
    """Poll, then journal (broker upgraded), then poll again: each switch redefines the state."""
    broker, entries = recorded_broker()
    broker.resources.journal_errno = errno.ENOSYS
    steps = {e["step"]: e["timestamp"] for e in entries}

    def journal(code: int | None) -> Callable[[], None]:
        def switch() -> None:
            broker.resources.journal_errno = code

        return switch

    broker.at(steps["drain-1"] + 0.1, journal(None))
    broker.drop(steps["drain-1"] + 0.1, down_for=2.0)
    broker.at(steps["stop-3"] + 0.1, journal(errno.ENOSYS))
    broker.drop(steps["stop-3"] + 0.1, down_for=2.0)
    interval = settings().flux.poll_interval
    recorder, _, _ = run(broker, after=last_timestamp(entries) + 2 * interval)
    assert recorder.modes == ["poll", "journal", "poll"]
    defines = [live for e, live in recorder.resources if e.name == "resource-define"]
    assert defines == [False, False, False]
    poll_state(recorder).matches(broker.resources.status())


def test_resumed_poll_counts_only_drains_after_since() -> None:
    """A first poll after a checkpoint: drains the status dates after resource_since are live."""
    broker, entries = recorded_broker(connect_after="drain-busy")
    broker.resources.journal_errno = errno.ENOSYS
    maintenance = next(e["timestamp"] for e in entries if e["step"] == "undrain-3-redrain")
    drain_1 = next(e["timestamp"] for e in entries if e["step"] == "drain-1")
    recorder, _, _ = run(broker, since=drain_1 + 1.0, after=broker.now + 1.0)
    live = {(e.name, e.context.get("reason")) for e, is_live in recorder.resources if is_live}
    history = [
        (e.name, e.context.get("reason")) for e, is_live in recorder.resources if not is_live
    ]
    assert history == [("resource-define", None), ("online", None), ("drain", "bad dimm")]
    assert live == {("drain", "draining with a job on it"), ("drain", "maintenance")}
    assert maintenance > drain_1


def test_status_events_diff() -> None:
    """From one status to the next: online/offline, torpid/lively, drain, overwrite, undrain."""
    R = STEPS[0]["status"]["R"]
    before = StatusSeen(R, frozenset({0, 1, 2, 3}), frozenset(), {1: (10.0, "a"), 2: (11.0, "b")})
    after = StatusSeen(R, frozenset({0, 1, 2}), frozenset({0}), {1: (10.0, "c"), 3: (20.0, None)})
    events = status_events(before, after, 30.0)
    got = [(e.name, e.timestamp, dict(e.context)) for e in events]
    assert got == [
        ("drain", 20.0, {"idset": "3", "overwrite": 0}),
        ("offline", 30.0, {"idset": "3"}),
        ("torpid", 30.0, {"idset": "0"}),
        ("drain", 30.0, {"idset": "1", "overwrite": 1, "reason": "c"}),
        ("undrain", 30.0, {"idset": "2"}),
    ]
    assert status_events(after, after, 40.0) == []


def test_read_status_of_every_recorded_step() -> None:
    """Every recorded resource.status payload reads, and drains keep their rounded times."""
    for step in STEPS:
        seen = read_status(step["status"])
        assert format_idset(seen.online) == step["status"]["online"]
        for ids, info in step["status"]["drain"].items():
            for rank in parse_idset(ids, "drain"):
                assert seen.drained[rank] == (info["timestamp"], info.get("reason"))


# -- pieces --------------------------------------------------------------------------------


def test_queue_requires_from_config() -> None:
    """Each queue's requires; none: all nodes; virtual queues take the parent's; no queues: {}."""
    assert queue_requires({"queues": STEPS[0]["config_queues"]}) == {
        "batch": ["batch"],
        "debug": ["debug"],
    }
    config = {"queues": {"a": {"requires": ["x", "y"]}, "b": {}, "c": {"parent": "a"}}}
    assert queue_requires(config) == {"a": ["x", "y"], "b": [], "c": ["x", "y"]}
    assert queue_requires({}) == {}
    bad_configs: list[object] = [
        [],
        {"queues": []},
        {"queues": {"a": {"requires": "x"}}},
        {"queues": {"a": {"parent": "nope"}}},
        {"queues": {"a": {"requires": [1]}}},
    ]
    for bad in bad_configs:
        with pytest.raises(InvalidEvent):
            queue_requires(bad)


def test_idsets_round_trip_and_refuse_hostile_ones() -> None:
    """RFC 22 idsets parse and format back; reversed, malformed and huge ones are refused."""
    assert parse_idset("0-3,7,9-10", "x") == {0, 1, 2, 3, 7, 9, 10}
    assert format_idset({0, 1, 2, 3, 7, 9, 10}) == "0-3,7,9-10"
    assert parse_idset("", "x") == frozenset()
    for bad in ("3-1", "a", "1,,2", " 1", None, 5, "0-99999999999"):
        with pytest.raises(InvalidEvent):
            parse_idset(bad, "x")


def test_journal_event_keeps_unknown_names() -> None:
    """Entries fluxmon does not interpret (truncate, a newer flux-core's) pass through."""
    event = journal_event({"name": "truncate", "timestamp": 5.0})
    assert event == ResourceEvent("truncate", 5.0, {})
    event = journal_event(
        {"name": "resource-update", "timestamp": 6, "context": {"expiration": 9.0}}
    )
    assert event.context == {"expiration": 9.0}
    assert isinstance(event.timestamp, float)
