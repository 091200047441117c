"""The Prometheus rules: promtool accepts them and their unit tests pass, for every alert."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar, cast

import pytest

PROMETHEUS_DIR = Path(__file__).resolve().parent.parent / "prometheus"
RULES = PROMETHEUS_DIR / "fluxmon-rules.yml"
RULE_TESTS = PROMETHEUS_DIR / "fluxmon-rules.test.yml"
EXAMPLE_CONFIG = PROMETHEUS_DIR / "prometheus.example.yml"

PROMTOOL = shutil.which("promtool")
_Test = TypeVar("_Test", bound=Callable[..., None])


def needs_promtool(test: _Test) -> _Test:
    """Mark a test that runs promtool (``-m "not promtool"`` deselects it); skip it without."""
    skip = pytest.mark.skipif(
        PROMTOOL is None, reason="promtool is not installed (Debian package: prometheus)"
    )
    return cast("_Test", pytest.mark.promtool(skip(test)))


EXPECTED_ALERTS = {
    "FluxmonDown",
    "FluxmonDisconnected",
    "FluxmonNotReady",
    "FluxmonLagging",
    "FluxJobFailureRatioHigh",
    "FluxQueueWaitP95High",
    "FluxOldestPendingJobTooOld",
    "FluxJobExceptionBurst",
    "FluxmonLabelOverflow",
    "FluxmonEventErrors",
    "FluxNodesDrainedHigh",
    "FluxNodeDownLong",
    "FluxQueueFull",
}


def _promtool(*args: str, cwd: Path = PROMETHEUS_DIR) -> subprocess.CompletedProcess[str]:
    """Run promtool with ``args`` and return the finished process."""
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=120
    )


def _alert_blocks(text: str) -> dict[str, str]:
    """Split the rules file into alert name -> the text of that rule."""
    parts = re.split(r"^\s*- alert: ", text, flags=re.MULTILINE)[1:]
    return {part.split("\n", 1)[0].strip(): part for part in parts}


def _alert_test_cases(text: str) -> list[tuple[str, bool]]:
    """Return (alertname, expects any alert) for each alert_rule_test evaluation."""
    cases = re.findall(r"^\s*alertname: (\S+)\n\s*exp_alerts:(.*)$", text, flags=re.MULTILINE)
    return [(name, rest.strip() != "[]") for name, rest in cases]


def test_rules_file_defines_exactly_the_documented_alerts() -> None:
    """The rules file has each alert of the design, and no other."""
    assert set(_alert_blocks(RULES.read_text())) == EXPECTED_ALERTS


OPERATIONS = PROMETHEUS_DIR.parent / "docs" / "operations.md"


@pytest.mark.parametrize("alert", sorted(EXPECTED_ALERTS))
def test_alert_is_in_the_operations_guide_with_its_severity(alert: str) -> None:
    """docs/operations.md lists each alert in its table with the rule's severity."""
    block = _alert_blocks(RULES.read_text())[alert]
    severity = re.search(r"^\s+severity: (\w+)$", block, flags=re.MULTILINE)
    assert severity
    rows = re.findall(rf"^\| {alert} \|.*\| (\w+) \|$", OPERATIONS.read_text(), re.MULTILINE)
    assert rows == [severity.group(1)]


@pytest.mark.parametrize("alert", sorted(EXPECTED_ALERTS))
def test_alert_has_severity_and_runbook_annotations(alert: str) -> None:
    """Each alert carries a severity label and summary, description and runbook annotations."""
    block = _alert_blocks(RULES.read_text())[alert]
    assert re.search(r"^\s+severity: (critical|warning|info)$", block, flags=re.MULTILINE)
    for key in ("summary", "description", "runbook"):
        assert re.search(rf"^\s+{key}: ", block, flags=re.MULTILINE), key


@pytest.mark.parametrize("alert", sorted(EXPECTED_ALERTS))
def test_every_alert_is_tested_firing_and_not_firing(alert: str) -> None:
    """The promtool unit tests evaluate each alert at least once firing and once silent."""
    outcomes = {fires for name, fires in _alert_test_cases(RULE_TESTS.read_text()) if name == alert}
    assert outcomes == {True, False}


@needs_promtool
def test_promtool_check_rules() -> None:
    """`promtool check rules` accepts the rules file."""
    proc = _promtool("check", "rules", RULES.name)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


@pytest.mark.slow
@needs_promtool
def test_promtool_unit_tests_pass() -> None:
    """`promtool test rules` passes every unit test of the rules."""
    proc = _promtool("test", "rules", RULE_TESTS.name)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


@needs_promtool
def test_example_prometheus_config_is_valid() -> None:
    """`promtool check config` accepts the example scrape configuration and its rules."""
    proc = _promtool("check", "config", EXAMPLE_CONFIG.name)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.slow
@needs_promtool
@pytest.mark.parametrize(
    ("original", "mutant"),
    [
        pytest.param('{quantile="0.99"} > 30', '{quantile="0.99"} > 300', id="lag-threshold"),
        pytest.param("failure_ratio_rate30m > 0.5", "failure_ratio_rate30m > 0.9", id="ratio"),
        pytest.param('type!~"cancel|timeout"', 'type!~"timeout"', id="cancel-not-excluded"),
        pytest.param('{state=~"PRIORITY|SCHED"} > 0)', '{state=~"PRIORITY|SCHED"})', id="zero"),
        pytest.param('up{job="fluxmon"} == 0 or ', 'up{job="fluxmon"} == 0 and ', id="absent"),
        pytest.param(
            "sum by (cluster, job, instance, queue) (rate(flux_jobs_finished_total{result",
            "sum by (job, instance, queue) (rate(flux_jobs_finished_total{result",
            id="cluster-dropped",
        ),
        pytest.param('{state=~"drained|draining"})', '{state="drained"})', id="draining"),
        pytest.param("        > 0.1\n", "        > 0.2\n", id="drained-fraction"),
        pytest.param(
            '{state="down"} > 0\n        for: 30m',
            '{state="down"} > 0\n        for: 5m',
            id="down-for",
        ),
        pytest.param(
            '(flux_resource_cores{state="allocated"}) > 0',
            '(flux_resource_cores{state="allocated"}) >= 0',
            id="full-of-nothing",
        ),
        pytest.param(
            '(flux_jobs{state="SCHED"}) > 0', '(flux_jobs{state="SCHED"}) >= 0', id="nothing-waits"
        ),
    ],
)
def test_unit_tests_catch_a_changed_rule(tmp_path: Path, original: str, mutant: str) -> None:
    """A rules file with one condition altered fails the unit tests (they check behaviour)."""
    text = RULES.read_text()
    assert text.count(original) == 1
    (tmp_path / RULES.name).write_text(text.replace(original, mutant))
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    proc = _promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert proc.returncode != 0, proc.stdout
    assert "FAILED" in proc.stdout + proc.stderr
