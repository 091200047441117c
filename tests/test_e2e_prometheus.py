"""End to end: a real Prometheus scrapes `fluxmon demo`; every dashboard and rule query answers.

The scrape job labels the demo ``cluster="e2e"``, as prometheus.example.yml does for a real
cluster, so the dashboard's $cluster and $instance variables are exercised like in Grafana.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.promtool, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "grafana" / "fluxmon-dashboard.json"
RULES = ROOT / "prometheus" / "fluxmon-rules.yml"
PROMETHEUS = shutil.which("prometheus")

#: How long the demo may take to put every series the dashboard and the rules need into
#: Prometheus. The fixture polls and goes on as soon as they are all there (in seconds).
READY_TIMEOUT = 120.0
#: The ``cluster`` label the scrape job gives the demo, and one no target has.
CLUSTER = "e2e"
OTHER_CLUSTER = "elsewhere"
#: Grafana's variables but $cluster and $instance, as Grafana expands them for "All queues,
#: last hour".
VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval_ms": "15000",
    "$__interval": "15s",
    "$__range_ms": "3600000",
    "$__range_s": "3600",
    "$__range": "1h",
    "${queue}": ".*",
    "$queue": ".*",
}
#: Counters that prove the demo's nodes drained, undrained, went offline and came back.
RESOURCE_LIFE = (
    "flux_node_drains_total",
    "flux_node_drain_duration_seconds_count",
    "flux_node_down_duration_seconds_count",
)
F58 = re.compile(r"^f[1-9A-HJ-NP-Za-km-z]+$")


def _free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET ``url``; return status and body (HTTP errors included, not raised)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status: int = response.status
            return status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _wait_for(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    """Wait until ``url`` answers 200, failing early with the log tail if ``proc`` dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args!r} exited with {proc.returncode}:\n{_tail(log)}")
        try:
            if _get(url, timeout=1.0)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    pytest.fail(f"{url} not ready after {timeout} s:\n{_tail(log)}")


def _tail(path: Path, lines: int = 30) -> str:
    """The last lines of a log file, for failure messages."""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    """Terminate a child process, killing it if it ignores SIGTERM."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


class PromAPI:
    """The few Prometheus HTTP API calls the test needs."""

    def __init__(self, base: str) -> None:
        """Talk to the Prometheus server at ``base`` (``http://host:port``)."""
        self.base = base

    def call(self, path: str, **params: str) -> Any:
        """GET an API path; return the ``data`` member, or raise with Prometheus' error."""
        status, body = _get(f"{self.base}{path}?{urllib.parse.urlencode(params)}")
        payload = json.loads(body)
        if status != 200 or payload.get("status") != "success":
            raise AssertionError(f"{path} {params}: HTTP {status}: {payload.get('error', body)}")
        return payload["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Evaluate ``expr`` now; return the result vector (or a one-element list for a scalar)."""
        data = self.call("/api/v1/query", query=expr)
        if data["resultType"] in ("scalar", "string"):
            return [{"value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result


def _selected(value: str) -> str:
    """A variable value as Grafana puts it into a Prometheus regex matcher's string literal."""
    return re.escape(value).replace("\\", "\\\\")


def _substitute(expr: str, cluster: str = _selected(CLUSTER), instance: str = ".*") -> str:
    """Expand Grafana's variables in a query; by default the demo's cluster, all instances."""
    variables = {"${cluster}": cluster, "$cluster": cluster}
    variables |= {"${instance}": instance, "$instance": instance}
    for name, value in (variables | VARIABLES).items():
        expr = expr.replace(name, value)
    assert "$" not in expr, f"unsubstituted variable in {expr!r}"
    return expr


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel of the dashboard, including those inside collapsed rows."""
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _panel_queries(**selection: str) -> Iterator[tuple[str, str]]:
    """(panel title [refId], query) of every dashboard target, variables expanded."""
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in _panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            name = f"{panel['title']!r} [{target['refId']}]"
            yield name, _substitute(target["expr"], **selection)


def _variable_values(api: PromAPI, name: str, **selection: str) -> list[str]:
    """The values a dashboard query variable lists, as Grafana gets them (label values API)."""
    dashboard = json.loads(DASHBOARD.read_text())
    (variable,) = (v for v in dashboard["templating"]["list"] if v["name"] == name)
    match = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["definition"])
    assert match, variable["definition"]
    selector = _substitute(match.group(1), **selection)
    values: list[str] = api.call(f"/api/v1/label/{match.group(2)}/values", **{"match[]": selector})
    return values


def _recording_rules(api: PromAPI) -> list[dict[str, Any]]:
    """The recording rules Prometheus loaded."""
    groups = api.call("/api/v1/rules")["groups"]
    return [r for g in groups for r in g["rules"] if r["type"] == "recording"]


def _exemplar_jobids(api: PromAPI) -> list[str]:
    """The jobid labels of the queue-wait exemplars Prometheus stored in the last 10 minutes."""
    now = time.time()
    data = api.call(
        "/api/v1/query_exemplars",
        query="flux_job_queue_wait_seconds_bucket",
        start=str(now - 600),
        end=str(now),
    )
    return [e["labels"].get("jobid", "") for series in data for e in series["exemplars"]]


def _missing(api: PromAPI) -> list[str]:
    """What the tests need that Prometheus does not have yet: panel, rule or exemplar data."""
    missing = []
    up = f'up{{job="fluxmon", cluster="{CLUSTER}"}}'
    if [s["value"][1] for s in api.query(up)] != ["1"]:
        missing.append(f"{up} == 1")
    for name, expr in _panel_queries():
        if not api.query(expr):
            missing.append(f"panel {name}: {expr}")
    for rule in _recording_rules(api):
        if not api.query(rule["query"]):
            missing.append(f"rule {rule['name']}: {rule['query']}")
        recorded = f'{rule["name"]}{{cluster="{CLUSTER}"}}'
        if not api.query(recorded):
            missing.append(f"recorded series {recorded}")
    if not _exemplar_jobids(api):
        missing.append("exemplars of flux_job_queue_wait_seconds_bucket")
    # The demo's resource life: a node drained and undrained, one offline and back online.
    for name in RESOURCE_LIFE:
        observed = f'sum({name}{{cluster="{CLUSTER}"}}) > 0'
        if not api.query(observed):
            missing.append(observed)
    return missing


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PromAPI]:
    """A Prometheus server that scrapes `fluxmon demo --rate 50` and has every series needed."""
    if PROMETHEUS is None:
        pytest.skip("the prometheus server binary is not installed (Debian package: prometheus)")
    tmp = tmp_path_factory.mktemp("e2e")
    demo_port, prom_port = _free_port(), _free_port()
    demo_log, prom_log = tmp / "fluxmon.log", tmp / "prometheus.log"
    # The recording group's 30 s interval is a production setting; evaluated every second,
    # the recorded series (and the rules built on them) appear within seconds.
    rules = RULES.read_text()
    assert rules.count("    interval: 30s\n") == 1
    (tmp / RULES.name).write_text(rules.replace("    interval: 30s\n", "    interval: 1s\n"))
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(tmp / RULES.name)],
        "scrape_configs": [
            {
                "job_name": "fluxmon",
                "static_configs": [
                    {"targets": [f"127.0.0.1:{demo_port}"], "labels": {"cluster": CLUSTER}}
                ],
            }
        ],
    }
    (tmp / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    demo: subprocess.Popen[bytes] | None = None
    server: subprocess.Popen[bytes] | None = None
    try:
        with demo_log.open("wb") as out:
            demo = subprocess.Popen(
                [
                    *(sys.executable, "-m", "fluxmon", "demo"),
                    *("--listen", f"127.0.0.1:{demo_port}", "--rate", "50", "--seed", "1"),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        with prom_log.open("wb") as out:
            server = subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={tmp / 'prometheus.yml'}",
                    f"--storage.tsdb.path={tmp / 'data'}",
                    f"--web.listen-address=127.0.0.1:{prom_port}",
                    "--enable-feature=exemplar-storage",
                    "--log.level=warn",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        _wait_for(f"http://127.0.0.1:{demo_port}/readyz", demo, demo_log, 20)
        _wait_for(f"http://127.0.0.1:{prom_port}/-/ready", server, prom_log, 20)
        api = PromAPI(f"http://127.0.0.1:{prom_port}")
        deadline = time.monotonic() + READY_TIMEOUT
        while missing := _missing(api):
            for proc, log in ((demo, demo_log), (server, prom_log)):
                if proc.poll() is not None:
                    pytest.fail(f"{proc.args!r} exited with {proc.returncode}:\n{_tail(log)}")
            if time.monotonic() > deadline:
                pytest.fail(
                    f"after {READY_TIMEOUT:.0f} s Prometheus still lacks:\n" + "\n".join(missing)
                )
            time.sleep(1)
        yield api
    finally:
        _stop(demo)
        _stop(server)


def test_variables_list_the_demo_cluster_instance_and_queues(prometheus: PromAPI) -> None:
    """$cluster lists the scrape label; $instance and $queue, chained on it, list the demo's."""
    assert _variable_values(prometheus, "cluster") == [CLUSTER]
    (instance,) = _variable_values(prometheus, "instance")
    assert re.fullmatch(r"127\.0\.0\.1:\d+", instance)
    assert _variable_values(prometheus, "instance", cluster=OTHER_CLUSTER) == []
    selection = {"instance": _selected(instance)}
    assert set(_variable_values(prometheus, "queue", **selection)) == {"batch", "debug", "gpu"}
    assert _variable_values(prometheus, "queue", cluster=OTHER_CLUSTER) == []


@pytest.mark.parametrize(
    "selection",
    [
        pytest.param({}, id="demo-cluster-all-instances"),
        pytest.param({"instance": "demo"}, id="demo-cluster-demo-instance"),
        pytest.param({"cluster": ".*"}, id="all-clusters"),
    ],
)
def test_every_dashboard_panel_query_returns_data(
    prometheus: PromAPI, selection: dict[str, str]
) -> None:
    """Each panel's queries (variables expanded, all queues) return data; failures name panels."""
    if selection.get("instance") == "demo":
        (instance,) = _variable_values(prometheus, "instance")
        selection = {"instance": _selected(instance)}
    failures = []
    checked = 0
    for name, expr in _panel_queries(**selection):
        checked += 1
        try:
            if not prometheus.query(expr):
                failures.append(f"{name}: no data: {expr}")
        except AssertionError as error:
            failures.append(f"{name}: {error}")
    assert checked >= 20
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize(
    "selection",
    [
        pytest.param({"cluster": OTHER_CLUSTER}, id="other-cluster"),
        pytest.param({"instance": _selected("127.0.0.1:1")}, id="other-instance"),
    ],
)
def test_every_panel_is_empty_for_another_cluster_or_instance(
    prometheus: PromAPI, selection: dict[str, str]
) -> None:
    """With a cluster or instance that is not the demo's selected, no panel shows any data."""
    shown = [name for name, expr in _panel_queries(**selection) if prometheus.query(expr)]
    assert shown == []


def test_recorded_series_keep_the_cluster_label(prometheus: PromAPI) -> None:
    """Every recording rule's series carries the target's cluster, so $cluster filters them."""
    names = {rule["name"] for rule in _recording_rules(prometheus)}
    assert len(names) >= 5
    for name in sorted(names):
        series = prometheus.query(name)
        assert series, name
        assert {s["metric"].get("cluster") for s in series} == {CLUSTER}, name
        assert prometheus.query(f'{name}{{cluster="{OTHER_CLUSTER}"}}') == [], name


def test_every_rule_loads_and_its_expression_evaluates(prometheus: PromAPI) -> None:
    """Prometheus loaded every rule healthy; recording exprs return data, alert exprs evaluate."""
    groups = prometheus.call("/api/v1/rules")["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    failures = []
    for rule in rules:
        name = rule["name"]
        if rule["health"] == "err":
            failures.append(f"{name}: rule health err: {rule.get('lastError')}")
        try:
            result = prometheus.query(rule["query"])
        except AssertionError as error:
            failures.append(f"{name}: {error}")
            continue
        if rule["type"] == "recording" and not result:
            failures.append(f"{name}: recording rule returns no data: {rule['query']}")
    assert {r["name"] for r in rules if r["type"] == "alerting"} >= {
        "FluxmonDown",
        "FluxmonLagging",
        "FluxJobFailureRatioHigh",
    }
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize(
    "alert", ["FluxmonDown", "FluxmonDisconnected", "FluxmonNotReady", "FluxmonEventErrors"]
)
def test_health_alerts_are_quiet_for_a_healthy_demo(prometheus: PromAPI, alert: str) -> None:
    """Against a healthy, connected, caught-up demo the fluxmon health alerts do not match."""
    groups = prometheus.call("/api/v1/rules")["groups"]
    (rule,) = (r for g in groups for r in g["rules"] if r["name"] == alert)
    assert prometheus.query(rule["query"]) == []


def test_queue_wait_exemplars_carry_jobids(prometheus: PromAPI) -> None:
    """The queue-wait histogram's exemplars reach Prometheus with an f58 jobid label."""
    jobids = _exemplar_jobids(prometheus)
    assert jobids, "no exemplars stored"
    assert all(F58.match(j) for j in jobids), jobids[:5]


def test_resource_figures_add_up(prometheus: PromAPI) -> None:
    """The demo's 16 nodes add up across states, and each queue's cores across theirs."""
    selector = f'{{cluster="{CLUSTER}"}}'
    (nodes,) = prometheus.query(f"sum(flux_resource_nodes{selector})")
    assert nodes["value"][1] == "16"
    cores = prometheus.query(f"sum by (queue) (flux_resource_cores{selector})")
    assert {c["metric"]["queue"]: c["value"][1] for c in cores} == {
        "batch": "96",
        "debug": "96",
        "gpu": "32",
    }
    drains = prometheus.query(f"sum by (reason) (flux_node_drains_total{selector})")
    assert drains, "the demo drained no node"
    assert all(not re.search(r"\d", d["metric"]["reason"]) for d in drains), drains
