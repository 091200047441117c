"""The thread-safe junction between a source, the tracker, and the HTTP scrapes.

A source thread calls :class:`Pipeline` (the :class:`~fluxmon.sources.Downstream`);
HTTP threads read snapshots through it. One lock serialises the tracker: a batch of
events is applied under one acquisition, and a scrape's snapshot is taken under it.
The pipeline also reports the tracker's sink failures (``fluxmon_internal_errors_total``
and one ``fluxmon.internal_error`` record per sink).

Liveness is progress: the source's loop stamps a heartbeat (each batch applied, each
turn of its loop); a heartbeat older than the stall bound makes the daemon unhealthy.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from structlog.typing import FilteringBoundLogger

from fluxmon.events import MAIN, JobEvent, JobState, ResourceEvent, f58
from fluxmon.logs import LineWriter
from fluxmon.metrics import MetricsSink, Pending, SelfMetrics, Snapshot
from fluxmon.resources import RESOURCE_MODES, QueueSlots, ResourceSnapshot, ResourceTracker
from fluxmon.tracker import Tracker, sink_kind

#: How long a scrape waits for the lock before failing.
LOCK_TIMEOUT = 5.0
#: Seconds without a heartbeat after which the event loop counts as stalled (default).
STALL_SECONDS = 10.0


class Pipeline:
    """Applies source events to the tracker and keeps the daemon's own state."""

    def __init__(
        self,
        tracker: Tracker,
        metrics_sink: MetricsSink,
        self_metrics: SelfMetrics,
        log: FilteringBoundLogger,
        *,
        clock: Callable[[], float] | None = None,
        writer: LineWriter | None = None,
        stall_seconds: float = STALL_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
        resources: ResourceTracker | None = None,
    ) -> None:
        """``clock`` (wall time) measures event lag (None: off); ``writer`` is held per batch.

        ``resources`` gets the resource events (a fresh one with no sinks when None).

        The event loop counts as stalled once ``stall_seconds`` (by ``monotonic``) pass
        without a heartbeat; ``fluxmon_healthy`` says so at each scrape.

        Takes over ``tracker.on_sink_error``: a failing sink is counted under its kind
        (each kind's series exists from the start) and logged once per kind.
        """
        self._writer = writer
        self.tracker = tracker
        self.resources = resources if resources is not None else ResourceTracker()
        self._sink = metrics_sink
        self._self = self_metrics
        self._log = log
        self._clock = clock
        #: The batch's lags, added up and handed to the histogram once per batch.
        self._lag = Pending()
        self._lock = threading.Lock()
        self._connected = False
        self._ready = False
        self._ever_connected = False
        self._last_ts = 0.0
        self._live_events = 0
        self._history_events = 0
        self._disconnect_reason = "not connected yet"
        #: Called once, when history is first caught up (e.g. to show restored metrics).
        self.on_first_caught_up: Callable[[], None] | None = None
        self.source_thread: threading.Thread | None = None
        self._sink_errors_logged: set[str] = set()
        self.stall_seconds = stall_seconds
        self._monotonic = monotonic
        self._deadline = monotonic() + stall_seconds  # the next heartbeat is due by then
        for sink in tracker.sinks:
            self_metrics.internal_errors.labels(sink_kind(sink))
        tracker.on_sink_error = self._sink_failed
        self.resources.on_sink_error = self._sink_failed
        for resource_sink in self.resources.sinks:
            kind = getattr(resource_sink, "kind", type(resource_sink).__name__)
            self_metrics.internal_errors.labels(kind)
        self_metrics.healthy.set_function(lambda: float(self.liveness()[0]))

    @contextmanager
    def _records(self) -> Iterator[None]:
        """Hold this thread's log records until the block ends (and the tracker lock is free).

        With ``log.on_full = "block"`` a full log buffer makes the hand-over wait here,
        outside the lock, so scrapes go on while the pipeline waits.
        """
        writer = self._writer
        if writer is None:
            yield
            return
        writer.hold()
        try:
            yield
        finally:
            writer.release()

    # -- Downstream ---------------------------------------------------------------------

    def heartbeat(self, quiet_for: float = 0.0) -> None:
        """The source's loop is turning; it may sleep on purpose for ``quiet_for`` seconds.

        The loop counts as stalled once ``stall_seconds`` more pass without a heartbeat.
        """
        self._deadline = self._monotonic() + quiet_for + self.stall_seconds

    def _apply(
        self,
        apply: Callable[[Any, bool], object],
        batch: Sequence[JobEvent] | Sequence[ResourceEvent],
        live: bool,
    ) -> float:
        """Apply a batch in order under one lock acquisition; the newest timestamp seen.

        Records are handed over after the lock is released: scrapes never wait on them.
        (What :meth:`_records` does, written out: its generator cost 2 us a batch.)
        """
        writer = self._writer
        if writer is not None:
            writer.hold()
        try:
            with self._lock, self._sink.batch():
                newest = self._last_ts
                for event in batch:
                    apply(event, live)
                    ts = event.timestamp
                    if type(ts) is float and ts > newest:
                        newest = ts
                self._last_ts = newest
        finally:
            if writer is not None:
                writer.release()
        self.heartbeat()
        return newest

    def events(self, batch: Sequence[JobEvent], *, live: bool = True) -> None:
        """Apply a batch of events in order under one lock acquisition."""
        if not batch:
            self.heartbeat()
            return
        newest = self._apply(self.tracker.apply, batch, live)
        count = len(batch)
        if live:
            self._live_events += count
        else:
            self._history_events += count
        self._self.processed.inc(count)
        self._self.last_event.set(newest)
        if live and self._clock is not None:
            # Main events only: exec events carry other hosts' clocks, and where they are
            # read at the job's clean (``flux.exec_read``) their age is the job's runtime.
            now = self._clock()
            lag = self._self.lag
            observe = self._lag.observe
            for event in batch:
                ts = event.timestamp
                if type(ts) is float and event.eventlog == MAIN:
                    observe(lag, max(now - ts, 0.0))
            self._lag.flush()

    def resource_events(self, batch: Sequence[ResourceEvent], *, live: bool = True) -> None:
        """Apply a batch of resource events in order under one lock acquisition."""
        if not batch:
            self.heartbeat()
            return
        newest = self._apply(self.resources.apply, batch, live)
        self._self.processed.inc(len(batch))
        self._self.last_event.set(newest)

    def resource_mode(self, mode: str) -> None:
        """How the source reads resources now (``journal`` or ``poll``); log it."""
        with self._lock:
            self.resources.mode = mode if mode in RESOURCE_MODES else None
        with self._records():
            self._log.info("source.resource_mode", mode=mode)

    def declare_queue_nodes(self, requires: Mapping[str, Sequence[str]]) -> None:
        """Each configured queue's required node properties (none: one ``default`` queue)."""
        with self._lock:
            self.resources.declare_queues(requires)

    def connected(self, detail: str, *, flux_version: str | None = None) -> None:
        """Mark the stream live and log it."""
        if flux_version is not None:
            self._self.set_flux_version(flux_version)
        if self._ever_connected:
            self._self.reconnects.inc()
        self._ever_connected = True
        with self._lock:
            self.resources.connected()
        self._connected = True
        self._self.connected.set(1)
        with self._records():
            version = {} if flux_version is None else {"flux_version": flux_version}
            self._log.info("source.connected", detail=detail, **version)

    def declare_queues(self, names: Sequence[str]) -> None:
        """Declare the instance's queues to the metrics (replacing the previous set); log them."""
        with self._lock:
            self._sink.declare_queues(names)
        with self._records():
            self._log.info("source.queues", queues=",".join(names))

    def disconnected(self, error: str) -> None:
        """Mark the stream down (and not ready) and log why."""
        self._connected = False
        self._ready = False
        self._disconnect_reason = error
        self._self.connected.set(0)
        self._self.ready.set(0)
        with self._records():
            self._log.warning("source.disconnected", error=error)

    def caught_up(self) -> None:
        """History is in: from now on events are live; log the counts."""
        first, self.on_first_caught_up = self.on_first_caught_up, None
        if first is not None:
            first()
        self._ready = True
        self._self.ready.set(1)
        with self._lock:
            tracked = len(self.tracker.jobs)
            rejected = sum(self.tracker.rejected.values())
        with self._records():
            self._log.info(
                "history.caught_up",
                history_events=self._history_events,
                tracked_jobs=tracked,
                rejected=rejected,
            )

    def reject_input(self, reason: str, detail: str) -> None:
        """Count and log input that never became an event."""
        with self._records(), self._lock:
            self.tracker.report_rejection(reason, detail)

    def forget(self, jobids: Iterable[int], reason: str) -> None:
        """Drop jobs that vanished while the source was away, logging each."""
        with self._lock:
            gone = [job for job in map(self.tracker.forget, jobids) if job is not None]
            for job in gone:
                self.resources.release(job.jobid)
        with self._records():
            for job in gone:
                self._log.warning(
                    "job.forgotten", jobid=job.f58, id=job.jobid, state=job.state, reason=reason
                )

    def rewind(
        self, jobid: int, *, events_dropped: int, events_new: int, finished: bool = False
    ) -> None:
        """Forget a job whose history the source found rewritten; log and count it.

        ``was_state`` is the tracker's; after a restart the tracker never saw the job,
        and it is ``INACTIVE`` if the source says it had ``finished``, else null.
        """
        with self._lock:
            was_state = self.tracker.rewind(jobid)
            self.resources.release(jobid)
        if was_state is None and finished:
            was_state = "INACTIVE"
        self._self.rewound.inc()
        with self._records():
            self._log.warning(
                "job.rewound",
                jobid=f58(jobid),
                id=jobid,
                was_state=was_state,
                events_dropped=events_dropped,
                events_new=events_new,
            )

    def _sink_failed(self, where: str, error: Exception) -> None:
        """Count a sink's exception; log its traceback the first time that sink fails."""
        self._self.internal_errors.labels(where).inc()
        if where in self._sink_errors_logged:
            return
        self._sink_errors_logged.add(where)
        self._log.error(
            "fluxmon.internal_error",
            where=where,
            error=f"{type(error).__name__}: {error}",
            traceback="".join(traceback.format_exception(error)),
        )

    # -- reads from other threads -------------------------------------------------------

    def snapshot(self) -> tuple[Snapshot, list[str], int]:
        """Per-(queue label, state) counts and oldest entries, known queues, tracked jobs."""
        if not self._lock.acquire(timeout=LOCK_TIMEOUT):
            # Fail the scrape rather than report an empty cluster.
            msg = f"the tracker has been busy for over {LOCK_TIMEOUT:g}s"
            raise TimeoutError(msg)
        try:
            raw = self.tracker.snapshot()
            label = self._sink.queue_label
            counts: dict[tuple[str, JobState], tuple[int, float]] = {}
            for (queue, state), (count, oldest) in raw.items():
                key = (label(queue), state)
                found = counts.get(key)
                counts[key] = (
                    (count, oldest) if found is None else (found[0] + count, min(found[1], oldest))
                )
            return counts, self._sink.known_queue_labels(), len(self.tracker.jobs)
        finally:
            self._lock.release()

    def resource_snapshot(self) -> ResourceSnapshot:
        """Node counts, per-queue-label cores and GPUs, oldest drain and mode, under the lock."""
        if not self._lock.acquire(timeout=LOCK_TIMEOUT):
            msg = f"the tracker has been busy for over {LOCK_TIMEOUT:g}s"
            raise TimeoutError(msg)
        try:
            snap = self.resources.snapshot()
            label = self._sink.queue_label
            queues: dict[str, QueueSlots] = {}
            for queue, slots in snap.queues.items():
                name = label(queue)
                found = queues.get(name)
                if found is None:
                    queues[name] = slots
                else:  # two queues exported under one label (the cap): add them up
                    for state, count in slots.cores.items():
                        found.cores[state] += count
                    for state, count in slots.gpus.items():
                        found.gpus[state] += count
            snap.queues = queues
            return snap
        finally:
            self._lock.release()

    def liveness(self) -> tuple[bool, str]:
        """Alive while the source thread runs and its loop's heartbeat is recent.

        Never waits: a loop stuck anywhere (holding the tracker, in a log write, in a
        callback) stops beating, and after ``stall_seconds`` this says for how long.
        """
        thread = self.source_thread
        # A thread not started yet (ident None) is not a stopped one: the daemon answers
        # probes before it starts its source.
        if thread is not None and thread.ident is not None and not thread.is_alive():
            return False, "the event source thread has stopped"
        late = self._monotonic() - self._deadline
        if late > 0:
            stalled = late + self.stall_seconds
            return False, (
                f"event loop stalled for {stalled:.1f} s (bound {self.stall_seconds:g} s)"
            )
        return True, "ok"

    def readiness(self) -> tuple[bool, str]:
        """Ready once connected and history is caught up."""
        if not self._connected:
            return False, f"not connected: {self._disconnect_reason}"
        if not self._ready:
            return False, "connected, replaying history"
        return True, "ok"

    @property
    def is_connected(self) -> bool:
        """True while the source is connected."""
        return self._connected

    @property
    def is_ready(self) -> bool:
        """True once connected and caught up."""
        return self._connected and self._ready

    @property
    def live_events(self) -> int:
        """Live events applied so far (for status lines)."""
        return self._live_events
