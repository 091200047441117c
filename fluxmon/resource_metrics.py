"""The resource metrics: counters and histograms per event, gauges from a snapshot per scrape.

:class:`ResourceMetrics` is a :class:`~fluxmon.resources.ResourceSink` (event counts,
drains by reason, drain and down durations with an exemplar naming the node);
:class:`ResourceCollector` computes ``flux_resource_nodes``, ``flux_resource_cores``,
``flux_resource_gpus``, the oldest drain and ``fluxmon_resource_mode`` at scrape time
from one :class:`~fluxmon.resources.ResourceSnapshot`. No metric has a hostname label.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fluxmon.events import ResourceEvent
from fluxmon.metrics import OTHER, LabelCap, _WithoutCreated
from fluxmon.resources import (
    NODE_STATES,
    RESOURCE_EVENT_NAMES,
    RESOURCE_MODES,
    SLOT_STATES,
    Node,
    ResourceSnapshot,
    drain_reason_label,
)

#: Buckets of the drain and down duration histograms, in seconds (1 minute to 30 days).
DURATION_BUCKETS: Final = (
    60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0, 86400.0, 172800.0,
    604800.0, 1209600.0, 2592000.0,
)  # fmt: skip
#: Longest hostname kept in an exemplar (exemplar labels are limited to 128 characters).
MAX_EXEMPLAR_HOST: Final = 100


class ResourceMetrics:
    """The per-event resource families, filled as a resource sink."""

    #: This sink's ``where`` in ``fluxmon_internal_errors_total``.
    kind: Final = "resource_metrics"

    def __init__(self, registry: CollectorRegistry, cap: LabelCap, *, exemplars: bool = True):
        own = _WithoutCreated()
        self.events = own.add(
            Counter(
                "flux_resource_events",
                "Resource eventlog entries seen, by name (other: a name flux-core does not post).",
                ["name"],
                registry=None,
            )
        )
        self._events = {name: self.events.labels(name) for name in (*RESOURCE_EVENT_NAMES, OTHER)}
        self.drains = own.add(
            Counter(
                "flux_node_drains",
                "Nodes drained (each node newly drained counts once), by normalised reason.",
                ["reason"],
                registry=None,
            )
        )
        self.drain_duration = own.add(
            Histogram(
                "flux_node_drain_duration_seconds",
                "How long a node stayed drained, observed at its undrain.",
                registry=None,
                buckets=DURATION_BUCKETS,
            )
        )
        self.down_duration = own.add(
            Histogram(
                "flux_node_down_duration_seconds",
                "How long a node stayed offline, observed when it is back online.",
                registry=None,
                buckets=DURATION_BUCKETS,
            )
        )
        #: The collector the families are registered through (hidden after a restore).
        self.collector = own
        registry.register(own)
        self._cap = cap
        self.exemplars = exemplars

    def set_exemplars(self, on: bool) -> None:
        """Attach exemplars, or not, from the next observation on (a reload)."""
        self.exemplars = on

    def resource_event(self, event: ResourceEvent) -> None:
        """Count the event under its name (a name flux-core does not post is ``other``)."""
        child = self._events.get(event.name)
        if child is None:
            child = self._events[OTHER]
        child.inc()

    def nodes_changed(
        self,
        change: str,
        nodes: Sequence[Node],
        event: ResourceEvent,
        seconds: Sequence[float | None],
    ) -> None:
        """Count drains by reason; observe drain and down durations."""
        if change == "drain":
            reason = event.context.get("reason")
            label = drain_reason_label(
                reason if isinstance(reason, str) else None, {n.host for n in nodes}
            )
            self.drains.labels(self._cap("reason", label)).inc(len(nodes))
            return
        if change == "undrain":
            histogram = self.drain_duration
        elif change == "online":
            histogram = self.down_duration
        else:
            return
        for node, value in zip(nodes, seconds, strict=True):
            if value is not None:
                exemplar = {"node": node.host[:MAX_EXEMPLAR_HOST]} if self.exemplars else None
                histogram.observe(value, exemplar)


class ResourceCollector(Collector):
    """Computes the resource gauges at scrape time from one snapshot."""

    def __init__(self, snapshot: Callable[[], ResourceSnapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        """Yield the node, core, GPU, oldest drain and mode gauges."""
        snap = self._snapshot()
        nodes = GaugeMetricFamily(
            "flux_resource_nodes",
            "Nodes of the instance by state (down, drained, draining, torpid, up); they add up "
            "to the instance's nodes.",
            labels=["state"],
        )
        for state in NODE_STATES:
            nodes.add_metric([state], snap.nodes.get(state, 0))
        yield nodes
        cores = GaugeMetricFamily(
            "flux_resource_cores",
            "Cores of each queue's nodes: allocated, free (up nodes), unavailable (down or "
            "drained nodes).",
            labels=["queue", "state"],
        )
        gpus = GaugeMetricFamily(
            "flux_resource_gpus",
            "GPUs of each queue's nodes: allocated, free (up nodes), unavailable (down or "
            "drained nodes).",
            labels=["queue", "state"],
        )
        for queue in sorted(snap.queues):
            slots = snap.queues[queue]
            for state in SLOT_STATES:
                cores.add_metric([queue, state], slots.cores[state])
                gpus.add_metric([queue, state], slots.gpus[state])
        yield cores
        yield gpus
        oldest = GaugeMetricFamily(
            "flux_resource_oldest_drain_timestamp_seconds",
            "When the node drained longest ago was drained (absent while none is).",
        )
        if snap.oldest_drain is not None:
            oldest.add_metric([], snap.oldest_drain)
        yield oldest
        mode = GaugeMetricFamily(
            "fluxmon_resource_mode",
            "1 for how resource figures are read now: journal (resource.journal) or poll "
            "(resource status polled); all 0 before the source says.",
            labels=["mode"],
        )
        for name in RESOURCE_MODES:
            mode.add_metric([name], 1.0 if snap.mode == name else 0.0)
        yield mode

    def describe(self) -> Iterable[Metric]:
        """Describe nothing, so registration does not run a snapshot."""
        return []
