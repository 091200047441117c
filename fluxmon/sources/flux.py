"""The real Flux source: the only module that imports ``flux``.

Journal mode (the default): one ``job-manager.events-journal`` streaming RPC gives
every main-eventlog event of every job, history first, then a sentinel, then live
events. Watch mode (the fallback where the journal answers EPERM or ENOSYS, or when
configured): jobs are discovered by polling ``job-list`` and each one's main eventlog
is watched with ``event_watch``. In both modes a job that reaches ``alloc`` gets a
watch on its ``guest.exec.eventlog`` (``flux.exec_events``).

Everything runs in one Flux reactor on the source thread. Callbacks never raise (an
escaping exception would stop the reactor): each is wrapped, and a failure is logged
and counted. A repeating timer checks the stop flag, releases held events and, in
watch mode, polls job-list.

Ordering: the journal runs ahead of exec watches, so a job's ``clean`` is held back
while its exec watch is still open (until the watch ends, at most
``HOLD_SECONDS``); otherwise late exec events would arrive for a job already gone.

Reconnects: the tracker outlives a session. On reconnect, history events at or
before the newest timestamp already delivered are skipped (``since``), newer ones
are delivered as live (they happened while fluxmon was away), and tracked jobs the
new history does not mention are forgotten (purged, or the instance restarted).
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

from structlog.typing import FilteringBoundLogger

from fluxmon.config import FluxSettings
from fluxmon.events import EMPTY_CONTEXT, EXEC, MAIN, JobEvent
from fluxmon.sources import Downstream, SourceUnavailable, WatchStats

#: The system instance's URI, used when neither the config nor FLUX_URI name one.
SYSTEM_URI: Final = "local:///run/flux/local"
#: Longest time a job's ``clean`` waits for its exec watch to end.
HOLD_SECONDS: Final = 10.0
#: Period of the housekeeping timer (stop flag, held events, polling).
TICK: Final = 0.25
#: Seconds between checkpoint writes (and one at exit).
CHECKPOINT_EVERY: Final = 5.0
CHECKPOINT_FILE: Final = "fluxmon.checkpoint.json"
JOURNAL_TOPIC: Final = "job-manager.events-journal"
BINDINGS_HINT: Final = (
    "the flux Python bindings are not importable; make them visible to fluxmon's Python "
    "(e.g. `flux python --get-path > $(python -c 'import site; "
    "print(site.getsitepackages()[0])')/flux.pth`, or create the venv with "
    "--system-site-packages)"
)


class FluxUnavailable(SourceUnavailable):
    """Flux cannot be reached (or its bindings imported) when fluxmon starts."""


def resolve_uri(configured: str | None, environ: Mapping[str, str]) -> str:
    """``--uri``/config, else ``$FLUX_URI``, else the system instance."""
    return configured or environ.get("FLUX_URI") or SYSTEM_URI


def errno_name(error: OSError) -> str:
    """``ENOENT``-style name of an OSError's errno (``E?`` when it has none)."""
    code = error.errno
    return errno.errorcode.get(code, f"E{code}") if code is not None else "E?"


class Checkpoint:
    """The newest event timestamps delivered, kept on disk across restarts.

    With it, events that happen while fluxmon is down (restart, upgrade) are counted
    and logged once when it comes back, instead of being taken for history.
    """

    def __init__(self, directory: Path) -> None:
        self.path = directory / CHECKPOINT_FILE
        self._written: tuple[float, float] | None = None
        self._warned = False

    def load(self, log: FilteringBoundLogger) -> tuple[float, float]:
        """(since, exec_since) from the file; (0, 0) when absent or unreadable (logged)."""
        try:
            data = json.loads(self.path.read_text())
            since, exec_since = float(data["since"]), float(data.get("exec_since", 0.0))
            if not (math.isfinite(since) and math.isfinite(exec_since)):
                raise ValueError("not finite")
        except FileNotFoundError:
            return 0.0, 0.0
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.warning("checkpoint.unreadable", path=str(self.path), error=str(err))
            return 0.0, 0.0
        self._written = (since, exec_since)
        return since, exec_since

    def save(self, since: float, exec_since: float, log: FilteringBoundLogger) -> None:
        """Write atomically (temporary file, then rename), only when it changed."""
        if since <= 0 or self._written == (since, exec_since):
            return
        tmp = self.path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps({"since": since, "exec_since": exec_since}) + "\n")
            os.replace(tmp, self.path)
        except OSError as err:
            if not self._warned:
                self._warned = True
                log.warning("checkpoint.unwritable", path=str(self.path), error=str(err))
            return
        self._written = (since, exec_since)


# -- the binding surface fluxmon uses ---------------------------------------------------


class RPCFuture(Protocol):
    """A streaming RPC future (``flux.rpc.RPC``)."""

    def then(self, callback: Callable[[Any], None]) -> Any:
        """Call ``callback(future)`` on each response."""

    def get(self) -> Any:
        """The response payload; raises OSError (ENODATA at the end of the stream)."""

    def reset(self) -> None:
        """Re-arm for the next response."""


class WatchFuture(Protocol):
    """A ``flux.job.event.JobEventWatchFuture``."""

    def then(self, callback: Callable[[Any], None]) -> Any:
        """Call ``callback(future)`` on each event."""

    def get_event(self) -> Any:
        """The next event (``.name``, ``.timestamp``, ``.context``), None at the end."""

    def cancel(self, stop: bool = False) -> None:
        """Stop watching."""


class Bindings(Protocol):
    """The few Flux calls fluxmon makes; :class:`FluxBindings` is the real one."""

    def connect(self, uri: str) -> Any:
        """Open a handle; raises OSError when the broker cannot be reached."""

    def version(self, handle: Any) -> str:
        """The broker's flux-core version."""

    def journal(self, handle: Any) -> RPCFuture:
        """Start the events-journal stream with full history."""

    def watch(self, handle: Any, jobid: int, eventlog: str) -> WatchFuture:
        """Watch one job's eventlog from its start (waiting for it to be created)."""

    def job_list(self, handle: Any, since: float) -> RPCFuture:
        """All users' jobs that are active or became inactive after ``since``."""

    def timer(self, handle: Any, interval: float, callback: Callable[[], None]) -> Any:
        """A started repeating timer in the handle's reactor."""

    def run(self, handle: Any) -> None:
        """Run the reactor until stopped; raises OSError when the connection is lost."""

    def stop(self, handle: Any) -> None:
        """Make ``run`` return."""

    def close(self, handle: Any) -> None:
        """Release the handle."""


class _CFuture:
    """A bindings future whose responses are read through flux-core's C API (``_flux._core``).

    ``flux.rpc.RPC.get`` and ``JobEventWatchFuture.get_event`` rebuild cffi wrappers on
    every call; on the journal that doubled fluxmon's CPU per event (76 µs against 40 µs
    per response, measured with a bare consumer on a 0.88 broker). The Python future is
    kept, so ``then`` and its reference keeping are the bindings' own.
    """

    __slots__ = ("_buf", "_ffi", "_future", "_handle", "_lib")

    def __init__(self, future: Any, ffi: Any, lib: Any) -> None:
        self._future = future
        self._handle = future.pimpl.handle
        self._ffi = ffi
        self._lib = lib
        self._buf = ffi.new("char **")

    def then(self, callback: Callable[[Any], None]) -> Any:
        """Call ``callback(self)`` on each response."""
        return self._future.then(lambda _future: callback(self))

    def _error(self) -> OSError:
        code = self._ffi.errno
        text = self._lib.flux_future_error_string(self._handle)
        return OSError(code, self._ffi.string(text).decode() if text else os.strerror(code))


class _FastRPC(_CFuture):
    """A streaming RPC (``RPCFuture``)."""

    __slots__ = ()

    def get(self) -> Any:
        """The decoded payload; OSError with the future's errno and error string."""
        if self._lib.flux_rpc_get(self._handle, self._buf) < 0:
            raise self._error()
        raw = self._buf[0]
        return json.loads(self._ffi.string(raw)) if raw else None

    def reset(self) -> None:
        """Re-arm for the next response."""
        self._lib.flux_future_reset(self._handle)


class _FastWatch(_CFuture):
    """An eventlog watch (``WatchFuture``)."""

    __slots__ = ()

    def get_event(self) -> Any:
        """The next entry as a dict (re-arming the future), None at the end (ENODATA)."""
        if self._lib.flux_job_event_watch_get(self._handle, self._buf) < 0:
            if self._ffi.errno == errno.ENODATA:
                self._future.needs_cancel = False  # ended: no cancel RPC when collected
                return None
            raise self._error()
        entry = json.loads(self._ffi.string(self._buf[0]))
        self._lib.flux_future_reset(self._handle)
        return entry

    def cancel(self, stop: bool = False) -> None:
        """Stop watching (the bindings' own cancel)."""
        self._future.cancel(stop=stop)


class FluxBindings:
    """The real binding surface, on flux-core's Python bindings (``import flux``)."""

    def __init__(self) -> None:
        try:
            import flux
            import flux.constants
            import flux.job
            import flux.job.event
        except ImportError as err:
            raise FluxUnavailable(f"{BINDINGS_HINT} ({err})") from None
        self._flux = flux
        try:
            from _flux._core import ffi, lib

            self._c: tuple[Any, Any] | None = (ffi, lib)
        except ImportError:  # a bindings layout without _flux: use the public objects
            self._c = None

    def connect(self, uri: str) -> Any:
        """Open a handle to ``uri``."""
        return self._flux.Flux(uri)

    def version(self, handle: Any) -> str:
        """The broker's ``version`` attribute."""
        return str(handle.attr_get("version"))

    def journal(self, handle: Any) -> RPCFuture:
        """The raw streaming RPC (the consumer class sorts and hides errors)."""
        flags = self._flux.constants.FLUX_RPC_STREAMING
        future = handle.rpc(JOURNAL_TOPIC, {"full": True}, 0, flags)
        if self._c is not None:
            return _FastRPC(future, *self._c)
        rpc: RPCFuture = future
        return rpc

    def watch(self, handle: Any, jobid: int, eventlog: str) -> WatchFuture:
        """``event_watch_async`` with WAITCREATE, so a watch opened early does not ENOENT."""
        event = self._flux.job.event
        flags = self._flux.constants.FLUX_JOB_EVENT_WATCH_WAITCREATE
        future = event.JobEventWatchFuture(
            event.RAW.event_watch(handle, int(jobid), eventlog, flags)
        )
        if self._c is not None:
            return _FastWatch(future, *self._c)
        watch: WatchFuture = future
        return watch

    def job_list(self, handle: Any, since: float) -> RPCFuture:
        """``job_list`` for every user with no entry cap."""
        future: RPCFuture = self._flux.job.job_list(
            handle,
            max_entries=0,
            attrs=["state", "t_inactive"],
            userid=self._flux.constants.FLUX_USERID_UNKNOWN,
            since=since,
        )
        return future

    def timer(self, handle: Any, interval: float, callback: Callable[[], None]) -> Any:
        """A repeating reactor timer."""
        watcher = handle.timer_watcher_create(interval, lambda *_: callback(), repeat=interval)
        watcher.start()
        return watcher

    def run(self, handle: Any) -> None:
        """``reactor_run``; a lost connection surfaces as OSError."""
        handle.reactor_run()

    def stop(self, handle: Any) -> None:
        """``reactor_stop``."""
        handle.reactor_stop()

    def close(self, handle: Any) -> None:
        """Nothing: the bindings close a handle when its last reference goes."""


# -- the source ------------------------------------------------------------------------


@dataclass
class _Memory:
    """What the source remembers across sessions (the tracker outlives them too)."""

    since: float = 0.0  # newest main-eventlog timestamp delivered
    exec_since: float = 0.0  # newest exec-eventlog timestamp delivered
    resumed: bool = False  # since/exec_since come from a previous run's checkpoint
    active: set[int] = field(default_factory=set)  # jobs submitted and not yet clean
    running: set[int] = field(default_factory=set)  # jobs allocated and not yet clean
    exec_seen: dict[int, set[tuple[str, float]]] = field(default_factory=dict)
    main_last: dict[int, float] = field(default_factory=dict)  # watch mode: per job
    done: dict[int, float] = field(default_factory=dict)  # watch mode: finished, when
    held_over: dict[int, list[JobEvent]] = field(default_factory=dict)  # cleans held at a drop
    sessions: int = 0


class FluxSource:
    """Feeds a Flux instance's job events into the pipeline (a ``Source``)."""

    def __init__(
        self,
        settings: FluxSettings,
        *,
        uri: str,
        bindings: Bindings,
        stats: WatchStats,
        log: FilteringBoundLogger,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        checkpoint: Checkpoint | None = None,
    ) -> None:
        self.settings = settings
        self.uri = uri
        self.bindings = bindings
        self.stats = stats
        self.log = log
        self.clock = clock
        self.monotonic = monotonic
        self.rng = rng or random.Random()
        self.memory = _Memory()
        self.checkpoint = checkpoint
        if checkpoint is not None:
            since, exec_since = checkpoint.load(log)
            if since > 0:
                self.memory.since, self.memory.exec_since = since, exec_since
                self.memory.resumed = True
                log.info("checkpoint.loaded", path=str(checkpoint.path), since=since)

    def save_checkpoint(self) -> None:
        """Write the newest delivered timestamps (if there is a checkpoint)."""
        if self.checkpoint is not None:
            self.checkpoint.save(self.memory.since, self.memory.exec_since, self.log)

    def run(self, downstream: Downstream, stop: threading.Event) -> None:
        """Connect, stream, and reconnect with capped exponential backoff until stopped.

        Raises :class:`FluxUnavailable` when the very first connection fails.
        """
        try:
            self._run(downstream, stop)
        finally:
            self.save_checkpoint()

    def _run(self, downstream: Downstream, stop: threading.Event) -> None:
        backoff = self.settings.reconnect_min
        while not stop.is_set():
            try:
                handle = self.bindings.connect(self.uri)
            except OSError as err:
                if self.memory.sessions == 0:
                    raise FluxUnavailable(
                        f"cannot connect to {self.uri}: {err.strerror or err}"
                    ) from None
                self.log.warning(
                    "source.reconnect_failed", uri=self.uri, error=str(err), retry_in=backoff
                )
                stop.wait(self._jitter(backoff))
                backoff = min(backoff * 2, self.settings.reconnect_max)
                continue
            self.memory.sessions += 1
            session = _Session(self, handle, downstream, stop)
            try:
                reason = session.run()
            finally:
                session.close()
                self.bindings.close(handle)
            caught_up = session.caught_up
            del session, handle  # the bindings close a handle with its last reference
            if stop.is_set():
                return
            downstream.disconnected(reason)
            if caught_up:
                backoff = self.settings.reconnect_min
            stop.wait(self._jitter(backoff))
            backoff = min(backoff * 2, self.settings.reconnect_max)

    def _jitter(self, seconds: float) -> float:
        """Full jitter in [seconds/2, seconds], so many monitors do not reconnect in step."""
        return seconds * (0.5 + 0.5 * self.rng.random())


class _Session:
    """One connection: its reactor, journal or job-list poll, and watches."""

    def __init__(
        self, source: FluxSource, handle: Any, downstream: Downstream, stop: threading.Event
    ) -> None:
        self.src = source
        self.h = handle
        self.down = downstream
        self.stop_flag = stop
        self.mem = source.memory
        self.first = source.memory.sessions == 1
        self.settings = source.settings
        self.mode = "watch" if self.settings.mode == "watch" else "journal"
        self.caught_up = False
        self.catching_up = False
        self.lost: str | None = None
        self.journal_future: RPCFuture | None = None
        self.history: list[JobEvent] = []
        self.history_jobs: set[int] = set()
        self.history_cutoff = 0.0
        self.next_checkpoint = 0.0
        self.watches: dict[tuple[int, str], WatchFuture] = {}
        self.held: dict[int, tuple[list[JobEvent], float]] = {}
        self.poll_future: RPCFuture | None = None
        self.next_poll = 0.0
        self.poll_since = 0.0
        self.start_time = source.clock()
        self.watch_cutoff = self.start_time
        self.timer: Any = None
        self.warned_limit = False

    # -- lifecycle ----------------------------------------------------------------------

    def run(self) -> str:
        """Stream until the connection is lost (returns why) or stop is set."""
        b = self.src.bindings
        version = "unknown"
        try:
            version = b.version(self.h)
        except OSError as err:
            self.src.log.warning("source.version_unknown", error=str(err))
        self.flux_version = version
        self.timer = b.timer(self.h, TICK, self._guard(self._tick))
        if self.mode == "journal":
            self._start_journal()
        else:
            self._start_watch_mode('watch mode: configured (flux.mode = "watch")')
        try:
            b.run(self.h)
        except OSError as err:
            self.lost = self.lost or f"reactor stopped: {err.strerror or err}"
        return self.lost or "the event stream ended"

    def close(self) -> None:
        """Cancel every watch and the timer; keep held cleans for the next session."""
        for jobid, (events, _) in self.held.items():
            self.mem.held_over.setdefault(jobid, []).extend(events)
        self.held.clear()
        for (jobid, eventlog), future in list(self.watches.items()):
            self._close_watch(jobid, eventlog, future)
        if self.timer is not None:
            with contextlib.suppress(OSError, AttributeError):
                self.timer.stop()

    def _lose(self, reason: str) -> None:
        """The connection is gone: remember why and leave the reactor."""
        if self.lost is None:
            self.lost = reason
        self.src.bindings.stop(self.h)

    def _guard(self, callback: Callable[..., None]) -> Callable[..., None]:
        """Wrap a reactor callback so nothing escapes into the reactor."""

        def guarded(*args: Any) -> None:
            try:
                callback(*args)
            except Exception as err:
                self.src.log.exception(
                    "source.callback_failed", error=f"{type(err).__name__}: {err}"
                )

        return guarded

    def _tick(self) -> None:
        if self.stop_flag.is_set():
            self.src.bindings.stop(self.h)
            return
        now = self.src.monotonic()
        if now >= self.next_checkpoint:
            self.next_checkpoint = now + CHECKPOINT_EVERY
            self.src.save_checkpoint()
        for jobid, (_, deadline) in list(self.held.items()):
            if now >= deadline:
                for eventlog in (EXEC,):
                    future = self.watches.get((jobid, eventlog))
                    if future is not None:
                        self._close_watch(jobid, eventlog, future)
                self._release(jobid)
        if self.mode == "watch" and self.poll_future is None and now >= self.next_poll:
            self._poll()

    # -- journal mode ---------------------------------------------------------------------

    def _start_journal(self) -> None:
        future = self.src.bindings.journal(self.h)
        self.journal_future = future
        self.journal_responses = 0
        future.then(self._guard(self._on_journal))

    def _on_journal(self, future: RPCFuture) -> None:
        try:
            resp = future.get()
        except OSError as err:
            self._journal_error(err)
            return
        future.reset()
        if self.journal_responses == 0:
            self.down.connected(
                f"journal mode: {JOURNAL_TOPIC} on {self.src.uri}", flux_version=self.flux_version
            )
        self.journal_responses += 1
        if not isinstance(resp, dict):
            self.down.reject_input(
                "malformed", f"journal response is not an object: {resp!r}"[:300]
            )
            return
        jobid = resp.get("id")
        events = resp.get("events")
        if jobid == -1 and not events:
            self._sentinel()
            return
        if type(jobid) is not int or jobid < 0 or not isinstance(events, list):
            self.down.reject_input(
                "malformed", f"journal response without id/events: {resp!r}"[:300]
            )
            return
        batch = []
        for entry in events:
            event = self._event(jobid, MAIN, entry, resp)
            if event is not None:
                batch.append(event)
        if not self.caught_up:
            self.history_jobs.add(jobid)
            self.history.extend(batch)
            return
        self._deliver_main(batch, live=True)

    def _journal_error(self, err: OSError) -> None:
        code = err.errno
        if self.journal_responses == 0 and code in (errno.EPERM, errno.ENOSYS, errno.EPROTO):
            if self.settings.mode == "auto":
                why = {
                    errno.EPERM: "the journal answered EPERM: fluxmon is not the instance "
                    "owner (run it as the owner, e.g. User=flux, for the cheaper journal mode)",
                    errno.ENOSYS: "the journal answered ENOSYS: this flux-core has no "
                    "events-journal (older than 0.61)",
                }.get(code, f"the journal failed: {err.strerror}")
                self.src.log.warning("source.fallback", mode="watch", reason=why)
                self.mode = "watch"
                self._start_watch_mode(f"watch mode: {why}")
                return
            self._lose(f"journal refused: {errno_name(err)} {err.strerror or ''}".strip())
            return
        if code == errno.ENODATA:
            self._lose("the journal stream ended (job-manager unloaded or broker stopping)")
            return
        self._lose(f"journal error: {errno_name(err)} {err.strerror or ''}".strip())

    def _sentinel(self) -> None:
        """History is complete: rebuild state, reconcile, open exec watches, go live."""
        mem = self.mem
        history = sorted(self.history, key=lambda e: e.timestamp)
        self.history = []
        if history:
            self.history_cutoff = history[-1].timestamp
        if self.first and mem.resumed:
            # Restarted from a checkpoint: what came before it rebuilds state silently;
            # what came after happened while fluxmon was down, so it is counted once.
            self.history_cutoff = mem.exec_since
            self._deliver_main([e for e in history if e.timestamp <= mem.since], live=False)
            self._resume()
            self.catching_up = True
            self._deliver_main([e for e in history if e.timestamp > mem.since], live=True)
            self.catching_up = False
            self._go_live()
            return
        if self.first:
            self._deliver_main(history, live=False)
            self._go_live()
            for jobid in sorted(mem.running):
                self._open_exec_watch(jobid)
            return
        vanished = mem.active - self.history_jobs
        if vanished:
            self.down.forget(sorted(vanished), "absent from the journal after reconnecting")
            for jobid in vanished:
                self._job_gone(jobid)
                mem.held_over.pop(jobid, None)
        self._resume()
        # Events newer than the last one delivered happened while fluxmon was away: they
        # are new, so they are counted. Exec watches opened above and on each catch-up
        # alloc hold those jobs' clean until their exec eventlogs are read.
        self.catching_up = True
        self._deliver_main([e for e in history if e.timestamp > mem.since], live=True)
        self.catching_up = False
        self._go_live()

    def _go_live(self) -> None:
        self.caught_up = True
        self.down.caught_up()

    def _resume(self) -> None:
        """After a reconnect: reopen exec watches of running jobs, re-hold held cleans."""
        mem = self.mem
        for jobid in sorted(mem.running):
            self._open_exec_watch(jobid)
        deadline = self.src.monotonic() + HOLD_SECONDS
        for jobid, events in sorted(mem.held_over.items()):
            self.held[jobid] = (events, deadline)
            if not self._open_exec_watch(jobid):
                self._release(jobid)
        mem.held_over.clear()

    # -- watch mode -----------------------------------------------------------------------

    def _start_watch_mode(self, detail: str) -> None:
        self.down.connected(detail, flux_version=self.flux_version)
        mem = self.mem
        if self.first and mem.resumed:
            self.watch_cutoff = self.history_cutoff = mem.since
            self.poll_since = max(mem.since - 1.0, 0.0)
        elif self.first:
            self.watch_cutoff = self.history_cutoff = self.start_time
            self.poll_since = self.start_time
        else:
            self.watch_cutoff = self.history_cutoff = 0.0
            self.poll_since = max(mem.since - 1.0, 0.0)
            self._resume()
        self.next_poll = 0.0
        self._poll()

    def _poll(self) -> None:
        since = self.poll_since
        self.poll_started = self.src.clock()
        self.poll_jobs: list[Mapping[str, Any]] = []
        self.poll_responses = 0
        try:
            future = self.src.bindings.job_list(self.h, since)
        except OSError as err:
            self._lose(f"job-list failed: {errno_name(err)} {err.strerror or ''}".strip())
            return
        self.poll_future = future
        future.then(self._guard(self._on_poll))

    def _on_poll(self, future: RPCFuture) -> None:
        if future is not self.poll_future:
            return  # a finished poll's stream: nothing more to read from it
        try:
            resp = future.get()
        except OSError as err:
            if err.errno == errno.ENODATA:
                self._poll_done()
            else:
                self.poll_future = None
                self._lose(f"job-list failed: {errno_name(err)} {err.strerror or ''}".strip())
            return
        jobs = resp.get("jobs") if isinstance(resp, dict) else None
        if isinstance(jobs, list):
            self.poll_jobs.extend(j for j in jobs if isinstance(j, dict))
        if self.poll_responses == 0 and not (isinstance(resp, dict) and resp.get("version")):
            self._poll_done()  # version 0 of the protocol: one response, no stream
            return
        self.poll_responses += 1
        future.reset()

    def _poll_done(self) -> None:
        mem = self.mem
        self.poll_future = None
        self.poll_since = max(self.poll_started - 2 * self.settings.poll_interval, 0.0)
        self.next_poll = self.src.monotonic() + self.settings.poll_interval
        horizon = self.poll_started - 4 * self.settings.poll_interval
        for jobid, when in list(mem.done.items()):
            if when < horizon:
                del mem.done[jobid]
        for job in self.poll_jobs:
            found = job.get("id")
            if type(found) is not int:
                continue
            if found in mem.done:
                # Still listed: keep it done (a job refused with EPERM is not retried
                # every few polls); it is pruned once job-list stops listing it.
                mem.done[found] = self.poll_started
                continue
            if (found, MAIN) not in self.watches:
                self._open_watch(found, MAIN)
        if not self.caught_up:
            self.caught_up = True
            self.down.caught_up()

    # -- per-job watches ------------------------------------------------------------------

    def _open_exec_watch(self, jobid: int) -> bool:
        """Watch a job's exec eventlog (if enabled); True if a watch is open."""
        if not self.settings.exec_events:
            return False
        if (jobid, EXEC) not in self.watches:
            self._open_watch(jobid, EXEC)
        return (jobid, EXEC) in self.watches

    def _open_watch(self, jobid: int, eventlog: str) -> None:
        if len(self.watches) >= self.settings.max_watches:
            self.src.stats.watch_failed("limit")
            if not self.warned_limit:
                self.warned_limit = True
                self.src.log.warning(
                    "source.watch_limit",
                    limit=self.settings.max_watches,
                    detail="flux.max_watches reached; jobs past it are not watched",
                )
            return
        try:
            future = self.src.bindings.watch(self.h, jobid, eventlog)
        except OSError as err:
            self.src.stats.watch_failed(errno_name(err))
            return
        self.watches[(jobid, eventlog)] = future
        self.src.stats.watch_opened(eventlog)
        future.then(self._guard(lambda f: self._on_watch(jobid, eventlog, f)))

    def _close_watch(
        self, jobid: int, eventlog: str, future: WatchFuture, *, cancel: bool = True
    ) -> None:
        """Forget a watch; cancel it unless its stream already ended (no RPC for nothing)."""
        if self.watches.pop((jobid, eventlog), None) is None:
            return
        self.src.stats.watch_closed(eventlog)
        if cancel:
            with contextlib.suppress(OSError):
                future.cancel(stop=True)

    def _on_watch(self, jobid: int, eventlog: str, future: WatchFuture) -> None:
        if (jobid, eventlog) not in self.watches:
            return
        try:
            entry = future.get_event()
        except OSError as err:
            self.src.stats.watch_failed(errno_name(err))
            self.src.log.warning(
                "source.watch_failed",
                id=jobid,
                eventlog=eventlog,
                error=f"{errno_name(err)} {err.strerror or ''}".strip(),
            )
            self._watch_ended(jobid, eventlog, future)
            return
        if entry is None:
            self._watch_ended(jobid, eventlog, future)
            return
        event = self._event(jobid, eventlog, entry, None)
        if event is None:
            return
        if eventlog == MAIN:
            live = not (self.first and event.timestamp <= self.watch_cutoff)
            self._deliver_main([event], live=live)
        else:
            self._deliver_exec(event)

    def _watch_ended(self, jobid: int, eventlog: str, future: WatchFuture) -> None:
        self._close_watch(jobid, eventlog, future, cancel=False)
        if eventlog == EXEC:
            self._release(jobid)
        else:
            self.mem.done[jobid] = self.src.clock()

    # -- delivery -------------------------------------------------------------------------

    def _event(
        self, jobid: int, eventlog: str, entry: Any, resp: Mapping[str, Any] | None
    ) -> JobEvent | None:
        """A JobEvent from an eventlog entry (dict or EventLogEvent); None if malformed."""
        try:
            name = entry["name"]
            timestamp = entry["timestamp"]
            context = entry.get("context") or EMPTY_CONTEXT
        except (KeyError, TypeError, AttributeError):
            name = timestamp = None
        if (
            type(name) is not str
            or type(timestamp) not in (float, int)
            or not math.isfinite(timestamp)
            or not isinstance(context, Mapping)
        ):
            self.down.reject_input("malformed", f"eventlog entry of job {jobid}: {entry!r}"[:300])
            return None
        jobspec = R = None
        if resp is not None:
            if name == "submit":
                jobspec = resp.get("jobspec")
            elif name == "alloc":
                R = resp.get("R")
        if type(timestamp) is int:
            timestamp = float(timestamp)
        return JobEvent(jobid, eventlog, name, timestamp, context, jobspec, R)

    def _deliver_main(self, batch: list[JobEvent], *, live: bool) -> None:
        """Deliver main events, holding a job's clean while its exec watch is open."""
        mem = self.mem
        out: list[JobEvent] = []
        for event in batch:
            jobid = event.jobid
            if self.mode == "watch":
                if event.timestamp <= mem.main_last.get(jobid, -1.0):
                    continue  # re-read after a reconnect: already delivered
                mem.main_last[jobid] = event.timestamp
            mem.since = max(mem.since, event.timestamp)
            name = event.name
            if name == "submit":
                mem.active.add(jobid)
            elif name == "alloc":
                mem.running.add(jobid)
                if self.caught_up or self.catching_up or self.mode == "watch":
                    self._open_exec_watch(jobid)
            elif name in ("clean", "invalidate"):
                if (jobid, EXEC) in self.watches or jobid in self.held:
                    held, deadline = self.held.get(jobid, ([], 0.0))
                    held.append(event)
                    self.held[jobid] = (held, deadline or self.src.monotonic() + HOLD_SECONDS)
                    continue
                self._job_gone(jobid)
            out.append(event)
        if out:
            self.down.events(out, live=live)

    def _deliver_exec(self, event: JobEvent) -> None:
        seen = self.mem.exec_seen.setdefault(event.jobid, set())
        key = (event.name, event.timestamp)
        if key in seen:
            return  # re-read after a reconnect
        seen.add(key)
        live = not (self.first and event.timestamp <= self.history_cutoff)
        self.mem.exec_since = max(self.mem.exec_since, event.timestamp)
        self.down.events([event], live=live)

    def _release(self, jobid: int) -> None:
        held, _ = self.held.pop(jobid, ([], 0.0))
        if held:
            self._job_gone(jobid)
            self.down.events(held, live=True)

    def _job_gone(self, jobid: int) -> None:
        mem = self.mem
        mem.active.discard(jobid)
        mem.running.discard(jobid)
        mem.exec_seen.pop(jobid, None)
        mem.main_last.pop(jobid, None)
