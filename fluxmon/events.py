"""The normalised event every source produces, job states, and jobid helpers.

Everything downstream of a source (tracker, sinks) sees only :class:`JobEvent`.
"""

from __future__ import annotations

import json
import math
import reprlib
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Final, Literal, NamedTuple, NoReturn

#: Eventlog paths as Flux names them (RFC 21 main eventlog, exec system eventlog).
MAIN: Final = "eventlog"
EXEC: Final = "guest.exec.eventlog"
#: Journal-only events: never written to a job's eventlog, so not job events at all.
JOURNAL_ONLY: Final = frozenset({"annotations"})
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


class ResourceEvent(NamedTuple):
    """One entry of the instance's resource eventlog, as every source delivers it.

    flux-core's ``resource.journal`` streams these (RFC 21-style: ``resource-define``
    first, carrying the instance's R in ``context["R"]``, then ``online``, ``offline``,
    ``drain``, ``undrain``, ``torpid``, ``lively``, ``resource-update``); a source
    that can only poll the resource status synthesises the same entries from what
    changed. ``context`` is the entry's context object (empty when it has none).
    """

    name: str
    timestamp: float
    context: Mapping[str, Any]


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


# --- hostile input: what every source checks before an entry becomes a JobEvent ----------

#: Deepest nesting accepted in an event's context, jobspec or R (the value itself is 1).
MAX_DEPTH: Final = 64
#: Longest replay line accepted, in bytes (its newline not counted).
MAX_LINE_BYTES: Final = 1 << 20


class InvalidEvent(ValueError):
    """Input that is not an event fluxmon accepts; the message says what is wrong."""


_short: Final = reprlib.Repr()
_short.maxstring = 60
_short.maxother = 60


def shown(value: object) -> str:
    """A short ``repr`` of hostile input that cannot raise: depth, length and size bounded."""
    try:
        return _short.repr(value)
    except Exception:  # a repr that raises is itself hostile input: name its type only
        return f"<{type(value).__name__}>"


def _refuse_constant(name: str) -> NoReturn:
    raise InvalidEvent(f"{name} is not a finite number (JSON has no NaN or Infinity)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InvalidEvent(f"number {shown(text)} is out of range (not a finite float)")
    return value


_decode: Final = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float).decode

_fast_loads: Callable[[bytes], Any] | None
_FastError: type[Exception]
try:  # the optional ``fast`` extra: orjson, a compiled decoder, when installed
    import orjson
except ImportError:  # pragma: no cover - depends on the installation
    _fast_loads = None
    _FastError = ValueError
else:
    _fast_loads = orjson.loads
    _FastError = orjson.JSONDecodeError

#: Maps each ASCII digit to ``0`` and every other byte to a space, to find digit runs.
_DIGITS: Final = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
#: A run of this many digits may be an integer outside -2**63..2**64-1, which orjson
#: would turn into a float: such a line is decoded by the standard library instead.
_LONG_RUN: Final = b"0" * 19
_fast: bool = _fast_loads is not None


def fast_json(on: bool | None = None) -> bool:
    """Whether :func:`decode_json` uses orjson; ``on`` turns it on or off (if installed).

    The result is the same either way: orjson decodes a line only when it accepts it and
    gives the value the standard library would (no digit run long enough to be an integer
    it turns into a float); anything it refuses is decoded again by the standard library,
    which refuses it with the same reason as without orjson (or accepts it, as before).
    """
    global _fast  # noqa: PLW0603 - a process-wide switch, for benchmarks and tests
    if on is not None:
        _fast = on and _fast_loads is not None
    return _fast


def decode_json(data: bytes | str) -> Any:
    """Decode one JSON document, or raise :class:`InvalidEvent` saying why it is refused.

    Refused: bytes that are not UTF-8, text that is not JSON, ``NaN``/``Infinity`` and
    floats past the float range, integers past Python's digit limit, nesting too deep for
    the decoder (:data:`MAX_DEPTH` is checked on the result by :func:`check_tree`). With
    orjson installed (the ``fast`` extra) it decodes what it can, see :func:`fast_json`.
    """
    if _fast and _fast_loads is not None:
        raw: bytes | None
        if isinstance(data, bytes):
            raw = data
        else:
            try:
                raw = data.encode()
            except UnicodeEncodeError:  # a lone surrogate: the standard library's case
                raw = None
        if raw is not None and _LONG_RUN not in raw.translate(_DIGITS):
            try:
                return _fast_loads(raw)
            except _FastError:
                pass  # said again below, in the standard library's words
    try:
        # Decoding first skips json's per-call encoding detection on bytes.
        return _decode(data.decode() if isinstance(data, bytes) else data)
    except InvalidEvent:
        raise
    except RecursionError:
        raise InvalidEvent(f"not JSON fluxmon accepts: nested deeper than {MAX_DEPTH}") from None
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError, the int digit limit
        raise InvalidEvent(f"not JSON: {err}") from None


#: The bytes :func:`decode_line` looks for, each kept as one class: digits become ``0``,
#: both opening brackets ``{``, the backslash and ``u`` themselves; all else a space.
_SCAN: Final = bytes(
    0x30 if 0x30 <= b <= 0x39 else 0x7B if b in b"{[" else b if b in b"\\u" else 0x20
    for b in range(256)
)


def decode_line(data: bytes) -> tuple[Any, bool]:
    r""":func:`decode_json` of a line, and :func:`needs_walk` of it, from one scan of it.

    The same value or :class:`InvalidEvent`, and the same flag, as the two calls: the
    line is translated once (:data:`_SCAN`) to find long digit runs, brackets and ``\u``.
    """
    if not (_fast and _fast_loads is not None):
        return decode_json(data), needs_walk(data)
    scan = data.translate(_SCAN)
    walk = scan.count(b"{") > MAX_DEPTH or b"\\u" in scan
    if _LONG_RUN not in scan:
        try:
            return _fast_loads(data), walk
        except _FastError:
            pass  # decode_json says why, in the standard library's words
    return decode_json(data), walk


def _not_utf8(text: str, what: str) -> None:
    """Raise InvalidEvent if ``text`` cannot be written as UTF-8 (a lone surrogate)."""
    try:
        text.encode()
    except UnicodeEncodeError as err:
        raise InvalidEvent(
            f"{what} is not valid UTF-8 text ({text[err.start]!r} at {err.start})"
        ) from None


def check_text(value: object, what: str) -> str:
    """A non-empty string that is valid UTF-8 text, or InvalidEvent naming ``what``."""
    if type(value) is not str or not value:
        raise InvalidEvent(f"{what} must be a non-empty string, not {shown(value)}")
    if not value.isascii():
        _not_utf8(value, what)
    return value


def check_timestamp(value: object) -> float:
    """A finite timestamp as a float (an int must fit a float), or InvalidEvent."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidEvent(f"timestamp must be a number, not {shown(value)}")
    try:
        ts = float(value)
    except OverflowError:  # an int past the float range
        ts = math.inf
    if not math.isfinite(ts):
        raise InvalidEvent(f"timestamp {shown(value)} is out of range (must be a finite float)")
    return ts


def check_tree(value: object, what: str) -> None:
    """Refuse (InvalidEvent) a JSON value too deep, or with a number or string JSON has not.

    That is: nested deeper than :data:`MAX_DEPTH`, a non-finite float, a string (or key)
    that is not UTF-8, anything not JSON. Iterative, so no depth makes it recurse.
    A flat dict of ASCII keys and plain scalars (most contexts) is passed in one loop;
    anything else is walked by :func:`_walk_tree`, which also says what is wrong.
    """
    if type(value) is dict:
        for key, item in value.items():
            kind = type(item)
            if type(key) is not str or not key.isascii():
                break
            if kind is str:
                if not item.isascii():
                    break
            elif kind is float:
                if item - item != 0.0:  # inf or nan
                    break
            elif kind is not int and kind is not bool and item is not None:
                break
        else:
            return
    level: list[Any] = [value]
    depth = 1
    while level:  # level by level, exact JSON types only; anything else: _walk_tree
        below: list[Any] = []
        for node in level:
            kind = type(node)
            if kind is str:
                if node.isascii():
                    continue
            elif kind is dict:
                if depth <= MAX_DEPTH:
                    for key in node:
                        if type(key) is not str or not key.isascii():
                            break
                    else:
                        below.extend(node.values())
                        continue
            elif kind is list:
                if depth <= MAX_DEPTH:
                    below.extend(node)
                    continue
            elif (
                kind is int
                or kind is bool
                or node is None
                or (kind is float and node - node == 0.0)  # finite
            ):
                continue
            _walk_tree(value, what)  # a fault, or a node to look at closer: it says which
            return
        level = below
        depth += 1


def _walk_tree(value: object, what: str) -> None:
    """:func:`check_tree` for any value: every node visited, the first fault refused."""
    stack: list[tuple[object, int]] = [(value, 1)]
    pop, push = stack.pop, stack.append
    while stack:
        node, depth = pop()
        kind = type(node)
        if isinstance(node, str):
            if not node.isascii():
                _not_utf8(node, what)
        elif isinstance(node, float):
            if not math.isfinite(node):
                raise InvalidEvent(f"{what} holds {node!r}, not a finite number")
        elif node is None or isinstance(node, int):
            pass
        elif isinstance(node, Mapping | list | tuple):
            if depth > MAX_DEPTH:
                raise InvalidEvent(f"{what} is nested deeper than {MAX_DEPTH}")
            if isinstance(node, Mapping):
                for key, item in node.items():
                    if type(key) is not str:
                        raise InvalidEvent(f"{what} has a key that is not a string: {shown(key)}")
                    if not key.isascii():
                        _not_utf8(key, what)
                    push((item, depth + 1))
            else:
                for item in node:
                    push((item, depth + 1))
        else:
            raise InvalidEvent(f"{what} holds a {kind.__name__}, which is not JSON")


def _object(value: object, what: str) -> Mapping[str, Any] | None:
    if value is None or isinstance(value, Mapping):
        return value
    raise InvalidEvent(f"{what} must be an object, not {type(value).__name__}")


def entry_event(
    jobid: int,
    eventlog: str,
    entry: Mapping[str, Any],
    jobspec: object = None,
    R: object = None,
    *,
    walk: bool = True,
) -> JobEvent:
    """The JobEvent of one eventlog entry, or InvalidEvent saying why it is not one.

    The entry has ``name``, ``timestamp`` and ``context``; ``jobspec`` and ``R`` came with
    it. Every source checks its entries here. ``walk=False`` skips :func:`check_tree` on the
    context, jobspec and R: only for a caller that knows from the raw text that they cannot
    fail it (see :func:`needs_walk`).
    """
    try:
        name = entry["name"]
        timestamp = entry["timestamp"]
        context = entry.get("context")
    except KeyError as err:
        raise InvalidEvent(f"missing key {err} (required: name, timestamp)") from None
    except (TypeError, AttributeError):
        raise InvalidEvent(f"an eventlog entry must be an object, not {shown(entry)}") from None
    # Fast paths first (this runs once per event); the check_* calls say what is wrong.
    if type(name) is not str or not name or not name.isascii():
        name = check_text(name, "name")
    if type(timestamp) is float and timestamp - timestamp == 0.0:  # finite: not inf, nan
        ts = timestamp
    else:
        ts = check_timestamp(timestamp)
    if type(context) is not dict:
        context = _object(context, "context") or EMPTY_CONTEXT
    if jobspec is not None and type(jobspec) is not dict:
        jobspec = _object(jobspec, "jobspec")
    if R is not None and type(R) is not dict:
        R = _object(R, "R")
    if walk:
        check_tree(context, "context")
        if jobspec is not None:
            check_tree(jobspec, "jobspec")
        if R is not None:
            check_tree(R, "R")
    return JobEvent(jobid, eventlog, name, ts, context, jobspec, R)


def resource_entry_event(entry: Mapping[str, Any], *, walk: bool = True) -> ResourceEvent:
    """The ResourceEvent of one resource eventlog entry, or InvalidEvent saying why not.

    The same checks as :func:`entry_event`: a non-empty UTF-8 ``name``, a finite
    ``timestamp``, a ``context`` object (default ``{}``) that :func:`check_tree` accepts.
    """
    try:
        name = entry["name"]
        timestamp = entry["timestamp"]
        context = entry.get("context")
    except KeyError as err:
        raise InvalidEvent(f"missing key {err} (required: name, timestamp)") from None
    except (TypeError, AttributeError):
        raise InvalidEvent(f"a resource entry must be an object, not {shown(entry)}") from None
    name = check_text(name, "name")
    ts = check_timestamp(timestamp)
    context = _object(context, "context") or EMPTY_CONTEXT
    if walk:
        check_tree(context, "context")
    return ResourceEvent(name, ts, context)


def needs_walk(raw: bytes | str) -> bool:
    r"""Whether a decoded line could fail :func:`check_tree`.

    It could when it has more brackets than :data:`MAX_DEPTH` (a bound on its depth) or a
    ``\u`` escape: a lone surrogate gets through strict UTF-8 decoding only as one, and
    other escapes are rare, so the walk they cost is too. Non-finite numbers are refused
    by :func:`decode_json` itself.
    """
    if isinstance(raw, str):
        if not raw.isascii():
            return True
        raw = raw.encode()
    return raw.count(b"{") + raw.count(b"[") > MAX_DEPTH or b"\\u" in raw
