"""SIGHUP reloads the config: live keys change, the rest is named, a bad file is kept out."""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fluxmon import app
from fluxmon.config import Settings, load_settings, setting_keys
from fluxmon.events import JobEvent
from fluxmon.exitcodes import EX_OK
from fluxmon.http import MetricsServer
from fluxmon.logs import LogOptions, make_logger
from fluxmon.reload import (
    AT_START,
    LIVE,
    ConfigFile,
    Reloader,
    ReloadThread,
    changed_keys,
    tls_digests,
)
from fluxmon.sources.demo import DemoSource
from fluxmon.testing import lifecycle, parse_log
from tests.conftest import DATA, json_settings
from tests.test_logs import logfmt

FLUXMON = [sys.executable, "-m", "fluxmon"]
#: Seconds to wait for a record or a process.
WAIT = 30.0


# --------------------------------------------------------------------------- helpers


def make_cert(directory: Path, serial: int) -> tuple[Path, Path]:
    """A self-signed certificate and its key, made by the openssl command."""
    cert, key = directory / f"cert{serial}.pem", directory / f"key{serial}.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
         "-subj", "/CN=fluxmon-test", "-set_serial", str(serial)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def unverified() -> ssl.SSLContext:
    """A client context that accepts the self-signed test certificates."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def served_certificate(port: int) -> bytes:
    """The DER certificate a TLS handshake with 127.0.0.1:port gets."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        unverified().wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def der(cert: Path) -> bytes:
    """A PEM certificate file's DER bytes."""
    return ssl.PEM_cert_to_DER_cert(cert.read_text())


def processed(text: str) -> float:
    """fluxmon_events_processed_total in an exposition."""
    return next(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "fluxmon_events_processed_total"
    )


@dataclasses.dataclass
class Demo:
    """A ``fluxmon demo`` subprocess, its port and its log file."""

    proc: subprocess.Popen[str]
    port: int
    log: Path
    tls: bool

    def text(self) -> str:
        """The log so far."""
        return self.log.read_text()

    def wait_for(self, pattern: str, start: int = 0) -> int:
        """Wait for a log line matching ``pattern`` after offset ``start``; its end offset."""
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            match = re.compile(pattern, re.M).search(self.text(), start)
            if match:
                return match.end()
            assert self.proc.poll() is None, f"fluxmon exited: {self.text()[-2000:]}"
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} in the log after {WAIT:g}s: {self.text()[-2000:]}")

    def scrape(self) -> str:
        """GET /metrics (over TLS when configured)."""
        scheme = "https" if self.tls else "http"
        context = unverified() if self.tls else None
        url = f"{scheme}://127.0.0.1:{self.port}/metrics"
        with urllib.request.urlopen(url, timeout=10, context=context) as resp:
            return str(resp.read().decode())

    def hangup(self) -> int:
        """Send SIGHUP; the log's length before it."""
        length = len(self.text())
        self.proc.send_signal(signal.SIGHUP)
        return length


@contextmanager
def demo(config: Path, *, tls: bool = False) -> Iterator[Demo]:
    """``fluxmon demo -c CONFIG --listen 127.0.0.1:0``, killed at the end if still running."""
    log = config.with_suffix(".log")
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*FLUXMON, "demo", "-c", str(config), "--listen", "127.0.0.1:0", "--rate", "40"],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        running = Demo(proc, 0, log, tls)
        running.wait_for(r"msg=fluxmon\.start .*listen=127\.0\.0\.1:\d+")
        match = re.search(r"listen=127\.0\.0\.1:(\d+)", running.text())
        assert match
        running.port = int(match.group(1))
        yield running
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


class Sampler:
    """Scrapes fluxmon_events_processed_total every 0.1 s on a thread, while in use."""

    def __init__(self, running: Demo) -> None:
        self.values: list[float] = []
        self._running = running
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample)

    def _sample(self) -> None:
        while not self._done.wait(0.1):
            self.values.append(processed(self._running.scrape()))

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join()


def captured(settings: Settings) -> tuple[Reloader, list[Settings], io.StringIO, LogOptions]:
    """A Reloader whose apply records what it gets, logging JSON to a StringIO."""
    stream = io.StringIO()
    options = LogOptions("json", settings.log.level)
    applied: list[Settings] = []

    def apply(new: Settings) -> list[str]:
        applied.append(new)
        return []

    log = make_logger(stream, options=options)
    return Reloader(ConfigFile(settings), apply, options, log), applied, stream, options


def records(stream: io.StringIO, msg: str) -> list[dict[str, Any]]:
    """The records called ``msg``, JSON or (after a reload to the default format) logfmt."""
    found = []
    for line in stream.getvalue().splitlines():
        record = json.loads(line) if line.startswith("{") else logfmt(line)[0]
        if record["msg"] == msg:
            found.append(record)
    return found


# --------------------------------------------------------------------------- unit


def test_every_config_key_is_live_or_read_at_start_with_a_reason() -> None:
    """Each key of the config schema is either applied by a reload or has its own reason."""
    keys = setting_keys()
    assert keys.keys() >= LIVE
    for key in keys.keys() - LIVE:
        assert any(key.startswith(prefix) for prefix, _ in AT_START), key


def test_a_certificate_rewritten_in_place_counts_as_changed(tmp_path: Path) -> None:
    """A TLS file with the same path but new content is a changed key."""
    cert, key = make_cert(tmp_path, 1)
    config = tmp_path / "fluxmon.toml"
    config.write_text(f'[http]\ntls_cert = "{cert.name}"\ntls_key = "{key.name}"\n')
    old = load_settings(config)
    files = tls_digests(old)
    assert changed_keys(old, load_settings(config), files) == []
    cert2, key2 = make_cert(tmp_path, 2)
    cert.write_bytes(cert2.read_bytes())
    key.write_bytes(key2.read_bytes())
    assert changed_keys(old, load_settings(config)) == []  # by path only
    assert changed_keys(old, load_settings(config), files) == ["http.tls_cert", "http.tls_key"]


def test_a_file_with_problems_is_rejected_whole_with_every_problem(tmp_path: Path) -> None:
    """Two bad keys: nothing is applied, and config.reload_failed names both."""
    config = tmp_path / "fluxmon.toml"
    config.write_text('[log]\nlevel = "info"\n')
    reloader, applied, stream, options = captured(load_settings(config))
    config.write_text('[log]\nlevel = "warning"\nformat = "xml"\n[metrics]\nlabel_cap = 0\n')
    assert reloader.reload() is False
    assert applied == []
    [failed] = records(stream, "config.reload_failed")
    assert failed["level"] == "error"
    assert "log.format" in failed["problems"]
    assert "metrics.label_cap" in failed["problems"]
    assert reloader.settings.log.level == "info"
    make_logger(stream, options=options).info("still.info")  # the level did not change
    assert records(stream, "still.info")


def test_a_failing_apply_keeps_the_old_settings(tmp_path: Path) -> None:
    """When apply reports a problem (a TLS file that does not load) nothing changes."""
    config = tmp_path / "fluxmon.toml"
    config.write_text('[log]\nlevel = "info"\n')
    stream = io.StringIO()
    options = LogOptions("json", "info")
    log = make_logger(stream, options=options)
    reloader = Reloader(
        ConfigFile(load_settings(config)), lambda _: ["http.tls_cert: bad PEM"], options, log
    )
    config.write_text('[log]\nlevel = "error"\n')
    assert reloader.reload() is False
    [failed] = records(stream, "config.reload_failed")
    assert failed["problems"] == "http.tls_cert: bad PEM"
    assert reloader.settings.log.level == "info"
    assert not records(stream, "config.reloaded")
    log.warning("still.warning")
    assert records(stream, "still.warning")


def test_keys_read_at_start_are_refused_and_the_rest_applied(tmp_path: Path) -> None:
    """A new listen address and URI are named with reasons; the new level is applied."""
    config = tmp_path / "fluxmon.toml"
    config.write_text('[http]\nlisten = "127.0.0.1:9000"\n')
    reloader, applied, stream, _ = captured(load_settings(config))
    config.write_text(
        '[http]\nlisten = "127.0.0.1:9001"\n[flux]\nuri = "local:///tmp/x"\n'
        '[log]\nlevel = "warning"\n[metrics]\nlabel_cap = 7\n'
    )
    assert reloader.reload() is True
    [settings] = applied
    assert settings.http.listen == ("127.0.0.1", 9000)
    assert settings.flux.uri is None
    assert (settings.log.level, settings.metrics.label_cap) == ("warning", 7)
    refused = {r["key"]: r["reason"] for r in records(stream, "config.reload_refused")}
    assert refused.keys() == {"flux.uri", "http.listen"}
    assert "bound at start" in refused["http.listen"]
    assert all("restart" in why for why in refused.values())
    [done] = records(stream, "config.reloaded")
    assert done["changed"] == "log.level,metrics.label_cap"


def test_a_refused_key_is_refused_again_on_the_next_reload(tmp_path: Path) -> None:
    """A key not applied stays the running value, so the next reload names it again."""
    config = tmp_path / "fluxmon.toml"
    config.write_text('[state]\ncheckpoint_dir = "a"\n')
    reloader, _, stream, _ = captured(load_settings(config))
    config.write_text('[state]\ncheckpoint_dir = "b"\n')
    assert reloader.reload()
    assert reloader.reload()
    assert [r["key"] for r in records(stream, "config.reload_refused")] == [
        "state.checkpoint_dir"
    ] * 2


def test_a_key_the_command_line_sets_is_refused_naming_the_option(tmp_path: Path) -> None:
    """With --listen given, a new http.listen in the file is refused as overridden."""
    config = tmp_path / "fluxmon.toml"
    config.write_text('[http]\nlisten = ":1"\n')
    stream = io.StringIO()
    options = LogOptions("json", "info")
    reloader = Reloader(
        ConfigFile(load_settings(config), {"http.listen": "--listen"}),
        lambda _: [],
        options,
        make_logger(stream, options=options),
    )
    config.write_text('[http]\nlisten = ":2"\n')
    assert reloader.reload()
    [refused] = records(stream, "config.reload_refused")
    assert refused["key"] == "http.listen"
    assert "--listen" in refused["reason"]


def test_without_a_config_file_nothing_is_read() -> None:
    """No -c: the reload logs config.reload_skipped and applies nothing."""
    reloader, applied, stream, _ = captured(Settings())
    assert reloader.reload() is False
    assert applied == []
    [skipped] = records(stream, "config.reload_skipped")
    assert "-c" in skipped["reason"]


def test_log_options_change_level_and_format_of_a_running_logger() -> None:
    """LogOptions.set changes what a logger already handed out filters and renders."""
    stream = io.StringIO()
    options = LogOptions("logfmt", "info")
    log = make_logger(stream, options=options)
    log.info("one")
    options.set("json", "warning")
    log.info("dropped")
    log.warning("two")
    log.exception("three")  # exception logs at error
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("ts=")
    assert "msg=one" in lines[0]
    assert [r["msg"] for r in parse_log("\n".join(lines[1:]))] == ["two", "three"]


def test_the_applier_changes_cap_and_events_records_of_a_live_pipeline() -> None:
    """Applied settings reach the sinks: a cap of 1 sends a new queue to other, no job.event;
    then a declared queue has its own series again."""
    settings = json_settings()
    stream = io.StringIO()
    parts = app.build(settings, stream, clock=None)
    server = MetricsServer(parts.registry, parts.pipeline, listen=("127.0.0.1", 0), version="t")
    apply = app._applier(parts, server)
    parts.pipeline.events(lifecycle(1, 10.0, queue="batch"))
    new = dataclasses.replace(
        settings,
        metrics=dataclasses.replace(settings.metrics, label_cap=1, exemplars=False),
        log=dataclasses.replace(settings.log, events="none"),
    )
    assert apply(new) == []
    before = len(parse_log(stream.getvalue()))
    parts.pipeline.events(lifecycle(2, 20.0, queue="debug"))
    submitted = "flux_jobs_submitted_total"
    assert parts.registry.get_sample_value(submitted, {"queue": "batch"}) == 1
    assert parts.registry.get_sample_value(submitted, {"queue": "other"}) == 1
    assert parts.registry.get_sample_value(submitted, {"queue": "debug"}) is None
    after = parse_log(stream.getvalue())[before:]
    assert [r["msg"] for r in after] == ["job.finished"]
    declared = dataclasses.replace(new.metrics, queues=("debug",))
    assert apply(dataclasses.replace(new, metrics=declared)) == []
    parts.pipeline.events(lifecycle(3, 30.0, queue="debug"))
    assert parts.registry.get_sample_value(submitted, {"queue": "debug"}) == 1


def test_reloads_run_on_their_own_thread_not_in_the_handler() -> None:
    """SIGHUP only queues: the work runs on fluxmon-reload, once per signal."""
    ran: list[str] = []
    done = threading.Event()

    def work() -> None:
        ran.append(threading.current_thread().name)
        done.set()

    hangups = ReloadThread(work, make_logger(io.StringIO()))
    hangups.start()
    previous = signal.signal(signal.SIGHUP, hangups.request)
    try:
        for _ in range(2):
            done.clear()
            os.kill(os.getpid(), signal.SIGHUP)
            assert done.wait(WAIT)
    finally:
        signal.signal(signal.SIGHUP, previous)
        hangups.stop(WAIT)
    assert ran == ["fluxmon-reload", "fluxmon-reload"]


def test_a_failing_reload_is_logged_and_the_thread_keeps_serving() -> None:
    """An exception in a reload is logged as config.reload_failed; the next request runs."""
    stream = io.StringIO()
    calls: list[int] = []
    done = threading.Event()

    def work() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        done.set()

    hangups = ReloadThread(work, make_logger(stream, "json"))
    hangups.start()
    hangups.request()
    deadline = time.monotonic() + WAIT
    while not records(stream, "config.reload_failed"):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    hangups.request()
    assert done.wait(WAIT)
    hangups.stop(WAIT)
    assert len(calls) == 2
    [failed] = records(stream, "config.reload_failed")
    assert failed["problems"] == "RuntimeError: boom"


# --------------------------------------------------------------------------- in process


def test_serve_refuses_a_new_listen_address_and_applies_a_new_format(tmp_path: Path) -> None:
    """fluxmon serving on its config's address: SIGHUP refuses a new one, switches to JSON."""
    config = tmp_path / "fluxmon.toml"
    config.write_text('[http]\nlisten = "127.0.0.1:0"\n')
    stream = io.StringIO()
    stop = threading.Event()
    result: list[str] = []

    def poke() -> None:
        try:
            deadline = time.monotonic() + WAIT
            while "msg=fluxmon.start" not in stream.getvalue():
                assert time.monotonic() < deadline
                time.sleep(0.05)
            config.write_text('[http]\nlisten = "127.0.0.1:1"\n[log]\nformat = "json"\n')
            os.kill(os.getpid(), signal.SIGHUP)
            while '"msg": "job.event"' not in stream.getvalue():
                assert time.monotonic() < deadline
                time.sleep(0.05)
            result.append("ok")
        finally:
            stop.set()

    poker = threading.Thread(target=poke)
    poker.start()
    code = app.serve(
        load_settings(config),
        DemoSource(rate=20, seed=2),
        mode="demo",
        log_stream=stream,
        stop=stop,
    )
    poker.join()
    assert (code, result) == (EX_OK, ["ok"])
    text = stream.getvalue()
    refused = re.search(r"msg=config\.reload_refused .*key=http\.listen reason=\"(.*)\"", text)
    assert refused
    assert "bound at start" in refused.group(1)
    done = re.search(r"^ts=\S+ level=info msg=config\.reloaded .*changed=log\.format\n", text, re.M)
    assert done, "config.reloaded is written in the old format"
    after = parse_log(text[done.end() :])  # every later record is JSON
    assert after[-1]["msg"] == "fluxmon.stop"


def test_record_logs_sighup_and_keeps_recording(tmp_path: Path) -> None:
    """fluxmon record: SIGHUP gives config.reload_ignored, and record still exits 0."""
    err = io.StringIO()

    class Source:
        def run(self, downstream: Any, stop: threading.Event) -> None:
            os.kill(os.getpid(), signal.SIGHUP)
            deadline = time.monotonic() + WAIT
            while "config.reload_ignored" not in err.getvalue():
                assert time.monotonic() < deadline
                time.sleep(0.05)
            batch: list[JobEvent] = lifecycle(1, 10.0)
            downstream.events(batch)

    out = io.StringIO()
    settings = json_settings()
    factory: Any = lambda *_: Source()  # noqa: E731 - the one-line factory record wants
    assert app.record(factory, settings, out, err) == EX_OK
    [ignored] = records(err, "config.reload_ignored")
    assert "restart" in ignored["reason"]
    assert len(out.getvalue().splitlines()) == len(lifecycle(1, 10.0))
    assert records(err, "fluxmon.stop")


# --------------------------------------------------------------------------- subprocess


@pytest.mark.slow
def test_sighup_rotates_the_certificate_and_level_without_losing_events(tmp_path: Path) -> None:
    """Level info→warning and a certificate rewritten in place: both live, same process."""
    cert, key = make_cert(tmp_path, 1)
    config = tmp_path / "fluxmon.toml"
    http = f'[http]\ntls_cert = "{cert.name}"\ntls_key = "{key.name}"\n'
    config.write_text(http + '[log]\nlevel = "info"\n')
    with demo(config, tls=True) as running:
        running.wait_for(r"msg=job\.finished ")
        assert served_certificate(running.port) == der(cert)
        first = processed(running.scrape())
        assert first > 0
        new_cert, new_key = make_cert(tmp_path, 2)
        with Sampler(running) as sampler:
            time.sleep(0.5)
            cert.write_bytes(new_cert.read_bytes())
            key.write_bytes(new_key.read_bytes())
            config.write_text(http + '[log]\nlevel = "warning"\n')
            start = running.hangup()
            end = running.wait_for(r"msg=config\.reloaded .*$", start)
            time.sleep(1.0)  # a batch rendered before the switch may still be written
            quiet_from = len(running.text())
            time.sleep(1.5)
        assert served_certificate(running.port) == der(new_cert)
        reloaded = running.text()[start:end]
        assert "changed=http.tls_cert,http.tls_key,log.level" in reloaded
        assert "level=info" not in running.text()[quiet_from:]
        assert running.proc.poll() is None
        assert running.text().count("msg=fluxmon.start") == 1
        values = sampler.values
        assert len(values) >= 10
        assert all(a <= b for a, b in itertools.pairwise(values)), values
        assert values[0] >= first
        assert processed(running.scrape()) > values[len(values) // 2] > values[0]
        running.proc.send_signal(signal.SIGTERM)
        assert running.proc.wait(WAIT) == 0


@pytest.mark.slow
def test_sighup_with_a_broken_config_keeps_the_old_one(tmp_path: Path) -> None:
    """A file with errors: config.reload_failed lists them, info records go on, alive."""
    config = tmp_path / "fluxmon.toml"
    config.write_text('[log]\nlevel = "info"\n')
    with demo(config) as running:
        running.wait_for(r"msg=job\.event ")
        config.write_text('[log]\nlevel = "loud"\n[http]\nlisten = "nowhere"\n')
        start = running.hangup()
        end = running.wait_for(r"level=error msg=config\.reload_failed .*$", start)
        failed = running.text()[start:end]
        assert "log.level" in failed
        assert "http.listen" in failed
        before = processed(running.scrape())
        running.wait_for(r"level=info msg=job\.event ", end)
        assert processed(running.scrape()) > before
        assert "msg=config.reloaded" not in running.text()
        config.write_text('[log]\nlevel = "info"\nevents = "none"\n')
        start = running.hangup()
        running.wait_for(r"msg=config\.reloaded .*changed=log\.events$", start)
        assert running.proc.poll() is None
        running.proc.send_signal(signal.SIGTERM)
        assert running.proc.wait(WAIT) == 0


@pytest.mark.slow
def test_sighup_changing_listen_is_refused_and_the_rest_applied(tmp_path: Path) -> None:
    """A new http.listen is named in config.reload_refused; per-event records still stop."""
    config = tmp_path / "fluxmon.toml"
    config.write_text('[http]\nlisten = "127.0.0.1:0"\n')
    with demo(config) as running:
        running.wait_for(r"msg=job\.event ")
        config.write_text('[http]\nlisten = "127.0.0.1:1"\n[log]\nevents = "none"\n')
        start = running.hangup()
        end = running.wait_for(r"msg=config\.reloaded .*$", start)
        text = running.text()[start:end]
        assert re.search(r"level=warning msg=config\.reload_refused .*key=http\.listen ", text)
        assert text.rstrip().endswith("changed=log.events")
        time.sleep(1.0)
        quiet_from = len(running.text())
        running.wait_for(r"msg=job\.finished ", quiet_from)
        assert "msg=job.event " not in running.text()[quiet_from:]
        running.scrape()  # still served where it was
        running.proc.send_signal(signal.SIGTERM)
        assert running.proc.wait(WAIT) == 0


@pytest.mark.slow
def test_replay_ignores_sighup(tmp_path: Path) -> None:
    """SIGHUP in the middle of a replay: it goes on and prints what a plain replay prints."""
    lines = (DATA / "journal.replay.jsonl").read_bytes()
    plain = subprocess.run(
        [*FLUXMON, "replay", str(DATA / "journal.replay.jsonl")], capture_output=True, check=False
    )
    err = tmp_path / "err.log"
    with err.open("w") as errors:
        proc = subprocess.Popen(
            [*FLUXMON, "replay", "/dev/stdin"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errors,
        )
    assert proc.stdin is not None
    deadline = time.monotonic() + WAIT
    while "msg=fluxmon.start" not in err.read_text():
        assert time.monotonic() < deadline, err.read_text()
        assert proc.poll() is None, err.read_text()
        time.sleep(0.05)
    half = len(lines) // 2
    half = lines.index(b"\n", half) + 1
    proc.stdin.write(lines[:half])
    proc.stdin.flush()
    proc.send_signal(signal.SIGHUP)
    time.sleep(0.2)
    out, _ = proc.communicate(lines[half:], timeout=WAIT)
    assert proc.returncode == plain.returncode, err.read_text()
    assert out == plain.stdout
    assert b"# TYPE flux_job_events_total counter" in out
