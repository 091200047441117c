"""RFC 25 jobspecs and RFC 20 R as flux-core writes them, for the demo, tests and benchmarks.

One builder of each, so that every simulated or test job carries the shape the tracker
reads (``attributes.system.queue`` and ``duration``, slots under an optional node level;
R's ranks and node list).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

#: Shell rlimits as ``flux submit`` copies them into every jobspec.
RLIMIT: Final[Mapping[str, int]] = {
    "cpu": -1,
    "fsize": -1,
    "data": -1,
    "stack": 8388608,
    "core": 0,
    "nofile": 20000,
    "as": -1,
    "rss": -1,
    "nproc": 96365,
}


def resources(
    slots: int = 1, *, cores: int = 1, gpus: int = 0, nnodes: int | None = None
) -> list[dict[str, Any]]:
    """RFC 14 resources as ``flux submit -N/-n/-c/-g`` writes them.

    ``slots`` slots of ``cores`` cores (and ``gpus`` GPUs) each; with ``nnodes``, under a
    node level with ``slots // nnodes`` slots per node, else wherever they fit.
    """
    inner: list[dict[str, Any]] = [{"type": "core", "count": cores}]
    if gpus:
        inner.append({"type": "gpu", "count": gpus})
    if nnodes is None:
        return [{"type": "slot", "count": slots, "with": inner, "label": "task"}]
    slot = {"type": "slot", "count": slots // nnodes, "with": inner, "label": "task"}
    return [{"type": "node", "count": nnodes, "with": [slot]}]


def jobspec(
    queue: str | None = None,
    duration: float = 0.0,
    slots: int = 1,
    *,
    command: Sequence[str] = ("true",),
    cores: int = 1,
    gpus: int = 0,
    nnodes: int | None = None,
    cwd: str | None = None,
    rlimit: Mapping[str, int] | None = None,
    dependencies: Sequence[Mapping[str, str]] = (),
) -> dict[str, Any]:
    """A version 1 jobspec (RFC 25) with the redacted system attributes ``submit`` carries.

    ``duration`` is the time limit (0: none), ``queue`` None leaves the queue out (the
    instance's default queue); ``cwd``, ``rlimit`` and ``dependencies`` are added only when
    given, so the smallest jobspec is the default.
    """
    system: dict[str, Any] = {"duration": duration}
    if cwd is not None:
        system["cwd"] = cwd
    if queue is not None:
        system["queue"] = queue
    if rlimit is not None:
        system["shell"] = {"options": {"rlimit": dict(rlimit)}}
    if dependencies:
        system["dependencies"] = [dict(d) for d in dependencies]
    return {
        "resources": resources(slots, cores=cores, gpus=gpus, nnodes=nnodes),
        "tasks": [{"command": list(command), "slot": "task", "count": {"per_slot": 1}}],
        "attributes": {"system": system},
        "version": 1,
    }


def resource_set(
    starttime: float,
    nnodes: int = 1,
    *,
    duration: float = 0.0,
    nslots: int | None = None,
    r_lite: Sequence[Mapping[str, Any]] | None = None,
    nodelist: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Version 1 R (RFC 20) as ``alloc`` carries it.

    By default core 0 on each of ranks 0 to ``nnodes - 1``, hosts ``node0``, ``node1``...;
    ``expiration`` is ``starttime + duration``, or 0 without a time limit. ``nslots`` is
    left out unless given.
    """
    if r_lite is None:
        ranks = "0" if nnodes == 1 else f"0-{nnodes - 1}"
        r_lite = [{"rank": ranks, "children": {"core": "0"}}]
    execution: dict[str, Any] = {
        "R_lite": [dict(entry) for entry in r_lite],
        "starttime": starttime,
        "expiration": starttime + duration if duration > 0 else 0.0,
    }
    if nslots is not None:
        execution["nslots"] = nslots
    execution["nodelist"] = list(nodelist or (f"node{i}" for i in range(nnodes)))
    return {"version": 1, "execution": execution}
