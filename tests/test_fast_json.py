"""The optional compiled decoder (the ``fast`` extra, orjson) changes no result.

:func:`fluxmon.events.decode_json` uses orjson when it is installed; every line must then
decode to the same value (types included: an integer stays an integer), and every refused
line must be refused with the same message, as with the standard library alone. The
orjson cases are skipped where the extra is not installed (the standard library is then
the only decoder, which the rest of the suite tests).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any, Final

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from fluxmon.events import InvalidEvent, decode_json, decode_line, fast_json, needs_walk
from fluxmon.sources.replay import LineError, parse_line
from tests.test_hostile_input import CRASHERS, FIXED_REFUSALS, garbage_lines, json_values

orjson = pytest.importorskip("orjson", reason="orjson (the fast extra) is not installed")

#: Lines where orjson alone would differ from the standard library (value or verdict).
EDGES: Final = [
    b'{"a": 123456789012345678901234567890}',  # orjson: a float
    b'{"a": 18446744073709551616}',  # 2**64: orjson: a float
    b'{"a": -9223372036854775809}',  # below -2**63: orjson: a float
    b'{"a": 18446744073709551615, "b": -9223372036854775808}',  # the ends it keeps
    b'{"a": 0.1000000000000000055511151231257827}',
    b'{"a": 1e400}',
    b'{"a": -1e400}',
    b'{"a": 1e-400}',
    b'{"a": NaN}',
    b'{"a": -Infinity}',
    b'{"a": "\\ud800"}',  # a lone surrogate, escaped: refused by check_tree, not decode
    b'{"a": "\\ud83d\\ude00"}',
    b'{"a": "\xed\xa0\x80"}',  # a surrogate in raw bytes: not UTF-8
    b'{"a": "\xff"}',
    b"\xef\xbb\xbf{}",  # a byte order mark
    b'{"a": 1, "a": 2, "b": 3}',  # a repeated key: the last value wins, in the first place
    b"[" * 2000 + b"]" * 2000,
    b'{"a": 1} x',
    b"",
    b'"x"',
    b'{"a": -0.0, "b": -0}',
    b'{"a": 01}',
    b'{"a": "\x01"}',
    b'{"a": 1' + b"0" * 5000 + b"}",
]


@pytest.fixture(autouse=True)
def _restore_decoder() -> Iterator[None]:
    """Each test leaves the decoder as it found it."""
    before = fast_json()
    yield
    fast_json(before)


def same(a: object, b: object) -> bool:
    """Equal values of equal types throughout (1 is not 1.0, -0.0 is not 0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        assert isinstance(b, dict)
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        assert isinstance(b, list)
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        assert isinstance(b, float)
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    return a == b


def outcome(fast: bool, decode: Any, data: bytes | str) -> tuple[str, object]:
    """What ``decode`` makes of ``data`` with orjson on or off: a value or a refusal."""
    fast_json(fast)
    try:
        return "value", decode(data)
    except (InvalidEvent, LineError) as err:
        return type(err).__name__, str(err)


def check_same(decode: Any, data: bytes | str) -> None:
    """``decode`` gives the same value or the same refusal with and without orjson."""
    fast = outcome(True, decode, data)
    slow = outcome(False, decode, data)
    assert fast[0] == slow[0], (data, fast, slow)
    if fast[0] == "value":
        assert same(fast[1], slow[1]), (data, fast, slow)
    else:
        assert fast[1] == slow[1]


def test_orjson_is_used_when_installed() -> None:
    """With the extra installed, decode_json uses orjson unless told not to."""
    assert fast_json(True) is True
    assert fast_json(False) is False


@pytest.mark.parametrize("data", EDGES, ids=range(len(EDGES)))
def test_the_edges_decode_as_without_orjson(data: bytes) -> None:
    """Big integers, floats out of range, surrogates, BOM, depth: as the standard library."""
    check_same(decode_json, data)
    if data.isascii():
        check_same(decode_json, data.decode())


@pytest.mark.parametrize(
    "line", [*CRASHERS.values(), *(line for line, _ in FIXED_REFUSALS.values())]
)
def test_hostile_lines_are_refused_alike(line: str) -> None:
    """Every hostile replay line is refused with the same message either way."""
    check_same(parse_line, line)
    check_same(parse_line, line.encode())


@given(json_values)
@example(2**64)
@example(-(2**63) - 1)
@example({"x": [1.5e308, 5e-324, -0.0, 10**30]})
def test_any_json_value_decodes_alike(value: object) -> None:
    """Any value json can write (NaN, big integers, surrogates) decodes alike, both ways."""
    for ensure_ascii in (True, False):
        text = json.dumps(value, ensure_ascii=ensure_ascii)
        check_same(decode_json, text)
        try:
            data = text.encode()
        except UnicodeEncodeError:  # a lone surrogate, unescaped: str only
            continue
        check_same(decode_json, data)


@given(garbage_lines)
def test_any_garbage_line_parses_alike(line: bytes) -> None:
    """A replay line of garbage gets the same event or the same refusal either way."""
    check_same(parse_line, line)


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_floats_round_trip_alike(number: float) -> None:
    """Every finite float, as repr and as json writes it, decodes to the same float."""
    for text in (repr(number), json.dumps(number), f"{number:.17e}", f"{number:.15g}"):
        check_same(decode_json, text)


def two_calls(data: bytes) -> tuple[str, object, bool]:
    """What decode_json and needs_walk, called one after the other, make of ``data``."""
    walk = needs_walk(data)
    try:
        return "value", decode_json(data), walk
    except InvalidEvent as err:
        return "refused", str(err), walk


def one_scan(data: bytes) -> tuple[str, object, bool]:
    """What decode_line makes of ``data``, in the shape of :func:`two_calls`."""
    try:
        value, walk = decode_line(data)
    except InvalidEvent as err:
        return "refused", str(err), needs_walk(data)
    return "value", value, walk


def check_one_scan(data: bytes) -> None:
    """decode_line agrees with decode_json and needs_walk, with orjson on and off."""
    for fast in (True, False):
        fast_json(fast)
        got, want = one_scan(data), two_calls(data)
        assert got[0] == want[0], (data, fast, got, want)
        assert got[2] == want[2], (data, fast, got, want)
        assert same(got[1], want[1]) if got[0] == "value" else got[1] == want[1]


@pytest.mark.parametrize("data", EDGES, ids=range(len(EDGES)))
def test_one_scan_agrees_on_the_edges(data: bytes) -> None:
    """Big integers, surrogates, escapes, depth: decode_line is decode_json + needs_walk."""
    check_one_scan(data)


@given(json_values, st.integers(0, 80))
@example({"a": "\\u0041"}, 0)
@example({"a": 10**19}, 0)
@example({"a": 10**18}, 64)
def test_one_scan_agrees_on_any_json(value: object, depth: int) -> None:
    """Any JSON value, nested in ``depth`` lists and dicts alternately, scans alike."""
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    for ensure_ascii in (True, False):
        try:
            data = json.dumps(value, ensure_ascii=ensure_ascii).encode()
        except UnicodeEncodeError:  # a lone surrogate, unescaped: not a bytes line
            continue
        check_one_scan(data)


@given(garbage_lines | st.binary(max_size=200))
def test_one_scan_agrees_on_garbage(data: bytes) -> None:
    """Any bytes at all (brackets, backslashes, digit runs): decode_line scans alike."""
    check_one_scan(data)
