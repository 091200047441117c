"""The Prometheus text exposition of a registry, byte for byte prometheus_client's, faster.

prometheus_client's ``generate_latest`` checks and escapes every label name of every
sample and formats every label set anew; at 20 queues (6,000 samples) that is most of
a scrape's time. fluxmon's metric and label names are fixed and valid, and most label
sets repeat from scrape to scrape, so here a label set is rendered once (cached by its
values, in the order the collector gives them) and a value is escaped only when it
holds a character that needs it. Anything outside that fast path (a name that is not
a legacy Prometheus name) goes through prometheus_client's own code, so the output is
the same in every case; tests/test_exposition.py compares the two.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Iterable
from typing import Final

from prometheus_client import generate_latest
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import exposition as om
from prometheus_client.registry import Collector
from prometheus_client.utils import parse_version

_LEGACY_NAME: Final = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LEGACY_LABEL: Final = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
#: Suffixes prometheus_client moves into gauges of their own at the end of a family.
_OM_SUFFIXES: Final = ("_created", "_gsum", "_gcount")
#: Rendered label sets kept at most (a bound on memory; cleared when reached).
MAX_CACHED: Final = 100_000
_TYPES: Final = {"counter": "counter", "info": "gauge", "stateset": "gauge",
                 "gaugehistogram": "histogram", "unknown": "untyped"}  # fmt: skip


def _go_float(value: float) -> str:
    """prometheus_client's ``floatToGoString``."""
    d = float(value)
    if d == math.inf:
        return "+Inf"
    if d == -math.inf:
        return "-Inf"
    if math.isnan(d):
        return "NaN"
    s = repr(d)
    dot = s.find(".")
    if d > 0 and dot > 6:
        mantissa = f"{s[0]}.{s[1:dot]}{s[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return s


def _escape(value: str) -> str:
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value


class TextEncoder:
    """Renders a registry in the Prometheus text format, caching rendered label sets."""

    def __init__(self) -> None:
        self._labels: dict[tuple[tuple[str, str], ...], str] = {}

    def __call__(self, registry: Collector) -> bytes:
        """The exposition, exactly as ``prometheus_client.generate_latest`` writes it."""
        out: list[str] = []
        for metric in registry.collect():
            if not self._fast(metric, out):
                out.append(generate_latest(_One(metric)).decode("utf-8"))
        return "".join(out).encode("utf-8")

    def _label_text(self, labels: dict[str, str]) -> str | None:
        """``{k="v",...}`` sorted by name, rendered once per label set.

        None for a name that is not a legacy Prometheus label name (the general path).
        """
        items = tuple(labels.items())
        text = self._labels.get(items)
        if text is None:
            if not all(_LEGACY_LABEL.match(key) for key, _ in items):
                return None
            text = (
                "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(items)) + "}"
                if items
                else ""
            )
            self._labels[items] = text
        return text

    def _fast(self, metric: Metric, out: list[str]) -> bool:
        """Append the family; False (nothing appended) if it needs the general path."""
        name, mtype = metric.name, metric.type
        if mtype == "counter":
            shown = name + "_total"
        elif mtype == "info":
            shown = name + "_info"
        else:
            shown = name
        if not _LEGACY_NAME.match(shown):
            return False
        lines: list[str] = []
        extra: dict[str, list[str]] = {}
        if len(self._labels) > MAX_CACHED:
            self._labels.clear()
        for sample in metric.samples:
            sname = sample.name
            labels = self._label_text(sample.labels)
            if labels is None or not _LEGACY_NAME.match(sname):
                return False
            stamp = sample.timestamp
            tail = "" if stamp is None else f" {int(float(stamp) * 1000):d}"
            line = f"{sname}{labels} {_go_float(sample.value)}{tail}\n"
            for suffix in _OM_SUFFIXES:
                if sname == name + suffix:
                    extra.setdefault(suffix, []).append(line)
                    break
            else:
                lines.append(line)
        doc = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
        out.append(f"# HELP {shown} {doc}\n# TYPE {shown} {_TYPES.get(mtype, mtype)}\n")
        out.extend(lines)
        for suffix, more in sorted(extra.items()):
            out.append(f"# HELP {name}{suffix} {doc}\n# TYPE {name}{suffix} gauge\n")
            out.extend(more)
        return True


class OpenMetricsEncoder(TextEncoder):
    """Renders a registry in OpenMetrics 1.x, exactly as prometheus_client does, faster."""

    def __init__(self, escaping: str, version: str) -> None:
        super().__init__()
        self._escaping, self._version = escaping, version

    def __call__(self, registry: Collector) -> bytes:
        """The exposition, exactly as ``openmetrics.generate_latest`` writes it."""
        out: list[str] = []
        for metric in registry.collect():
            if not self._fast_om(metric, out):
                text = om.generate_latest(  # type: ignore[no-untyped-call]
                    _One(metric), self._escaping, self._version
                )
                out.append(text.decode("utf-8").removesuffix("# EOF\n"))
        out.append("# EOF\n")
        return "".join(out).encode("utf-8")

    def _fast_om(self, metric: Metric, out: list[str]) -> bool:
        name = metric.name
        if not _LEGACY_LABEL.match(name):
            return False
        lines = [f"# HELP {name} {_escape(metric.documentation)}\n# TYPE {name} {metric.type}\n"]
        if metric.unit:
            lines.append(f"# UNIT {name} {metric.unit}\n")
        if len(self._labels) > MAX_CACHED:
            self._labels.clear()
        for sample in metric.samples:
            sname = sample.name
            labels = self._label_text(sample.labels)
            if labels is None or sample.native_histogram or not _LEGACY_LABEL.match(sname):
                return False
            exemplar = (
                om._compose_exemplar_string(  # type: ignore[no-untyped-call]
                    metric, sample, sample.exemplar
                )
                if sample.exemplar
                else ""
            )
            stamp = "" if sample.timestamp is None else f" {sample.timestamp}"
            value = "" if sample.value is None else _go_float(sample.value)
            lines.append(f"{sname}{labels} {value}{stamp}{exemplar}\n")
        out.extend(lines)
        return True


#: The encoders the daemon serves with (their label caches live as long as it does).
TEXT: Final = TextEncoder()
_OPENMETRICS: dict[tuple[str, str], OpenMetricsEncoder] = {}


def choose(accept: str) -> tuple[Callable[[Collector], bytes], str]:
    """prometheus_client's ``choose_encoder``, with these encoders where they apply.

    They apply to the text format and to OpenMetrics 1.x with the underscores or
    UTF-8 escaping (names fluxmon uses are the same in both); any other negotiation
    (a dots or values escaping, OpenMetrics 2) keeps prometheus_client's encoder.
    """
    encoder, content_type = choose_encoder(accept)
    if encoder is generate_latest:
        return TEXT, content_type
    if not isinstance(encoder, functools.partial):
        return encoder, content_type
    escaping = encoder.keywords.get("escaping", om.UNDERSCORES)
    if escaping not in (om.UNDERSCORES, om.ALLOWUTF8):
        return encoder, content_type
    if encoder.func is generate_latest:
        return TEXT, content_type
    version = str(encoder.keywords.get("version", "1.0.0"))
    if encoder.func is om.generate_latest and parse_version(version) < (2, 0, 0):
        found = _OPENMETRICS.get((escaping, version))
        if found is None:
            found = _OPENMETRICS[(escaping, version)] = OpenMetricsEncoder(escaping, version)
        return found, content_type
    return encoder, content_type


class _One(Collector):
    """A collector of one already collected family (for prometheus_client's own path)."""

    def __init__(self, metric: Metric) -> None:
        self._metric = metric

    def collect(self) -> Iterable[Metric]:
        """The family."""
        return [self._metric]
