"""Progress of ``fluxmon replay``: a bar on a terminal, ``replay.progress`` records elsewhere."""

from __future__ import annotations

import dataclasses
import io
import os
import re
import threading
from pathlib import Path
from typing import Any

from fluxmon import app
from fluxmon.config import load_settings
from fluxmon.logquery import parse_logfmt
from fluxmon.logs import make_logger
from fluxmon.progress import BarStream, ReplayProgress
from fluxmon.testing import parse_log
from tests.conftest import SCENARIOS, json_settings

ERASE = "\r\x1b[K"


class FakeTTY(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def _screen(text: str) -> list[str]:
    """The lines a terminal would show for ``text`` (``\\r\\x1b[K`` erases the line)."""
    lines = [""]
    for part in re.split(r"(\r\x1b\[K|\n)", text):
        if part == ERASE:
            lines[-1] = ""
        elif part == "\n":
            lines.append("")
        else:
            lines[-1] += part
    return [line for line in lines if line]


def test_non_tty_replay_emits_progress_records() -> None:
    """Off a terminal, replay logs ``replay.progress`` records up to 100% of the bytes."""
    err = io.StringIO()
    status = app.replay(
        [str(p) for p in SCENARIOS], json_settings(), io.StringIO(), err, progress_every=0
    )
    assert status == 0
    records = parse_log(err.getvalue())
    progress = [r for r in records if r["msg"] == "replay.progress"]
    assert len(progress) >= len(SCENARIOS)
    assert set(progress[0]) >= {"events", "events_per_s", "refused", "percent"}
    percents = [r["percent"] for r in progress]
    assert percents == sorted(percents)
    assert percents[-1] == 100.0
    (stop,) = [r for r in records if r["msg"] == "fluxmon.stop"]
    assert progress[-1]["events"] == stop["events"]
    assert all(r["refused"] == 0 for r in progress)
    assert "\r" not in err.getvalue()


def test_progress_reports_once_per_interval_of_wall_time() -> None:
    """Batches between two interval marks give no record; each mark passed gives one."""
    err = io.StringIO()
    times = iter([100.0, 100.1, 104.9, 105.0, 105.1, 109.0, 110.5])
    counts = iter([(1000, 0), (3000, 2)])
    log = make_logger(err, "json")
    progress = ReplayProgress(
        1000, lambda: next(counts), log=log, interval=5.0, clock=lambda: next(times)
    )
    for done in (100, 200, 300, 400, 500, 1000):
        progress(done)
    records = parse_log(err.getvalue())
    assert [(r["percent"], r["events"], r["refused"]) for r in records] == [
        (30.0, 1000, 0),
        (100.0, 3000, 2),
    ]
    assert records[0]["events_per_s"] == 200.0  # 1000 events in 5 s
    assert records[1]["events_per_s"] == 363.6  # 2000 events in 5.5 s


def test_tty_replay_draws_a_bar_below_the_records() -> None:
    """On a terminal, a bar is drawn; records stay whole and the final bar stays on one line."""
    base = load_settings(None)
    settings = dataclasses.replace(base, log=dataclasses.replace(base.log, events="none"))
    err = FakeTTY()
    status = app.replay([str(p) for p in SCENARIOS], settings, io.StringIO(), err, progress_every=0)
    assert status == 0
    text = err.getvalue()
    assert text.count("replay [") > len(SCENARIOS)  # redrawn after each file
    screen = _screen(text)
    bars = [line for line in screen if line.startswith("replay [")]
    assert len(bars) == 1
    assert re.fullmatch(r"replay \[#{20}\] 100\.0% [\d,]+ events [\d,]+/s 0 refused", bars[0]), (
        bars[0]
    )
    assert screen[-1].startswith("ts=")  # fluxmon.stop is written below the bar
    records: list[dict[str, Any]] = [parse_logfmt(line) for line in screen if line != bars[0]]
    assert [r["msg"] for r in records].count("job.finished") == len(SCENARIOS)
    assert all(set(r) >= {"ts", "level", "msg"} for r in records)
    assert not any("replay [" in line for line in screen if line != bars[0])
    assert "replay.progress" not in text


def test_replay_from_a_pipe_reports_no_percent(tmp_path: Path) -> None:
    """A pipe has no size: progress records carry the events and an empty percent."""
    fifo = tmp_path / "events.fifo"
    os.mkfifo(fifo)
    data = b"".join(p.read_bytes() for p in SCENARIOS)

    def feed() -> None:
        with fifo.open("wb") as pipe:
            pipe.write(data)

    writer = threading.Thread(target=feed)
    writer.start()
    err = io.StringIO()
    status = app.replay([str(fifo)], json_settings(), io.StringIO(), err, progress_every=0)
    writer.join(10)
    assert status == 0
    progress = [r for r in parse_log(err.getvalue()) if r["msg"] == "replay.progress"]
    assert progress
    assert all(r["percent"] is None for r in progress)
    assert progress[-1]["events"] == sum(1 for line in data.splitlines() if line.strip())


def test_bar_is_cut_to_the_terminal_width() -> None:
    """A bar never wraps (a wrapped line could not be erased): 79 columns off a real tty."""
    stream = FakeTTY()
    bar = BarStream(stream)
    bar.draw("x" * 200)
    bar.write("ts=1 level=info msg=m\n")
    bar.flush()
    assert stream.getvalue() == "x" * 79 + ERASE + "ts=1 level=info msg=m\n" + "x" * 79
