"""The checkpoint: what was delivered (and the metrics it made), kept on disk across restarts."""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Final

from structlog.typing import FilteringBoundLogger

CHECKPOINT_FILE: Final = "fluxmon.checkpoint.json"
#: The ``version`` this fluxmon writes and the only one it trusts.
FORMAT_VERSION: Final = 1
#: Seconds a checkpoint's timestamps may lie ahead of this host's clock (clock skew
#: between this host and the broker's); further ahead, the file is not trusted.
MAX_SKEW: Final = 300.0
#: Most jobs a checkpoint may name in ``held`` (cleans held for exec eventlogs).
MAX_HELD: Final = 1_000_000


class InvalidCheckpoint(ValueError):
    """A checkpoint file that fluxmon did not write as it stands."""


def parse(data: Any, now: float) -> tuple[float, float]:
    """``(since, exec_since)`` of a decoded checkpoint, or :class:`InvalidCheckpoint`.

    Trusted only as fluxmon writes it: an object with ``version`` 1 and ``since`` and
    ``exec_since`` floats (never booleans or integers), finite, ``since`` positive, and
    none more than :data:`MAX_SKEW` seconds ahead of ``now`` (wall clock).
    """
    if not isinstance(data, dict):
        raise InvalidCheckpoint(f"not a JSON object but {type(data).__name__}")
    version = data.get("version")
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise InvalidCheckpoint(
            f"format version {version!r}, not {FORMAT_VERSION} (not written by this fluxmon)"
        )
    times = []
    for key in ("since", "exec_since"):
        value = data.get(key)
        if type(value) is not float:
            raise InvalidCheckpoint(
                f"{key} is {json.dumps(value)}, not a timestamp in seconds with a fraction"
            )
        if not math.isfinite(value) or value < 0:
            raise InvalidCheckpoint(f"{key} is {value}, not a finite timestamp >= 0")
        if value > now + MAX_SKEW:
            raise InvalidCheckpoint(
                f"{key} is {value - now:.0f} s in the future (more than {MAX_SKEW:g} s of skew)"
            )
        times.append(value)
    if times[0] <= 0:
        raise InvalidCheckpoint("since is 0: fluxmon never writes a checkpoint before an event")
    return times[0], times[1]


def parse_held(data: dict[str, Any]) -> frozenset[int]:
    """The ``held`` jobids of a checkpoint that :func:`parse` accepted (absent: none).

    Jobs whose ``clean`` was at or before ``since`` but not yet delivered (held back
    until their exec eventlog was read): their clean is still to be counted.
    """
    held = data.get("held", [])
    if not isinstance(held, list) or len(held) > MAX_HELD:
        raise InvalidCheckpoint(f"held is not a list of at most {MAX_HELD} jobids")
    for jobid in held:
        if type(jobid) is not int or not 0 <= jobid < 2**64:
            raise InvalidCheckpoint(f"held has {json.dumps(jobid)}, not a jobid")
    return frozenset(held)


#: What a checkpoint says of each job active at its save: (jobid, main events
#: delivered, exec events delivered).
JobCounts = dict[int, tuple[int, int]]
#: A job's main eventlog as delivered, in brief: how many events, and the timestamp of
#: the last of them (what a restart compares the broker's history with).
Fingerprint = tuple[int, float]
#: Most finished jobs a checkpoint names in ``finished`` (the newest).
FINISHED_SAVED: Final = 1024


def _fingerprints(data: dict[str, Any], key: str, limit: int) -> dict[int, Fingerprint]:
    """``key``'s ``[jobid, main, timestamp]`` entries (absent: none)."""
    entries = data.get(key, [])
    if not isinstance(entries, list) or len(entries) > limit:
        raise InvalidCheckpoint(f"{key} is not a list of at most {limit} entries")
    out: dict[int, Fingerprint] = {}
    for entry in entries:
        if (
            not isinstance(entry, list)
            or len(entry) != 3
            or type(entry[0]) is not int
            or not 0 <= entry[0] < 2**64
            or type(entry[1]) is not int
            or entry[1] < 1
            or type(entry[2]) is not float
            or not math.isfinite(entry[2])
        ):
            raise InvalidCheckpoint(f"{key} has {json.dumps(entry)}, not [jobid, main, timestamp]")
        out[entry[0]] = (entry[1], entry[2])
    return out


def parse_fingerprints(
    data: dict[str, Any],
) -> tuple[dict[int, Fingerprint], dict[int, Fingerprint]]:
    """``active`` and ``finished`` fingerprints of a checkpoint :func:`parse` accepted.

    For each job active at the save with main events delivered, and for the newest
    :data:`FINISHED_SAVED` jobs that finished: how many main events were delivered and
    the timestamp of the last. Absent (a checkpoint from before them): none.
    """
    return _fingerprints(data, "active", MAX_HELD), _fingerprints(data, "finished", FINISHED_SAVED)


def parse_resource_since(data: dict[str, Any], now: float) -> float:
    """``resources_since`` of a checkpoint :func:`parse` accepted (absent: 0).

    The newest resource event delivered; with 0 every resource event is history.
    """
    value = data.get("resources_since", 0.0)
    if type(value) is not float or not math.isfinite(value) or value < 0:
        raise InvalidCheckpoint(f"resources_since is {json.dumps(value)}, not a timestamp >= 0")
    if value > now + MAX_SKEW:
        raise InvalidCheckpoint(
            f"resources_since is {value - now:.0f} s in the future (more than {MAX_SKEW:g} s)"
        )
    return value


def parse_jobs(data: dict[str, Any]) -> tuple[float | None, JobCounts | None]:
    """``submits`` and ``jobs`` of a checkpoint that :func:`parse` accepted (absent: None).

    ``submits`` is the newest ``submit`` timestamp delivered (the journal sends submits
    in time order, the other events not); ``jobs`` lists each job active at the save
    with how many of its main and exec events were delivered.
    """
    submits = data.get("submits")
    jobs = data.get("jobs")
    if submits is None and jobs is None:
        return None, None
    if type(submits) is not float or not math.isfinite(submits) or submits < 0:
        raise InvalidCheckpoint(f"submits is {json.dumps(submits)}, not a timestamp >= 0")
    if not isinstance(jobs, list) or len(jobs) > MAX_HELD:
        raise InvalidCheckpoint(f"jobs is not a list of at most {MAX_HELD} entries")
    counts: JobCounts = {}
    for entry in jobs:
        if (
            not isinstance(entry, list)
            or len(entry) != 3
            or any(type(n) is not int or n < 0 for n in entry)
            or entry[0] >= 2**64
        ):
            raise InvalidCheckpoint(f"jobs has {json.dumps(entry)}, not [jobid, main, exec]")
        counts[entry[0]] = (entry[1], entry[2])
    return submits, counts


class Checkpoint:
    """The newest main and exec event timestamps delivered, in ``CHECKPOINT_FILE``.

    With it, events that happen while fluxmon is down (restart, upgrade) are counted
    and logged once when it comes back, instead of being taken for history.
    """

    def __init__(self, directory: Path) -> None:
        self.path = directory / CHECKPOINT_FILE
        self._written: tuple[object, ...] | None = None
        self._warned = False
        self._lock = threading.Lock()  # saves come from the log writer's thread
        #: The ``held`` jobids :meth:`load` read.
        self.held: frozenset[int] = frozenset()
        #: The ``submits`` and ``jobs`` :meth:`load` read (None: a file without them).
        self.submits: float | None = None
        self.jobs: JobCounts | None = None
        #: The saved ``metrics`` :meth:`load` read, unchecked (None: a file without them;
        #: :meth:`fluxmon.persist.MetricsState.restore` checks them).
        self.metrics: object = None
        #: The ``active`` and ``finished`` fingerprints :meth:`load` read.
        self.active: dict[int, Fingerprint] = {}
        self.finished: dict[int, Fingerprint] = {}
        #: The newest resource event delivered (0: none, or a file without it).
        self.resource_since = 0.0
        #: Counts a problem by kind (``fluxmon_checkpoint_errors_total``; default: nothing).
        self.on_error: Callable[[str], None] = lambda kind: None

    def load(self, log: FilteringBoundLogger, now: float) -> tuple[float, float]:
        """(since, exec_since) from the file; (0, 0) when absent or not to be trusted.

        An unreadable file (``checkpoint.unreadable``) or one that is not what fluxmon
        writes (``checkpoint.invalid``, see :func:`parse`) is logged and ignored: the
        safe choice is to rebuild state from the broker's history silently, so nothing
        is counted twice (what happened while fluxmon was down is then not counted).
        """
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return 0.0, 0.0
        except (OSError, UnicodeDecodeError) as err:
            log.warning("checkpoint.unreadable", path=str(self.path), error=str(err))
            self.on_error("unreadable")
            return 0.0, 0.0
        try:
            data = json.loads(text)
            since, exec_since = parse(data, now)
            held = parse_held(data)
            submits, jobs = parse_jobs(data)
            active, finished = parse_fingerprints(data)
            resource_since = parse_resource_since(data, now)
        except (ValueError, RecursionError) as err:  # InvalidCheckpoint, JSONDecodeError
            log.warning("checkpoint.invalid", path=str(self.path), error=str(err))
            self.on_error("invalid")
            return 0.0, 0.0
        self.held, self.submits, self.jobs = held, submits, jobs
        self.metrics = data.get("metrics")
        self.active, self.finished = active, finished
        self.resource_since = resource_since
        return since, exec_since

    def save(
        self,
        since: float,
        exec_since: float,
        log: FilteringBoundLogger,
        held: Iterable[int] = (),
        submits: float | None = None,
        jobs: JobCounts | None = None,
        metrics: object = None,
        fingerprints: tuple[Mapping[int, Fingerprint], Mapping[int, Fingerprint]] | None = None,
        resource_since: float = 0.0,
    ) -> None:
        """Write durably, only when it changed: a temporary file, fsync, rename, fsync.

        ``metrics`` (a :meth:`fluxmon.persist.MetricsState.capture`) is saved with the
        position it was captured at, in the same file, so the two never disagree.
        """
        with self._lock:
            self._save(
                since,
                exec_since,
                log,
                frozenset(held),
                submits,
                jobs,
                metrics,
                fingerprints,
                resource_since,
            )

    def _save(
        self,
        since: float,
        exec_since: float,
        log: FilteringBoundLogger,
        held: frozenset[int],
        submits: float | None = None,
        jobs: JobCounts | None = None,
        metrics: object = None,
        fingerprints: tuple[Mapping[int, Fingerprint], Mapping[int, Fingerprint]] | None = None,
        resource_since: float = 0.0,
    ) -> None:
        state = (since, exec_since, held, submits, jobs, metrics, fingerprints, resource_since)
        if since <= 0 or self._written == state:
            return
        tmp = self.path.with_suffix(".tmp")
        data: dict[str, object] = {
            "version": FORMAT_VERSION,
            "since": float(since),
            "exec_since": float(exec_since),
        }
        if held:
            data["held"] = sorted(held)
        if submits is not None and jobs is not None:
            data["submits"] = float(submits)
            data["jobs"] = [[jobid, *counts] for jobid, counts in sorted(jobs.items())]
        if fingerprints is not None:
            active, finished = fingerprints
            data["active"] = [[jobid, n, last] for jobid, (n, last) in sorted(active.items())]
            data["finished"] = [[jobid, n, last] for jobid, (n, last) in finished.items()]
        if resource_since > 0:
            data["resources_since"] = float(resource_since)
        if metrics is not None:
            data["metrics"] = metrics
        try:
            with tmp.open("w") as file:
                file.write(json.dumps(data) + "\n")
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, self.path)
            directory = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        except OSError as err:
            if not self._warned:
                self._warned = True
                log.warning("checkpoint.unwritable", path=str(self.path), error=str(err))
            self.on_error("unwritable")
            return
        self._written = state
