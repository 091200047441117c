"""The gathering of live work between flushes (fluxmon.sources.flux.gather)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fluxmon.sources.flux.gather import GATHER_SECONDS, Gather


class Alarm:
    """A one-shot timer that fires only when the test says so."""

    def __init__(self, after: float, callback: Callable[[], None]) -> None:
        self.after = after
        self.callback = callback
        self.armed = 0
        self.stopped = 0

    def arm(self) -> None:
        """Count an arming."""
        self.armed += 1

    def stop(self) -> None:
        """Count a stop."""
        self.stopped += 1


class Bindings:
    """The one binding Gather uses."""

    def __init__(self) -> None:
        self.alarms: list[Alarm] = []

    def alarm(self, _handle: Any, after: float, callback: Callable[[], None]) -> Alarm:
        """A test alarm."""
        alarm = Alarm(after, callback)
        self.alarms.append(alarm)
        return alarm


def make() -> tuple[Gather, Alarm, list[str]]:
    """A Gather whose guard records failures instead of raising."""
    failures: list[str] = []

    def guard(work: Callable[..., None]) -> Callable[..., None]:
        def guarded(*args: Any) -> None:
            try:
                work(*args)
            except Exception as err:
                failures.append(str(err))

        return guarded

    bindings = Bindings()
    gather = Gather(bindings, None, guard)
    (alarm,) = bindings.alarms
    return gather, alarm, failures


def test_work_waits_for_the_flush_once_per_key_in_order() -> None:
    """Work is done at the flush, in the order asked, once per key; one arming per window."""
    gather, alarm, _ = make()
    assert alarm.after == GATHER_SECONDS
    done: list[str] = []
    gather.soon("journal", lambda: done.append("journal"))
    gather.soon(("exec", 1), lambda: done.append("exec 1"))
    gather.soon("journal", lambda: done.append("journal again"))  # already due
    assert done == []
    assert alarm.armed == 1
    alarm.callback()
    assert done == ["journal", "exec 1"]
    gather.soon("journal", lambda: done.append("next window"))
    assert alarm.armed == 2
    alarm.callback()
    assert done[-1] == "next window"


def test_work_asked_for_during_a_flush_is_done_in_it_and_one_failure_spares_the_rest() -> None:
    """A flush does what its work asks for too, and goes on past work that raises."""
    gather, alarm, failures = make()
    done: list[str] = []

    def first() -> None:
        gather.soon("later", lambda: done.append("later"))
        raise RuntimeError("boom")

    gather.soon("first", first)
    gather.soon("second", lambda: done.append("second"))
    alarm.callback()
    assert failures == ["boom"]
    assert done == ["second", "later"]


def test_close_does_what_is_due_and_disarms() -> None:
    """Closing (the connection ends) delivers what was taken and stops the alarm."""
    gather, alarm, _ = make()
    done: list[int] = []
    gather.soon(1, lambda: done.append(1))
    gather.close()
    assert done == [1]
    assert alarm.stopped == 1
