"""Structured logs: one record per line, logfmt (default) or JSON.

:func:`make_logger` builds a private structlog logger writing to a stream passed in
(no global configuration); :class:`LogSink` turns the tracker's calls into the
contract's records: ``job.event``, ``job.finished`` and ``event.rejected``.
"""

from __future__ import annotations

import collections
import datetime
import errno
import io
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from typing import Any, Final, TextIO, cast

import structlog
from structlog.typing import FilteringBoundLogger

from fluxmon.config import LogFormat, LogLevel, LogOnFull
from fluxmon.events import (
    EVENTLOG_LABEL,
    MAX_JOBID,
    STATES,
    JobEvent,
    ResourceEvent,
    f58,
    shown,
)
from fluxmon.hostlist import encode_hostlist, encode_idset
from fluxmon.resources import Node
from fluxmon.tracker import Job, NullSink

_KEY_UNSAFE: Final = re.compile(r"[^A-Za-z0-9_.\-]")
_TIME_KEYS: Final = ("t_submit", "t_depend", "t_priority", "t_sched", "t_alloc", "t_run",
                     "t_start", "t_cleanup", "t_inactive")  # fmt: skip
#: Most characters of an offending input kept in an ``event.rejected`` record.
MAX_INPUT_CHARS: Final = 2000


_needs_quotes: Final = re.compile(r'[\s="\\]').search
_FIRST: Final = ("ts", "level", "msg")


def _quoted(text: str) -> str:
    text = text.replace("\\", "\\\\").replace('"', '\\"')
    text = text.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return f'"{text}"'


def _logfmt_value(value: object) -> str:
    """One logfmt value, quoted (and escaped) only when it must be."""
    if isinstance(value, str):
        return value if _needs_quotes(value) is None else _quoted(value)
    kind = type(value)
    if kind is float or kind is int:
        return str(value)
    if value is None:
        return ""
    if kind is bool:
        return "true" if value else "false"
    text = _text(value)
    return text if _needs_quotes(text) is None else _quoted(text)


def _text(value: object) -> str:
    """``str(value)``, or a stand-in when even that raises (a hostile or broken object)."""
    try:
        return str(value)
    except Exception:
        return shown(value)


def render_logfmt(_logger: object, _name: str, event_dict: MutableMapping[str, Any]) -> str:
    """Render ``ts level msg`` then the other keys in call order, one line.

    A lean stand-in for structlog's LogfmtRenderer, which dominated the cost of a
    ``job.event`` record; keys are fluxmon's own or made safe by :func:`flatten_context`.
    """
    fmt = _logfmt_value
    head = [f"{key}={fmt(event_dict.pop(key))}" for key in _FIRST if key in event_dict]
    head.extend([f"{key}={fmt(value)}" for key, value in event_dict.items()])
    return " ".join(head)


#: ``reason`` values of ``fluxmon_log_records_dropped_total``.
DROP_REASONS: Final = ("full", "reserve")
#: The kinds of record the writer tells apart: ``job.event`` (dropped first),
#: ``job.finished`` (the record of account) and every other record.
JOB_EVENT: Final = 0
JOB_FINISHED: Final = 1
OTHER_RECORD: Final = 2
#: Not a record: a place in the buffer whose callback runs once everything before it is
#: written (:meth:`LineWriter.after_written`); never dropped, never written.
_MARK: Final = 3
_KIND_NAMES: Final = ("job_event", "job_finished", "other")

_Entry = tuple[str, int]
#: Seconds the writer thread gathers records after a write before it writes again.
GATHER_SECONDS: Final = 0.01


def _describe(stream: object, error: BaseException) -> str:
    """``cannot write log records to <stdout>: Broken pipe (EPIPE)``."""
    name = getattr(stream, "name", None)
    where = name if isinstance(name, str) else type(stream).__name__
    if isinstance(error, OSError) and error.errno is not None:
        code = errno.errorcode.get(error.errno, str(error.errno))
        return f"cannot write log records to {where}: {error.strerror or error} ({code})"
    return f"cannot write log records to {where}: {error}"


class LineWriter:
    """The structlog logger at the end of the chain: one rendered record per line.

    Until :meth:`start`, records are written by the thread that logs them (``replay``,
    tests). Once started, a writer thread owns the stream: every thread only appends to
    a bounded buffer of ``capacity`` records, so a stream that cannot keep up (a pipe
    nobody reads, journald under pressure) never blocks applying events or serving
    scrapes. When the buffer is full, ``on_full`` decides:

    * ``"drop"``: the record is dropped and counted (``on_drop(reason)``). ``job.event``
      records get only the first nine tenths of the buffer (dropped: reason ``reserve``);
      the last tenth is kept for ``job.finished`` and every other record (dropped once
      the buffer is full: reason ``full``). When the buffer has drained below half,
      ``on_recovered`` is called once with how many records of each kind were dropped.
    * ``"block"``: the pipeline's batches (:meth:`hold` ... :meth:`release`) wait for
      room; records from other threads (HTTP, the health loop) are still dropped rather
      than waited on.

    :meth:`hold` keeps the calling thread's records in memory until :meth:`release`
    (the pipeline holds them while it owns the tracker lock); it is per thread, so a
    record logged by another thread meanwhile goes straight to the buffer.
    A write that fails (EPIPE, ENOSPC, a closed stream) ends the writer: :attr:`failure`
    says why, ``on_failure`` is called once, and later records are discarded.

    The writer thread is woken by the first record handed over while it sleeps; after
    each write it gathers records for ``gather`` seconds (or until a tenth of the buffer
    is used, or it is closed) and nothing wakes it meanwhile. Records arriving one at a
    time (a live source) are written a few at a time, not one wake-up and one write each.
    """

    def __init__(
        self,
        stream: TextIO | None,
        *,
        capacity: int = 10000,
        on_full: LogOnFull = "drop",
        on_drop: Callable[[str], None] | None = None,
        gather: float = GATHER_SECONDS,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, not {capacity}")
        # None: never written to, the failure below says why.
        self._stream: TextIO = stream if stream is not None else io.StringIO()
        self.capacity = capacity
        #: Most records in the buffer when a job.event is accepted.
        self._event_room = capacity - max(1, capacity // 10) if capacity > 1 else 1
        self._gather = gather
        #: Records in the buffer at which a gathering writer is woken anyway.
        self._wake_at = max(1, capacity // 10)
        #: The writer waits for a first record (a hand-over must wake it).
        self._asleep = False
        self.on_full: LogOnFull = on_full
        self._on_drop = on_drop
        #: Called (from the writer thread) with the dropped counts by kind, on recovery.
        self.on_recovered: Callable[[Mapping[str, int]], None] | None = None
        self._local = threading.local()
        self._io_lock = threading.Lock()  # synchronous writes, before start()
        #: The condition's lock, taken directly where nothing waits (cheaper than the condition).
        self._mutex = threading.Lock()
        self._cond = threading.Condition(self._mutex)
        self._queue: list[_Entry] = []
        #: Callbacks of the marks in the buffer, in buffer order.
        self._marks: collections.deque[Callable[[], None]] = collections.deque()
        self._unreported = [0, 0, 0]
        self._thread: threading.Thread | None = None
        self._on_failure: Callable[[str], None] | None = None
        self._fd: int | None = None
        self._closing = False
        self._no_wait = False
        #: Why the stream cannot be written (None while it can).
        self.failure: str | None = None
        if stream is None:  # Python's sys.stdout when fd 1 was closed at start
            self.failure = "cannot write log records to stdout: it was closed when fluxmon started"

    # -- the logger interface -----------------------------------------------------------

    def msg(self, message: str, kind: int = JOB_EVENT) -> None:
        """Write one record (``kind``: :data:`JOB_EVENT`, ``JOB_FINISHED`` or ``OTHER_RECORD``)."""
        held: list[_Entry] | None = getattr(self._local, "held", None)
        if held is not None:
            held.append((message, kind))
            return
        self._put([(message, kind)], wait=False)

    log = debug = info = warn = warning = error = critical = exception = fatal = msg

    def hold(self) -> None:
        """Keep this thread's records in memory until :meth:`release`."""
        if getattr(self._local, "held", None) is None:
            self._local.held = []

    def release(self) -> None:
        """Hand this thread's kept records over, in order (waiting for room if ``block``)."""
        held: list[_Entry] | None = getattr(self._local, "held", None)
        self._local.held = None
        if held:
            self._put(held, wait=self.on_full == "block")

    def after_written(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once every record handed over so far is written to the stream.

        It runs on the writer thread, after the write of the batch holding the last of
        those records and before the next batch is written; when several are due at once
        only the newest runs (they are meant to record progress: the newest says it all).
        Before :meth:`start` it runs at once; once the stream has failed, never. Records
        this thread still holds (:meth:`hold`) are not "handed over": call it after
        :meth:`release`.
        """
        if self._thread is None:
            with self._io_lock:
                if self.failure is None:
                    callback()
            return
        with self._cond:
            if self.failure is not None:
                return
            queue = self._queue
            if queue and queue[-1][1] == _MARK:  # nothing since the last mark: replace it
                self._marks[-1] = callback
            else:
                queue.append(("", _MARK))
                self._marks.append(callback)
            if self._asleep:
                self._cond.notify()

    # -- the buffer -----------------------------------------------------------------------

    def _put(self, entries: list[_Entry], *, wait: bool) -> None:
        if self._thread is None or self.failure is not None:
            self._write_now(entries)
            return
        cond = self._cond
        with self._mutex:
            if self.failure is not None:
                return
            # Read under the lock: the writer swaps in a new list each time it takes a
            # batch, and records added to a batch already taken were never written.
            queue = self._queue
            if len(queue) + len(entries) <= self._event_room:  # the common case: room
                queue.extend(entries)
            elif wait:
                self._wait_for_room(entries)
            else:
                self._admit(entries)
            if self._asleep or len(self._queue) >= self._wake_at:
                cond.notify()

    def _admit(self, entries: list[_Entry]) -> None:
        """Append what the drop policy lets in; count the rest (the lock is held)."""
        queue, capacity, event_room = self._queue, self.capacity, self._event_room
        for entry in entries:
            size = len(queue)
            if size < event_room or (size < capacity and entry[1] != JOB_EVENT):
                queue.append(entry)
                continue
            reason = "reserve" if entry[1] == JOB_EVENT else "full"
            self._unreported[entry[1]] += 1
            if self._on_drop is not None:
                self._on_drop(reason)

    def _wait_for_room(self, entries: list[_Entry]) -> None:
        """Append every entry, waiting for the writer to make room (the lock is held)."""
        cond = self._cond
        start = 0
        while start < len(entries):
            queue = self._queue  # the writer swaps in a new list each time it takes a batch
            room = self.capacity - len(queue)
            if room > 0:
                queue.extend(entries[start : start + room])
                start += room
                cond.notify()
                continue
            if self.failure is not None or self._no_wait:
                self._admit(entries[start:])
                return
            cond.wait(0.5)

    def _write_now(self, entries: list[_Entry]) -> None:
        """Write records from the calling thread (before :meth:`start`)."""
        with self._io_lock:
            if self.failure is not None:
                return
            try:
                self._stream.write(self._encodable("\n".join([line for line, _ in entries]) + "\n"))
                self._stream.flush()
            except (OSError, ValueError) as error:  # later records are discarded
                self.failure = _describe(self._stream, error)

    def _encodable(self, text: str) -> str:
        r"""``text`` with what the stream's encoding cannot write escaped (``\udc80``)."""
        if text.isascii():
            return text
        encoding = getattr(self._stream, "encoding", None) or "utf-8"
        try:
            return text.encode(encoding, "backslashreplace").decode(encoding)
        except LookupError:  # an encoding name Python does not know: keep the text
            return text

    # -- the writer thread ------------------------------------------------------------------

    def start(self, on_failure: Callable[[str], None] | None = None) -> None:
        """Start the writer thread; ``on_failure(why)`` is called once if the stream fails."""
        if self._thread is not None:
            return
        self._on_failure = on_failure
        if self.failure is not None:
            if on_failure is not None:
                on_failure(self.failure)
            return
        try:
            self._stream.flush()
            fd = self._stream.fileno()
        except (OSError, ValueError, AttributeError):
            fd = None  # not a file (StringIO, a wrapper): written through its write()
        self._fd = fd
        self._thread = threading.Thread(target=self._run, name="fluxmon-log-writer", daemon=True)
        self._thread.start()

    def _write(self, text: str) -> None:
        fd = self._fd
        if fd is None:
            self._stream.write(self._encodable(text))
            self._stream.flush()
            return
        # Straight to the file descriptor: a write blocked in the kernel holds no Python
        # lock, so shutdown never waits on the stream's buffer.
        view = memoryview(text.encode("utf-8", "backslashreplace"))
        while view:
            view = view[os.write(fd, view) :]

    def _run(self) -> None:
        cond = self._cond
        while True:
            with cond:
                while not self._queue and not self._closing:
                    self._asleep = True
                    cond.wait()
                self._asleep = False
                if not self._queue:
                    return
                batch, self._queue = self._queue, []
                cond.notify_all()  # room for a waiting pipeline
                due: Callable[[], None] | None = None
                for _, kind in batch:
                    if kind == _MARK:
                        due = self._marks.popleft()
            lines = [line for line, kind in batch if kind != _MARK]
            try:
                if lines:
                    self._write("\n".join(lines) + "\n")
            except (OSError, ValueError) as error:
                self._fail(error)
                return
            if due is not None:
                due()
            self._report_recovery()
            with cond:  # gather: only a filling buffer, a waiting pipeline or close() wakes it
                if self._gather > 0 and not self._closing and len(self._queue) < self._wake_at:
                    cond.wait(self._gather)

    def _fail(self, error: BaseException) -> None:
        why = _describe(self._stream, error)
        with self._cond:
            self.failure = why
            self._queue = []
            self._marks.clear()
            self._cond.notify_all()
        if self._on_failure is not None:
            self._on_failure(why)

    def _report_recovery(self, *, force: bool = False) -> None:
        """Once the buffer is below half full again, say how many records were dropped."""
        with self._cond:
            if not any(self._unreported):
                return
            if not force and len(self._queue) * 2 > self.capacity:
                return
            counts = dict(zip(_KIND_NAMES, self._unreported, strict=True))
            self._unreported = [0, 0, 0]
        if self.on_recovered is not None:
            self.on_recovered(counts)

    def stop_blocking(self) -> None:
        """From now on nothing waits for room (the daemon is stopping): full means dropped."""
        with self._cond:
            self._no_wait = True
            self._cond.notify_all()

    def close(self, timeout: float = 5.0) -> bool:
        """Write what is buffered (for at most ``timeout`` seconds) and stop the thread.

        Returns whether everything was written; records still buffered after the
        timeout (the stream is blocked) are given up. Before :meth:`start`, a no-op.
        """
        thread = self._thread
        if thread is None:
            return self.failure is None
        self._report_recovery(force=True)
        with self._cond:
            self._closing = self._no_wait = True
            self._cond.notify_all()
        thread.join(timeout)
        return not thread.is_alive() and self.failure is None

    @property
    def pending(self) -> int:
        """Records in the buffer, not yet handed to the stream."""
        with self._cond:
            return len(self._queue)


def _classified(renderer: Callable[..., Any]) -> structlog.typing.Processor:
    """The renderer, also telling :class:`LineWriter` which kind of record each line is.

    A ``job.event`` line goes on as a plain string (the hot path); any other comes as
    ``((line,), {"kind": ...})``, so the writer drops ``job.event`` records first.
    """

    def render(
        logger: object, name: str, event_dict: MutableMapping[str, Any]
    ) -> str | bytes | tuple[Any, ...]:
        msg = event_dict.get("msg")
        line: str | bytes = renderer(logger, name, event_dict)
        if msg == "job.event":
            return line
        return (line,), {"kind": JOB_FINISHED if msg == "job.finished" else OTHER_RECORD}

    return render


#: The level of each logger method (``exception`` logs at error).
_LEVELS: Final = {
    **{name.lower(): number for name, number in logging.getLevelNamesMapping().items()},
    "exception": logging.ERROR,
}


def _json_record(event_dict: Mapping[str, Any], **_: object) -> str:
    r"""One JSON record; never raises: a value JSON cannot hold is written as text.

    Strings that are not UTF-8 (a lone surrogate) come out as ``\ud800`` escapes
    (``ensure_ascii``), unknown objects as their ``str``, and a value that still fails
    (nesting past the recursion limit, NaN, a cycle) as a short ``repr``.
    """
    try:
        return json.dumps(event_dict, default=_json_default, allow_nan=False)
    except Exception:  # rare: rebuild the record value by value
        safe: dict[str, object] = {}
        for key, value in event_dict.items():
            try:
                json.dumps(value, default=_json_default, allow_nan=False)
                safe[_text(key)] = value
            except Exception:
                safe[_text(key)] = shown(value)
        return json.dumps(safe, default=_json_default, allow_nan=False)


def _renderer(fmt: LogFormat) -> structlog.typing.Processor:
    if fmt == "json":
        return structlog.processors.JSONRenderer(serializer=_json_record)
    return render_logfmt


class LogOptions:
    """A logger's level and format, which a reload (SIGHUP) changes while records flow.

    Both live in one tuple replaced by one store, so a record written during a change
    is filtered and rendered wholly by the old options or wholly by the new ones.
    """

    _now: tuple[int, structlog.typing.Processor]

    def __init__(self, fmt: LogFormat = "logfmt", level: LogLevel = "info") -> None:
        self.set(fmt, level)

    def set(self, fmt: LogFormat, level: LogLevel) -> None:
        """Use ``fmt`` and ``level`` from the next record on."""
        self._now = (_LEVELS[level], _renderer(fmt))

    def drop_below_level(
        self, _logger: object, method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        """The first processor: drop a record below the level."""
        if _LEVELS.get(method, logging.CRITICAL) < self._now[0]:
            raise structlog.DropEvent
        return event_dict

    def render(self, logger: object, method: str, event_dict: MutableMapping[str, Any]) -> Any:
        """The last processor: render in the format."""
        return self._now[1](logger, method, event_dict)

    @property
    def now(self) -> tuple[int, structlog.typing.Processor]:
        """The level (a number) and the renderer in force, read together."""
        return self._now


#: The record timestamp every logger adds (``ts``: ISO 8601, UTC).
_STAMPER: Final = structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts")
_UTC: Final = datetime.UTC
#: ``job.event`` values written as they are: states, and eventlogs by their label.
_SAFE_STATES: Final = frozenset(STATES)
_EVENTLOG_TEXT: Final = {key: _logfmt_value(label) for key, label in EVENTLOG_LABEL.items()}
_JSON_EVENTLOG: Final = {key: json.dumps(label) for key, label in EVENTLOG_LABEL.items()}


class HotRecords:
    """Writes ``job.event`` and ``job.finished`` records without structlog's processor chain.

    A record comes out byte for byte as ``log.info("job.event", **job_event_fields(...))``
    through :func:`make_logger`'s chain would write it (fields, ``level``, ``ts``, ``msg``,
    in that order, filtered and rendered by the same :class:`LogOptions`); at one record
    per event, the chain's generic steps were a tenth of fluxmon's CPU. The record is
    rendered straight from the job and the event (:func:`job_event_logfmt`,
    :func:`job_event_json`; the renderer itself only for what JSON cannot hold as it is),
    and the timestamp (the stamper's format, from ``time_ns``) from a per-second prefix.
    ``job.finished`` likewise (:func:`job_finished_logfmt`, :func:`job_finished_json`):
    through the chain it cost about 70 us per job, even with per-event records off.
    """

    __slots__ = ("_options", "_second", "_time_ns", "_writer")

    def __init__(
        self, writer: LineWriter, options: LogOptions, *, time_ns: Callable[[], int] = time.time_ns
    ) -> None:
        self._writer = writer
        self._options = options
        self._time_ns = time_ns
        #: The last second stamped and its ``YYYY-MM-DDTHH:MM:SS`` (one tuple: one store).
        self._second: tuple[int, str] = (-1, "")

    def timestamp(self) -> str:
        """Now as the stamper writes it: ``2026-12-04T10:08:37.013293Z`` (at 0 us: ``...37Z``)."""
        seconds, micros = divmod(self._time_ns() // 1000, 1_000_000)
        second, prefix = self._second
        if seconds != second:
            prefix = datetime.datetime.fromtimestamp(seconds, _UTC).isoformat()[:19]
            self._second = (seconds, prefix)
        return f"{prefix}.{micros:06d}Z" if micros else prefix + "Z"

    def job_event(self, job: Job, event: JobEvent) -> None:
        """Write the ``job.event`` record of ``event`` applied to ``job``."""
        level, render = self._options.now
        if level > logging.INFO:
            return
        if render is render_logfmt:
            self._writer.msg(job_event_logfmt(self.timestamp(), job, event))
            return
        ts = self.timestamp()
        line = job_event_json(ts, job, event)
        if line is None:
            line = _rendered(render, job_event_fields(job, event), ts, "job.event")
        self._writer.msg(line)

    def job_finished(self, job: Job) -> None:
        """Write the ``job.finished`` record of ``job`` (as the chain writes :func:`job_record`)."""
        level, render = self._options.now
        if level > logging.INFO:
            return
        ts = self.timestamp()
        if render is render_logfmt:
            line: str | None = job_finished_logfmt(ts, job)
        else:
            line = job_finished_json(ts, job)
        if line is None:
            line = _rendered(render, job_record(job), ts, "job.finished")
        self._writer.msg(line, JOB_FINISHED)


def _rendered(
    render: structlog.typing.Processor, fields: dict[str, object], ts: str, msg: str
) -> str:
    """A record the direct renderers leave to ``render``: its fields, then level, ts, msg."""
    fields["level"] = "info"
    fields["ts"] = ts
    fields["msg"] = msg
    return cast(str, render(None, "info", fields))  # both renderers: str


#: The keys of a ``job.finished`` record after ``jobid``, in :func:`job_record`'s order
#: (``bank`` and ``project`` follow when the job has them).
_FINISHED_KEYS: Final = (
    "id", "userid", "queue", "result", "returncode", "waitstatus", "exception_type",
    "exception_severity", "exception_note", *_TIME_KEYS, "queue_wait", "runtime",
    *["time_" + state.lower() for state in STATES[:-1]], "held_time", "ntasks", "nnodes",
    "duration_limit", "name", "nodelist", "ncores", "ngpus",
)  # fmt: skip
_FINISHED_RECORD_KEYS: Final = (*_FINISHED_KEYS, "bank", "project")
_FINISHED_LOGFMT: Final = tuple(f" {key}=" for key in _FINISHED_RECORD_KEYS)
_FINISHED_JSON: Final = tuple(f", {json.dumps(key)}: " for key in _FINISHED_RECORD_KEYS)


def _finished_values(job: Job) -> list[object]:
    """The values of ``job``'s ``job.finished`` record after ``jobid`` (see ``_FINISHED_KEYS``)."""
    values: list[object] = [
        job.jobid, job.userid, job.queue, job.result, job.returncode, job.status, job.exc_type,
        job.exc_severity, job.exc_note, job.t_submit, job.t_depend, job.t_priority, job.t_sched,
        job.t_alloc, job.t_run, job.t_start, job.t_cleanup, job.t_inactive, job.queue_wait,
        job.runtime, *job.time_in.values(), job.time_held, job.ntasks, job.nnodes,
        job.duration_limit, job.name, job.nodelist, job.ncores, job.ngpus,
    ]  # fmt: skip
    if job.bank is not None:
        values.append(job.bank)
    if job.project is not None:
        if job.bank is None:
            values.append(_NO_BANK)
        values.append(job.project)
    return values


#: Stands for an absent ``bank`` before a ``project`` (its key is skipped).
_NO_BANK: Final = object()


def job_finished_logfmt(ts: str, job: Job) -> str:
    """A logfmt ``job.finished`` record stamped ``ts``: :func:`render_logfmt` of its fields."""
    needs_quotes = _needs_quotes
    parts = [f"ts={ts} level=info msg=job.finished jobid={job.f58}"]  # f58: always safe
    for head, value in zip(_FINISHED_LOGFMT, _finished_values(job), strict=False):
        kind = type(value)
        if value is None:
            parts.append(head)
        elif kind is float or kind is int:
            parts.append(head + str(value))
        elif kind is str:
            text = cast(str, value)
            parts.append(head + (text if needs_quotes(text) is None else _quoted(text)))
        elif value is not _NO_BANK:
            parts.append(head + _logfmt_value(value))
    return "".join(parts)


def job_finished_json(ts: str, job: Job) -> str | None:
    """A JSON ``job.finished`` record stamped ``ts``, as the JSON renderer writes it.

    None when a value is not a plain finite scalar (the renderer's fallback decides then).
    """
    scalar, isfinite = _json_scalar, math.isfinite
    parts = [f'{{"jobid": "{job.f58}"']
    try:
        for head, value in zip(_FINISHED_JSON, _finished_values(job), strict=False):
            kind = type(value)
            if kind is float:  # the times: most of the values
                if not isfinite(cast(float, value)):
                    return None
                parts.append(head + float.__repr__(cast(float, value)))
                continue
            if value is None:
                parts.append(head + "null")
                continue
            if value is _NO_BANK:
                continue
            text = scalar(value)
            if text is None:
                return None
            parts.append(head + text)
    except ValueError:  # an integer too long for str()
        return None
    parts.append(f', "level": "info", "ts": "{ts}", "msg": "job.finished"}}')
    return "".join(parts)


def job_event_fields(job: Job, event: JobEvent) -> dict[str, object]:
    """The fields of a ``job.event`` record, in record order (``ts level msg`` aside)."""
    fields: dict[str, object] = {
        "jobid": job.f58,
        "id": job.jobid,
        "userid": job.userid,
        "queue": job.queue,
        "eventlog": EVENTLOG_LABEL.get(event.eventlog, event.eventlog),
        "seq": job.seq,
        "name": event.name,
        "event_ts": event.timestamp,
        "state": job.state,
    }
    if event.context:
        fields.update(flatten_context(event.context))
    return fields


_json_text: Final[Callable[[str], str]] = json.encoder.encode_basestring_ascii
_JSON_CONSTANTS: Final[Mapping[object, str]] = {None: "null", True: "true", False: "false"}


def _json_scalar(value: object) -> str | None:
    """``value`` as ``json.dumps`` writes it (None: not a plain, finite scalar)."""
    kind = type(value)
    if kind is str:
        return _json_text(cast(str, value))
    if kind is int:
        return int.__repr__(cast(int, value))  # ValueError past 4300 digits: the caller's
    if kind is float:
        number = cast(float, value)
        return float.__repr__(number) if math.isfinite(number) else None
    if value is None or kind is bool:
        return _JSON_CONSTANTS[value]
    return None


def job_event_json(ts: str, job: Job, event: JobEvent) -> str | None:
    """A JSON ``job.event`` record stamped ``ts``, as the JSON renderer writes its fields.

    None when a value is not a plain finite scalar (the renderer's fallback decides then).
    """
    scalar = _json_scalar
    try:
        state, label = job.state, _JSON_EVENTLOG.get(event.eventlog)
        values = (
            scalar(job.jobid),
            scalar(job.userid),
            scalar(job.queue),
            label if label is not None else scalar(event.eventlog),
            scalar(job.seq),
            scalar(event.name),
            scalar(event.timestamp),
            f'"{state}"' if state in _SAFE_STATES else scalar(state),
        )
        if None in values:
            return None
        parts = [
            '{{"jobid": "{}", "id": {}, "userid": {}, "queue": {}, "eventlog": {}, "seq": {}, '
            '"name": {}, "event_ts": {}, "state": {}'.format(job.f58, *values)
        ]
        context = event.context
        if context:
            items: Iterable[tuple[object, object]] = context.items()
            if not all(type(key) is str and key.isidentifier() for key in context):
                items = flatten_context(context).items()  # rewritten keys may collide
                prefix = ""
            else:
                prefix = "ctx_"
            for key, value in items:
                kind = type(value)
                if kind is str:
                    text: str | None = _json_text(cast(str, value))
                elif kind is int or kind is float or kind is bool or value is None:
                    text = scalar(value)
                else:
                    text = scalar(_scalar(value))
                if text is None:
                    return None
                parts.append(f"{_json_text(prefix + cast(str, key))}: {text}")
    except ValueError:  # an integer too long for str()
        return None
    parts.append(f'"level": "info", "ts": "{ts}", "msg": "job.event"}}')
    return ", ".join(parts)


def job_event_logfmt(ts: str, job: Job, event: JobEvent) -> str:
    """A logfmt ``job.event`` record stamped ``ts``: :func:`render_logfmt` of its fields.

    Values of the expected types are written without a call per value; a context key that
    :func:`flatten_context` would rewrite sends the whole context through it.
    """
    fmt = _logfmt_value
    needs_quotes = _needs_quotes
    jobid, userid, queue, seq = job.jobid, job.userid, job.queue, job.seq
    name, stamp, state = event.name, event.timestamp, job.state
    label = _EVENTLOG_TEXT.get(event.eventlog)
    line = (
        f"ts={ts} level=info msg=job.event jobid={job.f58}"  # f58: always safe
        f" id={jobid if type(jobid) is int else fmt(jobid)}"
        f" userid={userid if type(userid) is int else fmt(userid)}"
        f" queue={queue if type(queue) is str and needs_quotes(queue) is None else fmt(queue)}"
        f" eventlog={label if label is not None else fmt(event.eventlog)}"
        f" seq={seq if type(seq) is int else fmt(seq)}"
        f" name={name if type(name) is str and needs_quotes(name) is None else fmt(name)}"
        f" event_ts={stamp if type(stamp) is float else fmt(stamp)}"
        f" state={state if state in _SAFE_STATES else fmt(state)}"
    )
    context = event.context
    if not context:
        return line
    parts = [line]
    for key, value in context.items():
        if type(key) is not str or not key.isidentifier():  # rewritten keys may collide
            parts[1:] = [f"{k}={fmt(v)}" for k, v in flatten_context(context).items()]
            break
        kind = type(value)
        if kind is str:
            text = value if needs_quotes(value) is None else _quoted(value)
        elif kind is int or kind is float:
            text = str(value)
        else:
            text = fmt(_scalar(value))
        parts.append(f"ctx_{key}={text}")
    return " ".join(parts)


def make_logger(
    stream: TextIO | LineWriter,
    fmt: LogFormat = "logfmt",
    level: LogLevel = "info",
    *,
    options: LogOptions | None = None,
) -> FilteringBoundLogger:
    """A logger writing one ``ts level msg ...`` record per line to ``stream``.

    With ``options``, its level and format are those (``fmt`` and ``level`` unused) and
    follow :meth:`LogOptions.set`.
    """
    renderer = _renderer(fmt) if options is None else options.render
    first = [] if options is None else [options.drop_below_level]
    writer = stream if isinstance(stream, LineWriter) else LineWriter(stream)
    return structlog.wrap_logger(  # type: ignore[no-any-return]
        writer,
        processors=[
            *first,
            structlog.processors.add_log_level,
            _STAMPER,
            structlog.processors.EventRenamer("msg"),
            structlog.processors.format_exc_info,
            _classified(renderer),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()["DEBUG" if options else level.upper()]
        ),
        cache_logger_on_first_use=True,
    )


def _json_default(value: object) -> object:
    """What JSON cannot encode directly: read-only mappings as objects, the rest as text."""
    return dict(value) if isinstance(value, Mapping) else _text(value)


def _scalar(value: object) -> object:
    """A log value: scalars as they are, anything else as compact JSON (never raises)."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    try:
        return json.dumps(value, separators=(",", ":"), sort_keys=True, default=_json_default)
    except Exception:  # keys of mixed types, a cycle, nesting past the recursion limit
        return shown(value)


def flatten_context(context: Mapping[str, Any]) -> dict[str, object]:
    """The event context as ``ctx_<key>`` fields (keys made logfmt-safe)."""
    out: dict[str, object] = {}
    for key, value in context.items():
        safe = (
            key if isinstance(key, str) and key.isidentifier() else _KEY_UNSAFE.sub("_", str(key))
        )
        out["ctx_" + safe] = _scalar(value)
    return out


def job_record(job: Job) -> dict[str, object]:
    """A finished job's record of account (everything ``flux jobs`` would say, and more).

    The keys are ``jobid`` then :data:`_FINISHED_KEYS` (and ``bank``, ``project`` when the
    job has them), the values :func:`_finished_values`: what the direct renderers write.
    """
    record: dict[str, object] = {"jobid": job.f58}
    for key, value in zip(_FINISHED_RECORD_KEYS, _finished_values(job), strict=False):
        if value is not _NO_BANK:
            record[key] = value
    return record


class LogSink(NullSink):
    """Writes the job records of the log contract (a :class:`~fluxmon.tracker.Sink`)."""

    #: This sink's ``where`` in ``fluxmon_internal_errors_total``.
    kind: Final = "logs"

    def __init__(
        self, log: FilteringBoundLogger, *, events: bool = True, hot: HotRecords | None = None
    ) -> None:
        """``hot`` writes the ``job.event`` and ``job.finished`` records (None: through ``log``)."""
        self._log = log
        self._events = events
        self._hot = hot

    def set_events(self, on: bool) -> None:
        """Turn ``job.event`` records on or off from the next event (a reload)."""
        self._events = on

    def job_event(self, job: Job, event: JobEvent) -> None:
        """One ``job.event`` record per event (unless per-event logs are off)."""
        if not self._events:
            return
        if self._hot is not None:
            self._hot.job_event(job, event)
        else:
            self._log.info("job.event", **job_event_fields(job, event))

    def job_finished(self, job: Job) -> None:
        """One ``job.finished`` record, the job's record of account."""
        if self._hot is not None:
            self._hot.job_finished(job)
        else:
            self._log.info("job.finished", **job_record(job))

    def event_rejected(self, reason: str, detail: str, event: JobEvent | None) -> None:
        """One warning naming the reason and the offending input."""
        fields: dict[str, object] = {"reason": reason, "detail": detail}
        if event is not None:
            jobid = event.jobid
            if type(jobid) is int and 0 <= jobid <= MAX_JOBID:
                fields["jobid"] = f58(jobid)
                fields["id"] = jobid
            fields["input"] = _scalar(
                {
                    "id": jobid,
                    "eventlog": event.eventlog,
                    "name": event.name,
                    "timestamp": event.timestamp,
                    "context": event.context,
                }
            )
            if isinstance(fields["input"], str) and len(fields["input"]) > MAX_INPUT_CHARS:
                fields["input"] = fields["input"][:MAX_INPUT_CHARS] + "..."
        self._log.warning("event.rejected", **fields)


class ResourceLogSink:
    """Writes the ``node.*`` records (a :class:`~fluxmon.resources.ResourceSink`).

    One record per event and change; nodes that changed by different durations (an
    undrain of nodes drained at different times) get one record per duration.
    """

    #: This sink's ``where`` in ``fluxmon_internal_errors_total``.
    kind: Final = "resource_logs"

    def __init__(self, log: FilteringBoundLogger) -> None:
        self._log = log

    def resource_event(self, event: ResourceEvent) -> None:
        """Nothing per event: the records are per change."""

    def nodes_changed(
        self,
        change: str,
        nodes: Sequence[Node],
        event: ResourceEvent,
        seconds: Sequence[float | None],
    ) -> None:
        """One ``node.*`` record: hostnames as a hostlist, ranks as an idset, and more."""
        groups: dict[float | None, list[Node]] = {}
        for node, value in zip(nodes, seconds, strict=True):
            groups.setdefault(value, []).append(node)
        for value, group in groups.items():
            fields: dict[str, object] = {
                "nodelist": encode_hostlist(n.host for n in group),
                "ranks": encode_idset(n.rank for n in group),
                "count": len(group),
                "event_ts": event.timestamp,
            }
            if change in ("drain", "drain_update"):
                reason = event.context.get("reason")
                fields["reason"] = _scalar(reason) if reason is not None else ""
                fields["update"] = change == "drain_update"
            elif change == "undrain":
                fields["drained_seconds"] = value
            elif change == "online":
                fields["down_seconds"] = value
            self._write(change, fields)

    def _write(self, change: str, fields: dict[str, object]) -> None:
        log = self._log
        if change == "online":
            log.info("node.online", **fields)
        elif change == "offline":
            log.warning("node.offline", **fields)
        elif change in ("drain", "drain_update"):
            log.warning("node.drain", **fields)
        elif change == "undrain":
            log.info("node.undrain", **fields)
        elif change == "torpid":
            log.warning("node.torpid", **fields)
        elif change == "lively":
            log.info("node.lively", **fields)
