"""Log record cost: microseconds per ``job.event`` record, rendered and handed to the writer.

Events come from ``benchmarks/replay_throughput.py``'s workload (realistic lifecycles,
contexts and exec events), applied once to a tracker to get each event's job; then, per
format (``logfmt``, ``json``) and batch size (1: a live batch of one event; 64: a replay
or backlog batch), ``LogSink.job_event`` is called for every event between the writer's
``hold`` and ``release`` (as the pipeline does per batch), the writer thread writing to a
file. A paced run (``--paced`` records, logfmt, batches of one, 1 ms apart) is how a
live source hands records over; its CPU includes that of the pauses, measured alone
(``pauses``) for comparison. It prints, median over ``--rounds`` (formats and batch
sizes alternated within a round), the feeding thread's CPU per record
(``thread_time``), the whole process's CPU per record including the writer thread
(``process_time``), and the wall time per record until everything is written.

The ``job.finished`` records of the jobs that finished (``logfmt/fin``, ``json/fin``; one
per job, written even with per-event records off) are timed the same way, unless
``--no-finished``.

    python benchmarks/log_records.py [--events 100000] [--rounds 5] [--paced 3000] [--json]
        [--no-finished]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from fluxmon.config import LogFormat
from fluxmon.events import JobEvent
from fluxmon.logs import HotRecords, LineWriter, LogOptions, LogSink, make_logger
from fluxmon.sources.replay import parse_line
from fluxmon.tracker import Job, NullSink, Tracker

FORMATS: Final[tuple[LogFormat, ...]] = ("logfmt", "json")
BATCHES: Final = (1, 64)
#: The paced mode: batches of one, a pause after each (a live source at about 1,000/s).
PACED: Final = (1, 0.001)


def _workload(events: int) -> list[str]:
    path = Path(__file__).resolve().parent / "replay_throughput.py"
    spec = importlib.util.spec_from_file_location("bench_replay_throughput", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return [json.dumps(line) for line in module.workload(events)]


class _Pairs(NullSink):
    """Keeps every ``(job, event)`` the tracker hands its sinks, and every finished job."""

    def __init__(self) -> None:
        self.pairs: list[tuple[Job, JobEvent]] = []
        self.finished: list[Job] = []

    def job_event(self, job: Job, event: JobEvent) -> None:
        """Keep the pair."""
        self.pairs.append((job, event))

    def job_finished(self, job: Job) -> None:
        """Keep the job."""
        self.finished.append(job)


def pairs(events: int) -> tuple[list[tuple[Job, JobEvent]], list[Job]]:
    """The (job, event) pairs of ``events`` generated events, as a tracker sees them,
    and the jobs that finished."""
    keep = _Pairs()
    tracker = Tracker([keep])
    for line in _workload(events):
        tracker.apply(parse_line(line))
    return keep.pairs, keep.finished


def _feed(
    path: Path,
    fmt: LogFormat,
    items: list[tuple[Any, ...]],
    batch: int,
    record: Callable[[LogSink], Callable[..., None]],
    gap: float = 0.0,
) -> tuple[float, float, float]:
    """Write ``record(sink)(*item)`` for every item, in batches of ``batch``, to ``path``.

    Returns the seconds of the feeding thread's CPU, the process's CPU (the writer thread
    included, until everything is written) and wall time. With a ``gap`` (seconds), the
    feeder sleeps that long after each batch, as a live source waits for the broker.
    """
    with open(path, "w", encoding="utf-8") as stream:
        writer = LineWriter(stream, capacity=10_000_000)
        options = LogOptions(fmt, "info")
        sink = LogSink(make_logger(writer, options=options), hot=HotRecords(writer, options))
        writer.start()
        write, hold, release = record(sink), writer.hold, writer.release
        chunks = [items[start : start + batch] for start in range(0, len(items), batch)]
        wall, cpu, thread = time.perf_counter(), time.process_time(), time.thread_time()
        for chunk in chunks:
            hold()
            for item in chunk:
                write(*item)
            release()
            if gap:
                time.sleep(gap)
        thread = time.thread_time() - thread
        writer.close(600)
        cpu = time.process_time() - cpu
        wall = time.perf_counter() - wall
    return thread, cpu, wall


def _row(
    kind: str, batch: object, records: int, seconds: tuple[float, float, float]
) -> dict[str, Any]:
    """One result row: microseconds per record."""
    thread, cpu, wall = seconds
    scale = 1e6 / records
    return {
        "format": kind,
        "batch": batch,
        "records": records,
        "feed_us": thread * scale,
        "cpu_us": cpu * scale,
        "wall_us": wall * scale,
    }


def measure_finished(fmt: LogFormat, batch: int, jobs: list[Job], directory: str) -> dict[str, Any]:
    """Feed every finished job's ``job.finished`` record in batches of ``batch``."""
    path = Path(directory) / f"finished-{fmt}-{batch}.log"
    seconds = _feed(path, fmt, [(job,) for job in jobs], batch, lambda sink: sink.job_finished)
    return _row(f"{fmt}/fin", batch, len(jobs), seconds)


def measure(
    fmt: LogFormat,
    batch: int,
    work: list[tuple[Job, JobEvent]],
    directory: str,
    *,
    gap: float = 0.0,
) -> dict[str, Any]:
    """Feed every pair's record in batches of ``batch``; CPU and wall time per record.

    With a ``gap`` (seconds), the feeder sleeps that long after each batch, as a live
    source waits for the broker: the writer thread then sleeps and is woken per batch.
    """
    path = Path(directory) / f"{fmt}-{batch}.log"
    seconds = _feed(path, fmt, list(work), batch, lambda sink: sink.job_event, gap)
    return _row(fmt, batch if not gap else f"{batch}+{gap * 1000:g}ms", len(work), seconds)


def pauses(count: int, gap: float) -> dict[str, Any]:
    """The paced mode's pauses alone: what its CPU per record includes besides records."""
    wall, cpu, thread = time.perf_counter(), time.process_time(), time.thread_time()
    for _ in range(count):
        time.sleep(gap)
    seconds = (
        time.thread_time() - thread,
        time.process_time() - cpu,
        time.perf_counter() - wall,
    )
    return _row("pauses", "alone", count, seconds)


def main(argv: list[str] | None = None) -> int:
    """Run the rounds and print the medians."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print every run as JSON")
    parser.add_argument(
        "--paced", type=int, default=3000, help="records of the paced logfmt run (0: none)"
    )
    parser.add_argument(
        "--finished",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time the job.finished records of the jobs that finished (logfmt/fin, json/fin)",
    )
    args = parser.parse_args(argv)
    work, finished = pairs(args.events)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as directory:
        for number in range(args.rounds):
            order = [(fmt, batch) for fmt in FORMATS for batch in BATCHES]
            if number % 2:
                order.reverse()
            runs.extend(measure(fmt, batch, work, directory) for fmt, batch in order)
            if args.finished and finished:
                runs.extend(
                    measure_finished(fmt, batch, finished, directory) for fmt, batch in order
                )
            if args.paced:
                paced = work[: args.paced]
                runs.append(measure("logfmt", PACED[0], paced, directory, gap=PACED[1]))
                runs.append(pauses(args.paced, PACED[1]))
    if args.json:
        print(json.dumps(runs, indent=1))
    print(
        f"{len(work)} job.event records ({len(finished)} job.finished: */fin), {args.rounds} "
        "rounds, median [min-max] us per record"
    )
    print(f"{'format':10} {'batch':>9} {'feeding thread':>22} {'process CPU':>22} {'wall':>22}")
    kinds: list[tuple[str, object]] = [(fmt, batch) for fmt in FORMATS for batch in BATCHES]
    if args.paced:
        kinds.append(("logfmt", f"{PACED[0]}+{PACED[1] * 1000:g}ms"))
        kinds.append(("pauses", "alone"))
    if args.finished and finished:
        kinds.extend((f"{fmt}/fin", batch) for fmt in FORMATS for batch in BATCHES)
    for fmt, batch in kinds:
        mine = [run for run in runs if run["format"] == fmt and run["batch"] == batch]
        cells = []
        for key in ("feed_us", "cpu_us", "wall_us"):
            values = [run[key] for run in mine]
            cells.append(
                f"{statistics.median(values):6.2f} [{min(values):5.2f}-{max(values):5.2f}]"
            )
        print(f"{fmt:10} {batch:>9} {cells[0]:>22} {cells[1]:>22} {cells[2]:>22}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
