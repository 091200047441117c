"""What fluxmon costs the broker it watches (needs flux-core on PATH; not run in CI).

For each configuration, a fresh ``flux start --test-size=2`` instance runs
``flux submit --cc=1-N --wait true`` once with nothing attached and once with fluxmon
attached, and reports from the same run:

* throughput (jobs/s) with fluxmon divided by without it;
* fluxmon's CPU time divided by the brokers' CPU time over the submission;
* events fluxmon applied, so a configuration that saw nothing cannot look cheap.

Configurations: journal mode with exec watches (the default), journal mode without
exec watches, and forced watch mode (one main-eventlog watch per job plus exec
watches: the naive design, for comparison).

Usage: python benchmarks/broker_overhead.py [--jobs 2000] [--repeat 1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

DRIVER = r"""
set -eu
out=$1; jobs=$2; config=$3; port=$4
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
b0=$(flux getattr broker.pid); b1=$(flux exec -r 1 flux getattr broker.pid)
fm=""
if [ "$config" != none ]; then
  "$FLUXMON" run --listen 127.0.0.1:$port -c "$out/$config.toml" > "$out/$config.log" 2>&1 &
  fm=$!
  for i in $(seq 200); do curl -sf 127.0.0.1:$port/readyz >/dev/null && break; sleep 0.05; done
fi
flux submit --wait true >/dev/null  # warm up the exec path
c0=$(( $(cpu $b0) + $(cpu $b1) )); f0=0; [ -n "$fm" ] && f0=$(cpu $fm)
t0=$(date +%s.%N)
flux submit --cc=1-$jobs --quiet --wait true
t1=$(date +%s.%N)
sleep 1  # let fluxmon drain what the brokers already sent
c1=$(( $(cpu $b0) + $(cpu $b1) )); f1=0; [ -n "$fm" ] && f1=$(cpu $fm)
events=0
if [ -n "$fm" ]; then
  events=$(curl -sf 127.0.0.1:$port/metrics | awk '/^fluxmon_events_processed_total/ {print $2}')
  kill -TERM $fm; wait $fm || true
fi
printf '{"seconds": %s, "broker_ticks": %s, "fluxmon_ticks": %s, "events": %s}\n' \
  "$(echo "$t1 - $t0" | bc)" $((c1 - c0)) $((f1 - f0)) "${events:-0}" > "$out/$config.json"
"""

CONFIGS = {
    "journal+exec": '[flux]\nmode = "journal"\nexec_events = true\n',
    "journal": '[flux]\nmode = "journal"\nexec_events = false\n',
    "watch+exec": '[flux]\nmode = "watch"\nexec_events = true\npoll_interval = 1.0\n',
}
COMMON = '[log]\nevents = "none"\n'


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def run_one(flux: str, out: Path, config: str, jobs: int, env: dict[str, str]) -> dict[str, float]:
    subprocess.run(
        [flux, "start", "--test-size=2", "bash", str(out / "driver.sh"), str(out), str(jobs),
         config, str(free_port())],
        env=env, check=True, capture_output=True, timeout=1800,
    )  # fmt: skip
    result: dict[str, float] = json.loads((out / f"{config}.json").read_text())
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    flux = shutil.which("flux")
    if flux is None:
        print("flux is not on PATH; this benchmark needs a flux-core build", file=sys.stderr)
        return 1
    path = subprocess.run(
        [flux, "python", "--get-path"], capture_output=True, text=True, check=True
    ).stdout.strip()
    env = dict(os.environ, PYTHONPATH=path, FLUXMON=str(Path(sys.executable).parent / "fluxmon"))
    print(f"{'configuration':<14} {'jobs/s alone':>12} {'jobs/s with':>12} {'ratio':>6} "
          f"{'fluxmon CPU / broker CPU':>25} {'events':>8}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        (out / "driver.sh").write_text(DRIVER)
        for name, text in CONFIGS.items():
            (out / f"{name}.toml").write_text(COMMON + text)
        for _ in range(args.repeat):
            for name in CONFIGS:
                alone = run_one(flux, out, "none", args.jobs, env)
                with_ = run_one(flux, out, name, args.jobs, env)
                rate_alone = args.jobs / alone["seconds"]
                rate_with = args.jobs / with_["seconds"]
                cpu_ratio = with_["fluxmon_ticks"] / max(with_["broker_ticks"], 1)
                print(f"{name:<14} {rate_alone:>12.1f} {rate_with:>12.1f} "
                      f"{rate_with / rate_alone:>6.3f} {cpu_ratio:>24.1%} "
                      f"{int(with_['events']):>8}", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
