"""The Flux binding surface fluxmon uses, and the one place that imports ``flux``.

:class:`Bindings` is the protocol the rest of the source is written against (the test
suite's fake implements it too); :class:`FluxBindings` is the real one, on flux-core's
Python bindings, reading responses through flux-core's C API where it can.
"""

from __future__ import annotations

import errno
import os
import sys
import sysconfig
import time
from collections.abc import Callable
from typing import Any, Final, Protocol

from fluxmon.events import EXEC, decode_json
from fluxmon.sources import SourceUnavailable

JOURNAL_TOPIC: Final = "job-manager.events-journal"
#: The job-manager's list of configured queues (flux-core src/modules/job-manager/queue.c).
QUEUE_LIST_TOPIC: Final = "job-manager.queue-list"
#: The resource eventlog stream (owner only), the status ``flux resource status`` shows
#: (any user) and the instance's config object (any user): flux-core
#: src/modules/resource/{reslog,status}.c, src/modules/config/config.c.
RESOURCE_JOURNAL_TOPIC: Final = "resource.journal"
RESOURCE_STATUS_TOPIC: Final = "resource.status"
CONFIG_TOPIC: Final = "config.get"
#: One job's KVS keys (flux-core src/modules/job-info/lookup.c): any key under the job's
#: directory, ``guest.exec.eventlog`` included once job-exec has grafted the guest
#: namespace into the primary one (before ``release final=true``).
LOOKUP_TOPIC: Final = "job-info.lookup"
#: How long the reactor sleeps once nothing is waiting (:meth:`FluxBindings.run`).
PACE_SECONDS: Final = 0.02


class FluxUnavailable(SourceUnavailable):
    """Flux cannot be reached (or its bindings imported) when fluxmon starts."""


def missing_bindings(error: ImportError) -> str:
    """Why ``import flux`` failed, and the one command that fixes it for this Python."""
    purelib = sysconfig.get_path("purelib")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    return (
        f"the flux module cannot be imported by {sys.executable} ({error}); "
        f"run `flux python --get-path > {purelib}/flux-core.pth` "
        f"(this Python is {version}; it must be the same minor version as `flux python --version`)"
    )


class RPCFuture(Protocol):
    """A streaming RPC future (``flux.rpc.RPC``)."""

    def then(self, callback: Callable[[Any], None]) -> Any:
        """Call ``callback(future)`` on each response."""

    def get(self) -> Any:
        """The response payload; raises OSError (ENODATA at the end of the stream).

        A payload that does not decode raises ValueError or RecursionError (the caller
        still resets the future).
        """

    def reset(self) -> None:
        """Re-arm for the next response."""

    def is_ready(self) -> bool:
        """The next response is already here (after ``reset``: another was queued)."""


class WatchFuture(Protocol):
    """A ``flux.job.event.JobEventWatchFuture``."""

    def then(self, callback: Callable[[Any], None]) -> Any:
        """Call ``callback(future)`` on each event."""

    def get_event(self) -> Any:
        """The next entry (a mapping: ``name``, ``timestamp``, ``context``), None at the end.

        An entry that does not decode raises ValueError or RecursionError, the future
        already re-armed for the next one (``_FastWatch``; the bindings' own
        ``JobEventWatchFuture`` decodes before it re-arms, so there such an entry ends the
        watch's callbacks: fluxmon uses it only on a bindings layout without ``_flux``).
        """

    def cancel(self, stop: bool = False) -> None:
        """Stop watching."""


class Alarm(Protocol):
    """A one-shot reactor timer, disarmed until :meth:`arm`."""

    def arm(self) -> object:
        """Fire once, the timer's delay from now (again from now if already armed)."""

    def stop(self) -> object:
        """Disarm."""


class Bindings(Protocol):
    """The few Flux calls fluxmon makes; :class:`FluxBindings` is the real one.

    A future or timer lives only as long as the caller keeps a reference to it: once
    collected, its stream ends silently (no callback, no error), and a handle with
    nothing outstanding does not notice the broker going away.
    """

    def connect(self, uri: str) -> Any:
        """Open a handle; raises OSError when the broker cannot be reached."""

    def version(self, handle: Any) -> str:
        """The broker's flux-core version."""

    def journal(self, handle: Any) -> RPCFuture:
        """Start the events-journal stream with full history."""

    def queues(self, handle: Any) -> Any:
        """The job-manager's ``job-manager.queue-list`` answer: the configured queues."""

    def resource_journal(self, handle: Any) -> RPCFuture:
        """Start the ``resource.journal`` stream (history, sentinel, live)."""

    def resource_status(self, handle: Any) -> RPCFuture:
        """Ask for the ``resource.status`` payload (one response)."""

    def config(self, handle: Any) -> Any:
        """The instance's config object (``config.get``, what ``flux config get`` shows)."""

    def watch(self, handle: Any, jobid: int, eventlog: str, *, waitcreate: bool) -> WatchFuture:
        """Watch one job's eventlog from its start; ``waitcreate``: wait for it to be created.

        Without ``waitcreate`` an eventlog that does not exist yet ends the watch with
        ENOENT. See :meth:`FluxBindings.watch` for why exec watches go without it.
        """

    def exec_eventlog(self, handle: Any, jobid: int) -> RPCFuture:
        """Read a job's whole exec eventlog (one response: ``{"guest.exec.eventlog": text}``).

        For a job whose ``clean`` has come: one lookup, where a watch costs the broker a
        KVS watch for the job's whole run. ENOENT: the job has no exec eventlog (it never
        started) or is gone.
        """

    def job_list(self, handle: Any, since: float) -> RPCFuture:
        """All users' jobs that are active or became inactive after ``since``."""

    def timer(self, handle: Any, interval: float, callback: Callable[[], None]) -> Any:
        """A started repeating timer in the handle's reactor."""

    def alarm(self, handle: Any, after: float, callback: Callable[[], None]) -> Alarm:
        """A one-shot timer in the handle's reactor, disarmed until armed."""

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
    kept, so ``then`` is the bindings' own; but ``reset`` here is the C one, which does
    not renew the bindings' keep-alive count (``flux.future._THEN_HANDLES``): after its
    first callback the future lives only as long as the caller references this object.
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
        return decode_json(self._ffi.string(raw)) if raw else None

    def reset(self) -> None:
        """Re-arm for the next response."""
        self._lib.flux_future_reset(self._handle)

    def is_ready(self) -> bool:
        """The next response is already here (a reset moved a queued one in)."""
        return bool(self._lib.flux_future_is_ready(self._handle))


class _FastWatch(_CFuture):
    """An eventlog watch (``WatchFuture``)."""

    __slots__ = ()

    def get_event(self) -> Any:
        """The next entry as a dict (re-arming the future), None at the end (ENODATA)."""
        if self._lib.flux_job_event_watch_get(self._handle, self._buf) < 0:
            # ENODATA or an error response: either ends the stream, so no cancel RPC is
            # owed when the future is collected (one on a lost connection fails with
            # EPIPE, printed to stderr as "Exception ignored in ... __del__").
            error = self._error()  # reads errno first
            self._future.needs_cancel = False
            if error.errno == errno.ENODATA:
                return None
            raise error
        text = self._ffi.string(self._buf[0])
        self._lib.flux_future_reset(self._handle)  # first: a payload refused keeps the watch
        return decode_json(text)

    def cancel(self, stop: bool = False) -> None:
        """Stop watching (the bindings' own cancel); raises OSError on a lost connection.

        Tried once: a failed cancel is not retried when the future is collected.
        """
        try:
            self._future.cancel(stop=stop)
        finally:
            self._future.needs_cancel = False
            if stop:
                self._future.stop()


class _Alarm:
    """An :class:`Alarm` on a one-shot ``flux.core.watchers.TimerWatcher``."""

    __slots__ = ("_watcher",)

    def __init__(self, watcher: Any) -> None:
        self._watcher = watcher

    def arm(self) -> None:
        """Re-arm from now (``flux_timer_watcher_reset``) and start."""
        self._watcher.reset()

    def stop(self) -> None:
        """Stop the watcher."""
        self._watcher.stop()


class FluxBindings:
    """The real binding surface, on flux-core's Python bindings (``import flux``)."""

    def __init__(self) -> None:
        try:
            import flux
            import flux.constants
            import flux.job
            import flux.job.event
        except ImportError as err:
            raise FluxUnavailable(missing_bindings(err)) from None
        self._flux = flux
        try:
            from _flux._core import ffi, lib

            self._c: tuple[Any, Any] | None = (ffi, lib)
        except ImportError:  # a bindings layout without _flux: use the public objects
            self._c = None
        #: Handles (by id) whose paced :meth:`run` is to return at its next turn.
        self._stopping: set[int] = set()

    def connect(self, uri: str) -> Any:
        """Open a handle to ``uri``."""
        return self._flux.Flux(uri)

    def version(self, handle: Any) -> str:
        """The broker's ``version`` attribute."""
        return str(handle.attr_get("version"))

    def journal(self, handle: Any) -> RPCFuture:
        """The raw streaming RPC: errors reach the caller (flux's JournalConsumer hides them)."""
        flags = self._flux.constants.FLUX_RPC_STREAMING
        future = handle.rpc(JOURNAL_TOPIC, {"full": True}, 0, flags)
        if self._c is not None:
            return _FastRPC(future, *self._c)
        rpc: RPCFuture = future
        return rpc

    def watch(self, handle: Any, jobid: int, eventlog: str, *, waitcreate: bool) -> WatchFuture:
        """``event_watch_async``, with ``FLUX_JOB_EVENT_WATCH_WAITCREATE`` if ``waitcreate``.

        WAITCREATE must not be given for ``guest.exec.eventlog``: job-info passes it on to
        kvs-watch when it watches the job's guest namespace, and kvs-watch (0.88) takes a
        namespace that is already removed for one not yet created and waits for it
        forever, so a watch that reaches the guest namespace just after the job's end
        never answers (``delivery`` has the detail). It is not needed there either:
        job-info waits for ``start`` itself, and the exec eventlog exists by then.
        """
        event = self._flux.job.event
        flags = self._flux.constants.FLUX_JOB_EVENT_WATCH_WAITCREATE if waitcreate else 0
        future = event.JobEventWatchFuture(
            event.RAW.event_watch(handle, int(jobid), eventlog, flags)
        )
        if self._c is not None:
            return _FastWatch(future, *self._c)
        watch: WatchFuture = future
        return watch

    def exec_eventlog(self, handle: Any, jobid: int) -> RPCFuture:
        """``job-info.lookup`` of ``guest.exec.eventlog`` (any user, for their own jobs)."""
        future = handle.rpc(LOOKUP_TOPIC, {"id": int(jobid), "keys": [EXEC], "flags": 0})
        if self._c is not None:
            return _FastRPC(future, *self._c)
        rpc: RPCFuture = future
        return rpc

    def resource_journal(self, handle: Any) -> RPCFuture:
        """The raw streaming RPC (an empty payload: flux-core's consumer sends none)."""
        flags = self._flux.constants.FLUX_RPC_STREAMING
        future = handle.rpc(RESOURCE_JOURNAL_TOPIC, {}, 0, flags)
        if self._c is not None:
            return _FastRPC(future, *self._c)
        rpc: RPCFuture = future
        return rpc

    def resource_status(self, handle: Any) -> RPCFuture:
        """``resource.status``, answered by rank 0 (one response)."""
        future = handle.rpc(RESOURCE_STATUS_TOPIC, None, 0)
        if self._c is not None:
            return _FastRPC(future, *self._c)
        rpc: RPCFuture = future
        return rpc

    def config(self, handle: Any) -> Any:
        """The config object, from the nearest broker."""
        return handle.rpc(CONFIG_TOPIC).get()

    def queues(self, handle: Any) -> Any:
        """``{"queues": [name, ...]}``, the named queues of the instance's config (any user)."""
        return handle.rpc(QUEUE_LIST_TOPIC).get()

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

    def alarm(self, handle: Any, after: float, callback: Callable[[], None]) -> Alarm:
        """A one-shot ``TimerWatcher``; armed by its ``reset`` (from now, from scratch)."""
        return _Alarm(handle.timer_watcher_create(after, lambda *_: callback(), repeat=0.0))

    def run(self, handle: Any) -> None:
        """Run the reactor (paced, where the C API is at hand); OSError when lost.

        Not the bindings' ``reactor_run``: on the main thread (``fluxmon record``) that
        answers SIGINT itself (a signal watcher stops the reactor and raises
        KeyboardInterrupt), and fluxmon's own handler never runs. Here SIGINT and
        SIGTERM alike run fluxmon's handler, which sets the stop flag the source's timer
        checks.
        """
        if self._c is None:
            handle.flux_reactor_run(handle.get_reactor(), 0)
            handle.raise_if_exception()  # an exception a callback left (a classmethod)
            return
        self._paced(handle, *self._c)

    def _paced(self, handle: Any, ffi: Any, lib: Any) -> None:
        """The reactor turned without blocking while messages wait, asleep between bursts.

        Run blocking, the reactor wakes up for every message a busy broker sends (about
        1,600 a second at this machine's peak), and each wake-up costs a context switch
        and cold caches. Here it sleeps :data:`PACE_SECONDS` once nothing is waiting, so
        what arrived meanwhile is taken in one go, one message per turn (``handle_cb`` in
        flux-core's ``msg_handler.c`` receives one per turn). Timers fire at most that
        late. Ends as the blocking run does: at :meth:`stop`, with the exception a
        callback left, with OSError when the reactor stops on an error, or when nothing
        is left to watch.
        """
        key = id(handle)
        self._stopping.discard(key)
        reactor, raw = handle.get_reactor(), handle.handle
        turn, pollevents, nowait, pollin = (
            lib.flux_reactor_run,
            lib.flux_pollevents,
            lib.FLUX_REACTOR_NOWAIT,
            lib.FLUX_POLLIN,
        )
        sleep = time.sleep
        try:
            while True:
                active = turn(reactor, nowait)
                handle.raise_if_exception()  # an exception a callback left (a classmethod)
                if active < 0:
                    code = ffi.errno
                    raise OSError(code, os.strerror(code))
                if key in self._stopping or active == 0:
                    return
                events = pollevents(raw)  # -1 on a failed handle: its turns will say so
                if events < 0 or not events & pollin:
                    sleep(PACE_SECONDS)
        finally:
            self._stopping.discard(key)

    def stop(self, handle: Any) -> None:
        """``reactor_stop`` (a paced run returns at its next turn)."""
        self._stopping.add(id(handle))
        handle.reactor_stop()

    def close(self, handle: Any) -> None:
        """Nothing: the bindings close a handle when its last reference goes."""
