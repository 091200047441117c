"""fluxmon's exposition encoders write exactly what prometheus_client's write."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import choose_encoder
from prometheus_client.openmetrics import exposition as om

from fluxmon.app import Parts, build
from fluxmon.config import load_settings
from fluxmon.exposition import TEXT, OpenMetricsEncoder, TextEncoder, choose
from fluxmon.sources.replay import ReplaySource

DATA = Path(__file__).parent / "data"


def replayed(queues: int = 0) -> Parts:
    """A pipeline after the recorded journal, with ``queues`` declared queues."""
    parts = build(load_settings(None), io.StringIO(), clock=None)
    parts.pipeline.declare_queues([f"queue{q}" for q in range(queues)])
    ReplaySource([str(DATA / "journal.replay.jsonl")]).run(parts.pipeline, threading.Event())
    return parts


def hostile() -> CollectorRegistry:
    """Label values and help texts that need escaping; a name only the slow path takes."""
    registry = CollectorRegistry()
    counter = Counter(
        "odd_total", 'help with \\ and "quotes"\nand a newline', ["v"], registry=registry
    )
    for value in ('a"b', "back\\slash", "new\nline", "ünï", "\\ud800", ""):
        counter.labels(value).inc()
    Gauge("plain", "no labels", registry=registry).set(1e21)
    Gauge("colon:name", "a colon", ["k"], registry=registry).labels("x").set(-0.5)
    histogram = Histogram("h_seconds", "h", ["q"], registry=registry, buckets=(0.1, 1e7))
    histogram.labels("q").observe(0.05, {"jobid": "f2ZMTeo5R"})
    histogram.labels("q").observe(5e6)
    return registry


@pytest.mark.parametrize("queues", [0, 20])
def test_text_is_byte_for_byte_prometheus_clients(queues: int) -> None:
    """The daemon's registry after real events, with and without 20 queues."""
    registry = replayed(queues).registry
    assert TextEncoder()(registry) == generate_latest(registry)


def test_text_escapes_as_prometheus_client_does() -> None:
    """Quotes, backslashes, newlines, non-ASCII and a colon in a name: the same bytes."""
    registry = hostile()
    encoder = TextEncoder()
    assert encoder(registry) == generate_latest(registry)
    assert encoder(registry) == generate_latest(registry)  # from the label cache


@pytest.mark.parametrize("escaping", [om.UNDERSCORES, om.ALLOWUTF8])
def test_openmetrics_is_byte_for_byte_prometheus_clients(escaping: str) -> None:
    """Exemplars, units, ``# EOF``: the same bytes as ``openmetrics.generate_latest``."""
    for registry in (replayed(20).registry, hostile()):
        want = om.generate_latest(registry, escaping=escaping, version="1.0.0")  # type: ignore[no-untyped-call]
        assert OpenMetricsEncoder(escaping, "1.0.0")(registry) == want


@pytest.mark.parametrize(
    "accept",
    [
        "",
        "text/plain",
        "text/plain; version=1.0.0; escaping=allow-utf-8",
        "application/openmetrics-text",
        "application/openmetrics-text; version=1.0.0",
        "application/openmetrics-text; version=1.0.0; escaping=allow-utf-8",
        "application/openmetrics-text; version=1.0.0; escaping=dots",
        "application/openmetrics-text; version=2.0.0",
    ],
)
def test_every_negotiation_gives_prometheus_clients_bytes_and_type(accept: str) -> None:
    """Whatever the Accept header, the same content type and body as choose_encoder's."""
    registry = replayed(2).registry
    ours, ours_type = choose(accept)
    theirs, theirs_type = choose_encoder(accept)
    assert ours_type == theirs_type
    assert ours(registry) == theirs(registry)


def test_plain_text_uses_the_fast_encoder() -> None:
    """The format Prometheus asks for by default is served by fluxmon's encoder."""
    assert choose("text/plain;version=0.0.4;q=0.5,*/*;q=0.1")[0] is TEXT
