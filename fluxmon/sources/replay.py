"""The replay format (JSON lines, one event per line): reader, writer, and source.

A line is ``{"id": <int or f58>, "eventlog": "eventlog" | "guest.exec.eventlog",
"timestamp": <float>, "name": <str>, "context": {...}}`` plus ``"jobspec"`` on
``submit`` and ``"R"`` on ``alloc`` when known. ``eventlog`` defaults to the main
eventlog and ``context`` to ``{}``. A resource line is ``{"resource": true,
"timestamp": <float>, "name": <str>, "context": {...}}`` (one entry of the instance's
resource eventlog; ``resource-define`` carries the instance R in ``context["R"]``).
Blank lines are ignored; a malformed line is refused with its file and line number and
the replay goes on. A file that cannot be read is not input to refuse but a missing
input: :class:`UnreadableInput`.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, BinaryIO, Final

from fluxmon.events import (
    EVENTLOGS,
    MAIN,
    MAX_LINE_BYTES,
    InvalidEvent,
    JobEvent,
    ResourceEvent,
    decode_json,
    decode_line,
    entry_event,
    needs_walk,
    parse_jobid,
    resource_entry_event,
    shown,
)
from fluxmon.sources import Downstream

BATCH: Final = 512
#: Bytes read at a time while skipping the rest of a line that is too long.
_SKIP_CHUNK: Final = 1 << 16


class LineError(InvalidEvent):
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
    """Parse one replay line into a JobEvent; raise :class:`LineError` saying why not.

    The entry's fields are checked by :func:`fluxmon.events.entry_event`, as the Flux
    source's are.
    """
    event = parse_entry(line, resources=False)
    assert isinstance(event, JobEvent)
    return event


def parse_entry(line: bytes | str, *, resources: bool = True) -> JobEvent | ResourceEvent:
    """Parse one replay line: a job line, or (``resources``) a resource line.

    A resource line has ``"resource": true``, ``timestamp``, ``name`` and ``context``,
    checked by :func:`fluxmon.events.resource_entry_event`. Raises :class:`LineError`.
    """
    try:
        if type(line) is bytes:
            obj, walk = decode_line(line)
        else:
            obj, walk = decode_json(line), needs_walk(line)
        if type(obj) is not dict:
            raise InvalidEvent(f"a line must be a JSON object, not {type(obj).__name__}")
        if resources and "resource" in obj:
            if obj["resource"] is not True:
                raise InvalidEvent(f"resource must be true, not {shown(obj['resource'])}")
            return resource_entry_event(obj, walk=walk)
        try:
            jobid = obj["id"]
        except KeyError:
            raise InvalidEvent("missing key 'id' (required: id, name, timestamp)") from None
        if type(jobid) is not int:
            jobid = parse_jobid(jobid)
        elif not 0 <= jobid < 2**64:
            raise InvalidEvent(f"id {shown(jobid)} is outside 0..2**64-1")
        eventlog = obj.get("eventlog", MAIN)
        if eventlog not in EVENTLOGS:
            raise InvalidEvent(f"eventlog {shown(eventlog)} is not one of {', '.join(EVENTLOGS)}")
        return entry_event(jobid, eventlog, obj, obj.get("jobspec"), obj.get("R"), walk=walk)
    except ValueError as err:  # InvalidEvent, and parse_jobid's ValueError
        raise LineError(str(err)) from None


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


def format_resource_event(event: ResourceEvent) -> str:
    """One replay line (no newline) for a resource event."""
    obj: dict[str, Any] = {
        "resource": True,
        "timestamp": event.timestamp,
        "name": event.name,
        "context": dict(event.context),
    }
    return json.dumps(obj, separators=(",", ":"))


def read_lines(handle: BinaryIO, limit: int = MAX_LINE_BYTES) -> Iterator[bytes | int]:
    """Yield each line of ``handle``, or the length of one longer than ``limit`` bytes.

    A long line is read past in chunks, so no more than ``limit`` bytes of it are held.
    """
    readline = handle.readline
    while True:
        line = readline(limit + 1)
        if not line:
            return
        if len(line) <= limit or line.endswith(b"\n"):
            yield line
            continue
        length = len(line)
        while not line.endswith(b"\n"):
            line = readline(_SKIP_CHUNK)
            if not line:
                break
            length += len(line)
        yield length


def read_events(
    lines: Iterable[bytes | str | int],
) -> Iterator[tuple[int, JobEvent | LineError]]:
    """Yield (line number, event or error) for every non-blank line (job lines only).

    An ``int`` stands for a line that was too long (its length), from :func:`read_lines`.
    """
    for lineno, item in read_entries(lines, resources=False):
        assert not isinstance(item, ResourceEvent)
        yield lineno, item


def read_entries(
    lines: Iterable[bytes | str | int], *, resources: bool = True
) -> Iterator[tuple[int, JobEvent | ResourceEvent | LineError]]:
    """Yield (line number, job or resource event, or error) for every non-blank line."""
    for lineno, line in enumerate(lines, 1):
        if isinstance(line, int):
            yield (
                lineno,
                LineError(
                    f"line of {line} bytes is longer than the limit of {MAX_LINE_BYTES} bytes"
                ),
            )
            continue
        if not line or line.isspace():  # blank (isspace: no copy, unlike strip)
            continue
        try:
            yield lineno, parse_entry(line, resources=resources)
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
                for lineno, item in read_entries(read_lines(handle)):
                    if isinstance(item, LineError):
                        downstream.events(batch)
                        batch = []
                        downstream.reject_input("malformed", f"{os.fspath(path)}:{lineno}: {item}")
                        continue
                    if isinstance(item, ResourceEvent):  # in order with the job events
                        downstream.events(batch)
                        batch = []
                        downstream.resource_events([item])
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
