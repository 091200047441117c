"""The hot ``job.event`` and ``job.finished`` records are byte for byte what the chain writes."""

from __future__ import annotations

import datetime
import io
import json
import math
import re
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fluxmon.config import LogFormat, LogLevel
from fluxmon.events import EXEC, MAIN, RESULTS, STATES, JobEvent
from fluxmon.logs import (
    JOB_FINISHED,
    HotRecords,
    LineWriter,
    LogOptions,
    LogSink,
    _json_record,
    job_event_fields,
    job_event_json,
    job_event_logfmt,
    job_finished_json,
    job_finished_logfmt,
    job_record,
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


#: Times as the tracker keeps them (and integers, as a JSON input could give).
TIMES = st.one_of(st.floats(min_value=0, max_value=2e9), st.floats(allow_nan=False), st.integers())
#: What a hostile or broken input could leave in a time: NaN, infinities, huge integers.
ODD_TIMES = st.one_of(
    TIMES, st.sampled_from([math.nan, math.inf, -math.inf]), st.floats(), st.just(10**5000)
)
#: Values of a type no field should have (each sends the JSON record to the renderer).
ODD = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.booleans(),
    st.floats(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.just(10**5000),
)
NODELISTS = st.one_of(
    st.sampled_from(["node[0-3,7]", "n1", "a b[1-2]", "\ud800[1]", "ƒ-[00]"]), TEXT
)


@st.composite
def finished_jobs(draw: st.DrawFn) -> Job:
    """A finished job whose every field is drawn: hostile text, absent fields, and in half
    the jobs values of odd types, NaN and infinite times and integers too long for ``str``."""
    odd = draw(st.booleans())

    def field(plain: st.SearchStrategy[Any]) -> Any:
        """A value of ``plain`` or None, or (odd jobs) now and then one of ODD."""
        if odd and draw(st.integers(0, 5)) == 0:
            return draw(ODD)
        return draw(st.one_of(st.none(), plain))

    def time(optional: bool = True) -> Any:
        """A time (None when ``optional``), odd ones in odd jobs."""
        value = draw(ODD_TIMES if odd and draw(st.integers(0, 5)) == 0 else TIMES)
        return None if optional and draw(st.booleans()) else value

    job = Job(draw(st.integers(min_value=0, max_value=2**64 - 1)), 0.0)
    job.userid = field(st.integers(min_value=-5, max_value=2**40))
    job.queue = draw(TEXT) if not odd else field(TEXT)
    job.result = field(st.sampled_from(RESULTS))
    job.returncode = field(st.integers(min_value=-128, max_value=255))
    job.status = field(st.integers(min_value=0, max_value=2**16))
    job.exc_type = field(st.one_of(st.sampled_from(["cancel", "timeout"]), TEXT))
    job.exc_severity = field(st.integers(min_value=0, max_value=7))
    job.exc_note = field(TEXT)
    job.t_submit, job.time_held, job.duration_limit = time(False), time(False), time(False)
    for key in ("t_depend", "t_priority", "t_sched", "t_alloc", "t_run", "t_start",
                "t_cleanup", "t_inactive"):  # fmt: skip
        setattr(job, key, time())
    for rank in range(len(STATES) - 1):
        value = time(False)
        job._time[rank] = value if type(value) is float else 0.5
    for key in ("ntasks", "nnodes", "ncores", "ngpus"):
        setattr(job, key, field(st.integers(min_value=0, max_value=2**70)))
    job.name = field(TEXT)
    job.nodelist = field(NODELISTS)
    job.bank = field(TEXT)
    job.project = field(TEXT)
    job.state = "INACTIVE"
    return job


def _finished(fmt: LogFormat, job: Job, *, hot: bool) -> str | type:
    """``job``'s ``job.finished`` through the chain or the hot path (or the error raised)."""
    stream = io.StringIO()
    writer = LineWriter(stream)
    options = LogOptions(fmt, "info")
    records = HotRecords(writer, options, time_ns=lambda: 1_795_880_016_659_444_600)
    sink = LogSink(make_logger(writer, options=options), hot=records if hot else None)
    try:
        sink.job_finished(job)
    except Exception as error:  # the chain raises too (a sink error, counted by the tracker)
        assert stream.getvalue() == ""
        return type(error)
    return stream.getvalue()


def _same_ts(line: str) -> str:
    """``line`` with its timestamp replaced by the fixed one the hot path is given."""
    ts = "2026-11-28T15:33:36.659444Z"
    line = re.sub(r"^ts=\S+ ", f"ts={ts} ", line)
    return re.sub(
        r'"ts": "[^"]*", "msg": "job.finished"}$', f'"ts": "{ts}", "msg": "job.finished"}}', line
    )


@settings(SETTINGS, max_examples=400)
@given(job=finished_jobs(), fmt=st.sampled_from(["logfmt", "json"]))
def test_hot_job_finished_equals_the_chains_for_hostile_jobs(job: Job, fmt: LogFormat) -> None:
    """Odd names, unicode, surrogates, huge and non-finite values, absent fields: the same bytes."""
    chain = _finished(fmt, job, hot=False)
    hot = _finished(fmt, job, hot=True)
    if isinstance(chain, str):
        assert isinstance(hot, str)
        assert hot.count("\n") == 1
        assert hot == _same_ts(chain)
    else:
        assert hot is chain


@SETTINGS
@given(job=finished_jobs())
def test_job_finished_logfmt_is_render_logfmt_of_job_record(job: Job) -> None:
    """The direct logfmt renderer equals the general one over job_record's fields."""
    try:
        fields = {**job_record(job), "level": "info", "ts": "T", "msg": "job.finished"}
        expected: str | type = render_logfmt(None, "info", fields)
    except (ValueError, OverflowError) as error:  # too long for str(), or for a float
        expected = type(error)
    try:
        got: str | type = job_finished_logfmt("T", job)
    except (ValueError, OverflowError) as error:
        got = type(error)
    assert got == expected


@SETTINGS
@given(job=finished_jobs())
def test_job_finished_json_is_the_json_renderers_record_or_none(job: Job) -> None:
    """The direct JSON renderer equals the general one, leaves the record to it, or both raise."""
    try:
        fields = {**job_record(job), "level": "info", "ts": "T", "msg": "job.finished"}
    except OverflowError:  # a time too large for a float: no record from either
        with pytest.raises(OverflowError):
            job_finished_json("T", job)
        return
    line = job_finished_json("T", job)
    if line is not None:
        assert line == _json_record(fields)
        assert json.loads(line)["msg"] == "job.finished"


def _typical_job() -> Job:
    """A job that ran and completed, every field of its record set."""
    job = Job(1234, 100.0)
    job.userid, job.queue, job.result, job.returncode, job.status = 500, "batch", "completed", 0, 0
    job.t_depend, job.t_priority, job.t_sched, job.t_alloc = 100.1, 100.2, 100.3, 101.5
    job.t_run, job.t_start, job.t_cleanup, job.t_inactive = 101.5, 101.7, 160.0, 160.5
    job.ntasks, job.nnodes, job.ncores, job.ngpus = 4, 2, 8, 0
    job.name, job.nodelist, job.project, job.duration_limit = "my job", "node[1-2]", "p1", 3600.0
    job.state = "INACTIVE"
    return job


def test_job_finished_with_a_project_and_no_bank_names_no_bank() -> None:
    """A project without a bank: the record has ``project`` and no ``bank`` key, in both formats."""
    job = _typical_job()
    logfmt = _finished("logfmt", job, hot=True)
    assert isinstance(logfmt, str)
    assert logfmt.endswith(' name="my job" nodelist=node[1-2] ncores=8 ngpus=0 project=p1\n')
    assert " bank=" not in logfmt
    text = _finished("json", job, hot=True)
    assert isinstance(text, str)
    record = json.loads(text)
    assert "bank" not in record
    assert list(record)[-6:] == ["ncores", "ngpus", "project", "level", "ts", "msg"]


def test_job_finished_json_leaves_nan_and_huge_integers_to_the_general_renderer() -> None:
    """NaN in a time or an integer too long for ``str``: no direct JSON, the renderer's record."""
    for key, value in (("t_run", math.nan), ("t_alloc", math.inf), ("returncode", 10**5000)):
        job = _typical_job()
        setattr(job, key, value)
        assert job_finished_json("T", job) is None
        line = _finished("json", job, hot=True)
        assert isinstance(line, str)
        assert line == _same_ts(cast(str, _finished("json", job, hot=False)))
    assert job_finished_json("T", _typical_job()) is not None


def test_hot_job_finished_follows_level_and_format_changes() -> None:
    """A reload changes the very next job.finished, level and format, as it does the chain's."""
    options = LogOptions("logfmt", "info")
    streams = [io.StringIO(), io.StringIO()]
    hot_writer, chain_writer = LineWriter(streams[0]), LineWriter(streams[1])
    hot = LogSink(make_logger(hot_writer, options=options), hot=HotRecords(hot_writer, options))
    chain = LogSink(make_logger(chain_writer, options=options))
    job = _typical_job()
    changes: list[tuple[LogFormat, LogLevel]] = [
        ("logfmt", "info"), ("json", "info"), ("json", "warning"),
        ("logfmt", "debug"), ("logfmt", "error"), ("json", "debug"),
    ]  # fmt: skip
    for fmt, level in changes:
        options.set(fmt, level)
        hot.job_finished(job)
        chain.job_finished(job)
    hot_lines, chain_lines = (stream.getvalue().splitlines() for stream in streams)
    assert [_same_ts(line) for line in hot_lines] == [_same_ts(line) for line in chain_lines]
    assert len(hot_lines) == 4
    assert hot_lines[0].startswith("ts=")
    assert " msg=job.finished jobid=" in hot_lines[0]
    assert hot_lines[1].startswith('{"jobid": ')
    assert hot_lines[1].endswith('"msg": "job.finished"}')
    assert hot_lines[2].startswith("ts=")
    assert hot_lines[3].startswith('{"jobid": ')


def test_hot_job_finished_is_marked_as_the_record_of_account() -> None:
    """The writer is told a hot job.finished is a job.finished (the last to be dropped)."""
    kinds: list[int] = []

    class Spy(LineWriter):
        def msg(self, message: str, kind: int = 0) -> None:
            kinds.append(kind)

    writer = Spy(io.StringIO())
    options = LogOptions("json", "info")
    LogSink(make_logger(writer, options=options), hot=HotRecords(writer, options)).job_finished(
        _typical_job()
    )
    assert kinds == [JOB_FINISHED]
