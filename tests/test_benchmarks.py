"""Helpers of benchmarks/broker_overhead.py and replay_throughput.py; log_records.py runs."""

from __future__ import annotations

import importlib.util
import io
import math
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str) -> ModuleType:
    path = ROOT / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


overhead = _load("broker_overhead")
replay = _load("replay_throughput")

EXPOSITION = """\
# HELP flux_jobs_finished_total jobs that reached INACTIVE
# TYPE flux_jobs_finished_total counter
flux_jobs_finished_total{queue="default",result="completed"} 990.0
flux_jobs_finished_total{queue="batch",result="failed"} 10.0
flux_jobs_finished_created{queue="default",result="completed"} 1.7e9
fluxmon_events_processed_total 16000.0
fluxmon_event_lag_seconds_bucket{le="0.1"} 100.0
fluxmon_event_lag_seconds_bucket{le="1.0"} 900.0
fluxmon_event_lag_seconds_bucket{le="+Inf"} 1000.0
fluxmon_event_lag_seconds_count 1000.0
garbage line
"""


def test_parse_metrics_sums_labels_and_keys_buckets_by_le() -> None:
    """Series are summed over their labels, buckets kept apart by ``le``, junk ignored."""
    metrics = overhead.parse_metrics(EXPOSITION)
    assert metrics["flux_jobs_finished_total"] == 1000.0
    assert metrics["fluxmon_events_processed_total"] == 16000.0
    assert metrics["fluxmon_event_lag_seconds_bucket{1.0}"] == 900.0
    assert overhead.buckets(metrics, "fluxmon_event_lag_seconds") == [
        (0.1, 100.0),
        (1.0, 900.0),
        (math.inf, 1000.0),
    ]


def test_delta_counts_new_series_from_zero() -> None:
    """``delta`` subtracts the earlier scrape; a series absent from it counts from 0."""
    assert overhead.delta({"a": 5.0, "b": 2.0}, {"a": 3.0}) == {"a": 2.0, "b": 2.0}


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        (0.05, 0.05),  # inside the first bucket, from 0
        (0.5, 0.1 + 0.9 * (500 - 100) / 800),  # interpolated in (0.1, 1.0]
        (0.99, 1.0),  # in the +Inf bucket: the last finite bound
    ],
)
def test_quantile_interpolates_like_histogram_quantile(q: float, expected: float) -> None:
    """``quantile`` interpolates linearly inside the bucket holding the rank."""
    cumulative = [(0.1, 100.0), (1.0, 900.0), (math.inf, 1000.0)]
    assert overhead.quantile(q, cumulative) == pytest.approx(expected)


def test_quantile_without_observations_is_nan() -> None:
    """No observations give NaN rather than a made-up latency."""
    assert math.isnan(overhead.quantile(0.99, [(0.1, 0.0), (math.inf, 0.0)]))
    assert math.isnan(overhead.quantile(0.99, []))


def test_cpu_ticks_reads_utime_and_stime_past_a_comm_with_spaces() -> None:
    """utime+stime are fields 14 and 15, counted after the parenthesised command name."""
    stat = "4628 (flux broker) S 4625 4624 10635 0 -1 4194304 1619 6959 0 0 7 9 16 2 20 0"
    assert overhead.cpu_ticks(stat) == 16
    assert overhead.cpu_ticks(Path(f"/proc/{os.getpid()}/stat").read_text()) >= 0


def test_busy_ticks_leave_idle_and_iowait_out() -> None:
    """Busy ticks are user+nice+system+irq+softirq+steal; the total counts idle and iowait too."""
    stat = "cpu  100 5 50 1000 20 3 2 7 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n"
    assert overhead.busy_ticks(stat) == (167, 1187)
    busy, total = overhead.busy_ticks(Path("/proc/stat").read_text())
    assert 0 <= busy <= total


def test_arm_order_alternates() -> None:
    """Even rounds run the arms as given, odd rounds reversed."""
    assert overhead.arm_order(["alone", "a", "b"], 0) == ["alone", "a", "b"]
    assert overhead.arm_order(["alone", "a", "b"], 1) == ["b", "a", "alone"]


def test_arms_take_labels_and_setups() -> None:
    """``LABEL=CMD`` names an arm; a bare command is named for its position; setups multiply."""
    arms = overhead._arms(["old=/a/fluxmon -v", "/b/python -m fluxmon"], ["default", "watch"])
    assert arms == {
        "old": (["/a/fluxmon", "-v"], "default"),
        "old/watch": (["/a/fluxmon", "-v"], "watch"),
        "fluxmon2": (["/b/python", "-m", "fluxmon"], "default"),
        "fluxmon2/watch": (["/b/python", "-m", "fluxmon"], "watch"),
    }


def _run(arm: str, round_: int, seconds: float, broker: int, **extra: Any) -> dict[str, Any]:
    return {"workload": "peak", "round": round_, "arm": arm, "jobs": 100, "seconds": seconds,
            "broker_ticks": broker, "clk_tck": 100, **extra}  # fmt: skip


def test_summarize_compares_each_round_with_its_own_alone_run() -> None:
    """Ratios pair runs of the same round; medians and spreads are over rounds."""
    lag = [(0.5, 990.0), (1.0, 1000.0), (math.inf, 1000.0)]
    attached = {"fluxmon_ticks": 50, "events": 1000.0, "lag_buckets": lag,
                "finished_1s": 90.0, "caught_up_s": 2.0}  # fmt: skip
    runs = [
        _run("alone", 0, 1.0, 100),
        _run("fluxmon", 0, 2.0, 120, **attached),
        _run("fluxmon", 1, 1.0, 110, **attached),
        _run("alone", 1, 0.5, 100),
        _run("alone", 2, 1.0, 100),  # no attached run in this round: not paired
    ]
    summary = overhead.summarize(runs)["peak"]
    assert summary["alone"]["jobs_per_s"] == (100.0, 100.0, 200.0)
    figures = summary["fluxmon"]
    assert figures["throughput_ratio"] == (0.5, 0.5, 0.5)
    assert figures["broker_cpu_ratio"] == pytest.approx((1.15, 1.1, 1.2))
    assert figures["fluxmon_us_per_event"] == pytest.approx((500.0, 500.0, 500.0))
    assert figures["events_per_job"] == (10.0, 10.0, 10.0)
    assert figures["cpu_per_job_us"] == pytest.approx((5000.0, 5000.0, 5000.0))
    assert figures["lag_p99_s"] == pytest.approx((0.5, 0.5, 0.5))
    assert figures["lag_le_1s"] == (1.0, 1.0, 1.0)
    assert figures["finished_1s_after_drain"] == (0.9, 0.9, 0.9)
    assert "10 jobs" not in overhead.render({"peak": summary}, {"peak": 100})
    assert "throughput attached/alone" in overhead.render({"peak": summary}, {"peak": 100})


def test_controls_report_the_brokers_side_their_own_cpu_and_the_machines() -> None:
    """A bare consumer or burner run: throughput, broker CPU, its CPU per job, machine busy."""
    runs = [
        _run("alone", 0, 1.0, 100, machine_busy=0.8),
        _run("burn-0.2", 0, 1.25, 110, consumer_ticks=20, machine_busy=0.9),
    ]
    summary = overhead.summarize(runs)["peak"]
    assert summary["alone"]["machine_busy"] == (0.8, 0.8, 0.8)
    figures = summary["burn-0.2"]
    assert figures["throughput_ratio"] == (0.8, 0.8, 0.8)
    assert figures["broker_cpu_ratio"] == pytest.approx((1.1, 1.1, 1.1))
    assert figures["cpu_per_job_us"] == pytest.approx((2000.0, 2000.0, 2000.0))
    assert figures["machine_busy"] == (0.9, 0.9, 0.9)
    assert "fluxmon_us_per_event" not in figures


def test_spread_ignores_nan() -> None:
    """A run that never caught up (NaN) does not poison the median of the others."""
    assert overhead.spread([3.0, math.nan, 1.0, 2.0]) == (2.0, 1.0, 3.0)
    assert all(math.isnan(v) for v in overhead.spread([math.nan]))


def test_peak_rss_reads_vmhwm() -> None:
    """The mode's peak RSS is ``VmHWM`` of its own status, in MiB."""
    assert replay.peak_rss_mib("Name:\tx\nVmHWM:\t   20480 kB\nVmRSS:\t 1 kB\n") == 20.0


def test_replay_stages_read_every_line_and_track_without_refusals(tmp_path: Path) -> None:
    """``--stages``: ``parse`` and ``track`` see every generated line; replay applies them all."""
    path = tmp_path / "events.jsonl"
    lines = replay.generate(path, 3000)
    assert replay.measure("parse", str(path))["events"] == lines
    assert replay.measure("track", str(path))["events"] == lines
    assert replay._run_replay(str(path), io.StringIO(), per_event_logs=False) == lines
    broken = tmp_path / "broken.jsonl"
    broken.write_bytes(path.read_bytes() + b"not json\n")
    assert replay.measure("track", str(broken))["events"] == lines + 1  # the refused line too


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_peak_rss_is_the_childs_own_not_the_parents() -> None:
    """A small child of a big parent reports its own peak, unlike ``ru_maxrss``."""
    ballast = bytearray(300 * 2**20)
    ballast[:: 2**12] = b"\1" * (len(ballast) // 2**12)
    code = "import sys; sys.path[:0] = sys.argv[1:2]; " + (
        "import importlib.util as u; s = u.spec_from_file_location('r', sys.argv[2]); "
        "m = u.module_from_spec(s); s.loader.exec_module(m); print(m.peak_rss_mib())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(ROOT), str(ROOT / "benchmarks" / "replay_throughput.py")],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    del ballast
    assert float(out) < 200


def test_log_records_benchmark_prints_every_mode(capsys: pytest.CaptureFixture[str]) -> None:
    """Each format and batch, of job.event and job.finished, paced, pauses: three cells a row."""
    assert _load("log_records").main(["--events", "400", "--rounds", "1", "--paced", "20"]) == 0
    rows = capsys.readouterr().out.splitlines()[2:]
    kinds = [tuple(row.split()[:2]) for row in rows]
    assert kinds == [
        ("logfmt", "1"),
        ("logfmt", "64"),
        ("json", "1"),
        ("json", "64"),
        ("logfmt", "1+1ms"),
        ("pauses", "alone"),
        ("logfmt/fin", "1"),
        ("logfmt/fin", "64"),
        ("json/fin", "1"),
        ("json/fin", "64"),
    ]
    assert all(row.count("[") == 3 for row in rows)
