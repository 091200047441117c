"""/metrics render time with the resource gauges of a large instance.

Builds the daemon's pipeline, defines an instance of N nodes (cores and GPUs, a
property per queue so that 20 queues each cover a slice of the nodes, plus one queue
over every node), drains and takes offline some nodes, runs one job per four nodes
(their allocations held), then times full text expositions of /metrics (best and
median of ``--repeat``), the resource collector alone, and, as the baseline, the
exposition of a pipeline with the same queues declared and no resource event (the
per-queue job histograms it holds are most of the cost).

The served encoders are timed twice more while a thread feeds job lifecycles through
the pipeline (each in one of the queues, with exec events, the daemon's job.event
records written to /dev/null): paced at ``--rate`` events/s (default 1,600, this
machine's broker at its peak), and as fast as it goes. Scrapes and batches contend for
the pipeline's lock and the GIL, as in the daemon.

Usage: python benchmarks/resource_metrics.py [--nodes 4096] [--queues 20] [--rate 1600]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import statistics
import sys
import threading
import time
from collections.abc import Callable

from prometheus_client import generate_latest
from prometheus_client.openmetrics import exposition as om

from fluxmon.app import build
from fluxmon.config import load_settings
from fluxmon.events import MAIN, JobEvent, ResourceEvent
from fluxmon.exposition import TEXT, choose
from fluxmon.hostlist import encode_idset
from fluxmon.pipeline import Pipeline
from fluxmon.resource_metrics import ResourceCollector
from fluxmon.testing import lifecycle


def instance(nodes: int, queues: int) -> tuple[list[ResourceEvent], dict[str, list[str]]]:
    """The restart and resource-define events, and each queue's required property."""
    slice_ = nodes // queues
    properties = {f"q{q}": encode_idset(range(q * slice_, (q + 1) * slice_)) for q in range(queues)}
    R = {
        "version": 1,
        "execution": {
            "R_lite": [{"rank": f"0-{nodes - 1}", "children": {"core": "0-63", "gpu": "0-3"}}],
            "nodelist": [f"node[0-{nodes - 1}]"],
            "properties": properties,
        },
    }
    events = [
        ResourceEvent(
            "restart",
            1.0,
            {
                "ranks": f"0-{nodes - 1}",
                "online": f"0-{nodes - 1}",
                "nodelist": f"node[0-{nodes - 1}]",
            },
        ),
        ResourceEvent("resource-define", 2.0, {"method": "configuration", "R": R}),
    ]
    requires = {f"queue{q}": [f"q{q}"] for q in range(queues - 1)}
    requires["all"] = []
    return events, requires


def jobs(nodes: int, t0: float) -> list[JobEvent]:
    """One running job per four nodes, 32 cores and 2 GPUs on each."""
    out: list[JobEvent] = []
    for jobid, first in enumerate(range(0, nodes, 4), 1):
        R = {
            "version": 1,
            "execution": {
                "R_lite": [
                    {"rank": f"{first}-{first + 3}", "children": {"core": "0-31", "gpu": "0-1"}}
                ],
                "nodelist": [f"node[{first}-{first + 3}]"],
            },
        }
        spec = {"attributes": {"system": {"queue": "all"}}}
        out += [
            JobEvent(jobid, MAIN, "submit", t0, {"userid": 1, "urgency": 16}, jobspec=spec),
            JobEvent(jobid, MAIN, "validate", t0, {}),
            JobEvent(jobid, MAIN, "depend", t0, {}),
            JobEvent(jobid, MAIN, "priority", t0, {"priority": 1}),
            JobEvent(jobid, MAIN, "alloc", t0 + 1, {}, R=R),
            JobEvent(jobid, MAIN, "start", t0 + 2, {}),
        ]
    return out


def feed(pipeline: Pipeline, queues: list[str], rate: float | None, stop: threading.Event) -> int:
    """Apply job lifecycles in batches of 16 events until ``stop``; how many were applied.

    Paced at ``rate`` events/s (None: as fast as it goes).
    """
    jobids = itertools.count(10_000_000)
    pending: list[object] = []
    applied = 0
    start = time.perf_counter()
    while not stop.is_set():
        while len(pending) < 16:
            jobid = next(jobids)
            t0 = 1_000_000.0 + jobid * 0.001
            pending += lifecycle(jobid, t0, queue=queues[jobid % len(queues)], exec_events=True)
        batch, pending = pending[:16], pending[16:]
        pipeline.events(batch)  # type: ignore[arg-type]
        applied += len(batch)
        if rate is not None:
            ahead = applied / rate - (time.perf_counter() - start)
            if ahead > 0:
                time.sleep(ahead)
    return applied


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=4096)
    parser.add_argument("--queues", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--rate", type=float, default=1600.0)
    args = parser.parse_args()
    sys.setswitchinterval(0.0005)  # as the daemons set it (fluxmon.app.SWITCH_INTERVAL)
    base = load_settings(None)
    settings = dataclasses.replace(base, log=dataclasses.replace(base.log, events="none"))
    parts = build(settings, open("/dev/null", "w"), clock=None)  # noqa: SIM115 - the daemon's life
    pipeline = parts.pipeline
    events, requires = instance(args.nodes, args.queues)
    pipeline.declare_queue_nodes(requires)
    pipeline.declare_queues(list(requires))
    pipeline.resource_events(events)
    pipeline.resource_events(
        [
            ResourceEvent("drain", 10.0, {"idset": "0-63", "reason": "bad disk", "overwrite": 0}),
            ResourceEvent("offline", 11.0, {"idset": "100-131"}),
            ResourceEvent("torpid", 12.0, {"idset": "200-203"}),
        ]
    )
    pipeline.events(jobs(args.nodes, 20.0))

    def timed(render: Callable[[], object]) -> list[float]:
        render()  # warm: the encoders' label caches fill on the first scrape
        out = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            render()
            out.append(time.perf_counter() - start)
        return out

    registry = parts.registry
    baseline = build(settings, open("/dev/null", "w"), clock=None)  # noqa: SIM115
    baseline.pipeline.declare_queues(list(requires))
    collector = ResourceCollector(pipeline.resource_snapshot)
    openmetrics, _ = choose("application/openmetrics-text; version=1.0.0")
    served_text = ("/metrics text (fluxmon's encoder, served)", lambda: TEXT(registry), 50)
    served_om = ("/metrics OpenMetrics (fluxmon's, served)", lambda: openmetrics(registry), 80)
    library_text = ("/metrics text (prometheus_client)", lambda: generate_latest(registry), None)
    library_om = (
        "/metrics OpenMetrics (prometheus_client)",
        lambda: om.generate_latest(registry),  # type: ignore[no-untyped-call]
        None,
    )
    bare = ("baseline: same queues, no resources, text", lambda: TEXT(baseline.registry), None)
    alone = ("resource gauges alone", lambda: list(collector.collect()), None)
    rows = [
        (label, timed(render), target)
        for label, render, target in (served_text, served_om, library_text, library_om, bare, alone)
    ]
    text = TEXT(registry)
    series = sum(1 for line in text.splitlines() if line.startswith(b"flux_resource_"))
    print(
        f"nodes={args.nodes} queues={len(requires)} running_jobs={args.nodes // 4} "
        f"resource_series={series} exposition_bytes={len(text)}"
    )
    for label, times, target in rows:
        goal = f" (target < {target} ms)" if target else ""
        print(
            f"{label}: best {min(times) * 1e3:.2f} ms, median "
            f"{statistics.median(times) * 1e3:.2f} ms{goal}"
        )
    # While ingesting: a pipeline writing job.event records, as the daemon's default.
    logged = build(base, open("/dev/null", "w"), clock=time.time)  # noqa: SIM115
    logged.writer.start()
    logged.pipeline.declare_queue_nodes(requires)
    logged.pipeline.declare_queues(list(requires))
    logged.pipeline.resource_events(events)
    logged.pipeline.events(jobs(args.nodes, 20.0))
    busy = logged.registry
    for pace, rate in ((f"{args.rate:,.0f} events/s", args.rate), ("flat out", None)):
        stop = threading.Event()
        done: list[int] = []

        def run(
            rate: float | None = rate, stop: threading.Event = stop, done: list[int] = done
        ) -> None:
            done.append(feed(logged.pipeline, list(requires), rate, stop))

        thread = threading.Thread(target=run)
        began = time.perf_counter()
        thread.start()
        time.sleep(0.5)
        for label, render, target in (
            ("/metrics text", lambda: TEXT(busy), 50),
            ("/metrics OpenMetrics", lambda: openmetrics(busy), 80),
        ):
            times = timed(render)
            print(
                f"{label} while ingesting {pace}: best {min(times) * 1e3:.2f} ms, median "
                f"{statistics.median(times) * 1e3:.2f} ms (target < {target} ms)"
            )
        stop.set()
        thread.join()
        elapsed = time.perf_counter() - began
        print(f"  ingested {done[0]:,} events in {elapsed:.1f} s ({done[0] / elapsed:,.0f}/s)")
    logged.writer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
