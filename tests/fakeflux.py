"""A fake of the Flux binding surface ``fluxmon.sources.flux`` uses, on a virtual clock.

:class:`FakeBroker` holds jobs (main eventlog entries with their jobspec and R, an exec
eventlog) and a timeline: each entry becomes visible at a virtual time (its own
timestamp, plus a per-job delay for exec entries). :class:`FakeBindings` implements the
``Bindings`` protocol; ``run(handle)`` is a reactor that delivers ready futures, then
advances the virtual clock to the next timeline item or timer tick. Nothing sleeps and
nothing runs on another thread. :class:`VirtualStop` is a ``threading.Event`` whose
``wait`` advances the virtual clock instead of sleeping (the source's reconnect
backoff) and records what was asked for.

What each behaviour was checked against. Python files are flux-core 0.88's bindings,
``/opt/flux/lib/flux/python3.11/flux``; C files were read in a public flux-core snapshot
(not installed here); data files are under ``tests/data``.

- One callback per response, until ``reset()``; ``reset()`` drops the current response
  and re-arms; a second ``then()`` raises ``OSError(EEXIST)``: ``future.py``
  ``Future.then``/``Future.reset`` (the one-shot continuation itself is libflux
  ``future.c``, C).
- A future with a pending callback is kept alive by a count (+1 at ``then``, +1 at each
  ``reset``, -1 after each callback run); at 0 it is forgotten, so a future the caller
  keeps no reference to is collected and its callback never runs again (the reactor
  here holds futures only weakly): ``future.py`` ``_THEN_HANDLES`` and
  ``continuation_callback``. ``FluxBindings`` re-arms journal and watch futures with
  the C ``flux_future_reset`` (``bindings.py`` ``_CFuture``), which leaves the count
  alone, so those are kept alive by the count only until their first callback: here
  ``c_reset`` (set by ``FakeBindings.journal``/``watch``).
- An exception escaping a future callback is stored, the reactor stops with an error,
  the future is reset and ``stop()``-ped, and ``reactor_run`` re-raises the exception:
  ``future.py`` ``continuation_callback``, ``core/handle.py`` ``Flux.reactor_run`` /
  ``Flux.raise_if_exception``. The same for a timer callback: ``core/watchers.py``
  ``timeout_handler_wrapper``. A timer is ``after=interval, repeat=interval``:
  ``core/watchers.py`` ``TimerWatcher`` and ``FluxBindings.timer``.
- ``RPC.get`` decodes a fresh dict from the JSON payload each call and raises
  ``OSError(errno)`` for an error response: ``rpc.py`` ``RPC.get``/``get_str``.
  Responses are kept here as JSON text for that reason.
- Watch futures: ``get_event`` = ``get(autoreset=True)``; ENODATA gives ``None`` (and
  no reset); other errors raise ``OSError``; ``cancel(stop=True)`` cancels and then
  ``stop()``s so no callback runs again; ``__del__`` cancels a watch not yet cancelled
  or ended (here: counted in ``FakeBroker.collected_watches``): ``kvs.py``
  ``WatchImplementation.get``/``cancel``/``__del__``,
  ``job/event.py`` ``JobEventWatchFuture.get_event``. Events are dict subclasses with
  ``name``/``timestamp``/``context`` (``context`` defaults to ``{}``): ``eventlog.py``
  ``EventLogEvent``. A cancelled watch (without ``stop``) ends with ENODATA: C
  ``job-info/guest_watch.c`` ``send_eventlog_watch_cancel`` callers respond ENODATA.
- The exec (guest) eventlog watch first looks the job up (ENOENT if unknown or purged,
  EPERM if another user's and the caller is not the owner), waits for ``start`` in the
  main eventlog whatever the flags (ENODATA if the job ends without starting), then
  reads the exec eventlog, which exists from ``start`` on (job-exec commits ``init``
  before the job can start): C ``job-info/guest_watch.c``
  ``get_main_eventlog_continuation``, ``wait_guest_namespace_continuation``,
  ``guest_namespace_watch``; ``job-exec/job-exec.c`` ``ns_create_and_link``. When the
  job ends, job-exec grafts the guest namespace into the primary one and removes it,
  then answers ``release`` (``job-exec.c`` ``ns_move``; ``FakeJob.ns_removed``). A watch
  that reaches the guest namespace after its removal but before ``release`` is visible
  never answers with WAITCREATE (kvs-watch takes the removed namespace for one not yet
  created: ``kvs-watch/kvs-watch.c`` ``watcher_respond``; ``FakeWatch.hung``), and
  without it reads the grafted copy (``guest_namespace_watch_continuation`` ->
  ``main_namespace_watch``). Measured on a 0.88 broker with
  ``benchmarks/exec_watch_race.py``. The watch ends (ENODATA) once the job is inactive
  and every exec line is sent (design doc section 3). A main eventlog watch sends every
  line, waits for the eventlog to be committed with WAITCREATE (ENOENT without): C
  ``job-info/watch.c`` ``watch_key`` (WAITCREATE becomes ``FLUX_KVS_WAITCREATE``); it
  ends after ``clean``: ``job-info/watch.c`` ``check_eventlog_end``.
- Journal: history is one response per job (all its events so far, sorted, ``jobspec``
  when ``submit`` is among them, ``R`` when ``alloc`` is), then the sentinel
  ``{"id": -1, "events": []}``, then one response per event as it happens, ``jobspec``
  on ``submit`` and ``R`` on ``alloc``, ``context`` omitted when empty:
  ``tests/data/journal-raw-responses.jsonl``; the sentinel test and client-side
  ``since`` filter: ``abc/journal.py`` ``JournalConsumerBase.is_empty_response`` /
  ``__enqueue_response``. ``annotations`` appear in the journal only, never in an
  eventlog read from the KVS: compare ``journal-raw-responses.jsonl`` with
  ``tests/data/scenarios/*.jsonl`` (per-job eventlogs: none there).
  EPERM for a guest and ENOSYS without the service: design doc section 3 (not checked).
- ``job_list``: streaming (``FLUX_RPC_STREAMING``), responses ``{"jobs": [...],
  "version": 1}`` then ENODATA; ``userid=FLUX_USERID_UNKNOWN`` lists every user's jobs;
  ``since`` keeps active jobs and inactive ones with ``t_inactive > since``:
  ``job/list.py`` ``JobListRPC``/``JobListRPC.get_jobs``/``job_list`` (the ``since``
  semantics are job-list's, C, not checked here).
- Resources (:class:`FakeResources`): ``resource.journal`` answers history as flux-core
  0.88's ``reslog.c`` ``send_backlog`` does (``resource-define`` alone in its response
  with ``"R"``, other entries in batches of up to 100, in posting order), then the
  sentinel ``{"events": []}``, then one response per new entry (``resource-define`` with
  ``"R"``); a guest gets EPERM "Request requires owner credentials" (recorded:
  ``tests/data/resources/steps.json``); ``resource.status`` is ``status.c``
  ``prepare_status_payload`` (drains grouped by rounded timestamp and reason,
  ``drain.c`` ``draininfo_drain_rank`` for ``overwrite``); ``config.get`` answers the
  config object. Checked against ``tests/data/resources``.
- A lost connection: every outstanding future fails with ECONNRESET and
  ``reactor_run`` then raises ``OSError(ECONNRESET)``; ``connect`` raises
  ``OSError(ECONNREFUSED)`` while the broker is down. Modelled on libflux (C), not
  checked here. ``version()`` returns "0.88.0" (``attr_get("version")``).
"""

from __future__ import annotations

import dataclasses
import errno
import heapq
import itertools
import json
import os
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Final

from fluxmon.events import EXEC, MAIN

DATA: Final = Path(__file__).parent / "data"
RAW_JOURNAL: Final = DATA / "journal-raw-responses.jsonl"
VERSION: Final = "0.88.0"
OWNER: Final = 0
#: Events the journal sends that are never written to an eventlog.
JOURNAL_ONLY: Final = frozenset({"annotations"})
#: job-list state bits (flux.constants FLUX_JOB_STATE_*).
STATE_BITS: Final = {
    "NEW": 1, "DEPEND": 2, "PRIORITY": 4, "SCHED": 8, "RUN": 16, "CLEANUP": 32, "INACTIVE": 64,
}  # fmt: skip
#: Seconds between job-exec removing a guest namespace and the job's ``release``.
NS_RACE: Final = 0.005
_ADVANCE: Final = {
    "submit": "NEW", "validate": "DEPEND", "depend": "PRIORITY", "priority": "SCHED",
    "alloc": "RUN", "finish": "CLEANUP", "clean": "INACTIVE",
}  # fmt: skip

Entry = dict[str, Any]


class FakeMisuse(RuntimeError):
    """The caller did something the real bindings would block or abort on."""


class FakeEvent(dict[str, Any]):
    """An eventlog entry like ``flux.eventlog.EventLogEvent``."""

    def __init__(self, entry: str | dict[str, Any]) -> None:
        super().__init__(json.loads(entry) if isinstance(entry, str) else entry)
        self.setdefault("context", {})

    @property
    def name(self) -> Any:
        """The event name."""
        return self["name"]

    @property
    def timestamp(self) -> Any:
        """The event timestamp."""
        return self["timestamp"]

    @property
    def context(self) -> Any:
        """The event context (``{}`` when the entry has none)."""
        return self["context"]


def entry(name: str, timestamp: float, **context: Any) -> Entry:
    """An eventlog entry as Flux writes it (no ``context`` key when empty)."""
    out: Entry = {"timestamp": timestamp, "name": name}
    if context:
        out["context"] = context
    return out


@dataclasses.dataclass
class FakeJob:
    """One job: its journal entries, jobspec, R and exec eventlog, and fault knobs."""

    jobid: int
    main: list[Entry]
    jobspec: dict[str, Any] | None = None
    R: dict[str, Any] | None = None
    exec_events: list[Entry] = dataclasses.field(default_factory=list)
    userid: int = OWNER
    #: Exec lines become visible this long after their timestamp (a slow watch).
    exec_delay: float = 0.0
    #: When job-exec removes the guest namespace (None: ``NS_RACE`` before ``release``).
    ns_removed: float | None = None
    #: The main eventlog reaches the KVS this long after ``submit`` (WAITCREATE race).
    kvs_lag: float = 0.0
    #: When an inactive job is purged (its eventlogs are gone).
    purge_at: float | None = None
    #: A watch on this eventlog (or a read of it) fails at once with this errno.
    watch_errno: dict[str, int] = dataclasses.field(default_factory=dict)
    #: A read of the exec eventlog (``job-info.lookup``) is answered this long after it
    #: is asked (None: never).
    exec_read_delay: float | None = 0.0
    # -- state, driven by the broker's timeline
    main_shown: int = 0
    exec_shown: int = 0
    exec_done: bool = False
    purged: bool = False
    #: Bumped by a rollback: timeline items scheduled before it no longer apply.
    epoch: int = 0

    def __post_init__(self) -> None:
        self.main.sort(key=lambda e: e["timestamp"])
        self.exec_events.sort(key=lambda e: e["timestamp"])

    @property
    def eventlog(self) -> list[Entry]:
        """The main eventlog as the KVS holds it (no journal-only events)."""
        return [e for e in self.main if e["name"] not in JOURNAL_ONLY]

    @property
    def submit_time(self) -> float:
        """The ``submit`` timestamp."""
        return float(self.main[0]["timestamp"])

    def first(self, name: str) -> float | None:
        """Timestamp of the first main entry called ``name``."""
        return next((float(e["timestamp"]) for e in self.main if e["name"] == name), None)

    def exec_visible_at(self, index: int) -> float:
        """When exec line ``index`` becomes visible to a watch."""
        return float(self.exec_events[index]["timestamp"]) + self.exec_delay

    def shown(self) -> list[Entry]:
        """Main entries visible now."""
        return self.main[: self.main_shown]

    def state(self) -> str:
        """The job's state now (RFC 21), from the visible main entries."""
        state = "NEW"
        for e in self.shown():
            name = e["name"]
            ctx = e.get("context", {})
            if name in _ADVANCE and (name != "finish" or state == "RUN"):
                state = _ADVANCE[name]
            elif name in ("urgency", "flux-restart", "jobspec-update") and state == "SCHED":
                state = "PRIORITY"
            elif (
                name == "exception"
                and ctx.get("severity") == 0
                and state
                not in (
                    "NEW",
                    "INACTIVE",
                )
            ):
                state = "CLEANUP"
        return state

    @property
    def inactive(self) -> bool:
        """``clean`` is visible."""
        return any(e["name"] == "clean" for e in self.shown())

    @property
    def started(self) -> bool:
        """``start`` is visible (the guest namespace exists)."""
        return any(e["name"] == "start" for e in self.shown())

    @property
    def released(self) -> bool:
        """``release final=true`` is visible (the guest namespace is grafted and removed)."""
        return any(
            e["name"] == "release" and e.get("context", {}).get("final") for e in self.shown()
        )

    def guest_removed(self, now: float) -> bool:
        """The guest namespace is removed and ``release`` not yet visible (the race window)."""
        removed = self.ns_removed
        if removed is None:
            release = self.first("release")
            if release is None:
                return False
            removed = release - NS_RACE
        return now >= removed and not self.released

    def shifted(self, seconds: float) -> FakeJob:
        """A copy with every timestamp moved by ``seconds``."""

        def move(entries: list[Entry]) -> list[Entry]:
            return [{**e, "timestamp": e["timestamp"] + seconds} for e in entries]

        return dataclasses.replace(
            self,
            main=move(self.main),
            exec_events=move(self.exec_events),
            ns_removed=None if self.ns_removed is None else self.ns_removed + seconds,
            purge_at=None if self.purge_at is None else self.purge_at + seconds,
        )


@dataclasses.dataclass
class WatchOpened:
    """A watch the broker was asked for (for assertions)."""

    time: float
    jobid: int
    eventlog: str
    waitcreate: bool
    handle: int


# -- futures ------------------------------------------------------------------------------


_serials = itertools.count(1)


class FakeFuture:
    """A streaming future: one callback per response until ``reset``."""

    kind = "future"

    def __init__(self, handle: FakeHandle) -> None:
        self.handle = handle
        self.serial = next(_serials)
        self.results: deque[str | OSError] = deque()
        self.armed = False
        self.then_cb: tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]] | None = None
        self.stopped = False
        self.finished = False  # a terminal response (error) was queued
        self.c_reset = False  # reset leaves the keep-alive count alone (FluxBindings' C path)
        handle.futures[self.serial] = weakref.ref(self)

    # -- the bindings' surface

    def then(self, callback: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Register ``callback(future, *args, **kwargs)``, called once per response."""
        handles = self.handle.broker.then_handles
        if self in handles:
            raise OSError(errno.EEXIST, "then callback already exists for this future")
        if callback is None:
            raise ValueError("Callback cannot be None")
        self.then_cb = (callback, args, kwargs)
        self.armed = True
        handles[self] = 1
        self._ready()
        return self

    def reset(self) -> None:
        """Drop the current response and re-arm for the next one."""
        if self.results:
            self.results.popleft()
        self.armed = True
        handles = self.handle.broker.then_handles
        if self in handles and not self.c_reset:
            handles[self] += 1
        self._ready()

    def stop(self) -> None:
        """Never call the callback again (``Future.stop``)."""
        self.stopped = True

    def is_ready(self) -> bool:
        """A response is waiting."""
        return bool(self.results)

    # -- the broker's side

    def push(self, item: str | dict[str, Any] | OSError) -> None:
        """Queue one response (a payload, or an error that ends the stream)."""
        if self.finished:
            return
        if isinstance(item, OSError):
            self.finished = True
        self.results.append(item if isinstance(item, str | OSError) else json.dumps(item))
        self._ready()

    def _ready(self) -> None:
        if self.deliverable():
            self.handle.ready.append(self.serial)

    def deliverable(self) -> bool:
        """The callback would run now."""
        return self.armed and self.then_cb is not None and not self.stopped and bool(self.results)

    def _front(self) -> str:
        if not self.results:
            raise FakeMisuse(f"{self!r}: get() with no response ready would block the reactor")
        item = self.results[0]
        if isinstance(item, OSError):
            raise OSError(item.errno, item.strerror)
        return item

    def __repr__(self) -> str:
        return f"<{type(self).__name__} #{self.serial}>"


class FakeRPC(FakeFuture):
    """``flux.rpc.RPC`` (the journal and job-list streams)."""

    def __init__(self, handle: FakeHandle, kind: str) -> None:
        super().__init__(handle)
        self.kind = kind
        self.live = False  # journal: past the history, subscribed to new events

    def get(self) -> Any:
        """The current response payload, decoded afresh; OSError for an error response."""
        return json.loads(self._front())


class FakeWatch(FakeFuture):
    """``flux.job.event.JobEventWatchFuture``."""

    kind = "watch"

    def __init__(self, handle: FakeHandle, jobid: int, eventlog: str, *, waitcreate: bool) -> None:
        super().__init__(handle)
        self.jobid = jobid
        self.eventlog = eventlog
        self.waitcreate = waitcreate
        self.sent = 0  # lines of the eventlog sent so far
        self.needs_cancel = True
        self.cancelled = False
        self.reached_guest = False  # job-info went on to the guest namespace
        self.hung = False  # kvs-watch waits for a namespace that will not come back

    def get(self, autoreset: bool = True) -> FakeEvent | None:
        """The next event, None at the end of the stream; OSError on error."""
        try:
            text = self._front()
        except OSError as exc:
            if exc.errno == errno.ENODATA:
                self.needs_cancel = False
                return None
            raise
        if autoreset:
            self.reset()
        return FakeEvent(text)

    def get_event(self, autoreset: bool = True) -> FakeEvent | None:
        """Same as ``get`` (``JobEventWatchFuture.get_event``)."""
        return self.get(autoreset=autoreset)

    def cancel(self, stop: bool = False) -> None:
        """Cancel the watch; with ``stop`` no callback runs again."""
        if self.handle.dead is not None and not self.finished:
            raise OSError(errno.ECONNRESET, "Connection reset by peer")
        self.cancelled = True
        self.handle.broker.cancels += 1
        self.push(OSError(errno.ENODATA, "No data available"))
        self.needs_cancel = False
        if stop:
            self.stop()

    def __del__(self) -> None:
        if getattr(self, "needs_cancel", False) and not self.finished:
            self.handle.broker.collected_watches += 1
            self.needs_cancel = False


class FakeTimer:
    """A reactor timer: repeating (after = repeat = interval), or one-shot (``repeat=False``)."""

    def __init__(
        self,
        handle: FakeHandle,
        interval: float,
        callback: Callable[[], None],
        *,
        repeat: bool = True,
    ) -> None:
        self.handle = handle
        self.interval = interval
        self.callback = callback
        self.repeat = repeat
        self.active = False
        self.due = 0.0
        self.fired = 0

    def arm(self) -> None:
        """A one-shot's re-arm, from now (``Alarm.arm``)."""
        self.start()

    def start(self) -> FakeTimer:
        """Arm the timer ``interval`` from now."""
        self.active = True
        self.due = self.handle.broker.now + self.interval
        return self

    def stop(self) -> FakeTimer:
        """Disarm the timer."""
        self.active = False
        return self


# -- handle and reactor ---------------------------------------------------------------------


class FakeHandle:
    """A connection to the fake broker, with its reactor."""

    def __init__(self, broker: FakeBroker, userid: int) -> None:
        self.broker = broker
        self.userid = userid
        self.number = len(broker.handles_made)
        self.futures: dict[int, weakref.ref[FakeFuture]] = {}
        self.ready: deque[int] = deque()
        self.timers: list[FakeTimer] = []
        self.running = False
        self.stop_requested = False
        self.exception: BaseException | None = None
        self.dead: str | None = None
        self.closed = False

    @property
    def owner(self) -> bool:
        """The user is the instance owner."""
        return self.userid == self.broker.owner

    def alive_futures(self) -> list[FakeFuture]:
        """Futures still referenced by someone, in creation order."""
        out = []
        for ref in list(self.futures.values()):
            fut = ref()
            if fut is not None:
                out.append(fut)
        return out

    def check(self) -> None:
        """Raise as a call on a lost connection would."""
        if self.dead is not None:
            raise OSError(errno.ECONNRESET, "Connection reset by peer")

    def lose(self, fail_futures: bool) -> None:
        """The connection is gone: outstanding futures fail with ECONNRESET."""
        if self.dead is not None:
            return
        self.dead = "ECONNRESET"
        if fail_futures:
            for fut in self.alive_futures():
                fut.push(OSError(errno.ECONNRESET, "Connection reset by peer"))

    def _next_ready(self) -> FakeFuture | None:
        while self.ready:
            ref = self.futures.get(self.ready.popleft())
            fut = ref() if ref is not None else None
            if fut is None:
                self.broker.dropped_callbacks += 1
                continue
            if fut.deliverable():
                return fut
        return None

    def _fire(self, fut: FakeFuture) -> None:
        assert fut.then_cb is not None
        callback, args, kwargs = fut.then_cb
        fut.armed = False
        broker = self.broker
        if broker.before_callback is not None:
            broker.before_callback(fut)
        broker.callbacks += 1
        try:
            callback(fut, *args, **kwargs)
        except Exception as exc:  # the real continuation_callback stops the reactor
            self.exception = exc
            if fut.results:
                fut.results.popleft()
            fut.stop()
        finally:
            handles = broker.then_handles
            if fut in handles:
                handles[fut] -= 1
                if handles[fut] <= 0:
                    del handles[fut]

    def run(self) -> None:
        """``reactor_run``: deliver, advance virtual time, until stopped or nothing is left."""
        if self.running:
            raise FakeMisuse("reactor_run re-entered")
        self.running = True
        self.stop_requested = False
        broker = self.broker
        try:
            while True:
                if self.exception is not None:
                    exc, self.exception = self.exception, None
                    raise exc
                if self.stop_requested:
                    return
                fut = self._next_ready()
                if fut is not None:
                    self._fire(fut)
                    continue
                if self.dead is not None:
                    raise OSError(errno.ECONNRESET, "Connection reset by peer")
                agenda_at = broker.agenda[0][0] if broker.agenda else None
                gathering = any(t.active and not t.repeat for t in self.timers)
                if agenda_at is None and not gathering:  # idle: nothing due, nothing gathered
                    for hook in list(broker.idle_hooks):
                        hook()
                    if self.ready or self.stop_requested or broker.agenda:
                        continue
                timers = [t for t in self.timers if t.active]
                timer_at = min((t.due for t in timers), default=None)
                if agenda_at is None and timer_at is None:
                    return
                when = min(t for t in (agenda_at, timer_at) if t is not None)
                if when > broker.time_limit:
                    raise FakeMisuse(f"virtual time passed {broker.time_limit}: nothing stopped")
                if agenda_at is not None and agenda_at <= when:
                    broker.step()
                    continue
                broker.now = max(broker.now, when)
                for timer in timers:
                    if timer.active and timer.due <= broker.now:
                        timer.due += timer.interval
                        timer.active = timer.repeat
                        timer.fired += 1
                        try:
                            timer.callback()
                        except Exception as exc:  # timeout_handler_wrapper: stop with error
                            self.exception = exc
                        break
        finally:
            self.running = False


# -- resources ------------------------------------------------------------------------------


def _idset(text: str) -> set[int]:
    ids: set[int] = set()
    for part in filter(None, text.split(",")):
        first, _, last = part.partition("-")
        ids.update(range(int(first), int(last or first) + 1))
    return ids


def _idset_text(ids: Iterable[int]) -> str:
    spans: list[list[int]] = []
    for rank in sorted(ids):
        if spans and spans[-1][1] == rank - 1:
            spans[-1][1] = rank
        else:
            spans.append([rank, rank])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


class FakeResources:
    """The resource module's eventlog and the status it implies."""

    def __init__(self) -> None:
        self.log: list[Entry] = []  # posting order
        self.R: dict[str, Any] | None = None
        self.online: set[int] = set()
        self.torpid: set[int] = set()
        self.drained: dict[int, tuple[float, str | None]] = {}
        #: ``resource.journal`` answers this errno (e.g. ENOSYS: an older broker).
        self.journal_errno: int | None = None
        #: ``resource.status`` answers this errno.
        self.status_errno: int | None = None

    def apply(self, e: Entry, R: dict[str, Any] | None = None) -> None:
        """Post one entry: the status follows as flux-core's does."""
        self.log.append(e)
        name, ctx = e["name"], e.get("context", {})
        if name == "resource-define":
            self.R = R
        elif name == "restart":
            self.online = _idset(ctx["online"])
        elif name == "online":
            self.online |= _idset(ctx["idset"])
        elif name == "offline":
            self.online -= _idset(ctx["idset"])
        elif name == "torpid":
            self.torpid |= _idset(ctx["idset"])
        elif name == "lively":
            self.torpid -= _idset(ctx["idset"])
        elif name == "drain":
            overwrite = ctx.get("overwrite", 0)
            for rank in _idset(ctx["idset"]):
                old = self.drained.get(rank)
                if old is not None and old[1] is not None and not overwrite:
                    continue
                timestamp = e["timestamp"] if old is None or overwrite == 2 else old[0]
                self.drained[rank] = (timestamp, ctx.get("reason"))
        elif name == "undrain":
            for rank in _idset(ctx["idset"]):
                self.drained.pop(rank, None)

    def history(self) -> list[dict[str, Any]]:
        """The journal's first responses, up to and with the sentinel."""
        out: list[dict[str, Any]] = []
        batch: list[Entry] = []
        for e in self.log:
            if e["name"] == "resource-define":
                if batch:
                    out.append({"events": batch})
                    batch = []
                out.append({"events": [e], "R": self.R})
                continue
            batch.append(e)
            if len(batch) >= 100:
                out.append({"events": batch})
                batch = []
        if batch:
            out.append({"events": batch})
        out.append({"events": []})
        return out

    def status(self) -> dict[str, Any]:
        """The ``resource.status`` payload."""
        ranks: set[int] = set()
        for item in (self.R or {}).get("execution", {}).get("R_lite", []):
            ranks |= _idset(item["rank"])
        groups: dict[tuple[float, str | None], list[int]] = {}
        for rank, (timestamp, reason) in self.drained.items():
            groups.setdefault((float(round(timestamp)), reason), []).append(rank)
        drain: dict[str, Any] = {}
        for (timestamp, reason), members in groups.items():
            info: dict[str, Any] = {"timestamp": timestamp}
            if reason is not None:
                info["reason"] = reason
            drain[_idset_text(members)] = info
        return {
            "R": self.R,
            "drain": drain,
            "online": _idset_text(self.online),
            "offline": _idset_text(ranks - self.online),
            "exclude": "",
            "torpid": _idset_text(self.torpid),
        }


def load_resource_recording(
    path: Path = DATA / "resources" / "journal.jsonl",
) -> list[tuple[Entry, dict[str, Any] | None]]:
    """The entries of a recorded resource journal, in order, each with its response's R."""
    out: list[tuple[Entry, dict[str, Any] | None]] = []
    for line in path.read_text().splitlines():
        payload = json.loads(line).get("payload", {})
        for e in payload.get("events", []):
            out.append((e, payload.get("R")))
    return out


# -- the broker ------------------------------------------------------------------------------


class FakeBroker:
    """Jobs on a virtual timeline, and the services the source talks to."""

    def __init__(self, jobs: Iterable[FakeJob] = (), *, start: float, owner: int = OWNER) -> None:
        self.now = start
        self.start = start
        self.owner = owner
        self.version = VERSION
        #: What ``job-manager.queue-list`` answers (an OSError is raised instead).
        self.queue_list: dict[str, Any] | OSError = {"queues": []}
        self.journal_service = True
        self.resources = FakeResources()
        #: What ``config.get`` answers (an OSError is raised instead).
        self.config: dict[str, Any] | OSError = {}
        self.resource_journals_opened: list[float] = []
        self.status_polls: list[float] = []
        self.jobs: dict[int, FakeJob] = {}
        self.agenda: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self.handles: list[FakeHandle] = []
        self.handles_made: list[FakeHandle] = []
        self.then_handles: dict[FakeFuture, int] = {}
        self.down_until: float | None = None
        self.time_limit = start + 3600.0
        self.idle_hooks: list[Callable[[], None]] = []
        self.before_callback: Callable[[FakeFuture], None] | None = None
        self.list_chunk = 3
        # what happened, for assertions
        self.connects: list[tuple[float, bool]] = []
        self.watches_opened: list[WatchOpened] = []
        #: (time, jobid) of each exec eventlog read asked for.
        self.exec_reads: list[tuple[float, int]] = []
        self.journals_opened: list[float] = []
        self.job_lists: list[tuple[float, float]] = []
        self.callbacks = 0
        self.cancels = 0
        self.dropped_callbacks = 0
        self.collected_watches = 0
        self.hung_watches = 0
        for job in jobs:
            self.add(job)

    def clock(self) -> float:
        """The virtual time (pass as the source's ``clock`` and ``monotonic``)."""
        return self.now

    # -- timeline

    def at(self, when: float, action: Callable[[], None]) -> None:
        """Run ``action`` at virtual time ``when`` (in order of scheduling at equal times)."""
        heapq.heappush(self.agenda, (when, next(self._seq), action))

    def step(self) -> None:
        """Run the next timeline item, advancing the clock to it."""
        when, _, action = heapq.heappop(self.agenda)
        self.now = max(self.now, when)
        action()

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` of virtual time pass outside any reactor (nothing is delivered)."""
        until = self.now + max(seconds, 0.0)
        while self.agenda and self.agenda[0][0] <= until:
            self.step()
        self.now = until

    def add(self, job: FakeJob) -> None:
        """Put a job on the timeline; entries already past are applied at once."""
        if job.jobid in self.jobs:
            raise ValueError(f"job {job.jobid} added twice")
        self.jobs[job.jobid] = job
        for i, e in enumerate(job.main):
            self.at(float(e["timestamp"]), self._bind(self._main, job, i))
        if job.exec_events:
            for i in range(len(job.exec_events)):
                self.at(job.exec_visible_at(i), self._bind(self._exec, job, i))
        clean = job.first("clean")
        if clean is not None:
            ends = [clean] + [job.exec_visible_at(i) for i in range(len(job.exec_events))]
            self.at(max(ends), self._bind(lambda j, _: self._exec_end(j), job, 0))
            if job.purge_at is not None:
                self.at(max(job.purge_at, *ends), lambda: self._purge(job))
        while self.agenda and self.agenda[0][0] <= self.now:
            self.step()

    @staticmethod
    def _bind(action: Callable[[FakeJob, int], None], job: FakeJob, i: int) -> Callable[[], None]:
        epoch = job.epoch

        def act() -> None:
            if job.epoch == epoch:
                action(job, i)

        return act

    def _journals(self, kind: str = "journal") -> list[FakeRPC]:
        """Live streams of ``kind`` (the job journal, ``resource-journal``) on connected handles."""
        return [
            fut
            for handle in self.handles
            for fut in handle.alive_futures()
            if isinstance(fut, FakeRPC) and fut.kind == kind and fut.live
            and not fut.finished
        ]  # fmt: skip

    def _watchers(self, jobid: int, eventlog: str) -> list[FakeWatch]:
        """Open watches on one job's eventlog on connected handles."""
        return [
            fut
            for handle in self.handles
            for fut in handle.alive_futures()
            if isinstance(fut, FakeWatch) and fut.jobid == jobid and fut.eventlog == eventlog
            and not fut.finished and not fut.cancelled
        ]  # fmt: skip

    def _main(self, job: FakeJob, i: int) -> None:
        job.main_shown = i + 1
        e = job.main[i]
        resp: dict[str, Any] = {"id": job.jobid, "events": [e]}
        if e["name"] == "submit" and job.jobspec is not None:
            resp["jobspec"] = job.jobspec
        elif e["name"] == "alloc" and job.R is not None:
            resp["R"] = job.R
        for journal in self._journals():
            journal.push(resp)
        for fut in self._watchers(job.jobid, MAIN):
            self._feed_main(job, fut)
        for fut in self._watchers(job.jobid, EXEC):
            self._feed_exec(job, fut)

    def _exec(self, job: FakeJob, i: int) -> None:
        job.exec_shown = i + 1
        for fut in self._watchers(job.jobid, EXEC):
            self._feed_exec(job, fut)

    def _exec_end(self, job: FakeJob) -> None:
        job.exec_done = True
        for fut in self._watchers(job.jobid, EXEC):
            self._feed_exec(job, fut)

    def _purge(self, job: FakeJob) -> None:
        job.purged = True

    def inject(self, when: float, payload: Any) -> None:
        """At ``when``, send ``payload`` to every live journal stream as a response."""

        def send() -> None:
            for fut in self._journals():
                fut.push(json.dumps(payload))

        self.at(when, send)

    def resource_event(self, when: float, e: Entry, R: dict[str, Any] | None = None) -> None:
        """At ``when``, post a resource entry (``R`` with ``resource-define``)."""

        def post() -> None:
            self.resources.apply(e, R)
            resp: dict[str, Any] = {"events": [e]}
            if e["name"] == "resource-define":
                resp["R"] = R
            for fut in self._journals("resource-journal"):
                fut.push(resp)

        self.at(when, post)
        while self.agenda and self.agenda[0][0] <= self.now:
            self.step()

    def inject_resource(self, when: float, text: str) -> None:
        """At ``when``, send ``text`` as it is to every live resource journal."""

        def send() -> None:
            for fut in self._journals("resource-journal"):
                fut.push(text)

        self.at(when, send)

    def inject_raw(self, when: float, text: str) -> None:
        """At ``when``, send ``text`` as it is (any JSON, or not JSON) to every journal."""

        def send() -> None:
            for fut in self._journals():
                fut.push(text)

        self.at(when, send)

    def drop(self, when: float, *, down_for: float = 0.0, fail_futures: bool = True) -> None:
        """At ``when``, cut every connection; refuse new ones for ``down_for`` seconds."""

        def cut() -> None:
            if down_for > 0:
                self.down_until = self.now + down_for
            for handle in list(self.handles):
                handle.lose(fail_futures)
            self.handles.clear()

        self.at(when, cut)

    def roll_back(
        self,
        when: float,
        jobid: int,
        *,
        keep: int,
        then: list[Entry],
        keep_exec: int = 0,
        then_exec: Iterable[Entry] = (),
    ) -> None:
        """At ``when``, a crashed broker's rollback: the job's main eventlog is cut to its
        first ``keep`` entries (exec: ``keep_exec``) and goes on with ``then`` (``then_exec``).

        What flux-core does when rank 0 restarts from a KVS checkpoint older than the
        job's last events; every timestamp in ``then``/``then_exec`` must be after ``when``.
        """

        def rewrite() -> None:
            job = self.jobs[jobid]
            job.epoch += 1
            job.main = job.main[:keep] + list(then)
            job.main_shown = min(job.main_shown, keep)
            job.exec_events = job.exec_events[:keep_exec] + list(then_exec)
            job.exec_shown = min(job.exec_shown, keep_exec)
            job.exec_done = False
            for i in range(keep, len(job.main)):
                self.at(float(job.main[i]["timestamp"]), self._bind(self._main, job, i))
            for i in range(keep_exec, len(job.exec_events)):
                self.at(job.exec_visible_at(i), self._bind(self._exec, job, i))
            clean = job.first("clean")
            if clean is not None:
                ends = [clean] + [job.exec_visible_at(i) for i in range(len(job.exec_events))]
                self.at(max(ends), self._bind(lambda j, _: self._exec_end(j), job, 0))

        self.at(when, rewrite)

    def stop_when_idle(self, stop: threading.Event, *, after: float = 0.0) -> None:
        """Set ``stop`` once the timeline is empty (and the clock is past ``after``)."""

        def hook() -> None:
            if self.now >= after:
                stop.set()

        self.idle_hooks.append(hook)

    @property
    def is_down(self) -> bool:
        """Connections are refused now."""
        return self.down_until is not None and self.now < self.down_until

    # -- services

    def connect(self, userid: int) -> FakeHandle:
        """Open a connection, or raise ECONNREFUSED while down."""
        self.connects.append((self.now, not self.is_down))
        if self.is_down:
            raise OSError(errno.ECONNREFUSED, "Connection refused")
        handle = FakeHandle(self, userid)
        self.handles.append(handle)
        self.handles_made.append(handle)
        return handle

    def _visible_jobs(self) -> list[FakeJob]:
        return [j for j in sorted(self.jobs.values(), key=lambda j: j.jobid)
                if j.main_shown and not j.purged]  # fmt: skip

    def journal(self, handle: FakeHandle) -> FakeRPC:
        """Open the events-journal stream: history, sentinel, then live events."""
        handle.check()
        fut = FakeRPC(handle, "journal")
        self.journals_opened.append(self.now)
        if not self.journal_service:
            fut.push(OSError(errno.ENOSYS, "Function not implemented"))
            return fut
        if not handle.owner:
            fut.push(OSError(errno.EPERM, "Operation not permitted"))
            return fut
        for job in self._visible_jobs():
            events = job.shown()
            resp: dict[str, Any] = {"id": job.jobid, "events": events}
            names = {e["name"] for e in events}
            if "submit" in names and job.jobspec is not None:
                resp["jobspec"] = job.jobspec
            if "alloc" in names and job.R is not None:
                resp["R"] = job.R
            fut.push(resp)
        fut.push({"id": -1, "events": []})
        fut.live = True
        return fut

    def watch(
        self, handle: FakeHandle, jobid: int, eventlog: str, *, waitcreate: bool
    ) -> FakeWatch:
        """``job-info.eventlog-watch`` on one job's eventlog."""
        handle.check()
        fut = FakeWatch(handle, jobid, eventlog, waitcreate=waitcreate)
        self.watches_opened.append(
            WatchOpened(self.now, jobid, eventlog, waitcreate, handle.number)
        )
        job = self.jobs.get(jobid)
        refused = self._refusal(handle, jobid, job, eventlog)
        if refused is not None or job is None:
            fut.push(refused or OSError(errno.ENOENT, f"job {jobid} not found"))
        elif eventlog == MAIN:
            self._feed_main(job, fut)
        elif eventlog == EXEC:
            self._feed_exec(job, fut)
        else:
            fut.push(OSError(errno.ENOENT, f"{eventlog} not found"))
        return fut

    @staticmethod
    def _refusal(
        handle: FakeHandle, jobid: int, job: FakeJob | None, eventlog: str
    ) -> OSError | None:
        """Why job-info refuses a watch or read of the job's eventlog (None: it does not)."""
        if job is None or not job.main_shown or job.purged:
            return OSError(errno.ENOENT, f"job {jobid} not found")
        if job.userid != handle.userid and not handle.owner:
            return OSError(errno.EPERM, "Operation not permitted")
        if eventlog in job.watch_errno:
            code = job.watch_errno[eventlog]
            return OSError(code, os.strerror(code))
        return None

    def exec_eventlog(self, handle: FakeHandle, jobid: int) -> FakeRPC:
        """``job-info.lookup`` of one job's ``guest.exec.eventlog``: the whole text, once."""
        handle.check()
        fut = FakeRPC(handle, "exec-read")
        self.exec_reads.append((self.now, jobid))
        job = self.jobs.get(jobid)
        refused = self._refusal(handle, jobid, job, EXEC)
        if refused is not None or job is None:
            fut.push(refused or OSError(errno.ENOENT, f"job {jobid} not found"))
        elif not job.started:
            fut.push(OSError(errno.ENOENT, f"{EXEC}: key not found"))
        elif job.exec_read_delay is not None:
            # Grafted into the primary namespace whole once released; before, what is shown.
            shown = job.exec_events if job.released else job.exec_events[: job.exec_shown]
            text = "".join(json.dumps(e) + "\n" for e in shown)
            answer = {"id": jobid, EXEC: text}
            if job.exec_read_delay > 0:
                self.at(self.now + job.exec_read_delay, lambda: fut.push(answer))
            else:
                fut.push(answer)
        return fut

    def _feed_main(self, job: FakeJob, fut: FakeWatch) -> None:
        committed = job.submit_time + job.kvs_lag
        if self.now < committed:
            if not fut.waitcreate:
                fut.push(OSError(errno.ENOENT, "eventlog not found"))
            else:
                self.at(committed, lambda: self._feed_main(job, fut))
            return
        lines = [e for e in job.shown() if e["name"] not in JOURNAL_ONLY]
        while fut.sent < len(lines):
            fut.push(lines[fut.sent])
            fut.sent += 1
        if job.inactive:
            fut.push(OSError(errno.ENODATA, "No data available"))

    def _feed_exec(self, job: FakeJob, fut: FakeWatch) -> None:
        if fut.hung:
            return
        if not job.started:
            if job.inactive:
                fut.push(OSError(errno.ENODATA, "No data available"))
            return  # guest_watch waits for start whatever the flags
        if not fut.reached_guest:
            fut.reached_guest = True
            if fut.waitcreate and job.guest_removed(self.now):
                fut.hung = True
                self.hung_watches += 1
                return
        while fut.sent < job.exec_shown:
            fut.push(job.exec_events[fut.sent])
            fut.sent += 1
        if job.exec_done:
            fut.push(OSError(errno.ENODATA, "No data available"))

    def resource_journal(self, handle: FakeHandle) -> FakeRPC:
        """``resource.journal``: history, sentinel, then live entries (owner only)."""
        handle.check()
        fut = FakeRPC(handle, "resource-journal")
        self.resource_journals_opened.append(self.now)
        code = self.resources.journal_errno
        if code is not None:
            fut.push(OSError(code, os.strerror(code)))
            return fut
        if not handle.owner:
            fut.push(OSError(errno.EPERM, "Request requires owner credentials"))
            return fut
        for resp in self.resources.history():
            fut.push(resp)
        fut.live = True
        return fut

    def resource_status(self, handle: FakeHandle) -> FakeRPC:
        """``resource.status`` (any user): one response."""
        handle.check()
        fut = FakeRPC(handle, "resource-status")
        self.status_polls.append(self.now)
        code = self.resources.status_errno
        if code is not None:
            fut.push(OSError(code, os.strerror(code)))
        else:
            fut.push(self.resources.status())
        return fut

    def job_list(self, handle: FakeHandle, since: float) -> FakeRPC:
        """``job-list.list`` for all users: active jobs and those inactive after ``since``."""
        handle.check()
        fut = FakeRPC(handle, "list")
        self.job_lists.append((self.now, since))
        jobs = []
        for job in self._visible_jobs():
            state = job.state()
            info: dict[str, Any] = {"id": job.jobid, "state": STATE_BITS[state]}
            if state == "INACTIVE":
                t_inactive = job.first("clean")
                assert t_inactive is not None
                if t_inactive <= since:
                    continue
                info["t_inactive"] = t_inactive
            jobs.append(info)
        for i in range(0, len(jobs), self.list_chunk):
            fut.push({"jobs": jobs[i : i + self.list_chunk], "version": 1})
        fut.push(OSError(errno.ENODATA, "No data available"))
        return fut

    # -- ground truth

    def eventlog_lines(self, jobids: Iterable[int] | None = None) -> dict[tuple[str, str], int]:
        """Lines of the jobs' main and exec eventlogs, by (eventlog label, name)."""
        out: dict[tuple[str, str], int] = {}
        for jobid in self.jobs if jobids is None else jobids:
            job = self.jobs[jobid]
            for label, entries in (("main", job.eventlog), ("exec", job.exec_events)):
                for e in entries:
                    key = (label, e["name"])
                    out[key] = out.get(key, 0) + 1
        return out


class FakeBindings:
    """The ``Bindings`` protocol of ``fluxmon.sources.flux`` on a :class:`FakeBroker`."""

    def __init__(self, broker: FakeBroker, *, userid: int | None = None) -> None:
        self.broker = broker
        self.userid = broker.owner if userid is None else userid
        self.uris: list[str] = []

    def connect(self, uri: str) -> FakeHandle:
        """Open a handle; ECONNREFUSED while the broker is down."""
        self.uris.append(uri)
        return self.broker.connect(self.userid)

    def version(self, handle: FakeHandle) -> str:
        """The broker's version attribute."""
        handle.check()
        return self.broker.version

    def queues(self, handle: FakeHandle) -> Any:
        """The job-manager's queue list."""
        handle.check()
        answer = self.broker.queue_list
        if isinstance(answer, OSError):
            raise answer
        return answer

    def journal(self, handle: FakeHandle) -> FakeRPC:
        """The events-journal stream with full history (re-armed as ``FluxBindings`` does)."""
        fut = self.broker.journal(handle)
        fut.c_reset = True
        return fut

    def resource_journal(self, handle: FakeHandle) -> FakeRPC:
        """The ``resource.journal`` stream (re-armed as ``FluxBindings`` does)."""
        fut = self.broker.resource_journal(handle)
        fut.c_reset = True
        return fut

    def resource_status(self, handle: FakeHandle) -> FakeRPC:
        """One ``resource.status`` answer."""
        return self.broker.resource_status(handle)

    def exec_eventlog(self, handle: FakeHandle, jobid: int) -> FakeRPC:
        """One job's whole exec eventlog, one answer."""
        return self.broker.exec_eventlog(handle, jobid)

    def config(self, handle: FakeHandle) -> Any:
        """The instance's config object."""
        handle.check()
        answer = self.broker.config
        if isinstance(answer, OSError):
            raise answer
        return answer

    def watch(
        self, handle: FakeHandle, jobid: int, eventlog: str, *, waitcreate: bool
    ) -> FakeWatch:
        """An eventlog watch, with WAITCREATE if ``waitcreate``."""
        fut = self.broker.watch(handle, jobid, eventlog, waitcreate=waitcreate)
        fut.c_reset = True
        return fut

    def job_list(self, handle: FakeHandle, since: float) -> FakeRPC:
        """The job-list stream."""
        return self.broker.job_list(handle, since)

    def timer(self, handle: FakeHandle, interval: float, callback: Callable[[], None]) -> FakeTimer:
        """A started repeating timer."""
        timer = FakeTimer(handle, interval, callback)
        handle.timers.append(timer)
        return timer.start()

    def alarm(self, handle: FakeHandle, after: float, callback: Callable[[], None]) -> FakeTimer:
        """A one-shot timer, disarmed."""
        timer = FakeTimer(handle, after, callback, repeat=False)
        handle.timers.append(timer)
        return timer

    def run(self, handle: FakeHandle) -> None:
        """Run the handle's reactor."""
        handle.run()

    def stop(self, handle: FakeHandle) -> None:
        """Make ``run`` return (ignored when the reactor is not running, as in libev)."""
        if handle.running:
            handle.stop_requested = True

    def close(self, handle: FakeHandle) -> None:
        """Release the handle."""
        handle.closed = True
        handle.lose(fail_futures=False)
        if handle in self.broker.handles:
            self.broker.handles.remove(handle)


class VirtualStop(threading.Event):
    """A stop flag whose ``wait`` lets virtual time pass instead of sleeping."""

    def __init__(self, broker: FakeBroker, *, max_waits: int | None = None) -> None:
        super().__init__()
        self.broker = broker
        self.max_waits = max_waits
        self.waits: list[float] = []
        self.on_wait: Callable[[float], None] | None = None

    def wait(self, timeout: float | None = None) -> bool:
        """Advance the virtual clock by ``timeout``; set the flag after ``max_waits``."""
        if self.is_set():
            return True
        if timeout is None:
            raise FakeMisuse("wait() without a timeout would block forever")
        self.waits.append(timeout)
        if self.on_wait is not None:
            self.on_wait(timeout)
        self.broker.advance(timeout)
        if self.max_waits is not None and len(self.waits) >= self.max_waits:
            self.set()
        return self.is_set()


# -- the recorded data ----------------------------------------------------------------------


def load_raw_journal(path: Path = RAW_JOURNAL) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The recorded journal responses: (history before the sentinel, live after it)."""
    responses = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    cut = next(i for i, r in enumerate(responses) if r["id"] == -1 and not r["events"])
    return responses[:cut], responses[cut + 1 :]


def jobs_from_responses(responses: Iterable[dict[str, Any]]) -> list[FakeJob]:
    """Jobs rebuilt from journal responses (main entries, jobspec, R; no exec eventlog)."""
    jobs: dict[int, FakeJob] = {}
    for resp in responses:
        job = jobs.setdefault(resp["id"], FakeJob(resp["id"], []))
        job.main.extend(resp["events"])
        job.jobspec = resp.get("jobspec", job.jobspec)
        job.R = resp.get("R", job.R)
    for job in jobs.values():
        job.main.sort(key=lambda e: e["timestamp"])
    return list(jobs.values())


def broker_from_raw_journal(path: Path = RAW_JOURNAL) -> tuple[FakeBroker, set[int]]:
    """A broker replaying the recorded journal; connect time sits between history and live.

    Returns the broker and the ids of the jobs in the recorded history.
    """
    history, live = load_raw_journal(path)
    last_history = max(e["timestamp"] for r in history for e in r["events"])
    first_live = min(e["timestamp"] for r in live for e in r["events"])
    start = (last_history + first_live) / 2
    return FakeBroker(jobs_from_responses(history + live), start=start), {r["id"] for r in history}


def load_scenario(path: Path) -> FakeJob:
    """One ``tests/data/scenarios`` file (replay format) as a job with its exec eventlog."""
    job: FakeJob | None = None
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        obj = json.loads(line)
        e = entry(obj["name"], obj["timestamp"], **obj.get("context", {}))
        if job is None:
            job = FakeJob(obj["id"], [])
        if obj.get("eventlog", MAIN) == EXEC:
            job.exec_events.append(e)
        else:
            job.main.append(e)
            job.jobspec = obj.get("jobspec", job.jobspec)
            job.R = obj.get("R", job.R)
    if job is None:
        raise ValueError(f"{path}: no events")
    job.main.sort(key=lambda e: e["timestamp"])
    job.exec_events.sort(key=lambda e: e["timestamp"])
    return job


def late_exec(job: FakeJob, after_clean: float = 0.05) -> FakeJob:
    """The job with every exec line delivered after its main ``clean``."""
    clean = job.first("clean")
    if clean is None or not job.exec_events:
        return job
    delay = clean - float(job.exec_events[0]["timestamp"]) + after_clean
    return dataclasses.replace(job, exec_delay=delay)
