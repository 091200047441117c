"""``fluxmon logs``: logs of replayed real eventlogs, filtered by job, record name and time."""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Final

import pytest

from fluxmon import cli
from fluxmon.app import build
from fluxmon.config import load_settings
from fluxmon.events import f58
from fluxmon.logquery import Query, parse_job, parse_record, run
from fluxmon.sources.replay import ReplaySource, read_events
from tests.conftest import SCENARIOS

FLUXMON: Final = [sys.executable, "-m", "fluxmon"]
#: a-success: one job, 18 events, completed.
JOB: Final = 6828326912
JOB_FORMS: Final = {
    "f58-utf8": "\u0192" + f58(JOB)[1:],
    "f58-ascii": f58(JOB),
    "decimal": str(JOB),
    "hex": hex(JOB),
    "dothex": "0000.0001.9700.0000",
    "kvs": "job.0000.0001.9700.0000",
}
JOURNAL_PREFIX: Final = b"Dec 02 17:00:00 node0 fluxmon[123]: "


def _job_events(jobid: int) -> int:
    """How many events the recorded scenarios hold for ``jobid`` (the oracle)."""
    count = 0
    for path in SCENARIOS:
        with path.open("rb") as handle:
            for _, event in read_events(handle):
                assert not isinstance(event, Exception)
                count += event.jobid == jobid
    return count


@pytest.fixture(scope="module", params=["logfmt", "json"])
def log_file(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fluxmon's log of every recorded scenario replayed through the pipeline, in one format."""
    base = load_settings(None)
    settings = dataclasses.replace(base, log=dataclasses.replace(base.log, format=request.param))
    stream = io.StringIO()
    parts = build(settings, stream, clock=None)
    ReplaySource(SCENARIOS).run(parts.pipeline, threading.Event())
    assert sum(parts.tracker.rejected.values()) == 0
    path = tmp_path_factory.mktemp("logs") / f"fluxmon.{request.param}.log"
    path.write_text(stream.getvalue(), encoding="utf-8")
    return path


def _logs(capsysbinary: pytest.CaptureFixture[bytes], *args: str) -> tuple[int, list[bytes], bytes]:
    """Run ``fluxmon logs ARGS`` in-process: exit status, stdout lines, stderr."""
    status = cli.main(["logs", *args])
    captured = capsysbinary.readouterr()
    return status, captured.out.splitlines(keepends=True), captured.err


def _jobid_of(line: bytes) -> str | None:
    record = parse_record(line.decode())
    assert record is not None
    value = record.get("jobid")
    return value if isinstance(value, str) else None


@pytest.mark.parametrize("form", list(JOB_FORMS.values()), ids=list(JOB_FORMS))
def test_job_finds_exactly_that_jobs_records(
    log_file: Path, form: str, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    """--job in any Flux form prints that job's records, every one, as written, and no other."""
    status, lines, _ = _logs(capsysbinary, "--job", form, str(log_file))
    assert status == 0
    written = log_file.read_bytes().splitlines(keepends=True)
    assert all(line in written for line in lines)
    assert {_jobid_of(line) for line in lines} == {f58(JOB)}
    # One job.event per recorded event, and one job.finished.
    assert len(lines) == _job_events(JOB) + 1


def test_job_matches_by_decimal_id_when_jobid_differs() -> None:
    """A record is found by its decimal ``id`` as well as its f58 ``jobid``."""
    out = io.BytesIO()
    line = b"ts=2026-12-02T17:00:00Z level=warning msg=job.forgotten id=6828326912 reason=purged\n"
    assert run(["-"], Query(jobids=frozenset({JOB})), io.BytesIO(line), out, io.StringIO()) == 0
    assert out.getvalue() == line


def test_msg_filters_by_record_name(
    log_file: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    """--msg job.finished prints one record per job; with --job, just that job's."""
    status, lines, _ = _logs(capsysbinary, "--msg", "job.finished", str(log_file))
    assert status == 0
    jobids = [_jobid_of(line) for line in lines]
    assert len(jobids) == len(set(jobids)) == len(SCENARIOS)
    status, lines, _ = _logs(
        capsysbinary, "--msg", "job.finished", "--job", f58(JOB), str(log_file)
    )
    assert status == 0
    assert len(lines) == 1
    record = parse_record(lines[0].decode())
    assert record is not None
    assert record["msg"] == "job.finished"
    assert str(record["result"]) == "completed"


def test_msg_repeated_means_any_of(
    log_file: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    """Two --msg values print records of either name."""
    status, lines, _ = _logs(
        capsysbinary, "--msg", "history.caught_up", "--msg", "source.connected", str(log_file)
    )
    assert status == 0
    names = [parse_record(line.decode()) for line in lines]
    assert [r["msg"] for r in names if r is not None] == ["source.connected", "history.caught_up"]


TIMED: Final = b"".join(
    f"ts=2026-12-02T17:00:0{second}.500000Z level=info msg=job.finished jobid={f58(JOB)} "
    f"id={JOB}\n".encode()
    for second in range(5)
)


@pytest.mark.parametrize(
    ("since", "until", "seconds"),
    [
        pytest.param("2026-12-02T17:00:01.5Z", None, [1, 2, 3, 4], id="since-iso-inclusive"),
        pytest.param(None, "2026-12-02T17:00:02.5", [0, 1, 2], id="until-naive-is-utc"),
        pytest.param(
            "2026-12-02T18:00:01+01:00", "2026-12-02T17:00:03Z", [1, 2], id="range-with-offset"
        ),
        pytest.param("1796230801.5", "1796230802.5", [1, 2], id="epoch-seconds"),
        pytest.param("2026-12-03", None, [], id="after-everything"),
    ],
)
def test_time_range(
    tmp_path: Path,
    capsysbinary: pytest.CaptureFixture[bytes],
    since: str | None,
    until: str | None,
    seconds: list[int],
) -> None:
    """--since and --until keep the records whose ts lies in the range, ends included."""
    path = tmp_path / "timed.log"
    path.write_bytes(TIMED)
    args = [*(["--since", since] if since else []), *(["--until", until] if until else [])]
    status, lines, _ = _logs(capsysbinary, *args, str(path))
    assert [line[20:22] for line in lines] == [f"0{s}".encode() for s in seconds]
    assert status == (0 if seconds else 1)


def test_journalctl_prefixed_lines(
    log_file: Path, tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    """Records behind journalctl's default prefix are found, and printed with the prefix."""
    journal = tmp_path / "journal.txt"
    lines = log_file.read_bytes().splitlines(keepends=True)
    journal.write_bytes(
        b"-- Boot 0123456789abcdef --\n"
        + b"".join(JOURNAL_PREFIX + line for line in lines)
        + JOURNAL_PREFIX
        + b"Traceback (most recent call last): not a record\n"
    )
    status, found, _ = _logs(capsysbinary, "--job", JOB_FORMS["f58-utf8"], str(journal))
    assert status == 0
    assert all(line.startswith(JOURNAL_PREFIX) for line in found)
    assert len(found) == _job_events(JOB) + 1


def test_journalctl_json_output() -> None:
    """A ``journalctl -o json`` entry is matched on the record in its MESSAGE."""
    record = "ts=2026-12-02T17:00:00Z level=info msg=job.finished jobid={} id={}"
    entry = json.dumps({"_PID": "1", "MESSAGE": record.format(f58(JOB), JOB)}).encode() + b"\n"
    other = json.dumps({"_PID": "1", "MESSAGE": record.format(f58(2), 2)}).encode()
    out = io.BytesIO()
    query = Query(jobids=frozenset({JOB}), msgs=frozenset({"job.finished"}))
    assert run(["-"], query, io.BytesIO(entry + other + b"\n"), out, io.StringIO()) == 0
    assert out.getvalue() == entry


def test_gzip_input(
    log_file: Path, tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    """A .gz file is read decompressed, and gives what the plain file gives."""
    packed = tmp_path / "fluxmon.log.gz"
    packed.write_bytes(gzip.compress(log_file.read_bytes()))
    _, plain, _ = _logs(capsysbinary, "--job", str(JOB), str(log_file))
    status, unpacked, _ = _logs(capsysbinary, "--job", str(JOB), str(packed))
    assert status == 0
    assert unpacked == plain


def test_no_match_exits_1(log_file: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    """A job absent from the log prints nothing and exits 1, like grep."""
    status, lines, err = _logs(capsysbinary, "--job", "f1", str(log_file))
    assert (status, lines, err) == (1, [], b"")


def test_missing_file_exits_66_naming_it(
    log_file: Path, tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    """A missing file is named on stderr and exits 66; the readable files are still read."""
    missing = tmp_path / "nope.log"
    status, lines, err = _logs(capsysbinary, "--job", str(JOB), str(missing), str(log_file))
    assert status == os.EX_NOINPUT == 66
    assert str(missing).encode() in err
    assert b"No such file" in err
    assert len(lines) == _job_events(JOB) + 1


@pytest.mark.parametrize("bad", ["xyz", "0xZZ", "f0Il", "-5", ""])
def test_bad_job_is_a_usage_error_naming_the_forms(
    bad: str, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    """An unparseable --job exits 2 with a message listing the accepted forms."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["logs", "--job", bad])
    assert exit_info.value.code == 2
    err = capsysbinary.readouterr().err.decode()
    assert "is not a jobid" in err
    assert "decimal" in err
    assert "hex" in err
    assert "f58" in err


def test_bad_time_is_a_usage_error(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    """An unparseable --since exits 2 naming the accepted time forms."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["logs", "--since", "yesterday"])
    assert exit_info.value.code == 2
    assert "ISO 8601" in capsysbinary.readouterr().err.decode()


@pytest.mark.parametrize(("form", "text"), list(JOB_FORMS.items()), ids=list(JOB_FORMS))
def test_parse_job_forms(form: str, text: str) -> None:
    """Every printed form of a jobid parses to the same number."""
    assert parse_job(text) == JOB


def test_parse_job_utf8_under_another_locale() -> None:
    """ƒ typed in UTF-8 but decoded by a non-UTF-8 locale (surrogate escapes) still parses."""
    mangled = ("\u0192" + f58(JOB)[1:]).encode().decode("ascii", "surrogateescape")
    assert parse_job(mangled) == JOB


def test_real_cli_reads_stdin(log_file: Path) -> None:
    """``journalctl ... | fluxmon logs --job ƒ...`` through the real command on stdin."""
    data = b"".join(JOURNAL_PREFIX + line for line in log_file.read_bytes().splitlines(True))
    done = subprocess.run(
        [*FLUXMON, "logs", "--job", JOB_FORMS["f58-utf8"], "--msg", "job.finished"],
        input=data,
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.splitlines(keepends=True)
    assert line in data
    assert f58(JOB).encode() in line


def test_real_cli_missing_file() -> None:
    """The real command exits 66 and names a missing file."""
    done = subprocess.run(
        [*FLUXMON, "logs", "/nonexistent/fluxmon.log"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 66
    assert "/nonexistent/fluxmon.log" in done.stderr
