"""The replay format and ``fluxmon replay``: parsing, refusals with line numbers, exit codes."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from fluxmon.app import build
from fluxmon.config import Settings
from fluxmon.events import f58, parse_jobid
from fluxmon.sources.replay import (
    LineError,
    ReplaySource,
    UnreadableInput,
    format_event,
    parse_line,
    read_entries,
)
from fluxmon.testing import lifecycle, replay_lines
from tests.conftest import DATA, SCENARIOS

GOOD = {"id": 1, "eventlog": "eventlog", "timestamp": 1.5, "name": "submit", "context": {}}


def line(**changes: object) -> str:
    obj = {**GOOD, **changes}
    return json.dumps({k: v for k, v in obj.items() if v is not ...})


def test_f58_round_trip_matches_flux() -> None:
    """f58 encoding agrees with the ids flux printed for the recorded jobs."""
    assert f58(6828326912) == "fBQPxhM"
    for text in (DATA / "journal.jsonl").read_text().splitlines():
        entry = json.loads(text)
        if entry["jobid"] > 0:
            assert f58(entry["jobid"]) == entry["jobid_f58"].replace("\u0192", "f")
            assert parse_jobid(entry["jobid_f58"]) == entry["jobid"]
    assert parse_jobid("\u0192BQPxhM") == 6828326912
    assert parse_jobid("fBQPxhM") == 6828326912
    assert parse_jobid("6828326912") == 6828326912


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param("fl0", id="zero-not-f58"),
        pytest.param("", id="empty"),
        pytest.param(-1, id="negative"),
        pytest.param(True, id="bool"),
        pytest.param(2**64, id="too-big"),
        pytest.param(1.5, id="float"),
    ],
)
def test_bad_jobids(bad: object) -> None:
    """Jobids that are neither an int in range nor f58 are refused with a message."""
    with pytest.raises(ValueError, match="jobid"):
        parse_jobid(bad)


def test_parse_line_accepts_f58_and_defaults() -> None:
    """id may be f58; eventlog defaults to main and context to {}."""
    event = parse_line('{"id": "fBQPxhM", "timestamp": 2, "name": "validate"}')
    assert (event.jobid, event.eventlog, event.timestamp, dict(event.context)) == (
        6828326912,
        "eventlog",
        2.0,
        {},
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("{not json", "not JSON", id="not-json"),
        pytest.param("[1, 2]", "must be a JSON object", id="array"),
        pytest.param(line(id=...), "missing key 'id'", id="no-id"),
        pytest.param(line(name=""), "name must be", id="empty-name"),
        pytest.param(line(timestamp="now"), "timestamp must be a number", id="ts-str"),
        pytest.param(line(timestamp=True), "timestamp must be a number", id="ts-bool"),
        pytest.param('{"id":1,"name":"x","timestamp":NaN}', "finite", id="ts-nan"),
        pytest.param(line(eventlog="kvs"), "eventlog 'kvs' is not one of", id="eventlog"),
        pytest.param(line(context=[1]), "context must be an object", id="context-list"),
        pytest.param(line(jobspec="x"), "jobspec must be an object", id="jobspec-str"),
        pytest.param(line(id="f0OIl"), "not an f58 digit", id="bad-f58"),
        pytest.param(b'{"id":1,"name":"\xff"}', "not JSON", id="bad-utf8"),
    ],
)
def test_parse_line_refusals(text: str | bytes, message: str) -> None:
    """Each malformed line is refused with a message saying what is wrong."""
    with pytest.raises(LineError, match=message):
        parse_line(text)


def test_format_event_round_trips() -> None:
    """A formatted event parses back to the same event."""
    for event in lifecycle(42, 10.0, exec_events=True, queue="q"):
        assert parse_line(format_event(event)) == event


def fluxmon(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fluxmon", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
    )


def test_replay_cli_prints_exposition_and_exits_0() -> None:
    """fluxmon replay prints a parseable exposition with every recorded job finished."""
    proc = fluxmon("replay", *map(str, SCENARIOS))
    assert proc.returncode == 0, proc.stderr
    families = {f.name: f for f in text_string_to_metric_families(proc.stdout)}
    finished = sum(s.value for s in families["flux_jobs_finished"].samples)
    assert finished == len(SCENARIOS)
    assert "job.finished" in proc.stderr
    assert "event.rejected" not in proc.stderr


def test_replay_cli_malformed_lines_counted_and_continues(tmp_path: Path) -> None:
    """Bad lines are refused by line number, the rest is replayed, and the exit code is 65."""
    events = lifecycle(5, 100.0)
    text = replay_lines(events).splitlines()
    text.insert(2, "this is not json")
    text.insert(4, "")
    text.insert(5, '{"id": 5, "name": "memo", "timestamp": "yesterday"}')
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(text) + "\n")
    proc = fluxmon("replay", str(path))
    assert proc.returncode == 65
    rejected = [r for r in proc.stderr.splitlines() if "event.rejected" in r]
    assert len(rejected) == 2
    assert f"{path}:3: not JSON" in rejected[0]
    assert f"{path}:6: timestamp must be a number" in rejected[1]
    families = {f.name: f for f in text_string_to_metric_families(proc.stdout)}
    errors = {s.labels["reason"]: s.value for s in families["fluxmon_event_errors"].samples}
    assert errors["malformed"] == 2
    finished = {s.labels["result"]: s.value for s in families["flux_jobs_finished"].samples}
    assert finished["completed"] == 1, "the job around the bad lines is intact"


@pytest.mark.parametrize(
    ("name", "why"),
    [
        pytest.param("nope.jsonl", "No such file or directory", id="missing"),
        pytest.param(".", "Is a directory", id="directory"),
    ],
)
def test_replay_cli_unreadable_file_is_noinput(tmp_path: Path, name: str, why: str) -> None:
    """A file that cannot be read is EX_NOINPUT (66): one line naming it, nothing replayed."""
    missing = tmp_path / name
    proc = fluxmon("replay", str(DATA / "journal.replay.jsonl"), str(missing))
    assert proc.returncode == 66
    assert proc.stderr == f"{missing}: cannot read: {why}\n"
    assert proc.stdout == ""


def test_replay_cli_names_every_unreadable_file(tmp_path: Path) -> None:
    """Each unreadable file gets its own line, in the order given."""
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    proc = fluxmon("replay", str(first), str(DATA / "journal.replay.jsonl"), str(second))
    assert proc.returncode == 66
    assert proc.stderr.splitlines() == [
        f"{first}: cannot read: No such file or directory",
        f"{second}: cannot read: No such file or directory",
    ]


def test_replay_source_raises_for_a_file_gone_since_the_check(tmp_path: Path) -> None:
    """ReplaySource names a file it cannot open rather than counting it as malformed input."""
    parts = build(Settings(), io.StringIO(), clock=None)
    with pytest.raises(UnreadableInput, match=r"gone\.jsonl: cannot read: No such file"):
        ReplaySource([tmp_path / "gone.jsonl"]).run(parts.pipeline, threading.Event())
    assert sum(parts.tracker.rejected.values()) == 0


def test_replay_is_deterministic() -> None:
    """Two replays of the same files print the same exposition."""
    first = fluxmon("replay", str(DATA / "journal.replay.jsonl"))
    second = fluxmon("replay", str(DATA / "journal.replay.jsonl"))
    assert first.returncode == second.returncode == 0
    assert first.stdout == second.stdout


_spaces = st.text(alphabet=" \t\r\n\x0b\x0c\x1c\x85\xa0\u2028\u3000x{}", max_size=8)


@given(st.lists(_spaces | _spaces.map(lambda t: t.encode("utf-8", "surrogatepass")), max_size=6))
def test_blank_lines_are_those_strip_empties(lines: list[str | bytes]) -> None:
    """A line is skipped as blank exactly when ``strip`` leaves nothing (str and bytes)."""
    numbered = [lineno for lineno, _ in read_entries(lines)]
    assert numbered == [n for n, line in enumerate(lines, 1) if line.strip()]
