"""``fluxmon run`` against a real Flux broker (``flux start --test-size=2``).

These tests need flux-core on PATH and its Python bindings visible to this venv (the
README's recipe); they skip where either is missing, saying which. CI builds flux-core
and fails on any such skip (``FLUXMON_REQUIRE_MARKERS``, see conftest.py). Each test
starts throwaway instances, runs a mixed workload while ``fluxmon run`` watches, and
checks fluxmon's records and metrics against what Flux itself reports
(``flux jobs -a --json``, ``flux job eventlog``).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

FLUX = shutil.which("flux")


def _bindings_missing() -> str | None:
    """Why this interpreter cannot import the instance's bindings (None when it can).

    The bindings must be visible the way the README tells users to make them visible (a
    ``flux-core.pth`` in the venv), not through a PYTHONPATH the tests set up: these
    tests are also the proof that the documented recipe works.
    """
    if FLUX is None:
        return None
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    probe = subprocess.run(
        [sys.executable, "-c", "import flux.job"], env=env, capture_output=True, check=False
    )
    if probe.returncode == 0:
        return None
    purelib = sysconfig.get_path("purelib")
    return (
        f"needs the flux-core bindings in this venv: run "
        f"`flux python --get-path > {purelib}/flux-core.pth` (README, Testing)"
    )


BINDINGS_MISSING = _bindings_missing()
pytestmark = [
    pytest.mark.flux,
    pytest.mark.skipif(FLUX is None, reason="needs a Flux broker: `flux` is not on PATH"),
    pytest.mark.skipif(BINDINGS_MISSING is not None, reason=str(BINDINGS_MISSING)),
]

QUEUES = """\
[queues.debug]
policy.limits.duration = "1m"
policy.jobspec.defaults.system.duration = "1m"
[queues.batch]
[policy.jobspec.defaults.system]
queue = "batch"
"""

# Runs inside the instance: start fluxmon, run the mixed workload, collect Flux's view.
WORKLOAD = r"""
set -u
out=$1; port=$2
"$FLUXMON" run --listen 127.0.0.1:$port -c "$out/fluxmon.toml" > "$out/fluxmon.log" 2>&1 &
fm=$!
for i in $(seq 100); do curl -sf 127.0.0.1:$port/readyz >/dev/null && break; sleep 0.1; done
flux queue start --all >/dev/null
ids=()
sub() { id=$(flux submit "$@") || exit 1; ids+=("$id"); }
sub true; sub true; sub -q debug true
sub sh -c 'exit 3'
sub sh -c 'kill -9 $$'
sub /nonexistent/command
sub -n2 true
sub -N2 -n2 true
sub -t 1s sleep 30
sub sleep 1; sub --dependency=afterok:$id true; sub --dependency=afterok:$id true
sub sh -c 'sleep 1; exit 1'; sub --dependency=afterok:$id true
sub --urgency=0 true; sleep 0.5; flux job urgency $id 16
sub --urgency=0 sleep 100; sleep 0.3; flux cancel $id
sub sleep 100; flux job wait-event -t 30 $id start >/dev/null; sleep 0.3; flux cancel $id
sub sleep 2; flux job wait-event -t 30 $id start >/dev/null
flux job raise --severity=1 --type=test $id "non-fatal test exception"
for id in "${ids[@]}"; do flux job wait-event -t 60 $id clean >/dev/null; done
sleep 2
curl -sf 127.0.0.1:$port/metrics > "$out/metrics.txt"
flux jobs -a --json > "$out/jobs.json"
for id in "${ids[@]}"; do
  main=$(flux job eventlog -f json $id | wc -l)
  exec=$(flux job eventlog -f json -p guest.exec.eventlog $id 2>/dev/null | wc -l)
  echo "$(flux job id --to=dec $id) $main $exec"
done > "$out/eventlog-lines.txt"
kill -TERM $fm; wait $fm; echo $? > "$out/fluxmon.rc"
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def fluxmon_env() -> dict[str, str]:
    """The environment for fluxmon: this venv's console script, bindings from its .pth."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["FLUXMON"] = str(Path(sys.executable).parent / "fluxmon")
    return env


def metrics(text: str) -> dict[str, list[Any]]:
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run the mixed workload once under fluxmon; return the folder of results."""
    assert FLUX is not None
    out = tmp_path_factory.mktemp("mixed")
    conf = out / "conf"
    conf.mkdir()
    (conf / "queues.toml").write_text(QUEUES)
    (out / "fluxmon.toml").write_text('[log]\nformat = "json"\n')
    (out / "workload.sh").write_text(WORKLOAD)
    proc = subprocess.run(
        [FLUX, "start", "--test-size=2", "-c", str(conf), "bash", str(out / "workload.sh"),
         str(out), str(free_port())],
        env=fluxmon_env(), capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def records(out: Path, msg: str) -> list[dict[str, Any]]:
    lines = (out / "fluxmon.log").read_text().splitlines()
    parsed = [json.loads(line) for line in lines if line.startswith("{")]
    return [r for r in parsed if r["msg"] == msg]


def test_every_record_matches_flux_jobs(mixed: Path) -> None:
    """Each job's job.finished record agrees with flux jobs (result, code, times to 1 ms)."""
    jobs = {j["id"]: j for j in json.loads((mixed / "jobs.json").read_text())["jobs"]}
    finished = {r["id"]: r for r in records(mixed, "job.finished")}
    assert set(finished) == set(jobs)
    for jobid, job in jobs.items():
        record = finished[jobid]
        assert record["result"] == job["result"].lower(), job
        assert record["returncode"] == job["returncode"], job
        for key in ("t_submit", "t_run", "t_cleanup", "t_inactive"):
            if key in job:
                assert record[key] == pytest.approx(job[key], abs=1e-3), (key, job)
        if job.get("queue"):
            assert record["queue"] == job["queue"]
    results = Counter(r["result"] for r in finished.values())
    assert set(results) == {"completed", "failed", "canceled", "timeout"}


def test_events_total_equals_eventlog_lines(mixed: Path) -> None:
    """flux_job_events_total equals the lines of every job's main and exec eventlogs."""
    main = exec_ = 0
    for line in (mixed / "eventlog-lines.txt").read_text().splitlines():
        _, m, e = line.split()
        main, exec_ = main + int(m), exec_ + int(e)
    samples = metrics((mixed / "metrics.txt").read_text())["flux_job_events"]
    got: Counter[str] = Counter()
    for sample in samples:
        got[sample.labels["eventlog"]] += sample.value
    assert got["main"] == main
    assert got["exec"] == exec_


def test_no_errors_and_clean_exit(mixed: Path) -> None:
    """No watch error or refused event is left, watches are closed, and fluxmon exits 0."""
    found = metrics((mixed / "metrics.txt").read_text())
    assert all(s.value == 0 for s in found["fluxmon_watch_errors"])
    assert all(s.value == 0 for s in found["fluxmon_event_errors"]), found["fluxmon_event_errors"]
    assert all(s.value == 0 for s in found["fluxmon_watches"])
    assert [s.value for s in found["fluxmon_tracked_jobs"]] == [0]
    assert [s.value for s in found["fluxmon_connected"]] == [1]
    build = found["fluxmon_build_info"][0].labels
    assert build["flux_core_version"] not in ("", "unknown")
    assert (mixed / "fluxmon.rc").read_text().strip() == "0"
    assert records(mixed, "event.rejected") == []


def test_the_instances_queues_are_read_from_the_job_manager(mixed: Path) -> None:
    """The queues of the instance's config are declared at connect and have their series."""
    assert records(mixed, "source.queues_unknown") == []
    assert [r["queues"] for r in records(mixed, "source.queues")] == ["batch,debug"]
    found = metrics((mixed / "metrics.txt").read_text())
    queues = {s.labels["queue"] for s in found["flux_jobs"]}
    assert {"batch", "debug"} <= queues
    assert "other" not in queues


RESTART = r"""
set -u
flux submit --wait true >/dev/null
flux submit --wait sh -c 'exit 4' >/dev/null
id=$(flux submit sleep 30)
flux job wait-event -t 30 $id start >/dev/null
flux cancel $id
flux job wait-event -t 30 $id clean >/dev/null
sleep 0.5  # let fluxmon read the last events before this broker goes away
"""


def test_survives_broker_restart(tmp_path: Path) -> None:
    """fluxmon rides out a broker going away and a new one coming up at the same URI."""
    assert FLUX is not None
    rundir = tmp_path / "run"
    rundir.mkdir()
    port = free_port()
    env = fluxmon_env()
    conf = tmp_path / "fluxmon.toml"
    conf.write_text('[log]\nformat = "json"\n[flux]\nreconnect_min = 0.2\nreconnect_max = 1.0\n')
    script = tmp_path / "restart.sh"
    script.write_text(RESTART)
    uri = f"local://{rundir}/local-0"
    log = (tmp_path / "fluxmon.log").open("w")
    fm = subprocess.Popen(
        [env["FLUXMON"], "run", "--uri", uri, "--listen", f"127.0.0.1:{port}", "-c", str(conf)],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        for _ in range(2):
            subprocess.run(
                [FLUX, "start", "--test-size=1", f"--test-rundir={rundir}", "bash", str(script)],
                env=env, timeout=120, check=True, capture_output=True,
            )  # fmt: skip
        text = _scrape_when(port, lambda m: _value(m, "fluxmon_connected") == 0)
    finally:
        fm.terminate()
        fm.wait(timeout=30)
        log.close()
    found = metrics(text)
    lines = [json.loads(x) for x in (tmp_path / "fluxmon.log").read_text().splitlines()]
    # One outage between the two instances: one reconnect, whatever ENOSYS the journal
    # answered while job-manager loaded or unloaded, and never a false downgrade.
    assert _value(found, "fluxmon_reconnects") == 1, [r for r in lines if "source." in r["msg"]]
    assert not [r for r in lines if "0.61" in json.dumps(r)]
    msgs = Counter(r["msg"] for r in lines)
    assert msgs["source.connected"] >= 2
    assert msgs["source.disconnected"] >= 2
    finished = [r for r in lines if r["msg"] == "job.finished"]
    # Each instance: true, exit 4, and a sleep canceled while running.
    assert sorted((r["result"], r["returncode"]) for r in finished) == [
        ("canceled", 143), ("canceled", 143), ("completed", 0), ("completed", 0),
        ("failed", 4), ("failed", 4),
    ]  # fmt: skip
    assert [r for r in lines if r["msg"] == "event.rejected"] == []
    assert fm.returncode == 0


def _value(found: dict[str, list[Any]], name: str) -> float:
    return float(sum(s.value for s in found[name]))


def _scrape_when(port: int, ready: Callable[[dict[str, list[Any]]], bool], tries: int = 100) -> str:
    text = ""
    for _ in range(tries):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = str(resp.read().decode())
        if ready(metrics(text)):
            return text
        time.sleep(0.1)
    return text


def test_forced_watch_mode_reports_every_job(tmp_path: Path) -> None:
    """Forced watch mode (what a guest gets) still reports every job correctly."""
    assert FLUX is not None
    out = tmp_path
    (out / "fluxmon.toml").write_text(
        '[log]\nformat = "json"\n[flux]\nmode = "watch"\npoll_interval = 0.5\n'
    )
    script = textwrap.dedent(
        r"""
        set -u
        "$FLUXMON" run --listen 127.0.0.1:$2 -c "$1/fluxmon.toml" > "$1/fluxmon.log" 2>&1 &
        fm=$!
        for i in $(seq 100); do curl -sf 127.0.0.1:$2/readyz >/dev/null && break; sleep 0.1; done
        a=$(flux submit true); b=$(flux submit sh -c 'exit 5'); c=$(flux submit sleep 2)
        for id in $a $b $c; do flux job wait-event -t 60 $id clean >/dev/null; done
        sleep 2
        curl -sf 127.0.0.1:$2/metrics > "$1/metrics.txt"
        flux jobs -a --json > "$1/jobs.json"
        kill -TERM $fm; wait $fm
        """
    )
    (out / "w.sh").write_text(script)
    proc = subprocess.run(
        [FLUX, "start", "--test-size=2", "bash", str(out / "w.sh"), str(out), str(free_port())],
        env=fluxmon_env(), capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    connected = records(out, "source.connected")
    assert "watch mode" in connected[0]["detail"]
    jobs = {j["id"]: j for j in json.loads((out / "jobs.json").read_text())["jobs"]}
    finished = {r["id"]: r for r in records(out, "job.finished")}
    assert set(finished) == set(jobs)
    for jobid, job in jobs.items():
        assert finished[jobid]["returncode"] == job["returncode"]
    found = metrics((out / "metrics.txt").read_text())
    assert all(s.value == 0 for s in found["fluxmon_event_errors"])


#: Undeclared exception types a user mints, past a cap of CAP.
MINTED, CAP = 30, 10


def test_user_minted_exception_types_cannot_push_out_a_real_timeout(tmp_path: Path) -> None:
    """A user raises 30 made-up types past a cap of 10; real timeout and exec keep theirs."""
    assert FLUX is not None
    out = tmp_path
    (out / "fluxmon.toml").write_text(f'[log]\nformat = "json"\n[metrics]\nlabel_cap = {CAP}\n')
    script = textwrap.dedent(
        r"""
        set -u
        "$FLUXMON" run --listen 127.0.0.1:$2 -c "$1/fluxmon.toml" > "$1/fluxmon.log" 2>&1 &
        fm=$!
        for i in $(seq 100); do curl -sf 127.0.0.1:$2/readyz >/dev/null && break; sleep 0.1; done
        victim=$(flux submit sleep 300)
        flux job wait-event -t 60 $victim start >/dev/null
        for i in $(seq $3); do
          flux job raise --severity=1 --type=minted$i $victim "made up" || exit 1
        done
        flux cancel $victim
        late=$(flux submit -t 1s sleep 30)
        bad=$(flux submit /nonexistent/command)
        for id in $victim $late $bad; do flux job wait-event -t 60 $id clean >/dev/null; done
        sleep 2
        curl -sf 127.0.0.1:$2/metrics > "$1/metrics.txt"
        flux jobs -a --json > "$1/jobs.json"
        kill -TERM $fm; wait $fm
        """
    )
    (out / "w.sh").write_text(script)
    proc = subprocess.run(
        [FLUX, "start", "--test-size=2", "bash", str(out / "w.sh"), str(out), str(free_port()),
         str(MINTED)],
        env=fluxmon_env(), capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = json.loads((out / "jobs.json").read_text())["jobs"]
    types = sorted(j["exception"]["type"] for j in jobs if j["exception"]["occurred"])
    assert types == ["cancel", "exec", "timeout"]
    found = metrics((out / "metrics.txt").read_text())
    by_type: Counter[str] = Counter()
    for s in found["flux_job_exceptions"]:
        by_type[s.labels["type"]] += int(s.value)
    assert by_type["timeout"] == 1
    assert by_type["exec"] == 1
    assert by_type["cancel"] == 1
    assert sum(1 for t in by_type if t.startswith("minted")) == CAP
    assert by_type["other"] == MINTED - CAP
    overflow = {s.labels["label"]: s.value for s in found["fluxmon_label_overflow"]}
    assert overflow["type"] == MINTED - CAP
    finished = {r["exception_type"] for r in records(out, "job.finished")}
    assert finished == {"cancel", "exec", "timeout"}
    codes = {s.labels["returncode"] for s in found["flux_jobs_exited"] if s.value}
    assert codes == {"127", "142", "143"}  # flux-core's own, declared


GUEST = r"""
set -u
out=$1; port=$2
chmod 0755 "$out"
runuser -u nobody -- "$GUEST_PYTHON" -m fluxmon run \
    --uri "$FLUX_URI" --listen 127.0.0.1:$port -c "$out/fluxmon.toml" > "$out/fluxmon.log" 2>&1 &
for i in $(seq 100); do curl -sf 127.0.0.1:$port/readyz >/dev/null && break; sleep 0.1; done
theirs=$(flux submit true)
flux job wait-event -t 60 $theirs clean >/dev/null
sleep 2
curl -sf 127.0.0.1:$port/metrics > "$out/metrics.txt"
pkill -TERM -u nobody -f "fluxmon run"; sleep 1
"""


def _guest_python() -> str | None:
    """An interpreter with fluxmon that the unprivileged user ``nobody`` can run."""
    python = os.environ.get("FLUXMON_GUEST_PYTHON", sys.executable)
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        return None
    probe = subprocess.run(
        ["runuser", "-u", "nobody", "--", python, "-c", "import fluxmon, flux.job"],
        capture_output=True, check=False,
    )  # fmt: skip
    return python if probe.returncode == 0 else None


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A temporary folder the unprivileged user can reach (pytest's is root-only)."""
    path = Path(tempfile.mkdtemp(prefix="fluxmon-guest-"))
    path.chmod(0o755)
    yield path
    if not os.environ.get("FLUXMON_KEEP_TMP"):
        shutil.rmtree(path, ignore_errors=True)


def test_guest_is_told_why_it_falls_back(open_tmp: Path) -> None:
    """Run as a guest, fluxmon says in one line why it uses watch mode, and keeps going.

    A test instance signs nothing (``sign-type=none``), so a guest cannot submit here;
    the guest sees the owner's job listed and is refused its eventlog (EPERM), counted.
    """
    assert FLUX is not None
    python = _guest_python()
    if python is None:
        pytest.skip(
            "needs root, runuser, and FLUXMON_GUEST_PYTHON: a Python with fluxmon and the "
            "bindings that `nobody` can run (README, Testing)"
        )
    tmp_path = open_tmp
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "access.toml").write_text("[access]\nallow-guest-user = true\n")
    rundir = tmp_path / "run"
    rundir.mkdir(mode=0o755)
    out = tmp_path / "out"
    out.mkdir(mode=0o777)
    (out / "fluxmon.toml").write_text('[log]\nformat = "json"\n[flux]\npoll_interval = 0.5\n')
    (tmp_path / "guest.sh").write_text(GUEST)
    env = dict(fluxmon_env(), GUEST_PYTHON=python)
    proc = subprocess.run(
        [FLUX, "start", "--test-size=1", "-c", str(conf), f"--test-rundir={rundir}",
         "bash", str(tmp_path / "guest.sh"), str(out), str(free_port())],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (fallback,) = [r for r in records(out, "source.fallback") if r.get("stream") != "resources"]
    assert "EPERM" in fallback["reason"]
    assert "not the instance owner" in fallback["reason"]
    assert "watch mode" in records(out, "source.connected")[0]["detail"]
    assert records(out, "job.finished") == []
    errors = {s.labels["errno"]: s.value for s in metrics((out / "metrics.txt").read_text())[
        "fluxmon_watch_errors"]}  # fmt: skip
    assert errors.get("EPERM", 0) >= 1  # the owner's job: listed, not readable
    assert [r["msg"] for r in records(out, "source.watch_failed")] == ["source.watch_failed"]


CHECKPOINTED = r"""
set -u
out=$1; port=$2
start() {
  "$FLUXMON" run --listen 127.0.0.1:$port -c "$out/fluxmon.toml" > "$out/$1.log" 2>&1 &
  fm=$!
  for i in $(seq 100); do curl -sf 127.0.0.1:$port/readyz >/dev/null && break; sleep 0.1; done
}
stop() { sleep 1.5; curl -sf 127.0.0.1:$port/metrics > "$out/$1.txt"; kill -TERM $fm; wait $fm; }
ids=()
batch() {
  for cmd in true "sh -c 'exit 2'" "sleep 1"; do ids+=("$(eval flux submit $cmd)"); done
  for id in "${ids[@]}"; do flux job wait-event -t 60 $id clean >/dev/null; done
}
start first; batch; stop first
batch  # fluxmon is down
start second; stop second
for id in "${ids[@]}"; do
  echo "$(flux job id --to=dec $id) $(flux job eventlog -f json $id | wc -l) \
$(flux job eventlog -f json -p guest.exec.eventlog $id 2>/dev/null | wc -l)"
done > "$out/eventlog-lines.txt"
"""


def test_restart_with_checkpoint_misses_nothing_and_counts_nothing_twice(tmp_path: Path) -> None:
    """Stopped and restarted around a batch of jobs, fluxmon reports each event once."""
    assert FLUX is not None
    (tmp_path / "state").mkdir()
    (tmp_path / "fluxmon.toml").write_text(
        f'[log]\nformat = "json"\n[state]\ncheckpoint_dir = "{tmp_path / "state"}"\n'
    )
    (tmp_path / "w.sh").write_text(CHECKPOINTED)
    proc = subprocess.run(
        [FLUX, "start", "--test-size=2", "bash", str(tmp_path / "w.sh"), str(tmp_path),
         str(free_port())],
        env=fluxmon_env(), capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = Counter[str]()
    ids = set()
    for row in (tmp_path / "eventlog-lines.txt").read_text().splitlines():
        jobid, main, exec_ = row.split()
        ids.add(int(jobid))
        lines["main"] += int(main)
        lines["exec"] += int(exec_)
    counted = Counter[str]()
    finished: list[int] = []
    for run in ("first", "second"):
        log = [json.loads(x) for x in (tmp_path / f"{run}.log").read_text().splitlines()]
        finished += [r["id"] for r in log if r["msg"] == "job.finished"]
    # The counters continue across the restart: the second run's are the totals.
    for sample in metrics((tmp_path / "second.txt").read_text())["flux_job_events"]:
        counted[sample.labels["eventlog"]] += int(sample.value)
    assert counted == lines
    assert sorted(finished) == sorted(ids)
    assert len(ids) == 6


RECORD = r"""
set -u
out=$1; sig=$2
"$FLUXMON" record -c "$out/fluxmon.toml" -o "$out/recorded.jsonl" 2> "$out/record.err" &
fm=$!
for i in $(seq 100); do grep -q history.caught_up "$out/record.err" && break; sleep 0.1; done
ids=("$(flux submit true)" "$(flux submit sh -c 'exit 3')")
for id in "${ids[@]}"; do flux job wait-event -t 60 $id clean >/dev/null; done
for id in "${ids[@]}"; do
  echo "$(flux job id --to=dec $id) $(flux job eventlog -f json $id | wc -l) \
$(flux job eventlog -f json -p guest.exec.eventlog $id 2>/dev/null | wc -l)"
done > "$out/eventlog-lines.txt"
sleep 1  # let fluxmon read the last exec lines
kill -$sig $fm; wait $fm; echo $? > "$out/record.rc"
"""


@pytest.mark.parametrize("sig", ["INT", "TERM"])
def test_record_stops_cleanly_on_a_signal(sig: str, tmp_path: Path) -> None:
    """fluxmon record ended by SIGINT or SIGTERM exits 0: no traceback, every event on disk."""
    assert FLUX is not None
    (tmp_path / "fluxmon.toml").write_text('[log]\nformat = "json"\n')
    (tmp_path / "record.sh").write_text(RECORD)
    proc = subprocess.run(
        [FLUX, "start", "--test-size=2", "bash", str(tmp_path / "record.sh"), str(tmp_path), sig],
        env=fluxmon_env(), capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    err = (tmp_path / "record.err").read_text()
    assert "Traceback" not in err
    assert (tmp_path / "record.rc").read_text().strip() == "0"
    log = [json.loads(line) for line in err.splitlines()]
    lines = [json.loads(line) for line in (tmp_path / "recorded.jsonl").read_text().splitlines()]
    recorded = [e for e in lines if not e.get("resource")]  # job lines (resource lines apart)
    want: Counter[tuple[int, str]] = Counter()
    for row in (tmp_path / "eventlog-lines.txt").read_text().splitlines():
        jobid, main, exec_ = (int(x) for x in row.split())
        want[(jobid, "eventlog")] += main
        want[(jobid, "guest.exec.eventlog")] += exec_
    # The journal also sends annotations, which no eventlog holds.
    got = Counter((e["id"], e["eventlog"]) for e in recorded if e["name"] != "annotations")
    assert +got == +want
    (stopped,) = [r for r in log if r["msg"] == "fluxmon.stop"]
    assert (stopped["events"], stopped["jobs"]) == (len(lines), 2)  # resource lines too
    assert lines[0]["resource"]  # the instance's resources come first (resource-define)
    progress = [r for r in log if r["msg"] == "record.progress"]
    assert (progress[-1]["events"], progress[-1]["jobs"]) == (len(lines), 2)


# Waits until fluxmon on $port is done: it tracks no job and has no exec watch open (a
# clean is held while its job's exec watch is open, at most 10 s); its last scrape is
# left in $out/metrics.txt.
WAIT_IDLE = r"""
for i in $(seq 300); do
  curl -sf 127.0.0.1:$port/metrics > "$out/metrics.txt"
  grep -qx 'fluxmon_tracked_jobs 0.0' "$out/metrics.txt" \
    && grep -qx 'fluxmon_watches{eventlog="exec"} 0.0' "$out/metrics.txt" && break
  sleep 0.1
done
"""

# Many short jobs at once under fluxmon, then every job's exec eventlog as Flux has it.
SHORT_JOBS = (
    r"""
set -u
out=$1; port=$2; n=$3
"$FLUXMON" run --listen 127.0.0.1:$port -c "$out/fluxmon.toml" > "$out/fluxmon.log" 2>&1 &
fm=$!
for i in $(seq 100); do curl -sf 127.0.0.1:$port/readyz >/dev/null && break; sleep 0.1; done
flux submit --cc=1-$n true > "$out/ids" || exit 1
flux submit --cc=1-$((n / 4)) sleep 0 >> "$out/ids" || exit 1
for id in $(cat "$out/ids"); do flux job wait-event -t 60 $id clean >/dev/null; done
# In watch mode a job is found by the next poll: no tracked job does not mean every job
# was seen. Wait for a job.finished record per job (written after its batch's metrics).
jobs=$(wc -l < "$out/ids")
for i in $(seq 300); do
  [ "$(grep -c '"msg": "job.finished"' "$out/fluxmon.log")" -ge "$jobs" ] && break
  sleep 0.1
done
"""
    + WAIT_IDLE
    + r"""for id in $(cat "$out/ids"); do
  dec=$(flux job id --to=dec $id)
  flux job eventlog -f json -p exec $id | sed "s/^/$dec /"
done > "$out/exec-eventlogs.txt" 2> "$out/eventlog-errors.txt"
kill -TERM $fm; wait $fm; echo $? > "$out/fluxmon.rc"
"""
)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["journal", "watch"])
def test_every_exec_event_of_many_short_jobs_is_counted(mode: str, tmp_path: Path) -> None:
    """50 short jobs at once: each job's exec events, as `flux job eventlog` has them, counted.

    The workload where fluxmon lost every exec event of about one job in 140 when its
    watches used WAITCREATE (README, "Exec eventlogs"); nothing may be given up here. In
    watch mode jobs are found by polling, so exec watches are often opened as the job ends.
    """
    assert FLUX is not None
    (tmp_path / "fluxmon.toml").write_text(
        f'[log]\nformat = "json"\n[flux]\nmode = "{mode}"\npoll_interval = 0.5\n'
    )
    (tmp_path / "short.sh").write_text(SHORT_JOBS)
    proc = subprocess.run(
        [FLUX, "start", "--test-size=2", "bash", str(tmp_path / "short.sh"), str(tmp_path),
         str(free_port()), "40"],
        env=fluxmon_env(), capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "fluxmon.rc").read_text().strip() == "0"
    want: Counter[tuple[int, str]] = Counter()
    for line in (tmp_path / "exec-eventlogs.txt").read_text().splitlines():
        jobid, entry = line.split(" ", 1)
        want[(int(jobid), json.loads(entry)["name"])] += 1
    got = Counter(
        (r["id"], r["name"]) for r in records(tmp_path, "job.event") if r["eventlog"] == "exec"
    )
    assert len({jobid for jobid, _ in want}) == 50
    missing = want - got
    assert not missing, f"exec events not counted: {sorted(missing)}"
    assert got == want, f"counted, not in flux job eventlog: {sorted(got - want)}"
    found = metrics((tmp_path / "metrics.txt").read_text())
    assert _value(found, "fluxmon_exec_watches_abandoned") == 0
    assert records(tmp_path, "source.exec_abandoned") == []
    assert _value(found, "fluxmon_watch_errors") == 0
    assert _value(found, "fluxmon_log_records_dropped") == 0  # the records are complete
    exec_total = sum(s.value for s in found["flux_job_events"] if s.labels["eventlog"] == "exec")
    assert exec_total == sum(want.values())


def _until(check: Callable[[], bool], timeout: float, step: float = 0.2) -> bool:
    """Poll ``check`` until it is true or ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(step)
    return check()


def _ready(port: int) -> bool:
    """fluxmon answers /readyz with 200 (False while it does not listen yet)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


class _Instance:
    """A one-broker instance with a statedir, started (and SIGKILLed) by hand."""

    def __init__(self, tmp_path: Path) -> None:
        self.rundir, self.statedir, self.conf = (tmp_path / d for d in ("run", "state", "conf"))
        for d in (self.rundir, self.statedir, self.conf):
            d.mkdir()
        # Checkpoint the KVS every second, so a crash rolls back a little, not to empty.
        (self.conf / "kvs.toml").write_text('[kvs]\ncheckpoint-period = "1s"\n')
        self.uri = f"local://{self.rundir}/local-0"
        self.env = {**fluxmon_env(), "FLUX_URI": self.uri}
        self.log = (tmp_path / "broker.log").open("a")
        #: The initial program's pid: a SIGKILLed broker leaves it running.
        self.rc2 = tmp_path / "rc2.pid"
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        """Start the broker on the statedir and wait until it answers."""
        assert FLUX is not None
        proc = subprocess.Popen(
            [FLUX, "start", "--test-size=1", f"--test-rundir={self.rundir}",
             f"-o,-Sstatedir={self.statedir},--config-path={self.conf}",
             "sh", "-c", f"echo $$ > {self.rc2}; exec sleep 100000"],
            env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.procs.append(proc)
        # Up once job-list (loaded late in rc1) answers.
        assert _until(lambda: self.run("jobs", "-a", "-n", check=False) is not None, 120)
        return proc

    def crash(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL the broker (as a node crash would), then its orphaned initial program."""
        pid = int(str(self.run("getattr", "broker.pid")).strip())
        os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=60)
        # Gone already when a shutdown that timed out had got as far as hanging it up.
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(self.rc2.read_text()), signal.SIGKILL)

    def stop(self) -> None:
        """Shut every broker still up down (crash it if it does not stop)."""
        for proc in self.procs:
            if proc.poll() is not None:
                continue
            try:
                # flux-core 0.88: a job left "already allocated" in SCHED can keep rc3's
                # ``flux queue idle`` waiting, so the shutdown command itself may hang.
                self.run("shutdown", "--quiet", check=False)
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.crash(proc)

    def run(self, *args: str, check: bool = True) -> str | None:
        """``flux ARGS`` in the instance: its stdout (None on failure unless ``check``)."""
        assert FLUX is not None
        proc = subprocess.run(
            [FLUX, *args], env=self.env, capture_output=True, text=True, timeout=60, check=False
        )
        if proc.returncode != 0:
            assert not check, proc.stderr
            return None
        return proc.stdout


def _rewind_check(lines: list[dict[str, Any]], jobid: int, broker: list[tuple[str, float]]) -> bool:
    """fluxmon's job.event records of the job, less what it rewound, are the broker's eventlog."""
    seen: list[tuple[str, float]] = []
    for r in lines:
        if r.get("id") != jobid:
            continue
        if r["msg"] == "job.event" and r["eventlog"] == "main":
            seen.append((r["name"], r["event_ts"]))
        elif r["msg"] == "job.rewound":
            # What was delivered before, less the events the broker no longer has.
            seen = seen[: len(seen) - r["events_dropped"]]
    return seen == broker


@pytest.mark.slow
@pytest.mark.parametrize("fluxmon", ["reconnects", "restarts"])
def test_broker_crash_rollback_records_equal_the_broker_eventlogs(
    tmp_path: Path, fluxmon: str
) -> None:
    """Broker SIGKILLed mid-workload, restarted from its statedir: fluxmon equals its eventlogs.

    ``reconnects``: fluxmon stays up and compares the history with what it remembers;
    ``restarts``: fluxmon is stopped just before the crash and started after the
    broker, and compares the history with its checkpoint's fingerprints.
    """
    inst = _Instance(tmp_path)
    port = free_port()
    conf = tmp_path / "fluxmon.toml"
    state = tmp_path / "fluxmon-state"
    state.mkdir()
    conf.write_text(
        '[log]\nformat = "json"\n[flux]\nreconnect_min = 0.2\nreconnect_max = 1.0\n'
        f'[state]\ncheckpoint_dir = "{state}"\n'
    )
    log_path = tmp_path / "fluxmon.log"
    log = log_path.open("w")
    fm = None

    def start_fluxmon() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [inst.env["FLUXMON"], "run", "--uri", inst.uri, "--listen", f"127.0.0.1:{port}",
             "-c", str(conf)],
            env=fluxmon_env(), stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        assert _until(lambda: _ready(port), 120), "fluxmon not ready"
        return proc

    try:
        first = inst.start()
        fm = start_fluxmon()
        inst.run("submit", "--cc=1-40", "--quiet", "sleep", "0.3")
        # Long enough for a KVS checkpoint with every submit, short of the workload's end.
        time.sleep(2.5)
        if fluxmon == "restarts":
            fm.terminate()
            assert fm.wait(timeout=30) == 0
        inst.crash(first)
        inst.start()
        if fluxmon == "restarts":
            fm = start_fluxmon()
        # flux-core 0.88 can leave a rolled-back job in SCHED for good ("already allocated"
        # in the job-manager's log): cancel what has not ended after a minute.
        idle = lambda: inst.run("jobs", "-n", "-o", "{id}", "-f", "active", check=False) == ""  # noqa: E731
        stuck = 0
        if not _until(idle, 60):
            stuck = len(str(inst.run("jobs", "-n", "-o", "{id}", "-f", "active")).split())
            inst.run("cancel", "--all", check=False)
            assert _until(idle, 120), "jobs still active after cancel"
        jobs = {j["id"]: j for j in json.loads(str(inst.run("jobs", "-a", "--json")))["jobs"]}
        eventlogs = {}
        exec_lines = 0  # reported, not compared: exec events lost by the rollback stay counted
        for jobid in jobs:
            out = str(inst.run("job", "eventlog", "-f", "json", str(jobid)))
            eventlogs[jobid] = [
                (e["name"], e["timestamp"]) for e in map(json.loads, out.splitlines())
            ]
            exec_out = inst.run("job", "eventlog", "-p", "exec", str(jobid), check=False)
            exec_lines += len((exec_out or "").splitlines())

        def lines() -> list[dict[str, Any]]:
            text = log_path.read_text().splitlines()
            return [json.loads(x) for x in text if x.startswith("{")]

        def caught_up() -> bool:
            got = lines()
            return all(_rewind_check(got, j, events) for j, events in eventlogs.items())

        in_step = _until(caught_up, 60)
        text = _scrape_when(port, lambda m: True)
    finally:
        if fm is not None:
            fm.terminate()
            fm.wait(timeout=30)
        log.close()
        inst.stop()
    got = lines()
    rewound = [r for r in got if r["msg"] == "job.rewound"]
    reruns = {r["id"] for r in rewound if r["was_state"] == "INACTIVE"}
    vanished = {r["id"] for r in got if r["msg"] == "job.event"} - set(jobs)
    print(f"\nrollback: {len(rewound)} rewound, {len(reruns)} finished and ran again,"
          f" {stuck} stuck and canceled, {len(vanished)} lost by the broker")  # fmt: skip
    exec_counted = sum(
        s.value for s in metrics(text)["flux_job_events"] if s.labels["eventlog"] == "exec"
    )
    print(f"exec events: {exec_counted:g} counted, {exec_lines} in the broker's exec eventlogs")
    assert [r for r in got if r["msg"] == "event.rejected"] == []
    bad = [j for j, events in eventlogs.items() if not _rewind_check(got, j, events)]
    assert bad == [], bad
    assert in_step
    # The counter holds every main event logged (those the broker lost included).
    found = metrics(text)
    main = sum(s.value for s in found["flux_job_events"] if s.labels["eventlog"] == "main")
    logged = [r for r in got if r["msg"] == "job.event" and r["eventlog"] == "main"]
    assert main == len(logged)
    assert _value(found, "fluxmon_jobs_rewound") == len(rewound)
    finished: dict[int, list[dict[str, Any]]] = {}
    for r in got:
        if r["msg"] == "job.finished":
            finished.setdefault(r["id"], []).append(r)
    for jobid, job in jobs.items():
        runs = finished.get(jobid, [])
        assert len(runs) == 1 + (jobid in reruns), (jobid, runs)
        assert runs[-1]["result"] == job["result"].lower(), job


# fluxmon killed with SIGKILL at a random moment of a 200-job workload, then restarted
# with the same checkpoint directory; then every job's main eventlog as Flux has it.
KILLED = (
    r"""
set -u
out=$1; port=$2; kill_after=$3
start() {
  "$FLUXMON" run --listen 127.0.0.1:$port -c "$out/fluxmon.toml" > "$out/$1.log" 2>&1 &
  fm=$!
  for i in $(seq 300); do curl -sf 127.0.0.1:$port/readyz >/dev/null && break; sleep 0.1; done
}
start first
# With a Prometheus ($PROM): wait until it has scraped this fluxmon once.
for i in $(seq 600); do
  [ -z "${PROM:-}" ] && break
  curl -sf "$PROM/api/v1/query?query=up" | grep -q '"value"' && break; sleep 0.1
done
flux submit --cc=1-150 true > "$out/ids" &
sub=$!
flux submit --cc=1-50 sleep 0 > "$out/ids2" &
sub2=$!
sleep $kill_after
kill -9 $fm; wait $fm
wait $sub $sub2
cat "$out/ids2" >> "$out/ids"
start second
for id in $(cat "$out/ids"); do flux job wait-event -t 120 $id clean >/dev/null; done
"""
    + WAIT_IDLE
    + r"""for id in $(cat "$out/ids"); do
  dec=$(flux job id --to=dec $id)
  flux job eventlog -f json $id | sed "s/^/$dec main /"
  flux job eventlog -f json -p exec $id | sed "s/^/$dec exec /"
done > "$out/eventlogs.txt" 2> "$out/eventlog-errors.txt"
kill -TERM $fm; wait $fm; echo $? > "$out/fluxmon.rc"
"""
)


def _job_records(path: Path) -> list[dict[str, Any]]:
    """job.event and job.finished records of a log; a line torn by SIGKILL is skipped."""
    out = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # the last line of a killed writer may be cut short
        if record.get("msg") in ("job.event", "job.finished"):
            out.append(record)
    return out


def _key(record: dict[str, Any]) -> tuple[Any, ...]:
    """A record's dedupe key: (id, eventlog, seq) of a job.event, (id,) of a job.finished."""
    if record["msg"] == "job.finished":
        return (record["id"],)
    return (record["id"], record["eventlog"], record["seq"])


def _kill_run(tmp_path: Path, port: int, prometheus: str | None = None) -> str:
    """Run the KILLED workload (fluxmon on ``port``, kill -9, restart); the kill's moment.

    The kill comes 0.1 to 6 s after the first fluxmon is ready (and, with the URL of a
    ``prometheus`` scraping it, has been scraped).
    """
    assert FLUX is not None
    state = tmp_path / "state"
    state.mkdir()
    (tmp_path / "fluxmon.toml").write_text(
        f'[log]\nformat = "json"\n[state]\ncheckpoint_dir = "{state}"\n'
    )
    (tmp_path / "killed.sh").write_text(KILLED)
    # Anywhere from just after the first start to the workload's end; a failure's
    # moment can be replayed with FLUXMON_KILL_AFTER.
    kill_after = (
        os.environ.get("FLUXMON_KILL_AFTER") or f"{random.SystemRandom().uniform(0.1, 6.0):.2f}"
    )
    proc = subprocess.run(
        [FLUX, "start", "--test-size=2", "bash", str(tmp_path / "killed.sh"), str(tmp_path),
         str(port), kill_after],
        env={**fluxmon_env(), **({"PROM": prometheus} if prometheus else {})},
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, (kill_after, proc.stderr[-3000:])
    return kill_after


def _broker_lines(tmp_path: Path) -> dict[tuple[int, str], list[dict[str, Any]]]:
    """Every job's main and exec eventlog lines as the broker printed them after the run."""
    lines: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for line in (tmp_path / "eventlogs.txt").read_text().splitlines():
        jobid, eventlog, entry = line.split(" ", 2)
        lines.setdefault((int(jobid), eventlog), []).append(json.loads(entry))
    return lines


@pytest.mark.slow
@pytest.mark.promtool
@pytest.mark.skipif(shutil.which("prometheus") is None, reason="the prometheus server is absent")
def test_counters_through_a_sigkill_equal_the_eventlogs_in_prometheus(tmp_path: Path) -> None:
    """A real Prometheus scrapes fluxmon through kill -9 and restart: no reset, exact totals.

    The checkpoint carries the flux_* counters, so the restarted series go on from
    the values they had at the last save and are hidden until history is caught up:
    Prometheus sees no series go down (``resets()`` is 0 for every series, so
    ``increase()`` counts nothing twice), and each series' last value equals the
    broker's eventlog lines of that name.
    """
    prometheus = shutil.which("prometheus")
    assert prometheus is not None
    port, prom_port = free_port(), free_port()
    config = {
        "global": {"scrape_interval": "500ms", "scrape_timeout": "400ms"},
        "scrape_configs": [
            {"job_name": "fluxmon", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
        ],
    }
    (tmp_path / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    log = (tmp_path / "prometheus.log").open("wb")
    server = subprocess.Popen(
        [prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{prom_port}"

    def query(expr: str) -> list[dict[str, Any]]:
        url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=10) as resp:
            payload = json.load(resp)
        assert payload["status"] == "success", payload
        result: list[dict[str, Any]] = payload["data"]["result"]
        return result

    def up() -> bool:
        try:
            with urllib.request.urlopen(f"{base}/-/ready", timeout=5) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    try:
        assert _until(up, 60), (tmp_path / "prometheus.log").read_text()[-2000:]
        kill_after = _kill_run(tmp_path, port, base)
        time.sleep(1.5)  # the last scrapes are in the head block
        resets = query("resets(flux_job_events_total[1h]) > 0")
        finished = query("max_over_time(flux_jobs_finished_total[1h])")
        last = query("max_over_time(flux_job_events_total[1h])")
        restarts = query("changes(process_start_time_seconds[1h])")
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    assert resets == [], (kill_after, resets)
    # Prometheus scraped both processes: the one killed and the one restarted.
    assert [float(r["value"][1]) for r in restarts] == [1.0], restarts
    want: Counter[tuple[str, str]] = Counter()
    for (_, eventlog), entries in _broker_lines(tmp_path).items():
        for entry in entries:
            want[(eventlog, entry["name"])] += 1
    got: Counter[tuple[str, str]] = Counter()
    for series in last:
        labels = series["metric"]
        got[(labels["eventlog"], labels["name"])] += int(float(series["value"][1]))
    main = Counter({key: n for key, n in got.items() if key[0] == "main"})
    assert +main == Counter({key: n for key, n in want.items() if key[0] == "main"}), kill_after
    # Exec events: each distinct one the two fluxmons logged (its key: id, exec, seq) is
    # counted once. That is the broker's exec eventlogs plus, now and then, a
    # shell.task-exit its watch streamed that the eventlog stored at the job's end lacks
    # (flux-core 0.88 posts it to the guest namespace as that namespace is copied back).
    logged: dict[tuple[Any, ...], str] = {}
    for run in ("first", "second"):
        for record in _job_records(tmp_path / f"{run}.log"):
            if record.get("eventlog") == "exec":
                logged[_key(record)] = record["name"]
    exec_logged = Counter(("exec", name) for name in logged.values())
    assert +Counter({k: n for k, n in got.items() if k[0] == "exec"}) == exec_logged, kill_after
    want_exec = Counter({key: n for key, n in want.items() if key[0] == "exec"})
    assert not +(want_exec - exec_logged), (kill_after, "a broker exec line was not counted")
    assert sum(int(float(s["value"][1])) for s in finished) == 200


@pytest.mark.slow
def test_sigkill_repeats_at_most_the_batch_in_flight_and_loses_nothing(tmp_path: Path) -> None:
    """kill -9 of fluxmon mid-workload, restart: every main eventlog line logged, repeats keyed.

    Repeated records (same key, same content) may only be the last ones the killed
    fluxmon wrote (those after its last durable save): as a set, the repeated main
    records are a suffix of the first log's main records.
    """
    kill_after = _kill_run(tmp_path, free_port())
    assert (tmp_path / "fluxmon.rc").read_text().strip() == "0"
    print(f"kill_after={kill_after}")  # with -s: the moment of this run
    lines = _broker_lines(tmp_path)
    jobs = {jobid for jobid, _ in lines}
    assert len(jobs) == 200
    first = _job_records(tmp_path / "first.log")
    second = _job_records(tmp_path / "second.log")
    firsts = {_key(r): r for r in first}
    assert len(firsts) == len(first), "the killed fluxmon logged a record twice"
    repeated = [r for r in second if _key(r) in firsts]
    for record in repeated:  # the same record: only its log time differs (and an exec
        # event's state: the job's state when it was applied, after more main events)
        varies = {"ts", "state"} if record.get("eventlog") == "exec" else {"ts"}
        assert {k: v for k, v in record.items() if k not in varies} == {
            k: v for k, v in firsts[_key(record)].items() if k not in varies
        }
    main_first = [_key(r) for r in first if r.get("eventlog", "main") == "main"]
    main_repeated = {_key(r) for r in repeated if r.get("eventlog", "main") == "main"}
    assert set(main_first[len(main_first) - len(main_repeated) :]) == main_repeated
    logged = {_key(r): r for r in first + second}
    for (job, log_name), entries in lines.items():
        if log_name != "main":
            continue
        for seq, want in enumerate(entries):
            found = logged.get((job, "main", seq))
            assert found is not None, (kill_after, job, seq, want)
            assert (found["name"], found["event_ts"]) == (want["name"], want["timestamp"])
    assert {k[0] for k in logged if len(k) == 1} == jobs
    exec_lines = sum(len(v) for (_, log), v in lines.items() if log == "exec")
    exec_logged = sum(1 for k in logged if len(k) == 3 and k[1] == "exec")
    (tmp_path / "summary.json").write_text(
        json.dumps(
            {
                "kill_after": kill_after,
                "first_records": len(first),
                "repeated": len(repeated),
                "repeated_finished": sum(1 for r in repeated if r["msg"] == "job.finished"),
                "exec_lines": exec_lines,
                "exec_logged": exec_logged,
            }
        )
    )
    print(json.loads((tmp_path / "summary.json").read_text()))
