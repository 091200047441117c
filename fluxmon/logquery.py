"""``fluxmon logs``: find records in fluxmon's own logs by job, node, record name and time.

``--node HOST`` keeps the records whose ``nodelist`` (a compressed hostlist such as
``host[15-18]``, in ``job.finished`` and ``node.*`` records) contains HOST.

Reads logfmt or JSON lines (detected per line), as fluxmon wrote them or behind a
prefix such as journalctl's ``Dec 02 17:00:00 host fluxmon[123]: `` (the record starts
at the first ``ts=`` or ``{``), plain or gzip (``.gz``), and prints each matching line
exactly as it was read. Lines that hold no record are skipped.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any, Final

from fluxmon.events import MAX_JOBID, f58, parse_jobid
from fluxmon.exitcodes import EX_NOINPUT, EX_NOMATCH, EX_OK
from fluxmon.hostlist import hostlist_contains

JOB_FORMS: Final = (
    "f58 with the ƒ or f prefix (ƒBQPxhM, fBQPxhM), decimal (6828326912), "
    "hex (0x197000000), dothex (0000.0001.9700.0000) or kvs (job.0000.0001.9700.0000)"
)
TIME_FORMS: Final = (
    "ISO 8601 (2026-12-02T17:00:00Z; UTC unless it names an offset) or epoch seconds"
)

_DOTHEX: Final = re.compile(
    r"(?:job\.)?([0-9a-fA-F]{4})\.([0-9a-fA-F]{4})\.([0-9a-fA-F]{4})\.([0-9a-fA-F]{4})"
)
#: A logfmt ``key=value`` pair; the value is bare or a double-quoted, escaped string.
_PAIR: Final = re.compile(r'([^\s="]+)=("(?:[^"\\]|\\.)*"|[^\s"]*)')
#: Where a logfmt record starts: ``ts=`` at the start of the line or after a space.
_LOGFMT_START: Final = re.compile(r"(?:^|(?<=\s))ts=")
_UNESCAPE: Final = {"n": "\n", "r": "\r", "t": "\t"}
_ESCAPE: Final = re.compile(r"\\(.)")


def parse_job(text: str) -> int:
    """The jobid in any form Flux prints; ``ValueError`` naming the accepted forms if none."""
    value = text.strip()
    match = _DOTHEX.fullmatch(value)
    if match:
        return int("".join(match.groups()), 16)
    if value[:2].lower() == "0x":
        try:
            number = int(value[2:], 16)
        except ValueError:
            pass
        else:
            if 0 <= number <= MAX_JOBID:
                return number
    elif value:
        try:
            return parse_jobid(value)
        except ValueError:
            pass
        # ``ƒ`` typed in a UTF-8 terminal but decoded under another locale.
        try:
            redecoded = os.fsencode(value).decode("utf-8")
        except (UnicodeError, ValueError):
            redecoded = value
        if redecoded != value:
            try:
                return parse_jobid(redecoded)
            except ValueError:
                pass
    raise ValueError(f"{text!r} is not a jobid (valid: {JOB_FORMS})")


def parse_time(text: str) -> float:
    """Epoch seconds from ISO 8601 (UTC unless an offset is given) or epoch seconds."""
    value = text.strip()
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{text!r} is not a time (valid: {TIME_FORMS})") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _job_arg(text: str) -> int:
    try:
        return parse_job(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _time_arg(text: str) -> float:
    try:
        return parse_time(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``fluxmon logs`` options, on its subparser."""
    parser.add_argument(
        "files", nargs="*", metavar="FILE", help="log files (.gz too; - or none: stdin)"
    )
    parser.add_argument(
        "--job", action="append", type=_job_arg, default=[], help="jobid in any Flux form"
    )
    parser.add_argument("--msg", action="append", default=[], help="record name (job.finished)")
    parser.add_argument(
        "--node",
        action="append",
        default=[],
        metavar="HOST",
        help="records whose nodelist holds HOST (job.finished, node.*)",
    )
    for option in ("--since", "--until"):
        parser.add_argument(option, type=_time_arg, metavar="TIME", help=TIME_FORMS)


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        return _ESCAPE.sub(lambda m: _UNESCAPE.get(m[1], m[1]), value[1:-1])
    return value


def parse_logfmt(text: str) -> dict[str, str]:
    """A logfmt record as a dict of strings (quoted values unescaped)."""
    return {key: _unquote(value) for key, value in _PAIR.findall(text)}


def parse_record(line: str) -> Mapping[str, Any] | None:
    """The fluxmon record in a log line, after any prefix; None when there is none.

    A line is JSON when a ``{`` comes before any ``ts=``, else logfmt from ``ts=``.
    A journald JSON entry (``journalctl -o json``) yields the record in its ``MESSAGE``.
    """
    brace = line.find("{")
    start = _LOGFMT_START.search(line)
    if start is not None and (brace < 0 or start.start() < brace):
        record = parse_logfmt(line[start.start() :])
        return record if "msg" in record else None
    if brace < 0:
        return None
    try:
        obj = json.loads(line[brace:])
    except ValueError:
        return None
    if type(obj) is not dict:
        return None
    if "msg" not in obj and isinstance(obj.get("MESSAGE"), str):
        return parse_record(obj["MESSAGE"])
    return obj if "msg" in obj else None


def _record_time(record: Mapping[str, Any]) -> float | None:
    ts = record.get("ts")
    if not isinstance(ts, str):
        return None
    try:
        when = datetime.fromisoformat(ts)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _record_jobids(record: Mapping[str, Any]) -> set[int]:
    found: set[int] = set()
    for key in ("jobid", "id"):
        value = record.get(key)
        if value is None or value == "" or isinstance(value, bool):
            continue
        try:
            found.add(parse_jobid(value))
        except ValueError:
            continue
    return found


@dataclass(frozen=True)
class Query:
    """What a record must match; an empty set or None means any."""

    jobids: frozenset[int] = frozenset()
    msgs: frozenset[str] = frozenset()
    since: float | None = None
    until: float | None = None
    nodes: frozenset[str] = frozenset()
    # Texts one of which a line must contain before it is worth parsing.
    _job_needles: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _msg_needles: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        needles = [f58(j) for j in self.jobids] + [str(j) for j in self.jobids]
        object.__setattr__(self, "_job_needles", tuple(needles))
        object.__setattr__(self, "_msg_needles", tuple(self.msgs))

    def matches_line(self, line: str) -> bool:
        """True when ``line`` holds a record that matches."""
        if self._job_needles and not any(n in line for n in self._job_needles):
            return False
        if self._msg_needles and not any(n in line for n in self._msg_needles):
            return False
        if self.nodes and "nodelist" not in line:
            return False
        record = parse_record(line)
        return record is not None and self.matches(record)

    def matches(self, record: Mapping[str, Any]) -> bool:
        """True when a parsed record matches."""
        if self.msgs and record.get("msg") not in self.msgs:
            return False
        if self.jobids and self.jobids.isdisjoint(_record_jobids(record)):
            return False
        if self.nodes:
            nodelist = record.get("nodelist")
            if not isinstance(nodelist, str) or not any(
                hostlist_contains(nodelist, host) for host in self.nodes
            ):
                return False
        if self.since is not None or self.until is not None:
            ts = _record_time(record)
            if ts is None:
                return False
            if self.since is not None and ts < self.since:
                return False
            if self.until is not None and ts > self.until:
                return False
        return True


def filter_lines(
    lines: Iterable[bytes], query: Query, out: IO[bytes], *, line_buffered: bool = False
) -> int:
    """Write the matching lines to ``out`` as read; return how many matched.

    ``line_buffered`` flushes each match, for a live stream (``journalctl -f | ...``).
    """
    matched = 0
    for raw in lines:
        if query.matches_line(raw.decode("utf-8", "replace")):
            out.write(raw if raw.endswith(b"\n") else raw + b"\n")
            if line_buffered:
                out.flush()
            matched += 1
    out.flush()
    return matched


def run(paths: Sequence[str], query: Query, stdin: IO[bytes], out: IO[bytes], err: IO[str]) -> int:
    """Filter every input (``-`` is stdin); 0 if a line matched, 1 if none, 66 if unreadable."""
    matched = 0
    unreadable = False
    for path in paths or ["-"]:
        if path == "-":
            matched += filter_lines(stdin, query, out, line_buffered=True)
            continue
        try:
            with gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb") as handle:
                matched += filter_lines(handle, query, out)
        except (OSError, EOFError) as error:
            reason = error.strerror if isinstance(error, OSError) and error.strerror else error
            print(f"fluxmon logs: {path}: {reason}", file=err)
            unreadable = True
    if unreadable:
        return EX_NOINPUT
    return EX_OK if matched else EX_NOMATCH


def main(args: argparse.Namespace, stdin: IO[bytes], out: IO[bytes], err: IO[str]) -> int:
    """``fluxmon logs`` from its parsed arguments; the exit status."""
    query = Query(
        frozenset(args.job), frozenset(args.msg), args.since, args.until, frozenset(args.node)
    )
    try:
        return run(args.files, query, stdin, out, err)
    except BrokenPipeError:
        # The reader (``| head``) has had enough; say nothing more on a closed pipe.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, out.fileno())
        return EX_OK
