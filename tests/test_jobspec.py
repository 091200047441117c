"""The jobspec and R builders: what they build is what the tracker reads back."""

from __future__ import annotations

from typing import Any

import pytest

from fluxmon.jobspec import RLIMIT, jobspec, resource_set
from fluxmon.testing import ev
from fluxmon.tracker import Tracker


def _allocated(spec: dict[str, Any], R: dict[str, Any]) -> Tracker:
    """A tracker that has seen job 1 submitted with ``spec`` and allocated ``R``."""
    tracker = Tracker([])
    for event in [
        ev(1, "submit", 1.0, jobspec=spec, userid=1, urgency=16, flags=0, version=1),
        ev(1, "validate", 1.1),
        ev(1, "depend", 1.2),
        ev(1, "priority", 1.3, priority=16),
        ev(1, "alloc", 1.4, R=R),
    ]:
        tracker.apply(event, True)
    return tracker


@pytest.mark.parametrize(
    ("spec", "R", "read"),
    [
        pytest.param(jobspec(), resource_set(1.4), ("default", 0.0, 1, 1), id="smallest"),
        pytest.param(
            jobspec("gpu", 300.0, 4, gpus=1), resource_set(1.4, 2), ("gpu", 300.0, 4, 2), id="gpu"
        ),
        pytest.param(
            jobspec("batch", 60, 6, nnodes=3, cwd="/tmp", rlimit=RLIMIT),
            resource_set(1.4, 3, duration=60, nslots=6),
            ("batch", 60.0, 6, 3),
            id="nodes",
        ),
    ],
)
def test_tracker_reads_what_the_builders_build(
    spec: dict[str, Any], R: dict[str, Any], read: tuple[str, float, int, int]
) -> None:
    """Queue, time limit and task count come back from the jobspec, node count from R."""
    job = _allocated(spec, R).jobs[1]
    assert (job.queue, job.duration_limit, job.ntasks, job.nnodes) == read


def test_optional_system_attributes_appear_only_when_given() -> None:
    """The default jobspec has only a duration; cwd, queue, rlimits, dependencies on request."""
    assert jobspec()["attributes"]["system"] == {"duration": 0.0}
    after = [{"scheme": "afterok", "value": "f1"}]
    system = jobspec("debug", cwd="/home/a", rlimit={"core": 0}, dependencies=after)
    assert system["attributes"]["system"] == {
        "duration": 0.0,
        "cwd": "/home/a",
        "queue": "debug",
        "shell": {"options": {"rlimit": {"core": 0}}},
        "dependencies": after,
    }


def test_node_level_splits_slots_evenly() -> None:
    """With nnodes, slots sit under a node vertex, slots // nnodes per node."""
    (node,) = jobspec(slots=8, nnodes=2, cores=4)["resources"]
    assert node["type"] == "node"
    assert node["count"] == 2
    assert node["with"] == [
        {"type": "slot", "count": 4, "with": [{"type": "core", "count": 4}], "label": "task"}
    ]


@pytest.mark.parametrize(
    ("duration", "expiration"),
    [pytest.param(0.0, 0.0, id="none"), pytest.param(60, 160.0, id="60s")],
)
def test_R_expires_after_the_time_limit(duration: float, expiration: float) -> None:
    """R's expiration is starttime + the limit, or 0 for a job without one."""
    assert resource_set(100.0, duration=duration)["execution"]["expiration"] == expiration
