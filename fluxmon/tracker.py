"""The pure RFC 21 job state machine.

The tracker is fed :class:`~fluxmon.events.JobEvent` values, keeps one :class:`Job`
per active job, and tells its sinks what happened: states left (with the time spent
in them), waits and phases measured, exceptions raised, jobs finished, and events
rejected. It does no I/O and never reads a clock: every duration comes from the
events' own timestamps.

State transitions follow flux-core's ``job-list`` module (``job_state.c``), which is
what ``flux jobs`` reports, so the records fluxmon writes agree with ``flux jobs``:

* ``validate`` → DEPEND, ``depend`` → PRIORITY, ``alloc`` → RUN, ``finish`` → CLEANUP,
  a severity-0 ``exception`` → CLEANUP, ``clean`` → INACTIVE. Each of these states is
  entered at most once; a repeat is accepted and changes nothing.
* ``priority`` moves PRIORITY → SCHED only; in SCHED it is a re-prioritisation.
* ``urgency``, ``jobspec-update`` and ``flux-restart`` move SCHED → PRIORITY only.
* A job succeeded when ``finish`` had status 0 and no fatal exception came before it;
  otherwise its result is the type of its most severe (first) exception, or failed.

On top of that the tracker refuses input Flux never produces: an event for a job it
does not know (or one that has already finished), a main-eventlog event older than the
job's newest (``out_of_order``; main eventlogs are written in time order, so an older
repeat lands here too), a repeat of the newest one or of an exec event (``duplicate``),
an event that would move a job back to an earlier state, or a context of the wrong shape.
Each refusal reaches the sinks as ``event_rejected`` with a reason; no input makes the
tracker raise. A sink that raises is reported through :attr:`Tracker.on_sink_error`
and does not stop the event: the tracker's state and the other sinks are unaffected.
"""

from __future__ import annotations

import math
from array import array
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Final, Protocol, TypeGuard

from fluxmon.events import (
    DEFAULT_QUEUE,
    EXEC,
    JOURNAL_ONLY,
    MAIN,
    MAX_JOBID,
    RANK,
    STATES,
    JobEvent,
    JobState,
    Result,
    f58,
)

#: Reasons an event is refused; each is a ``fluxmon_event_errors_total`` label value.
REJECT_REASONS: Final = (
    "malformed",
    "unknown_job",
    "after_inactive",
    "duplicate",
    "out_of_order",
    "invalid_transition",
    "negative_duration",
    # Resource input (fluxmon.resources): a rank the instance lacks, an undrain of a
    # node not drained, a node event before the instance's ranks are known.
    "unknown_rank",
    "not_drained",
    "before_define",
)

# Events that move a job forward to a fixed state (flux-core job-list "advance").
_ADVANCE: Final[Mapping[str, JobState]] = {
    "validate": "DEPEND",
    "depend": "PRIORITY",
    "alloc": "RUN",
    "finish": "CLEANUP",
    "clean": "INACTIVE",
}
# Events that move SCHED back to PRIORITY (flux-core job-list "revert").
_REVERT: Final = frozenset({"urgency", "jobspec-update", "flux-restart"})
_PERILOG: Final[Mapping[str, tuple[str, bool]]] = {
    "prolog-start": ("prolog", True),
    "prolog-finish": ("prolog", False),
    "epilog-start": ("epilog", True),
    "epilog-finish": ("epilog", False),
}
_BIT: Final[Mapping[str, int]] = {state: 1 << rank for state, rank in RANK.items()}
_ZERO_TIMES: Final = (0.0,) * (len(STATES) - 1)
#: Exec event keys a job keeps in an array (searched linearly) before a set.
_EXEC_ARRAY: Final = 32
#: Finished jobs remembered so a repeated final event reads as a duplicate, not unknown.
RECENT_FINISHED: Final = 4096
#: What reading a hostile input can raise (an int past the float range, a digit ``int``
#: refuses, something that is not an event at all): refused as ``malformed``.
BAD_INPUT: Final = (TypeError, ValueError, AttributeError, KeyError, OverflowError)


_SCALARS: Final = frozenset({str, int, float, bool, type(None)})


def _frozen(value: object) -> object:
    """A hashable value equal for equal JSON values (mappings in any key order)."""
    if type(value) is dict:  # the JSON cases first, without an ABC check
        return frozenset(
            [
                (key, item if type(item) in _SCALARS else _frozen(item))
                for key, item in value.items()
            ]
        )
    if type(value) is list:
        return ("[", *[item if type(item) in _SCALARS else _frozen(item) for item in value])
    if isinstance(value, Mapping):
        return frozenset(
            [
                (key, item if type(item) in _SCALARS else _frozen(item))
                for key, item in value.items()
            ]
        )
    if isinstance(value, list):
        return ("[", *[item if type(item) in _SCALARS else _frozen(item) for item in value])
    if isinstance(value, tuple):
        return ("(", *map(_frozen, value))
    try:
        hash(value)
    except TypeError:  # not JSON (a set, say): its repr stands for it
        return ("?", type(value).__name__, repr(value))
    return value


def event_key(name: str, context: Mapping[str, Any]) -> int:
    """A hash of an event's name and context: equal for equal ones (any key order).

    What the tracker keeps of an applied event to recognise its repeat, instead of the
    context itself. Unequal events get the same key with a chance of 2**-64 per pair
    compared (the repeat check compares events of one job at one timestamp only).
    """
    if not context:
        return hash(name)
    try:
        return hash((name, frozenset(context.items())))
    except TypeError:  # a nested value
        pass
    try:
        return hash((name, _frozen(context)))
    except RecursionError:  # deeper than any source lets through: never a repeat
        return hash((name, id(context)))


class Job:
    """What the tracker knows about one active job; sinks read it, never write it."""

    __slots__ = (
        "_f58",
        "_time",
        "bank",
        "duration_limit",
        "entered",
        "exc_note",
        "exc_severity",
        "exc_type",
        "exec_seen",
        "held_since",
        "jobid",
        "last_main",
        "last_main_ts",
        "name",
        "ncores",
        "ngpus",
        "nnodes",
        "nodelist",
        "ntasks",
        "perilog_starts",
        "project",
        "queue",
        "result",
        "returncode",
        "seq",
        "seq_exec",
        "seq_main",
        "state",
        "status",
        "success",
        "t_alloc",
        "t_cleanup",
        "t_depend",
        "t_inactive",
        "t_priority",
        "t_run",
        "t_sched",
        "t_start",
        "t_submit",
        "time_held",
        "urgency",
        "userid",
        "visited",
    )

    def __init__(self, jobid: int, timestamp: float) -> None:
        self.jobid = jobid
        self._f58: str | None = None
        self.userid: int | None = None
        self.urgency: int | None = None
        self.queue: str = DEFAULT_QUEUE
        self.duration_limit: float = 0.0
        self.ntasks: int | None = None
        self.nnodes: int | None = None
        #: From the jobspec (attributes.system job.name, bank, project), when it has them.
        self.name: str | None = None
        self.bank: str | None = None
        self.project: str | None = None
        #: From the R of ``alloc``: cores, GPUs and the hostlist of the job's nodes.
        self.ncores: int | None = None
        self.ngpus: int | None = None
        self.nodelist: str | None = None
        self.state: JobState = "NEW"
        self.entered: float = timestamp
        #: States entered so far, as bits ``1 << RANK[state]``.
        self.visited: int = _BIT["NEW"]
        #: Seconds spent in each state, by rank (NEW .. CLEANUP).
        self._time = array("d", _ZERO_TIMES)
        #: Seconds spent held (in SCHED with priority 0, as flux-core keeps held jobs).
        self.time_held: float = 0.0
        self.held_since: float | None = None
        self.t_submit: float = timestamp
        self.t_depend: float | None = None
        self.t_priority: float | None = None
        self.t_sched: float | None = None
        self.t_alloc: float | None = None
        self.t_run: float | None = None
        self.t_start: float | None = None
        self.t_cleanup: float | None = None
        self.t_inactive: float | None = None
        self.status: int | None = None
        self.success = False
        self.exc_severity: int | None = None
        self.exc_type: str | None = None
        self.exc_note: str | None = None
        self.result: Result | None = None
        self.returncode: int | None = None
        #: Timestamp of the newest main-eventlog event, and the :func:`event_key` of the
        #: event at exactly that time (a tuple of keys when several are): main events come
        #: in time order, so that is all it takes to recognise a repeat (an older event is
        #: refused as out of order). Keys, not contexts: a context is not kept alive.
        self.last_main_ts: float = timestamp
        self.last_main: int | tuple[int, ...] = 0
        #: Keys (timestamp included) of the exec events applied (they are not ordered):
        #: an array while few, a set once there are many.
        self.exec_seen: array[int] | set[int] | None = None
        self.perilog_starts: dict[str, list[float]] | None = None
        #: Events applied so far from the main and the exec eventlog, and the 0-based
        #: index in its eventlog of the event applied last (``seq`` of its record).
        self.seq_main = 0
        self.seq_exec = 0
        self.seq = 0

    @property
    def f58(self) -> str:
        """The jobid in plain-ASCII f58 (``f2ZMTeo5R``), computed once."""
        if self._f58 is None:
            self._f58 = f58(self.jobid)
        return self._f58

    @property
    def time_in(self) -> dict[JobState, float]:
        """Seconds spent in each state so far (NEW .. CLEANUP)."""
        return dict(zip(STATES[:-1], self._time, strict=True))

    @property
    def ran(self) -> bool:
        """True once the job was allocated resources (``alloc`` seen)."""
        return self.t_run is not None

    @property
    def runtime(self) -> float | None:
        """``t_cleanup - t_run`` as ``flux jobs`` computes it, once both are known."""
        if self.t_run is None or self.t_cleanup is None:
            return None
        return self.t_cleanup - self.t_run

    @property
    def queue_wait(self) -> float | None:
        """Submit to alloc, once the job was allocated."""
        if self.t_alloc is None:
            return None
        return self.t_alloc - self.t_submit


class Sink(Protocol):
    """What the tracker tells: every method is called synchronously, in event order.

    A sink may raise: the tracker then reports it (:attr:`Tracker.on_sink_error`, under
    the sink's :func:`sink_kind`) and goes on, so the other sinks still see the event and
    the event still counts as applied.
    """

    def job_event(self, job: Job, event: JobEvent) -> None:
        """An event was accepted and applied; ``job.state`` is the state after it.

        Live events only, unless the sink has ``sees_history = True`` (it keeps state
        rebuilt from history, such as :class:`~fluxmon.resources.ResourceTracker`).
        """

    def state_left(self, job: Job, state: JobState, seconds: float, event: JobEvent) -> None:
        """``job`` left ``state`` after ``seconds`` in it (one call per visit)."""

    def queued(self, job: Job, seconds: float, event: JobEvent) -> None:
        """``job`` was allocated ``seconds`` after its submission."""

    def launched(self, job: Job, seconds: float, event: JobEvent) -> None:
        """``job``'s shells started ``seconds`` after its allocation."""

    def perilog(self, job: Job, phase: str, seconds: float, event: JobEvent) -> None:
        """A prolog or epilog of ``job`` took ``seconds``."""

    def exception(self, job: Job, etype: str, severity: int, event: JobEvent) -> None:
        """An exception was raised on ``job``."""

    def job_finished(self, job: Job) -> None:
        """``job`` reached INACTIVE; its record is complete and the tracker has dropped it."""

    def event_rejected(self, reason: str, detail: str, event: JobEvent | None) -> None:
        """An event was refused, for ``reason``; ``detail`` says what was wrong."""


class NullSink:
    """A sink that ignores everything; subclass it to handle only some calls."""

    def job_event(self, job: Job, event: JobEvent) -> None:
        """Ignore an applied event."""

    def state_left(self, job: Job, state: JobState, seconds: float, event: JobEvent) -> None:
        """Ignore a state visit."""

    def queued(self, job: Job, seconds: float, event: JobEvent) -> None:
        """Ignore a queue wait."""

    def launched(self, job: Job, seconds: float, event: JobEvent) -> None:
        """Ignore a launch latency."""

    def perilog(self, job: Job, phase: str, seconds: float, event: JobEvent) -> None:
        """Ignore a prolog or epilog duration."""

    def exception(self, job: Job, etype: str, severity: int, event: JobEvent) -> None:
        """Ignore an exception."""

    def job_finished(self, job: Job) -> None:
        """Ignore a finished job."""

    def event_rejected(self, reason: str, detail: str, event: JobEvent | None) -> None:
        """Ignore a rejection."""


def sink_kind(sink: Sink) -> str:
    """A sink's fixed name for reports: its ``kind`` attribute, else its class name.

    Never derived from input, so it is a bounded metric label value.
    """
    kind = getattr(sink, "kind", None)
    return kind if isinstance(kind, str) else type(sink).__name__


def _ignore_sink_error(kind: str, error: Exception) -> None:
    """The default :attr:`Tracker.on_sink_error`: counted in ``sink_errors`` only."""


def returncode_of(status: int | None, result: Result | None) -> int | None:
    """The job's return code exactly as ``flux jobs`` computes it from the finish status.

    Shell exit code, or minus the signal number when the shell was signalled; with
    no status, -128 for a canceled job and 1 for a failed one; otherwise unknown.
    """
    if status is None:
        if result == "canceled":
            return -128
        if result == "failed":
            return 1
        return None
    if status & 0x7F == 0:  # WIFEXITED
        return (status >> 8) & 0xFF
    if status & 0x7F != 0x7F:  # WIFSIGNALED (0x7f is WIFSTOPPED)
        return -(status & 0x7F)
    return None


def _queue_of(jobspec: Mapping[str, Any]) -> str:
    system = _system_attributes(jobspec)
    queue = system.get("queue")
    return queue if isinstance(queue, str) and queue else DEFAULT_QUEUE


def _system_attributes(jobspec: Mapping[str, Any]) -> Mapping[str, Any]:
    attributes = jobspec.get("attributes")
    if isinstance(attributes, Mapping):
        system = attributes.get("system")
        if isinstance(system, Mapping):
            return system
    return {}


def _duration_of(jobspec: Mapping[str, Any]) -> float:
    value = _system_attributes(jobspec).get("duration")
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return max(float(value), 0.0)
    return 0.0


def _count(value: object) -> int | None:
    """A jobspec ``count``: an int, or ``{"min": n, ...}`` (RFC 14); else unknown."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, Mapping):
        low = value.get("min")
        if isinstance(low, int) and not isinstance(low, bool):
            return low
    return None


def _slots_and_nodes(resources: object, multiplier: int = 1) -> tuple[int, int | None]:
    """Count task slots and nodes in an RFC 14 resource list (nodes None when unnamed)."""
    slots = 0
    nodes: int | None = None
    if not isinstance(resources, list):
        return 0, None
    for vertex in resources:
        if not isinstance(vertex, Mapping):
            continue
        count = _count(vertex.get("count"))
        if count is None:
            continue
        if vertex.get("type") == "slot":
            slots += multiplier * count
        else:
            inner_slots, inner_nodes = _slots_and_nodes(vertex.get("with"), multiplier * count)
            slots += inner_slots
            if vertex.get("type") == "node":
                nodes = (nodes or 0) + multiplier * count
            elif inner_nodes is not None:
                nodes = (nodes or 0) + inner_nodes
    return slots, nodes


def _tasks_and_nodes(jobspec: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """``ntasks`` and ``nnodes`` as the jobspec states them (None where it does not)."""
    slots, nodes = _slots_and_nodes(jobspec.get("resources"))
    tasks = jobspec.get("tasks")
    ntasks: int | None = None
    if isinstance(tasks, list) and tasks and isinstance(tasks[0], Mapping):
        count = tasks[0].get("count")
        if isinstance(count, Mapping):
            total = count.get("total")
            per_slot = count.get("per_slot")
            if isinstance(total, int) and not isinstance(total, bool):
                ntasks = total
            elif isinstance(per_slot, int) and not isinstance(per_slot, bool) and slots:
                ntasks = per_slot * slots
    return ntasks, nodes


def _idset_size(text: str) -> int | None:
    """Size of an RFC 22 idset such as ``0-3,7``; None if it does not parse."""
    total = 0
    for part in text.split(","):
        low, _, high = part.partition("-")
        if not low.isdigit() or (high and not high.isdigit()):
            return None
        if high and int(high) < int(low):
            return None
        total += (int(high) - int(low) + 1) if high else 1
    return total


def _nodes_of_R(R: Mapping[str, Any]) -> int | None:
    """Number of broker ranks in an R (RFC 20) ``R_lite``; None if it cannot be read."""
    execution = R.get("execution")
    if not isinstance(execution, Mapping):
        return None
    r_lite = execution.get("R_lite")
    if not isinstance(r_lite, list):
        return None
    total = 0
    for entry in r_lite:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("rank"), str):
            return None
        size = _idset_size(entry["rank"])
        if size is None:
            return None
        total += size
    return total


def _R_slots(R: Mapping[str, Any]) -> tuple[int, int, str | None] | None:
    """Cores, GPUs and the hostlist (``execution.nodelist`` joined) of an R; None if unread."""
    execution = R.get("execution")
    if not isinstance(execution, Mapping):
        return None
    r_lite = execution.get("R_lite")
    if not isinstance(r_lite, list):
        return None
    cores = gpus = 0
    for entry in r_lite:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("rank"), str):
            return None
        ranks = _idset_size(entry["rank"])
        children = entry.get("children")
        if ranks is None or not isinstance(children, Mapping):
            return None
        for key, value in children.items():
            size = _idset_size(value) if isinstance(value, str) else None
            if size is None:
                return None
            if key == "core":
                cores += ranks * size
            elif key == "gpu":
                gpus += ranks * size
    nodelist = execution.get("nodelist")
    if isinstance(nodelist, str):
        nodelist = [nodelist]
    hostlist = None
    if isinstance(nodelist, list) and all(isinstance(h, str) for h in nodelist):
        hostlist = ",".join(nodelist) or None
    return cores, gpus, hostlist


def _text_attribute(system: Mapping[str, Any], *path: str) -> str | None:
    value: object = system
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value if isinstance(value, str) and value else None


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


class Tracker:
    """Applies RFC 21 to a stream of events and tells its sinks what happened."""

    def __init__(self, sinks: Sequence[Sink] = ()) -> None:
        self.sinks: tuple[Sink, ...] = tuple(sinks)
        #: Sinks with a true ``sees_history`` attribute: their ``job_event`` is called for
        #: history events too (sinks that keep state, such as resource allocations).
        self.history_sinks: tuple[Sink, ...] = tuple(
            s for s in sinks if getattr(s, "sees_history", False) is True
        )
        self.jobs: dict[int, Job] = {}
        self._finished: OrderedDict[int, None] = OrderedDict()
        #: Refusals so far by reason (the sinks see each one; this is for summaries).
        self.rejected: dict[str, int] = dict.fromkeys(REJECT_REASONS, 0)
        #: Exceptions raised by sinks so far, by :func:`sink_kind`.
        self.sink_errors: dict[str, int] = {}
        #: Called with the sink's kind and the exception each time a sink raises (the
        #: pipeline counts and logs it); by default nothing beyond ``sink_errors``.
        self.on_sink_error: Callable[[str, Exception], None] = _ignore_sink_error

    # -- entry points ---------------------------------------------------------------

    def apply(self, event: JobEvent, live: bool = True) -> bool:
        """Apply one event; return True if it was accepted.

        With ``live=False`` (history replayed on connect) the job's state is rebuilt
        but nothing is reported except refusals (and ``job_event`` to the history sinks),
        so history is not counted twice. A
        sink that raises does not make the event refused (see :attr:`on_sink_error`).
        """
        try:
            name = event.name
            jobid = event.jobid
            ts = event.timestamp
            context = event.context
            eventlog = event.eventlog
            invalid = (
                type(name) is not str
                or type(jobid) is not int
                or not 0 <= jobid <= MAX_JOBID
                or type(ts) not in (float, int)
                or not math.isfinite(ts)  # OverflowError for an int past the float range
                or (
                    type(context) is not dict
                    and type(context) is not MappingProxyType  # EMPTY_CONTEXT, without an ABC check
                    and not isinstance(context, Mapping)
                )
                or (eventlog != MAIN and eventlog != EXEC)  # noqa: PLR1714 - str ==, no hashing
            )
        except BAD_INPUT as err:  # not shaped like a JobEvent at all
            return self._reject("malformed", f"{type(err).__name__}: {err}", event)
        if invalid:
            return self._reject("malformed", "event fields have the wrong types", event)
        if name in JOURNAL_ONLY:
            return True
        job = self.jobs.get(jobid)
        if job is None:
            if jobid in self._finished:
                if eventlog == MAIN:
                    return self._reject("duplicate", f"{name} after the job's clean", event)
                return self._reject(
                    "after_inactive", f"exec event {name} after the job's clean", event
                )
            if name == "submit" and eventlog == MAIN:
                return self._submit(event, live)
            return self._reject("unknown_job", f"{name} for a job with no submit", event)
        if eventlog == MAIN:
            last = job.last_main_ts
            if ts < last:
                return self._reject(
                    "out_of_order",
                    f"{name} at {ts} is older than the job's last event at {last}",
                    event,
                )
            key = event_key(name, context)
            if ts == last:
                keys = job.last_main
                if key == keys or (type(keys) is tuple and key in keys):
                    return self._reject("duplicate", f"{name} at {ts} already applied", event)
            if not self._main(job, event, live):
                return False
            if ts == last:
                keys = job.last_main
                job.last_main = (*keys, key) if isinstance(keys, tuple) else (keys, key)
            else:
                job.last_main_ts = ts
                job.last_main = key
            job.seq = job.seq_main
            job.seq_main += 1
        else:
            key = hash((event_key(name, context), ts))
            seen = job.exec_seen
            if seen is None:
                job.exec_seen = array("q", (key,))
            elif key in seen:
                return self._reject("duplicate", f"{name} at {ts} already applied", event)
            elif isinstance(seen, set):
                seen.add(key)
            elif len(seen) < _EXEC_ARRAY:
                seen.append(key)
            else:  # a linear search no longer: a set from now on
                job.exec_seen = {*seen, key}
            job.seq = job.seq_exec
            job.seq_exec += 1
        for sink in self.sinks if live else self.history_sinks:
            try:
                sink.job_event(job, event)
            except Exception as error:
                self._sink_failed(sink, error)
        if job.state == "INACTIVE" or name == "invalidate":
            del self.jobs[jobid]
            finished = self._finished
            finished[jobid] = None
            if len(finished) > RECENT_FINISHED:
                finished.popitem(last=False)
            if live and job.state == "INACTIVE":
                for sink in self.sinks:
                    try:
                        sink.job_finished(job)
                    except Exception as error:
                        self._sink_failed(sink, error)
        return True

    def forget(self, jobid: int) -> Job | None:
        """Drop a job without finishing it (purged, or gone while fluxmon was away)."""
        return self.jobs.pop(jobid, None)

    def rewind(self, jobid: int) -> JobState | None:
        """Forget all of a job, finished or not, so its events are taken afresh.

        For a job whose history the source found rewritten (a broker that rolled back to
        its last checkpoint and ran the job again): what the tracker held of it, and the
        mark that it finished, are dropped, so the broker's history rebuilds it instead of
        being refused as ``duplicate`` or ``after_inactive``. Returns the state it was in
        (``INACTIVE`` if it had finished), None if the tracker did not know it.
        """
        job = self.jobs.pop(jobid, None)
        if job is not None:
            return job.state
        if jobid in self._finished:
            del self._finished[jobid]
            return "INACTIVE"
        return None

    def snapshot(self) -> dict[tuple[str, JobState], tuple[int, float]]:
        """Jobs now in each (queue, state), with the earliest state-entry timestamp."""
        out: dict[tuple[str, JobState], tuple[int, float]] = {}
        for job in self.jobs.values():
            key = (job.queue, job.state)
            found = out.get(key)
            if found is None:
                out[key] = (1, job.entered)
            else:
                out[key] = (found[0] + 1, min(found[1], job.entered))
        return out

    def report_rejection(self, reason: str, detail: str, event: JobEvent | None = None) -> None:
        """Count and report input refused before it became an event (e.g. a bad line)."""
        self._reject(reason, detail, event)

    # -- internals ------------------------------------------------------------------

    def _reject(self, reason: str, detail: str, event: JobEvent | None) -> bool:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        for sink in self.sinks:
            try:
                sink.event_rejected(reason, detail, event)
            except Exception as error:
                self._sink_failed(sink, error)
        return False

    def _sink_failed(self, sink: Sink, error: Exception) -> None:
        """A sink raised: count it and report it; the event stays applied.

        Catching every ``Exception`` from a sink is deliberate: a bug in one sink (a
        metric, a log renderer) must neither undo the event's other effects nor hide it
        from the sinks after it, and it is a fault of fluxmon, not of the input.
        """
        kind = sink_kind(sink)
        self.sink_errors[kind] = self.sink_errors.get(kind, 0) + 1
        self.on_sink_error(kind, error)

    def _submit(self, event: JobEvent, live: bool) -> bool:
        context = event.context
        job = Job(event.jobid, event.timestamp)
        userid = context.get("userid")
        urgency = context.get("urgency")
        job.userid = userid if _is_int(userid) else None
        job.urgency = urgency if _is_int(urgency) else None
        if event.jobspec is not None:
            if not isinstance(event.jobspec, Mapping):
                return self._reject("malformed", "jobspec is not an object", event)
            try:
                job.queue = _queue_of(event.jobspec)
                job.duration_limit = _duration_of(event.jobspec)
                job.ntasks, job.nnodes = _tasks_and_nodes(event.jobspec)
                system = _system_attributes(event.jobspec)
                job.name = _text_attribute(system, "job", "name")
                job.bank = _text_attribute(system, "bank")
                job.project = _text_attribute(system, "project")
            except BAD_INPUT as err:
                return self._reject("malformed", f"jobspec: {type(err).__name__}: {err}", event)
        job.last_main = event_key("submit", context)
        job.seq_main = 1  # the submit is seq 0
        self.jobs[event.jobid] = job
        if live:
            for sink in self.sinks:
                try:
                    sink.job_event(job, event)
                except Exception as error:
                    self._sink_failed(sink, error)
        return True

    def _move(self, job: Job, new: JobState, event: JobEvent, live: bool) -> None:
        """Leave the current state for ``new`` at the event's time."""
        ts = event.timestamp
        old = job.state
        seconds = ts - job.entered
        if job.held_since is not None:
            job.time_held += ts - job.held_since
            job.held_since = None
        job._time[RANK[old]] += seconds
        job.state = new
        job.entered = ts
        job.visited |= _BIT[new]
        if new == "DEPEND":
            job.t_depend = ts
        elif new == "PRIORITY":
            job.t_priority = ts
        elif new == "SCHED":
            job.t_sched = ts
        elif new == "RUN":
            job.t_run = ts
        elif new == "CLEANUP":
            job.t_cleanup = ts
        elif new == "INACTIVE":
            job.t_inactive = ts
            self._conclude(job)
        if live and old != "NEW":
            for sink in self.sinks:
                try:
                    sink.state_left(job, old, seconds, event)
                except Exception as error:
                    self._sink_failed(sink, error)

    def _advance(self, job: Job, new: JobState, event: JobEvent, live: bool) -> bool:
        """Move forward to a once-only state; a repeat is a no-op, going back is refused."""
        if job.visited & _BIT[new]:
            return True
        if RANK[new] < RANK[job.state]:
            return self._reject(
                "invalid_transition",
                f"{event.name} would move the job from {job.state} back to {new}",
                event,
            )
        self._move(job, new, event, live)
        return True

    def _conclude(self, job: Job) -> None:
        """Result and return code at INACTIVE, as flux-core's job-list computes them."""
        if job.success:
            job.result = "completed"
        elif job.exc_severity == 0 and job.exc_type == "cancel":
            job.result = "canceled"
        elif job.exc_severity == 0 and job.exc_type == "timeout":
            job.result = "timeout"
        else:
            job.result = "failed"
        job.returncode = returncode_of(job.status, job.result)

    def _main(self, job: Job, event: JobEvent, live: bool) -> bool:
        name = event.name
        context = event.context
        advance = _ADVANCE.get(name)
        if advance is not None:
            if name == "finish":
                status = context.get("status")
                if not _is_int(status):
                    return self._reject("malformed", "finish has no integer status", event)
                if job.visited & _BIT["CLEANUP"] and job.status is not None:
                    return self._reject("duplicate", "a second finish", event)
                job.status = status
                job.success = status == 0 and job.exc_severity != 0
            elif name == "alloc" and isinstance(event.R, Mapping):
                try:
                    nodes = _nodes_of_R(event.R)
                except BAD_INPUT as err:
                    return self._reject("malformed", f"R: {type(err).__name__}: {err}", event)
                if nodes is not None:
                    job.nnodes = nodes
                try:
                    slots = _R_slots(event.R)
                except BAD_INPUT:  # children counts it cannot read: unknown, not refused
                    slots = None
                if slots is not None:
                    job.ncores, job.ngpus, job.nodelist = slots
            if not self._advance(job, advance, event, live):
                return False
            if name == "alloc" and job.t_alloc is None:
                job.t_alloc = event.timestamp
                if live:
                    wait = event.timestamp - job.t_submit
                    for sink in self.sinks:
                        try:
                            sink.queued(job, wait, event)
                        except Exception as error:
                            self._sink_failed(sink, error)
            return True
        if name == "priority":
            priority = context.get("priority")
            if not _is_int(priority):
                return self._reject("malformed", "priority has no integer priority", event)
            if job.state == "PRIORITY":
                self._move(job, "SCHED", event, live)
            if job.state == "SCHED":
                if priority == 0 and job.held_since is None:
                    job.held_since = event.timestamp
                elif priority != 0 and job.held_since is not None:
                    job.time_held += event.timestamp - job.held_since
                    job.held_since = None
            return True
        if name in _REVERT:
            if name == "urgency":
                urgency = context.get("urgency")
                if _is_int(urgency):
                    job.urgency = urgency
            if job.state == "SCHED":
                self._move(job, "PRIORITY", event, live)
            return True
        if name == "exception":
            etype = context.get("type")
            severity = context.get("severity")
            note = context.get("note", "")
            if not isinstance(etype, str) or not _is_int(severity) or not 0 <= severity <= 7:
                return self._reject(
                    "malformed", "exception needs a string type and a severity 0..7", event
                )
            if job.exc_severity is None or severity < job.exc_severity:
                job.exc_severity = severity
                job.exc_type = etype
                job.exc_note = note if isinstance(note, str) else str(note)
            if severity == 0 and not job.visited & _BIT["CLEANUP"]:
                if RANK[job.state] > RANK["CLEANUP"]:
                    return self._reject("invalid_transition", "exception after clean", event)
                self._move(job, "CLEANUP", event, live)
            if live:
                for sink in self.sinks:
                    try:
                        sink.exception(job, etype, severity, event)
                    except Exception as error:
                        self._sink_failed(sink, error)
            return True
        if name == "start":
            if job.t_start is None and job.t_alloc is not None:
                job.t_start = event.timestamp
                if live:
                    latency = event.timestamp - job.t_alloc
                    for sink in self.sinks:
                        try:
                            sink.launched(job, latency, event)
                        except Exception as error:
                            self._sink_failed(sink, error)
            return True
        perilog = _PERILOG.get(name)
        if perilog is not None:
            phase, starting = perilog
            if job.perilog_starts is None:
                job.perilog_starts = {}
            starts = job.perilog_starts.setdefault(phase, [])
            if starting:
                starts.append(event.timestamp)
            elif starts:
                seconds = event.timestamp - starts.pop(0)
                if seconds < 0:
                    return self._reject("negative_duration", f"{name} before its start", event)
                if live:
                    for sink in self.sinks:
                        try:
                            sink.perilog(job, phase, seconds, event)
                        except Exception as error:
                            self._sink_failed(sink, error)
            return True
        if name == "submit":
            return self._reject("duplicate", "a second submit for a known job", event)
        # invalidate, memo, dependency-*, set-flags, resource-update, debug.* and
        # site-defined names: recorded, no state change.
        return True
