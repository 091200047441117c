"""Event sources: each turns something (Flux, a simulator, a file) into JobEvents.

A source is given a :class:`Downstream` and a stop flag, and pushes to it until the
flag is set or its input ends. Sources own their threads' blocking; the downstream
is thread-safe.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Final, Protocol

from fluxmon.events import JobEvent, ResourceEvent

#: Why a job's exec eventlog is given up before its end: its watch was still open when
#: the job's held ``clean`` ran out of time, the watch failed (to open, or with an
#: error), or ``flux.max_watches`` was reached so it was never opened.
EXEC_ABANDON_REASONS: Final = ("timeout", "error", "limit")


class SourceUnavailable(Exception):
    """The source's input cannot be reached at start (the daemon exits 69)."""


class Downstream(Protocol):
    """Where a source delivers events and tells of its connection."""

    def events(self, batch: Sequence[JobEvent], *, live: bool = True) -> None:
        """Apply events in order; ``live=False`` for history being replayed on connect."""

    def resource_events(self, batch: Sequence[ResourceEvent], *, live: bool = True) -> None:
        """Apply resource events in order; ``live=False`` for the journal's history."""

    def resource_mode(self, mode: str) -> None:
        """How resources are read now: ``journal`` or ``poll`` (once per connect)."""

    def declare_queue_nodes(self, requires: Mapping[str, Sequence[str]]) -> None:
        """Each configured queue's ``requires`` properties (empty: all nodes; no queues: {})."""

    def connected(self, detail: str, *, flux_version: str | None = None) -> None:
        """The source is connected (``detail`` says to what, and in which mode)."""

    def disconnected(self, error: str) -> None:
        """The source lost its input; ``error`` says why."""

    def caught_up(self) -> None:
        """History is replayed; everything from now on is live."""

    def declare_queues(self, names: Sequence[str]) -> None:
        """The instance's configured queues: their series are never capped (each connect)."""

    def reject_input(self, reason: str, detail: str) -> None:
        """Input that never became an event (a bad line, a bad payload) was refused."""

    def forget(self, jobids: Iterable[int], reason: str) -> None:
        """Drop jobs that vanished while the source was away (purged, instance restarted)."""

    def rewind(
        self, jobid: int, *, events_dropped: int, events_new: int, finished: bool = False
    ) -> None:
        """Forget a job, finished or not: the broker's history contradicts what was delivered.

        ``finished``: the source knows it had finished (a restart's checkpoint says so)
        even if the tracker does not.

        The broker rolled back and ran the job again. The source then delivers the
        history the two agree on as history and the rest as live; ``events_dropped``
        delivered events are not in the broker's history, ``events_new`` of it are new.
        """

    def heartbeat(self, quiet_for: float = 0.0) -> None:
        """The source's loop is turning (call it at least every few seconds, from the loop).

        ``quiet_for``: the loop now sleeps on purpose for up to that many seconds (a
        reconnect backoff), which is not a stall.
        """


class WatchStats(Protocol):
    """What a source with per-job watches reports about them."""

    def watch_opened(self, eventlog: str) -> None:
        """A per-job watch on ``eventlog`` was opened."""

    def watch_closed(self, eventlog: str) -> None:
        """A per-job watch on ``eventlog`` ended or was cancelled."""

    def watch_failed(self, errno_name: str) -> None:
        """A per-job watch failed with ``errno_name`` (e.g. ENOENT, EPERM, or limit)."""

    def exec_abandoned(self, reason: str) -> None:
        """A job's exec eventlog was given up before its end (``reason``: timeout, error, limit)."""


class Source(Protocol):
    """Something that produces JobEvents."""

    def run(self, downstream: Downstream, stop: threading.Event) -> None:
        """Deliver events to ``downstream`` until ``stop`` is set or the input ends."""
