"""Logs never stall metrics: the bounded log writer, its drop and block policies, and a
broken stdout; the daemon under a stdout nobody reads."""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fluxmon.exitcodes import EX_IOERR
from fluxmon.logs import JOB_EVENT, JOB_FINISHED, OTHER_RECORD, LineWriter, make_logger

FLUXMON = [sys.executable, "-m", "fluxmon"]
T = TypeVar("T")


class GatedStream(io.StringIO):
    """A stream whose writes wait until the gate opens; ``entered`` is set on the first."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.entered = threading.Event()

    def write(self, text: str) -> int:
        """Block until the gate opens, then keep the text."""
        self.entered.set()
        assert self.gate.wait(30), "the gate never opened"
        return super().write(text)


class BrokenStream(io.StringIO):
    """A stream whose reader has gone: every write fails with EPIPE."""

    name = "<stdout>"

    def write(self, text: str) -> int:
        """Fail like a pipe without a reader."""
        raise BrokenPipeError(32, "Broken pipe")


def wedged(capacity: int = 100, **kw: Any) -> tuple[LineWriter, GatedStream, list[str]]:
    """A started writer whose thread is stuck writing one record; drops are listed."""
    stream = GatedStream()
    drops: list[str] = []
    writer = LineWriter(stream, capacity=capacity, on_drop=drops.append, **kw)
    writer.start()
    writer.msg("first")
    assert stream.entered.wait(10)
    return writer, stream, drops


def test_another_threads_record_is_not_held_by_the_pipeline() -> None:
    """While the pipeline holds its batch, a record from another thread goes out at once."""
    stream = io.StringIO()
    writer = LineWriter(stream)
    writer.hold()
    writer.msg("held 1")
    other = threading.Thread(target=writer.msg, args=("from http",))
    other.start()
    other.join()
    assert stream.getvalue() == "from http\n"
    writer.msg("held 2", JOB_FINISHED)
    writer.release()
    assert stream.getvalue() == "from http\nheld 1\nheld 2\n"


def test_drop_policy_sheds_job_events_first_and_says_how_many() -> None:
    """job.event gets nine tenths of the buffer, the rest waits for job.finished; recovery says."""
    writer, stream, drops = wedged(capacity=100)
    recovered: list[dict[str, int]] = []
    done = threading.Event()

    def on_recovered(counts: Mapping[str, int]) -> None:
        recovered.append(dict(counts))
        done.set()

    writer.on_recovered = on_recovered
    for i in range(200):
        writer.msg(f"event {i}")
    assert drops == ["reserve"] * 110
    for i in range(20):
        writer.msg(f"finished {i}", JOB_FINISHED)
    writer.msg("own record", OTHER_RECORD)
    assert drops == ["reserve"] * 110 + ["full"] * 11
    stream.gate.set()
    assert done.wait(10)
    assert recovered == [{"job_event": 110, "job_finished": 10, "other": 1}]
    assert writer.close(10)
    lines = stream.getvalue().splitlines()
    assert lines == ["first"] + [f"event {i}" for i in range(90)] + [
        f"finished {i}" for i in range(10)
    ]


def test_block_policy_makes_the_pipeline_wait_but_no_other_thread() -> None:
    """on_full=block: a held batch waits for room and loses nothing; other threads never wait."""
    writer, stream, drops = wedged(capacity=100, on_full="block")

    def pipeline() -> None:
        writer.hold()
        for i in range(250):
            writer.msg(f"event {i}")
        writer.release()

    thread = threading.Thread(target=pipeline)
    thread.start()
    thread.join(0.5)
    assert thread.is_alive(), "the pipeline should wait for room"
    writer.msg("from http", OTHER_RECORD)  # returns at once: dropped, not waited on
    assert drops == ["full"]
    stream.gate.set()
    thread.join(10)
    assert not thread.is_alive()
    assert writer.close(10)
    assert stream.getvalue().splitlines() == ["first"] + [f"event {i}" for i in range(250)]


def test_stop_blocking_releases_a_waiting_pipeline() -> None:
    """At shutdown a pipeline waiting for room gives up: what does not fit is dropped, counted."""
    writer, stream, drops = wedged(capacity=100, on_full="block")

    def pipeline() -> None:
        writer.hold()
        for i in range(150):
            writer.msg(f"event {i}")
        writer.release()

    thread = threading.Thread(target=pipeline)
    thread.start()
    thread.join(0.3)
    assert thread.is_alive()
    writer.stop_blocking()
    thread.join(10)
    assert not thread.is_alive()
    assert drops == ["reserve"] * 50
    stream.gate.set()


def test_close_gives_up_on_a_blocked_stream() -> None:
    """close() returns False after its timeout when the stream never takes the records."""
    writer, stream, _ = wedged()
    writer.msg("pending")
    assert writer.close(0.2) is False
    assert writer.pending == 1
    stream.gate.set()


def test_a_broken_stream_ends_the_writer_once_and_discards_later_records() -> None:
    """EPIPE: the failure names the stream and errno, on_failure runs once, logging goes on."""
    failures: list[str] = []
    writer = LineWriter(BrokenStream())
    writer.start(on_failure=failures.append)
    log = make_logger(writer, "json")
    log.info("job.finished", id=1)
    deadline = time.monotonic() + 10
    while not failures and time.monotonic() < deadline:
        time.sleep(0.01)
    log.info("job.finished", id=2)  # no exception, nothing written
    writer.close(1)
    assert failures == ["cannot write log records to <stdout>: Broken pipe (EPIPE)"]
    assert writer.failure == failures[0]


def test_the_renderer_marks_every_record_but_job_event() -> None:
    """The logger tells the writer which records are job.event (shed first) and job.finished."""
    kinds: list[tuple[str, int]] = []

    class Recorder(LineWriter):
        def msg(self, message: str, kind: int = JOB_EVENT) -> None:
            kinds.append((json.loads(message)["msg"], kind))

        info = warning = msg

    log = make_logger(Recorder(io.StringIO()), "json")
    log.info("job.event", id=1)
    log.info("job.finished", id=1)
    log.warning("event.rejected", reason="x")
    assert kinds == [
        ("job.event", JOB_EVENT),
        ("job.finished", JOB_FINISHED),
        ("event.rejected", OTHER_RECORD),
    ]


# -- the daemon ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stdout", "error"),
    [
        pytest.param("closed-pipe", "<stdout>: Broken pipe (EPIPE)", id="epipe"),
        pytest.param("/dev/full", "<stdout>: No space left on device (ENOSPC)", id="enospc"),
        pytest.param("closed", "stdout: it was closed when fluxmon started", id="closed-fd"),
    ],
)
def test_unwritable_stdout_exits_74_with_one_line(stdout: str, error: str) -> None:
    """A stdout that cannot be written ends the daemon: exit 74, one line on stderr, no trace."""
    command = [*FLUXMON, "demo", "--listen", "127.0.0.1:0", "--rate", "50"]
    if stdout == "closed":  # fd 1 closed before Python starts: sys.stdout is None
        command = ["sh", "-c", 'exec "$0" "$@" >&-', *command]
        write = os.open(os.devnull, os.O_WRONLY)
    elif stdout == "closed-pipe":
        read, write = os.pipe()
        os.close(read)
    else:
        write = os.open(stdout, os.O_WRONLY)
    try:
        proc = subprocess.run(
            command, stdout=write, stderr=subprocess.PIPE, timeout=60, check=False
        )
    finally:
        os.close(write)
    assert proc.returncode == EX_IOERR
    assert proc.stderr.decode().splitlines() == [f"fluxmon: cannot write log records to {error}"]


def test_replay_with_an_unwritable_log_still_prints_the_metrics_and_exits_74() -> None:
    """replay's log (stderr) on a full disk: the exposition is still complete, exit 74."""
    data = Path(__file__).parent / "data" / "journal.replay.jsonl"
    with open("/dev/full", "wb") as full:
        proc = subprocess.run(
            [*FLUXMON, "replay", str(data)],
            stdout=subprocess.PIPE,
            stderr=full,
            timeout=60,
            check=False,
        )
    assert proc.returncode == EX_IOERR
    assert proc.stdout.decode().rstrip().endswith("fluxmon_tracked_jobs 0.0")


@dataclass
class Daemon:
    """``fluxmon demo`` writing to a pipe that nobody reads until :meth:`resume`."""

    proc: subprocess.Popen[bytes]
    out: int
    port: int
    notify: socket.socket
    read: list[bytes] = field(default_factory=list)
    reader: threading.Thread | None = None

    def get(self, path: str) -> tuple[int, str, float]:
        """GET ``path``: status, body and seconds taken."""
        start = time.monotonic()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=30) as r:
                status, body = r.status, r.read().decode()
        except urllib.error.HTTPError as error:
            status, body = error.code, error.read().decode()
        return status, body, time.monotonic() - start

    def scrape(self) -> dict[str, float]:
        """One /metrics scrape, answered in under a second, as ``{sample: value}``."""
        status, text, seconds = self.get("/metrics")
        assert status == 200
        assert seconds < 1.0, f"a scrape took {seconds:.2f} s"
        return {
            sample.name + _labels(sample.labels): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def notifications(self) -> list[dict[str, str]]:
        """Every sd_notify datagram received since the last call."""
        messages = []
        with contextlib.suppress(BlockingIOError):
            while True:
                data = self.notify.recv(4096).decode()
                messages.append(dict(line.split("=", 1) for line in data.splitlines()))
        return messages

    def resume(self) -> None:
        """Start reading stdout (and keep reading until it closes)."""

        def read() -> None:
            while chunk := os.read(self.out, 1 << 16):
                self.read.append(chunk)

        self.reader = threading.Thread(target=read, daemon=True)
        self.reader.start()

    def records(self) -> list[dict[str, Any]]:
        """The JSON records read from stdout so far (whole lines only)."""
        text = b"".join(self.read).decode(errors="replace")
        return [json.loads(line) for line in text.split("\n")[:-1] if line.startswith("{")]


def _labels(labels: dict[str, str]) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else ""


def eventually(check: Callable[[], T | None], timeout: float = 30.0) -> T:
    """Poll ``check`` every 0.1 s until it returns something truthy (generous timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@contextlib.contextmanager
def daemon(tmp_path: Path, on_full: str) -> Iterator[Daemon]:
    """Run ``fluxmon demo --rate 50`` with a 100-record buffer, a 2 s stall bound, stdout a
    small pipe read only up to ``fluxmon.start``, and a fake systemd notify socket."""
    config = tmp_path / "fluxmon.toml"
    config.write_text(
        f'[log]\nformat = "json"\nbuffer_records = 100\non_full = "{on_full}"\n'
        "[health]\nstall_seconds = 2\n"
    )
    path = tmp_path / "notify.sock"
    if len(os.fsencode(path)) >= 108:  # sun_path limit
        pytest.skip(f"tmp_path too long for an AF_UNIX address: {path}")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(path))
    notify.setblocking(False)
    read, write = os.pipe()
    with contextlib.suppress(OSError):  # the smallest pipe fills at once (Linux only)
        fcntl.fcntl(write, fcntl.F_SETPIPE_SZ, 4096)
    env = {**os.environ, "NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "400000"}
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.Popen(
        [*FLUXMON, "demo", "-c", str(config), "--listen", "127.0.0.1:0", "--rate", "50"],
        stdout=write,
        stderr=(tmp_path / "stderr.txt").open("wb"),
        env=env,
    )
    os.close(write)
    try:
        head = b""
        while b'"fluxmon.start"' not in head:
            chunk = os.read(read, 4096)
            assert chunk, "fluxmon exited before it started"
            head += chunk
        start = next(line for line in head.split(b"\n") if b'"fluxmon.start"' in line)
        port = int(json.loads(start)["listen"].rsplit(":", 1)[1])
        yield Daemon(proc, read, port, notify)  # from here on, nobody reads stdout
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
        os.close(read)
        notify.close()


def stop(d: Daemon) -> None:
    """SIGTERM: the daemon stops cleanly (exit 0) with a fluxmon.stop record."""
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(30) == 0
    assert d.reader is not None
    d.reader.join(30)
    assert d.records()[-1]["msg"] == "fluxmon.stop"


@pytest.mark.slow
def test_unread_stdout_with_block_policy_fails_health_then_recovers(tmp_path: Path) -> None:
    """on_full=block, stdout unread: /healthz 503 and no watchdog pings while scrapes answer
    in under 1 s; once stdout is read again the daemon recovers and says so."""
    with daemon(tmp_path, "block") as d:

        def unhealthy() -> str | None:
            status, body, _ = d.get("/healthz")
            return body if status == 503 else None

        body = eventually(unhealthy)
        stderr = (tmp_path / "stderr.txt").read_text(errors="replace")
        assert re.fullmatch(r"event loop stalled for \d+\.\d s \(bound 2 s\)\n", body), stderr
        # Pings stop once the health loop has seen the stall (STATUS=unhealthy: ...).
        eventually(
            lambda: any(m.get("STATUS", "").startswith("unhealthy") for m in d.notifications())
        )
        time.sleep(1.5)
        assert not any("WATCHDOG" in m for m in d.notifications())
        # Scrapes keep answering: the numbers are stale and say so.
        first = d.scrape()
        assert first["fluxmon_healthy"] == 0
        time.sleep(1.0)
        second = d.scrape()
        assert second["fluxmon_events_processed_total"] == first["fluxmon_events_processed_total"]
        assert second['fluxmon_log_records_dropped_total{reason="reserve"}'] == 0
        # The reader comes back: events flow, health and pings return.
        d.resume()
        eventually(lambda: d.get("/healthz")[:2] == (200, "ok\n"))
        eventually(lambda: any(m.get("WATCHDOG") == "1" for m in d.notifications()))
        third = d.scrape()
        assert third["fluxmon_healthy"] == 1
        assert third["fluxmon_events_processed_total"] > second["fluxmon_events_processed_total"]
        eventually(lambda: any(r["msg"] == "health.recovered" for r in d.records()))
        stop(d)


@pytest.mark.slow
def test_unread_stdout_with_drop_policy_stays_healthy_and_counts_drops(tmp_path: Path) -> None:
    """on_full=drop (the default), stdout unread: healthy, pinging, counting drops; once read
    again, one log.records_dropped record says how many were dropped."""
    with daemon(tmp_path, "drop") as d:
        reserve = 'fluxmon_log_records_dropped_total{reason="reserve"}'

        def dropping() -> dict[str, float] | None:
            sample = d.scrape()
            return sample if sample[reserve] > 0 else None

        first = eventually(dropping)
        d.notifications()
        for _ in range(8):  # two stall bounds: still healthy, scrapes still fast
            assert d.get("/healthz")[:2] == (200, "ok\n")
            time.sleep(0.5)
        second = d.scrape()
        assert second["fluxmon_healthy"] == 1
        assert second["fluxmon_events_processed_total"] > first["fluxmon_events_processed_total"]
        assert second[reserve] > first[reserve]
        assert sum(m.get("WATCHDOG") == "1" for m in d.notifications()) >= 5
        d.resume()
        said = eventually(lambda: [r for r in d.records() if r["msg"] == "log.records_dropped"])
        record = said[0]
        assert record["level"] == "warning"
        assert record["count"] == record["job_event"] + record["job_finished"] + record["other"]
        assert record["job_event"] >= second[reserve]
        dropped = d.scrape()
        total = dropped[reserve] + dropped['fluxmon_log_records_dropped_total{reason="full"}']
        assert record["count"] <= total
        stop(d)
