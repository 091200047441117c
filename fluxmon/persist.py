"""The ``flux_*`` counters and histograms, saved with the checkpoint and restored at start.

Their values are a function of the events delivered, so they are saved with the
position they belong to (:meth:`MetricsState.capture`, taken by the source thread right
after a batch, the only thread that changes them) and restored before the source starts
(:meth:`MetricsState.restore`): after a restart, what the checkpoint says was delivered
is already in them, and what comes after it is added once. The series continue with no
reset, so Prometheus' ``increase()`` neither double- nor under-counts a restart or a
crash. fluxmon's own ``fluxmon_*`` metrics belong to the process and start at zero.

Values are read and added through prometheus_client's children (``_value``,
``_buckets``, ``_sum``: no exposition is rendered); tests/test_persist.py fails if a
prometheus_client release changes them. Exemplars are not saved. The saved state is
hostile input like the rest of the file: each family must match what this fluxmon
exports (type, labels, bucket bounds), each series its label values and counts; a family
that does not is named and starts at zero.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from prometheus_client import Counter, Histogram

from fluxmon.events import EVENTLOG_LABEL, METRIC_STATES, RESULTS, check_text
from fluxmon.metrics import CAPPED_LABELS, OTHER, PERILOG_PHASES, LabelCap
from fluxmon.resources import RESOURCE_EVENT_NAMES

#: Most series a saved state may hold (over every family).
MAX_SERIES: Final = 200_000
#: The values a closed label may take; anything else in a saved state is refused.
CLOSED_LABELS: Final[Mapping[str, frozenset[str]]] = {
    "eventlog": frozenset(EVENTLOG_LABEL.values()) | {OTHER},
    "state": frozenset(METRIC_STATES),
    "result": frozenset(RESULTS),
    "phase": frozenset(PERILOG_PHASES),
}
#: Families whose label is closed although the label name is capped elsewhere.
CLOSED_IN: Final[Mapping[tuple[str, str], frozenset[str]]] = {
    ("flux_resource_events", "name"): frozenset(RESOURCE_EVENT_NAMES) | {OTHER},
}

#: What :meth:`MetricsState.capture` returns and the checkpoint keeps: per family,
#: ``{"type", "labels", "series"}`` (and ``"bounds"`` for a histogram).
State = dict[str, dict[str, Any]]


class InvalidState(ValueError):
    """A saved family or series that this fluxmon did not write as it stands."""


def _finite(value: object, what: str) -> float:
    if type(value) is not float or not math.isfinite(value):
        raise InvalidState(f"{what} is not a finite float")
    return value


def _count(value: object, what: str) -> float:
    number = _finite(value, what)
    if number < 0:
        raise InvalidState(f"{what} is negative")
    return number


class MetricsState:
    """Captures and restores the values of the ``flux_*`` counters and histograms."""

    def __init__(self, holders: Sequence[Any], cap: LabelCap) -> None:
        """Persist the Counter and Histogram attributes of ``holders``.

        Holders: :class:`~fluxmon.metrics.JobMetrics` and the resource metrics, each
        registered through its ``collector``.
        """
        self._families: dict[str, Counter | Histogram] = {
            metric._name: metric
            for holder in holders
            for metric in vars(holder).values()
            if isinstance(metric, (Counter, Histogram))
        }
        self._cap = cap
        self._collectors = [holder.collector for holder in holders]

    def capture(self) -> State:
        """The current value of every series (zeros too: they are restored), as JSON values.

        Reads prometheus_client's children directly: no exposition is rendered.
        """
        state: State = {}
        for name, metric in self._families.items():
            children: list[tuple[Any, Any]]
            if not metric._labelnames:  # an unlabelled metric is its own child
                children = [((), metric)]
            else:
                with metric._lock:
                    children = list(metric._metrics.items())
            series: list[list[Any]] = []
            if isinstance(metric, Counter):
                for labels, child in children:
                    series.append([list(labels), child._value.get()])
                state[name] = {"type": "counter", "labels": list(metric._labelnames)}
            else:
                for labels, child in children:
                    buckets = [b.get() for b in child._buckets]
                    series.append([list(labels), buckets, child._sum.get()])
                state[name] = {
                    "type": "histogram",
                    "labels": list(metric._labelnames),
                    "bounds": [_bound(b) for b in metric._upper_bounds],
                }
            state[name]["series"] = series
        return state

    def restore(self, state: object, warn: Callable[[str], None]) -> int:
        """Add a saved state's values to the (fresh) metrics; returns the series restored.

        Each problem is passed to ``warn`` (naming the family and what is wrong) and that
        family, or that series, is left at zero. Label values go through the label cap
        as new ones would (a value past it is added to ``other``).
        """
        if not isinstance(state, dict):
            warn(f"metrics is {type(state).__name__}, not an object")
            return 0
        total = 0
        for name, saved in state.items():
            metric = self._families.get(name)
            if metric is None:
                warn(f"metrics has {check_text(name, 'family')[:80]!r}, not a family fluxmon saves")
                continue
            try:
                series = self._check_family(metric, saved)
                if total + len(series) > MAX_SERIES:
                    raise InvalidState(f"more than {MAX_SERIES} series in all")
                checked = [self._check_series(metric, entry) for entry in series]
            except (InvalidState, ValueError) as err:
                warn(f"metrics {name}: {err}")
                continue
            for labels, values in checked:
                _add(metric.labels(*labels) if labels else metric, values)
            total += len(checked)
        return total

    def hide(self, hidden: bool) -> None:
        """Leave the ``flux_*`` counters and histograms out of scrapes, or put them back.

        Hidden after a restore until history is caught up: events saved after the
        last scrape before a crash are counted again from the saved values, and a scrape
        meanwhile would see a counter go down (a reset to Prometheus).
        """
        for collector in self._collectors:
            collector.hidden = hidden

    def _check_family(self, metric: Counter | Histogram, saved: object) -> list[Any]:
        if not isinstance(saved, dict):
            raise InvalidState("not an object")
        kind = "counter" if isinstance(metric, Counter) else "histogram"
        if saved.get("type") != kind:
            raise InvalidState(f"type {saved.get('type')!r}, not {kind}")
        if saved.get("labels") != list(metric._labelnames):
            raise InvalidState(f"labels differ from {list(metric._labelnames)}")
        if isinstance(metric, Histogram):
            bounds = [_bound(b) for b in metric._upper_bounds]
            if saved.get("bounds") != bounds:
                raise InvalidState("bucket bounds changed since the save (the family starts at 0)")
        series = saved.get("series")
        if not isinstance(series, list):
            raise InvalidState("series is not a list")
        return series

    def _check_series(
        self, metric: Counter | Histogram, entry: object
    ) -> tuple[list[str], float | tuple[list[float], float]]:
        names = metric._labelnames
        size = 2 if isinstance(metric, Counter) else 3
        if not isinstance(entry, list) or len(entry) != size:
            raise InvalidState(f"a series is not a list of {size}")
        raw = entry[0]
        if not isinstance(raw, list) or len(raw) != len(names):
            raise InvalidState(f"a series has labels {raw!r:.80}, not {len(names)} values")
        labels = []
        for name, value in zip(names, raw, strict=True):
            text = check_text(value, f"label {name}")
            closed = CLOSED_IN.get((metric._name, name)) or CLOSED_LABELS.get(name)
            if closed is not None and text not in closed:
                raise InvalidState(f"label {name} is {text[:80]!r}, not one of {sorted(closed)}")
            if name in CAPPED_LABELS and text != OTHER and closed is None:
                text = self._cap(name, text)
            labels.append(text)
        if isinstance(metric, Counter):
            return labels, _count(entry[1], "a counter value")
        buckets = entry[1]
        if not isinstance(buckets, list) or len(buckets) != len(metric._upper_bounds):
            raise InvalidState("a series' bucket counts do not match the bounds")
        counts = [_count(b, "a bucket count") for b in buckets]
        return labels, (counts, _finite(entry[2], "a sum"))


def _bound(bound: float) -> float | str:
    """A bucket bound as JSON can hold it (``+Inf`` as a string)."""
    return bound if math.isfinite(bound) else "+Inf"


def _add(child: Any, values: float | tuple[list[float], float]) -> None:
    """Add saved values to a child (a counter's value; a histogram's buckets and sum)."""
    if isinstance(values, float):
        child.inc(values)
        return
    counts, total = values
    for bucket, count in zip(child._buckets, counts, strict=True):
        bucket.inc(count)
    child._sum.inc(total)
