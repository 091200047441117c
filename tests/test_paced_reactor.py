"""The paced reactor run of the real bindings, driven by a scripted ``lib`` (no Flux needed)."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable

import pytest

from fluxmon.sources.flux.bindings import PACE_SECONDS, FluxBindings

POLLIN = 1


class Script:
    """``flux_reactor_run`` and ``flux_pollevents`` answering from lists, turns recorded."""

    FLUX_REACTOR_NOWAIT = 1
    FLUX_POLLIN = POLLIN

    def __init__(self, turns: list[int], events: list[int], on_turn: Callable[[int], None]) -> None:
        self.turns, self.events, self.on_turn = turns, events, on_turn
        self.log: list[str] = []

    def flux_reactor_run(self, reactor: object, flags: int) -> int:
        assert flags == self.FLUX_REACTOR_NOWAIT
        self.log.append("turn")
        self.on_turn(self.log.count("turn"))
        return self.turns.pop(0)

    def flux_pollevents(self, raw: object) -> int:
        return self.events.pop(0)


class Handle:
    """What the paced run uses of a ``flux.Flux``: its reactor, raw handle and exception."""

    handle = "raw"
    exception: Exception | None = None

    def get_reactor(self) -> str:
        return "reactor"

    def reactor_stop(self) -> None:
        pass

    def raise_if_exception(self) -> None:
        if self.exception is not None:
            exception, self.exception = self.exception, None
            raise exception


class FFI:
    errno = errno.EPIPE


def _bindings() -> FluxBindings:
    bindings = FluxBindings.__new__(FluxBindings)  # no ``import flux``: only the loop is tested
    bindings._stopping = set()
    return bindings


def _run(monkeypatch: pytest.MonkeyPatch, turns: list[int], events: list[int]) -> list[str]:
    """Run the paced loop over the script; the log interleaves its turns and sleeps."""
    script = Script(turns, events, lambda n: None)
    monkeypatch.setattr(time, "sleep", lambda s: script.log.append(f"sleep {s}"))
    _bindings()._paced(Handle(), FFI(), script)
    return script.log


def test_turns_without_sleeping_while_messages_wait_and_sleeps_once_none_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Three messages waiting: three turns back to back, then one sleep; no watchers: it ends."""
    log = _run(monkeypatch, turns=[2, 2, 2, 2, 0], events=[POLLIN, POLLIN, 0, 0])
    pace = f"sleep {PACE_SECONDS}"
    assert log == ["turn", "turn", "turn", pace, "turn", pace, "turn"]


def test_a_stop_ends_the_run_at_the_next_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    """A callback's ``stop`` (a housekeeping tick, a lost connection) returns after its turn."""
    bindings = _bindings()
    handle = Handle()
    script = Script([3] * 10, [0] * 10, lambda n: bindings.stop(handle) if n == 4 else None)
    monkeypatch.setattr(time, "sleep", lambda s: script.log.append("sleep"))
    bindings._paced(handle, FFI(), script)
    assert script.log.count("turn") == 4
    assert script.log[-1] == "turn"
    assert not bindings._stopping  # the next run on a handle at that address starts afresh


def test_a_reactor_error_is_oserror_and_a_callbacks_exception_wins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """-1 from a turn raises OSError with the errno; an exception a callback left comes first."""
    monkeypatch.setattr(time, "sleep", lambda s: None)
    with pytest.raises(OSError, match=os.strerror(errno.EPIPE)) as caught:
        _bindings()._paced(Handle(), FFI(), Script([1, -1], [0, 0], lambda n: None))
    assert caught.value.errno == errno.EPIPE
    handle = Handle()
    handle.exception = KeyError("left by a callback")
    with pytest.raises(KeyError):
        _bindings()._paced(handle, FFI(), Script([-1], [0], lambda n: None))


def test_a_failed_handle_does_not_spin(monkeypatch: pytest.MonkeyPatch) -> None:
    """``flux_pollevents`` -1 (all bits set) is not a message waiting: the run sleeps."""
    log = _run(monkeypatch, turns=[1, 1, 0], events=[-1, -1])
    pace = f"sleep {PACE_SECONDS}"
    assert log == ["turn", pace, "turn", pace, "turn"]
