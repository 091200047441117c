"""The normalised event every source produces, job states, and jobid helpers.

Everything downstream of a source (tracker, sinks) sees only :class:`JobEvent`.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final, Literal, NamedTuple

#: Eventlog paths as Flux names them (RFC 21 main eventlog, exec system eventlog).
MAIN: Final = "eventlog"
EXEC: Final = "guest.exec.eventlog"
EVENTLOGS: Final = (MAIN, EXEC)

#: Short eventlog names used as the ``eventlog`` metric label.
EVENTLOG_LABEL: Final[Mapping[str, str]] = {MAIN: "main", EXEC: "exec"}

JobState = Literal["NEW", "DEPEND", "PRIORITY", "SCHED", "RUN", "CLEANUP", "INACTIVE"]
#: States in RFC 21 order; the index is the state's rank.
STATES: Final[tuple[JobState, ...]] = (
    "NEW",
    "DEPEND",
    "PRIORITY",
    "SCHED",
    "RUN",
    "CLEANUP",
    "INACTIVE",
)
#: States exposed as the ``state`` metric label (NEW lasts milliseconds, INACTIVE is gone).
METRIC_STATES: Final[tuple[JobState, ...]] = ("DEPEND", "PRIORITY", "SCHED", "RUN", "CLEANUP")
RANK: Final[Mapping[str, int]] = {s: i for i, s in enumerate(STATES)}

Result = Literal["completed", "failed", "canceled", "timeout"]
RESULTS: Final[tuple[Result, ...]] = ("completed", "failed", "canceled", "timeout")

#: Queue label value for jobs whose jobspec names no queue.
DEFAULT_QUEUE: Final = "default"


class JobEvent(NamedTuple):
    """One eventlog entry of one job, as every source delivers it.

    ``context`` is the RFC 18 context object (empty when the entry has none);
    ``jobspec`` rides on ``submit`` and ``R`` on ``alloc`` when the source knows them.
    """

    jobid: int
    eventlog: str
    name: str
    timestamp: float
    context: Mapping[str, Any]
    jobspec: Mapping[str, Any] | None = None
    R: Mapping[str, Any] | None = None


#: The context of an event that has none, shared by every such event, hence read-only.
EMPTY_CONTEXT: Final[Mapping[str, Any]] = MappingProxyType({})

# --- jobids (RFC 19 FLUID, f58 encoding) -------------------------------------

_F58_ALPHABET: Final = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_F58_INDEX: Final = {c: i for i, c in enumerate(_F58_ALPHABET)}
#: Prefixes Flux prints before an f58 id: the UTF-8 "ƒ" and its ASCII stand-in "f".
_F58_PREFIXES: Final = ("\u0192", "f")
MAX_JOBID: Final = 2**64 - 1


def f58(jobid: int) -> str:
    """Encode a jobid in f58 with the plain-ASCII ``f`` prefix (``f2ZMTeo5R``)."""
    if not 0 <= jobid <= MAX_JOBID:
        raise ValueError(f"jobid {jobid} is outside 0..2**64-1")
    if jobid == 0:
        return "f1"
    digits = []
    while jobid:
        jobid, rem = divmod(jobid, 58)
        digits.append(_F58_ALPHABET[rem])
    return "f" + "".join(reversed(digits))


def parse_jobid(value: object) -> int:
    """Return the integer jobid of a decimal int or an f58 string (``ƒ`` or ``f`` prefix).

    Raises ``ValueError`` naming the accepted forms when ``value`` is neither.
    """
    if isinstance(value, bool):
        raise ValueError(f"jobid must be an integer or an f58 string, not {value!r}")
    if isinstance(value, int):
        if 0 <= value <= MAX_JOBID:
            return value
        raise ValueError(f"jobid {value} is outside 0..2**64-1")
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return parse_jobid(int(text))
        for prefix in _F58_PREFIXES:
            if text.startswith(prefix) and len(text) > len(prefix):
                number = 0
                for char in text[len(prefix) :]:
                    digit = _F58_INDEX.get(char)
                    if digit is None:
                        raise ValueError(f"jobid {value!r}: {char!r} is not an f58 digit")
                    number = number * 58 + digit
                return parse_jobid(number)
    raise ValueError(f"jobid must be an integer or an f58 string like 'f2ZMTeo5R', not {value!r}")
