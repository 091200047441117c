"""The replay format (JSON lines, one event per line): reader, writer, and source.

A line is ``{"id": <int or f58>, "eventlog": "eventlog" | "guest.exec.eventlog",
"timestamp": <float>, "name": <str>, "context": {...}}`` plus ``"jobspec"`` on
``submit`` and ``"R"`` on ``alloc`` when known. ``eventlog`` defaults to the main
eventlog and ``context`` to ``{}``. Blank lines are ignored; a malformed line is
refused with its file and line number and the replay goes on. A file that cannot be
read is not input to refuse but a missing input: :class:`UnreadableInput`.
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, BinaryIO, Final

from fluxmon.events import EMPTY_CONTEXT, EVENTLOGS, MAIN, JobEvent, parse_jobid
from fluxmon.sources import Downstream

BATCH: Final = 512
_decode: Final = json.JSONDecoder().decode


class LineError(ValueError):
    """A replay line that is not an event; the message says what is wrong."""


class UnreadableInput(Exception):
    """A replay file that cannot be opened; the message names it and says why."""


def open_input(path: str | os.PathLike[str]) -> BinaryIO:
    """Open a replay file for reading, or raise :class:`UnreadableInput` naming it."""
    try:
        return open(path, "rb")
    except OSError as err:
        raise UnreadableInput(f"{os.fspath(path)}: cannot read: {err.strerror or err}") from None


def parse_line(line: bytes | str) -> JobEvent:
    """Parse one replay line into a JobEvent; raise :class:`LineError` saying why not."""
    try:
        # Decoding first skips json's per-call encoding detection on bytes.
        obj = _decode(line.decode() if isinstance(line, bytes) else line)
    except ValueError as err:  # JSONDecodeError and UnicodeDecodeError
        raise LineError(f"not JSON: {err}") from None
    if type(obj) is not dict:
        raise LineError(f"a line must be a JSON object, not {type(obj).__name__}")
    try:
        jobid = obj["id"]
        name = obj["name"]
        timestamp = obj["timestamp"]
    except KeyError as err:
        raise LineError(f"missing key {err} (required: id, name, timestamp)") from None
    if type(jobid) is not int:
        try:
            jobid = parse_jobid(jobid)
        except ValueError as err:
            raise LineError(str(err)) from None
    elif not 0 <= jobid < 2**64:
        raise LineError(f"id {jobid} is outside 0..2**64-1")
    if type(name) is not str or not name:
        raise LineError(f"name must be a non-empty string, not {name!r}")
    if type(timestamp) is not float:
        if type(timestamp) is not int:
            raise LineError(f"timestamp must be a number, not {timestamp!r}")
        timestamp = float(timestamp)
    elif not math.isfinite(timestamp):
        raise LineError(f"timestamp must be finite, not {timestamp!r}")
    eventlog = obj.get("eventlog", MAIN)
    if eventlog not in EVENTLOGS:
        raise LineError(f"eventlog {eventlog!r} is not one of {', '.join(EVENTLOGS)}")
    context = obj.get("context")
    if type(context) is not dict:
        if context is None:
            context = EMPTY_CONTEXT
        else:
            raise LineError(f"context must be an object, not {type(context).__name__}")
    jobspec = obj.get("jobspec")
    if jobspec is not None and type(jobspec) is not dict:
        raise LineError(f"jobspec must be an object, not {type(jobspec).__name__}")
    R = obj.get("R")
    if R is not None and type(R) is not dict:
        raise LineError(f"R must be an object, not {type(R).__name__}")
    return JobEvent(jobid, eventlog, name, timestamp, context, jobspec, R)


def format_event(event: JobEvent) -> str:
    """One replay line (no newline) for an event."""
    obj: dict[str, Any] = {
        "id": event.jobid,
        "eventlog": event.eventlog,
        "timestamp": event.timestamp,
        "name": event.name,
        "context": dict(event.context),
    }
    if event.jobspec is not None:
        obj["jobspec"] = event.jobspec
    if event.R is not None:
        obj["R"] = event.R
    return json.dumps(obj, separators=(",", ":"))


def read_events(lines: Iterable[bytes | str]) -> Iterator[tuple[int, JobEvent | LineError]]:
    """Yield (line number, event or error) for every non-blank line."""
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield lineno, parse_line(line)
        except LineError as err:
            yield lineno, err


class ReplaySource:
    """Feeds recorded files through the pipeline as fast as possible (a ``Source``)."""

    def __init__(
        self,
        paths: Iterable[str | os.PathLike[str]],
        *,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self.paths = list(paths)
        #: Called with the bytes read so far (all files) after each batch.
        self.progress = progress

    def run(self, downstream: Downstream, stop: threading.Event) -> None:
        """Deliver every file's events in order; refuse malformed lines by number.

        Raises :class:`UnreadableInput` when a file cannot be opened.
        """
        names = ", ".join(os.fspath(p) for p in self.paths)
        downstream.connected(f"replay: {names}")
        downstream.caught_up()
        progress = self.progress
        done = 0
        for path in self.paths:
            batch: list[JobEvent] = []
            with open_input(path) as handle:  # bytes: lines are decoded once, in parse_line
                # A pipe (/dev/stdin) has no position: its progress is its events alone.
                tell = handle.tell if handle.seekable() else int
                for lineno, item in read_events(handle):
                    if isinstance(item, LineError):
                        downstream.events(batch)
                        batch = []
                        downstream.reject_input("malformed", f"{os.fspath(path)}:{lineno}: {item}")
                        continue
                    batch.append(item)
                    if len(batch) >= BATCH:
                        downstream.events(batch)
                        downstream.heartbeat()
                        batch = []
                        if progress is not None:
                            progress(done + tell())
                        if stop.is_set():
                            return
                done += tell()
            downstream.events(batch)
            if progress is not None:
                progress(done)
