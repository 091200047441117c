"""Wiring and lifecycle: the one place with threads, signals, the clock and sd_notify.

:func:`build` assembles registry → metrics → tracker → pipeline from settings;
:func:`serve` runs a source under the HTTP endpoint until SIGTERM/SIGINT;
:func:`replay` feeds files through the same pipeline and prints the exposition.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import IO, Final, TextIO

from prometheus_client import CollectorRegistry, generate_latest
from structlog.typing import FilteringBoundLogger

from fluxmon import __version__
from fluxmon.config import Settings
from fluxmon.events import MAIN, JobEvent, ResourceEvent, f58
from fluxmon.exitcodes import (
    EX_DATAERR,
    EX_IOERR,
    EX_NOINPUT,
    EX_OK,
    EX_OSERR,
    EX_SOFTWARE,
    EX_UNAVAILABLE,
)
from fluxmon.http import MetricsServer, format_address
from fluxmon.logs import (
    DROP_REASONS,
    HotRecords,
    LineWriter,
    LogOptions,
    LogSink,
    ResourceLogSink,
    make_logger,
)
from fluxmon.metrics import (
    Buckets,
    JobMetrics,
    LabelCap,
    MetricsSink,
    SelfMetrics,
    SnapshotCollector,
    declared_by,
)
from fluxmon.persist import MetricsState
from fluxmon.pipeline import Pipeline
from fluxmon.progress import BarStream, ReplayProgress, total_size
from fluxmon.reload import ConfigFile, Reloader, ReloadThread
from fluxmon.resource_metrics import ResourceCollector, ResourceMetrics
from fluxmon.resources import ResourceTracker
from fluxmon.sdnotify import Notifier, watchdog_interval
from fluxmon.sources import Source, SourceUnavailable
from fluxmon.sources.replay import (
    ReplaySource,
    UnreadableInput,
    format_event,
    format_resource_event,
    open_input,
)
from fluxmon.tracker import Tracker

#: Seconds between STATUS= updates to systemd.
STATUS_EVERY: Final = 5.0
#: Seconds the source thread gets to stop before fluxmon exits anyway.
STOP_TIMEOUT: Final = 10.0
#: Seconds between ``record.progress`` records of ``fluxmon record``.
PROGRESS_EVERY: Final = 5.0
#: Seconds the log writer gets, at exit, to write what is buffered.
LOG_DRAIN_TIMEOUT: Final = 3.0


@dataclass
class Parts:
    """The assembled pipeline, before any thread or socket exists."""

    registry: CollectorRegistry
    tracker: Tracker
    pipeline: Pipeline
    self_metrics: SelfMetrics
    log: FilteringBoundLogger
    writer: LineWriter
    #: What a reload changes: the log's level and format, the sinks' options, the label cap.
    log_options: LogOptions
    log_sink: LogSink
    metrics_sink: MetricsSink
    cap: LabelCap
    #: Captures and restores the ``flux_*`` counters and histograms (the checkpoint's).
    metrics_state: MetricsState
    resource_metrics: ResourceMetrics | None = None


def build(settings: Settings, log_stream: TextIO, *, clock: Callable[[], float] | None) -> Parts:
    """Assemble the pipeline from settings; ``clock`` measures event lag (None: off).

    The log writer writes synchronously until :meth:`LineWriter.start` (``serve`` starts it).
    """
    registry = CollectorRegistry(auto_describe=False)
    m = settings.metrics
    job_metrics = JobMetrics(
        registry,
        Buckets(
            wait=m.wait_buckets,
            runtime=m.runtime_buckets,
            short=m.short_buckets,
            ratio=m.ratio_buckets,
        ),
    )
    self_metrics = SelfMetrics(registry)
    dropped = {reason: self_metrics.log_dropped.labels(reason) for reason in DROP_REASONS}
    writer = LineWriter(
        log_stream,
        capacity=settings.log.buffer_records,
        on_full=settings.log.on_full,
        on_drop=lambda reason: dropped[reason].inc(),
    )
    options = LogOptions(settings.log.format, settings.log.level)
    log = make_logger(writer, options=options)

    def recovered(counts: Mapping[str, int]) -> None:
        log.warning("log.records_dropped", count=sum(counts.values()), **counts)

    writer.on_recovered = recovered
    cap = LabelCap(m.label_cap, self_metrics.label_overflow, declared_by(m))
    metrics_sink = MetricsSink(job_metrics, self_metrics, cap, exemplars=m.exemplars)
    log_sink = LogSink(log, events=settings.log.events == "all", hot=HotRecords(writer, options))
    resource_metrics = ResourceMetrics(registry, cap, exemplars=m.exemplars)
    resources = ResourceTracker([resource_metrics, ResourceLogSink(log)])
    tracker = Tracker([metrics_sink, log_sink, resources])
    resources.on_reject = tracker.report_rejection
    pipeline = Pipeline(
        tracker,
        metrics_sink,
        self_metrics,
        log,
        clock=clock,
        writer=writer,
        stall_seconds=settings.health.stall_seconds,
        resources=resources,
    )
    registry.register(ResourceCollector(pipeline.resource_snapshot))
    registry.register(SnapshotCollector(pipeline.snapshot))  # last: ends with tracked jobs
    return Parts(
        registry,
        tracker,
        pipeline,
        self_metrics,
        log,
        writer,
        options,
        log_sink,
        metrics_sink,
        cap,
        MetricsState([job_metrics, resource_metrics], cap),
        resource_metrics,
    )


def restore_metrics(parts: Parts, saved: object, path: str) -> None:
    """Restore a checkpoint's saved metrics; hide them until history is caught up.

    A saved state that cannot be trusted is named in ``checkpoint.metrics_invalid``
    warnings (the file and the problem); what is wrong starts at zero.
    """
    if saved is None:
        return
    state = parts.metrics_state

    def warn(problem: str) -> None:
        parts.log.warning("checkpoint.metrics_invalid", path=path, error=problem)
        parts.self_metrics.checkpoint_errors.labels("metrics_invalid").inc()

    series = state.restore(saved, warn)
    state.hide(True)
    parts.pipeline.on_first_caught_up = lambda: state.hide(False)
    parts.log.info("checkpoint.metrics_restored", path=path, series=series)


def replay(
    paths: Sequence[str],
    settings: Settings,
    out: IO[str],
    err: TextIO,
    *,
    progress_every: float | None = None,
) -> int:
    """Replay files through the pipeline and print the final exposition.

    Returns 65 if some input was refused, and 66, printing nothing on ``out``, if a file
    cannot be read (each such file named on one line of ``err``). Progress goes to
    ``err``: a bar on a terminal, else a ``replay.progress`` record every
    ``progress_every`` seconds (default 5).
    """
    unreadable = _unreadable(paths)
    if unreadable:
        print("\n".join(unreadable), file=err)
        return EX_NOINPUT
    bar = BarStream(err) if err.isatty() else None
    parts = build(settings, bar or err, clock=None)
    progress = ReplayProgress(
        total_size(paths),
        lambda: (parts.pipeline.live_events, sum(parts.tracker.rejected.values())),
        log=parts.log,
        bar=bar,
        interval=progress_every,
    )
    source = ReplaySource(paths, progress=progress)
    previous = _install_signals(None, signal.SIG_IGN)  # a batch job: nothing to reload
    parts.log.info("fluxmon.start", version=__version__, mode="replay", files=len(paths))
    try:
        source.run(parts.pipeline, threading.Event())
    except UnreadableInput as error:  # it went away since _unreadable looked
        print(error, file=err)
        return EX_NOINPUT
    finally:
        _restore_signals(previous)
    progress.finish()
    out.write(generate_latest(parts.registry).decode())
    out.flush()
    refused = sum(parts.tracker.rejected.values())
    parts.log.info(
        "fluxmon.stop",
        events=parts.pipeline.live_events,
        refused=refused,
        tracked_jobs=len(parts.tracker.jobs),
    )
    if parts.writer.failure is not None:
        return EX_IOERR
    return EX_DATAERR if refused else EX_OK


def _unreadable(paths: Iterable[str]) -> list[str]:
    """Why each file of ``paths`` that cannot be opened cannot be, one line each.

    A pipe or device (``/dev/stdin``, a FIFO) is only checked for permission: opening and
    closing it here would take its writer's data or end its writer before the replay.
    """
    problems = []
    for path in paths:
        try:
            mode = os.stat(path).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                if not os.access(path, os.R_OK):
                    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
                continue
        except OSError as err:
            problems.append(f"{path}: cannot read: {err.strerror or err}")
            continue
        try:
            open_input(path).close()
        except UnreadableInput as error:
            problems.append(str(error))
    return problems


class RecordDownstream:
    """A downstream that writes every event in the replay format (``fluxmon record``)."""

    def __init__(
        self, out: IO[str], log: FilteringBoundLogger, stop: threading.Event, count: int | None
    ) -> None:
        self._out = out
        self._log = log
        self._stop = stop
        self._count = count
        self.events_written = 0
        self.jobs_finished = 0

    def events(self, batch: Sequence[JobEvent], *, live: bool = True) -> None:
        """Write the events; stop once ``count`` jobs have finished live."""
        for event in batch:
            self._out.write(format_event(event) + "\n")
            if live and event.name == "clean" and event.eventlog == MAIN:
                self.jobs_finished += 1
        self._out.flush()
        self.events_written += len(batch)
        if self._count is not None and self.jobs_finished >= self._count:
            self._stop.set()

    def resource_events(self, batch: Sequence[ResourceEvent], *, live: bool = True) -> None:
        """Write the resource events as resource lines."""
        for event in batch:
            self._out.write(format_resource_event(event) + "\n")
        self._out.flush()
        self.events_written += len(batch)

    def resource_mode(self, mode: str) -> None:
        """Log how resources are read."""
        self._log.info("source.resource_mode", mode=mode)

    def declare_queue_nodes(self, requires: Mapping[str, Sequence[str]]) -> None:
        """Nothing to declare: a recording has no metrics."""

    def connected(self, detail: str, *, flux_version: str | None = None) -> None:
        """Log the connection."""
        version = {} if flux_version is None else {"flux_version": flux_version}
        self._log.info("source.connected", detail=detail, **version)

    def disconnected(self, error: str) -> None:
        """Log the disconnection."""
        self._log.warning("source.disconnected", error=error)

    def declare_queues(self, names: Sequence[str]) -> None:
        """Log the instance's queues (a recording has no metrics to declare them to)."""
        self._log.info("source.queues", queues=",".join(names))

    def caught_up(self) -> None:
        """Log the end of history."""
        self._log.info("history.caught_up", history_events=self.events_written)

    def reject_input(self, reason: str, detail: str) -> None:
        """Log refused input."""
        self._log.warning("event.rejected", reason=reason, detail=detail)

    def forget(self, jobids: Iterable[int], reason: str) -> None:
        """Nothing to forget: the recording keeps what was seen."""

    def rewind(
        self, jobid: int, *, events_dropped: int, events_new: int, finished: bool = False
    ) -> None:
        """Log a job the broker rewrote; the recording keeps both versions of its events."""
        self._log.warning(
            "job.rewound",
            jobid=f58(jobid),
            id=jobid,
            events_dropped=events_dropped,
            events_new=events_new,
        )

    def heartbeat(self, quiet_for: float = 0.0) -> None:
        """Nothing to watch: ``record`` has no health endpoint."""

    def progress(self) -> None:
        """Log ``record.progress``: events written and jobs finished so far."""
        self._log.info("record.progress", events=self.events_written, jobs=self.jobs_finished)


def record(
    source_factory: Callable[[SelfMetrics, FilteringBoundLogger], Source],
    settings: Settings,
    out: IO[str],
    err: TextIO,
    *,
    count: int | None = None,
    progress_every: float = PROGRESS_EVERY,
) -> int:
    """Write a live instance's events in the replay format until SIGINT/SIGTERM or ``count``.

    SIGINT and SIGTERM set the stop flag; the source's reactor timer sees it and stops,
    so every event read is written and flushed, and the exit status is 0. SIGHUP only
    logs ``config.reload_ignored``: the recording keeps its settings. The log gets
    ``record.progress`` every ``progress_every`` seconds and at the end, then
    ``fluxmon.stop`` with the same counts.
    """
    log = make_logger(err, settings.log.format, settings.log.level)
    stop = threading.Event()
    downstream = RecordDownstream(out, log, stop, count)
    source = source_factory(SelfMetrics(CollectorRegistry()), log)
    ended = threading.Event()

    def report() -> None:
        while not ended.wait(progress_every):
            downstream.progress()

    reporter = threading.Thread(target=report, name="fluxmon-progress", daemon=True)
    hangups = ReloadThread(
        lambda: log.info(
            "config.reload_ignored",
            reason="fluxmon record keeps the settings it started with; restart it to apply",
        ),
        log,
    )
    hangups.start()
    previous = _install_signals(stop, hangups.request)
    reporter.start()
    try:
        source.run(downstream, stop)
    except SourceUnavailable as error:
        log.error("source.unavailable", error=str(error))
        return EX_UNAVAILABLE
    finally:
        ended.set()
        reporter.join()
        _restore_signals(previous)
        hangups.stop()
    downstream.progress()
    log.info("fluxmon.stop", events=downstream.events_written, jobs=downstream.jobs_finished)
    return EX_OK


#: Seconds between GIL hand-offs in the daemons (CPython's default is 0.005); see cli.main.
SWITCH_INTERVAL: Final = 0.0005


def serve(
    settings: Settings,
    source: Source | Callable[[Parts], Source],
    *,
    mode: str,
    log_stream: TextIO,
    environ: Mapping[str, str] = os.environ,
    stop: threading.Event | None = None,
    clock: Callable[[], float] = time.time,
    on_listen: Callable[[tuple[str, int]], None] | None = None,
    err: TextIO | None = None,
    config_file: ConfigFile | None = None,
) -> int:
    """Run ``source`` behind the HTTP endpoint until SIGTERM/SIGINT (or ``stop``).

    Log records go through the writer thread. When ``log_stream`` cannot be written
    (EPIPE, ENOSPC, closed), one line on ``err`` (default stderr) says why and the
    daemon stops with 74. SIGHUP reads ``config_file`` again (default: ``settings.path``,
    nothing pinned) and applies what can change live, on a thread of its own
    (:mod:`fluxmon.reload`).
    """
    parts = build(settings, log_stream, clock=clock)
    parts.self_metrics.register_runtime_collectors()
    log, pipeline, writer = parts.log, parts.pipeline, parts.writer
    stop = stop or threading.Event()
    writer.start(on_failure=lambda _why: stop.set())
    if callable(source):
        source = source(parts)
    http = settings.http
    server = MetricsServer(
        parts.registry,
        pipeline,
        listen=http.listen,
        version=__version__,
        tls_cert=http.tls_cert,
        tls_key=http.tls_key,
        tls_client_ca=http.tls_client_ca,
        basic_auth=http.basic_auth,
        max_connections=http.max_connections,
        max_header_bytes=http.max_header_bytes,
        header_timeout=http.header_timeout,
        log=log,
    )
    try:
        server.start()
    except OSError as error:
        log.error("fluxmon.listen_failed", listen=format_address(*http.listen), error=str(error))
        writer.close(LOG_DRAIN_TIMEOUT)
        return EX_OSERR
    host, port = server.address
    config = {"config": str(settings.path)} if settings.path else {}
    log.info(
        "fluxmon.start",
        version=__version__,
        mode=mode,
        listen=format_address(host, port),
        **config,
    )
    if on_listen is not None:
        on_listen((host, port))
    notifier = Notifier.from_environ(environ)
    interval = watchdog_interval(environ, os.getpid())
    reloader = Reloader(
        config_file or ConfigFile(settings), _applier(parts, server), parts.log_options, log
    )
    hangups = ReloadThread(reloader.reload, log)
    hangups.start()
    previous = _install_signals(stop, hangups.request)
    crashed: list[BaseException] = []

    def run_source() -> None:
        try:
            source.run(pipeline, stop)
        except SourceUnavailable as error:
            crashed.append(error)
            log.error("source.unavailable", error=str(error))
        except Exception as error:
            crashed.append(error)
            log.exception("source.failed", error=f"{type(error).__name__}: {error}")
        finally:
            stop.set()

    thread = threading.Thread(target=run_source, name="fluxmon-source", daemon=True)
    thread.start()
    pipeline.source_thread = thread  # once started: is_alive() is False until then
    tick = min(interval, 1.0) if interval else 1.0
    sent_ready = False
    last_status = 0.0
    last_events = 0
    stalled_since: float | None = None
    try:
        while not stop.wait(tick):
            alive, reason = pipeline.liveness()
            if alive and interval:
                notifier.watchdog()  # only while the loop turns: else systemd restarts us
            now = time.monotonic()
            if not alive and stalled_since is None:
                stalled_since = now
                log.warning("health.stalled", reason=reason)
                notifier.status(f"unhealthy: {reason}")
            elif alive and stalled_since is not None:
                log.info("health.recovered", stalled_for=round(now - stalled_since, 3))
                stalled_since, last_status = None, 0.0
            if pipeline.is_ready and not sent_ready:
                sent_ready = notifier.ready(_status(pipeline, 0.0)) or True
            if alive and now - last_status >= STATUS_EVERY:
                events = pipeline.live_events
                rate = (events - last_events) / (now - last_status) if last_status else 0.0
                notifier.status(_status(pipeline, rate))
                last_status, last_events = now, events
    finally:
        notifier.stopping()
        stop.set()
        writer.stop_blocking()  # a pipeline waiting for log room gives up: we are stopping
        thread.join(STOP_TIMEOUT)
        _restore_signals(previous)
        hangups.stop(STOP_TIMEOUT)
        server.stop()
        why = {"error": f"{type(crashed[0]).__name__}: {crashed[0]}"} if crashed else {}
        log.info(
            "fluxmon.stop",
            events=pipeline.live_events,
            tracked_jobs=len(parts.tracker.jobs),
            **why,
        )
        writer.close(LOG_DRAIN_TIMEOUT)  # a blocked stream is given up on, not waited for
    if writer.failure is not None:
        with contextlib.suppress(OSError, ValueError):  # stderr may be gone as well
            print(f"fluxmon: {writer.failure}", file=err or sys.stderr, flush=True)
        return EX_IOERR
    if crashed:
        return EX_UNAVAILABLE if isinstance(crashed[0], SourceUnavailable) else EX_SOFTWARE
    return EX_OK


def _applier(parts: Parts, server: MetricsServer) -> Callable[[Settings], list[str]]:
    """A function that applies reloaded settings whole, or not at all.

    The HTTP endpoint (which can fail) goes first, then the sinks' options and the label
    cap; it returns the problems, ``[]`` when applied.
    """

    def apply(settings: Settings) -> list[str]:
        problems = server.reload(settings.http)
        if problems:
            return problems
        parts.cap.set_limit(settings.metrics.label_cap)
        parts.cap.declare("config", declared_by(settings.metrics))
        parts.metrics_sink.set_exemplars(settings.metrics.exemplars)
        if parts.resource_metrics is not None:
            parts.resource_metrics.set_exemplars(settings.metrics.exemplars)
        parts.log_sink.set_events(settings.log.events == "all")
        return []

    return apply


def _status(pipeline: Pipeline, rate: float) -> str:
    state = "connected" if pipeline.is_connected else "disconnected"
    if pipeline.is_connected and not pipeline.is_ready:
        state = "connected, replaying history"
    return f"{state}; {len(pipeline.tracker.jobs)} jobs tracked; {rate:.1f} events/s"


_Handler = Callable[[int, FrameType | None], object] | int | None


def _install_signals(stop: threading.Event | None, hangup: _Handler) -> dict[int, _Handler]:
    """SIGTERM and SIGINT set ``stop`` (None: left alone); SIGHUP gets ``hangup``.

    Only possible from the main thread; elsewhere nothing is installed.
    """
    if threading.current_thread() is not threading.main_thread():
        return {}
    handlers: dict[int, _Handler] = {signal.SIGHUP: hangup}
    if stop is not None:
        handlers[signal.SIGTERM] = handlers[signal.SIGINT] = lambda *_: stop.set()
    return {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}


def _restore_signals(previous: Mapping[int, _Handler]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)
