"""The instance's resource events: one ``resource.journal`` stream, or a status poll.

flux-core (0.72 on) streams the resource eventlog to the instance owner: the request
(``resource.journal``, streaming, empty payload) is answered with the history the
resource module holds (``reslog.c`` ``send_backlog``: the current ``resource-define``
alone in its response with the instance's R under ``"R"``, the other entries in
batches of up to 100), then a sentinel ``{"events": []}``, then one response per new
entry. :class:`ResourceStream` sends that one request per connection, checks every
response as hostile input, and delivers :class:`~fluxmon.events.ResourceEvent` entries:
history with ``live=False`` (state rebuilt, nothing counted), except entries newer than
:attr:`ResourceMemory.since` (they happened while fluxmon was away: counted once), then
every live entry with ``live=True``. ``resource-define`` gets the response's R in its
context (``context["R"]``) and is delivered first of the history: the broker posts its
``restart`` entry (and a restarted instance's drains replayed from the KVS) before it.

A broker without the journal (ENOSYS) or a user who is not the instance owner (EPERM,
"Request requires owner credentials") gets the same entries synthesised from the
``resource.status`` payload (any user may ask; what ``flux resource status`` shows),
polled every ``flux.poll_interval`` seconds: see :func:`status_events`.

The instance's queue config (``config.get``, any user) is read once per connection and
declared downstream as each queue's required properties (:func:`queue_requires`).
"""

from __future__ import annotations

import errno
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, runtime_checkable

from fluxmon.events import (
    InvalidEvent,
    ResourceEvent,
    check_text,
    check_timestamp,
    check_tree,
    resource_entry_event,
    shown,
)
from fluxmon.sources.flux.bindings import RPCFuture
from fluxmon.sources.flux.connection import Connection, describe

#: The first flux-core with ``resource.journal`` (its NEWS: "add resource journal").
RESOURCE_JOURNAL_SINCE: Final = (0, 72)
#: Most ranks an idset in a resource payload may name (bounds what hostile input costs).
MAX_IDSET_IDS: Final = 1 << 20
#: Longest refusal detail passed on.
MAX_DETAIL: Final = 300

_IDSET = re.compile(r"\d+(?:-\d+)?(?:,\d+(?:-\d+)?)*")
_VERSION = re.compile(r"v?(\d+)\.(\d+)")
#: Context keys that must be idset strings, by entry name (flux-core 0.88
#: ``monitor.c`` ``post_event``/``post_restart_event``, ``drain.c``).
_IDSET_KEYS: Final[Mapping[str, tuple[str, ...]]] = {
    "online": ("idset",),
    "offline": ("idset",),
    "torpid": ("idset",),
    "lively": ("idset",),
    "drain": ("idset",),
    "undrain": ("idset",),
    "restart": ("ranks", "online"),
}


@runtime_checkable
class ResourceDownstream(Protocol):
    """Where the resource events go (the pipeline; the source's ``Downstream`` also)."""

    def resource_events(self, batch: Sequence[ResourceEvent], *, live: bool = True) -> None:
        """Apply resource events in order; ``live=False``: history rebuilding state."""

    def resource_mode(self, mode: str) -> None:
        """How this connection follows resources: ``journal`` or ``poll`` (once per connect)."""

    def declare_queue_nodes(self, requires: Mapping[str, Sequence[str]]) -> None:
        """Each configured queue's required properties ({}: no queues, one ``default``)."""

    def reject_input(self, reason: str, detail: str) -> None:
        """Input that never became an event was refused."""


@dataclass
class StatusSeen:
    """What the last ``resource.status`` poll said (poll mode diffs against it)."""

    R: Mapping[str, Any]
    online: frozenset[int]
    torpid: frozenset[int]
    drained: dict[int, tuple[float, str | None]]  # rank: (timestamp, reason)


@dataclass
class ResourceMemory:
    """What the resource stream remembers across connections (and the checkpoint keeps)."""

    #: Newest resource event timestamp delivered: history newer than it is delivered live
    #: (set from the checkpoint on start: events while fluxmon was down count once).
    since: float = 0.0
    #: Poll mode: the status last applied (None: nothing known, the next poll is history).
    status: StatusSeen | None = None
    #: Fallback reasons already logged (each is logged once).
    warned: set[str] = field(default_factory=set)


def has_resource_journal(flux_version: str) -> bool:
    """The broker's flux-core has ``resource.journal`` (False: older or unknown)."""
    match = _VERSION.match(flux_version)
    return match is not None and (int(match[1]), int(match[2])) >= RESOURCE_JOURNAL_SINCE


# -- idsets (RFC 22) --------------------------------------------------------------------


def parse_idset(value: object, what: str, limit: int = MAX_IDSET_IDS) -> frozenset[int]:
    """The ids of an RFC 22 idset string (``"0-3,7"``; ``""`` is empty), or InvalidEvent."""
    if type(value) is not str:
        raise InvalidEvent(f"{what} must be an idset string, not {shown(value)}")
    if not value:
        return frozenset()
    if not _IDSET.fullmatch(value):
        raise InvalidEvent(f"{what} is not an idset: {shown(value)}")
    ids: set[int] = set()
    for part in value.split(","):
        first, _, last = part.partition("-")
        low, high = int(first), int(last or first)
        if high < low or len(ids) + high - low + 1 > limit:
            raise InvalidEvent(f"{what} {shown(value)} is reversed or names over {limit} ids")
        ids.update(range(low, high + 1))
    return frozenset(ids)


def format_idset(ids: Iterable[int]) -> str:
    """The RFC 22 range form of ``ids`` (``"0-3,7"``)."""
    parts: list[str] = []
    ordered = sorted(ids)
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)


# -- checking entries ---------------------------------------------------------------------


def journal_event(entry: object, R: object = None) -> ResourceEvent:
    """The ResourceEvent of one journal entry, or InvalidEvent saying why it is not one.

    ``R`` is the response's ``"R"`` (``resource-define`` carries it, as ``context["R"]``).
    Known names have their idset keys checked (syntax only: which ranks the instance has
    is the tracker's to say); other names (``resource-update``, ``truncate``, a newer
    flux-core's) pass with a context that is JSON.
    """
    if not isinstance(entry, Mapping):
        raise InvalidEvent(f"an entry must be an object, not {shown(entry)}")
    name, timestamp, context = resource_entry_event(entry)  # the checks every source makes
    for key in _IDSET_KEYS.get(name, ()):
        parse_idset(context.get(key), f"{name} {key}")
    if name in ("drain", "undrain"):
        for key in ("reason", "nodelist"):
            if key in context and type(context[key]) is not str:
                raise InvalidEvent(f"{name} {key} must be a string, not {shown(context[key])}")
    if name == "resource-define":
        if not isinstance(R, Mapping):
            raise InvalidEvent(f"resource-define without an R object: {shown(R)}")
        check_tree(R, "R")
        context = {**context, "R": R}
    return ResourceEvent(name, timestamp, context)


def queue_requires(config: object) -> dict[str, list[str]]:
    """Each configured queue's required properties, from the instance's config object.

    A queue without ``requires`` gets ``[]`` (all nodes); a virtual queue (``parent``)
    its parent's; no ``queues`` table gives ``{}`` (one anonymous queue). Raises
    InvalidEvent for a config fluxmon cannot read that way.
    """
    if not isinstance(config, Mapping):
        raise InvalidEvent(f"the config is not an object: {shown(config)}")
    queues = config.get("queues", {})
    if not isinstance(queues, Mapping):
        raise InvalidEvent(f"queues is not a table: {shown(queues)}")
    own: dict[str, list[str]] = {}
    parents: dict[str, str] = {}
    for name, table in queues.items():
        check_text(name, "queue name")
        if not isinstance(table, Mapping):
            raise InvalidEvent(f"queue {name} is not a table: {shown(table)}")
        requires = table.get("requires", [])
        if type(requires) is not list:
            raise InvalidEvent(f"queue {name} requires is not a list: {shown(requires)}")
        own[name] = [check_text(prop, f"queue {name} property") for prop in requires]
        if "parent" in table:
            parents[name] = check_text(table["parent"], f"queue {name} parent")
    for name, parent in parents.items():
        if parent not in own or parent in parents:
            raise InvalidEvent(f"queue {name}: parent {shown(parent)} is not a configured queue")
        own[name] = list(own[parent])
    return own


# -- poll mode --------------------------------------------------------------------------


def read_status(payload: object) -> StatusSeen:
    """The parts of a ``resource.status`` payload poll mode uses, checked; or InvalidEvent.

    flux-core 0.88 ``status.c`` ``prepare_status_payload``: ``R`` (the inventory, without
    ``scheduling``), ``online``, ``offline``, ``exclude``, ``torpid`` (idsets) and
    ``drain``: ``{idset: {"timestamp": seconds, "reason": text}}`` (``drainset.c``;
    the timestamp is rounded to the second, the reason is absent when none was given).
    """
    if not isinstance(payload, Mapping):
        raise InvalidEvent(f"status is not an object: {shown(payload)}")
    R = payload.get("R")
    if not isinstance(R, Mapping):
        raise InvalidEvent(f"status without an R object: {shown(R)}")
    check_tree(R, "R")
    online = parse_idset(payload.get("online"), "status online")
    torpid = parse_idset(payload.get("torpid", ""), "status torpid")
    drains = payload.get("drain")
    if not isinstance(drains, Mapping):
        raise InvalidEvent(f"status drain is not an object: {shown(drains)}")
    drained: dict[int, tuple[float, str | None]] = {}
    for ids, info in drains.items():
        ranks = parse_idset(ids, "status drain idset")
        if not isinstance(info, Mapping):
            raise InvalidEvent(f"status drain {shown(ids)} is not an object: {shown(info)}")
        timestamp = check_timestamp(info.get("timestamp"))
        reason = info.get("reason")
        if reason is not None:
            reason = check_text(reason, "status drain reason")
        for rank in ranks:
            drained[rank] = (timestamp, reason)
    return StatusSeen(R, online, torpid, drained)


def _drain_events(
    ranks: Mapping[int, tuple[float, str | None]], overwrite: int, now: float | None
) -> list[ResourceEvent]:
    """One ``drain`` entry per (timestamp, reason) group; ``now``: at that time instead."""
    groups: dict[tuple[float, str | None], list[int]] = {}
    for rank, key in ranks.items():
        groups.setdefault(key, []).append(rank)
    events = []
    for (timestamp, reason), members in groups.items():
        context: dict[str, Any] = {"idset": format_idset(members), "overwrite": overwrite}
        if reason is not None:
            context["reason"] = reason
        events.append(ResourceEvent("drain", timestamp if now is None else now, context))
    return events


def status_events(
    previous: StatusSeen | None, status: StatusSeen, now: float
) -> list[ResourceEvent]:
    """The journal entries that take ``previous`` to ``status`` (None: define it all).

    From nothing (or when R changed beyond its expiration): ``resource-define`` (context
    ``{"method": "status-poll", "R": R}``), ``online`` and ``torpid`` of what is so now,
    and one ``drain`` per drain group at the drain's own (rounded) timestamp. From a
    previous status: ``online``/``offline``, ``torpid``/``lively`` of what changed,
    ``drain`` for newly drained ranks (at their drain timestamp), ``drain`` with
    ``overwrite`` for a changed reason (1) or time (2), ``undrain`` for ranks no longer
    drained, ``resource-update`` for a new expiration. Entries are in time order;
    synthesised ones carry ``now``.
    """
    events: list[ResourceEvent] = []
    R = status.R
    if previous is None or _without_expiration(previous.R) != _without_expiration(R):
        events.append(ResourceEvent("resource-define", now, {"method": "status-poll", "R": R}))
        if status.online:
            events.append(ResourceEvent("online", now, {"idset": format_idset(status.online)}))
        if status.torpid:
            events.append(ResourceEvent("torpid", now, {"idset": format_idset(status.torpid)}))
        drains = _drain_events(status.drained, 0, None)
        return events + sorted(drains, key=lambda event: event.timestamp)
    expiration = _expiration(R)
    if expiration != _expiration(previous.R):
        events.append(ResourceEvent("resource-update", now, {"expiration": expiration}))
    for name, ids in (
        ("online", status.online - previous.online),
        ("offline", previous.online - status.online),
        ("torpid", status.torpid - previous.torpid),
        ("lively", previous.torpid - status.torpid),
    ):
        if ids:
            events.append(ResourceEvent(name, now, {"idset": format_idset(ids)}))
    new = {r: v for r, v in status.drained.items() if r not in previous.drained}
    events.extend(_drain_events(new, 0, None))
    changed_time = {
        r: v
        for r, v in status.drained.items()
        if r in previous.drained and previous.drained[r][0] != v[0]
    }
    events.extend(_drain_events(changed_time, 2, None))
    changed_reason = {
        r: v
        for r, v in status.drained.items()
        if r in previous.drained and r not in changed_time and previous.drained[r][1] != v[1]
    }
    events.extend(_drain_events(changed_reason, 1, now))
    gone = set(previous.drained) - set(status.drained)
    if gone:
        events.append(ResourceEvent("undrain", now, {"idset": format_idset(gone)}))
    return sorted(events, key=lambda event: event.timestamp)


def _expiration(R: Mapping[str, Any]) -> object:
    execution = R.get("execution")
    return execution.get("expiration") if isinstance(execution, Mapping) else None


def _without_expiration(R: Mapping[str, Any]) -> str:
    execution = R.get("execution")
    if isinstance(execution, Mapping):
        R = {**R, "execution": {k: v for k, v in execution.items() if k != "expiration"}}
    return json.dumps(R, sort_keys=True)


# -- the stream ---------------------------------------------------------------------------


class ResourceStream:
    """Follows the instance's resources on one connection: journal, else status poll."""

    def __init__(
        self, connection: Connection, downstream: ResourceDownstream, memory: ResourceMemory
    ) -> None:
        self._connection = connection
        self._downstream = downstream
        self._memory = memory
        #: ``journal`` or ``poll`` once known (None: the journal has not answered yet).
        self.mode: str | None = None
        self._responses = 0
        self._history: list[ResourceEvent] | None = []  # None once the sentinel came
        #: The journal stream, or the status RPC in flight; it lives as long as this does.
        self._future: RPCFuture | None = None
        self._next_poll = 0.0  # monotonic
        self._poll_errors: set[int] = set()
        #: Called after each delivery (the source saves the position reached with it).
        self.on_delivered: Callable[[], None] | None = None

    # -- start --------------------------------------------------------------------------

    def start(self) -> None:
        """Declare the queues' nodes and ask for the journal with its history."""
        connection = self._connection
        self._declare_queue_nodes()
        self._future = connection.bindings.resource_journal(connection.handle)
        self._future.then(connection.guard(self._on_response))

    def _declare_queue_nodes(self) -> None:
        connection = self._connection
        try:
            requires = queue_requires(connection.bindings.config(connection.handle))
        except OSError as err:
            connection.log.warning("source.queue_config_unknown", error=describe(err))
            return
        except InvalidEvent as err:
            connection.log.warning("source.queue_config_unknown", error=str(err))
            return
        self._downstream.declare_queue_nodes(requires)

    # -- journal mode ---------------------------------------------------------------------

    def _on_response(self, future: RPCFuture) -> None:
        try:
            response = future.get()
        except OSError as err:
            self._on_error(err)
            return
        except (ValueError, RecursionError) as err:  # a payload that does not decode
            future.reset()
            self._refuse(f"resource journal response: {err}")
            return
        future.reset()
        if self._responses == 0:
            self.mode = "journal"
            self._memory.status = None  # the journal's history rebuilds the state
            self._downstream.resource_mode("journal")
        self._responses += 1
        if not isinstance(response, Mapping) or type(response.get("events")) is not list:
            self._refuse(f"resource journal response without events: {shown(response)}")
            return
        entries = response["events"]
        if not entries:
            if self._history is None:
                self._refuse("resource journal: a second sentinel (empty response)")
            else:
                self._history_complete()
            return
        batch: list[ResourceEvent] = []
        for entry in entries:
            try:
                batch.append(journal_event(entry, response.get("R")))
            except InvalidEvent as err:
                self._refuse(f"resource journal entry: {err}: {shown(entry)}")
        if self._history is not None:
            self._history.extend(batch)
        elif batch:
            self._deliver(batch, live=True)

    def _history_complete(self) -> None:
        """The sentinel: history (``resource-define`` first), newer-than-since live."""
        history = self._history or []
        self._history = None
        defines = [event for event in history if event.name == "resource-define"]
        ordered = defines[-1:] + [event for event in history if event.name != "resource-define"]
        self._deliver_split(ordered)

    def _deliver_split(self, events: Sequence[ResourceEvent]) -> None:
        """Deliver in order, entries newer than ``since`` live, the others as history."""
        since = self._memory.since
        run: list[ResourceEvent] = []
        live = False
        for event in events:
            is_live = since > 0 and event.timestamp > since
            if run and is_live != live:
                self._deliver(run, live=live)
                run = []
            run.append(event)
            live = is_live
        if run:
            self._deliver(run, live=live)

    def _deliver(self, batch: Sequence[ResourceEvent], *, live: bool) -> None:
        self._downstream.resource_events(batch, live=live)
        self._memory.since = max(self._memory.since, *(event.timestamp for event in batch))
        if self.on_delivered is not None:
            self.on_delivered()

    def _on_error(self, err: OSError) -> None:
        connection = self._connection
        if self._responses == 0 and err.errno in (errno.ENOSYS, errno.EPERM):
            if err.errno == errno.EPERM:
                why = (
                    "resource.journal answered EPERM: fluxmon is not the instance owner "
                    "(run it as the owner for the journal's exact timestamps)"
                )
            elif has_resource_journal(connection.flux_version):
                why = (
                    f"resource.journal answered ENOSYS on flux-core "
                    f"{connection.flux_version} (the resource module is not loaded)"
                )
            else:
                why = (
                    f"resource.journal answered ENOSYS: flux-core "
                    f"{connection.flux_version} has none (older than 0.72)"
                )
            self._fall_back(why)
        elif err.errno == errno.ENODATA:
            connection.lose("the resource journal ended (resource module unloaded)")
        else:
            connection.lose(f"resource journal error: {describe(err)}")

    # -- poll mode ------------------------------------------------------------------------

    def _fall_back(self, why: str) -> None:
        connection = self._connection
        self._future = None
        if why not in self._memory.warned:
            self._memory.warned.add(why)
            connection.log.warning(
                "source.fallback",
                stream="resources",
                mode="poll",
                reason=why,
                poll_interval=connection.settings.poll_interval,
            )
        self.mode = "poll"
        self._downstream.resource_mode("poll")
        self._poll()

    def tick(self, now: float) -> None:
        """Poll mode: ask for the status every ``flux.poll_interval`` (``now``: monotonic)."""
        if self.mode == "poll" and self._future is None and now >= self._next_poll:
            self._poll()

    def _poll(self) -> None:
        connection = self._connection
        self._next_poll = connection.monotonic() + connection.settings.poll_interval
        try:
            self._future = connection.bindings.resource_status(connection.handle)
            self._future.then(connection.guard(self._on_status))
        except OSError as err:
            self._future = None
            self._poll_failed(err)

    def _on_status(self, future: RPCFuture) -> None:
        self._future = None
        try:
            payload = future.get()
        except OSError as err:
            self._poll_failed(err)
            return
        except (ValueError, RecursionError) as err:
            self._refuse(f"resource.status response: {err}")
            return
        try:
            status = read_status(payload)
        except InvalidEvent as err:
            self._refuse(f"resource.status response: {err}")
            return
        memory = self._memory
        events = status_events(memory.status, status, self._connection.clock())
        memory.status = status
        if not events:
            return
        if events[0].name == "resource-define":
            # What is so now is history; only drains that the status dates after ``since``
            # happened while fluxmon was away (its timestamps are rounded to the second).
            since = memory.since
            old: list[ResourceEvent] = []
            news: list[ResourceEvent] = []
            for event in events:
                late = event.name == "drain" and since > 0 and event.timestamp - 0.5 > since
                (news if late else old).append(event)
            self._deliver(old, live=False)
            if news:
                self._deliver(news, live=True)
        else:
            self._deliver(events, live=True)

    def _poll_failed(self, err: OSError) -> None:
        code = err.errno or 0
        if code not in self._poll_errors:  # once per errno and connection
            self._poll_errors.add(code)
            self._connection.log.warning("source.resource_poll_failed", error=describe(err))

    def _refuse(self, detail: str) -> None:
        self._downstream.reject_input("malformed", detail[:MAX_DETAIL])
