"""Progress of a long replay: a bar on a terminal, else periodic ``replay.progress`` records.

The replay source calls the reporter with the bytes read so far once per batch (not per
event); the reporter reads the clock then and does anything only when its interval has
passed, so the per-event path costs nothing.

On a terminal the bar shares stderr with the log records: :class:`BarStream` wraps the
stream given to the logger, erases the bar before a record is written and redraws it
after, so the bar stays on the last line.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable, Iterable
from typing import Final, TextIO

from structlog.typing import FilteringBoundLogger

#: Seconds of wall time between ``replay.progress`` records (not on a terminal).
RECORD_EVERY: Final = 5.0
#: Seconds between redraws of the bar (on a terminal).
DRAW_EVERY: Final = 0.2
BAR_WIDTH: Final = 20
_ERASE: Final = "\r\x1b[K"

#: Events applied and inputs refused so far.
Counts = Callable[[], tuple[int, int]]


def total_size(paths: Iterable[str | os.PathLike[str]]) -> int:
    """The files' total size in bytes (a file that cannot be read counts 0)."""
    total = 0
    for path in paths:
        try:
            total += os.path.getsize(path)
        except OSError:
            continue
    return total


class BarStream(io.TextIOBase, TextIO):
    """A text stream that keeps a one-line bar below whatever is written through it."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        try:
            columns = os.get_terminal_size(stream.fileno()).columns
        except (AttributeError, OSError, ValueError):  # not a real terminal: assume 80
            columns = 80
        #: A bar longer than the terminal would wrap and could not be erased.
        self._width = max(columns - 1, 1)
        self._bar = ""
        self._shown = False
        self._line_start = True

    def write(self, text: str) -> int:
        """Erase the bar, then write ``text``; the bar returns at the next flush."""
        if self._shown:
            self._stream.write(_ERASE)
            self._shown = False
        if text:
            self._line_start = text.endswith("\n")
        return self._stream.write(text)

    def flush(self) -> None:
        """Redraw the bar (when output ends at a line start) and flush."""
        if self._bar and not self._shown and self._line_start:
            self._stream.write(self._bar)
            self._shown = True
        self._stream.flush()

    def isatty(self) -> bool:
        """Whether the wrapped stream is a terminal."""
        return self._stream.isatty()

    def draw(self, bar: str) -> None:
        """Show ``bar`` in place of the previous one."""
        self._bar = bar[: self._width]
        self.write("")
        self.flush()

    def close_bar(self, bar: str) -> None:
        """Leave ``bar`` as a finished line; later writes go below it."""
        self._bar = ""
        self.write(bar + "\n")
        self.flush()


class ReplayProgress:
    """Called with the bytes read so far; reports every ``interval`` seconds of wall time."""

    def __init__(
        self,
        total_bytes: int,
        counts: Counts,
        *,
        log: FilteringBoundLogger | None = None,
        bar: BarStream | None = None,
        interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._total = total_bytes
        self._counts = counts
        self._log = log
        self._bar = bar
        self._interval = interval if interval is not None else (DRAW_EVERY if bar else RECORD_EVERY)
        self._clock = clock
        self._start = self._last_time = clock()
        self._last_events = 0
        self._bytes = 0

    def __call__(self, bytes_read: int) -> None:
        """The source's per-batch call: report when the interval has passed."""
        self._bytes = bytes_read
        now = self._clock()
        if now - self._last_time >= self._interval:
            self._report(now)

    def finish(self) -> None:
        """The input is read: leave the bar's final state on its own line."""
        if self._bar is not None:
            events, _, refused, percent = self._measure(now := self._clock())
            rate = events / (now - self._start) if now > self._start else 0.0
            self._bar.close_bar(self._line(events, rate, refused, percent))

    def _measure(self, now: float) -> tuple[int, float, int, float | None]:
        events, refused = self._counts()
        elapsed = now - self._last_time
        rate = (events - self._last_events) / elapsed if elapsed > 0 else 0.0
        if not self._total:  # only pipes, whose size is unknown
            return events, rate, refused, None
        return events, rate, refused, min(100.0 * self._bytes / self._total, 100.0)

    def _report(self, now: float) -> None:
        events, rate, refused, percent = self._measure(now)
        self._last_time, self._last_events = now, events
        if self._bar is not None:
            self._bar.draw(self._line(events, rate, refused, percent))
        elif self._log is not None:
            self._log.info(
                "replay.progress",
                events=events,
                events_per_s=round(rate, 1),
                refused=refused,
                percent=None if percent is None else round(percent, 1),
            )

    @staticmethod
    def _line(events: int, rate: float, refused: int, percent: float | None) -> str:
        if percent is None:
            head = "replay"
        else:
            filled = round(BAR_WIDTH * percent / 100)
            head = f"replay [{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {percent:5.1f}%"
        return f"{head} {events:,} events {rate:,.0f}/s {refused:,} refused"
