"""The pure resource state of the instance: nodes, their cores and GPUs, drains, allocations.

:class:`ResourceTracker` is fed :class:`~fluxmon.events.ResourceEvent` values (the
instance's resource eventlog, as flux-core's ``resource.journal`` streams it) and, as a
job :class:`~fluxmon.tracker.Sink` that also sees history, every job event: ``alloc``
(with the job's R) takes cores and GPUs, ``free`` (or ``release`` with ``final``, or a
``clean`` or ``invalidate`` without either) gives them back. It does no I/O and reads no
clock: every duration comes from event timestamps. Changes reach its
:class:`ResourceSink` sinks; refused input reaches ``on_reject`` (reason, detail).

Event names and contexts, as flux-core 0.88 posts them (src/modules/resource/):

* ``restart`` (monitor.c, journal only): ``ranks`` idset, ``online`` idset,
  ``nodelist`` hostlist; posted when the resource module starts, before
  ``resource-define`` on a dynamically discovered instance.
* ``resource-define`` (inventory.c): context ``method``; the journal response carries
  the instance R beside it, which the source puts in ``context["R"]``. Ranks excluded
  by the instance's config (``resource.exclude``) are in R but in no eventlog entry: a
  source that knows them adds ``context["exclude"]`` (an idset) and they are dropped.
* ``online``, ``offline``, ``torpid``, ``lively`` (monitor.c): ``idset``.
* ``drain`` (drain.c): ``idset``, ``nodelist``, ``reason`` (absent when none),
  ``overwrite`` (0, 1 or 2; absent in events of older brokers, replayed as 1). Per rank:
  a rank already drained with a reason is left alone unless ``overwrite``; otherwise
  its reason is set, and its drain time too if it was not drained or ``overwrite`` is 2.
* ``undrain`` (drain.c): ``idset``, ``nodelist``, ``overwrite`` (1: forced, where ranks
  not drained are allowed), ``reason`` optional.
* ``resource-update`` (inventory.c): ``expiration``; ``truncate`` (reslog.c): none.

Node state precedence (each node in exactly one ``flux_resource_nodes`` state):
``down`` (offline) before ``drained``/``draining`` (drained; draining while jobs
still hold cores on it) before ``torpid`` before ``up``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, TypeVar

from fluxmon.events import DEFAULT_QUEUE, MAIN, JobEvent, ResourceEvent
from fluxmon.hostlist import decode_hostlist, decode_idset
from fluxmon.tracker import BAD_INPUT, Job, NullSink

#: Resource event names flux-core posts (the ``name`` label values of
#: ``flux_resource_events_total``; any other name counts as ``other``).
RESOURCE_EVENT_NAMES: Final = (
    "restart",
    "resource-define",
    "online",
    "offline",
    "drain",
    "undrain",
    "torpid",
    "lively",
    "resource-update",
    "truncate",
)
#: Node states of ``flux_resource_nodes``, in precedence order.
NODE_STATES: Final = ("down", "drained", "draining", "torpid", "up")
#: States of ``flux_resource_cores`` and ``flux_resource_gpus``.
SLOT_STATES: Final = ("allocated", "free", "unavailable")
#: Resource modes a source reports (``fluxmon_resource_mode``).
RESOURCE_MODES: Final = ("journal", "poll")
#: Reasons resource input is refused (added to ``fluxmon_event_errors_total``).
RESOURCE_REJECT_REASONS: Final = ("unknown_rank", "not_drained", "before_define")
#: Most ranks an instance may have (an idset or R naming more is refused).
MAX_RANKS: Final = 1 << 18
#: Longest drain reason label (after normalising).
MAX_REASON_CHARS: Final = 64

#: Change names given to :meth:`ResourceSink.nodes_changed`.
CHANGES: Final = ("online", "offline", "drain", "drain_update", "undrain", "torpid", "lively")


class Node:
    """One broker rank of the instance; sinks read it, never write it."""

    __slots__ = (
        "alloc_cores",
        "alloc_gpus",
        "cores",
        "down_since",
        "drained",
        "drained_since",
        "gpus",
        "host",
        "jobs",
        "online",
        "properties",
        "rank",
        "reason",
        "torpid",
    )

    def __init__(self, rank: int, host: str) -> None:
        self.rank = rank
        self.host = host
        self.cores = 0
        self.gpus = 0
        self.properties: frozenset[str] = frozenset()
        self.online = False
        self.torpid = False
        self.drained = False
        self.drained_since: float | None = None
        self.reason: str | None = None
        #: When an ``offline`` event took it down (None: up, or down since the start).
        self.down_since: float | None = None
        self.alloc_cores = 0
        self.alloc_gpus = 0
        self.jobs = 0

    @property
    def state(self) -> str:
        """The node's ``flux_resource_nodes`` state (see the module's precedence)."""
        if not self.online:
            return "down"
        if self.drained:
            return "draining" if self.jobs else "drained"
        if self.torpid:
            return "torpid"
        return "up"


class ResourceSink(Protocol):
    """What the resource tracker tells, synchronously, in event order (reported events only)."""

    def resource_event(self, event: ResourceEvent) -> None:
        """An event was accepted (counted once, also when it changed nothing)."""

    def nodes_changed(
        self,
        change: str,
        nodes: Sequence[Node],
        event: ResourceEvent,
        seconds: Sequence[float | None],
    ) -> None:
        """``nodes`` changed (one of :data:`CHANGES`); ``seconds`` is parallel to ``nodes``.

        For ``online``: how long each was down (None when no ``offline`` took it down);
        for ``undrain``: how long each was drained; otherwise all None.
        """


@dataclass
class QueueSlots:
    """Cores and GPUs of one queue's nodes by state (allocated, free, unavailable)."""

    cores: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SLOT_STATES, 0))
    gpus: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SLOT_STATES, 0))


@dataclass
class ResourceSnapshot:
    """What the resource gauges show at one scrape."""

    nodes: dict[str, int]
    queues: dict[str, QueueSlots]
    oldest_drain: float | None
    mode: str | None


def _ignore_reject(reason: str, detail: str) -> None:
    """The default ``on_reject``: nothing."""


def _idset(context: Mapping[str, Any], key: str = "idset") -> list[int]:
    value = context.get(key)
    if not isinstance(value, str):
        raise ValueError(f"context has no {key!r} idset string")
    return decode_idset(value, MAX_RANKS)


#: Decoded idsets and hostlists of R, by their text (and limit): R_lite shapes repeat
#: from job to job, so an alloc mostly finds its ``rank``, ``core`` and ``nodelist``
#: strings decoded already. Only short results are kept; text that does not decode is
#: not kept (decoding it again raises the same error).
_IDSETS: dict[str, tuple[int, ...]] = {}
_HOSTLISTS: dict[tuple[str, int], tuple[str, ...]] = {}
#: Most entries each memo holds (it is emptied when full), and the longest result kept.
MEMO_ENTRIES: Final = 4096
MEMO_LENGTH: Final = 256


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def _memoised(
    memo: dict[K, tuple[V, ...]], key: K, decode: Callable[[], Iterable[V]]
) -> tuple[V, ...]:
    """``tuple(decode())``, kept in ``memo`` under ``key`` when it is short."""
    found = memo.get(key)
    if found is None:
        found = tuple(decode())
        if len(found) <= MEMO_LENGTH:
            if len(memo) >= MEMO_ENTRIES:
                memo.clear()
            memo[key] = found
    return found


def _ids_of(text: object) -> Sequence[int]:
    """``decode_idset(text, MAX_RANKS)``, memoised for short results of string text."""
    if type(text) is not str:
        return decode_idset(text, MAX_RANKS)  # type: ignore[arg-type]  # raises
    return _memoised(_IDSETS, text, lambda: decode_idset(text, MAX_RANKS))


def _hosts_of(text: object, limit: int) -> Sequence[str]:
    """``decode_hostlist(text, limit)``, memoised for short results of string text."""
    if type(text) is not str:
        return decode_hostlist(text, limit)  # type: ignore[arg-type]  # raises
    return _memoised(_HOSTLISTS, (text, limit), lambda: decode_hostlist(text, limit))


def _count_ids(value: object) -> int:
    if value is None:
        return 0
    if not isinstance(value, str):
        raise ValueError("a children idset must be a string")
    return len(_ids_of(value))


def parse_R(R: object) -> tuple[dict[int, tuple[int, int]], list[str], dict[str, list[int]]]:
    """Cores and GPUs per rank, hostnames in rank order, and properties of an RFC 20 R.

    Raises ``ValueError`` (or another of :data:`~fluxmon.tracker.BAD_INPUT`) when R
    cannot be read; ``nodelist`` and ``properties`` are optional.
    """
    if not isinstance(R, Mapping):
        raise ValueError("R is not an object")
    execution = R.get("execution")
    if not isinstance(execution, Mapping):
        raise ValueError("R has no execution object")
    r_lite = execution.get("R_lite")
    if not isinstance(r_lite, list):
        raise ValueError("R has no R_lite list")
    ranks: dict[int, tuple[int, int]] = {}
    for entry in r_lite:
        if not isinstance(entry, Mapping):
            raise ValueError("an R_lite entry is not an object")
        rank_ids = _ids_of(entry.get("rank"))
        children = entry.get("children")
        if not isinstance(children, Mapping):
            raise ValueError("an R_lite entry has no children object")
        cores = _count_ids(children.get("core"))
        gpus = _count_ids(children.get("gpu"))
        for rank in rank_ids:
            old = ranks.get(rank, (0, 0))
            ranks[rank] = (old[0] + cores, old[1] + gpus)
        if len(ranks) > MAX_RANKS:
            raise ValueError(f"R names more than {MAX_RANKS} ranks")
    hosts: list[str] = []
    nodelist = execution.get("nodelist")
    if isinstance(nodelist, str):
        nodelist = [nodelist]
    if isinstance(nodelist, list):
        for part in nodelist:
            hosts.extend(_hosts_of(part, MAX_RANKS - len(hosts)))  # ValueError if not str
    properties: dict[str, list[int]] = {}
    props = execution.get("properties")
    if isinstance(props, Mapping):
        for name, ids in props.items():
            if isinstance(name, str) and isinstance(ids, str):
                properties[name] = list(_ids_of(ids))
    return ranks, hosts, properties


_DIGITS: Final = re.compile(r"\d+")
_BRACKETED: Final = re.compile(r"\S*\[[\d,\-]*\]\S*")
_PUNCT: Final = ".,;:()'\"<>"


def drain_reason_label(reason: str | None, hosts: Collection[str] = ()) -> str:
    """The ``reason`` label of a drain: ``none`` when empty, else the reason normalised.

    The rule: each word that is one of the instance's hostnames (punctuation around it
    aside) becomes ``HOST``, and so does each word with a bracketed range (a hostlist);
    then every run of digits becomes ``N``; whitespace is collapsed and the result cut
    to :data:`MAX_REASON_CHARS` characters. ``node17 bad disk 3`` → ``HOST bad disk N``.
    The label cap applies after this.
    """
    if not reason or not reason.strip():
        return "none"
    words = []
    for raw in reason.split():
        core = raw.strip(_PUNCT)
        if core and core in hosts:
            words.append(raw.replace(core, "HOST"))
        elif _BRACKETED.fullmatch(core):
            words.append("HOST")
        else:
            words.append(raw)
    text = _DIGITS.sub("N", " ".join(words))
    return text[:MAX_REASON_CHARS]


class ResourceTracker(NullSink):
    """Applies resource events and job allocations; a job tracker sink that sees history."""

    #: This sink's ``where`` in ``fluxmon_internal_errors_total``.
    kind: Final = "resources"
    #: The job tracker calls :meth:`job_event` for history events too (state, not counts).
    sees_history: Final = True

    def __init__(
        self,
        sinks: Sequence[ResourceSink] = (),
        *,
        on_reject: Callable[[str, str], None] = _ignore_reject,
    ) -> None:
        self.sinks: tuple[ResourceSink, ...] = tuple(sinks)
        self.on_reject = on_reject
        self.nodes: dict[int, Node] = {}
        #: True once ``restart`` or ``resource-define`` told which ranks exist.
        self.known = False
        #: True once ``resource-define`` gave the instance's R.
        self.defined = False
        self.expiration: float | None = None
        #: Ranks that are no node of the instance (``resource-define`` context ``exclude``,
        #: or named by ``restart`` but not by R): their events are ignored.
        self.excluded: frozenset[int] = frozenset()
        self.mode: str | None = None
        #: Each configured queue's required properties (None: one ``default`` queue).
        self.requires: dict[str, tuple[str, ...]] | None = None
        #: Ranks of each queue, and the queues each rank is in (by their tuple).
        self.queue_ranks: dict[str, list[int]] = {DEFAULT_QUEUE: []}
        self._groups: dict[tuple[str, ...], list[Node]] = {}
        self.properties: dict[str, frozenset[int]] = {}
        #: Job allocations: jobid -> (queue, {rank: (cores, gpus)}) as added to nodes.
        self.allocs: dict[int, tuple[str, dict[int, tuple[int, int]]]] = {}
        #: Timestamp of the newest event applied (history or live); a checkpoint may keep
        #: it and set it back before the first connect.
        self.counted_until: float | None = None
        #: :attr:`counted_until` at the last connect: history newer than it is reported.
        self.baseline: float | None = None
        self.rejected: dict[str, int] = {}
        self.sink_errors = 0
        self.on_sink_error: Callable[[str, Exception], None] = lambda kind, error: None

    # -- resource events -------------------------------------------------------------

    def apply(self, event: ResourceEvent, live: bool = True) -> bool:
        """Apply one resource event; return True if it was accepted.

        With ``live=False`` (history replayed on connect) the state is rebuilt and only
        events newer than :attr:`baseline` (what the source's history holds that was not
        applied before the (re)connect, see :meth:`connected`) are reported.
        """
        try:
            name = event.name
            ts = event.timestamp
            context = event.context
            ok = (
                type(name) is str
                and bool(name)
                and type(ts) in (float, int)
                and math.isfinite(ts)
                and isinstance(context, Mapping)
            )
        except BAD_INPUT as err:
            return self._reject("malformed", f"resource event: {type(err).__name__}: {err}")
        if not ok:
            return self._reject("malformed", "resource event fields have the wrong types")
        baseline = self.baseline
        report = live or (baseline is not None and ts > baseline)
        counted = self.counted_until
        if counted is None or ts > counted:
            self.counted_until = float(ts)
        try:
            handler = _HANDLERS.get(name)
            changes = handler(self, event) if handler is not None else []
        except BAD_INPUT as err:
            return self._reject("malformed", f"{name}: {type(err).__name__}: {err}")
        if changes is None:
            return False
        if report:
            for sink in self.sinks:
                try:
                    sink.resource_event(event)
                    for change, nodes, seconds in changes:
                        if nodes:
                            sink.nodes_changed(change, nodes, event, seconds)
                except Exception as error:
                    self.sink_errors += 1
                    self.on_sink_error(getattr(sink, "kind", type(sink).__name__), error)
        return True

    def connected(self) -> None:
        """The source (re)connected: its history up to what was applied is not reported again.

        At the first connect (nothing applied, no checkpoint) no history is reported.
        """
        self.baseline = self.counted_until

    def _reject(self, reason: str, detail: str) -> bool:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        self.on_reject(reason, detail)
        return False

    def _ranks(self, event: ResourceEvent) -> list[Node] | None:
        """The known nodes an event's ``idset`` names (unknown ranks refused, rest kept)."""
        if not self.known:
            self._reject("before_define", f"{event.name} before the instance's ranks are known")
            return None
        ids = _idset(event.context)
        nodes = [self.nodes[i] for i in ids if i in self.nodes]
        excluded = self.excluded
        missing = (
            [i for i in ids if i not in self.nodes and i not in excluded]
            if len(nodes) < len(ids)
            else []
        )
        if missing:
            self._reject(
                "unknown_rank",
                f"{event.name} names {len(missing)} rank(s) the instance lacks "
                f"(first {missing[0]})",
            )
        return nodes

    def _restart(self, event: ResourceEvent) -> _Changes:
        context = event.context
        ranks = _idset(context, "ranks")
        online = set(_idset(context, "online")) if "online" in context else set()
        nodelist = context.get("nodelist")
        hosts = decode_hostlist(nodelist, MAX_RANKS) if isinstance(nodelist, str) else []
        for i, rank in enumerate(ranks):
            host = hosts[i] if i < len(hosts) else str(rank)
            node = self.nodes.get(rank)
            if node is None:
                node = self.nodes[rank] = Node(rank, host)
            else:
                node.host = host
            node.online = rank in online
            node.torpid = False
            if node.online:
                node.down_since = None
        self.known = True
        self._regroup()
        return []

    def _define(self, event: ResourceEvent) -> _Changes:
        ranks, hosts, properties = parse_R(event.context.get("R"))
        exclude = event.context.get("exclude")
        excluded = set(decode_idset(exclude, MAX_RANKS)) if isinstance(exclude, str) else set()
        ordered = sorted(ranks)
        # Ranks a restart named that R lacks, and those the source says are excluded,
        # are no node of the instance: their events are ignored, not refused.
        excluded |= {r for r in self.nodes if r not in ranks}
        for rank in [r for r in self.nodes if r not in ranks or r in excluded]:
            del self.nodes[rank]
        self.excluded = frozenset(excluded)
        for i, rank in enumerate(ordered):
            if rank in excluded:
                continue
            node = self.nodes.get(rank)
            host = hosts[i] if i < len(hosts) else None
            if node is None:
                node = self.nodes[rank] = Node(rank, host or str(rank))
            elif host is not None:
                node.host = host
            node.cores, node.gpus = ranks[rank]
        self.properties = {name: frozenset(ids) for name, ids in properties.items()}
        for node in self.nodes.values():
            node.properties = frozenset(p for p, ids in self.properties.items() if node.rank in ids)
        self.known = self.defined = True
        expiration = _R_expiration(event.context.get("R"))
        if expiration is not None:
            self.expiration = expiration
        self._regroup()
        self._reallocate()
        return []

    def _online(self, event: ResourceEvent) -> _Changes:
        nodes = self._ranks(event)
        if nodes is None:
            return None
        ts = event.timestamp
        up = [n for n in nodes if not n.online]
        seconds: list[float | None] = []
        for node in up:
            node.online = True
            since = node.down_since
            seconds.append(None if since is None or ts < since else ts - since)
            node.down_since = None
        return [("online", up, seconds)]

    def _offline(self, event: ResourceEvent) -> _Changes:
        nodes = self._ranks(event)
        if nodes is None:
            return None
        down = [n for n in nodes if n.online]
        for node in down:
            node.online = False
            node.torpid = False
            node.down_since = event.timestamp
        return [("offline", down, [None] * len(down))]

    def _torpid(self, event: ResourceEvent) -> _Changes:
        nodes = self._ranks(event)
        if nodes is None:
            return None
        change = [n for n in nodes if not n.torpid]
        for node in change:
            node.torpid = True
        return [("torpid", change, [None] * len(change))]

    def _lively(self, event: ResourceEvent) -> _Changes:
        nodes = self._ranks(event)
        if nodes is None:
            return None
        change = [n for n in nodes if n.torpid]
        for node in change:
            node.torpid = False
        return [("lively", change, [None] * len(change))]

    def _drain(self, event: ResourceEvent) -> _Changes:
        context = event.context
        reason = context.get("reason")
        if reason is not None and not isinstance(reason, str):
            raise ValueError("drain reason is not a string")
        overwrite = context.get("overwrite", 1)
        if type(overwrite) is not int or overwrite not in (0, 1, 2):
            raise ValueError(f"drain overwrite {overwrite!r} is not 0, 1 or 2")
        nodes = self._ranks(event)
        if nodes is None:
            return None
        new: list[Node] = []
        updated: list[Node] = []
        for node in nodes:  # drain.c draininfo_drain_rank
            if not overwrite and node.drained and node.reason:
                continue
            if not node.drained or overwrite == 2:
                (updated if node.drained else new).append(node)
                node.drained = True
                node.drained_since = event.timestamp
            elif node.reason != reason:
                updated.append(node)
            node.reason = reason
        return [("drain", new, [None] * len(new)), ("drain_update", updated, [None] * len(updated))]

    def _undrain(self, event: ResourceEvent) -> _Changes:
        nodes = self._ranks(event)
        if nodes is None:
            return None
        forced = event.context.get("overwrite", 0)
        ts = event.timestamp
        done: list[Node] = []
        seconds: list[float | None] = []
        idle = [n for n in nodes if not n.drained]
        if idle and not (type(forced) is int and forced >= 1):
            self._reject(
                "not_drained",
                f"undrain of {len(idle)} rank(s) not drained (first {idle[0].rank})",
            )
        for node in nodes:
            if not node.drained:
                continue
            since = node.drained_since
            if since is not None and ts < since:
                self._reject("negative_duration", f"undrain of rank {node.rank} before its drain")
                seconds.append(None)
            else:
                seconds.append(None if since is None else ts - since)
            node.drained = False
            node.drained_since = None
            node.reason = None
            done.append(node)
        return [("undrain", done, seconds)]

    def _update(self, event: ResourceEvent) -> _Changes:
        expiration = event.context.get("expiration")
        if isinstance(expiration, int | float) and not isinstance(expiration, bool):
            self.expiration = float(expiration)
        return []

    # -- queues ------------------------------------------------------------------------

    def declare_queues(self, requires: Mapping[str, Sequence[str]]) -> None:
        """Each configured queue's required properties (empty: every node; none: ``default``)."""
        self.requires = {str(q): tuple(map(str, props)) for q, props in requires.items()} or None
        self._regroup()

    def _regroup(self) -> None:
        """Recompute each queue's ranks and the nodes grouped by the queues they are in."""
        requires = self.requires or {DEFAULT_QUEUE: ()}
        queue_ranks: dict[str, list[int]] = {q: [] for q in requires}
        groups: dict[tuple[str, ...], list[Node]] = {}
        for rank in sorted(self.nodes):
            node = self.nodes[rank]
            member = tuple(
                q for q, props in requires.items() if all(p in node.properties for p in props)
            )
            for q in member:
                queue_ranks[q].append(rank)
            groups.setdefault(member, []).append(node)
        self.queue_ranks = queue_ranks
        self._groups = groups

    # -- job allocations (a job tracker sink) ---------------------------------------------

    def job_event(self, job: Job, event: JobEvent) -> None:
        """Take resources at ``alloc``; give them back at ``free`` (or a final release)."""
        if event.eventlog != MAIN:
            return
        name = event.name
        if name == "alloc":
            self._alloc(job, event)
        elif name in ("free", "clean", "invalidate") or (
            name == "release" and event.context.get("final") is True
        ):
            self.release(event.jobid)

    def _alloc(self, job: Job, event: JobEvent) -> None:
        if event.jobid in self.allocs or event.R is None:
            return
        try:
            ranks, _, _ = parse_R(event.R)
        except BAD_INPUT as err:
            self._reject("malformed", f"job {job.f58} R: {type(err).__name__}: {err}")
            return
        self.allocs[event.jobid] = (job.queue, ranks)
        if self.defined:
            self._take(event.jobid, ranks)

    def _take(self, jobid: int, ranks: dict[int, tuple[int, int]]) -> None:
        """Add an allocation to its nodes; ranks the instance lacks are refused and dropped."""
        missing = [r for r in ranks if r not in self.nodes]
        if missing:
            self._reject(
                "unknown_rank",
                f"job {jobid} R names {len(missing)} rank(s) the instance lacks "
                f"(first {min(missing)})",
            )
            for rank in missing:
                del ranks[rank]
        for rank, (cores, gpus) in ranks.items():
            node = self.nodes[rank]
            node.alloc_cores += cores
            node.alloc_gpus += gpus
            node.jobs += 1

    def release(self, jobid: int) -> None:
        """Give a job's resources back (its free, or the job forgotten); once only."""
        found = self.allocs.pop(jobid, None)
        if found is None or not self.defined:
            return
        for rank, (cores, gpus) in found[1].items():
            node = self.nodes.get(rank)
            if node is None:
                continue
            node.alloc_cores -= cores
            node.alloc_gpus -= gpus
            node.jobs -= 1

    def _reallocate(self) -> None:
        """Rebuild every node's allocation from the jobs' (a new R)."""
        for node in self.nodes.values():
            node.alloc_cores = node.alloc_gpus = node.jobs = 0
        for jobid, (_, ranks) in self.allocs.items():
            self._take(jobid, ranks)

    # -- reads ---------------------------------------------------------------------------

    def hostnames(self) -> set[str]:
        """Every node's hostname."""
        return {node.host for node in self.nodes.values()}

    def snapshot(self) -> ResourceSnapshot:
        """Node counts by state and each queue's cores and GPUs by state, O(nodes).

        Queues appear once the instance's nodes are known (none before).
        """
        nodes = dict.fromkeys(NODE_STATES, 0)
        # No queue has cores before the instance's nodes are known: no series yet.
        queues = {q: QueueSlots() for q in self.queue_ranks} if self.nodes else {}
        oldest: float | None = None
        for member, group in self._groups.items():
            ca = cf = cu = ga = gf = gu = 0
            for node in group:
                state = node.state
                nodes[state] += 1
                cores_used = min(node.alloc_cores, node.cores)
                gpus_used = min(node.alloc_gpus, node.gpus)
                ca += cores_used
                ga += gpus_used
                if state in {"up", "torpid"}:
                    cf += node.cores - cores_used
                    gf += node.gpus - gpus_used
                else:
                    cu += node.cores - cores_used
                    gu += node.gpus - gpus_used
                since = node.drained_since
                if node.drained and since is not None and (oldest is None or since < oldest):
                    oldest = since
            for q in member:
                slots = queues[q]
                slots.cores["allocated"] += ca
                slots.cores["free"] += cf
                slots.cores["unavailable"] += cu
                slots.gpus["allocated"] += ga
                slots.gpus["free"] += gf
                slots.gpus["unavailable"] += gu
        return ResourceSnapshot(nodes, queues, oldest, self.mode)


def _R_expiration(R: object) -> float | None:
    if isinstance(R, Mapping):
        execution = R.get("execution")
        if isinstance(execution, Mapping):
            value = execution.get("expiration")
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
    return None


#: What a handler returns: the changes to report, or None when the event was refused.
_Changes = list[tuple[str, list[Node], list[float | None]]] | None

_HANDLERS: Final[Mapping[str, Callable[[ResourceTracker, ResourceEvent], _Changes]]] = {
    "restart": ResourceTracker._restart,
    "resource-define": ResourceTracker._define,
    "online": ResourceTracker._online,
    "offline": ResourceTracker._offline,
    "torpid": ResourceTracker._torpid,
    "lively": ResourceTracker._lively,
    "drain": ResourceTracker._drain,
    "undrain": ResourceTracker._undrain,
    "resource-update": ResourceTracker._update,
}
