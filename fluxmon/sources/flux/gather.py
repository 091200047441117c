"""Live work gathered for a moment: reactor callbacks take, one flush applies.

A busy broker sends about 1,600 journal responses a second at this machine's peak, and
the reactor calls back once for each (taken in bursts: see ``FluxBindings.run``); doing
the pipeline's work in each callback meant doing it with cold CPU caches, and one
pipeline batch (lock, metrics flush, log hand-over, checkpoint position) per response.
The reactor callbacks now only take what came (a response read and checked, its events
made) and leave the rest to a flush at most :data:`GATHER_SECONDS` later, where the
journal's live events of the interval are one batch. Measured on the peak workload
(benchmarks/broker_overhead.py and the README): fluxmon's CPU per event fell by about a
quarter, for 20 ms more lag at most.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, Final

#: Longest time gathered live work waits for its flush.
GATHER_SECONDS: Final = 0.02


class Gather:
    """Work from reactor callbacks, done in order at the next flush (one per key)."""

    def __init__(
        self,
        bindings: Any,
        handle: Any,
        guard: Callable[[Callable[..., None]], Callable[..., None]],
        interval: float = GATHER_SECONDS,
    ) -> None:
        """``guard`` wraps each piece of work so one that raises does not stop the rest."""
        self._guard = guard
        self._due: dict[Hashable, Callable[[], None]] = {}
        self._alarm = bindings.alarm(handle, interval, guard(self.flush))
        self._armed = False

    def soon(self, key: Hashable, work: Callable[[], None]) -> None:
        """Do ``work`` at the next flush, unless work under ``key`` is already due."""
        if key in self._due:
            return
        self._due[key] = work
        if not self._armed:
            self._armed = True
            self._alarm.arm()

    def flush(self) -> None:
        """Do all the work due, in the order it was asked for (and what it asks for)."""
        self._armed = False
        guard = self._guard
        while self._due:
            due, self._due = self._due, {}
            for work in due.values():
                guard(work)()

    def close(self) -> None:
        """Do what is due now (the connection ends) and disarm."""
        self.flush()
        self._alarm.stop()
