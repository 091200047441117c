"""Liveness is progress: a heartbeat from the source's loop drives /healthz, fluxmon_healthy
and the systemd watchdog; a loop stuck past the bound fails them, an idle one does not."""

from __future__ import annotations

import dataclasses
import io
import itertools
import operator
import os
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import pytest

from fluxmon.app import Parts, build, serve
from fluxmon.exitcodes import EX_OK
from fluxmon.sources import Downstream
from fluxmon.sources.demo import DemoSource
from fluxmon.testing import lifecycle, parse_log
from tests.conftest import json_settings
from tests.fakeflux import VirtualStop
from tests.test_demo import START, FakeClock, FakeStop, RecordingDownstream
from tests.test_flux_source import make_settings, prepare, scenario_broker


class Clock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pipeline_parts(clock: Clock, stall_seconds: float = 10.0) -> Parts:
    """A pipeline on ``clock`` with the given stall bound."""
    base = json_settings()
    settings = dataclasses.replace(
        base, health=dataclasses.replace(base.health, stall_seconds=stall_seconds)
    )
    parts = build(settings, io.StringIO(), clock=None)
    # Rebuild the pipeline's notion of time on the fake clock.
    pipeline = parts.pipeline
    pipeline._monotonic = clock  # the clock, injected for this test
    pipeline.heartbeat()
    return parts


def test_a_loop_that_stops_beating_is_stalled_with_the_reason() -> None:
    """No heartbeat for longer than the bound: unhealthy, saying for how long and the bound."""
    clock = Clock()
    parts = pipeline_parts(clock)
    clock.now += 9.9
    assert parts.pipeline.liveness() == (True, "ok")
    clock.now += 2.4
    assert parts.pipeline.liveness() == (False, "event loop stalled for 12.3 s (bound 10 s)")
    assert parts.registry.get_sample_value("fluxmon_healthy") == 0


def test_an_idle_but_turning_loop_is_healthy() -> None:
    """A quiet cluster: no events for minutes, but the loop beats, so it stays healthy."""
    clock = Clock()
    parts = pipeline_parts(clock)
    for _ in range(300):
        clock.now += 1.0
        parts.pipeline.heartbeat()
        assert parts.pipeline.liveness()[0]
    assert parts.registry.get_sample_value("fluxmon_healthy") == 1
    assert parts.registry.get_sample_value("fluxmon_events_processed_total") == 0


def test_applying_a_batch_is_a_heartbeat() -> None:
    """A batch of events (and an empty one) stamps the heartbeat; recovery is immediate."""
    clock = Clock()
    parts = pipeline_parts(clock)
    clock.now += 30.0
    assert not parts.pipeline.liveness()[0]
    parts.pipeline.events(lifecycle(1, 10.0))
    assert parts.pipeline.liveness() == (True, "ok")
    clock.now += 30.0
    parts.pipeline.events([])
    assert parts.pipeline.liveness() == (True, "ok")


def test_a_declared_pause_is_not_a_stall() -> None:
    """heartbeat(quiet_for=60) (a reconnect backoff) moves the bound 60 s further out."""
    clock = Clock()
    parts = pipeline_parts(clock)
    parts.pipeline.heartbeat(quiet_for=60.0)
    clock.now += 69.0
    assert parts.pipeline.liveness()[0]
    clock.now += 2.0
    assert parts.pipeline.liveness() == (False, "event loop stalled for 11.0 s (bound 10 s)")


def test_a_dead_source_thread_is_unhealthy_at_once() -> None:
    """The source thread has ended: unhealthy whatever its last heartbeat."""
    parts = pipeline_parts(Clock())
    thread = threading.Thread(target=lambda: None)
    thread.start()
    thread.join()
    parts.pipeline.source_thread = thread
    assert parts.pipeline.liveness() == (False, "the event source thread has stopped")


def test_liveness_does_not_wait_for_a_held_tracker() -> None:
    """A loop stuck holding the tracker lock: liveness answers at once from the heartbeat."""
    clock = Clock()
    parts = pipeline_parts(clock)
    with parts.pipeline._lock:  # the stuck loop holds the tracker
        assert parts.pipeline.liveness() == (True, "ok")
        clock.now += 11.0
        assert not parts.pipeline.liveness()[0]


def test_demo_source_beats_on_every_turn_without_events() -> None:
    """At a rate too low for any event yet, the demo's loop still beats every turn."""
    clock = FakeClock(START)
    stop = FakeStop(clock)
    downstream = RecordingDownstream(stop, clock)
    original_wait = stop.wait

    def wait(timeout: float | None = None) -> bool:
        if len(stop.waits) >= 20:
            stop.set()
        return original_wait(timeout)

    stop.wait = wait  # type: ignore[method-assign]
    DemoSource(rate=0.0001, seed=3, clock=clock).run(downstream, stop)
    assert len(downstream.beats) >= 20
    assert max(itertools.starmap(operator.sub, pairwise(downstream.beats[::-1]))) <= 0.5 + 1e-9


def test_flux_source_beats_on_its_timer_and_declares_its_backoff() -> None:
    """The Flux source beats from its housekeeping timer and declares each reconnect wait."""
    broker = scenario_broker()
    broker.drop(broker.now + 1.0, down_for=10_000.0)
    stop = VirtualStop(broker, max_waits=4)
    run = prepare(broker, make_settings(reconnect_min=1.0, reconnect_max=8.0), stop)
    beats: list[float] = []
    pipeline = run.parts.pipeline
    original = pipeline.heartbeat

    def heartbeat(quiet_for: float = 0.0) -> None:
        beats.append(quiet_for)
        original(quiet_for)

    pipeline.heartbeat = heartbeat  # type: ignore[method-assign]
    run.source.run(pipeline, stop)
    assert beats.count(0.0) >= 4  # the 0.25 s timer, while connected for a virtual second
    assert [b for b in beats if b > 0] == stop.waits


# -- the daemon ------------------------------------------------------------------------------


class Stuck:
    """A source whose loop turns ``turns`` times (beating) and then hangs until stopped."""

    def __init__(self, turns: int) -> None:
        self.turns = turns

    def run(self, downstream: Downstream, stop: threading.Event) -> None:
        """Say connected, beat for a while, then block without beating."""
        downstream.connected("test: stuck source")
        downstream.caught_up()
        for _ in range(self.turns):
            downstream.heartbeat()
            if stop.wait(0.05):
                return
        stop.wait()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    """A datagram socket standing in for systemd's notify socket, and its path."""
    path = tmp_path / "notify.sock"
    if len(os.fsencode(path)) >= 108:  # sun_path limit
        pytest.skip(f"tmp_path too long for an AF_UNIX address: {path}")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(10)
        yield str(path), sock


def healthz(address: tuple[str, int]) -> tuple[int, str]:
    """GET /healthz: status and body."""
    host, port = address
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=10) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@pytest.mark.slow
def test_daemon_with_a_stuck_loop_fails_healthz_and_stops_the_watchdog(
    notify: tuple[str, socket.socket],
) -> None:
    """A loop that stops beating: /healthz 503 with the reason, WATCHDOG=1 stops, a record."""
    path, sock = notify
    base = json_settings()
    settings = dataclasses.replace(
        base,
        http=dataclasses.replace(base.http, listen=("127.0.0.1", 0)),
        health=dataclasses.replace(base.health, stall_seconds=0.5),
    )
    listening = threading.Event()
    address: list[tuple[str, int]] = []
    stop = threading.Event()
    log = io.StringIO()
    status: list[int] = []

    def on_listen(where: tuple[str, int]) -> None:
        address.append(where)
        listening.set()

    daemon = threading.Thread(
        target=lambda: status.append(
            serve(
                settings,
                Stuck(turns=20),
                mode="test",
                log_stream=log,
                environ={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"},
                stop=stop,
                on_listen=on_listen,
            )
        )
    )
    daemon.start()
    try:
        assert listening.wait(10)
        # While the loop beats: watchdog pings flow and /healthz is 200.
        assert {"WATCHDOG": "1"} in [receive(sock) for _ in range(3)]
        assert healthz(address[0]) == (200, "ok\n")
        while (answer := healthz(address[0]))[0] == 200:
            stop.wait(0.05)
        code, body = answer
        assert code == 503
        assert body.startswith("event loop stalled for ")
        assert body.rstrip().endswith("s (bound 0.5 s)")
        # The health loop says so in STATUS=, and no ping follows (1 s of silence ends this).
        sock.settimeout(1.0)
        messages = list(receive_until_silent(sock))
        verdicts = [i for i, m in enumerate(messages) if m.get("STATUS", "").startswith("unhe")]
        assert verdicts, messages
        after = messages[verdicts[0] :]
        assert after[0]["STATUS"].startswith("unhealthy: event loop stalled for ")
        assert all("WATCHDOG" not in message for message in after), messages
    finally:
        stop.set()
        daemon.join(30)
    assert status == [EX_OK]
    stalled = [r for r in parse_log(log.getvalue()) if r["msg"] == "health.stalled"]
    assert len(stalled) == 1
    assert stalled[0]["reason"].startswith("event loop stalled for ")


def receive(sock: socket.socket) -> dict[str, str]:
    """One sd_notify datagram as a dict."""
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.splitlines())


def receive_until_silent(sock: socket.socket) -> Iterator[dict[str, str]]:
    """Every datagram until none comes within the socket's timeout."""
    while True:
        try:
            yield receive(sock)
        except TimeoutError:
            return


def test_a_source_thread_not_started_yet_is_not_called_stopped() -> None:
    """Probes answered before the source thread starts see its heartbeat, not "stopped"."""
    parts = pipeline_parts(Clock())
    thread = threading.Thread(target=lambda: None)
    parts.pipeline.source_thread = thread
    assert parts.pipeline.liveness() == (True, "ok")
    thread.start()
    thread.join()
    assert parts.pipeline.liveness() == (False, "the event source thread has stopped")
