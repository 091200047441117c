"""Log records: logfmt and JSON, one per line, the contract's keys, hostile values contained."""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import math
import os
import re
import shlex
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from fluxmon.app import build
from fluxmon.config import LogFormat, LogLevel
from fluxmon.events import EMPTY_CONTEXT, MAIN, JobEvent
from fluxmon.logs import LineWriter, flatten_context, make_logger
from fluxmon.sources.replay import read_events
from fluxmon.testing import ev, lifecycle, parse_log
from tests.conftest import DATA, json_settings

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def logfmt(text: str) -> list[dict[str, str]]:
    """Parse logfmt lines (values may be double-quoted) into dicts of strings."""
    return [
        dict(part.partition("=")[::2] for part in shlex.split(line, posix=True))
        for line in text.splitlines()
    ]


def run(batch: list[JobEvent], /, **log: Any) -> str:
    base = json_settings()
    settings = dataclasses.replace(base, log=dataclasses.replace(base.log, **log))
    stream = io.StringIO()
    parts = build(settings, stream, clock=None)
    parts.pipeline.events(batch)
    return stream.getvalue()


def test_logfmt_is_the_default_and_one_record_per_line() -> None:
    """logfmt records start with ts, level, msg and each event gives one line."""
    events = lifecycle(6828326912, 10.0, exec_events=True)
    text = run(events, format="logfmt")
    lines = text.splitlines()
    assert len(lines) == len(events) + 1  # + job.finished
    for line in lines:
        assert re.match(r"^ts=\S+ level=info msg=job\.(event|finished) ", line), line
    records = logfmt(text)
    assert ISO_UTC.match(records[0]["ts"])
    first = records[0]
    assert (first["jobid"], first["id"], first["name"], first["state"]) == (
        "fBQPxhM",
        "6828326912",
        "submit",
        "NEW",
    )
    assert first["ctx_userid"] == "1000"
    assert records[-1]["msg"] == "job.finished"
    assert records[-1]["result"] == "completed"


def test_job_finished_is_a_record_of_account() -> None:
    """job.finished carries result, return code, timestamps, waits and state times."""
    (record,) = [
        r for r in parse_log(run(lifecycle(1, 10.0, status=3 << 8))) if r["msg"] == "job.finished"
    ]
    for key in (
        "jobid", "id", "userid", "queue", "result", "returncode", "exception_type",
        "exception_note", "t_submit", "t_alloc", "t_run", "t_cleanup", "t_inactive",
        "queue_wait", "runtime", "time_depend", "time_priority", "time_sched", "time_run",
        "time_cleanup", "ntasks", "nnodes", "duration_limit",
    ):  # fmt: skip
        assert key in record, key
    assert (record["result"], record["returncode"]) == ("failed", 3)


def test_events_none_keeps_only_finished() -> None:
    """log.events = none drops per-event records but keeps job.finished."""
    records = parse_log(run(lifecycle(1, 10.0), events="none"))
    assert [r["msg"] for r in records] == ["job.finished"]


def test_hostile_context_cannot_break_lines() -> None:
    """Newlines, quotes, '=' and odd keys in a context stay inside one logfmt record."""
    events = [
        ev(1, "submit", 1.0, userid=1, urgency=16),
        JobEvent(1, MAIN, "memo", 2.0, {"a b=c": 'x"\ny', "nested": {"k": [1, 2]}, "n\nl": "v"}),
    ]
    text = run(events, format="logfmt")
    lines = text.splitlines()
    assert len(lines) == 2
    memo = logfmt(text)[1]
    assert memo["ctx_a_b_c"] == 'x"\\ny'
    assert json.loads(memo["ctx_nested"]) == {"k": [1, 2]}
    assert "ctx_n_l" in memo


def test_rejections_are_warnings_with_the_input() -> None:
    """A refused event is logged at warning with its reason and the offending input."""
    records = parse_log(run([ev(77, "alloc", 5.0, junk=1)]))
    (record,) = records
    assert record["level"] == "warning"
    assert record["msg"] == "event.rejected"
    assert record["reason"] == "unknown_job"
    assert record["jobid"] == "f2L"  # 77 = 1*58 + 19
    assert json.loads(record["input"])["context"] == {"junk": 1}


def test_a_rejected_event_without_context_shows_an_empty_object() -> None:
    """The shared read-only empty context is logged as {} in a refusal's input."""
    records = parse_log(run([JobEvent(77, MAIN, "alloc", 5.0, EMPTY_CONTEXT)]))
    (record,) = records
    assert json.loads(record["input"])["context"] == {}


def test_the_shared_empty_context_cannot_be_changed() -> None:
    """EMPTY_CONTEXT is read-only: no consumer can leak keys into every context-less event."""
    with pytest.raises(TypeError):
        EMPTY_CONTEXT["leak"] = 1  # type: ignore[index]


@pytest.mark.parametrize(
    ("level", "kept"),
    [
        pytest.param("debug", ["debug", "info", "warning", "error"], id="debug"),
        pytest.param("info", ["info", "warning", "error"], id="info"),
        pytest.param("warning", ["warning", "error"], id="warning"),
        pytest.param("error", ["error"], id="error"),
    ],
)
def test_log_level_filters(level: LogLevel, kept: list[str]) -> None:
    """log.level keeps records at that level and above."""
    stream = io.StringIO()
    log = make_logger(stream, "json", level)
    for name in ("debug", "info", "warning", "error"):
        getattr(log, name)("probe")
    assert [r["level"] for r in parse_log(stream.getvalue())] == kept


@pytest.mark.parametrize(
    ("context", "flat"),
    [
        pytest.param({"status": 0}, {"ctx_status": 0}, id="scalar"),
        pytest.param({"ranks": [0, 1]}, {"ctx_ranks": "[0,1]"}, id="list-as-json"),
        pytest.param({"x y": None}, {"ctx_x_y": None}, id="unsafe-key"),
        pytest.param({"nan": float("nan")}, {"ctx_nan": float("nan")}, id="nan"),
    ],
)
def test_flatten_context(context: dict[str, object], flat: dict[str, object]) -> None:
    """Context keys become ctx_<key>; non-scalars become compact JSON."""
    got = flatten_context(context)
    assert got.keys() == flat.keys()
    for key, value in flat.items():
        assert got[key] == value or (math.isnan(value) and math.isnan(got[key]))  # type: ignore[arg-type]


def test_journal_logs_one_finished_record_per_job() -> None:
    """Replaying the journal yields exactly one job.finished per job, greppable by jobid."""
    lines = (DATA / "journal.replay.jsonl").read_bytes().splitlines()
    events = [e for _, e in read_events(lines) if isinstance(e, JobEvent)]
    text = run(events, format="logfmt")
    finished = [r for r in logfmt(text) if r["msg"] == "job.finished"]
    assert len({r["jobid"] for r in finished}) == len(finished) == 20


def test_blocked_log_stream_does_not_block_scrapes() -> None:
    """While the log stream blocks, a scrape still reads the tracker (records wait, not it)."""
    gate = threading.Event()

    class BlockedStream(io.StringIO):
        def write(self, text: str) -> int:
            gate.wait(30)
            return super().write(text)

    stream = BlockedStream()
    parts = build(json_settings(), stream, clock=None)
    writer = threading.Thread(target=parts.pipeline.events, args=(lifecycle(1, 10.0)[:4],))
    writer.start()
    try:
        get = parts.registry.get_sample_value
        assert get("flux_jobs", {"queue": "default", "state": "SCHED"}) == 1
    finally:
        gate.set()
        writer.join()
    assert len(parse_log(stream.getvalue())) == 4


def test_records_from_many_threads_are_all_written(tmp_path: Path) -> None:
    """Threads logging while the writer swaps batches lose no record (a race once lost ~1/10^4)."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: widen any race
    try:
        for trial in range(3):
            path = tmp_path / f"log-{trial}"
            with path.open("w") as stream:
                writer = LineWriter(stream, capacity=10**7)
                writer.start()
                threads = [
                    threading.Thread(
                        target=lambda t=t, w=writer: [w.msg(f"{t} {i}") for i in range(20000)]
                    )
                    for t in range(4)
                ]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                assert writer.close()
            lines = path.read_text().splitlines()
            assert len(lines) == 80000
            assert len(set(lines)) == 80000
    finally:
        sys.setswitchinterval(interval)


def test_after_written_runs_once_the_records_before_it_are_out() -> None:
    """A mark's callback runs after the records handed over before it are written, never sooner."""
    read_fd, write_fd = os.pipe()
    stream = os.fdopen(write_fd, "w")
    writer = LineWriter(stream, capacity=100)
    writer.start()
    seen: list[str] = []
    done = threading.Event()
    try:
        writer.msg("first")
        writer.msg("second")

        def mark() -> None:
            seen.append("mark")
            done.set()

        writer.after_written(mark)
        assert done.wait(10)
        out = os.read(read_fd, 1000).decode()
        assert out == "first\nsecond\n"  # written before the mark ran; the mark writes nothing
        assert seen == ["mark"]
    finally:
        writer.close()
        stream.close()
        os.close(read_fd)


def test_after_written_keeps_only_the_newest_of_marks_due_together() -> None:
    """Marks due in one written batch run once, the newest; none runs after a failed write."""
    gate, entered = threading.Event(), threading.Event()

    class Slow(io.StringIO):
        def write(self, text: str) -> int:
            entered.set()
            gate.wait(10)
            return super().write(text)

    writer = LineWriter(Slow(), capacity=100)
    writer.start()
    ran: list[int] = []
    writer.msg("a")
    assert entered.wait(10)  # the writer thread is blocked writing "a" alone
    for n in range(5):
        writer.msg(f"b{n}")
        writer.after_written(functools.partial(ran.append, n))
    gate.set()
    writer.close()
    assert ran == [4]

    class Broken(io.StringIO):
        def write(self, text: str) -> int:
            raise OSError(32, "Broken pipe")

    broken = LineWriter(Broken(), capacity=100)
    broken.start()
    broken.msg("lost")
    broken.after_written(lambda: ran.append(99))
    broken.close()
    assert ran == [4]


@pytest.mark.parametrize("fmt", ["logfmt", "json"])
def test_hot_job_event_records_equal_the_structlog_chains(fmt: LogFormat) -> None:
    """The hot path writes what ``log.info("job.event", ...)`` through the chain writes."""
    import re

    from fluxmon.logs import HotRecords, LogOptions, LogSink
    from fluxmon.testing import ev
    from fluxmon.tracker import Tracker

    def run(hot: bool) -> str:
        stream = io.StringIO()
        writer = LineWriter(stream)
        options = LogOptions(fmt, "info")
        log = make_logger(writer, options=options)
        sink = LogSink(log, hot=HotRecords(writer, options) if hot else None)
        tracker = Tracker([sink])
        spec = {"attributes": {"system": {"queue": 'q "x"'}}}
        tracker.apply(ev(1, "submit", 10.0, jobspec=spec, userid=5, urgency=16))
        context = {"annotations": {"sched": {"a": [1, 2]}}, "k-y": "v\n"}
        tracker.apply(JobEvent(1, MAIN, "alloc", 11.0, context))
        tracker.apply(ev(1, "exception", 12.0, type="custom", severity=1, note="ünï \ud800"))
        options.set(fmt, "warning")  # a reload: info records are dropped from now on
        tracker.apply(ev(1, "start", 13.0))
        return re.sub(r'(?<![\w])ts(=\S+|": "[^"]*")', "ts", stream.getvalue())

    hot, chain = run(True), run(False)
    assert hot == chain
    assert hot.count("job.event") == 3
