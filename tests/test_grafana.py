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
    r"Nodes by state",
    r"Drained nodes and oldest drain age",
    r"Cores and GPUs allocated vs free per queue",
    r"Core and GPU utilisation per queue",
    r"Drains by reason",
    r"Drain and down durations",
]
#: Node metrics: no queue label, so a queue selection must not filter them (it would
#: hide every node).
NODE_METRICS = re.compile(r"flux_resource_nodes|flux_resource_oldest_\w+|flux_node_\w+")


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


def test_variables_are_datasource_then_multi_all_cluster_instance_queue() -> None:
    """$datasource picks a Prometheus source; $cluster, $instance, $queue chain, multi with All."""
    listed = _load()["templating"]["list"]
    assert [v["name"] for v in listed] == ["datasource", "cluster", "instance", "queue"]
    variables = {v["name"]: v for v in listed}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    queries = {
        "cluster": "label_values(fluxmon_build_info, cluster)",
        "instance": 'label_values(fluxmon_build_info{cluster=~"$cluster"}, instance)',
        "queue": 'label_values(flux_jobs_submitted_total{cluster=~"$cluster", '
        'instance=~"$instance"}, queue)',
    }
    for name, query in queries.items():
        variable = variables[name]
        assert variable["query"]["query"] == variable["definition"] == query
        assert variable["multi"] is True, name
        assert variable["includeAll"] is True, name
        assert variable["allValue"] == ".*", name  # All also matches a target without the label
        assert variable["current"]["value"] == ["$__all"], name


_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|\{[^}]*\}|\[[^\]]*\]|[A-Za-z_:][\w:]*|\S')
_NAME = re.compile(r"[A-Za-z_:][\w:]*")
_NOT_METRICS = {"and", "or", "unless", "bool", "offset", "Inf", "NaN"}


def _selectors(expr: str) -> list[tuple[str, str]]:
    """Each vector selector of a PromQL expression: (metric name, its ``{...}`` or "")."""
    tokens = ["", *_TOKEN.findall(_GROUPING.sub(" ", expr)), ""]
    found = []
    for before, token, after in zip(tokens, tokens[1:], tokens[2:], strict=False):
        if token.startswith("{") and not _NAME.fullmatch(before):
            found.append(("", token))  # a selector by labels alone
        elif _NAME.fullmatch(token) and token not in _NOT_METRICS and after != "(":
            found.append((token, after if after.startswith("{") else ""))  # not a function
    return found


def _unfiltered(expr: str) -> list[str]:
    """The selectors of ``expr`` that do not filter by $cluster and $instance."""
    needed = ('cluster=~"$cluster"', 'instance=~"$instance"')
    return [
        name + labels
        for name, labels in _selectors(expr)
        if not all(matcher in labels for matcher in needed)
    ]


@pytest.mark.parametrize(
    ("expr", "unfiltered"),
    [
        pytest.param("fluxmon_connected", ["fluxmon_connected"], id="bare"),
        pytest.param(
            'sum by (le) (rate(flux_x_bucket{queue=~"$queue"}[$__rate_interval]))',
            ['flux_x_bucket{queue=~"$queue"}'],
            id="queue-only",
        ),
        pytest.param(
            'a{cluster=~"$cluster", instance=~"$instance"} / on (queue) b{cluster=~"$cluster"}',
            ['b{cluster=~"$cluster"}'],
            id="one-side",
        ),
        pytest.param(
            'time() - min by (queue) (instance_queue:x:rate5m{cluster=~"$cluster", '
            'instance=~"$instance"} > 0)',
            [],
            id="recorded-series-filtered",
        ),
    ],
)
def test_the_cluster_filter_check_finds_a_forgotten_selector(
    expr: str, unfiltered: list[str]
) -> None:
    """The check below names exactly the selectors that lack the cluster or instance matcher."""
    assert _unfiltered(expr) == unfiltered


def test_every_panel_query_filters_by_cluster_and_instance() -> None:
    """Every selector of every panel query (recorded series too) honours $cluster and $instance."""
    checked = 0
    for panel, target in _targets():
        assert _selectors(target["expr"]), (panel["title"], target["expr"])
        assert _unfiltered(target["expr"]) == [], (panel["title"], target["refId"])
        checked += 1
    assert checked >= 20


def test_job_queries_filter_by_queue_and_fluxmon_queries_do_not() -> None:
    """Job and per-queue resource queries honour $queue; fluxmon_* and node metrics do not."""
    node_queries = 0
    for panel, target in _targets():
        expr = target["expr"]
        if re.search(r"\bflux_", expr):
            selectors = re.findall(r"\b(flux_\w+)\{([^}]*)\}", expr)
            assert len(selectors) == len(re.findall(r"\bflux_\w+", expr)), expr
            assert selectors, (panel["title"], expr)
            for name, labels in selectors:
                by_node = NODE_METRICS.fullmatch(name) is not None
                node_queries += by_node
                assert ('queue=~"$queue"' in labels) != by_node, (panel["title"], expr)
        else:
            assert "$queue" not in expr, (panel["title"], expr)
    assert node_queries >= 5


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


def _panel(title: str) -> dict[str, Any]:
    """The one panel with this title."""
    (panel,) = (p for p in _panels(_load()["panels"]) if p["title"] == title)
    return panel


def test_resources_row_holds_the_resource_panels() -> None:
    """A "Resources" row exists and the resource panels sit below it, above fluxmon health."""
    top = _load()["panels"]
    rows = {p["title"]: p["gridPos"]["y"] for p in top if p["type"] == "row"}
    assert rows["Resources"] < rows["fluxmon health"]
    for panel in top:
        if re.search(r"\bflux_(resource|node)_", json.dumps(panel.get("targets", []))):
            assert rows["Resources"] < panel["gridPos"]["y"] < rows["fluxmon health"]


def test_oldest_drain_age_is_measured_from_now() -> None:
    """The oldest-drain target subtracts the oldest drain timestamp from time(), in seconds."""
    panel = _panel("Drained nodes and oldest drain age")
    exprs = {t["refId"]: t["expr"] for t in panel["targets"]}
    assert exprs["B"].startswith("time() - min(flux_resource_oldest_drain_timestamp_seconds{")
    assert 'state=~"drained|draining"' in exprs["A"]
    (override,) = panel["fieldConfig"]["overrides"]
    assert override["matcher"] == {"id": "byFrameRefID", "options": "B"}
    assert {"id": "unit", "value": "s"} in override["properties"]


def test_utilisation_is_allocated_over_allocated_and_free() -> None:
    """Utilisation divides allocated by allocated + free (a queue with none left out)."""
    for target in _panel("Core and GPU utilisation per queue")["targets"]:
        numerator, denominator = target["expr"].split(" / ")
        assert 'state="allocated"' in numerator
        assert 'state=~"allocated|free"' in denominator
        assert denominator.endswith("> 0)")
