"""Every metric fluxmon exports: names, help, labels, buckets, and the sink that fills them.

(The configurable bucket defaults are defined once, in :mod:`fluxmon.config`.)

Job metrics (``flux_*``) are filled by :class:`MetricsSink` from the tracker's calls;
the current-state gauges are computed at scrape time by :class:`SnapshotCollector`;
the daemon's own metrics (``fluxmon_*``) live in :class:`SelfMetrics`, which can also
register prometheus_client's process, platform and GC collectors (``process_*``,
``python_*``). All of them are registered in a registry passed in, never the global
one, and none has a ``_created`` series (see :class:`_WithoutCreated`).

The hot path is :meth:`MetricsSink.job_event` (once per event): it resolves the
labelled child from a per-queue dict keyed by the raw (eventlog, name) pair, so the
label cap and prometheus_client's label lookup are paid once per new series only.
Inside a batch (:meth:`MetricsSink.batch`, which the pipeline holds under its lock) the
sink adds increments and observations up in plain Python (:class:`Pending`) and hands
them to prometheus_client once per series at the batch's end: one lock per series and
batch instead of one per event, and an exemplar built only for the last observation of
each bucket (the only one a scrape sees).
"""

from __future__ import annotations

import platform
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from math import isnan
from typing import Final, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar

from fluxmon import __version__
from fluxmon.config import MetricsSettings
from fluxmon.events import (
    DEFAULT_QUEUE,
    EVENTLOG_LABEL,
    MAIN,
    METRIC_STATES,
    RESULTS,
    JobEvent,
    JobState,
    f58,
)
from fluxmon.sources import EXEC_ABANDON_REASONS
from fluxmon.tracker import REJECT_REASONS, Job, NullSink

OTHER: Final = "other"
#: Kinds of ``fluxmon_checkpoint_errors_total``: the file could not be read, was not what
#: fluxmon writes, a saved metric family was refused, or a save failed.
CHECKPOINT_ERRORS: Final = ("unreadable", "invalid", "metrics_invalid", "unwritable")
#: Open-ended labels whose distinct values are capped.
CAPPED_LABELS: Final = ("queue", "name", "type", "severity", "returncode", "reason")
PERILOG_PHASES: Final = ("prolog", "epilog")
LAG_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


@dataclass(frozen=True)
class Buckets:
    """Histogram bucket bounds, in seconds (ratio is unitless).

    The defaults are the configuration's (:class:`~fluxmon.config.MetricsSettings`,
    ``[metrics.buckets]``), defined there once.
    """

    wait: tuple[float, ...] = MetricsSettings.wait_buckets
    runtime: tuple[float, ...] = MetricsSettings.runtime_buckets
    short: tuple[float, ...] = MetricsSettings.short_buckets
    ratio: tuple[float, ...] = MetricsSettings.ratio_buckets


_Own = TypeVar("_Own", Counter, Gauge, Histogram)
#: Metric types whose families prometheus_client gives a ``_created`` sample.
_WITH_CREATED: Final = frozenset({"counter", "histogram", "summary"})


class _WithoutCreated(Collector):
    """fluxmon's own metric objects, collected without their ``_created`` samples.

    prometheus_client adds a ``_created`` sample to every counter and histogram unless its
    ``disable_created_metrics()`` switch is off, and that switch is process-wide: flipping
    it would change every registry in the process, including ones fluxmon does not own
    (a test's, an embedding program's). fluxmon's contract has no ``_created`` series, so
    its metrics are created unregistered and registered through this collector instead,
    which drops those samples from fluxmon's registry only (one pass over the samples of
    counters and histograms per scrape; nothing on the event path).
    """

    def __init__(self) -> None:
        self._metrics: list[Counter | Gauge | Histogram] = []
        #: Collect nothing while set (see :meth:`fluxmon.persist.MetricsState.hide`).
        self.hidden = False

    def add(self, metric: _Own) -> _Own:
        """Collect ``metric`` (created with ``registry=None``) through this collector."""
        self._metrics.append(metric)
        return metric

    def collect(self) -> Iterable[Metric]:
        """Yield every metric's family, ``_created`` samples removed (none while hidden)."""
        if self.hidden:
            return
        for metric in self._metrics:
            for family in metric.collect():
                if family.type in _WITH_CREATED:
                    created = family.name + "_created"
                    family.samples = [s for s in family.samples if s.name != created]
                yield family

    def describe(self) -> Iterable[Metric]:
        """Describe every metric, so the registry refuses duplicate names."""
        for metric in self._metrics:
            yield from metric.describe()


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


#: Label values flux-core itself produces, declared by default (they keep their own series
#: and do not count toward the cap). Read from the flux-core 0.88 source (file: call site).
BUILTIN_DECLARED: Final[Mapping[str, frozenset[str]]] = {
    # Exception types flux-core raises: job-manager alloc.c, plugins/alloc-bypass.c ("alloc"),
    # plugins/alloc-check.c, libjob/job.c flux_job_cancel ("cancel", also flux cancel and
    # flux job raise's default), plugins/dependency-after.c and dependency-singleton.c,
    # plugins/perilog.c ("prolog", "epilog"), job-exec.c and start.c and the shell's log.c
    # and pmi.c ("exec"), job-exec.c lost shells ("node-failure"), libschedutil/hello.c
    # ("scheduler-restart"), job-exec.c expiration ("timeout").
    "type": _words(
        "alloc alloc-check cancel dependency epilog exec node-failure prolog"
        " scheduler-restart timeout"
    ),
    # Main eventlog events (RFC 21; job-manager's event posts in 0.88) and exec eventlog
    # events (job-exec.c, bgexec.c, the shell's shell.c and doom.c).
    "name": _words(
        "submit validate invalidate depend dependency-add dependency-remove priority urgency"
        " jobspec-update flux-restart alloc prolog-start prolog-finish start finish"
        " epilog-start epilog-finish release free clean exception memo set-flags"
        " resource-update debug.alloc-request debug.start-request debug.start-lost"
        " debug.exec-reattach-start debug.exec-reattach-finish"
        " init reattach starting recoverable shell.init shell.start shell.task-exit"
        " shell-exit complete done"
    ),
    # RFC 21 severities: the tracker refuses any other.
    "severity": frozenset(str(severity) for severity in range(8)),
    # Return codes flux-core gives: 0; 1 and -128 (job-list: failed or canceled without a
    # status); 126 and 127 (shell.c: the command cannot be run or is not found);
    # 128 + SIGKILL, SIGALRM (timeout), SIGTERM (shell task.c); -SIGKILL and -SIGTERM (the
    # shell itself killed by job-exec's term and kill signals).
    "returncode": frozenset({"0", "1", "126", "127", "137", "142", "143", "-9", "-15", "-128"}),
    # The queue label of jobs that name no queue (fluxmon's own value).
    "queue": frozenset({DEFAULT_QUEUE}),
}


def declared_by(settings: MetricsSettings) -> dict[str, tuple[str, ...]]:
    """The label values a config declares (``[metrics] queues``, ``[metrics.declared]``)."""
    return {
        "queue": settings.queues,
        "name": settings.declared_names,
        "type": settings.declared_types,
        "returncode": tuple(str(code) for code in settings.declared_returncodes),
    }


def label_text(value: str) -> str:
    """A label value that can always be written as UTF-8 (a lone surrogate is escaped)."""
    if value.isascii():
        return value
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


class LabelCap:
    """Caps the distinct values of open-ended labels; the rest become ``other``.

    Declared values (flux-core's own, :data:`BUILTIN_DECLARED`, and what the operator and
    the instance declare, :meth:`declare`) always keep their own series and do not count
    toward the cap; only undeclared values compete for its ``limit`` places.
    """

    def __init__(
        self,
        limit: int,
        overflow: Counter,
        declared: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        self.limit = limit
        self._seen: dict[str, set[str]] = {label: set() for label in CAPPED_LABELS}
        #: Declared values by origin ("builtin", "config", "instance"), then by label.
        self._origins: dict[str, dict[str, frozenset[str]]] = {"builtin": dict(BUILTIN_DECLARED)}
        self._declared: dict[str, frozenset[str]] = {}
        #: Declared values given a series so far, by label (they count if undeclared later).
        self._used: dict[str, set[str]] = {label: set() for label in CAPPED_LABELS}
        self._overflow = overflow
        #: Lookups (the cold path: once per new series) and declarations (a reload, a
        #: connect) come from different threads.
        self._lock = threading.Lock()
        for label in CAPPED_LABELS:
            overflow.labels(label)
        self.declare("config", declared or {})

    def set_limit(self, limit: int) -> None:
        """Change the cap from the next new value on (a reload).

        Values already admitted keep their series; raising it admits values that were
        becoming ``other``; lowering it below the number held admits no new value. One
        store, read once per unseen value, so it needs no lock.
        """
        self.limit = limit

    def declare(self, origin: str, declared: Mapping[str, Iterable[str]]) -> None:
        """Set the values ``origin`` declares, per label (replacing what it declared before).

        Origins: ``config`` (the file, again on a reload) and ``instance`` (the queues the
        Flux instance is configured with). From the next lookup on, a declared value gets
        its own series, also one that was becoming ``other``, and no longer counts toward
        the cap; a value no longer declared keeps its series and counts again.
        """
        unknown = set(declared) - set(CAPPED_LABELS)
        if unknown:
            raise ValueError(f"not a capped label: {', '.join(sorted(unknown))}")
        values = {label: frozenset(map(label_text, vs)) for label, vs in declared.items()}
        with self._lock:
            self._origins[origin] = values
            self._declared = {
                label: frozenset().union(*(o.get(label, ()) for o in self._origins.values()))
                for label in CAPPED_LABELS
            }
            for label, now in self._declared.items():
                self._seen[label] -= now  # now declared: frees its place under the cap
                self._seen[label] |= self._used[label] - now  # no longer declared: counts

    def declared(self, label: str) -> frozenset[str]:
        """The values of ``label`` declared now (every origin)."""
        return self._declared[label]

    def __call__(self, label: str, value: str) -> str:
        """Return ``value`` if declared, known or there is room for it, else ``other``.

        ``value`` comes back escaped if it cannot be written as UTF-8 (:func:`label_text`).
        """
        value = label_text(value)
        with self._lock:
            if value in self._declared[label]:
                self._used[label].add(value)
                return value
            seen = self._seen[label]
            if value in seen:
                return value
            if len(seen) < self.limit:
                seen.add(value)
                return value
        self._overflow.labels(label).inc()
        return OTHER


class JobMetrics:
    """The ``flux_*`` metric families."""

    def __init__(self, registry: CollectorRegistry, buckets: Buckets) -> None:
        own = _WithoutCreated()

        def counter(name: str, doc: str, labels: Iterable[str]) -> Counter:
            return own.add(Counter(name, doc, list(labels), registry=None))

        def histogram(
            name: str, doc: str, labels: Iterable[str], bounds: tuple[float, ...]
        ) -> Histogram:
            return own.add(Histogram(name, doc, list(labels), registry=None, buckets=bounds))

        self.events = counter(
            "flux_job_events_total",
            "Job eventlog entries seen, by eventlog (main, exec) and event name.",
            ("queue", "eventlog", "name"),
        )
        self.submitted = counter("flux_jobs_submitted", "Jobs submitted.", ("queue",))
        self.finished = counter(
            "flux_jobs_finished", "Jobs that reached INACTIVE, by result.", ("queue", "result")
        )
        self.exceptions = counter(
            "flux_job_exceptions",
            "Job exception events, by type and severity (0 is fatal).",
            ("queue", "type", "severity"),
        )
        self.exited = counter(
            "flux_jobs_exited",
            "Jobs that ran, by return code as flux jobs reports it (negative: signal).",
            ("queue", "returncode"),
        )
        self.state_duration = histogram(
            "flux_job_state_duration_seconds",
            "Time spent in a job state, observed once per visit when the job leaves it.",
            ("queue", "state"),
            buckets.wait,
        )
        self.cleanup_duration = histogram(
            "flux_job_cleanup_duration_seconds",
            "Time spent in CLEANUP (epilog, release), with short-phase buckets.",
            ("queue",),
            buckets.short,
        )
        self.queue_wait = histogram(
            "flux_job_queue_wait_seconds",
            "Submit to alloc, observed at alloc.",
            ("queue",),
            buckets.wait,
        )
        self.runtime = histogram(
            "flux_job_runtime_seconds",
            "RUN entered to CLEANUP entered (flux jobs' runtime), for jobs that ran.",
            ("queue", "result"),
            buckets.runtime,
        )
        self.walltime_used = histogram(
            "flux_job_walltime_used_ratio",
            "Runtime divided by the job's time limit, for jobs with a limit.",
            ("queue",),
            buckets.ratio,
        )
        self.start_latency = histogram(
            "flux_job_start_latency_seconds",
            "Alloc to start (job shells launched).",
            ("queue",),
            buckets.short,
        )
        self.perilog = histogram(
            "flux_job_perilog_duration_seconds",
            "Prolog or epilog duration, *-start to *-finish.",
            ("queue", "phase"),
            buckets.short,
        )
        #: The collector the families are registered through (hidden after a restore).
        self.collector = own
        registry.register(own)


class SelfMetrics:
    """The monitor's own health: the ``fluxmon_*`` families, and ``process_*``/``python_*``.

    The last two come from prometheus_client's process, platform and GC collectors,
    added by :meth:`register_runtime_collectors` (the daemon calls it; replay does not).
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        own = _WithoutCreated()
        self.build_info = own.add(
            Gauge(
                "fluxmon_build_info",
                "fluxmon build and the flux-core it talks to; always 1.",
                ["version", "flux_core_version", "python_version"],
                registry=None,
            )
        )
        self._build_labels = (__version__, "unknown", platform.python_version())
        self.build_info.labels(*self._build_labels).set(1)
        self.connected = own.add(
            Gauge("fluxmon_connected", "1 while the event stream is live.", registry=None)
        )
        self.ready = own.add(Gauge("fluxmon_ready", "1 once history is caught up.", registry=None))
        self.reconnects = own.add(
            Counter("fluxmon_reconnects", "Reconnections to the event source.", registry=None)
        )
        self.rewound = own.add(
            Counter(
                "fluxmon_jobs_rewound",
                "Jobs rebuilt from the broker's history after it contradicted fluxmon's.",
                registry=None,
            )
        )
        self.checkpoint_errors = own.add(
            Counter(
                "fluxmon_checkpoint_errors",
                "Checkpoint files (or saved metric families) not trusted or not written, by kind.",
                ["kind"],
                registry=None,
            )
        )
        for kind in CHECKPOINT_ERRORS:
            self.checkpoint_errors.labels(kind)
        self.processed = own.add(
            Counter("fluxmon_events_processed", "Events received from the source.", registry=None)
        )
        self.errors = own.add(
            Counter(
                "fluxmon_event_errors",
                "Input refused (events, replay lines, journal responses), by reason.",
                ["reason"],
                registry=None,
            )
        )
        for reason in REJECT_REASONS:
            self.errors.labels(reason)
        self.watches = own.add(
            Gauge("fluxmon_watches", "Open per-job eventlog watches.", ["eventlog"], registry=None)
        )
        for label in EVENTLOG_LABEL.values():
            self.watches.labels(label)
        self.watch_errors = own.add(
            Counter(
                "fluxmon_watch_errors",
                "Per-job eventlog watches that failed, by errno name.",
                ["errno"],
                registry=None,
            )
        )
        self.exec_abandoned_total = own.add(
            Counter(
                "fluxmon_exec_watches_abandoned",
                "Jobs whose exec eventlog was given up before its end (its later exec events "
                "are not counted), by reason.",
                ["reason"],
                registry=None,
            )
        )
        for reason in EXEC_ABANDON_REASONS:
            self.exec_abandoned_total.labels(reason)
        self.last_event = own.add(
            Gauge(
                "fluxmon_last_event_timestamp_seconds",
                "Timestamp of the newest event seen.",
                registry=None,
            )
        )
        self.lag = own.add(
            Histogram(
                "fluxmon_event_lag_seconds",
                "Receive time minus event timestamp, for live main eventlog events.",
                registry=None,
                buckets=LAG_BUCKETS,
            )
        )
        self.label_overflow = own.add(
            Counter(
                "fluxmon_label_overflow",
                "Label values replaced by 'other' because the label's cap was reached.",
                ["label"],
                registry=None,
            )
        )
        self.internal_errors = own.add(
            Counter(
                "fluxmon_internal_errors",
                "Exceptions raised inside fluxmon while handling an event, by where; "
                "the event still counts as applied.",
                ["where"],
                registry=None,
            )
        )
        self.log_dropped = own.add(
            Counter(
                "fluxmon_log_records_dropped",
                "Log records dropped because the log buffer was full, by reason.",
                ["reason"],
                registry=None,
            )
        )
        self.healthy = own.add(
            Gauge(
                "fluxmon_healthy",
                "1 while the event loop turns (what /healthz says), 0 while it is stalled.",
                registry=None,
            )
        )
        registry.register(own)
        self._registry = registry

    def register_runtime_collectors(self) -> None:
        """Add prometheus_client's process, platform and GC collectors to the registry.

        They give the ``process_*`` (read from Linux ``/proc``) and ``python_*`` families
        of this process: the daemon has them, ``fluxmon replay`` does not, so that the
        exposition it prints depends on its input only.
        """
        ProcessCollector(registry=self._registry)
        PlatformCollector(registry=self._registry)
        GCCollector(registry=self._registry)

    def watch_opened(self, eventlog: str) -> None:
        """A per-job watch was opened (``WatchStats``)."""
        self.watches.labels(EVENTLOG_LABEL.get(eventlog, OTHER)).inc()

    def watch_closed(self, eventlog: str) -> None:
        """A per-job watch ended (``WatchStats``)."""
        self.watches.labels(EVENTLOG_LABEL.get(eventlog, OTHER)).dec()

    def watch_failed(self, errno_name: str) -> None:
        """A per-job watch failed (``WatchStats``)."""
        self.watch_errors.labels(errno_name).inc()

    def exec_abandoned(self, reason: str) -> None:
        """A job's exec eventlog was given up (``WatchStats``)."""
        self.exec_abandoned_total.labels(reason).inc()

    def set_flux_version(self, version: str) -> None:
        """Record the flux-core version once the source knows it."""
        self.build_info.remove(*self._build_labels)
        self._build_labels = (self._build_labels[0], version, self._build_labels[2])
        self.build_info.labels(*self._build_labels).set(1)


class _Observations:
    """One histogram child's observations not yet handed to prometheus_client."""

    __slots__ = ("bounds", "child", "counts", "dirty", "exemplars", "total")

    def __init__(self, child: Histogram) -> None:
        self.child = child
        self.dirty = False
        #: The child's upper bounds, ``+Inf`` last (prometheus_client's own list).
        self.bounds: list[float] = child._upper_bounds
        self.counts = [0] * len(self.bounds)
        self.total = 0.0
        #: Bucket index -> (jobid, value) of the last observation with an exemplar.
        self.exemplars: dict[int, tuple[int, float]] = {}


class Pending:
    """Counter increments and histogram observations added up until :meth:`flush`.

    prometheus_client takes a lock and (for an exemplar) validates and timestamps it on
    every ``inc`` and ``observe``; added up here, a batch costs one ``inc`` per counter
    series, and per histogram series one ``inc`` of its sum, one per bucket hit and one
    exemplar per bucket (the last, which is all a scrape shows of a bucket's exemplars).
    The result is the same as calling ``inc``/``observe`` for each, except that an
    exemplar's timestamp is the flush's. Histogram children are read through
    prometheus_client's ``_upper_bounds``, ``_sum`` and ``_buckets`` (see
    ``tests/test_metrics.py``, which checks the sums match ``observe``'s).
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.counts: dict[Counter, float] = {}
        self._observations: dict[Histogram, _Observations] = {}
        self._dirty: list[_Observations] = []
        self._clock = clock

    def inc(self, child: Counter, amount: float = 1.0) -> None:
        """Add ``amount`` to a counter child at the next flush."""
        counts = self.counts
        counts[child] = counts.get(child, 0.0) + amount

    def observe(self, child: Histogram, amount: float, jobid: int | None = None) -> None:
        """Observe ``amount`` at the next flush, with a ``jobid`` exemplar unless None."""
        pending = self._observations.get(child)
        if pending is None:
            pending = self._observations[child] = _Observations(child)
        if not pending.dirty:
            pending.dirty = True
            self._dirty.append(pending)
        pending.total += amount
        if isnan(amount):  # in the sum and in no bucket, as ``observe`` does
            return
        index = bisect_left(pending.bounds, amount)  # the first bound >= amount
        pending.counts[index] += 1
        if jobid is not None:
            pending.exemplars[index] = (jobid, amount)

    def flush(self) -> None:
        """Hand everything added up to prometheus_client, and start afresh."""
        counts = self.counts
        if counts:
            for child, amount in counts.items():
                child.inc(amount)
            counts.clear()
        dirty = self._dirty
        if not dirty:
            return
        now = self._clock()
        for pending in dirty:
            histogram = pending.child
            histogram._sum.inc(pending.total)
            pending.total = 0.0
            pending.dirty = False
            buckets = histogram._buckets
            counts_of = pending.counts
            for index, count in enumerate(counts_of):
                if count:
                    buckets[index].inc(count)
                    counts_of[index] = 0
            if pending.exemplars:
                for index, (jobid, amount) in pending.exemplars.items():
                    buckets[index].set_exemplar(Exemplar({"jobid": f58(jobid)}, amount, now))
                pending.exemplars.clear()
        dirty.clear()


class _QueueSeries:
    """Children of every job metric for one queue label value, created on first use."""

    __slots__ = (
        "cleanup",
        "events",
        "exceptions",
        "exited",
        "finished",
        "label",
        "launch",
        "perilog",
        "queue_wait",
        "runtime",
        "state",
        "submitted",
        "walltime",
    )

    def __init__(self, label: str, m: JobMetrics) -> None:
        self.label = label
        self.events: dict[tuple[str, str], Counter] = {}
        self.exceptions: dict[tuple[str, int], Counter] = {}
        self.exited: dict[int, Counter] = {}
        self.submitted = m.submitted.labels(label)
        self.finished = {r: m.finished.labels(label, r) for r in RESULTS}
        self.runtime = {r: m.runtime.labels(label, r) for r in RESULTS}
        self.state: dict[str, Histogram] = {
            s: m.state_duration.labels(label, s) for s in METRIC_STATES
        }
        self.cleanup = m.cleanup_duration.labels(label)
        self.queue_wait = m.queue_wait.labels(label)
        self.walltime = m.walltime_used.labels(label)
        self.launch = m.start_latency.labels(label)
        self.perilog = {p: m.perilog.labels(label, p) for p in PERILOG_PHASES}


class MetricsSink(NullSink):
    """Turns the tracker's calls into job metrics (a :class:`~fluxmon.tracker.Sink`)."""

    #: This sink's ``where`` in ``fluxmon_internal_errors_total``.
    kind: Final = "metrics"

    def __init__(
        self,
        job_metrics: JobMetrics,
        self_metrics: SelfMetrics,
        cap: LabelCap,
        *,
        exemplars: bool = True,
    ) -> None:
        self._m = job_metrics
        self._self = self_metrics
        self._cap = cap
        self._exemplars = exemplars
        self._queues: dict[str, _QueueSeries] = {}  # raw queue name -> series
        self._by_label: dict[str, _QueueSeries] = {}  # label value -> series
        self._errors = {r: self_metrics.errors.labels(r) for r in REJECT_REASONS}
        self._pending = Pending()
        #: The pending counter increments (the hot path adds to it directly).
        self._counts = self._pending.counts
        self._batching = False

    # -- label resolution (cold path) -------------------------------------------------

    def series(self, queue: str) -> _QueueSeries:
        """The children for a raw queue name (capped; every known series starts at 0)."""
        found = self._queues.get(queue)
        if found is not None:
            return found
        label = self._cap("queue", queue)
        found = self._by_label.get(label)
        if found is None:
            found = _QueueSeries(label, self._m)
            self._by_label[label] = found
        if label == queue:
            self._queues[queue] = found
        return found

    def declare_queues(self, names: Sequence[str]) -> None:
        """The instance's configured queues keep their own series, at 0 from now on."""
        self._cap.declare("instance", {"queue": names})
        for name in names:
            self.series(name)

    def queue_label(self, queue: str) -> str:
        """The label value a raw queue name is exported under."""
        return self.series(queue).label

    def known_queue_labels(self) -> list[str]:
        """Queue label values with series so far."""
        return sorted(self._by_label)

    def _event_child(self, qs: _QueueSeries, eventlog: str, name: str) -> Counter:
        key = (eventlog, name)
        label = EVENTLOG_LABEL.get(eventlog, OTHER)
        capped = self._cap("name", name)
        child = self._m.events.labels(qs.label, label, capped)
        if capped == name:
            qs.events[key] = child
        return child

    def set_exemplars(self, on: bool) -> None:
        """Attach exemplars, or not, from the next observation on (a reload)."""
        self._exemplars = on

    # -- batches ----------------------------------------------------------------------

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Add the block's updates up and hand them to prometheus_client at its end.

        Outside a batch every call updates the metrics at once. The pipeline holds a
        batch per batch of events, under its lock; nested batches flush at the outer end.
        """
        if self._batching:
            yield
            return
        self._batching = True
        try:
            yield
        finally:
            self._batching = False
            self._pending.flush()

    # -- Sink -------------------------------------------------------------------------

    def job_event(self, job: Job, event: JobEvent) -> None:
        """Count the event (hot path: two dict lookups and an addition)."""
        qs = self._queues.get(job.queue) or self.series(job.queue)
        child = qs.events.get((event.eventlog, event.name))
        if child is None:
            child = self._event_child(qs, event.eventlog, event.name)
        counts = self._counts
        counts[child] = counts.get(child, 0.0) + 1.0
        if event.name == "submit" and event.eventlog == MAIN:
            counts[qs.submitted] = counts.get(qs.submitted, 0.0) + 1.0
        if not self._batching:
            self._pending.flush()

    def state_left(self, job: Job, state: JobState, seconds: float, event: JobEvent) -> None:
        """Observe one visit of a state."""
        qs = self._queues.get(job.queue) or self.series(job.queue)
        jobid = job.jobid if self._exemplars else None
        observe = self._pending.observe
        observe(qs.state[state], seconds, jobid)
        if state == "CLEANUP":
            observe(qs.cleanup, seconds, jobid)
        if not self._batching:
            self._pending.flush()

    def queued(self, job: Job, seconds: float, event: JobEvent) -> None:
        """Observe a queue wait."""
        self._observe(self.series(job.queue).queue_wait, seconds, job)

    def launched(self, job: Job, seconds: float, event: JobEvent) -> None:
        """Observe a start latency."""
        self._observe(self.series(job.queue).launch, seconds, job)

    def perilog(self, job: Job, phase: str, seconds: float, event: JobEvent) -> None:
        """Observe a prolog or epilog."""
        child = self.series(job.queue).perilog.get(phase)
        if child is not None:
            self._observe(child, seconds, job)

    def exception(self, job: Job, etype: str, severity: int, event: JobEvent) -> None:
        """Count an exception by type and severity."""
        qs = self.series(job.queue)
        key = (etype, severity)
        child = qs.exceptions.get(key)
        if child is None:
            ctype = self._cap("type", etype)
            csev = self._cap("severity", str(severity))
            child = self._m.exceptions.labels(qs.label, ctype, csev)
            if ctype == etype and csev == str(severity):
                qs.exceptions[key] = child
        self._inc(child)

    def job_finished(self, job: Job) -> None:
        """Count the result, return code, runtime and walltime use of a finished job."""
        qs = self.series(job.queue)
        result = job.result or "failed"
        pending = self._pending
        pending.inc(qs.finished[result])
        if job.ran:
            jobid = job.jobid if self._exemplars else None
            runtime = job.runtime
            if runtime is not None:
                pending.observe(qs.runtime[result], runtime, jobid)
                if job.duration_limit > 0:
                    pending.observe(qs.walltime, runtime / job.duration_limit, jobid)
            code = job.returncode
            if code is not None:
                child = qs.exited.get(code)
                if child is None:
                    capped = self._cap("returncode", str(code))
                    child = self._m.exited.labels(qs.label, capped)
                    if capped == str(code):
                        qs.exited[code] = child
                pending.inc(child)
        if not self._batching:
            pending.flush()

    def event_rejected(self, reason: str, detail: str, event: JobEvent | None) -> None:
        """Count a refusal by reason."""
        child = self._errors.get(reason)
        if child is None:
            child = self._self.errors.labels(reason)
            self._errors[reason] = child
        self._inc(child)

    def _inc(self, child: Counter) -> None:
        self._pending.inc(child)
        if not self._batching:
            self._pending.flush()

    def _observe(self, child: Histogram, seconds: float, job: Job) -> None:
        self._pending.observe(child, seconds, job.jobid if self._exemplars else None)
        if not self._batching:
            self._pending.flush()


Snapshot = Mapping[tuple[str, JobState], tuple[int, float]]


class SnapshotCollector(Collector):
    """Computes ``flux_jobs``, the oldest-entry gauges and tracked jobs at scrape time.

    ``snapshot`` returns the per-(queue label, state) counts and earliest entry
    timestamps, the known queue labels and the number of tracked jobs; it is
    expected to take whatever lock guards the tracker.
    """

    def __init__(self, snapshot: Callable[[], tuple[Snapshot, list[str], int]]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        """Yield the gauges from one consistent snapshot."""
        counts, queues, tracked = self._snapshot()
        jobs = GaugeMetricFamily("flux_jobs", "Jobs now in each state.", labels=["queue", "state"])
        oldest = GaugeMetricFamily(
            "flux_jobs_oldest_state_entry_timestamp_seconds",
            "When the longest-waiting job in each state entered it.",
            labels=["queue", "state"],
        )
        for queue in sorted(set(queues) | {q for q, _ in counts}):
            for state in METRIC_STATES:
                found = counts.get((queue, state))
                jobs.add_metric([queue, state], found[0] if found else 0)
                if found:
                    oldest.add_metric([queue, state], found[1])
        yield jobs
        yield oldest
        tracked_family = GaugeMetricFamily(
            "fluxmon_tracked_jobs", "Jobs held by the tracker (active jobs)."
        )
        tracked_family.add_metric([], tracked)
        yield tracked_family

    def describe(self) -> Iterable[Metric]:
        """Describe nothing, so registration does not run a snapshot."""
        return []
