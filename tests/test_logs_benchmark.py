"""benchmarks/log_records.py runs end to end on a small workload."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_log_records_benchmark_prints_every_mode(capsys: pytest.CaptureFixture[str]) -> None:
    """Each format and batch, of job.event and job.finished, paced, pauses: three cells a row."""
    path = ROOT / "benchmarks" / "log_records.py"
    spec = importlib.util.spec_from_file_location("bench_log_records", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    assert module.main(["--events", "400", "--rounds", "1", "--paced", "20"]) == 0
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
