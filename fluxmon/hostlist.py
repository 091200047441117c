"""RFC 22 idsets (``0-3,7``) and RFC 29 hostlists (``host[15-18,20]``): pure helpers.

Every decoder takes a ``limit`` on how many ids or hosts it will produce, so hostile
input such as ``0-4294967295`` is refused (``ValueError``) instead of expanded.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

#: Most ids or hosts a decoder produces by default.
MAX_IDS: Final = 1 << 20

_RANGE: Final = re.compile(r"(\d+)(?:-(\d+))?\Z")


def decode_idset(text: str, limit: int = MAX_IDS) -> list[int]:
    """The ids of an RFC 22 idset (``0-3,7`` or ``[0-3,7]``), sorted, without repeats.

    Raises ``ValueError`` for text that is not an idset or names more than ``limit`` ids.
    The empty idset (``""``) is valid.
    """
    if not isinstance(text, str):
        raise ValueError(f"an idset must be a string, not {type(text).__name__}")
    body = text.strip()
    if body.startswith("[") and body.endswith("]"):
        body = body[1:-1]
    if not body:
        return []
    ids: set[int] = set()
    for part in body.split(","):
        match = _RANGE.match(part)
        if match is None or not part.isascii():
            raise ValueError(f"{part[:40]!r} is not an id or a range of ids")
        low = int(match.group(1))
        high = int(match.group(2)) if match.group(2) is not None else low
        if high < low:
            raise ValueError(f"range {part[:40]!r} runs backwards")
        if high - low + 1 + len(ids) > limit:
            raise ValueError(f"idset names more than {limit} ids")
        ids.update(range(low, high + 1))
    return sorted(ids)


def encode_idset(ids: Iterable[int]) -> str:
    """The shortest RFC 22 range form of ``ids`` (``0-3,7``); ``""`` when empty."""
    parts: list[str] = []
    run: list[int] = []
    for i in sorted(set(ids)):
        if run and i == run[1] + 1:
            run[1] = i
            continue
        if run:
            parts.append(_span(run[0], run[1]))
        run = [i, i]
    if run:
        parts.append(_span(run[0], run[1]))
    return ",".join(parts)


def _span(low: int, high: int) -> str:
    return str(low) if low == high else f"{low}-{high}"


def _split_top(text: str) -> list[str]:
    """Split a hostlist on the commas outside brackets."""
    parts: list[str] = []
    depth = 0
    start = 0
    for i, char in enumerate(text):
        if char == "[":
            depth += 1
            if depth > 1:
                raise ValueError("nested brackets in a hostlist")
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise ValueError("unbalanced ']' in a hostlist")
        elif char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise ValueError("unbalanced '[' in a hostlist")
    parts.append(text[start:])
    return parts


def _expand_ranges(body: str, limit: int) -> list[str]:
    """The numbers of ``15-18,020``, keeping each range's zero padding, in order."""
    out: list[str] = []
    for part in body.split(","):
        match = _RANGE.match(part)
        if match is None or not part.isascii():
            raise ValueError(f"{part[:40]!r} is not a number or a range in a hostlist")
        first = match.group(1)
        last = match.group(2) if match.group(2) is not None else first
        low, high = int(first), int(last)
        if high < low:
            raise ValueError(f"range {part[:40]!r} runs backwards")
        if high - low + 1 + len(out) > limit:
            raise ValueError(f"hostlist names more than {limit} hosts")
        width = len(first) if first.startswith("0") and len(first) > 1 else 0
        out.extend(str(n).zfill(width) for n in range(low, high + 1))
    return out


def decode_hostlist(text: str, limit: int = MAX_IDS) -> list[str]:
    """The hosts of an RFC 29 hostlist (``host[15-18,20],login1``), in order, repeats kept.

    Raises ``ValueError`` for text that is not a hostlist or names more than ``limit``.
    """
    if not isinstance(text, str):
        raise ValueError(f"a hostlist must be a string, not {type(text).__name__}")
    text = text.strip()
    if not text:
        return []
    hosts: list[str] = []
    for part in _split_top(text):
        if not part:
            raise ValueError("empty host name in a hostlist")
        open_at = part.find("[")
        if open_at < 0:
            hosts.append(part)
        else:
            close_at = part.index("]")
            prefix, body, suffix = (
                part[:open_at],
                part[open_at + 1 : close_at],
                part[close_at + 1 :],
            )
            if "[" in suffix or "]" in suffix:
                raise ValueError(f"{part[:40]!r}: one bracket group per host is supported")
            hosts.extend(prefix + n + suffix for n in _expand_ranges(body, limit - len(hosts)))
        if len(hosts) > limit:
            raise ValueError(f"hostlist names more than {limit} hosts")
    return hosts


_NUMBERED: Final = re.compile(r"(.*?)(\d+)(\D*)\Z", re.DOTALL)


def encode_hostlist(hosts: Iterable[str]) -> str:
    """The compressed RFC 29 form of ``hosts`` in their order (``host[15-18,20],login1``).

    Consecutive hosts sharing a prefix and suffix are grouped; numbers keep their zero
    padding (only equal widths join a range). ``decode_hostlist`` gives ``hosts`` back.
    """
    groups: list[tuple[str, str, list[tuple[int, int, int]]] | str] = []
    for host in hosts:
        match = _NUMBERED.match(host)
        if match is None:
            groups.append(host)
            continue
        prefix, digits, suffix = match.groups()
        width = len(digits) if digits.startswith("0") and len(digits) > 1 else 0
        number = int(digits)
        last = groups[-1] if groups else None
        if isinstance(last, tuple) and last[0] == prefix and last[1] == suffix:
            ranges = last[2]
            low, high, w = ranges[-1]
            if (
                number == high + 1
                and w == width
                and len(str(number).zfill(width)) == len(str(high).zfill(width))
            ):
                ranges[-1] = (low, number, w)
            else:
                ranges.append((number, number, width))
            continue
        groups.append((prefix, suffix, [(number, number, width)]))
    parts: list[str] = []
    for group in groups:
        if isinstance(group, str):
            parts.append(group)
            continue
        prefix, suffix, ranges = group
        text = [
            str(lo).zfill(w) if lo == hi else f"{str(lo).zfill(w)}-{str(hi).zfill(w)}"
            for lo, hi, w in ranges
        ]
        if len(ranges) == 1 and ranges[0][0] == ranges[0][1]:
            parts.append(f"{prefix}{text[0]}{suffix}")
        else:
            parts.append(f"{prefix}[{','.join(text)}]{suffix}")
    return ",".join(parts)


def hostlist_contains(hostlist: str, host: str, limit: int = MAX_IDS) -> bool:
    """Whether ``host`` is one of the hosts of ``hostlist`` (False if it does not decode)."""
    try:
        return host in decode_hostlist(hostlist, limit)
    except ValueError:
        return False
