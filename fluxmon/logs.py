"""Structured logs: one record per line, logfmt (default) or JSON.

:func:`make_logger` builds a private structlog logger writing to a stream passed in
(no global configuration); :class:`LogSink` turns the tracker's calls into the
contract's records: ``job.event``, ``job.finished`` and ``event.rejected``.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Mapping, MutableMapping
from typing import Any, Final, TextIO

import structlog
from structlog.typing import FilteringBoundLogger

from fluxmon.config import LogFormat, LogLevel
from fluxmon.events import EVENTLOG_LABEL, MAX_JOBID, JobEvent, f58
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
    text = str(value)
    return text if _needs_quotes(text) is None else _quoted(text)


def render_logfmt(_logger: object, _name: str, event_dict: MutableMapping[str, Any]) -> str:
    """Render ``ts level msg`` then the other keys in call order, one line.

    A lean stand-in for structlog's LogfmtRenderer, which dominated the cost of a
    ``job.event`` record; keys are fluxmon's own or made safe by :func:`flatten_context`.
    """
    fmt = _logfmt_value
    head = [f"{key}={fmt(event_dict.pop(key))}" for key in _FIRST if key in event_dict]
    head.extend([f"{key}={fmt(value)}" for key, value in event_dict.items()])
    return " ".join(head)


class LineWriter:
    """The structlog logger at the end of the chain: one rendered record per line.

    While :meth:`hold` is in effect, lines are kept in memory and written by
    :meth:`release`: the pipeline holds them while it owns the tracker lock, so a slow
    stdout (journald under pressure) never stalls scrapes, and a batch of records costs
    one write and one flush.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._held: list[str] | None = None
        self._lock = threading.Lock()

    def msg(self, message: str) -> None:
        """Write one record (or keep it, while held)."""
        held = self._held
        if held is not None:
            held.append(message)
            return
        with self._lock:
            self._stream.write(message + "\n")
            self._stream.flush()

    log = debug = info = warn = warning = error = critical = exception = fatal = msg

    def hold(self) -> None:
        """Keep records in memory until :meth:`release`."""
        if self._held is None:
            self._held = []

    def release(self) -> None:
        """Write the kept records, in order, with one flush."""
        held, self._held = self._held, None
        if held:
            with self._lock:
                self._stream.write("\n".join(held) + "\n")
                self._stream.flush()


#: The level of each logger method (``exception`` logs at error).
_LEVELS: Final = {
    **{name.lower(): number for name, number in logging.getLevelNamesMapping().items()},
    "exception": logging.ERROR,
}


def _renderer(fmt: LogFormat) -> structlog.typing.Processor:
    if fmt == "json":
        return structlog.processors.JSONRenderer(sort_keys=False)
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
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
            structlog.processors.EventRenamer("msg"),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()["DEBUG" if options else level.upper()]
        ),
        cache_logger_on_first_use=True,
    )


def _json_default(value: object) -> object:
    """What JSON cannot encode directly: read-only mappings as objects, the rest as text."""
    return dict(value) if isinstance(value, Mapping) else str(value)


def _scalar(value: object) -> object:
    """A log value: scalars as they are, anything else as compact JSON."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    try:
        return json.dumps(value, separators=(",", ":"), sort_keys=True, default=_json_default)
    except (TypeError, ValueError):
        return repr(value)


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
    """A finished job's record of account (everything ``flux jobs`` would say, and more)."""
    record: dict[str, object] = {
        "jobid": job.f58,
        "id": job.jobid,
        "userid": job.userid,
        "queue": job.queue,
        "result": job.result,
        "returncode": job.returncode,
        "waitstatus": job.status,
        "exception_type": job.exc_type,
        "exception_severity": job.exc_severity,
        "exception_note": job.exc_note,
    }
    for key in _TIME_KEYS:
        record[key] = getattr(job, key)
    record["queue_wait"] = job.queue_wait
    record["runtime"] = job.runtime
    for state, seconds in job.time_in.items():
        record["time_" + state.lower()] = seconds
    record["held_time"] = job.time_held
    record["ntasks"] = job.ntasks
    record["nnodes"] = job.nnodes
    record["duration_limit"] = job.duration_limit
    return record


class LogSink(NullSink):
    """Writes the job records of the log contract (a :class:`~fluxmon.tracker.Sink`)."""

    #: This sink's ``where`` in ``fluxmon_internal_errors_total``.
    kind: Final = "logs"

    def __init__(self, log: FilteringBoundLogger, *, events: bool = True) -> None:
        self._log = log
        self._events = events

    def set_events(self, on: bool) -> None:
        """Turn ``job.event`` records on or off from the next event (a reload)."""
        self._events = on

    def job_event(self, job: Job, event: JobEvent) -> None:
        """One ``job.event`` record per event (unless per-event logs are off)."""
        if not self._events:
            return
        self._log.info(
            "job.event",
            jobid=job.f58,
            id=job.jobid,
            userid=job.userid,
            queue=job.queue,
            eventlog=EVENTLOG_LABEL.get(event.eventlog, event.eventlog),
            name=event.name,
            event_ts=event.timestamp,
            state=job.state,
            **flatten_context(event.context),
        )

    def job_finished(self, job: Job) -> None:
        """One ``job.finished`` record, the job's record of account."""
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
