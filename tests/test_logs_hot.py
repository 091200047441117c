"""The hot ``job.event`` path writes byte for byte what structlog's chain writes."""

from __future__ import annotations

import datetime
import io
import json
import math
import re
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fluxmon.config import LogFormat
from fluxmon.events import EXEC, MAIN, STATES, JobEvent
from fluxmon.logs import (
    HotRecords,
    LineWriter,
    LogOptions,
    LogSink,
    _json_record,
    job_event_fields,
    job_event_json,
    job_event_logfmt,
    make_logger,
    render_logfmt,
)
from fluxmon.tracker import Job

#: Text that needs escaping or quoting in logfmt or JSON, or is not UTF-8.
HOSTILE = st.sampled_from(
    ["", " ", "a b", 'q"x', "k=v", "back\\slash", "new\nline", "\t\r", "\ud800", "ünï", "ƒ", "\x00"]
)
TEXT = st.one_of(HOSTILE, st.text(max_size=12), st.just("x" * 3000 + " y\n"))
#: Keys that flatten_context keeps, rewrites, or rewrites onto each other.
KEYS = st.one_of(
    st.sampled_from(["status", "a-b", "a_b", "a.b", "x y", "ünï", "1st", "", "ts", "msg"]),
    st.text(max_size=6),
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    TEXT,
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
CONTEXTS = st.dictionaries(KEYS, VALUES, max_size=6)
#: No deadline: the machine running the tests may be busy.
SETTINGS = settings(
    deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


@st.composite
def jobs_and_events(draw: st.DrawFn) -> tuple[Job, JobEvent]:
    """A job whose fields (some of an unexpected type) and event are drawn."""
    jobid = draw(st.integers(min_value=0, max_value=2**64 - 1))
    job = Job(jobid, 1.0)
    job.userid = draw(st.one_of(st.none(), st.integers(min_value=-5, max_value=2**40)))
    job.queue = draw(TEXT)
    job.seq = draw(st.integers(min_value=0, max_value=10**6))
    job.state = draw(st.sampled_from(STATES))
    eventlog = draw(st.one_of(st.sampled_from([MAIN, EXEC]), TEXT))
    name = draw(TEXT)
    stamp: Any = draw(st.one_of(st.floats(allow_nan=False), st.integers(), st.none()))
    event = JobEvent(jobid, eventlog, name, stamp, draw(CONTEXTS))
    return job, event


def _chain_and_hot(fmt: LogFormat, job: Job, event: JobEvent) -> tuple[str, str]:
    """The record as the chain writes it (its ``ts`` replaced by the hot one's) and hot."""
    stream = io.StringIO()
    writer = LineWriter(stream)
    options = LogOptions(fmt, "info")
    LogSink(make_logger(writer, options=options)).job_event(job, event)
    chain = stream.getvalue()
    hot_records = HotRecords(writer, options, time_ns=lambda: 1_795_880_016_659_444_600)
    LogSink(make_logger(writer, options=options), hot=hot_records).job_event(job, event)
    hot = stream.getvalue()[len(chain) :]
    ts = "2026-11-28T15:33:36.659444Z"
    if fmt == "logfmt":
        assert hot.startswith(f"ts={ts} ")
        chain = re.sub(r"^ts=\S+ ", f"ts={ts} ", chain)
    else:
        assert chain.count('"ts": "') == 1
        chain = re.sub(r'"ts": "[^"]*"', f'"ts": "{ts}"', chain)
    return chain, hot


@settings(SETTINGS, max_examples=300)
@given(case=jobs_and_events(), fmt=st.sampled_from(["logfmt", "json"]))
def test_hot_records_equal_the_chains_for_hostile_jobs_and_contexts(
    case: tuple[Job, JobEvent], fmt: LogFormat
) -> None:
    """Escaping, unicode, rewritten keys, nesting, odd types, huge text: the same bytes."""
    job, event = case
    chain, hot = _chain_and_hot(fmt, job, event)
    assert hot == chain
    assert hot.endswith("\n")
    assert hot.count("\n") == 1


@SETTINGS
@given(case=jobs_and_events())
def test_job_event_logfmt_is_render_logfmt_of_its_fields(case: tuple[Job, JobEvent]) -> None:
    """The direct logfmt renderer equals the general one over the same fields."""
    job, event = case
    fields = {**job_event_fields(job, event), "level": "info", "ts": "T", "msg": "job.event"}
    assert job_event_logfmt("T", job, event) == render_logfmt(None, "info", fields)


def test_colliding_context_keys_keep_the_first_place_and_the_last_value() -> None:
    """Keys rewritten onto each other come out once, as flatten_context makes them."""
    job = Job(7, 1.0)
    event = JobEvent(7, MAIN, "alloc", 2.0, {"x_y": 1, "z": 2, "x y": 3, "x\ty": "a b"})
    line = job_event_logfmt("T", job, event)
    assert line.endswith(' state=NEW ctx_x_y="a b" ctx_z=2')


@SETTINGS
@given(ns=st.integers(min_value=0, max_value=2**62))
def test_timestamp_is_the_stampers_format(ns: int) -> None:
    """Each instant as structlog's iso UTC stamper writes it, ``.000000`` left out as it is."""
    hot = HotRecords(LineWriter(io.StringIO()), LogOptions(), time_ns=lambda: ns)
    instant = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC) + datetime.timedelta(
        microseconds=ns // 1000
    )
    assert hot.timestamp() == instant.isoformat().replace("+00:00", "Z")


def test_timestamp_follows_the_clock_across_seconds() -> None:
    """The cached second is renewed when the clock moves to another second (or back)."""
    now = [1_000_000_000_999_999_000]
    hot = HotRecords(LineWriter(io.StringIO()), LogOptions(), time_ns=lambda: now[0])
    stamps = []
    for ns in (1_000_000_000_999_999_000, 1_000_000_001_000_000_000, 1_000_000_000_000_001_000):
        now[0] = ns
        stamps.append(hot.timestamp())
    assert stamps == [
        "2001-09-09T01:46:40.999999Z",
        "2001-09-09T01:46:41Z",
        "2001-09-09T01:46:40.000001Z",
    ]


def test_hot_records_follow_a_format_change() -> None:
    """A reload from logfmt to JSON changes the very next hot record, as it does the chain's."""
    stream = io.StringIO()
    writer = LineWriter(stream)
    options = LogOptions("logfmt", "info")
    sink = LogSink(make_logger(writer, options=options), hot=HotRecords(writer, options))
    job = Job(1, 1.0)
    sink.job_event(job, JobEvent(1, MAIN, "submit", 1.0, {"userid": 5}))
    options.set("json", "info")
    sink.job_event(job, JobEvent(1, MAIN, "validate", 2.0, {}))
    options.set("json", "error")
    sink.job_event(job, JobEvent(1, MAIN, "depend", 3.0, {}))
    first, second = stream.getvalue().splitlines()
    assert first.startswith("ts=")
    assert " msg=job.event jobid=f2 id=1 " in first
    assert first.endswith(" ctx_userid=5")
    assert second.startswith('{"jobid": "f2", "id": 1, ')
    assert second.endswith('"msg": "job.event"}')


@SETTINGS
@given(case=jobs_and_events())
def test_job_event_json_is_the_json_renderers_record_or_none(case: tuple[Job, JobEvent]) -> None:
    """The direct JSON renderer equals the general one, or leaves the record to it."""
    job, event = case
    fields = {**job_event_fields(job, event), "level": "info", "ts": "T", "msg": "job.event"}
    line = job_event_json("T", job, event)
    if line is not None:
        assert line == _json_record(fields)


def test_job_event_json_leaves_what_json_cannot_hold_to_the_general_renderer() -> None:
    """NaN, infinities and integers too long for ``str`` are not rendered directly."""
    job = Job(3, 1.0)
    for value in (math.nan, -math.inf, 10**5000):
        assert job_event_json("T", job, JobEvent(3, MAIN, "x", 1.0, {"v": value})) is None
    plain = job_event_json("T", job, JobEvent(3, EXEC, "x", 1.0, {"v": [1, {"b": None}]}))
    assert plain is not None
    assert json.loads(plain)["ctx_v"] == '[1,{"b":null}]'
