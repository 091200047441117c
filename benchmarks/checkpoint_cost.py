"""Checkpoint cost: events/s through the daemon's pipeline with and without per-batch saves.

The Flux source hands each live batch (one journal response: one job's new events) to
the pipeline, then asks the log writer to save the checkpoint once that batch's
records are written (``LineWriter.after_written``). The writer thread runs the newest
save due after each write, with an fsync of the file and of its directory, before it
writes the next batch: at a high rate the saves group themselves (one per writer
batch), at a low rate there is one per source batch.

This feeds a replay-format file (``benchmarks/replay_throughput.py --keep FILE``) in
batches of ``--batch`` events through a pipeline whose log writer thread writes logfmt
``job.event`` records to a file, in three modes, each in a fresh subprocess:

1. ``none``    no checkpoint (the floor);
2. ``batch``   a save requested after every batch, as the Flux source does;
3. ``sync``    a save after every batch on the source thread, not grouped (what a
   naive per-batch fsync would cost);
4. ``metrics`` what the daemon does: positions after every batch, and the ``flux_*``
   counters and histograms captured (``MetricsState.capture``) and saved with the
   position at most once per ``SAVE_INTERVAL`` (1 s), one save in flight at a time.

It prints events/s, the number of checkpoint files actually written and, for
``metrics``, the median capture time and the file's size.

    python benchmarks/checkpoint_cost.py FILE [--events 100000] [--batch 3] [--dir DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fluxmon.app import build
from fluxmon.config import load_settings
from fluxmon.events import EXEC, JobEvent
from fluxmon.sources.flux.checkpoint import Checkpoint
from fluxmon.sources.flux.source import SAVE_INTERVAL
from fluxmon.sources.replay import parse_line

MODES = ("none", "batch", "sync", "metrics")


def measure(mode: str, path: Path, events: int, batch: int, directory: Path) -> dict[str, object]:
    """Feed the events; return events/s and saves written."""
    lines = path.read_bytes().splitlines()[:events]
    parsed: list[JobEvent] = [parse_line(line) for line in lines]
    base = load_settings(None)
    settings = dataclasses.replace(base, log=dataclasses.replace(base.log, format="logfmt"))
    out_path = directory / f"records-{mode}.log"
    with out_path.open("w") as out:
        parts = build(settings, out, clock=None)
        parts.writer.start()
        checkpoint = Checkpoint(directory)
        writes = 0
        original = checkpoint._save

        def counting(*args: Any) -> None:
            nonlocal writes
            writes += 1
            original(*args)

        checkpoint._save = counting  # type: ignore[method-assign,assignment]
        log = parts.log
        since = exec_since = 0.0
        captures: list[float] = []
        in_flight = [False]
        due = 0.0

        def save_with(position: tuple[float, float], metrics: object) -> None:
            checkpoint.save(position[0], position[1], log, metrics=metrics)
            in_flight[0] = False

        t0 = time.perf_counter()
        for start in range(0, len(parsed), batch):
            chunk = parsed[start : start + batch]
            parts.pipeline.events(chunk, live=True)
            for event in chunk:
                if event.eventlog == EXEC:
                    exec_since = max(exec_since, event.timestamp)
                else:
                    since = max(since, event.timestamp)
            if mode == "batch":
                position = (since, exec_since)
                parts.writer.after_written(
                    lambda p=position: checkpoint.save(p[0], p[1], log)  # type: ignore[misc]
                )
            elif mode == "sync":
                checkpoint.save(since, exec_since, log)
            elif mode == "metrics":
                now = time.monotonic()
                if not in_flight[0] and now >= due:
                    c0 = time.perf_counter()
                    metrics = parts.metrics_state.capture()
                    captures.append(time.perf_counter() - c0)
                    in_flight[0], due = True, now + SAVE_INTERVAL
                    position = (since, exec_since)
                    parts.writer.after_written(
                        lambda p=position, m=metrics: save_with(p, m)  # type: ignore[misc]
                    )
        parts.writer.close(60.0)
        seconds = time.perf_counter() - t0
    return {
        "mode": mode,
        "events": len(parsed),
        "batch": batch,
        "seconds": seconds,
        "events_per_s": round(len(parsed) / seconds),
        "checkpoint_writes": writes,
        **(
            {
                "capture_ms_p50": round(statistics.median(captures) * 1000, 3),
                "file_bytes": checkpoint.path.stat().st_size,
            }
            if captures
            else {}
        ),
    }


def main() -> None:
    """Run each mode in a fresh subprocess and print the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path, help="a replay-format file")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=3, help="events per source batch")
    parser.add_argument("--dir", type=Path, help="checkpoint directory (default: a temp dir)")
    parser.add_argument("--measure", metavar="MODE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        result = measure(args.measure, args.file, args.events, args.batch, args.dir)
        print(json.dumps(result))
        return
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for mode in MODES:
            sizes = ["--events", str(args.events), "--batch", str(args.batch)]
            child = [sys.executable, __file__, str(args.file), "--measure", mode, *sizes]
            child += ["--dir", tmp]
            done = subprocess.run(child, check=True, capture_output=True, text=True)
            print(done.stdout.strip())


if __name__ == "__main__":
    main()
