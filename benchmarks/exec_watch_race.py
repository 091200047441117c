"""How often an exec-eventlog watch never answers, with and without WAITCREATE (needs flux-core).

The reproducer of the exec events fluxmon lost (issue 9, item 7). Each round starts a
fresh ``flux start --test-size=2`` instance per mode; inside it, this script follows the
events journal and, when a job's ``--open-at`` event arrives (``alloc``, the moment
fluxmon opens its exec watch), opens a watch on that job's ``guest.exec.eventlog``
through fluxmon's own binding layer (``FluxBindings.watch``), with WAITCREATE (mode
``waitcreate``) or without it (mode ``none``), while ``flux submit --cc=1-N true`` runs N
short jobs. A watch that has not ended ``--grace`` seconds after its job's ``clean``
(fluxmon's hold, 10 s) is counted as hung; a watch that ended is compared with
``flux job eventlog -p exec`` (every line must have arrived).

Why it hangs (flux-core 0.88): job-info's guest watch (``job-info/guest_watch.c``) checks
the main eventlog; once it shows ``start`` but not yet ``release final=true``, it
watches ``exec.eventlog`` in the job's guest namespace and passes the caller's flags on
(``guest_namespace_watch``). If job-exec has removed that namespace meanwhile (the job
just ended: ``job-exec.c`` ``ns_move`` grafts it into the primary namespace, then removes
it), kvs-watch's getroot answers ENOTSUP, and with WAITCREATE kvs-watch takes that for a
namespace not created yet and waits (``kvs-watch.c`` ``watcher_respond``); the removal
event has already passed, so it waits forever. Without WAITCREATE the ENOTSUP reaches
job-info, which falls through to the grafted copy in the primary namespace
(``guest_namespace_watch_continuation`` -> ``main_namespace_watch``) and the watch
delivers every line and ends.

Usage (the venv must import flux, see README "Running against Flux"; ``flux`` on PATH)::

    python benchmarks/exec_watch_race.py [--jobs 30] [--rounds 5] [--open-at alloc]
        [--modes waitcreate,none] [--grace 10]

Prints one line per round and mode, then a summary per mode.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fluxmon.events import EXEC

MODES = {"waitcreate": True, "none": False}


@dataclass
class Job:
    """One job's exec watch, as this script saw it."""

    jobid: int
    opened: float | None = None  # monotonic
    clean: float | None = None  # monotonic, when the journal said clean
    ended: float | None = None  # monotonic, when the watch ended (ENODATA or an error)
    error: str | None = None  # errno name of an error that ended the watch
    received: int = 0
    truth: int = -1  # lines of ``flux job eventlog -p exec``
    future: Any = field(default=None, repr=False)


def inside(mode: str, jobs: int, open_at: str, grace: float, out: Path) -> None:
    """Run in the instance: journal, watches, the workload; write the per-job results."""
    from fluxmon.sources.flux.bindings import FluxBindings

    bindings = FluxBindings()
    handle = bindings.connect(os.environ["FLUX_URI"])
    waitcreate = MODES[mode]
    seen: dict[int, Job] = {}
    state: dict[str, Any] = {"submit": None, "deadline": time.monotonic() + 120.0}

    def on_watch(job: Job, future: Any) -> None:
        if job.ended is not None:
            return
        try:
            entry = future.get_event()
        except OSError as err:
            job.error = errno.errorcode.get(err.errno or 0, str(err.errno))
            entry = None
        if entry is None:
            job.ended = time.monotonic()
            return
        job.received += 1

    def open_watch(job: Job) -> None:
        job.opened = time.monotonic()
        try:
            job.future = bindings.watch(handle, job.jobid, EXEC, waitcreate=waitcreate)
        except OSError as err:
            job.error = errno.errorcode.get(err.errno or 0, str(err.errno))
            job.ended = job.opened
            return
        job.future.then(lambda future: on_watch(job, future))

    def on_journal(future: Any) -> None:
        response = future.get()
        future.reset()
        jobid = response.get("id")
        if jobid is None or jobid < 0:
            return
        job = seen.setdefault(jobid, Job(jobid))
        for event in response.get("events", []):
            if event["name"] == open_at and job.opened is None:
                open_watch(job)
            if event["name"] == "clean":
                job.clean = time.monotonic()

    def tick() -> None:
        now = time.monotonic()
        proc = state["submit"]
        if proc is None:
            state["submit"] = subprocess.Popen(
                ["flux", "submit", f"--cc=1-{jobs}", "--quiet", "true"],
                stdout=subprocess.DEVNULL,
            )
            return
        if (proc.poll() is None or len(seen) < jobs) and now < state["deadline"]:
            return
        settled = all(
            job.clean is not None
            and (job.ended is not None or job.opened is None or now - job.clean > grace)
            for job in seen.values()
        )
        if settled or now > state["deadline"]:
            bindings.stop(handle)

    journal = bindings.journal(handle)
    journal.then(on_journal)
    timer = bindings.timer(handle, 0.1, tick)
    bindings.run(handle)
    timer.stop()
    for job in seen.values():
        lines = subprocess.run(
            ["flux", "job", "eventlog", "-f", "json", "-p", "exec", str(job.jobid)],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.splitlines()
        job.truth = len(lines)
    for job in seen.values():
        job.future = None  # asdict copies every field
    rows = [asdict(job) for job in seen.values()]
    out.write_text(json.dumps(rows))
    os._exit(0)  # hung watches would otherwise be cancelled one by one at exit


@dataclass
class Tally:
    """Outcomes of one mode over its rounds."""

    jobs: int = 0
    hung: int = 0
    incomplete: int = 0
    errors: int = 0
    rounds_with_hang: int = 0
    ended_after_clean: list[float] = field(default_factory=list)


def classify(rows: list[dict[str, Any]], grace: float) -> tuple[int, int, int, list[float]]:
    """(hung, incomplete, errors, seconds from clean to the watch's end for those that ended)."""
    hung = incomplete = errors = 0
    lags: list[float] = []
    for row in rows:
        if row["opened"] is None:
            continue
        if row["ended"] is None or (
            row["clean"] is not None and row["ended"] - row["clean"] > grace
        ):
            hung += 1
            continue
        if row["error"] is not None:
            errors += 1
        elif row["received"] != row["truth"]:
            incomplete += 1
        if row["clean"] is not None:
            lags.append(row["ended"] - row["clean"])
    return hung, incomplete, errors, lags


def main() -> int:
    """Run the rounds (outside an instance) or one round (``--inside``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--open-at", default="alloc", help="journal event that opens the watch")
    parser.add_argument("--modes", default="waitcreate,none")
    parser.add_argument("--grace", type=float, default=10.0)
    parser.add_argument("--inside", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        inside(args.inside, args.jobs, args.open_at, args.grace, args.out)
        return 0
    flux = shutil.which("flux")
    if flux is None:
        print("needs flux-core: `flux` is not on PATH", file=sys.stderr)
        return 69
    modes = args.modes.split(",")
    tallies = {mode: Tally() for mode in modes}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(1, args.rounds + 1):
            for mode in modes:
                out = Path(tmp) / f"{mode}-{round_}.json"
                cmd = [flux, "start", "--test-size=2", sys.executable, __file__,
                       "--inside", mode, "--out", str(out), "--jobs", str(args.jobs),
                       "--open-at", args.open_at, "--grace", str(args.grace)]  # fmt: skip
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
                if proc.returncode != 0 or not out.exists():
                    print(f"round {round_} {mode}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
                    return 1
                rows = json.loads(out.read_text())
                hung, incomplete, errors, lags = classify(rows, args.grace)
                tally = tallies[mode]
                tally.jobs += len(rows)
                tally.hung += hung
                tally.incomplete += incomplete
                tally.errors += errors
                tally.rounds_with_hang += hung > 0
                tally.ended_after_clean.extend(lags)
                print(f"round {round_} {mode:>10}: {len(rows)} jobs, {hung} hung, "
                      f"{incomplete} incomplete, {errors} errors", flush=True)  # fmt: skip
    print(f"\n{args.rounds} rounds of {args.jobs} jobs, watches opened at {args.open_at}:")
    for mode, tally in tallies.items():
        lags = sorted(tally.ended_after_clean)
        worst = f"{lags[-1]:.3f}" if lags else "-"
        print(f"  {mode:>10}: {tally.hung}/{tally.jobs} watches hung "
              f"({tally.rounds_with_hang}/{args.rounds} rounds with a hang), "
              f"{tally.incomplete} incomplete, {tally.errors} errors; "
              f"latest end after clean {worst} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
