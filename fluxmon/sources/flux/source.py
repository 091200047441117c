"""The Flux source: connections, reconnects with backoff, and one reactor per connection."""

from __future__ import annotations

import collections
import contextlib
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Final, Protocol

from structlog.typing import FilteringBoundLogger

from fluxmon.config import FluxSettings
from fluxmon.events import check_text, shown
from fluxmon.sources import Downstream, WatchStats
from fluxmon.sources.flux.bindings import Bindings, FluxUnavailable
from fluxmon.sources.flux.checkpoint import FINISHED_SAVED, Checkpoint, Fingerprint
from fluxmon.sources.flux.connection import Connection, Memory, Position, Start, describe
from fluxmon.sources.flux.delivery import EventDelivery
from fluxmon.sources.flux.gather import Gather
from fluxmon.sources.flux.journal import JournalMode
from fluxmon.sources.flux.resources import ResourceMemory, ResourceStream
from fluxmon.sources.flux.watch import WatchMode

#: The system instance's URI, used when neither the config nor FLUX_URI name one.
SYSTEM_URI: Final = "local:///run/flux/local"
#: Period of the housekeeping timer (stop flag, held cleans, polling, due saves).
TICK: Final = 0.25
#: Seconds between checkpoint saves that carry the metrics (at most one in flight).
SAVE_INTERVAL: Final = 1.0


def _at_once(callback: Callable[[], None]) -> None:
    """``after_written`` with no log writer: nothing is buffered, so now."""
    callback()


def resolve_uri(configured: str | None, environ: Mapping[str, str]) -> str:
    """``--uri``/config, else ``$FLUX_URI``, else the system instance."""
    return configured or environ.get("FLUX_URI") or SYSTEM_URI


class Mode(Protocol):
    """How a connection follows jobs: :class:`JournalMode` or :class:`WatchMode`."""

    def start(self) -> None:
        """Send the first requests."""

    def tick(self, now: float) -> None:
        """Periodic work (``now`` is monotonic)."""


@dataclass
class FluxSource:
    """Feeds a Flux instance's job events into the pipeline (a ``Source``)."""

    settings: FluxSettings
    _: KW_ONLY
    uri: str
    bindings: Bindings
    stats: WatchStats
    log: FilteringBoundLogger
    clock: Callable[[], float] = time.time  # wall clock
    monotonic: Callable[[], float] = time.monotonic
    rng: random.Random = field(default_factory=random.Random)  # reconnect jitter
    checkpoint: Checkpoint | None = None
    #: Runs a callback once the records handed over so far are written (the log
    #: writer's :meth:`~fluxmon.logs.LineWriter.after_written`): the checkpoint never
    #: runs ahead of the output.
    after_written: Callable[[Callable[[], None]], None] = _at_once
    #: Captures the ``flux_*`` counters and histograms
    #: (:meth:`fluxmon.persist.MetricsState.capture`), saved with the position they
    #: belong to. None: positions are saved without them, one per write of the writer.
    capture: Callable[[], object] | None = None
    #: With ``capture``: seconds between saves (one in flight at a time).
    save_interval: float = SAVE_INTERVAL
    memory: Memory = field(default_factory=Memory, init=False)
    #: The resource stream's memory; ``resource_memory.since`` is its checkpoint position.
    resource_memory: ResourceMemory = field(default_factory=ResourceMemory, init=False)
    #: Positions handed to the writer and not yet saved, in order, and the counts the
    #: writer thread has applied (see :meth:`save_position`).
    _positions: collections.deque[tuple[int, Position]] = field(
        default_factory=collections.deque, init=False
    )
    _positions_seq: int = field(default=0, init=False)
    _positions_lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _durable_jobs: dict[int, tuple[int, int]] = field(default_factory=dict, init=False)
    #: The writer thread's fingerprints of active and of finished jobs (the newest
    #: ``FINISHED_SAVED``), as the positions applied so far give them.
    _durable_active: dict[int, Fingerprint] = field(default_factory=dict, init=False)
    _durable_finished: collections.OrderedDict[int, Fingerprint] = field(
        default_factory=collections.OrderedDict, init=False
    )
    #: With ``capture``: the newest position, the newest captured with the metrics, and
    #: whether a save is still in flight and when the next may be taken (monotonic).
    _last_seq: int = field(default=0, init=False)
    _captured_seq: int = field(default=0, init=False)
    _in_flight: bool = field(default=False, init=False)
    _due: float = field(default=0.0, init=False)
    _next_start: Start = field(default=Start.FRESH, init=False)

    def __post_init__(self) -> None:
        """Resume from the checkpoint, if there is one with a timestamp in it."""
        if self.checkpoint is None:
            return
        since, exec_since = self.checkpoint.load(self.log, self.clock())
        if since > 0:
            self.memory.since, self.memory.exec_since = since, exec_since
            self.memory.pending_cleans = set(self.checkpoint.held)
            if self.checkpoint.jobs is not None and self.checkpoint.submits is not None:
                self.memory.resume_jobs = self.checkpoint.jobs
                self.memory.submit_since = self.checkpoint.submits
                self.memory.resume_prints = {**self.checkpoint.finished, **self.checkpoint.active}
                self.memory.resume_finished = frozenset(self.checkpoint.finished)
                # Finished jobs stay remembered until newer ones push them out.
                self._durable_finished.update(self.checkpoint.finished)
                # Exec events delivered before stay delivered until the watch reads them.
                for jobid, (_, execs) in self.checkpoint.jobs.items():
                    if execs:
                        self.memory.exec_count[jobid] = execs
                        self.memory.changed.add(jobid)
            self.resource_memory.since = self.checkpoint.resource_since
            self._next_start = Start.RESUMED
            self.log.info("checkpoint.loaded", path=str(self.checkpoint.path), since=since)

    def save_position(self, position: Position) -> None:
        """Write the position to the checkpoint once the records delivered so far are out.

        Called after each live batch: a SIGKILL then repeats at most the records written
        since the last save (the log writer's batch in flight), and never loses one.
        Positions carry only the jobs that changed; the writer applies every position
        up to the one it saves (in order), so its copy of the counts is exact.
        """
        checkpoint = self.checkpoint
        if checkpoint is None:
            return
        with self._positions_lock:
            self._positions_seq += 1
            seq = self._positions_seq
            self._positions.append((seq, position))
        if self.capture is None:
            self.after_written(lambda: self._save_upto(checkpoint, seq))
            return
        self._last_seq = seq
        self.save_due()

    def save_due(self, *, now: bool = False) -> None:
        """With ``capture``: save the newest position with the metrics, if a save is due.

        Called on the source thread (after each position, at each tick, at a clean
        stop with ``now``): the metrics are captured there, where the position was taken
        and nothing has changed them since, and saved by the writer once the records up
        to that position are out. A save is due when the position moved, the previous
        save is done, and ``save_interval`` has passed: the cost is one capture and one
        fsync per interval, whatever the event rate.
        """
        checkpoint, capture = self.checkpoint, self.capture
        if checkpoint is None or capture is None or self._captured_seq >= self._last_seq:
            return
        clock = self.monotonic()
        if not now and (self._in_flight or clock < self._due):
            return
        metrics = capture()
        seq = self._captured_seq = self._last_seq
        self._in_flight, self._due = True, clock + self.save_interval
        self.after_written(lambda: self._save_upto(checkpoint, seq, metrics))

    def _save_upto(self, checkpoint: Checkpoint, seq: int, metrics: object = None) -> None:
        """On the writer thread: apply positions up to ``seq`` and save the result."""
        durable, active, finished = (
            self._durable_jobs,
            self._durable_active,
            self._durable_finished,
        )
        last: Position | None = None
        with self._positions_lock:
            while self._positions and self._positions[0][0] <= seq:
                last = self._positions.popleft()[1]
                for jobid, counts in last.changes.items():
                    if counts is None:
                        durable.pop(jobid, None)
                    else:
                        durable[jobid] = counts
                for jobid, fingerprint in last.prints.items():
                    if fingerprint is None:
                        active.pop(jobid, None)
                    else:
                        active[jobid] = fingerprint
                for jobid, fingerprint in last.finished:
                    finished[jobid] = fingerprint
                    finished.move_to_end(jobid)
                while len(finished) > FINISHED_SAVED:
                    finished.popitem(last=False)
        if last is not None:
            checkpoint.save(
                last.since,
                last.exec_since,
                self.log,
                last.held,
                last.submits,
                dict(durable),
                metrics,
                (dict(active), dict(finished)),
                last.resource_since,
            )
        self._in_flight = False

    def run(self, downstream: Downstream, stop: threading.Event) -> None:
        """Connect, stream, and reconnect with capped exponential backoff until stopped.

        Raises :class:`FluxUnavailable` when the very first connection fails. A stop
        saves the last position (with the metrics) once its records are out.
        """
        self._run(downstream, stop)
        self.save_due(now=True)

    def _run(self, downstream: Downstream, stop: threading.Event) -> None:
        backoff = self.settings.reconnect_min
        while not stop.is_set():
            try:
                handle = self.bindings.connect(self.uri)
            except OSError as err:
                if self._next_start is not Start.RECONNECTED:  # never connected yet
                    raise FluxUnavailable(
                        f"cannot connect to {self.uri}: {err.strerror or err}"
                    ) from None
                self.log.warning(
                    "source.reconnect_failed", uri=self.uri, error=str(err), retry_in=backoff
                )
                self._pause(downstream, stop, self._jitter(backoff))
                backoff = min(backoff * 2, self.settings.reconnect_max)
                continue
            connection = self._connection(handle, downstream)
            self._next_start = Start.RECONNECTED
            try:
                reason = _Session(connection, stop, self.resource_memory).run()
            finally:
                self.bindings.close(handle)
            caught_up = connection.caught_up
            del connection, handle  # the bindings close a handle with its last reference
            if stop.is_set():
                return
            downstream.disconnected(reason)
            if caught_up:
                backoff = self.settings.reconnect_min
            self._pause(downstream, stop, self._jitter(backoff))
            backoff = min(backoff * 2, self.settings.reconnect_max)

    def _connection(self, handle: Any, downstream: Downstream) -> Connection:
        connected_at = self.clock()
        try:
            version = self.bindings.version(handle)
        except OSError as err:
            self.log.warning("source.version_unknown", error=str(err))
            version = "unknown"
        self._declare_queues(handle, downstream)
        return Connection(
            settings=self.settings,
            uri=self.uri,
            bindings=self.bindings,
            handle=handle,
            downstream=downstream,
            stats=self.stats,
            log=self.log,
            clock=self.clock,
            monotonic=self.monotonic,
            memory=self.memory,
            start=self._next_start,
            flux_version=version,
            connected_at=connected_at,
            save_position=self.save_position if self.checkpoint is not None else None,
            save_due=self.save_due if self.checkpoint is not None else None,
            resource_position=lambda: self.resource_memory.since,
        )

    def _declare_queues(self, handle: Any, downstream: Downstream) -> None:
        """Declare the instance's configured queues (read at each connect) to the sinks.

        Their series are then never pushed into ``other`` by queue names users bring. A
        broker that cannot say (no job-manager yet, an old one) or answers something
        else is logged as ``source.queues_unknown`` and keeps what was declared before.
        """
        try:
            answer = self.bindings.queues(handle)
            names = answer["queues"]
            if type(names) is not list or not all(type(n) is str for n in names):
                raise TypeError(f"queues is not a list of names: {shown(names)}")
            for name in names:
                check_text(name, "queue")
        except OSError as err:
            self.log.warning("source.queues_unknown", error=describe(err))
            return
        except (KeyError, TypeError, ValueError) as err:
            self.log.warning("source.queues_unknown", error=f"{type(err).__name__}: {err}")
            return
        downstream.declare_queues(sorted(names))

    @staticmethod
    def _pause(downstream: Downstream, stop: threading.Event, seconds: float) -> None:
        """Wait ``seconds`` (or until stopped): a deliberate pause, not a stalled loop."""
        downstream.heartbeat(quiet_for=seconds)
        stop.wait(seconds)

    def _jitter(self, seconds: float) -> float:
        """Full jitter in [seconds/2, seconds], so many monitors do not reconnect in step."""
        return seconds * (0.5 + 0.5 * self.rng.random())


class _Session:
    """One connection's reactor: a housekeeping timer and the mode, until lost or stopped."""

    def __init__(
        self, connection: Connection, stop: threading.Event, resources: ResourceMemory
    ) -> None:
        self._connection = connection
        self._stop = stop
        self._resources: ResourceStream | None = ResourceStream(
            connection, connection.downstream, resources
        )
        self._delivery = EventDelivery(connection)
        if self._resources is not None:
            self._resources.on_delivered = self._delivery.mark
        self._mode: Mode
        if connection.settings.mode == "watch":
            self._mode = WatchMode(
                connection, self._delivery, 'watch mode: configured (flux.mode = "watch")'
            )
        else:
            fall_back = self._fall_back if connection.settings.mode == "auto" else None
            self._mode = JournalMode(connection, self._delivery, fall_back)

    def run(self) -> str:
        """Stream until the connection is lost or stop is set; returns why it ended."""
        connection = self._connection
        bindings, handle = connection.bindings, connection.handle
        timer = bindings.timer(handle, TICK, connection.guard(self._tick))
        gather = connection.gather = Gather(bindings, handle, connection.guard)
        try:
            try:
                self._mode.start()
                if self._resources is not None:
                    self._resources.start()
            except OSError as err:  # e.g. EPIPE: connected to a broker that is shutting down
                connection.lose(f"request failed: {describe(err)}")
            # A stop before the reactor runs is lost (libev cancels it): do not run then.
            if connection.lost is None:
                try:
                    bindings.run(handle)
                except OSError as err:
                    connection.lost = connection.lost or f"reactor stopped: {err.strerror or err}"
        finally:
            with contextlib.suppress(OSError, AttributeError):
                gather.close()  # what was taken is delivered (a lost connection's too)
            self._delivery.close()
            with contextlib.suppress(OSError, AttributeError):
                timer.stop()
        return connection.lost or "the event stream ended"

    def _fall_back(self, why: str) -> None:
        """The journal was refused: follow the jobs in watch mode on this connection."""
        self._mode = WatchMode(self._connection, self._delivery, f"watch mode: {why}")
        self._mode.start()

    def _tick(self) -> None:
        connection = self._connection
        connection.downstream.heartbeat()
        if self._stop.is_set():
            connection.bindings.stop(connection.handle)
            return
        now = connection.monotonic()
        self._delivery.release_overdue(now)
        self._mode.tick(now)
        if self._resources is not None:
            self._resources.tick(now)
        if connection.save_due is not None:
            connection.save_due()
