"""Journal mode: one ``job-manager.events-journal`` stream for every job's main events.

The stream sends each job's events so far (history), then a sentinel, then every new
event as it happens. History is held until the sentinel, then handled as the
connection's :class:`Start` says; events after the sentinel are live.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Callable, Collection
from typing import Final

from fluxmon.events import JOURNAL_ONLY, MAIN, JobEvent, shown
from fluxmon.sources.flux.bindings import JOURNAL_TOPIC, RPCFuture
from fluxmon.sources.flux.connection import Connection, Start, describe
from fluxmon.sources.flux.delivery import (
    HOLD_SECONDS,
    NO_HISTORY,
    EventDelivery,
    refuse,
    to_event,
)

#: Journal refusals that mean "use watch mode" (flux.mode = "auto").
_REFUSALS = {
    errno.EPERM: "the journal answered EPERM: fluxmon is not the instance owner (run it as "
    "the owner, e.g. User=flux, for the cheaper journal mode)",
    errno.ENOSYS: "the journal answered ENOSYS: this flux-core has no events-journal "
    "(older than 0.61)",
}
#: The first flux-core with the events-journal; from it on ENOSYS means job-manager is
#: not loaded (yet): the broker is still starting (rc1) or already stopping.
JOURNAL_SINCE: Final = (0, 61)


#: Most journal responses taken in one callback before the reactor runs again.
MAX_TAKEN: Final = 256


def has_journal(flux_version: str) -> bool:
    """The broker's flux-core (``0.88.0-59-g4a5e79f56``) has the events-journal (False: unknown)."""
    match = re.match(r"v?(\d+)\.(\d+)", flux_version)
    return match is not None and (int(match[1]), int(match[2])) >= JOURNAL_SINCE


def split_history(
    history: list[JobEvent], counts: dict[int, tuple[int, int]], submits: float
) -> tuple[list[JobEvent], list[JobEvent]]:
    """History already delivered, and the news, by what was delivered of each job.

    The journal sends each job's events in order, but not all jobs' events in time
    order (``submit`` and ``validate`` carry job-ingest's earlier timestamps), so a
    single "newest timestamp" would take undelivered events for delivered ones. Here:
    of a job in ``counts`` the first ``main`` events are old; a job not in it was
    delivered whole (and has ended) if its ``submit`` is at or before ``submits`` (the
    journal sends submits in time order), else it is all news.
    """
    old: list[JobEvent] = []
    news: list[JobEvent] = []
    seen: dict[int, int] = {}
    whole: dict[int, bool] = {}
    for event in history:
        jobid = event.jobid
        if event.name in JOURNAL_ONLY:
            old.append(event)  # applies to nothing
            continue
        index = seen.get(jobid, 0)
        seen[jobid] = index + 1
        known = counts.get(jobid)
        if known is not None:
            (old if index < known[0] else news).append(event)
            continue
        if index == 0:
            whole[jobid] = event.timestamp <= submits
        (old if whole[jobid] else news).append(event)
    return old, news


#: A job the broker's history contradicts: (jobid, events dropped, events new, whether
#: it had finished).
Rewind = tuple[int, int, int, bool]


def split_resumed(
    history: list[JobEvent],
    counts: dict[int, tuple[int, int]],
    submits: float,
    prints: dict[int, tuple[int, float]],
    finished: Collection[int] = (),
) -> tuple[list[JobEvent], list[JobEvent], list[Rewind]]:
    """After a restart: history delivered, the news, and the jobs the broker rewrote.

    A job with a fingerprint in the checkpoint (``prints``: main events delivered and
    the last one's timestamp, of active jobs and of the newest finished ones) is
    compared with the broker's history: where the history goes on from it (its event
    at that index has that timestamp), it is split there. Where it does not (the
    broker rolled its KVS back while fluxmon was down too: a job that finished is
    active again, its eventlog is shorter or goes on with other events), the events
    both agree on are its events up to that count at or before that timestamp (events
    the broker wrote after its restart are newer than any it had delivered before),
    they are history, the rest is news, and the job is reported to be rewound (with
    whether it is one of the ``finished``). Other jobs are split as
    :func:`split_history` says.
    """
    by_job: dict[int, list[JobEvent]] = {}
    for event in history:
        if event.name not in JOURNAL_ONLY and event.jobid in prints:
            by_job.setdefault(event.jobid, []).append(event)
    split_at: dict[int, tuple[int, int]] = dict(counts)
    rewinds: list[Rewind] = []
    for jobid, events in by_job.items():
        n, last = prints[jobid]
        agreed = 0
        for event in events[:n]:
            if event.timestamp > last:
                break
            agreed += 1
        if agreed < n or events[n - 1].timestamp != last:
            rewinds.append((jobid, n - agreed, len(events) - agreed, jobid in finished))
        split_at[jobid] = (agreed, 0)
    old, news = split_history(history, split_at, submits)
    return old, news, rewinds


class JournalMode:
    """Follows the events journal on one connection."""

    def __init__(
        self,
        connection: Connection,
        delivery: EventDelivery,
        fall_back: Callable[[str], None] | None,
    ) -> None:
        """``fall_back(reason)`` switches to watch mode when the journal is refused (None: no)."""
        self._connection = connection
        self._delivery = delivery
        self._fall_back = fall_back
        self._responses = 0
        self._history: list[JobEvent] | None = []  # None once the sentinel came
        self._history_jobs: set[int] = set()
        #: Live events taken, not yet delivered (see :class:`Gather`).
        self._live: list[JobEvent] = []
        #: The stream; it lives only as long as this reference (see ``Bindings``).
        self._future: RPCFuture | None = None
        #: After a restart: when to go live at the latest (monotonic; None: not waiting).
        self._live_at: float | None = None
        self._settled = False

    def start(self) -> None:
        """Ask for the journal with its full history."""
        connection = self._connection
        self._future = connection.bindings.journal(connection.handle)
        self._future.then(connection.guard(self._on_response))

    def tick(self, now: float) -> None:
        """Go live once the resumed running jobs' exec eventlogs are read (see below)."""
        if self._live_at is None:
            return
        if self._delivery.rereading and now < self._live_at:
            return
        if not self._settled and now < self._live_at:
            self._settled = True  # one more tick: the rest of each burst is in
            return
        self._live_at = None
        self._connection.go_live()

    def _on_response(self, future: RPCFuture) -> None:
        """Take every response already here; their live events are delivered at the flush.

        The journal sends one response per event; at a busy broker several are queued
        by the time the reactor calls back. Their live events join those gathered since
        the last flush (``connection.gather``), delivered as one batch: the pipeline's
        per-batch work (lock, metrics, log hand-over, checkpoint position) once per
        gathering interval, done with warm caches.
        """
        live: list[JobEvent] = []
        try:
            for _ in range(MAX_TAKEN):  # then back to the reactor (timers, watches)
                if not self._take(future, live) or not future.is_ready():
                    break
        finally:
            if live:
                gather = self._connection.gather
                if gather is None:
                    self._delivery.deliver_main(live, live=True)
                else:  # one batch for the gathering interval's live events
                    self._live.extend(live)
                    gather.soon(self, self._deliver_live)

    def _deliver_live(self) -> None:
        """Deliver the live events gathered since the last flush, as one batch."""
        live, self._live = self._live, []
        if live:
            self._delivery.deliver_main(live, live=True)

    def _take(self, future: RPCFuture, live: list[JobEvent]) -> bool:
        """Handle one response (live events are added to ``live``); False: stop taking."""
        connection = self._connection
        try:
            response = future.get()
        except OSError as err:
            self._on_error(err)
            return False
        except (ValueError, RecursionError) as err:  # a payload that does not decode
            future.reset()
            self._malformed(f"journal response: {err}")
            return True
        future.reset()
        if self._responses == 0:
            connection.downstream.connected(
                f"journal mode: {JOURNAL_TOPIC} on {connection.uri}",
                flux_version=connection.flux_version,
            )
        self._responses += 1
        if not isinstance(response, dict):
            self._malformed(f"journal response is not an object: {shown(response)}")
            return True
        jobid = response.get("id")
        entries = response.get("events")
        if jobid == -1 and not entries:
            self._history_complete()
            return False  # what follows the sentinel starts a batch of its own
        if type(jobid) is not int or jobid < 0 or not isinstance(entries, list):
            self._malformed(f"journal response without id/events: {shown(response)}")
            return True
        batch: list[JobEvent] = []
        for entry in entries:
            event = to_event(connection.downstream, jobid, MAIN, entry, response)
            if event is not None:
                batch.append(event)
        if self._history is not None:
            self._history_jobs.add(jobid)
            self._history.extend(batch)
            return True
        live.extend(batch)
        return True

    def _malformed(self, detail: str) -> None:
        refuse(self._connection.downstream, detail)

    def _on_error(self, err: OSError) -> None:
        connection = self._connection
        refused = self._responses == 0 and err.errno in (errno.EPERM, errno.ENOSYS, errno.EPROTO)
        if refused and err.errno == errno.ENOSYS and has_journal(connection.flux_version):
            # Not a broker without the journal: one whose job-manager is not loaded yet
            # (fluxmon started with the broker) or any more. Try again after the backoff.
            connection.lose(
                f"the journal answered ENOSYS: job-manager is not loaded on this "
                f"flux-core {connection.flux_version} broker (starting or stopping)"
            )
        elif refused and self._fall_back is not None:
            why = _REFUSALS.get(err.errno or 0, f"the journal failed: {err.strerror}")
            connection.log.warning("source.fallback", mode="watch", reason=why)
            self._fall_back(why)
        elif refused:
            connection.lose(f"journal refused: {describe(err)}")
        elif err.errno == errno.ENODATA:
            connection.lose("the journal stream ended (job-manager unloaded or broker stopping)")
        else:
            connection.lose(f"journal error: {describe(err)}")

    def _history_complete(self) -> None:
        """The sentinel: deliver history as the start says, reopen exec watches, go live."""
        connection, delivery = self._connection, self._delivery
        history = sorted(self._history or [], key=lambda event: event.timestamp)
        self._history = None
        since = connection.memory.since
        news: list[JobEvent] = []
        match connection.start:
            case Start.FRESH:
                delivery.exec_history_until = history[-1].timestamp if history else 0.0
                delivery.history_until = history[-1].timestamp if history else NO_HISTORY
                delivery.deliver_main(history, live=False, watch_exec=False)
            case Start.RESUMED:
                memory = connection.memory
                delivery.exec_history_until = memory.exec_since
                if memory.resume_jobs is not None:
                    old, news, rewinds = split_resumed(
                        history,
                        memory.resume_jobs,
                        memory.submit_since,
                        memory.resume_prints,
                        memory.resume_finished,
                    )
                    for jobid, dropped, new, finished in rewinds:
                        delivery.rewind(jobid)
                        connection.downstream.rewind(
                            jobid, events_dropped=dropped, events_new=new, finished=finished
                        )
                else:  # a checkpoint without per-job counts: by time, as it says
                    pending = memory.pending_cleans
                    old = []
                    for event in history:
                        late = event.jobid in pending and event.name in ("clean", "invalidate")
                        (news if event.timestamp > since or late else old).append(event)
                delivery.deliver_main(old, live=False, watch_exec=False)
            case Start.RECONNECTED:
                self._forget_vanished()
                news = self._reconcile(history)
        # Exec watches opened here and at each alloc among the news hold those jobs'
        # cleans until their exec eventlogs are read.
        delivery.resume()
        delivery.deliver_main(news, live=True)
        if connection.start is Start.RESUMED and delivery.rereading:
            # After a restart the running jobs' exec events since the save are counted
            # again from the saved counters: caught up (and the restored counters shown)
            # once each reopened watch has answered, its burst of history read (the
            # next tick), or at most HOLD_SECONDS.
            self._live_at = connection.monotonic() + HOLD_SECONDS
            self._settled = False
        else:
            connection.go_live()
        delivery.mark()  # the first start's history horizon is durable from here

    def _reconcile(self, history: list[JobEvent]) -> list[JobEvent]:
        """After a reconnect: what of the history to deliver live; rewinds rewritten jobs.

        A job fluxmon delivered events of is compared with the broker's history by its
        main-event timestamps (``Memory.delivered``). Where the history goes on from what
        was delivered, the rest is new (even at or before ``since``). Where it does not (a
        rank-0 broker that was killed rolled its KVS back to its last checkpoint: a job
        that finished is active again, its eventlog is shorter, or goes on with other
        events, see flux-core's ``job-manager/restart.c`` ``restart_from_kvs``), the
        broker's word wins: the job is forgotten, the events both agree on are delivered
        again as history and the rest live. Jobs not remembered (finished before the
        last ``FINISHED_REMEMBERED``, or never delivered) are split as a restart splits
        jobs its checkpoint does not list (:func:`split_history`): whole if their
        ``submit`` is at or before ``submit_since`` (delivered and ended), all news if
        after.
        """
        memory, delivery, downstream = (
            self._connection.memory,
            self._delivery,
            self._connection.downstream,
        )
        by_job: dict[int, list[JobEvent]] = {}
        for event in history:
            by_job.setdefault(event.jobid, []).append(event)
        news: list[JobEvent] = []
        unknown: list[JobEvent] = []
        for jobid, job_events in by_job.items():
            known = memory.delivered(jobid)
            if known is None:
                unknown.extend(job_events)
                continue
            # Journal-only events (annotations) are not in the eventlog: compare without.
            events = [event for event in job_events if event.name not in JOURNAL_ONLY]
            agreed = 0
            for old, event in zip(known, events, strict=False):
                if old != event.timestamp:
                    break
                agreed += 1
            if agreed < len(known):
                dropped = len(known) - agreed
                delivery.rewind(jobid)
                downstream.rewind(jobid, events_dropped=dropped, events_new=len(events) - agreed)
                delivery.deliver_main(events[:agreed], live=False, watch_exec=False)
            news.extend(events[agreed:])
        _, fresh = split_history(unknown, {}, memory.submit_since)
        news.extend(fresh)
        news.sort(key=lambda event: event.timestamp)
        return news

    def _forget_vanished(self) -> None:
        """Jobs tracked before the drop that the new history does not mention are gone."""
        vanished = self._connection.memory.active - self._history_jobs
        if vanished:
            self._connection.downstream.forget(
                sorted(vanished), "absent from the journal after reconnecting"
            )
            for jobid in vanished:
                self._delivery.job_gone(jobid)
