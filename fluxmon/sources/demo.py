"""A simulated Flux cluster: a deterministic, endless stream of realistic job events.

:func:`simulate` is pure: given a seed, an arrival rate and a start time it yields the
eventlog entries of a small cluster (16 nodes x 8 cores, four of them with 2 GPUs)
running a FIFO scheduler with backfill, in nondecreasing timestamp order.
:func:`simulate_cluster` adds the cluster's resource life, as flux-core's resource
journal streams it (see ``tests/data/resources``): the journal's history at connect
(``restart``, ``resource-define`` with the instance R, ``online``, a node drained long
ago), then nodes drained with realistic reasons and undrained minutes later, nodes
rebooted (drained, offline once idle, online, undrained), a kernel panic (an idle node
offline, drained, back), now and then a torpid node. The scheduler places no job on a
drained, offline or torpid node; a node drained under running jobs shows as draining. Every event
looks like one flux-core 0.88 writes (names, context keys, order, the gaps between
them), as recorded in ``tests/data/scenarios`` and the job-manager journal: jobs
succeed, exit nonzero, are killed by signals, fail to exec, are canceled pending or
running, time out, raise non-fatal exceptions, wait on dependencies, are held and
released, and pass through prologs and epilogs.

:class:`DemoSource` paces that stream in real time for ``fluxmon demo``.

Runtimes are sped up (seconds to minutes) so a dashboard fills within minutes, and
are scaled down further at high rates so the cluster stays busy but not swamped.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, get_args

from fluxmon.events import EMPTY_CONTEXT, EXEC, MAIN, JobEvent, ResourceEvent, f58
from fluxmon.jobspec import RLIMIT, jobspec, resource_set
from fluxmon.sources import Downstream

# --- the cluster -------------------------------------------------------------------

NODES: Final = 16
CORES_PER_NODE: Final = 8
GPUS_PER_NODE: Final = 2
#: Ranks 0-11 are CPU nodes (queues batch and debug), 12-15 carry GPUs (queue gpu).
_CPU_RANKS: Final = tuple(range(12))
_GPU_RANKS: Final = tuple(range(12, NODES))
#: Uid of the instance owner (the ``flux`` user), who raises system exceptions.
_OWNER_UID: Final = 990
_USERS: Final[Mapping[int, str]] = {
    1001: "alice",
    1002: "bob",
    1003: "carol",
    1004: "dave",
    1005: "erin",
}
_USER_WEIGHTS: Final = (5.0, 3.0, 2.0, 1.0, 1.0)
#: FLUID jobids count milliseconds since the instance started; say it started a day ago.
_UPTIME_MS: Final = 86_400_000
#: Runtimes are unscaled up to this rate and shrink in proportion above it, which keeps
#: the CPU partition 70-90% busy with queues of a few to a few dozen jobs.
_NOMINAL_RATE: Final = 1.15
#: Scheduler passes look this far down the queue (keeps a swamped cluster cheap).
_SCHED_DEPTH: Final = 200


@dataclass(frozen=True)
class _Queue:
    """A named queue, the ranks it runs on, its policy and its workload's shape."""

    name: str
    ranks: tuple[int, ...]
    weight: float
    default_duration: float  # 0: no limit unless the user asks for one
    work_scale: float
    perilog: bool


_QUEUES: Final = (
    _Queue("batch", _CPU_RANKS, 0.76, 0.0, 1.0, True),
    _Queue("debug", _CPU_RANKS, 0.16, 60.0, 0.25, False),
    _Queue("gpu", _GPU_RANKS, 0.08, 300.0, 1.5, True),
)
_QUEUE_WEIGHTS: Final = tuple(q.weight for q in _QUEUES)
#: Each queue's ``requires`` (instance config ``[queues.NAME] requires``): a property
#: named after the queue, which the instance R gives to the queue's nodes.
QUEUE_REQUIRES: Final[Mapping[str, tuple[str, ...]]] = {q.name: (q.name,) for q in _QUEUES}


@dataclass(frozen=True)
class _Request:
    """What a job asks for: ``nslots`` slots of ``cores`` (+ ``gpus``), on ``nnodes``."""

    nslots: int
    cores: int = 1
    gpus: int = 0
    nnodes: int | None = None  # None: slots go wherever they fit


Outcome = Literal["ok", "exit", "exec-error", "task-signal", "shell-signal", "cancel", "timeout"]
_OUTCOMES: Final[tuple[Outcome, ...]] = get_args(Outcome)
_OUTCOME_WEIGHTS: Final = (0.805, 0.06, 0.015, 0.015, 0.01, 0.025, 0.03)
Hold = Literal["none", "release", "cancel"]


@dataclass
class _Plan:
    """Everything decided about a job when it is submitted."""

    jobid: int
    userid: int
    queue: _Queue
    request: _Request
    command: list[str]
    duration: float  # jobspec attributes.system.duration
    work: float  # seconds the tasks run if nothing stops them
    outcome: Outcome = "ok"
    exit_code: int = 0
    signal: int = 0
    cancel_after: float = 0.0  # running cancel: seconds after shell.start
    timeout_killed: bool = False  # tasks ignored SIGALRM and the shell was SIGKILLed
    prolog: float = 0.0
    epilog: float = 0.0
    nonfatal: tuple[str, int, str, int] | None = None  # type, severity, note, userid
    memo: bool = False
    parent: int | None = None
    hold: Hold = "none"
    hold_for: float = 0.0
    cancel_pending_after: float | None = None

    @property
    def estimate(self) -> float:
        """Roughly how long the job holds its resources (for backfill decisions)."""
        body = self.work
        if self.outcome == "timeout":
            body = self.duration + (5.0 if self.timeout_killed else 0.0)
        elif self.outcome == "cancel":
            body = self.cancel_after
        return self.prolog + body + self.epilog + 0.1


# --- small helpers -------------------------------------------------------------------


def _idset(ids: Sequence[int]) -> str:
    """RFC 22 idset of sorted ids: ``0-3,7``."""
    parts: list[str] = []
    for _, run in itertools.groupby(enumerate(ids), key=lambda pair: pair[1] - pair[0]):
        values = [v for _, v in run]
        parts.append(str(values[0]) if len(values) == 1 else f"{values[0]}-{values[-1]}")
    return ",".join(parts)


def _bracketed(ids: Sequence[int]) -> str:
    """An idset as ``sched-simple`` and hostlists print it: ``5`` or ``[0-3,7]``."""
    text = _idset(ids)
    return text if len(ids) == 1 else f"[{text}]"


def _host(rank: int) -> str:
    return f"node{rank}"


def _hostlist(ranks: Sequence[int]) -> str:
    return f"node{_bracketed(ranks)}"


def _flux_f58(jobid: int) -> str:
    """The jobid as Flux prints it in eventlog contexts, with the UTF-8 prefix."""
    return "\u0192" + f58(jobid)[1:]


def _nice_limit(rng: random.Random, need: float) -> float:
    """A round time limit a user would pick for a job needing ``need`` seconds."""
    for limit in (30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0):
        if limit >= need * rng.uniform(1.2, 3.0):
            return limit
    return 7200.0


class _Fluid:
    """RFC 19 FLUIDs: ``ms since instance start << 24 | generator << 10 | sequence``."""

    def __init__(self, start: float) -> None:
        self._start = start
        self._last_ms = -1
        self._seq = 0

    def next(self, timestamp: float) -> int:
        ms = max(_UPTIME_MS + int((timestamp - self._start) * 1000), self._last_ms)
        if ms == self._last_ms:
            self._seq += 1
            if self._seq >= 1024:  # sequence exhausted: Flux waits for the next ms
                ms, self._seq = ms + 1, 0
        else:
            self._seq = 0
        self._last_ms = ms
        return (ms << 24) | self._seq


# --- jobspec and R -------------------------------------------------------------------


def _jobspec(plan: _Plan) -> dict[str, Any]:
    """The redacted jobspec ``submit`` carries."""
    request = plan.request
    after = [] if plan.parent is None else [_flux_f58(plan.parent)]
    return jobspec(
        plan.queue.name,
        plan.duration or 0,  # flux submit writes an integer 0 for "none"
        request.nslots,
        command=plan.command,
        cores=request.cores,
        gpus=request.gpus,
        nnodes=request.nnodes,
        cwd=f"/home/{_USERS[plan.userid]}",
        rlimit=RLIMIT,
        dependencies=[{"scheme": "afterok", "value": parent} for parent in after],
    )


#: An allocation: rank -> (cores, gpus), ranks ascending.
Allocation = dict[int, tuple[list[int], list[int]]]


def _children(cores: list[int], gpus: list[int]) -> dict[str, str]:
    children = {"core": _idset(cores)}
    if gpus:
        children["gpu"] = _idset(gpus)
    return children


def _R(alloc: Allocation, starttime: float, duration: float, nslots: int) -> dict[str, Any]:
    """RFC 20 R as ``alloc`` carries it, ranks with equal children folded together."""
    r_lite: list[dict[str, Any]] = []
    for children, group in itertools.groupby(
        sorted(alloc), key=lambda rank: _children(*alloc[rank])
    ):
        r_lite.append({"rank": _idset(list(group)), "children": children})
    nodelist = [_hostlist(sorted(alloc))]
    return resource_set(
        starttime, duration=duration, nslots=nslots, r_lite=r_lite, nodelist=nodelist
    )


def _resource_summary(alloc: Allocation) -> str:
    """``sched-simple``'s annotation: ``rank[0-1]/core[0-7] rank2/core[0-3],gpu0``."""
    parts = []
    for rank in sorted(alloc):
        cores, gpus = alloc[rank]
        text = f"rank{rank}/core{_bracketed(cores)}"
        if gpus:
            text += f",gpu{_bracketed(gpus)}"
        parts.append(text)
    return " ".join(parts)


# --- the workload: one plan per submitted job --------------------------------------


def _draw_request(rng: random.Random, queue: _Queue) -> _Request:
    pick = rng.random()
    if queue.name == "debug":
        return _Request(1) if pick < 0.6 else _Request(rng.randint(2, 4))
    if queue.name == "gpu":
        if pick < 0.75:
            return _Request(rng.choice((1, 1, 2)), cores=4, gpus=1)
        return _Request(2, cores=4, gpus=1, nnodes=1)
    if pick < 0.45:
        return _Request(1)
    if pick < 0.70:
        return _Request(rng.randint(2, 8))
    if pick < 0.82:
        return _Request(rng.randint(1, 4), cores=rng.choice((2, 4)))
    nnodes = rng.choices((1, 2, 3, 4), weights=(4, 3, 1, 1))[0]
    return _Request(nnodes * rng.choice((4, 8)), nnodes=nnodes)


def _draw_command(rng: random.Random, queue: _Queue, request: _Request) -> list[str]:
    if queue.name == "debug":
        return rng.choice((["hostname"], ["true"], ["sh", "-c", "make check"], ["./hello"]))
    if queue.name == "gpu":
        return rng.choice((["python3", "train.py", "--epochs", "3"], ["./infer", "--batch", "64"]))
    if request.nnodes is not None:
        return rng.choice((["lmp", "-in", "in.lj"], ["./xhpl"], ["./mini_md", "-s", "40"]))
    return rng.choice(
        (
            ["./run_sim.sh"],
            ["python3", "analyze.py", "data.h5"],
            ["sh", "-c", "./step1 && ./step2"],
            ["blastn", "-query", "q.fa", "-db", "nt"],
        )
    )


def _draw_work(rng: random.Random, queue: _Queue, scale: float) -> float:
    """Task runtime: lognormal around 8 s with a tail of minutes, sped up by ``scale``."""
    work = rng.lognormvariate(math.log(8.0), 1.25) * queue.work_scale
    cap = 40.0 if queue.name == "debug" else 600.0
    return min(max(work, 0.2), cap) * scale


def _draw_limit(rng: random.Random, queue: _Queue, need: float) -> float:
    """The jobspec duration of a job that finishes in ``need`` seconds."""
    if queue.name == "debug":
        return 30.0 if need < 20.0 and rng.random() < 0.3 else 60.0
    if queue.name == "gpu":
        return max(queue.default_duration, _nice_limit(rng, need))
    return 0.0 if rng.random() < 0.5 else _nice_limit(rng, need)


def _draw_plan(rng: random.Random, jobid: int, scale: float) -> _Plan:
    """A job's queue, size, command, limit and fate."""
    queue = rng.choices(_QUEUES, weights=_QUEUE_WEIGHTS)[0]
    request = _draw_request(rng, queue)
    plan = _Plan(
        jobid=jobid,
        userid=rng.choices(tuple(_USERS), weights=_USER_WEIGHTS)[0],
        queue=queue,
        request=request,
        command=_draw_command(rng, queue, request),
        duration=0.0,
        work=_draw_work(rng, queue, scale),
        outcome=rng.choices(_OUTCOMES, weights=_OUTCOME_WEIGHTS)[0],
    )
    if queue.perilog:  # they hold the nodes too, so they speed up with the workload
        plan.prolog = scale * _draw_perilog(rng, 1.0)
        plan.epilog = scale * _draw_perilog(rng, 1.5)
    plan.duration = _draw_limit(rng, queue, plan.prolog + plan.work + 1.0)
    if plan.duration:  # a job that finishes must fit its limit
        plan.work = max(min(plan.work, 0.8 * plan.duration - plan.prolog - 1.0), 0.1)
    _FATES[plan.outcome](rng, plan, scale)
    if rng.random() < 0.03:
        plan.nonfatal = _draw_nonfatal(rng, plan)
    plan.memo = (
        queue.name == "batch"
        and request.nnodes is not None
        and plan.outcome != "exec-error"
        and rng.random() < 0.3
    )
    if plan.memo:
        plan.command = ["flux", "broker", "{{tmpdir}}/script"]  # a `flux batch` job
    return plan


def _draw_perilog(rng: random.Random, usual: float) -> float:
    """A prolog or epilog: 0.05 s to ``usual`` s, one in ten up to 3 s."""
    return rng.uniform(0.05, usual) if rng.random() < 0.9 else rng.uniform(usual, 3.0)


def _fate_ok(rng: random.Random, plan: _Plan, scale: float) -> None:
    """Nothing to add: the tasks run ``work`` seconds and exit 0."""


def _fate_exit(rng: random.Random, plan: _Plan, scale: float) -> None:
    plan.exit_code = rng.choices((1, 2), weights=(3, 2))[0]


def _fate_exec_error(rng: random.Random, plan: _Plan, scale: float) -> None:
    plan.command = [rng.choice(("./a.out", "/home/shared/bin/simulate", "pyhton3")), "-v"]
    plan.work = 0.0


def _fate_task_signal(rng: random.Random, plan: _Plan, scale: float) -> None:
    plan.signal = rng.choice((9, 9, 11, 6))  # OOM kill, segfault, abort
    plan.work *= rng.uniform(0.1, 1.0)


def _fate_shell_signal(rng: random.Random, plan: _Plan, scale: float) -> None:
    plan.signal = 9  # the job shell itself was killed (node OOM)
    plan.work *= rng.uniform(0.1, 1.0)


def _fate_cancel(rng: random.Random, plan: _Plan, scale: float) -> None:
    plan.cancel_after = max(plan.work * rng.uniform(0.05, 0.95), 0.05)


def _fate_timeout(rng: random.Random, plan: _Plan, scale: float) -> None:
    """The user asked for too little time: the tasks would need 1.3-3x the limit."""
    limits = {"batch": (10.0, 30.0, 60.0, 120.0), "debug": (10.0, 30.0, 60.0)}
    asked = rng.choice(limits.get(plan.queue.name, (60.0, 120.0)))
    plan.duration = float(max(round(asked * scale), math.ceil(plan.prolog + 1.0)))
    plan.work = plan.duration * rng.uniform(1.3, 3.0)
    plan.timeout_killed = rng.random() < 0.25


_FATES: Final[Mapping[Outcome, Callable[[random.Random, _Plan, float], None]]] = {
    "ok": _fate_ok,
    "exit": _fate_exit,
    "exec-error": _fate_exec_error,
    "task-signal": _fate_task_signal,
    "shell-signal": _fate_shell_signal,
    "cancel": _fate_cancel,
    "timeout": _fate_timeout,
}


def _draw_nonfatal(rng: random.Random, plan: _Plan) -> tuple[str, int, str, int]:
    host = _host(rng.choice(plan.queue.ranks))
    return rng.choice(
        (
            ("test", 1, "non-fatal test exception", plan.userid),
            ("node-health", 2, f"{host}: correctable ECC errors above threshold", _OWNER_UID),
            ("io", 5, "/scratch: slow metadata operations", _OWNER_UID),
            ("checkpoint", 7, "checkpoint requested", plan.userid),
        )
    )


# --- scripts: the events of one phase of one job ------------------------------------


class _Script:
    """Builds one job's events, each a small random gap after the previous one."""

    def __init__(self, rng: random.Random, jobid: int, t: float) -> None:
        self.rng = rng
        self.jobid = jobid
        self.t = t
        self.events: list[JobEvent] = []

    def wait(self, low: float, high: float | None = None) -> None:
        self.t += low if high is None else self.rng.uniform(low, high)

    def main(
        self,
        name: str,
        context: Mapping[str, Any] = EMPTY_CONTEXT,
        *,
        jobspec: Mapping[str, Any] | None = None,
        R: Mapping[str, Any] | None = None,
    ) -> None:
        self.events.append(JobEvent(self.jobid, MAIN, name, self.t, context, jobspec, R))

    def exec(self, name: str, context: Mapping[str, Any] = EMPTY_CONTEXT) -> None:
        self.events.append(JobEvent(self.jobid, EXEC, name, self.t, context))


def _submit_script(script: _Script, plan: _Plan) -> None:
    """submit, [dependency-add], validate, and unless waiting: depend, priority."""
    urgency = 0 if plan.hold != "none" else 16
    context = {"userid": plan.userid, "urgency": urgency, "flags": 0, "version": 1}
    script.main("submit", context, jobspec=_jobspec(plan))
    if plan.parent is not None:
        script.wait(0.0105, 0.0125)
        description = f"after-success={_flux_f58(plan.parent)}"
        script.main("dependency-add", {"description": description})
        script.wait(0.00002, 0.00005)
        script.main("validate")
        return
    script.wait(0.0105, 0.0125)
    script.main("validate")
    script.wait(0.0105, 0.0125)
    script.main("depend")
    script.wait(0.00002, 0.00007)
    script.main("priority", {"priority": urgency})


def _dependency_met_script(script: _Script, plan: _Plan) -> None:
    """The parent completed: dependency-remove, depend, priority."""
    assert plan.parent is not None
    script.main("dependency-remove", {"description": f"after-success={_flux_f58(plan.parent)}"})
    script.wait(0.00001, 0.00002)
    script.main("depend")
    script.wait(0.00001, 0.00003)
    script.main("priority", {"priority": 16})


def _dependency_failed_script(script: _Script, plan: _Plan, *, parent_ran: bool) -> None:
    """The parent failed: a fatal ``dependency`` exception, then clean."""
    assert plan.parent is not None
    why = "can never be satisfied" if parent_ran else "job never started"
    note = f"dependency after-success={_flux_f58(plan.parent)} {why}"
    context = {"type": "dependency", "severity": 0, "userid": _OWNER_UID, "note": note}
    script.main("exception", context)
    script.wait(0.00005, 0.0001)
    script.main("clean")


def _hold_released_script(script: _Script, plan: _Plan) -> None:
    """``flux job urgency ID default``: urgency (SCHED->PRIORITY), priority (->SCHED)."""
    script.main("urgency", {"userid": plan.userid, "urgency": 16})
    script.wait(0.00005, 0.0001)
    script.main("priority", {"priority": 16})


def _cancel_pending_script(script: _Script, plan: _Plan) -> None:
    """``flux cancel`` before alloc: exception, clean; no alloc, start or free."""
    script.main("exception", {"type": "cancel", "severity": 0, "note": "", "userid": plan.userid})
    script.wait(0.00005, 0.00015)
    script.main("clean")


# The run: alloc .. clean. A body runs the tasks and returns the shell's wait status.


def _perilog(script: _Script, phase: str, seconds: float) -> None:
    """``<phase>-start``, ``seconds`` later ``<phase>-finish``, as job-manager writes them."""
    description = f"job-manager.{phase}"
    script.main(f"{phase}-start", {"description": description})
    script.wait(seconds)
    script.main(f"{phase}-finish", {"description": description, "status": 0})


def _run_script(script: _Script, plan: _Plan, alloc: Allocation, starttime: float) -> None:
    """alloc, [prolog], start and the exec eventlog, the body, finish, [epilog], clean."""
    summary = {"annotations": {"sched": {"resource_summary": _resource_summary(alloc)}}}
    script.main("alloc", summary, R=_R(alloc, starttime, plan.duration, plan.request.nslots))
    if plan.queue.perilog:
        script.wait(0.0002, 0.0006)
        _perilog(script, "prolog", plan.prolog)
    script.wait(0.0004, 0.0008)
    script.exec("init")
    script.wait(0.001, 0.0016)
    script.exec("starting")
    script.wait(0.0015, 0.004)
    script.main("start")
    script.wait(0.015, 0.03 + 0.01 * len(alloc))
    service = f"{plan.userid}-shell-{f58(plan.jobid)}"
    script.exec("shell.init", {"service": service, "leader-rank": 0, "size": len(alloc)})
    script.wait(0.002, 0.006)
    if plan.outcome != "exec-error":
        script.exec("shell.start", {"taskmap": _taskmap(plan, alloc)})
    status = _BODIES[plan.outcome](script, plan, alloc, starttime)
    script.exec("shell-exit", {"rank": 0, "wait_status": status})
    script.wait(0.00002, 0.00007)
    script.exec("complete", {"status": status})
    script.wait(0.00001, 0.00005)
    script.exec("done")
    script.wait(0.00002, 0.00005)
    script.main("finish", {"status": status})
    if plan.queue.perilog:
        script.wait(0.0003, 0.001)
        _perilog(script, "epilog", plan.epilog)
    script.wait(0.0012, 0.0030)
    script.main("release", {"ranks": "all", "final": True})
    script.wait(0.00003, 0.0001)
    script.main("free")
    script.wait(0.000008, 0.00002)
    script.main("clean")


def _taskmap(plan: _Plan, alloc: Allocation) -> dict[str, Any]:
    """RFC 34 taskmap: blocks of consecutive nodes running the same number of tasks."""
    per_node = [len(alloc[rank][0]) // plan.request.cores for rank in sorted(alloc)]
    blocks: list[list[int]] = []
    for nodeid, ppn in enumerate(per_node):
        if blocks and blocks[-1][2] == ppn:
            blocks[-1][1] += 1
        else:
            blocks.append([nodeid, 1, ppn, 1])
    return {"version": 1, "map": blocks}


def _task_exit(script: _Script, plan: _Plan, wait_status: int) -> None:
    """The first task to exit, as the shell reports it."""
    signaled = wait_status & 0x7F
    exitcode = 128 + signaled if signaled else wait_status >> 8
    script.exec(
        "shell.task-exit",
        {
            "localid": 0,
            "rank": script.rng.randrange(plan.request.nslots),
            "state": "Exited",
            "pid": script.rng.randint(2000, 99999),
            "wait_status": wait_status,
            "signaled": signaled,
            "exitcode": exitcode,
        },
    )


def _run_for(script: _Script, plan: _Plan, alloc: Allocation, seconds: float) -> None:
    """Let the tasks run ``seconds``, posting the job's memo and non-fatal exception.

    The memo is what a ``flux batch`` instance posts once it is up: its URI.
    """
    end = script.t + seconds
    if plan.memo:
        script.wait(min(0.8, seconds * 0.3))
        host = _host(min(alloc))
        tmp = "".join(script.rng.choices("abcdefghijklmnopqrstuvwxyz0123456789", k=6))
        script.main("memo", {"uri": f"ssh://{host}/tmp/flux-{tmp}/local-0"})
    if plan.nonfatal is not None:
        script.t = max(script.t, script.t + (end - script.t) * script.rng.uniform(0.2, 0.8))
        etype, severity, note, userid = plan.nonfatal
        script.main(
            "exception", {"type": etype, "severity": severity, "note": note, "userid": userid}
        )
    script.t = max(end, script.t + 0.0001)


def _body_exit(script: _Script, plan: _Plan, alloc: Allocation, starttime: float) -> int:
    """The tasks run to the end and exit with the plan's code (0 for ``ok``)."""
    _run_for(script, plan, alloc, plan.work)
    status = plan.exit_code << 8
    _task_exit(script, plan, status)
    script.wait(0.0015, 0.003)
    return status


def _body_task_signal(script: _Script, plan: _Plan, alloc: Allocation, starttime: float) -> int:
    """A task is killed by a signal; the shell exits 128+signal (scenario c)."""
    _run_for(script, plan, alloc, plan.work)
    _task_exit(script, plan, plan.signal)
    script.wait(0.0015, 0.003)
    return (128 + plan.signal) << 8


def _body_shell_signal(script: _Script, plan: _Plan, alloc: Allocation, starttime: float) -> int:
    """The job shell itself is killed: no task-exit, the status is the bare signal."""
    _run_for(script, plan, alloc, plan.work)
    return plan.signal


def _body_exec_error(script: _Script, plan: _Plan, alloc: Allocation, starttime: float) -> int:
    """The command does not exist: fatal ``exec`` exception, status 127<<8 (scenario k)."""
    script.wait(0.003, 0.008)
    host = _host(min(alloc))
    note = f"task 0 (host {host}): start failed: {plan.command[0]}: No such file or directory"
    script.main("exception", {"type": "exec", "severity": 0, "note": note, "userid": _OWNER_UID})
    script.wait(0.001, 0.002)
    return 127 << 8


def _body_cancel(script: _Script, plan: _Plan, alloc: Allocation, starttime: float) -> int:
    """``flux cancel`` while running: SIGTERM, status 143<<8 = 36608 (scenario e)."""
    _run_for(script, plan, alloc, plan.cancel_after)
    script.main("exception", {"type": "cancel", "severity": 0, "note": "", "userid": plan.userid})
    script.wait(0.004, 0.007)
    _task_exit(script, plan, 15)
    script.wait(0.0015, 0.003)
    return 143 << 8


def _body_timeout(script: _Script, plan: _Plan, alloc: Allocation, starttime: float) -> int:
    """The allocation expires: SIGALRM, status 142<<8 = 36352, as the journal shows.

    When the tasks ignore it, the shell is SIGKILLed after the 5 s kill timeout.
    """
    expiration = starttime + plan.duration
    _run_for(script, plan, alloc, max(expiration - script.t, 0.001))
    script.wait(0.001, 0.002)
    context = {
        "type": "timeout",
        "severity": 0,
        "userid": _OWNER_UID,
        "note": "resource allocation expired",
    }
    script.main("exception", context)
    if plan.timeout_killed:
        script.wait(5.0, 5.01)
        return 9
    script.wait(0.001, 0.002)
    _task_exit(script, plan, 14)
    script.wait(0.0005, 0.001)
    return 142 << 8


_Body = Callable[[_Script, _Plan, Allocation, float], int]
_BODIES: Final[Mapping[Outcome, _Body]] = {
    "ok": _body_exit,
    "exit": _body_exit,
    "exec-error": _body_exec_error,
    "task-signal": _body_task_signal,
    "shell-signal": _body_shell_signal,
    "cancel": _body_cancel,
    "timeout": _body_timeout,
}


# --- resources ---------------------------------------------------------------------


class _Cluster:
    """Free cores and GPUs per rank; first-fit placement by rank, as sched-simple does."""

    def __init__(self) -> None:
        self.cores: list[set[int]] = [set(range(CORES_PER_NODE)) for _ in range(NODES)]
        self.gpus: list[set[int]] = [
            set(range(GPUS_PER_NODE)) if rank in _GPU_RANKS else set() for rank in range(NODES)
        ]

    def copy(self) -> _Cluster:
        other = _Cluster.__new__(_Cluster)
        other.cores = [set(s) for s in self.cores]
        other.gpus = [set(s) for s in self.gpus]
        return other

    def _slots_on(self, rank: int, request: _Request) -> int:
        fit = len(self.cores[rank]) // request.cores
        if request.gpus:
            fit = min(fit, len(self.gpus[rank]) // request.gpus)
        return fit

    def place(self, request: _Request, ranks: Sequence[int]) -> Allocation | None:
        """Where ``request`` fits now, or None."""
        layout: dict[int, int] = {}
        if request.nnodes is None:
            left = request.nslots
            for rank in ranks:
                take = min(self._slots_on(rank, request), left)
                if take:
                    layout[rank] = take
                    left -= take
                if not left:
                    break
            if left:
                return None
        else:
            per_node = request.nslots // request.nnodes
            fits = [r for r in ranks if self._slots_on(r, request) >= per_node]
            if len(fits) < request.nnodes:
                return None
            layout = dict.fromkeys(fits[: request.nnodes], per_node)
        return {
            rank: (
                sorted(self.cores[rank])[: slots * request.cores],
                sorted(self.gpus[rank])[: slots * request.gpus],
            )
            for rank, slots in layout.items()
        }

    def take(self, alloc: Allocation) -> None:
        for rank, (cores, gpus) in alloc.items():
            self.cores[rank].difference_update(cores)
            self.gpus[rank].difference_update(gpus)

    def give(self, alloc: Allocation) -> None:
        for rank, (cores, gpus) in alloc.items():
            self.cores[rank].update(cores)
            self.gpus[rank].update(gpus)


# --- the resource life --------------------------------------------------------------

#: Mean time between two resource incidents, in unscaled seconds (the simulation's
#: scale speeds it up with the jobs).
_INCIDENT_GAP: Final = 300.0
#: Most nodes in an incident at once (the long drain aside), and GPU nodes among them.
_MAX_INCIDENT_NODES: Final = 4
_MAX_INCIDENT_GPU_NODES: Final = 1
Incident = Literal["repair", "nhc", "firmware", "panic", "torpid"]
_INCIDENTS: Final[tuple[Incident, ...]] = get_args(Incident)
_INCIDENT_WEIGHTS: Final = (0.45, 0.2, 0.12, 0.13, 0.1)
#: How long before the start the instance was started (the journal's ``restart``).
_UPTIME_S: Final = _UPTIME_MS / 1000.0


def _repair_reason(rng: random.Random, rank: int) -> str:
    """Why a node is drained for a hardware repair."""
    if rank in _GPU_RANKS and rng.random() < 0.4:
        return rng.choice(("nhc: nvidia-smi failed", "GPU fell off the bus"))
    return rng.choice(("bad dimm", f"ECC errors on {_host(rank)}", "bad dimm", "fan failure"))


def instance_R() -> dict[str, Any]:
    """The instance's RFC 20 R, as ``resource-define`` carries it beside its context.

    Ranks 0-11 have 8 cores, 12-15 8 cores and 2 GPUs; each queue's nodes have a
    property named after it (``execution.properties``, an idset per property).
    """
    return {
        "version": 1,
        "execution": {
            "R_lite": [
                {"rank": _idset(_CPU_RANKS), "children": {"core": f"0-{CORES_PER_NODE - 1}"}},
                {
                    "rank": _idset(_GPU_RANKS),
                    "children": {
                        "core": f"0-{CORES_PER_NODE - 1}",
                        "gpu": f"0-{GPUS_PER_NODE - 1}",
                    },
                },
            ],
            "nodelist": [_hostlist(range(NODES))],
            "properties": {q.name: _idset(q.ranks) for q in _QUEUES},
            "starttime": 0.0,
            "expiration": 0.0,
        },
    }


# --- the simulation ----------------------------------------------------------------

Phase = Literal["depend", "held", "pending", "running", "done"]
Action = Literal[
    "arrive", "schedule", "free", "release-hold", "cancel-pending", "incident", "resource"
]
#: What the simulation hands out: job events and resource events, in timestamp order.
Event = JobEvent | ResourceEvent


@dataclass
class _Job:
    """A job's place in the simulation."""

    plan: _Plan
    phase: Phase
    ran: bool = False
    succeeded: bool = False
    alloc: Allocation = field(default_factory=dict)
    free_at: float = math.inf
    last_ts: float = 0.0
    dependents: list[int] = field(default_factory=list)


class _Simulation:
    """A discrete-event simulation of arrivals, a scheduler, job lifecycles and nodes.

    Control actions (arrivals, scheduler passes, frees, hold releases, cancels,
    resource incidents and their steps) are processed in time order; each writes
    events no earlier than its own time, so events up to the next action's time can be
    handed out in timestamp order. The resource life draws from its own generator.
    """

    def __init__(self, seed: int, rate: float, start: float) -> None:
        if not (rate > 0 and math.isfinite(rate)):
            raise ValueError(f"rate must be a positive number of jobs per second, not {rate!r}")
        self.rng = random.Random(seed)
        self.rate = rate
        self.scale = min(1.0, _NOMINAL_RATE / rate)
        self.fluid = _Fluid(start)
        self.cluster = _Cluster()
        self.jobs: dict[int, _Job] = {}
        self.pending: list[int] = []  # schedulable jobids; FIFO is jobid order
        self.running: dict[int, _Job] = {}
        self.actions: list[tuple[float, int, Action, int]] = []
        self.out: list[tuple[float, int, Event]] = []
        self.seq = itertools.count()
        self.recent: list[int] = []  # recently submitted jobids, dependency parents
        self.schedule_queued_at = -math.inf
        self._at(start + self.rng.expovariate(rate), "arrive", 0)
        # The resource life.
        self.res_rng = random.Random(f"fluxmon-demo-resources-{seed}")
        self.offline: set[int] = set()
        self.drained: set[int] = set()
        self.torpid: set[int] = set()
        self.incident: set[int] = set()  # ranks in an incident (the long drain too)
        self.long_drained = -1
        self.steps: dict[int, Callable[[float], None]] = {}
        self.last_alloc = -math.inf  # newest alloc timestamp written
        self.history = self._resource_history(start)
        gap = _INCIDENT_GAP * self.scale
        self._at(start + self.res_rng.uniform(0.1, 0.5) * gap, "incident", 0)

    def events(self) -> Iterator[Event]:
        while True:
            when, _, action, jobid = heapq.heappop(self.actions)
            while self.out and self.out[0][0] <= when:
                yield heapq.heappop(self.out)[2]
            self._ACTIONS[action](self, when, jobid)

    # -- bookkeeping ---------------------------------------------------------------

    def _at(self, when: float, action: Action, jobid: int) -> None:
        heapq.heappush(self.actions, (when, next(self.seq), action, jobid))

    def _emit(self, job: _Job, script: _Script) -> None:
        for event in script.events:
            heapq.heappush(self.out, (event.timestamp, next(self.seq), event))
            if event.eventlog == MAIN:
                job.last_ts = event.timestamp

    def _script(self, job: _Job, t: float) -> _Script:
        """A script for ``job`` starting at ``t`` but after the job's last main event."""
        return _Script(self.rng, job.plan.jobid, max(t, job.last_ts + 0.00001))

    def _request_schedule(self, when: float) -> None:
        if self.schedule_queued_at != when:
            self.schedule_queued_at = when
            self._at(when, "schedule", 0)

    def _become_pending(self, job: _Job) -> None:
        job.phase = "pending"
        bisect.insort(self.pending, job.plan.jobid)
        self._request_schedule(job.last_ts)

    # -- actions -------------------------------------------------------------------

    def _arrive(self, now: float, _: int) -> None:
        self._at(now + self.rng.expovariate(self.rate), "arrive", 0)
        plan = _draw_plan(self.rng, self.fluid.next(now), self.scale)
        self._draw_waiting(plan)
        job = _Job(plan, "depend")
        self.jobs[plan.jobid] = job
        script = _Script(self.rng, plan.jobid, now)
        _submit_script(script, plan)
        self._emit(job, script)
        if plan.parent is not None:
            self.jobs[plan.parent].dependents.append(plan.jobid)
        elif plan.hold != "none":
            job.phase = "held"
            if plan.hold == "release":
                self._at(job.last_ts + plan.hold_for, "release-hold", plan.jobid)
        else:
            self._become_pending(job)
        if plan.cancel_pending_after is not None:
            self._at(job.last_ts + plan.cancel_pending_after, "cancel-pending", plan.jobid)
        self.recent = [*self.recent[-19:], plan.jobid]

    def _draw_waiting(self, plan: _Plan) -> None:
        """Whether the job waits on a parent, is held, or will be canceled pending."""
        rng = self.rng
        pick = rng.random()
        parents = [j for j in self.recent if self.jobs[j].phase != "done"]
        if pick < 0.06 and parents:
            parent = self.jobs[rng.choice(parents)].plan
            plan.parent = parent.jobid
            plan.userid = parent.userid  # afterok needs the same owner
        elif pick < 0.09:
            plan.hold = "release" if rng.random() < 0.65 else "cancel"
            plan.hold_for = rng.uniform(3.0, 90.0)
        elif pick < 0.11:
            plan.cancel_pending_after = rng.expovariate(1 / 20.0)
        if plan.hold == "cancel":
            plan.cancel_pending_after = plan.hold_for

    def _release_hold(self, now: float, jobid: int) -> None:
        job = self.jobs.get(jobid)
        if job is None or job.phase != "held":
            return
        script = self._script(job, now)
        _hold_released_script(script, job.plan)
        self._emit(job, script)
        self._become_pending(job)

    def _cancel_pending(self, now: float, jobid: int) -> None:
        job = self.jobs.get(jobid)
        if job is None or job.phase not in ("depend", "held", "pending"):
            return  # it started (or ended) first
        if job.phase == "pending":
            self.pending.remove(jobid)
        script = self._script(job, now)
        _cancel_pending_script(script, job.plan)
        self._emit(job, script)
        self._end(job)

    def _end(self, job: _Job) -> None:
        """The job reached clean: release or fail the jobs waiting on it."""
        job.phase = "done"
        for child_id in job.dependents:
            child = self.jobs.get(child_id)
            if child is None or child.phase != "depend":
                continue
            script = self._script(child, job.last_ts + 0.00003)
            if job.succeeded:
                _dependency_met_script(script, child.plan)
                self._emit(child, script)
                self._become_pending(child)
            else:
                _dependency_failed_script(script, child.plan, parent_ran=job.ran)
                self._emit(child, script)
                self._end(child)
        job.dependents.clear()
        self.jobs.pop(job.plan.jobid, None)
        # A finished job can no longer be a parent; keep `recent` short and valid.
        self.recent = [j for j in self.recent if j in self.jobs]

    def _free(self, now: float, jobid: int) -> None:
        job = self.running.pop(jobid)
        self.cluster.give(job.alloc)
        self._end(job)
        self._request_schedule(now)

    def _schedule(self, now: float, _: int) -> None:
        """One FIFO pass with backfill over the pending jobs.

        A job that does not fit blocks its partition; later ones may still start if
        they fit now and end before the blocked job could start.
        """
        shadow: dict[tuple[int, ...], float] = {}
        usable_ranks = {q.ranks: self._usable(q.ranks) for q in _QUEUES}
        t = now + self.rng.uniform(0.002, 0.006)
        for jobid in self.pending[:_SCHED_DEPTH]:
            job = self.jobs[jobid]
            if job.last_ts > now:  # its priority event is still to come
                continue
            ranks = job.plan.queue.ranks
            usable = usable_ranks[ranks]
            alloc = self.cluster.place(job.plan.request, usable)
            if ranks in shadow:
                if alloc is None or t + job.plan.estimate > shadow[ranks]:
                    continue
            elif alloc is None:
                shadow[ranks] = self._shadow_time(job.plan.request, usable)
                continue
            self._start(job, alloc, t)
            t += self.rng.uniform(0.0002, 0.0008)

    def _shadow_time(self, request: _Request, ranks: tuple[int, ...]) -> float:
        """When ``request`` will fit, freeing running jobs in the order they end."""
        cluster = self.cluster.copy()
        for job in sorted(self.running.values(), key=lambda j: j.free_at):
            cluster.give(job.alloc)
            if cluster.place(request, ranks) is not None:
                return job.free_at
        return math.inf

    def _start(self, job: _Job, alloc: Allocation, t: float) -> None:
        self.pending.remove(job.plan.jobid)
        self.cluster.take(alloc)
        job.phase, job.ran, job.alloc = "running", True, alloc
        job.succeeded = job.plan.outcome == "ok"
        script = self._script(job, t)
        _run_script(script, job.plan, alloc, starttime=script.t - 0.0005)
        self._emit(job, script)
        self.last_alloc = max(self.last_alloc, script.events[0].timestamp)
        job.free_at = next(e.timestamp for e in script.events if e.name == "free")
        self.running[job.plan.jobid] = job
        self._at(job.free_at, "free", job.plan.jobid)

    # -- the resource life ---------------------------------------------------------

    def _usable(self, ranks: tuple[int, ...]) -> tuple[int, ...]:
        """The ranks the scheduler may place on: not drained, offline or torpid."""
        down = self.drained | self.offline | self.torpid
        return tuple(r for r in ranks if r not in down) if down else ranks

    def _idle(self, rank: int) -> bool:
        return len(self.cluster.cores[rank]) == CORES_PER_NODE

    def _resource_history(self, start: float) -> list[ResourceEvent]:
        """The journal's history at connect.

        The instance started a day ago; one node was drained hours ago and is still
        waiting for its part.
        """
        rng = self.res_rng
        boot = start - _UPTIME_S
        everyone = _idset(range(NODES))
        restart = {"ranks": everyone, "online": "", "nodelist": _hostlist(range(NODES))}
        history = [
            ResourceEvent("restart", boot, restart),
            ResourceEvent(
                "resource-define", boot + 0.00003, {"method": "configuration", "R": instance_R()}
            ),
            ResourceEvent("online", boot + rng.uniform(0.2, 0.3), {"idset": "0"}),
            ResourceEvent(
                "online", boot + rng.uniform(0.9, 1.4), {"idset": _idset(range(1, NODES))}
            ),
        ]
        rank = rng.choice(_CPU_RANKS)
        since = start - rng.uniform(2.0, 20.0) * 3600.0
        history.append(ResourceEvent("drain", since, self._drain_context([rank], "bad dimm")))
        self.drained.add(rank)
        self.incident.add(rank)
        self.long_drained = rank
        self._later(start + rng.uniform(1.0, 3.0) * 3600.0 * self.scale, self._long_drain_over)
        return history

    def _later(self, when: float, step: Callable[[float], None]) -> None:
        key = next(self.seq)
        self.steps[key] = step
        self._at(when, "resource", key)

    def _resource_step(self, now: float, key: int) -> None:
        self.steps.pop(key)(now)

    def _post(self, now: float, name: str, context: Mapping[str, Any]) -> None:
        """Write a resource event at ``now``, after every alloc already written.

        A job placed before a node went away keeps its place, so its alloc comes first.
        """
        ts = max(now, self.last_alloc + 0.00001)
        heapq.heappush(self.out, (ts, next(self.seq), ResourceEvent(name, ts, context)))

    @staticmethod
    def _drain_context(ranks: Sequence[int], reason: str) -> dict[str, Any]:
        """``flux resource drain`` as drain.c posts it (``overwrite`` 0: the default)."""
        idset, nodelist = _idset(ranks), _hostlist(ranks)
        return {"idset": idset, "nodelist": nodelist, "overwrite": 0, "reason": reason}

    def _drain(self, now: float, ranks: Sequence[int], reason: str) -> None:
        self._post(now, "drain", self._drain_context(ranks, reason))
        self.drained.update(ranks)

    def _undrain(self, now: float, ranks: Sequence[int]) -> None:
        context = {"idset": _idset(ranks), "nodelist": _hostlist(ranks), "overwrite": 0}
        self._post(now, "undrain", context)
        self.drained.difference_update(ranks)
        self._request_schedule(now)

    def _set_offline(self, now: float, ranks: Sequence[int]) -> None:
        self._post(now, "offline", {"idset": _idset(ranks)})
        self.offline.update(ranks)

    def _set_online(self, now: float, ranks: Sequence[int]) -> None:
        self._post(now, "online", {"idset": _idset(ranks)})
        self.offline.difference_update(ranks)
        self._request_schedule(now)

    def _over(self, ranks: Sequence[int]) -> None:
        """An incident ended: its nodes may have another."""
        self.incident.difference_update(ranks)

    def _long_drain_over(self, now: float) -> None:
        """The part arrived: another node starts waiting for one, this one is undrained."""
        rng = self.res_rng
        old = self.long_drained
        candidates = [r for r in _CPU_RANKS if r not in self.incident]
        if candidates:
            rank = rng.choice(candidates)
            self._drain(now, [rank], "bad dimm")
            self.incident.add(rank)
            self.long_drained = rank
        self._undrain(now + 0.00002, [old])
        self._over([old])
        self._later(now + rng.uniform(1.0, 3.0) * 3600.0 * self.scale, self._long_drain_over)

    def _candidates(self) -> list[int]:
        """Ranks that may have an incident now (respecting the caps)."""
        busy = self.incident - {self.long_drained}
        if len(busy) >= _MAX_INCIDENT_NODES:
            return []
        gpu_busy = sum(r in _GPU_RANKS for r in busy) >= _MAX_INCIDENT_GPU_NODES
        return [
            r for r in range(NODES) if r not in self.incident and not (gpu_busy and r in _GPU_RANKS)
        ]

    def _incident(self, now: float, _: int) -> None:
        """Something happens to a node (or two); the next incident is drawn."""
        rng = self.res_rng
        s = self.scale
        self._at(now + rng.expovariate(1.0 / (_INCIDENT_GAP * s)), "incident", 0)
        candidates = self._candidates()
        if not candidates:
            return
        kind = rng.choices(_INCIDENTS, weights=_INCIDENT_WEIGHTS)[0]
        rank = rng.choice(candidates)
        if kind == "panic":
            idle = [r for r in candidates if self._idle(r)]
            if idle:
                self._panic(now, rng.choice(idle))
                return
            kind = "repair"  # no idle node to crash: a node is drained instead
        if kind == "firmware":
            ranks = [rank]
            if rank + 1 in candidates and (rank + 1 in _GPU_RANKS) == (rank in _GPU_RANKS):
                ranks.append(rank + 1)  # the two nodes of a chassis
            self._firmware(now, ranks)
        elif kind == "torpid":
            self.incident.add(rank)
            self._post(now, "torpid", {"idset": str(rank)})
            self.torpid.add(rank)
            self._later(now + rng.uniform(20.0, 90.0) * s, lambda t: self._lively(t, rank))
        else:
            if kind == "nhc":
                reason, repair = "nhc: /tmp full", rng.uniform(120.0, 360.0)
            else:
                reason, repair = _repair_reason(rng, rank), rng.uniform(300.0, 1200.0)
            self.incident.add(rank)
            self._drain(now, [rank], reason)
            self._later(now + repair * s, lambda t: self._repaired(t, [rank]))

    def _repaired(self, now: float, ranks: Sequence[int]) -> None:
        self._undrain(now, ranks)
        self._over(ranks)

    def _lively(self, now: float, rank: int) -> None:
        self._post(now, "lively", {"idset": str(rank)})
        self.torpid.discard(rank)
        self._over([rank])
        self._request_schedule(now)

    def _firmware(self, now: float, ranks: list[int]) -> None:
        """Drained for a firmware update; rebooted once its jobs are done, then undrained."""
        rng = self.res_rng
        s = self.scale
        self.incident.update(ranks)
        self._drain(now, ranks, "admin: firmware update")

        def reboot(t: float) -> None:
            if not all(self._idle(r) for r in ranks):  # wait for the running jobs
                self._later(t + rng.uniform(10.0, 30.0) * s, reboot)
                return
            self._set_offline(t, ranks)
            back = t + rng.uniform(180.0, 360.0) * s
            self._later(back, lambda t: self._set_online(t, ranks))
            self._later(back + rng.uniform(30.0, 120.0) * s, lambda t: self._repaired(t, ranks))

        self._later(now + rng.uniform(20.0, 60.0) * s, reboot)

    def _panic(self, now: float, rank: int) -> None:
        """An idle node crashes: offline, drained by the admin, rebooted, undrained."""
        rng = self.res_rng
        s = self.scale
        self.incident.add(rank)
        self._set_offline(now, [rank])
        drained = now + rng.uniform(10.0, 60.0) * s
        back = drained + rng.uniform(180.0, 600.0) * s
        undrained = back + rng.uniform(60.0, 300.0) * s
        self._later(drained, lambda t: self._drain(t, [rank], "kernel panic"))
        self._later(back, lambda t: self._set_online(t, [rank]))
        self._later(undrained, lambda t: self._repaired(t, [rank]))

    _ACTIONS: Final[Mapping[Action, Callable[[_Simulation, float, int], None]]] = {
        "arrive": _arrive,
        "schedule": _schedule,
        "free": _free,
        "release-hold": _release_hold,
        "cancel-pending": _cancel_pending,
        "incident": _incident,
        "resource": _resource_step,
    }


@dataclass(frozen=True)
class SimulatedCluster:
    """The resource journal's history at ``start``, and the endless stream from there."""

    history: list[ResourceEvent]
    events: Iterator[Event]


def simulate_cluster(*, seed: int, rate: float, start: float) -> SimulatedCluster:
    """A simulated cluster: its resource history, then its job and resource events.

    Jobs arrive as a Poisson process of ``rate`` jobs per second from ``start``;
    timestamps are simulated seconds. Everything depends only on the arguments.
    """
    simulation = _Simulation(seed, rate, start)
    return SimulatedCluster(simulation.history, simulation.events())


def simulate(*, seed: int, rate: float, start: float) -> Iterator[JobEvent]:
    """The job events of :func:`simulate_cluster`, in timestamp order."""
    events = simulate_cluster(seed=seed, rate=rate, start=start).events
    return (event for event in events if isinstance(event, JobEvent))


# --- the live source -----------------------------------------------------------------

#: Longest pause between two looks at the clock, and the shortest one worth taking.
_MAX_PAUSE: Final = 0.5
_MIN_PAUSE: Final = 0.01
#: Most events handed over at once (a clock jump must not build one huge batch).
_MAX_BATCH: Final = 5000


class DemoSource:
    """Plays :func:`simulate` in real time: each event is delivered when its time comes."""

    def __init__(self, *, rate: float, seed: int, clock: Callable[[], float] = time.time) -> None:
        if not (rate > 0 and math.isfinite(rate)):
            raise ValueError(f"rate must be a positive number of jobs per second, not {rate!r}")
        self.rate = rate
        self.seed = seed
        self._clock = clock

    def run(self, downstream: Downstream, stop: threading.Event) -> None:
        """Deliver events as the clock reaches them until ``stop`` is set.

        At connect, as the Flux source does: the resource mode, each queue's required
        node properties and the resource journal's history; the jobs have no history.
        """
        downstream.connected(
            f"demo: simulated Flux workload, seed={self.seed}, rate={self.rate:g} jobs/s"
        )
        cluster = simulate_cluster(seed=self.seed, rate=self.rate, start=self._clock())
        downstream.resource_mode("journal")
        downstream.declare_queue_nodes(QUEUE_REQUIRES)
        downstream.resource_events(cluster.history, live=False)
        downstream.caught_up()
        events = cluster.events
        upcoming = next(events)
        while not stop.is_set():
            downstream.heartbeat()
            now = self._clock()
            batch: list[Event] = []
            while upcoming.timestamp <= now and len(batch) < _MAX_BATCH:
                batch.append(upcoming)
                upcoming = next(events)
            _deliver(downstream, batch)
            if len(batch) < _MAX_BATCH:
                pause = min(max(upcoming.timestamp - now, _MIN_PAUSE), _MAX_PAUSE)
                stop.wait(pause)


def _deliver(downstream: Downstream, batch: Sequence[Event]) -> None:
    """Hand over a batch in order: each run of job or resource events in one call."""
    for is_job, run in itertools.groupby(batch, key=lambda e: isinstance(e, JobEvent)):
        if is_job:
            downstream.events([e for e in run if isinstance(e, JobEvent)], live=True)
        else:
            downstream.resource_events([e for e in run if isinstance(e, ResourceEvent)], live=True)
