"""Delivery shared by both modes: per-job eventlog watches, exec events, held cleans.

A job's ``guest.exec.eventlog`` is read one of two ways (``flux.exec_read``):

- ``at-clean`` (the default): when the job's ``clean`` comes, one ``job-info.lookup``
  reads the whole exec eventlog, and its exec events are delivered with the clean, in
  one batch. The broker answers one request per job, where a watch costs it a KVS
  watch re-examined at every commit for the job's whole run (on a busy broker the
  largest part of what fluxmon costs it); exec events are counted when the job ends.
- ``live``: a job that reaches ``alloc`` gets a watch on its exec eventlog, and each
  exec event is delivered as it comes.

Either way a job's ``clean`` (or ``invalidate``) is held back while its exec eventlog
is being read, until the read or the watch ends or ``HOLD_SECONDS`` pass; otherwise
late exec events would arrive for a job already gone. Cleans still held when the
connection drops are held again by the next connection, which reads the exec eventlog
again.

Exec watches are opened without WAITCREATE (``FluxBindings.watch``). In flux-core 0.88
job-info's guest watch (``job-info/guest_watch.c``) reads the main eventlog; once it
shows ``start`` but not yet ``release final=true`` it watches ``exec.eventlog`` in the
job's guest namespace with the caller's flags (``guest_namespace_watch``). job-exec
grafts that namespace into the primary one and then removes it when the job ends
(``job-exec.c`` ``ns_move``), before it answers ``release``; a watch that reaches the
guest namespace in between gets ENOTSUP from kvs-watch's getroot, and with
``FLUX_KVS_WAITCREATE`` kvs-watch takes that for a namespace not created yet and waits
for a creation that never comes (``kvs-watch.c`` ``watcher_respond``): the watch never
answers, and every exec event of the job was lost after the hold. Without the flag the
ENOTSUP reaches job-info, which reads the grafted copy instead
(``guest_namespace_watch_continuation`` -> ``main_namespace_watch``). The flag is not
needed: job-info waits for ``start`` on its own (``wait_guest_namespace``), and job-exec
commits ``init`` to the exec eventlog before the job can start
(``ns_create_and_link``). ``benchmarks/exec_watch_race.py`` measures the hang.

Where a job's exec events are still given up (its read or watch outlives the hold,
fails, or is refused by ``flux.max_watches``) it is counted
(``fluxmon_exec_watches_abandoned_total{reason}``) and logged
(``source.exec_abandoned``): exec events are missed only where that counter says so.
"""

from __future__ import annotations

import contextlib
import errno
import math
from collections.abc import Callable, Mapping
from typing import Any, Final

from fluxmon.events import (
    EXEC,
    JOURNAL_ONLY,
    InvalidEvent,
    JobEvent,
    decode_json,
    entry_event,
    shown,
)
from fluxmon.sources import Downstream
from fluxmon.sources.flux.bindings import RPCFuture, WatchFuture
from fluxmon.sources.flux.connection import Connection, Position, describe, errno_name

#: Longest time a job's ``clean`` waits for its exec watch to end.
HOLD_SECONDS: Final = 10.0
#: The checkpoint's ``since`` when a first start found no history at all: every event
#: after it is news (``since`` 0 would mean "no checkpoint").
NO_HISTORY: Final = 1e-06
#: Most characters of a refused payload's description kept in its record.
MAX_DETAIL: Final = 300
#: Watch errors that mean the connection is gone: the session ends, held cleans are
#: held over and the watch is opened again on the next connection.
CONNECTION_ERRORS: Final = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN})


def to_event(
    downstream: Downstream,
    jobid: int,
    eventlog: str,
    entry: Any,
    response: Mapping[str, Any] | None = None,
) -> JobEvent | None:
    """A JobEvent from an eventlog entry; None (refused as malformed) if it is not one.

    ``response`` is the journal response the entry came in: it carries the jobspec
    (with ``submit``) and R (with ``alloc``). The entry is checked as a replay line's is
    (:func:`fluxmon.events.entry_event`): types, depth, numbers, UTF-8.
    """
    jobspec = R = None
    if response is not None and isinstance(entry, Mapping):
        name = entry.get("name")
        if name == "submit":
            jobspec = response.get("jobspec")
        elif name == "alloc":
            R = response.get("R")
    try:
        return entry_event(jobid, eventlog, entry, jobspec, R)
    except InvalidEvent as err:
        refuse(downstream, f"eventlog entry of job {jobid}: {err}: {shown(entry)}")
        return None


def refuse(downstream: Downstream, detail: str) -> None:
    """Refuse a payload as malformed (counted and logged by downstream)."""
    downstream.reject_input("malformed", detail[:MAX_DETAIL])


class EventDelivery:
    """One connection's per-job watches and held cleans, delivering to downstream."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._memory = connection.memory
        self._watches: dict[tuple[int, str], WatchFuture] = {}
        #: Exec eventlog reads awaited (``at-clean``), per job.
        self._reads: dict[int, RPCFuture] = {}
        self._live_exec = connection.settings.exec_read == "live"
        #: Cleans held back per job, and when they are released at the latest (monotonic).
        self._held: dict[int, tuple[list[JobEvent], float]] = {}
        #: Running jobs whose exec watch was reopened by :meth:`resume` and has not
        #: answered yet (their exec eventlog is being read again).
        self.rereading: set[int] = set()
        self._warned_limit = False
        #: Exec events at or before this wall-clock time are history (not counted live).
        self.exec_history_until = -math.inf
        #: Main events at or before this time were a first start's history (0: none).
        self.history_until = 0.0

    # -- the checkpoint ---------------------------------------------------------------

    def mark(self) -> None:
        """Save the position reached once the records delivered so far are written.

        Called after each live delivery and when history is in. The position is what
        has been delivered: the newest main timestamp (or the first start's history
        horizon), the exec horizon, and the jobs whose ``clean`` lies at or before it
        but is held back (so a restart still delivers it).
        """
        connection = self._connection
        memory = self._memory
        if connection.save_position is None:
            memory.changed.clear()
            return
        since = max(memory.since, self.history_until)
        exec_since = max(memory.exec_since, self.exec_history_until)
        held = frozenset(self._held).union(memory.held_over, memory.pending_cleans)
        changes, prints, finished = self._changes()
        connection.save_position(
            Position(
                since,
                exec_since,
                held,
                max(memory.submit_since, self.history_until if self.history_until > 0 else 0.0),
                changes,
                prints,
                finished,
                connection.resource_position(),
            )
        )

    def _changes(
        self,
    ) -> tuple[
        dict[int, tuple[int, int] | None],
        dict[int, tuple[int, float] | None],
        tuple[tuple[int, tuple[int, float]], ...],
    ]:
        """Counts and fingerprints of the jobs changed since the last position.

        A cost in the size of the batch, not in the number of active jobs.
        """
        memory = self._memory
        main_count, exec_count = memory.main_count, memory.exec_count
        changes: dict[int, tuple[int, int] | None] = {}
        prints: dict[int, tuple[int, float] | None] = {}
        finished: list[tuple[int, tuple[int, float]]] = []
        for jobid in memory.changed:
            if jobid in main_count or jobid in exec_count:
                main = main_count.get(jobid, 0)
                changes[jobid] = (main, exec_count.get(jobid, 0))
                stamps = memory.delivered(jobid)
                known = stamps is not None and 0 < main <= len(stamps)
                prints[jobid] = (main, stamps[main - 1]) if known and stamps else None
            else:
                changes[jobid] = prints[jobid] = None
                stamps = memory.finished.get(jobid)
                if stamps:
                    finished.append((jobid, (len(stamps), stamps[-1])))
        memory.changed.clear()
        return changes, prints, tuple(finished)

    # -- main events ------------------------------------------------------------------

    def deliver_main(self, batch: list[JobEvent], *, live: bool, watch_exec: bool = True) -> None:
        """Deliver main events in order; ``watch_exec``: an ``alloc`` opens its exec watch."""
        memory = self._memory
        out: list[JobEvent] = []
        main_count = memory.main_count
        for event in batch:
            jobid = event.jobid
            memory.since = max(memory.since, event.timestamp)
            name = event.name
            in_eventlog = name not in JOURNAL_ONLY  # else not compared nor counted
            last = name in ("clean", "invalidate")
            # What is delivered of each job is kept twice, here only: the timestamps
            # (``applied``, compared with the broker's history on reconnect) and the
            # count of events out (``main_count``, saved in the checkpoint). For an
            # active job they agree; a held clean is in ``applied`` (the job is then
            # in ``finished``) and counted once it is released.
            if in_eventlog:
                memory.applied_to(jobid, event.timestamp, submit=name == "submit", last=last)
            if name == "submit":
                memory.active.add(jobid)
                memory.submit_since = max(memory.submit_since, event.timestamp)
            elif name == "alloc":
                memory.running.add(jobid)
                if watch_exec and self._live_exec:
                    self.watch_exec(jobid)
            elif last:
                if (
                    (jobid, EXEC) in self._watches
                    or jobid in self._held
                    or (live and watch_exec and self._read_exec(jobid))
                ):
                    self._hold(event)
                    continue
                self.job_gone(jobid)
            if in_eventlog and jobid in memory.active:
                main_count[jobid] = main_count.get(jobid, 0) + 1
                memory.changed.add(jobid)
            out.append(event)
        if out:
            self._connection.downstream.events(out, live=live)
            if live:
                self.mark()

    def _hold(self, event: JobEvent) -> None:
        held, deadline = self._held.get(event.jobid, ([], 0.0))
        held.append(event)
        deadline = deadline or self._connection.monotonic() + HOLD_SECONDS
        self._held[event.jobid] = (held, deadline)

    def _release(self, jobid: int, exec_events: list[JobEvent] | None = None) -> None:
        """Deliver the job's held cleans (its exec eventlog is read, or the wait is over).

        ``exec_events``: the job's exec eventlog as read at its clean, delivered first,
        in the same batch as the clean (those already delivered are skipped, those that
        are history go as history).
        """
        held, _ = self._held.pop(jobid, ([], 0.0))
        if not held:
            return
        downstream = self._connection.downstream
        news: list[JobEvent] = []
        if exec_events:
            old: list[JobEvent] = []
            for event in exec_events:
                live = self._exec_live(event)
                if live is not None:
                    (news if live else old).append(event)
            if old:
                downstream.events(old, live=False)
        self.job_gone(jobid)
        news.extend(held)
        downstream.events(news, live=True)
        self.mark()

    def release_overdue(self, now: float) -> None:
        """Stop waiting for exec watches whose job's clean has been held past its deadline."""
        for jobid, (_, deadline) in list(self._held.items()):
            if now >= deadline:
                if self._reads.pop(jobid, None) is not None:
                    self._abandon(
                        jobid,
                        "timeout",
                        f"exec eventlog not read {HOLD_SECONDS:g} s after the job's clean",
                    )
                future = self._watches.get((jobid, EXEC))
                if future is not None:
                    self._abandon(
                        jobid,
                        "timeout",
                        f"exec watch still open {HOLD_SECONDS:g} s after the job's clean",
                    )
                    self._close(jobid, EXEC, future)
                self._release(jobid)

    def _abandon(self, jobid: int, reason: str, detail: str) -> None:
        """Count and log a job whose exec events are given up from here on."""
        connection = self._connection
        connection.stats.exec_abandoned(reason)
        connection.log.warning(
            "source.exec_abandoned",
            id=jobid,
            reason=reason,
            detail=detail,
            received=len(self._memory.exec_seen.get(jobid, ())),
        )

    def job_gone(self, jobid: int) -> None:
        """Forget what is remembered of a job that ended (or vanished)."""
        memory = self._memory
        memory.active.discard(jobid)
        memory.running.discard(jobid)
        memory.exec_seen.pop(jobid, None)
        memory.main_last.pop(jobid, None)
        memory.held_over.pop(jobid, None)
        memory.exec_quiet.pop(jobid, None)
        memory.applied.pop(jobid, None)  # a clean has moved it to ``finished`` already
        memory.pending_cleans.discard(jobid)
        memory.main_count.pop(jobid, None)
        memory.exec_count.pop(jobid, None)
        memory.changed.add(jobid)
        if memory.resume_jobs:
            memory.resume_jobs.pop(jobid, None)

    def rewind(self, jobid: int) -> None:
        """Forget all that is remembered of a job the broker's history rewrote."""
        self.job_gone(jobid)
        memory = self._memory
        memory.applied.pop(jobid, None)
        memory.finished.pop(jobid, None)
        held = self._held.pop(jobid, None)
        self._reads.pop(jobid, None)
        if held is not None and (jobid, EXEC) in self._watches:
            self._close(jobid, EXEC, self._watches[(jobid, EXEC)])
        memory.exec_quiet[jobid] = memory.exec_since

    def resume(self) -> None:
        """Reopen exec watches of running jobs and hold again the cleans held at a drop."""
        memory = self._memory
        if self._live_exec:
            for jobid in sorted(memory.running):
                if self.watch_exec(jobid):
                    self.rereading.add(jobid)
        deadline = self._connection.monotonic() + HOLD_SECONDS
        held_over = sorted(memory.held_over.items())
        memory.held_over.clear()
        for jobid, events in held_over:
            self._held[jobid] = (events, deadline)
            reading = self.watch_exec(jobid) if self._live_exec else self._read_exec(jobid)
            if not reading:
                self._release(jobid)

    def close(self) -> None:
        """Cancel every watch; keep held cleans for the next connection."""
        for jobid, (events, _) in self._held.items():
            self._memory.held_over.setdefault(jobid, []).extend(events)
        self._held.clear()
        self._reads.clear()  # the connection is gone: the next one reads them again
        for (jobid, eventlog), future in list(self._watches.items()):
            self._close(jobid, eventlog, future)

    # -- exec events ------------------------------------------------------------------

    def watch_exec(self, jobid: int) -> bool:
        """Watch a job's exec eventlog (if enabled); True if a watch is open."""
        if not self._connection.settings.exec_events:
            return False
        if (jobid, EXEC) not in self._watches:
            self.watch(jobid, EXEC, self._deliver_exec, lambda: self._release(jobid))
        return (jobid, EXEC) in self._watches

    def _deliver_exec(self, event: JobEvent) -> None:
        live = self._exec_live(event)
        if live is None:
            return  # re-read after a reconnect
        self._connection.downstream.events([event], live=live)
        if live:
            self.mark()

    def _exec_live(self, event: JobEvent) -> bool | None:
        """Note an exec event as delivered: whether it is news; None if it was already."""
        memory = self._memory
        seen = memory.exec_seen.setdefault(event.jobid, set())
        key = (event.name, event.timestamp)
        if key in seen:
            return None
        seen.add(key)
        memory.exec_since = max(memory.exec_since, event.timestamp)
        index = len(seen) - 1  # in the job's exec eventlog
        resumed = memory.resume_jobs.get(event.jobid) if memory.resume_jobs else None
        if resumed is not None:  # the checkpoint says how many were delivered
            live = index >= resumed[1]
        else:  # a rewound job's exec events delivered before it was rewound stay quiet
            quiet = max(self.exec_history_until, memory.exec_quiet.get(event.jobid, -math.inf))
            live = event.timestamp > quiet
        memory.exec_count[event.jobid] = max(index + 1, resumed[1] if resumed else 0)
        memory.changed.add(event.jobid)
        return live

    def _read_exec(self, jobid: int) -> bool:
        """Ask for a job's whole exec eventlog at its clean; True while the answer is awaited.

        False: nothing to wait for (exec events off, the job never reached ``alloc``, or
        the request failed and its exec events are given up, counted and logged).
        """
        if jobid in self._reads:
            return True
        connection = self._connection
        if (
            self._live_exec
            or not connection.settings.exec_events
            or jobid not in self._memory.running
        ):
            return False
        try:
            future = connection.bindings.exec_eventlog(connection.handle, jobid)
        except OSError as err:
            connection.stats.watch_failed(errno_name(err))
            if err.errno in CONNECTION_ERRORS:
                connection.lose(f"exec eventlog not read: {describe(err)}")
                return True  # held over to the next connection, which reads it
            self._abandon(jobid, "error", f"exec eventlog not read: {describe(err)}")
            return False
        self._reads[jobid] = future

        def on_response(response: RPCFuture) -> None:
            gather = connection.gather
            if gather is None:
                self._on_read(jobid, response)
            else:  # read with the interval's other live work
                gather.soon(("exec", jobid), lambda: self._on_read(jobid, response))

        future.then(connection.guard(on_response))
        return True

    def _on_read(self, jobid: int, future: RPCFuture) -> None:
        """The exec eventlog read at the job's clean: deliver its events with the clean."""
        if self._reads.get(jobid) is not future:
            return  # given up (the hold's deadline) or the job rewound
        del self._reads[jobid]
        connection = self._connection
        text: object = ""
        try:
            response = future.get()
        except (ValueError, RecursionError) as err:  # a payload that does not decode
            refuse(connection.downstream, f"exec eventlog of job {jobid}: {err}")
            self._abandon(jobid, "error", f"exec eventlog does not decode: {err}")
        except OSError as err:
            if err.errno in CONNECTION_ERRORS:
                # The clean stays held: close() holds it over to the next connection.
                connection.stats.watch_failed(errno_name(err))
                connection.lose(f"exec eventlog read failed: {describe(err)}")
                return
            if err.errno != errno.ENOENT:  # ENOENT: no exec eventlog (never started)
                connection.stats.watch_failed(errno_name(err))
                self._abandon(jobid, "error", f"exec eventlog not read: {describe(err)}")
        else:
            text = response.get(EXEC) if isinstance(response, dict) else None
            if not isinstance(text, str):
                refuse(
                    connection.downstream,
                    f"exec eventlog of job {jobid}: no {EXEC} string: {shown(response)}",
                )
                self._abandon(jobid, "error", "exec eventlog answer without the eventlog")
                text = ""
        self._release(jobid, self._exec_entries(jobid, str(text)))

    def _exec_entries(self, jobid: int, text: str) -> list[JobEvent]:
        """The events of an exec eventlog's text (one JSON entry a line); bad lines refused."""
        downstream = self._connection.downstream
        out: list[JobEvent] = []
        for line in text.splitlines():
            if not line:
                continue
            try:
                entry = decode_json(line)
            except (ValueError, RecursionError) as err:
                refuse(downstream, f"exec eventlog line of job {jobid}: {err}: {shown(line)}")
                continue
            event = to_event(downstream, jobid, EXEC, entry)
            if event is not None:
                out.append(event)
        return out

    # -- watches ----------------------------------------------------------------------

    def is_watching(self, jobid: int, eventlog: str) -> bool:
        """A watch on the job's eventlog is open."""
        return (jobid, eventlog) in self._watches

    def watch(
        self,
        jobid: int,
        eventlog: str,
        on_event: Callable[[JobEvent], None],
        on_end: Callable[[], None],
    ) -> None:
        """Open a watch (within ``flux.max_watches``); failures are counted by errno."""
        connection = self._connection
        limit = connection.settings.max_watches
        if len(self._watches) >= limit:
            connection.stats.watch_failed("limit")
            if eventlog == EXEC:
                self._abandon(jobid, "limit", f"flux.max_watches ({limit}) reached")
            if not self._warned_limit:
                self._warned_limit = True
                connection.log.warning(
                    "source.watch_limit",
                    limit=limit,
                    detail="flux.max_watches reached; jobs past it are not watched",
                )
            return
        try:
            future = connection.bindings.watch(
                connection.handle, jobid, eventlog, waitcreate=eventlog != EXEC
            )
        except OSError as err:
            connection.stats.watch_failed(errno_name(err))
            if err.errno in CONNECTION_ERRORS:
                connection.lose(f"{eventlog} watch not opened: {describe(err)}")
            elif eventlog == EXEC:
                self._abandon(jobid, "error", f"watch not opened: {describe(err)}")
            return
        self._watches[(jobid, eventlog)] = future
        connection.stats.watch_opened(eventlog)

        def on_response(response: WatchFuture) -> None:
            self._on_watch(jobid, eventlog, response, on_event, on_end)

        future.then(connection.guard(on_response))

    def _on_watch(
        self,
        jobid: int,
        eventlog: str,
        future: WatchFuture,
        on_event: Callable[[JobEvent], None],
        on_end: Callable[[], None],
    ) -> None:
        if (jobid, eventlog) not in self._watches:
            return
        if eventlog == EXEC:
            self.rereading.discard(jobid)
        connection = self._connection
        try:
            entry = future.get_event()
        except (ValueError, RecursionError) as err:  # a payload that does not decode
            refuse(connection.downstream, f"eventlog entry of job {jobid}: {err}")
            return
        except OSError as err:
            connection.stats.watch_failed(errno_name(err))
            connection.log.warning(
                "source.watch_failed", id=jobid, eventlog=eventlog, error=describe(err)
            )
            if err.errno in CONNECTION_ERRORS:
                # Left open: close() holds the job's clean over to the next connection,
                # which opens the watch again and reads what this one did not.
                connection.lose(f"{eventlog} watch failed: {describe(err)}")
                return
            if eventlog == EXEC:
                self._abandon(jobid, "error", f"watch ended: {describe(err)}")
            entry = None
        if entry is None:
            self._close(jobid, eventlog, future, cancel=False)
            on_end()
            return
        event = to_event(self._connection.downstream, jobid, eventlog, entry)
        if event is not None:
            on_event(event)

    def _close(
        self, jobid: int, eventlog: str, future: WatchFuture, *, cancel: bool = True
    ) -> None:
        """Forget a watch; cancel it unless its stream already ended (no RPC for nothing)."""
        if eventlog == EXEC:
            self.rereading.discard(jobid)
        if self._watches.pop((jobid, eventlog), None) is None:
            return
        self._connection.stats.watch_closed(eventlog)
        if cancel:
            with contextlib.suppress(OSError):
                future.cancel(stop=True)
