"""Memory and scrape cost of many active jobs (a large pending queue).

The tracker keeps every active job; the current-state gauges are computed at scrape
time from a snapshot of them. This measures, for N active jobs (most pending, some
running, with exec events), the memory held per job (tracemalloc) and the time of one
full ``/metrics`` exposition, against the time of an exposition with no active job. It
also measures, in fresh pipelines, the memory of a pending job and of a running job
alone (``--jobs / 10`` of each).

Usage: python benchmarks/active_jobs.py [--jobs 100000]
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import time
import tracemalloc
from collections.abc import Callable

from prometheus_client import generate_latest

from fluxmon.app import Parts, build
from fluxmon.config import load_settings
from fluxmon.events import EXEC, JobEvent
from fluxmon.testing import ev, pending


def job_events(jobid: int, t0: float, running: bool) -> list[JobEvent]:
    """A job left pending in SCHED, or running with a few exec events."""
    queue = ("batch", "debug", "gpu")[jobid % 3]
    events = pending(jobid, t0, queue=queue, duration=3600.0, userid=1000 + jobid % 50)
    if running:
        events += [
            ev(jobid, "alloc", t0 + 1.0, annotations={"sched": {"resource_summary": "rank0"}}),
            ev(jobid, "init", t0 + 1.01, EXEC),
            ev(jobid, "starting", t0 + 1.02, EXEC),
            ev(jobid, "start", t0 + 1.03),
            ev(jobid, "shell.init", t0 + 1.04, EXEC, service="x", size=1),
            ev(jobid, "shell.start", t0 + 1.05, EXEC,
               taskmap={"version": 1, "map": [[0, 1, 1, 1]]}),
        ]  # fmt: skip
    return events


def scrape_seconds(registry: object, repeat: int = 5) -> float:
    """Best of ``repeat`` full text expositions."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        generate_latest(registry)  # type: ignore[arg-type]
        best = min(best, time.perf_counter() - start)
    return best


def held_bytes(parts: Parts, jobs: int, running: Callable[[int], bool]) -> int:
    """Bytes still allocated after ``jobs`` jobs were applied (``running(i)``: job i runs)."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(jobs):
        parts.pipeline.events(job_events(1_000_000 + i, 1.8e9 + i * 0.001, running(i)))
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return held


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    args = parser.parse_args()
    base = load_settings(None)
    settings = dataclasses.replace(base, log=dataclasses.replace(base.log, events="none"))
    devnull = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    parts = build(settings, devnull, clock=None)
    empty = scrape_seconds(parts.registry)

    held = held_bytes(parts, args.jobs, lambda i: i % 10 == 0)

    full = scrape_seconds(parts.registry)
    assert len(parts.tracker.jobs) == args.jobs
    print(f"active jobs                 {args.jobs:>12,}")
    print(f"memory per active job       {held / args.jobs:>12,.0f} B  ({held / 2**20:,.1f} MiB)")
    print(f"scrape, no active job       {empty * 1e3:>12.2f} ms")
    print(f"scrape, {args.jobs:,} active jobs {full * 1e3:>9.2f} ms  (x{full / empty:.1f})")
    alone = max(args.jobs // 10, 1)
    every: dict[str, Callable[[int], bool]] = {
        "pending": lambda _: False,
        "running": lambda _: True,
    }
    for what, kind in every.items():
        size = held_bytes(build(settings, devnull, clock=None), alone, kind)
        print(f"memory per {what} job alone  {size / alone:>11,.0f} B  ({alone:,} jobs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
