"""What fluxmon costs the broker it watches, and whether it keeps up (needs flux-core on PATH).

Each run is a fresh ``flux start --test-size=2`` instance running one workload, either
alone or with ``fluxmon run`` attached: the default configuration (no config file at all,
logfmt records on stdout, here redirected to a file), listening on a free local port.
Rounds alternate the order of the arms (alone first, then attached first, ...), so both
see the same background load. Workloads:

* ``peak``: ``flux submit --cc=1-1000 --setattr=system.exec.test.run_duration=0.001s
  hostname; flux queue drain`` (test execution, no job shells: the broker's own limit);
* ``shells``: ``flux submit --cc=1-300 -n1 true; flux queue drain`` (real job shells).

Per workload and arm it prints the median and spread (min-max over rounds) of:

* throughput ratio: jobs/s attached over jobs/s alone in the same round;
* broker CPU ratio: both brokers' utime+stime (/proc) over the workload, attached / alone;
* fluxmon CPU per event: fluxmon's CPU from the workload's start until it has logged every
  job's ``job.finished``, over the events it applied (``fluxmon_events_processed_total``),
  and per job; for the ``--bare`` and ``--burn`` controls, their CPU per job over the
  workload;
* lag: p99 of ``fluxmon_event_lag_seconds`` over the workload (interpolated in its bucket,
  as Prometheus' histogram_quantile), and the finished jobs fluxmon had counted
  (``flux_jobs_finished_total``) 1 s after the queue drained, against those submitted.

Usage: python benchmarks/broker_overhead.py [--rounds 5] [--workload peak --workload shells]
       [--jobs N] [--fluxmon [LABEL=]CMD ...] [--bare] [--burn FRACTION] [--json]
       [--setup default|checkpoint|journal-noexec|exec-live|watch ...]

``--fluxmon`` (repeatable) names the command that runs fluxmon (default: the ``fluxmon``
next to this Python, else on PATH), e.g. ``--fluxmon old=/tmp/venv-a/bin/fluxmon --fluxmon
new=/tmp/venv-b/bin/fluxmon`` to compare two builds in the same interleaved rounds.
``--setup`` (repeatable) adds configurations: ``checkpoint`` (a checkpoint directory, as
the systemd unit runs it), ``journal-noexec`` (no exec eventlogs),
``exec-live`` (``flux.exec_read = "live"``: an exec watch per running job, the default of
earlier versions) and ``watch`` (forced watch mode, poll_interval 1 s). ``--bare`` adds a
bare journal consumer (every response read and decoded, nothing more): what any journal
client costs the broker, the floor fluxmon's figures are to be read against. ``--burn F``
adds a control with no Flux connection at all: a process that keeps F of one core busy
(spinning F of every 10 ms): what taking that much CPU from a machine the workload
saturates costs the broker, whoever takes it. Every run also reports how busy the machine
was (all cores, /proc/stat) over the workload.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

RUN_DURATION: Final = "--setattr=system.exec.test.run_duration=0.001s"
WORKLOADS: Final[Mapping[str, tuple[str, ...]]] = {
    "peak": (RUN_DURATION, "hostname"),
    "shells": ("-n1", "true"),
}
DEFAULT_JOBS: Final[Mapping[str, int]] = {"peak": 1000, "shells": 300}
SETUPS: Final[Mapping[str, str | None]] = {
    "default": None,
    "journal-noexec": '[flux]\nmode = "journal"\nexec_events = false\n',
    "exec-live": '[flux]\nexec_read = "live"\n',
    # What the systemd unit runs: a checkpoint directory (its StateDirectory=).
    "checkpoint": '[state]\ncheckpoint_dir = "{out}/state"\n',
    "watch": '[flux]\nmode = "watch"\nexec_events = true\npoll_interval = 1.0\n',
}
#: The least any journal consumer costs: read every response through the C API, decode it,
#: nothing more (``--bare``: the floor fluxmon's broker cost is measured against).
BARE_JOURNAL: Final = """
import json, flux, flux.constants
from _flux._core import ffi, lib
h = flux.Flux()
f = h.rpc("job-manager.events-journal", {"full": True}, 0, flux.constants.FLUX_RPC_STREAMING)
buf = ffi.new("char **")
def taken(future):
    c = future.pimpl.handle
    while lib.flux_rpc_get(c, buf) == 0:
        json.loads(ffi.string(buf[0]))
        lib.flux_future_reset(c)
        if not lib.flux_future_is_ready(c):
            return
    h.reactor_stop()
f.then(taken)
h.reactor_run()
"""
BARE: Final = "bare-journal"
#: Spins the given fraction of every 10 ms and sleeps the rest (``--burn``): CPU taken
#: from the machine with no Flux connection at all.
BURNER: Final = """
import sys, time
busy, period = float(sys.argv[1]) * 0.01, 0.01
clock = time.perf_counter
while True:
    start = clock()
    while clock() - start < busy:
        pass
    time.sleep(max(0.0, period - (clock() - start)))
"""
#: Seconds fluxmon gets, after the queue drained, to log every job's ``job.finished``.
CATCH_UP_TIMEOUT: Final = 120.0
SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


# --------------------------------------------------------------------------- pure helpers


def parse_metrics(text: str) -> dict[str, float]:
    """Sum the samples of a Prometheus text exposition by series name plus ``le`` label.

    A histogram bucket is keyed ``name{le}`` (``fluxmon_event_lag_seconds_bucket{0.5}``),
    every other series by its bare name summed over its labels.
    """
    out: dict[str, float] = {}
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match is None:
            continue
        name, labels, value = match.groups()
        if name.endswith("_bucket") and labels:
            le = re.search(r'le="([^"]*)"', labels)
            if le is not None:
                name = f"{name}{{{le.group(1)}}}"
        try:
            out[name] = out.get(name, 0.0) + float(value)
        except ValueError:
            continue
    return out


def buckets(metrics: Mapping[str, float], histogram: str) -> list[tuple[float, float]]:
    """The cumulative ``(upper bound, count)`` pairs of ``histogram``, in bound order."""
    prefix = f"{histogram}_bucket{{"
    pairs = [(float(key[len(prefix) : -1]), value) for key, value in metrics.items()
             if key.startswith(prefix)]  # fmt: skip
    return sorted(pairs)


def quantile(q: float, cumulative: Sequence[tuple[float, float]]) -> float:
    """``histogram_quantile``: linear interpolation inside the bucket holding rank ``q``.

    NaN without observations; the last finite bound when the rank is in the ``+Inf`` bucket.
    """
    if not cumulative or cumulative[-1][1] <= 0:
        return math.nan
    rank = q * cumulative[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in cumulative:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            share = (rank - lower_count) / (count - lower_count)
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return lower_bound


def delta(after: Mapping[str, float], before: Mapping[str, float]) -> dict[str, float]:
    """``after - before`` per series (a series absent before counts from 0)."""
    return {key: value - before.get(key, 0.0) for key, value in after.items()}


def cpu_ticks(stat: str) -> int:
    """utime + stime (clock ticks, all threads, children excluded) from a /proc/PID/stat line."""
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def busy_ticks(stat: str) -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs from /proc/stat's first line (idle, iowait idle)."""
    fields = [int(field) for field in stat.split("\n", 1)[0].split()[1:9]]
    return sum(fields) - fields[3] - fields[4], sum(fields)


def spread(values: Iterable[float]) -> tuple[float, float, float]:
    """(median, min, max) of the finite values; NaNs if there are none."""
    finite = [value for value in values if not math.isnan(value)]
    if not finite:
        return (math.nan, math.nan, math.nan)
    return (statistics.median(finite), min(finite), max(finite))


def arm_order(arms: Sequence[str], round_: int) -> list[str]:
    """The arms of one round: as given in even rounds, reversed in odd ones."""
    return list(arms) if round_ % 2 == 0 else list(reversed(arms))


def summarize(runs: Sequence[Mapping[str, Any]], alone: str = "alone") -> dict[str, Any]:
    """Per workload and attached arm: (median, min, max) of each figure over the rounds.

    Ratios compare an attached run with the ``alone`` run of the same round and workload.
    """
    by_key = {(run["workload"], run["round"], run["arm"]): run for run in runs}
    summary: dict[str, Any] = {}
    for workload in dict.fromkeys(run["workload"] for run in runs):
        arms = [a for a in dict.fromkeys(r["arm"] for r in runs if r["workload"] == workload)
                if a != alone]  # fmt: skip
        rounds = sorted({r["round"] for r in runs if r["workload"] == workload})
        base = [by_key[(workload, n, alone)] for n in rounds if (workload, n, alone) in by_key]
        per_arm: dict[str, Any] = {
            alone: {
                "jobs_per_s": spread(r["jobs"] / r["seconds"] for r in base),
                "machine_busy": spread(r.get("machine_busy", math.nan) for r in base),
            }
        }
        for arm in arms:
            figures: dict[str, list[float]] = {}
            for n in rounds:
                run = by_key.get((workload, n, arm))
                ref = by_key.get((workload, n, alone))
                if run is None or ref is None:
                    continue
                for name, value in figures_of(run, ref).items():
                    figures.setdefault(name, []).append(value)
            per_arm[arm] = {name: spread(values) for name, values in figures.items()}
        summary[workload] = per_arm
    return summary


def figures_of(run: Mapping[str, Any], ref: Mapping[str, Any]) -> dict[str, float]:
    """One attached run's figures against the same round's run alone."""
    if "events" not in run:  # the bare journal consumer or the burner: the broker's side only
        return {
            "jobs_per_s": run["jobs"] / run["seconds"],
            "throughput_ratio": (run["jobs"] / run["seconds"]) / (ref["jobs"] / ref["seconds"]),
            "broker_cpu_ratio": run["broker_ticks"] / max(ref["broker_ticks"], 1),
            "cpu_per_job_us": run.get("consumer_ticks", math.nan)
            / run["clk_tck"]
            / run["jobs"]
            * 1e6,
            "machine_busy": run.get("machine_busy", math.nan),
        }
    tick = run["clk_tck"]
    events = run["events"]
    cumulative = [(float(b), c) for b, c in run["lag_buckets"]]
    lagged = [c for b, c in cumulative if b <= 1.0]
    total = cumulative[-1][1] if cumulative else 0.0
    return {
        "jobs_per_s": run["jobs"] / run["seconds"],
        "throughput_ratio": (run["jobs"] / run["seconds"]) / (ref["jobs"] / ref["seconds"]),
        "broker_cpu_ratio": run["broker_ticks"] / max(ref["broker_ticks"], 1),
        "fluxmon_us_per_event": run["fluxmon_ticks"] / tick / events * 1e6 if events else math.nan,
        "cpu_per_job_us": run["fluxmon_ticks"] / tick / run["jobs"] * 1e6,
        "events_per_job": events / run["jobs"],
        "fluxmon_cpu_vs_brokers": run["fluxmon_ticks"] / max(run["broker_ticks"], 1),
        "lag_p99_s": quantile(0.99, cumulative),
        "lag_le_1s": (lagged[-1] / total) if lagged and total else math.nan,
        "finished_1s_after_drain": run["finished_1s"] / run["jobs"],
        "all_logged_after_drain_s": run["caught_up_s"],
        "machine_busy": run.get("machine_busy", math.nan),
    }


LABELS: Final = {
    "jobs_per_s": ("jobs/s", "{:.1f}"),
    "throughput_ratio": ("throughput attached/alone", "{:.3f}"),
    "broker_cpu_ratio": ("broker CPU attached/alone", "{:.3f}"),
    "fluxmon_us_per_event": ("fluxmon CPU per event (us)", "{:.0f}"),
    "cpu_per_job_us": ("its CPU per job (us)", "{:.0f}"),
    "events_per_job": ("events per job", "{:.1f}"),
    "fluxmon_cpu_vs_brokers": ("fluxmon CPU / brokers' CPU", "{:.3f}"),
    "lag_p99_s": ("lag p99 (s)", "{:.3f}"),
    "lag_le_1s": ("share of events lag <= 1 s", "{:.3f}"),
    "finished_1s_after_drain": ("finished counted 1 s after drain", "{:.3f}"),
    "all_logged_after_drain_s": ("all job.finished logged after drain (s)", "{:.2f}"),
    "machine_busy": ("machine busy (all cores) during workload", "{:.3f}"),
}


def render(summary: Mapping[str, Any], jobs: Mapping[str, int]) -> str:
    """The summary as a text table: median [min-max] per figure."""
    rows = []
    for workload, per_arm in summary.items():
        rows.append(f"== {workload} ({jobs[workload]} jobs) ==")
        for arm, figures in per_arm.items():
            rows.append(f"  {arm}")
            for name, (median, low, high) in figures.items():
                label, fmt = LABELS[name]
                rows.append(
                    f"    {label:<42} {fmt.format(median):>8}  "
                    f"[{fmt.format(low)} - {fmt.format(high)}]"
                )
    return "\n".join(rows)


# --------------------------------------------------------------------------- inside one instance


def _flux(*args: str) -> str:
    return subprocess.run(["flux", *args], check=True, capture_output=True, text=True).stdout


def _ticks(pids: Iterable[int]) -> int:
    return sum(cpu_ticks(Path(f"/proc/{pid}/stat").read_text()) for pid in pids)


def _scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as answer:
        return parse_metrics(answer.read().decode())


def _logged_finished(log: Path) -> int:
    with log.open("rb") as handle:
        return sum(1 for line in handle if b"job.finished" in line)


def _wait(predicate: Any, timeout: float, step: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def inside(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Run one workload in the current instance, fluxmon attached if ``spec["fluxmon"]``."""
    out = Path(spec["out"])
    jobs: int = spec["jobs"]
    submit = ["submit", "--quiet", *WORKLOADS[spec["workload"]]]
    brokers = [int(_flux("getattr", "broker.pid")),
               int(_flux("exec", "-r", "1", "flux", "getattr", "broker.pid"))]  # fmt: skip
    fluxmon: subprocess.Popen[bytes] | None = None
    log = out / "fluxmon.log"
    port: int = spec["port"]
    control: subprocess.Popen[bytes] | None = None  # the bare consumer or the burner
    if spec.get("bare"):
        control = subprocess.Popen([sys.executable, "-c", BARE_JOURNAL])
        time.sleep(1.0)  # connected, history read
    elif spec.get("burn"):
        control = subprocess.Popen([sys.executable, "-c", BURNER, str(spec["burn"])])
    if spec["fluxmon"]:
        command = [*spec["fluxmon"], "run", "--listen", f"127.0.0.1:{port}"]
        if spec["config"]:
            command += ["-c", spec["config"]]
        with log.open("wb") as sink:
            fluxmon = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
        if not _wait(lambda: _ready(port), 60):
            raise RuntimeError(f"fluxmon never ready: {log.read_text()[-2000:]}")
    _flux(*submit[:1], "--wait", *submit[2:])  # warm up the exec path
    result: dict[str, Any] = {"jobs": jobs, "clk_tck": os.sysconf("SC_CLK_TCK")}
    before: dict[str, float] = {}
    if fluxmon is not None:
        _wait(lambda: _logged_finished(log) >= 1, 30)
        before = _scrape(port)
    c0 = _ticks(brokers)
    f0 = _ticks([fluxmon.pid]) if fluxmon else 0
    b0 = _ticks([control.pid]) if control else 0
    m0 = busy_ticks(Path("/proc/stat").read_text())
    t0 = time.monotonic()
    _flux(*submit[:1], f"--cc=1-{jobs}", *submit[1:])
    _flux("queue", "drain")
    t1 = time.monotonic()
    result["broker_ticks"] = _ticks(brokers) - c0
    m1 = busy_ticks(Path("/proc/stat").read_text())
    result["machine_busy"] = (m1[0] - m0[0]) / max(m1[1] - m0[1], 1)
    result["seconds"] = t1 - t0
    result["loadavg"] = Path("/proc/loadavg").read_text().split()[:3]
    if control is not None:
        result["consumer_ticks"] = _ticks([control.pid]) - b0
        control.kill()
        control.wait()
    if fluxmon is not None:
        result["fluxmon_ticks_at_drain"] = _ticks([fluxmon.pid]) - f0

        def logged() -> bool:
            return _logged_finished(log) >= jobs + 1  # the warm-up job too

        caught = _wait(logged, t1 + 1.0 - time.monotonic(), step=0.1)
        caught_at = time.monotonic()
        time.sleep(max(0.0, t1 + 1.0 - time.monotonic()))
        one_s = delta(_scrape(port), before)
        result["finished_1s"] = one_s.get("flux_jobs_finished_total", 0.0)
        if not caught:
            caught = _wait(logged, CATCH_UP_TIMEOUT)
            caught_at = time.monotonic()
        result["caught_up_s"] = caught_at - t1 if caught else math.nan
        result["fluxmon_ticks"] = _ticks([fluxmon.pid]) - f0
        final = delta(_scrape(port), before)
        result["events"] = final.get("fluxmon_events_processed_total", 0.0)
        result["finished"] = final.get("flux_jobs_finished_total", 0.0)
        result["lag_buckets"] = buckets(final, "fluxmon_event_lag_seconds")
        fluxmon.send_signal(signal.SIGTERM)
        fluxmon.wait(timeout=60)
    return result


# --------------------------------------------------------------------------- the driver


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _default_fluxmon() -> str:
    beside = Path(sys.executable).parent / "fluxmon"
    return str(beside) if beside.exists() else (shutil.which("fluxmon") or "fluxmon")


def _arms(commands: Sequence[str], setups: Sequence[str]) -> dict[str, tuple[list[str], str]]:
    arms: dict[str, tuple[list[str], str]] = {}
    for index, text in enumerate(commands):
        label, _, command = text.partition("=")
        if not command or not re.fullmatch(r"\w[\w.-]*", label):
            label, command = ("fluxmon" if len(commands) == 1 else f"fluxmon{index + 1}"), text
        for setup in setups:
            name = label if setup == "default" else f"{label}/{setup}"
            arms[name] = (shlex.split(command), setup)
    return arms


def run_one(flux: str, out: Path, spec: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """One fresh instance running ``spec``; the result it wrote."""
    (out / "spec.json").write_text(json.dumps(spec))
    done = subprocess.run(
        [flux, "start", "--test-size=2", sys.executable, os.path.abspath(__file__),
         "--inside", str(out / "spec.json")],
        check=False, env=dict(env), capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"run failed ({done.returncode}): {done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads((out / "result.json").read_text())
    return result


def main(argv: list[str] | None = None) -> int:
    """Run the rounds and print the summary (or JSON)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workload", action="append", choices=sorted(WORKLOADS))
    parser.add_argument("--jobs", type=int, help="jobs per workload (peak 1000, shells 300)")
    parser.add_argument("--fluxmon", action="append", metavar="[LABEL=]CMD")
    parser.add_argument("--setup", action="append", choices=list(SETUPS))
    parser.add_argument(
        "--bare",
        action="store_true",
        help="add a bare journal consumer (the broker's cost floor) as an arm",
    )
    parser.add_argument(
        "--burn",
        type=float,
        metavar="FRACTION",
        help="add a control arm: a process keeping FRACTION of one core busy, no Flux at all",
    )
    parser.add_argument("--json", action="store_true", help="print every run and the summary")
    parser.add_argument("--inside", metavar="SPEC", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.inside:
        spec = json.loads(Path(args.inside).read_text())
        result = inside(spec)
        Path(spec["out"], "result.json").write_text(json.dumps(result))
        return 0
    flux = shutil.which("flux")
    if flux is None:
        print("flux is not on PATH; this benchmark needs a flux-core build", file=sys.stderr)
        return 1
    workloads = args.workload or ["peak", "shells"]
    jobs = {w: args.jobs or DEFAULT_JOBS[w] for w in workloads}
    arms = _arms(args.fluxmon or [_default_fluxmon()], args.setup or ["default"])
    path = _flux("python", "--get-path").strip()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (path, env.get("PYTHONPATH")) if p)
    if args.burn is not None and not 0.0 < args.burn <= 1.0:
        parser.error(f"--burn {args.burn}: a fraction of one core, above 0 and at most 1")
    burn = f"burn-{args.burn:g}" if args.burn is not None else None
    order = ["alone", *arms, *([BARE] if args.bare else []), *([burn] if burn else [])]
    runs: list[dict[str, Any]] = []
    log = sys.stderr if args.json else sys.stdout
    with tempfile.TemporaryDirectory(prefix="fluxmon-overhead-") as tmp:
        out = Path(tmp)
        for name, text in SETUPS.items():
            if text is not None:
                (out / f"{name}.toml").write_text(text.replace("{out}", str(out)))
        (out / "state").mkdir()
        for round_ in range(args.rounds):
            for workload in workloads:
                for arm in arm_order(order, round_):
                    command, setup = arms.get(arm, ([], "default"))
                    spec = {
                        "out": str(out), "workload": workload, "jobs": jobs[workload],
                        "port": free_port(), "fluxmon": command, "bare": arm == BARE,
                        "burn": args.burn if arm == burn else None,
                        "config": str(out / f"{setup}.toml") if SETUPS[setup] else "",
                    }  # fmt: skip
                    shutil.rmtree(out / "state")  # each instance starts with no checkpoint
                    (out / "state").mkdir()
                    result = run_one(flux, out, spec, env)
                    result.update(workload=workload, round=round_, arm=arm)
                    runs.append(result)
                    extra = ""
                    if command:
                        extra = (f" fluxmon {result['fluxmon_ticks'] / result['clk_tck']:.2f}s"
                                 f" events {result['events']:.0f}"
                                 f" finished@1s {result['finished_1s']:.0f}")  # fmt: skip
                    print(f"round {round_} {workload:<6} {arm:<20} "
                          f"{jobs[workload] / result['seconds']:6.1f} jobs/s "
                          f"brokers {result['broker_ticks'] / result['clk_tck']:.2f}s{extra}"
                          f" load {' '.join(result['loadavg'])}", file=log, flush=True)  # fmt: skip
    summary = summarize(runs)
    if args.json:
        print(json.dumps({"arms": {k: v[0] for k, v in arms.items()}, "runs": runs,
                          "summary": summary}, indent=1))  # fmt: skip
    else:
        print()
        print(render(summary, jobs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
