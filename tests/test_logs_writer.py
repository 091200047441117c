"""The log writer thread gathers records handed over one at a time into fewer writes."""

from __future__ import annotations

import io
import threading

from fluxmon.logs import LineWriter


class Writes(io.StringIO):
    """A stream keeping each ``write`` apart and signalling the first."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []
        self.first = threading.Event()
        self.second = threading.Event()

    def write(self, text: str) -> int:
        """Keep the write."""
        self.writes.append(text)
        (self.second if self.first.is_set() else self.first).set()
        return super().write(text)


def gathering(capacity: int) -> tuple[Writes, LineWriter]:
    """A writer gathering for 60 s after each write, its first record ("a") written."""
    stream = Writes()
    writer = LineWriter(stream, capacity=capacity, gather=60.0)
    writer.start()
    writer.msg("a")
    assert stream.first.wait(30)  # woken at once: it was asleep
    return stream, writer


def test_records_handed_over_while_the_writer_gathers_come_in_one_write() -> None:
    """After a write, records handed over one by one wait for one write (close ends the wait)."""
    stream, writer = gathering(capacity=1000)
    for name in ("b", "c", "d"):
        writer.hold()
        writer.msg(name)
        writer.release()
    assert not stream.second.wait(0.2)  # gathering: nothing wakes it
    assert writer.pending == 3
    assert writer.close(30)
    assert stream.writes == ["a\n", "b\nc\nd\n"]


def test_a_filling_buffer_wakes_a_gathering_writer() -> None:
    """A tenth of the buffer used wakes the writer before its gathering time is up."""
    stream, writer = gathering(capacity=100)
    for n in range(10):
        writer.msg(str(n))
    assert stream.second.wait(30)  # well before the 60 s
    assert stream.writes[1] == "".join(f"{n}\n" for n in range(10))
    assert writer.close(30)


def test_after_written_runs_after_the_gathered_write() -> None:
    """A checkpoint mark handed over while the writer gathers runs once its records are out."""
    stream, writer = gathering(capacity=1000)
    ran = threading.Event()
    seen: list[str] = []

    def mark() -> None:
        seen.append(stream.getvalue())
        ran.set()

    writer.msg("b")
    writer.after_written(mark)
    assert not ran.wait(0.2)
    assert writer.close(30)
    assert ran.is_set()
    assert seen == ["a\nb\n"]


def test_without_gathering_each_hand_over_is_written_on_its_own() -> None:
    """``gather=0``: the writer writes whatever it finds as soon as it is woken."""
    stream = Writes()
    writer = LineWriter(stream, capacity=1000, gather=0.0)
    writer.start()
    writer.msg("a")
    assert stream.first.wait(30)
    writer.msg("b")
    assert stream.second.wait(30)
    assert writer.close(30)
    assert stream.writes == ["a\n", "b\n"]
