"""Event builders and a recording sink, shipped for fluxmon's tests and for yours.

Nothing here touches Flux, a clock or the network. :func:`jobspec` is
:func:`fluxmon.jobspec.jobspec`, re-exported.
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Iterable, Mapping
from typing import Any

from fluxmon.events import EXEC, MAIN, JobEvent, JobState
from fluxmon.jobspec import jobspec
from fluxmon.tracker import Job, NullSink

__all__ = [
    "RecordingSink",
    "ev",
    "jobspec",
    "lifecycle",
    "parse_log",
    "pending",
    "replay_lines",
]


def ev(
    jobid: int,
    name: str,
    timestamp: float,
    eventlog: str = MAIN,
    jobspec: Mapping[str, Any] | None = None,
    R: Mapping[str, Any] | None = None,
    **context: Any,
) -> JobEvent:
    """One event; keyword arguments become its context."""
    return JobEvent(jobid, eventlog, name, float(timestamp), context, jobspec, R)


def pending(
    jobid: int,
    t0: float,
    *,
    queue: str | None = None,
    duration: float = 0.0,
    userid: int = 1000,
) -> list[JobEvent]:
    """A job's events from submit to SCHED: submit, validate, depend, priority."""
    return [
        ev(jobid, "submit", t0, jobspec=jobspec(queue, duration), userid=userid, urgency=16,
           flags=0, version=1),
        ev(jobid, "validate", t0 + 0.01),
        ev(jobid, "depend", t0 + 0.02),
        ev(jobid, "priority", t0 + 0.03, priority=16),
    ]  # fmt: skip


def lifecycle(
    jobid: int,
    t0: float,
    *,
    status: int = 0,
    queue: str | None = None,
    duration: float = 0.0,
    runtime: float = 1.0,
    wait: float = 0.5,
    exec_events: bool = False,
) -> list[JobEvent]:
    """A complete job that runs and finishes with wait status ``status``."""
    t_alloc = t0 + 0.03 + wait
    t_finish = t_alloc + runtime
    events = pending(jobid, t0, queue=queue, duration=duration)
    events += [ev(jobid, "alloc", t_alloc), ev(jobid, "start", t_alloc + 0.01)]
    if exec_events:
        events += [
            ev(jobid, "init", t_alloc + 0.001, EXEC),
            ev(jobid, "shell.start", t_alloc + 0.02, EXEC),
            ev(jobid, "complete", t_finish - 0.001, EXEC, status=status),
            ev(jobid, "done", t_finish - 0.0005, EXEC),
        ]
    events += [
        ev(jobid, "finish", t_finish, status=status),
        ev(jobid, "release", t_finish + 0.01, ranks="all", final=True),
        ev(jobid, "free", t_finish + 0.011),
        ev(jobid, "clean", t_finish + 0.012),
    ]
    return sorted(events, key=lambda e: e.timestamp)


@dataclasses.dataclass
class RecordingSink(NullSink):
    """Keeps every call the tracker makes, for assertions."""

    events: list[tuple[int, str, JobState]] = dataclasses.field(default_factory=list)
    left: list[tuple[int, JobState, float]] = dataclasses.field(default_factory=list)
    waits: list[tuple[int, str, float]] = dataclasses.field(default_factory=list)
    exceptions: list[tuple[int, str, int]] = dataclasses.field(default_factory=list)
    finished: list[Job] = dataclasses.field(default_factory=list)
    rejected: list[tuple[str, str, JobEvent | None]] = dataclasses.field(default_factory=list)

    def job_event(self, job: Job, event: JobEvent) -> None:
        """Record an applied event."""
        self.events.append((job.jobid, event.name, job.state))

    def state_left(self, job: Job, state: JobState, seconds: float, event: JobEvent) -> None:
        """Record a state visit."""
        self.left.append((job.jobid, state, seconds))

    def queued(self, job: Job, seconds: float, event: JobEvent) -> None:
        """Record a queue wait."""
        self.waits.append((job.jobid, "queue", seconds))

    def launched(self, job: Job, seconds: float, event: JobEvent) -> None:
        """Record a launch latency."""
        self.waits.append((job.jobid, "launch", seconds))

    def perilog(self, job: Job, phase: str, seconds: float, event: JobEvent) -> None:
        """Record a prolog or epilog."""
        self.waits.append((job.jobid, phase, seconds))

    def exception(self, job: Job, etype: str, severity: int, event: JobEvent) -> None:
        """Record an exception."""
        self.exceptions.append((job.jobid, etype, severity))

    def job_finished(self, job: Job) -> None:
        """Record a finished job."""
        self.finished.append(job)

    def event_rejected(self, reason: str, detail: str, event: JobEvent | None) -> None:
        """Record a refusal."""
        self.rejected.append((reason, detail, event))


def replay_lines(events: Iterable[JobEvent]) -> str:
    """Events in the replay format, one JSON object per line."""
    from fluxmon.sources.replay import format_event

    return "".join(format_event(e) + "\n" for e in events)


def parse_log(text: str) -> list[dict[str, Any]]:
    """Parse JSON-format log output into records."""
    return [json.loads(line) for line in io.StringIO(text) if line.strip()]
