"""The Grafana dashboard and provisioning examples, checked without Grafana."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

GRAFANA = Path(__file__).resolve().parent.parent / "grafana"
DASHBOARD = GRAFANA / "fluxmon-dashboard.json"

#: Questions the dashboard must answer: a pattern each answering panel's title matches.
REQUIRED_TITLES = [
    r"Jobs by state now",
    r"Submit rate and finish rate by result",
    r"Queue wait p50 / p90 / p99",
    r"Queue wait distribution",
    r"Wait split by cause",
    r"Runtime .* by result",
    r"Walltime used",
    r"Exceptions by type",
    r"Return codes",
    r"Start latency and prolog / epilog",
    r"Oldest pending job age",
    r"fluxmon connected and ready",
    r"Event lag p99",
    r"Event errors by reason",
    r"Open per-job watches",
    r"Label overflow",
    r"Tracked jobs",
]


def _load() -> dict[str, Any]:
    """The dashboard as parsed JSON."""
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every non-row panel, including those nested in collapsed rows."""
    for panel in panels:
        if panel["type"] != "row":
            yield panel
        yield from _panels(panel.get("panels", []))


def _targets() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """Every (panel, target) pair of the dashboard."""
    for panel in _panels(_load()["panels"]):
        for target in panel.get("targets", []):
            yield panel, target


def _datasources(node: object) -> Iterator[dict[str, Any]]:
    """Every ``datasource`` object anywhere in the dashboard."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource" and isinstance(value, dict):
                yield value
            yield from _datasources(value)
    elif isinstance(node, list):
        for item in node:
            yield from _datasources(item)


@pytest.mark.parametrize("title", REQUIRED_TITLES)
def test_dashboard_answers_each_question(title: str) -> None:
    """For each operator question there is a panel whose title says it."""
    titles = [p["title"] for p in _panels(_load()["panels"])]
    assert any(re.search(title, t) for t in titles), titles


def test_no_hard_coded_datasource_uid() -> None:
    """Every Prometheus datasource reference goes through the ${datasource} variable."""
    refs = list(_datasources(_load()))
    assert refs
    for ref in refs:
        if ref.get("type") == "grafana":  # the built-in annotations source
            continue
        assert ref == {"type": "prometheus", "uid": "${datasource}"}


def test_variables_are_datasource_and_multi_all_queue() -> None:
    """$datasource picks a Prometheus source; $queue lists queues, multi-select with All."""
    variables = {v["name"]: v for v in _load()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    queue = variables["queue"]
    assert queue["query"]["query"] == "label_values(flux_jobs_submitted_total, queue)"
    assert queue["multi"] is True
    assert queue["includeAll"] is True
    assert queue["allValue"] == ".*"


def test_job_queries_filter_by_queue_and_fluxmon_queries_do_not() -> None:
    """Job metric queries honour $queue; fluxmon_* metrics (no queue label) are not filtered."""
    for panel, target in _targets():
        expr = target["expr"]
        if re.search(r"\bflux_", expr):
            selectors = re.findall(r"\bflux_\w+\{([^}]*)\}", expr)
            assert len(selectors) == len(re.findall(r"\bflux_\w+", expr)), expr
            assert selectors, (panel["title"], expr)
            assert all('queue=~"$queue"' in s for s in selectors), (panel["title"], expr)
        else:
            assert "$queue" not in expr, (panel["title"], expr)


def test_range_vectors_use_rate_interval() -> None:
    """Rates use $__rate_interval (or $__range for totals), never a hard-coded window."""
    for panel, target in _targets():
        windows = re.findall(r"\[([^\]]+)\]", target["expr"])
        assert all(w in ("$__rate_interval", "$__range") for w in windows), panel["title"]


def test_queue_wait_heatmap_shows_exemplars() -> None:
    """The queue-wait heatmap queries buckets as a heatmap with exemplars turned on."""
    (heatmap,) = (p for p in _panels(_load()["panels"]) if p["type"] == "heatmap")
    (target,) = heatmap["targets"]
    assert "flux_job_queue_wait_seconds_bucket" in target["expr"]
    assert target["format"] == "heatmap"
    assert target["exemplar"] is True


def test_oldest_pending_age_is_measured_from_now() -> None:
    """The oldest-pending panel subtracts the oldest entry time of pending states from time()."""
    (panel,) = (p for p in _panels(_load()["panels"]) if p["title"] == "Oldest pending job age")
    expr = panel["targets"][0]["expr"]
    assert expr.startswith("time() - min")
    assert 'state=~"DEPEND|PRIORITY|SCHED"' in expr


def test_panel_ids_and_ref_ids_are_unique() -> None:
    """Panel ids are unique dashboard-wide and refIds unique within each panel."""
    dashboard = _load()
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in _panels(dashboard["panels"]):
        refs = [t["refId"] for t in panel.get("targets", [])]
        assert len(refs) == len(set(refs)), panel["title"]


@pytest.mark.parametrize(
    ("path", "needle"),
    [
        pytest.param("provisioning/datasources/fluxmon-prometheus.yaml", "name: jobid", id="ds"),
        pytest.param("provisioning/dashboards/fluxmon.yaml", "type: file", id="dashboards"),
    ],
)
def test_provisioning_examples_exist(path: str, needle: str) -> None:
    """The provisioning examples are present and say what they provision."""
    text = (GRAFANA / path).read_text()
    assert text.startswith("#")
    assert "apiVersion: 1" in text
    assert needle in text
