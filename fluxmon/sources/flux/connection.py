"""What every part of one broker connection shares: the context, the memory, errno text."""

from __future__ import annotations

import enum
import errno
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from structlog.typing import FilteringBoundLogger

from fluxmon.config import FluxSettings
from fluxmon.events import JobEvent
from fluxmon.sources import Downstream, WatchStats
from fluxmon.sources.flux.bindings import Bindings
from fluxmon.sources.flux.gather import Gather


def errno_name(error: OSError) -> str:
    """``ENOENT``-style name of an OSError's errno (``E?`` when it has none)."""
    code = error.errno
    return errno.errorcode.get(code, f"E{code}") if code is not None else "E?"


def describe(error: OSError) -> str:
    """``ENOENT No such file or directory``: the errno name and its text."""
    return f"{errno_name(error)} {error.strerror or ''}".strip()


class Start(enum.Enum):
    """What a new connection knows of the events Flux already holds."""

    #: The first connection, nothing known: what Flux holds is history, rebuilt silently.
    FRESH = "fresh"
    #: The first connection after a checkpoint: events newer than it happened while
    #: fluxmon was down, so they are counted; older ones are rebuilt silently.
    RESUMED = "resumed"
    #: A later connection: the tracker holds what was delivered before the drop; only
    #: newer events are delivered (and counted: they happened while fluxmon was away).
    RECONNECTED = "reconnected"


#: Finished jobs whose main-eventlog timestamps are remembered, so that a broker that
#: rolled back and runs one of them again is noticed (newest first; older are dropped).
FINISHED_REMEMBERED: Final = 4096


@dataclass
class Memory:
    """What the source remembers across connections (the tracker outlives them too)."""

    since: float = 0.0  # newest main-eventlog timestamp delivered
    exec_since: float = 0.0  # newest exec-eventlog timestamp delivered
    active: set[int] = field(default_factory=set)  # jobs submitted and not yet clean
    running: set[int] = field(default_factory=set)  # jobs allocated and not yet clean
    exec_seen: dict[int, set[tuple[str, float]]] = field(default_factory=dict)
    main_last: dict[int, float] = field(default_factory=dict)  # watch mode: per job
    done: dict[int, float] = field(default_factory=dict)  # watch mode: finished, when
    held_over: dict[int, list[JobEvent]] = field(default_factory=dict)  # cleans held at a drop
    #: Timestamps of the main events delivered, per job: active jobs, and the last
    #: ``FINISHED_REMEMBERED`` finished ones; compared with the broker's history on reconnect.
    applied: dict[int, list[float]] = field(default_factory=dict)
    finished: OrderedDict[int, list[float]] = field(default_factory=OrderedDict)
    #: Rewound jobs: their exec events at or before this time were delivered before.
    exec_quiet: dict[int, float] = field(default_factory=dict)
    #: Jobs whose clean is at or before ``since`` but was never delivered (the checkpoint's
    #: ``held``): it is delivered live when it comes, and the job stays here until then.
    pending_cleans: set[int] = field(default_factory=set)
    #: Main and exec events delivered per active job (what a restart skips of it), and
    #: the newest ``submit`` timestamp delivered (submits come in time order).
    main_count: dict[int, int] = field(default_factory=dict)
    exec_count: dict[int, int] = field(default_factory=dict)
    #: Jobs whose counts changed (or that ended) since the last position was taken.
    changed: set[int] = field(default_factory=set)
    submit_since: float = 0.0
    #: The checkpoint's counts, for the first connection after it (None: none).
    resume_jobs: dict[int, tuple[int, int]] | None = None
    #: The checkpoint's fingerprints of active and of finished jobs (what was delivered
    #: of each: how many main events, the last one's timestamp), for the same.
    resume_prints: dict[int, tuple[int, float]] = field(default_factory=dict)
    resume_finished: frozenset[int] = frozenset()  # which of them had finished

    def applied_to(self, jobid: int, timestamp: float, *, submit: bool, last: bool) -> None:
        """Remember a delivered main event (``last``: the job's clean or invalidate)."""
        applied = self.applied.get(jobid)
        if applied is None:
            if not submit:
                return  # not a job that was submitted: nothing to compare later
            applied = self.applied[jobid] = []
        applied.append(timestamp)
        if last:
            del self.applied[jobid]
            finished = self.finished
            finished[jobid] = applied
            finished.move_to_end(jobid)
            if len(finished) > FINISHED_REMEMBERED:
                finished.popitem(last=False)

    def delivered(self, jobid: int) -> list[float] | None:
        """Timestamps of the job's main events delivered so far (None: not remembered)."""
        found = self.applied.get(jobid)
        return found if found is not None else self.finished.get(jobid)


@dataclass(frozen=True)
class Position:
    """What has been delivered, as a checkpoint saves it."""

    since: float  # newest main timestamp
    exec_since: float  # newest exec timestamp (or the first start's exec horizon)
    held: frozenset[int]  # jobs whose clean at or before ``since`` is held back
    submits: float  # newest submit timestamp
    #: (main, exec) events delivered of each job whose counts changed since the last
    #: position; None for a job that ended. Applied in order, they give every count.
    changes: dict[int, tuple[int, int] | None]
    #: The same jobs' fingerprints (main events delivered, the last one's timestamp):
    #: of an active job (None: none delivered, or it ended), and of each job that
    #: finished (its whole main eventlog), in the order they finished.
    prints: dict[int, tuple[int, float] | None] = field(default_factory=dict)
    finished: tuple[tuple[int, tuple[int, float]], ...] = ()
    #: The newest resource event delivered (the resource stream's position).
    resource_since: float = 0.0


@dataclass
class Connection:
    """One connection to the broker, and everything its modes and watches use."""

    settings: FluxSettings
    uri: str
    bindings: Bindings
    handle: Any
    downstream: Downstream
    stats: WatchStats
    log: FilteringBoundLogger
    clock: Callable[[], float]  # wall clock, comparable with event timestamps
    monotonic: Callable[[], float]  # for deadlines
    memory: Memory
    start: Start
    flux_version: str
    connected_at: float  # wall clock
    #: Makes a position durable once the records delivered so far are written:
    #: ``(since, exec_since, held jobids)``; None: no checkpoint.
    save_position: Callable[[Position], None] | None = None
    #: Saves the newest position with the metrics if a save is due (each tick).
    save_due: Callable[[], None] | None = None
    #: The newest resource event delivered (the resource stream's position, saved with
    #: each position).
    resource_position: Callable[[], float] = lambda: 0.0
    #: Live work of the reactor's callbacks, done together (set by the session).
    gather: Gather | None = None
    lost: str | None = None  # why the connection ended, once it has
    caught_up: bool = False  # history is delivered; everything since is live

    def lose(self, reason: str) -> None:
        """The connection is gone: remember the first reason and leave the reactor."""
        if self.lost is None:
            self.lost = reason
        self.bindings.stop(self.handle)

    def go_live(self) -> None:
        """History is delivered: tell downstream that everything from now on is live."""
        self.caught_up = True
        self.downstream.caught_up()

    def guard(self, callback: Callable[..., None]) -> Callable[..., None]:
        """Wrap a reactor callback so no exception escapes into the reactor (it would stop)."""

        def guarded(*args: Any) -> None:
            try:
                callback(*args)
            except Exception as err:
                self.log.exception("source.callback_failed", error=f"{type(err).__name__}: {err}")

        return guarded
