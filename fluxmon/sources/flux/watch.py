"""Watch mode: jobs found by polling ``job-list``, each main eventlog watched on its own.

The fallback where the journal answers EPERM (fluxmon is not the instance owner) or
ENOSYS (no journal), or the mode configured with ``flux.mode = "watch"``. A job's main
watch reads its eventlog from the start, so after a reconnect the events already
delivered are skipped per job (``Memory.main_last``).
"""

from __future__ import annotations

import errno
import math
from collections.abc import Mapping
from typing import Any

from fluxmon.events import MAIN, JobEvent
from fluxmon.sources.flux.bindings import RPCFuture
from fluxmon.sources.flux.connection import Connection, Start, describe
from fluxmon.sources.flux.delivery import EventDelivery, refuse


class WatchMode:
    """Polls job-list and watches each listed job's main eventlog on one connection."""

    def __init__(self, connection: Connection, delivery: EventDelivery, detail: str) -> None:
        """``detail`` is what ``source.connected`` says (why watch mode)."""
        self._connection = connection
        self._delivery = delivery
        self._detail = detail
        memory = connection.memory
        # Main events at or before _history_until are history; polls list the jobs
        # active or inactive since _poll_since.
        match connection.start:
            case Start.FRESH:
                self._history_until = self._poll_since = connection.connected_at
            case Start.RESUMED:
                self._history_until = memory.since
                self._poll_since = max(memory.since - 1.0, 0.0)
            case Start.RECONNECTED:
                self._history_until = -math.inf
                self._poll_since = max(memory.since - 1.0, 0.0)
        self._poll: RPCFuture | None = None  # the poll under way
        self._poll_started = 0.0  # wall clock
        self._poll_jobs: list[Mapping[str, Any]] = []
        self._poll_responses = 0
        self._next_poll = 0.0  # monotonic

    def start(self) -> None:
        """Report the connection, reopen what a drop interrupted, and poll."""
        connection = self._connection
        connection.downstream.connected(self._detail, flux_version=connection.flux_version)
        self._delivery.exec_history_until = self._history_until
        if connection.start is Start.FRESH:
            self._delivery.history_until = self._history_until
        self._delivery.resume()
        self._start_poll()

    def tick(self, now: float) -> None:
        """Poll again once the last poll is done and ``flux.poll_interval`` has passed."""
        if self._poll is None and now >= self._next_poll:
            self._start_poll()

    # -- job-list polls ---------------------------------------------------------------

    def _start_poll(self) -> None:
        connection = self._connection
        self._poll_started = connection.clock()
        self._poll_jobs = []
        self._poll_responses = 0
        try:
            future = connection.bindings.job_list(connection.handle, self._poll_since)
        except OSError as err:
            connection.lose(f"job-list failed: {describe(err)}")
            return
        self._poll = future
        future.then(connection.guard(self._on_poll))

    def _on_poll(self, future: RPCFuture) -> None:
        if future is not self._poll:
            return  # a finished poll's stream: nothing more to read from it
        try:
            response = future.get()
        except (ValueError, RecursionError) as err:  # a payload that does not decode
            refuse(self._connection.downstream, f"job-list response: {err}")
            future.reset()
            return
        except OSError as err:
            if err.errno == errno.ENODATA:
                self._poll_done()
            else:
                self._poll = None
                self._connection.lose(f"job-list failed: {describe(err)}")
            return
        jobs = response.get("jobs") if isinstance(response, dict) else None
        if isinstance(jobs, list):
            self._poll_jobs.extend(job for job in jobs if isinstance(job, dict))
        if self._poll_responses == 0 and not (
            isinstance(response, dict) and response.get("version")
        ):
            self._poll_done()  # version 0 of the protocol: one response, no stream
            return
        self._poll_responses += 1
        future.reset()

    def _poll_done(self) -> None:
        connection, memory = self._connection, self._connection.memory
        interval = connection.settings.poll_interval
        self._poll = None
        self._poll_since = max(self._poll_started - 2 * interval, 0.0)
        self._next_poll = connection.monotonic() + interval
        horizon = self._poll_started - 4 * interval
        for jobid, when in list(memory.done.items()):
            if when < horizon:
                del memory.done[jobid]
        for job in self._poll_jobs:
            listed = job.get("id")
            if type(listed) is not int:
                continue
            if listed in memory.done:
                # Still listed: keep it done (a job refused with EPERM is not retried
                # every few polls); it is pruned once job-list stops listing it.
                memory.done[listed] = self._poll_started
                continue
            if not self._delivery.is_watching(listed, MAIN):
                self._watch_main(listed)
        if not connection.caught_up:
            connection.go_live()
            self._delivery.mark()

    # -- per-job main watches -----------------------------------------------------------

    def _watch_main(self, jobid: int) -> None:
        def finished() -> None:
            self._connection.memory.done[jobid] = self._connection.clock()

        self._delivery.watch(jobid, MAIN, self._on_main_event, finished)

    def _on_main_event(self, event: JobEvent) -> None:
        main_last = self._connection.memory.main_last
        if event.timestamp <= main_last.get(event.jobid, -1.0):
            return  # re-read after a reconnect: already delivered
        main_last[event.jobid] = event.timestamp
        late_clean = event.jobid in self._connection.memory.pending_cleans and event.name in (
            "clean",
            "invalidate",
        )
        live = event.timestamp > self._history_until or late_clean
        self._delivery.deliver_main([event], live=live)
