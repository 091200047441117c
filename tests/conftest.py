"""Shared fixtures: the recorded data and a pipeline built from default settings."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import threading
from collections.abc import Callable, Generator, Iterable
from pathlib import Path
from typing import Any

import pytest

from fluxmon.app import Parts, build
from fluxmon.config import Settings, load_settings
from fluxmon.sources.replay import ReplaySource
from fluxmon.testing import parse_log

DATA = Path(__file__).parent / "data"
# Markers whose tests may not skip: CI sets "flux promtool" where it has built flux-core
# and installed Prometheus, so a test that would quietly skip there fails instead.
REQUIRED = set(os.environ.get("FLUXMON_REQUIRE_MARKERS", "").split())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Turn the skip of a test that carries a required marker into a failure, naming why."""
    report = yield
    required = REQUIRED.intersection(m.name for m in item.iter_markers())
    if report.skipped and required:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = (
            f"skipped, but FLUXMON_REQUIRE_MARKERS requires {sorted(required)}: {reason}"
        )
    return report


SCENARIOS = sorted((DATA / "scenarios").glob("*.jsonl"))


@dataclasses.dataclass
class Replayed:
    """A pipeline after a replay: its parts and the JSON log it wrote."""

    parts: Parts
    log: io.StringIO

    def records(self, msg: str | None = None) -> list[dict[str, Any]]:
        """Log records, optionally only those with ``msg``."""
        records = parse_log(self.log.getvalue())
        return [r for r in records if msg is None or r["msg"] == msg]

    def sample(self, metric: str, /, **labels: str) -> float | None:
        """One sample's value from the registry (None if absent)."""
        return self.parts.registry.get_sample_value(metric, labels)


def json_settings(**log: Any) -> Settings:
    """Default settings with JSON logs (so tests parse records exactly)."""
    base = load_settings(None)
    return dataclasses.replace(base, log=dataclasses.replace(base.log, format="json", **log))


@pytest.fixture
def replay() -> Callable[..., Replayed]:
    """Replay files through a fresh pipeline with JSON logs."""

    def run(paths: Iterable[Path], settings: Settings | None = None) -> Replayed:
        stream = io.StringIO()
        parts = build(settings or json_settings(), stream, clock=None)
        ReplaySource(list(paths)).run(parts.pipeline, threading.Event())
        return Replayed(parts, stream)

    return run


def flux_jobs() -> dict[int, dict[str, Any]]:
    """``flux jobs -a --json`` from the recording instance, by decimal jobid."""
    jobs = json.loads((DATA / "jobs-list.json").read_text())["jobs"]
    return {job["id"]: job for job in jobs}


def expected() -> dict[str, dict[str, Any]]:
    """Each scenario's jobid, result and returncode from the recording's README table."""
    data: dict[str, dict[str, Any]] = json.loads((DATA / "expected.json").read_text())
    return data
