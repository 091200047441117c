"""The ``fluxmon`` command as a new user meets it: demo, exit codes, one-line errors."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fluxmon import app
from fluxmon.cli import main
from fluxmon.config import Settings
from fluxmon.exitcodes import EXIT_CODES
from fluxmon.sources import flux as flux_source
from tests.test_metrics import CONTRACT_FAMILIES

FLUXMON = [sys.executable, "-m", "fluxmon"]


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        return str(resp.read().decode())


def total(text: str, family: str) -> float:
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        if f.name == family
        for s in f.samples
        if s.name.endswith("_total")
    )


@pytest.fixture(scope="module")
def demo(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[subprocess.Popen[str], int, Path]]:
    """A running ``fluxmon demo`` on an ephemeral port, its port and its log file."""
    log = tmp_path_factory.mktemp("demo") / "demo.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*FLUXMON, "demo", "--listen", "127.0.0.1:0", "--rate", "40", "--seed", "7"],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    port = 0
    deadline = time.monotonic() + 30
    while not port and time.monotonic() < deadline:
        match = re.search(r"msg=fluxmon\.start .*listen=127\.0\.0\.1:(\d+)", log.read_text())
        port = int(match.group(1)) if match else 0
        time.sleep(0.05)
    assert port, "fluxmon demo did not log its listen address"
    try:
        yield proc, port, log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_demo_serves_every_family_with_rising_counters(
    demo: tuple[subprocess.Popen[str], int, Path],
) -> None:
    """Within seconds the demo serves every contract family and its counters rise."""
    _, port, _ = demo
    time.sleep(3)
    first = scrape(port)
    names = {f.name for f in text_string_to_metric_families(first)}
    assert set(CONTRACT_FAMILIES) <= names, set(CONTRACT_FAMILIES) - names
    time.sleep(2)
    second = scrape(port)
    for family in ("flux_job_events", "flux_jobs_submitted", "fluxmon_events_processed"):
        assert total(second, family) > total(first, family) > 0, family
    assert total(second, "fluxmon_event_errors") == 0


@pytest.mark.promtool
@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_finds_nothing_in_a_demo_scrape(
    demo: tuple[subprocess.Popen[str], int, Path],
) -> None:
    """promtool check metrics is silent about a live demo scrape."""
    _, port, _ = demo
    proc = subprocess.run(
        ["promtool", "check", "metrics"],
        input=scrape(port),
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == ""
    assert proc.stderr.strip() == ""


def test_demo_stops_cleanly_on_ctrl_c(demo: tuple[subprocess.Popen[str], int, Path]) -> None:
    """SIGINT (Ctrl-C) stops the demo with exit 0 and a fluxmon.stop record without error=."""
    proc, _, log = demo
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)
    out = log.read_text()
    assert proc.returncode == 0
    [stop] = [line for line in out.splitlines() if "msg=fluxmon.stop" in line]
    assert re.search(r" events=\d+ tracked_jobs=\d+$", stop), stop
    [start] = [line for line in out.splitlines() if "msg=fluxmon.start" in line]
    assert "config=" not in start, "no empty field when no config file was given"
    # Lifecycle records carry no empty field (job.finished keeps its fixed columns).
    own = [line for line in out.splitlines() if "msg=job." not in line]
    empty = [line for line in own if re.search(r"\w= |\w=$", line)]
    assert not empty, f"records with an empty field: {empty[:3]}"
    assert "Traceback" not in out


def test_version() -> None:
    """--version prints the package version."""
    proc = subprocess.run([*FLUXMON, "--version"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0
    assert re.fullmatch(r"fluxmon \d+\.\d+\.\d+\n", proc.stdout)


def test_usage_error_exits_2() -> None:
    """A bad argument is a usage error (exit 2) naming the problem."""
    proc = subprocess.run(
        [*FLUXMON, "demo", "--rate", "-1"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 2
    assert "must be greater than 0" in proc.stderr


def test_bad_config_names_file_and_keys_and_exits_78(tmp_path: Path) -> None:
    """check-config and demo both report every bad key of a broken file and exit 78."""
    config = tmp_path / "broken.toml"
    config.write_text('[log]\nformat = "xml"\nlevl = "info"\n[http]\nlisten = "nowhere"\n')
    for args in (["check-config", str(config)], ["demo", "-c", str(config)]):
        proc = subprocess.run([*FLUXMON, *args], capture_output=True, text=True, check=False)
        assert proc.returncode == 78, args
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 3, lines
        assert all(line.startswith(f"{config}: ") for line in lines)
        assert any("log.format" in line and "logfmt, json" in line for line in lines)
        assert any("log.levl" in line and "did you mean 'level'" in line for line in lines)
        assert any("http.listen" in line for line in lines)


def test_listen_address_in_use_exits_71() -> None:
    """A port already taken gives one error record naming the address, and exit 71."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run(
            [*FLUXMON, "demo", "--listen", f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert proc.returncode == 71
    assert f"127.0.0.1:{port}" in proc.stdout
    assert "Address already in use" in proc.stdout


SUBCOMMANDS = ["run", "record", "demo", "replay", "logs", "check-config"]


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_subcommand_help_has_description_example_and_exit_codes(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each subcommand's --help has a one-line description, an example and its exit codes."""
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    usage, description, *_ = text.split("\n\n")
    assert usage.startswith(f"usage: fluxmon {command}")
    assert "\n" not in description
    assert description.endswith(".")
    assert f"example:\n  fluxmon {command}" in text
    listed = re.findall(r"^  (\d+) +(.+)$", text.split("exit status:\n", 1)[1], re.M)
    assert listed, text
    assert {int(code): what for code, what in listed}.items() <= EXIT_CODES.items()
    assert {0, 2} <= {int(code) for code, _ in listed}


def test_top_level_help_lists_every_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    """fluxmon --help ends with the whole exit-code table."""
    with pytest.raises(SystemExit):
        main(["--help"])
    table = capsys.readouterr().out.split("exit status:\n", 1)[1]
    assert [int(code) for code in re.findall(r"^  (\d+) ", table, re.M)] == sorted(EXIT_CODES)


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[Settings]:
    """The settings each ``app.serve`` call gets, with nothing served."""
    calls: list[Settings] = []

    def serve(settings: Settings, *_: object, **__: object) -> int:
        calls.append(settings)
        return 0

    monkeypatch.setattr(app, "serve", serve)
    return calls


def test_demo_listens_on_loopback_unless_told(served: list[Settings], tmp_path: Path) -> None:
    """demo serves 127.0.0.1:10900 by default, even with a config's http.listen; --listen wins."""
    config = tmp_path / "fluxmon.toml"
    config.write_text('[http]\nlisten = ":9999"\n')
    assert main(["demo"]) == 0
    assert main(["demo", "-c", str(config)]) == 0
    assert main(["demo", "--listen", "0.0.0.0:10901"]) == 0
    assert [s.http.listen for s in served] == [
        ("127.0.0.1", 10900),
        ("127.0.0.1", 10900),
        ("0.0.0.0", 10901),
    ]


def test_run_keeps_its_documented_default(
    served: list[Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """run serves 0.0.0.0:10900 unless the config or --listen says otherwise."""
    monkeypatch.setattr(flux_source, "FluxBindings", lambda: None)
    assert main(["run"]) == 0
    assert main(["run", "--listen", "[::1]:9"]) == 0
    assert [s.http.listen for s in served] == [("0.0.0.0", 10900), ("::1", 9)]


def test_record_to_an_unwritable_file_exits_73(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """record -o into a missing directory says so in one line and exits EX_CANTCREAT (73)."""
    monkeypatch.setattr(flux_source, "FluxBindings", lambda: None)
    output = tmp_path / "no" / "such" / "dir.jsonl"
    assert main(["record", "-o", str(output)]) == 73
    err = capsys.readouterr().err
    assert err == f"fluxmon: {output}: cannot write: No such file or directory\n"
