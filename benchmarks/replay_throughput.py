"""Replay throughput: how fast ``fluxmon replay`` turns recorded events into metrics and logs.

Generates a large replay-format file (default 1,000,000 events: many interleaved jobs with
realistic lifecycles, contexts, jobspecs and exec events, shaped like tests/data/scenarios)
and measures, each in a fresh subprocess over the same file:

1. ``json``    a bare loop that only ``json.loads`` every line (the floor);
2. ``nolog``   the replay pipeline with per-event logs off (``log.events = "none"``);
3. ``logfmt``  the replay pipeline with logfmt per-event logs written to a file.

With orjson installed (the ``fast`` extra, which ``fluxmon.events.decode_json`` then uses),
(2) and (3) are also run with the standard library's decoder (``nolog-stdlib``,
``logfmt-stdlib``). It prints events/s, each mode's own peak RSS (measured in the child
that runs it) and each mode's ratio to (1). ``--rounds N`` runs every mode N times, the
modes interleaved, and prints medians with the spread (min-max); ``--build LABEL=DIR``
(repeatable) also measures the fluxmon found in DIR (another checkout: its modes run with
DIR first on ``PYTHONPATH``), interleaved in the same rounds. ``--file FILE`` measures an
existing file instead of generating one. ``--profile`` also runs (2) under cProfile and
prints the top 25 functions by total time. ``--stages`` also measures the first stages of
(2) alone: ``parse`` (lines read, decoded, checked and made events, nothing applied) and
``track`` (those events applied to a tracker with no sinks: the state machine alone, no
metric, record or resource).

    python benchmarks/replay_throughput.py [--events 1000000] [--keep FILE] [--rounds N]
        [--build LABEL=DIR] [--file FILE] [--profile] [--stages]
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import heapq
import json
import os
import pstats
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TextIO

from fluxmon.jobspec import RLIMIT, jobspec, resource_set

if TYPE_CHECKING:
    from fluxmon.config import Settings

MAIN: Final = "eventlog"
EXEC: Final = "guest.exec.eventlog"
MODES: Final = ("json", "nolog", "logfmt", "nolog-stdlib", "logfmt-stdlib")
#: The stages of the no-log replay, measured alone with ``--stages``.
STAGES: Final = ("parse", "track")
LABELS: Final = {
    "json": "json.loads only",
    "parse": "  stage: read+decode+check",
    "track": "  stage: + tracker, no sinks",
    "nolog": "replay, job.event logs off",
    "logfmt": "replay, logfmt job.event logs",
    "nolog-stdlib": "  the same, stdlib json",
    "logfmt-stdlib": "  the same, stdlib json",
}
BASE_TS: Final = 1_795_880_016.6594446
#: Seconds between job submissions; with lifecycles of seconds to minutes, hundreds overlap.
SUBMIT_GAP: Final = 0.02

Line = dict[str, Any]


# --------------------------------------------------------------------------- the workload


class Job:
    """One job's events under construction, at increasing timestamps."""

    def __init__(self, rng: random.Random, jobid: int, start: float) -> None:
        self.rng = rng
        self.jobid = jobid
        self.ts = start
        self.lines: list[tuple[float, Line]] = []

    def emit(
        self,
        name: str,
        context: dict[str, Any] | None = None,
        *,
        eventlog: str = MAIN,
        gap: float = 0.005,
        **extra: Any,
    ) -> None:
        """Append an event ``gap`` seconds (jittered) after the previous one."""
        if self.lines:
            self.ts += gap * self.rng.uniform(0.2, 2.0)
        line: Line = {"id": self.jobid, "eventlog": eventlog, "timestamp": self.ts, "name": name}
        if context:
            line["context"] = context
        line.update(extra)
        self.lines.append((self.ts, line))


def _jobspec(rng: random.Random, command: list[str], nnodes: int) -> dict[str, Any]:
    duration = rng.choice([0, 0, 60.0, 3600.0])
    queue = rng.choice([None, "batch", "batch", "debug"])
    return jobspec(
        queue,
        duration,
        nnodes,
        command=command,
        nnodes=nnodes if nnodes > 1 else None,
        cwd="/tmp",
        rlimit=RLIMIT,
    )


def _lifecycle(rng: random.Random, jobid: int, start: float) -> list[tuple[float, Line]]:
    """A realistic mix: mostly successes, some failures, cancels, dependencies and holds."""
    job = Job(rng, jobid, start)
    kind = rng.choices(
        ["ok", "exit", "signal", "cancel-pending", "cancel-running", "dep", "hold", "exec-fail"],
        weights=[60, 10, 4, 5, 5, 8, 4, 4],
    )[0]
    nnodes = rng.choice([1, 1, 1, 2, 4])
    status = {"exit": rng.randint(1, 3) << 8, "signal": 35072}.get(kind, 0)
    command = ["sh", "-c", f"exit {status >> 8}"] if kind == "exit" else ["true"]
    hold = kind == "hold" or (kind == "cancel-pending" and rng.random() < 0.5)
    job.emit(
        "submit",
        {"userid": rng.choice([0, 1000, 1001]), "urgency": 0 if hold else 16, "flags": 0,
         "version": 1},
        jobspec=_jobspec(rng, command, nnodes),
    )  # fmt: skip
    described = {"description": f"after-success=f{rng.randrange(10**6, 10**7)}"}
    if kind == "dep":
        job.emit("dependency-add", described)
    job.emit("validate", gap=0.012)
    if kind == "dep":
        job.emit("dependency-remove", described, gap=rng.uniform(1, 60))
    job.emit("depend", gap=0.011)
    job.emit("priority", {"priority": 0 if hold else 16}, gap=0.0001)
    if kind == "cancel-pending":
        job.emit(
            "exception",
            {"type": "cancel", "severity": 0, "note": "", "userid": 0},
            gap=rng.uniform(0.1, 30),
        )
        job.emit("clean", gap=0.0001)
        return job.lines
    if kind == "hold":
        job.emit("urgency", {"userid": 0, "urgency": 16}, gap=rng.uniform(1, 60))
        job.emit("priority", {"priority": 16}, gap=0.0001)
    ranks = "0" if nnodes == 1 else f"0-{nnodes - 1}"
    job.emit(
        "alloc",
        {"annotations": {"sched": {"resource_summary": f"rank{ranks}/core0"}}},
        gap=rng.uniform(0.002, 5),
        R=resource_set(job.ts, nnodes, nslots=nnodes),
    )
    if rng.random() < 0.1:
        job.emit("prolog-start", {"description": "job-manager.prolog"})
        job.emit("prolog-finish", {"description": "job-manager.prolog", "status": 0}, gap=0.5)
    job.emit("init", eventlog=EXEC, gap=0.0006)
    job.emit("starting", eventlog=EXEC, gap=0.001)
    job.emit("start", gap=0.003)
    service = f"0-shell-f{rng.randrange(10**6, 10**7)}"
    job.emit(
        "shell.init",
        {"service": service, "leader-rank": 0, "size": nnodes},
        eventlog=EXEC,
        gap=0.02,
    )
    if kind == "exec-fail":
        job.emit(
            "exception",
            {
                "type": "exec",
                "severity": 0,
                "note": "task 0 (host node0): start failed: /nonexistent: No such file",
                "userid": 0,
            },
        )
        status = 32512
    else:
        job.emit(
            "shell.start",
            {"taskmap": {"version": 1, "map": [[0, nnodes, 1, 1]]}},
            eventlog=EXEC,
        )
        if kind == "cancel-running":
            job.emit(
                "exception",
                {"type": rng.choice(["cancel", "timeout"]), "severity": 0, "note": "",
                 "userid": 0},
                gap=rng.uniform(0.1, 30),
            )  # fmt: skip
            status = 36608
        elif rng.random() < 0.03:
            job.emit(
                "exception",
                {"type": "test", "severity": 1, "note": "non-fatal test exception", "userid": 0},
            )
        job.emit(
            "shell.task-exit",
            {"localid": 0, "rank": 0, "state": "Exited", "pid": rng.randrange(1000, 99999),
             "wait_status": status, "signaled": 0, "exitcode": status >> 8},
            eventlog=EXEC,
            gap=rng.uniform(0.002, 20),
        )  # fmt: skip
    job.emit("shell-exit", {"rank": 0, "wait_status": status}, eventlog=EXEC, gap=0.002)
    job.emit("complete", {"status": status}, eventlog=EXEC, gap=0.0001)
    job.emit("done", eventlog=EXEC, gap=0.0001)
    job.emit("finish", {"status": status}, gap=0.0001)
    if rng.random() < 0.1:
        job.emit("epilog-start", {"description": "job-manager.epilog"})
        job.emit("epilog-finish", {"description": "job-manager.epilog", "status": 0}, gap=0.5)
    job.emit("release", {"ranks": "all", "final": True}, gap=0.002)
    job.emit("free", gap=0.0001)
    job.emit("clean", gap=0.0001)
    return job.lines


def workload(events: int, seed: int = 0) -> Iterator[Line]:
    """At least ``events`` replay lines of whole lifecycles, interleaved by timestamp."""
    rng = random.Random(seed)
    pending: list[tuple[float, int, Line]] = []
    made = order = 0
    start = BASE_TS
    jobid = 6828326912
    while made < events:
        while pending and pending[0][0] <= start:
            yield heapq.heappop(pending)[2]
        for ts, line in _lifecycle(rng, jobid, start):
            heapq.heappush(pending, (ts, order, line))
            order += 1
            made += 1
        start += SUBMIT_GAP * rng.uniform(0.0, 2.0)
        jobid += rng.randrange(1, 64) << 24
    while pending:
        yield heapq.heappop(pending)[2]


def generate(path: Path, events: int) -> int:
    """Write the workload to ``path``; return the number of lines."""
    count = 0
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    with path.open("w", encoding="utf-8") as out:
        for line in workload(events):
            out.write(dumps(line))
            out.write("\n")
            count += 1
    return count


# --------------------------------------------------------------------------- one measurement


def _settings(per_event_logs: bool) -> Settings:
    from fluxmon.config import load_settings

    base = load_settings(None)
    log = dataclasses.replace(base.log, format="logfmt", events="all" if per_event_logs else "none")
    return dataclasses.replace(base, log=log)


def _run_replay(path: str, log_stream: TextIO, per_event_logs: bool) -> int:
    """Replay ``path`` through a fresh pipeline; return the number of events applied."""
    from fluxmon.app import build
    from fluxmon.sources.replay import ReplaySource

    parts = build(_settings(per_event_logs), log_stream, clock=None)
    ReplaySource([path]).run(parts.pipeline, threading.Event())
    refused = sum(parts.tracker.rejected.values())
    if refused:
        print(f"warning: {refused} events refused", file=sys.stderr)
    return parts.pipeline.live_events


def _run_stage(path: str, track: bool) -> int:
    """Read, decode and check every line (and, with ``track``, apply it to a bare tracker)."""
    from fluxmon.events import JobEvent
    from fluxmon.sources.replay import read_entries, read_lines
    from fluxmon.tracker import Tracker

    apply = Tracker([]).apply
    count = 0
    with open(path, "rb") as handle:
        for _, item in read_entries(read_lines(handle)):
            if track and isinstance(item, JobEvent):  # a refused line is counted, not applied
                apply(item)
            count += 1
    return count


def _run_json(path: str) -> int:
    count = 0
    loads = json.loads
    with open(path, "rb") as handle:
        for line in handle:
            loads(line)
            count += 1
    return count


def fast_json_available() -> bool:
    """Whether the fluxmon imported here decodes with orjson (it has the switch and orjson)."""
    from fluxmon import events

    switch = getattr(events, "fast_json", None)
    return bool(switch is not None and switch())


def measure(mode: str, path: str) -> dict[str, Any]:
    """Run one mode over ``path``: events, seconds, peak RSS in MiB."""
    if mode.endswith("-stdlib"):
        from fluxmon.events import fast_json

        fast_json(False)
        mode_run = mode.removesuffix("-stdlib")
    else:
        mode_run = mode
    start = time.perf_counter()
    cpu = time.process_time()
    if mode_run == "json":
        events = _run_json(path)
    elif mode_run in STAGES:
        events = _run_stage(path, track=mode_run == "track")
    elif mode_run == "nolog":
        with open(os.devnull, "w", encoding="utf-8") as devnull:
            events = _run_replay(path, devnull, per_event_logs=False)
    else:
        with open(path + ".log", "w", encoding="utf-8") as log:
            events = _run_replay(path, log, per_event_logs=True)
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu
    return {
        "mode": mode,
        "events": events,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "rss_mib": peak_rss_mib(),
    }


def peak_rss_mib(status: str | None = None) -> float:
    """This process's own peak RSS in MiB: ``VmHWM`` of /proc/self/status.

    Not ``getrusage(RUSAGE_SELF).ru_maxrss``: Linux keeps that across fork and exec, so a
    child started by the generator reports the generator's peak (170 MiB for every mode).
    ``VmHWM`` belongs to the address space exec made. ``ru_maxrss`` where /proc is absent.
    """
    if status is None:
        try:
            status = Path("/proc/self/status").read_text()
        except OSError:
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def profile(path: str, top: int = 25) -> None:
    """Run the no-log replay under cProfile and print the top functions by total time."""
    profiler = cProfile.Profile()
    with open(os.devnull, "w", encoding="utf-8") as devnull:
        profiler.enable()
        _run_replay(path, devnull, per_event_logs=False)
        profiler.disable()
    pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(top)


# --------------------------------------------------------------------------- the driver


def _child(*args: str) -> list[str]:
    return [sys.executable, os.path.abspath(__file__), *args]


def _env(directory: str | None) -> dict[str, str]:
    """This environment, with ``directory`` first on PYTHONPATH (when given)."""
    env = dict(os.environ)
    if directory is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (os.path.abspath(directory), env.get("PYTHONPATH")) if p
        )
    return env


def _modes(directory: str | None) -> list[str]:
    """The modes to run for a build: the ``-stdlib`` ones only where it has orjson."""
    done = subprocess.run(
        _child("--fast-json"), env=_env(directory), check=True, capture_output=True, text=True
    )
    fast = done.stdout.strip() == "True"
    return [m for m in MODES if fast or not m.endswith("-stdlib")]


def spread(values: list[float]) -> tuple[float, float, float]:
    """Median, min and max."""
    ordered = sorted(values)
    middle = len(ordered) // 2
    median = ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
    return median, ordered[0], ordered[-1]


def _table(results: dict[str, list[dict[str, Any]]], lines: int, size: int) -> str:
    """One row per build and mode: medians (and spreads) over the rounds.

    Rates per second of wall time and per second of the process's CPU time (on a shared
    machine the second is the steadier); each ratio compares a run with the ``json`` run
    of its build and round.
    """
    rows = [
        f"{lines:,} events, {size / 2**20:.0f} MiB, Python {sys.version.split()[0]}; "
        "median [min-max] over rounds",
        f"{'build':<6} {'mode':<30} {'events/s':>9} {'vs json':>21} "
        f"{'events/CPU-s':>12} {'vs json':>21} {'peak RSS':>8}",
    ]
    for build, runs in results.items():
        floors = {r["round"]: r for r in runs if r["mode"] == "json"}
        for mode in dict.fromkeys(r["mode"] for r in runs):
            mine = [r for r in runs if r["mode"] == mode]
            cells = []
            for key in ("seconds", "cpu_seconds"):
                rates = [r["events"] / r[key] for r in mine]
                ratios = [
                    rate / (floors[r["round"]]["events"] / floors[r["round"]][key])
                    for rate, r in zip(rates, mine, strict=True)
                ]
                ratio, low, high = spread(ratios)
                cells.append(f"{spread(rates)[0]:>9,.0f} {ratio:>6.3f} [{low:.3f}-{high:.3f}]")
            rss = spread([r["rss_mib"] for r in mine])[0]
            rows.append(f"{build:<6} {LABELS[mode]:<30} {cells[0]}    {cells[1]} {rss:>4.0f} MiB")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    """Generate the file, measure every mode in a subprocess, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=1_000_000, help="events to generate")
    parser.add_argument("--keep", metavar="FILE", help="also keep the generated file here")
    parser.add_argument("--file", metavar="FILE", help="measure this file, generate none")
    parser.add_argument("--rounds", type=int, default=1, help="runs of every mode (median)")
    parser.add_argument(
        "--build", action="append", default=[], metavar="LABEL=DIR",
        help="also measure the fluxmon checkout in DIR (repeatable)",
    )  # fmt: skip
    parser.add_argument("--profile", action="store_true", help="profile the no-log replay")
    parser.add_argument(
        "--stages", action="store_true", help="also measure the no-log replay's first stages"
    )
    parser.add_argument("--measure", nargs=2, metavar=("MODE", "FILE"), help=argparse.SUPPRESS)
    parser.add_argument("--profile-only", metavar="FILE", help=argparse.SUPPRESS)
    parser.add_argument("--fast-json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.fast_json:
        print(fast_json_available())
        return 0
    if args.measure:
        mode, path = args.measure
        if mode not in (*MODES, *STAGES):
            parser.error(f"mode must be one of {', '.join((*MODES, *STAGES))}")
        print(json.dumps(measure(mode, path)))
        return 0
    if args.profile_only:
        profile(args.profile_only)
        return 0
    builds: dict[str, str | None] = {"this": None}
    for item in args.build:
        label, sep, directory = item.partition("=")
        if not sep or not label or not os.path.isdir(directory):
            parser.error(f"--build wants LABEL=DIR with an existing DIR, not {item!r}")
        builds[label] = directory
    with tempfile.TemporaryDirectory(prefix="fluxmon-bench-") as tmp:
        if args.file:
            path = Path(args.file)
            lines = sum(1 for _ in path.open("rb"))
        else:
            path = Path(tmp) / "events.jsonl"
            began = time.perf_counter()
            lines = generate(path, args.events)
            print(f"generated {lines:,} events in {time.perf_counter() - began:.1f}s", flush=True)
            if args.keep:
                Path(args.keep).write_bytes(path.read_bytes())
        size = path.stat().st_size
        modes = {label: _modes(directory) for label, directory in builds.items()}
        if args.stages:
            modes = {label: [m[0], *STAGES, *m[1:]] for label, m in modes.items()}
        results: dict[str, list[dict[str, Any]]] = {label: [] for label in builds}
        for round_ in range(args.rounds):
            # Alternate the builds' order from round to round.
            order = list(builds) if round_ % 2 == 0 else list(reversed(builds))
            for label in order:
                for mode in modes[label]:
                    done = subprocess.run(
                        _child("--measure", mode, str(path)), env=_env(builds[label]),
                        check=True, capture_output=True, text=True,
                    )  # fmt: skip
                    if done.stderr:
                        sys.stderr.write(done.stderr)
                    result = json.loads(done.stdout.splitlines()[-1])
                    result["round"] = round_
                    results[label].append(result)
                    print(f"  round {round_ + 1} {label} {mode}: {result['seconds']:.1f}s",
                          flush=True)  # fmt: skip
        print()
        print(_table(results, lines, size))
        if args.profile:
            print(flush=True)
            subprocess.run(_child("--profile-only", str(path)), check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
