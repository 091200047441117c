"""The README's metric table and what the daemon's /metrics exposes name the same families."""

from __future__ import annotations

import dataclasses
import io
import re
import threading
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from fluxmon.app import build, serve
from fluxmon.exitcodes import EX_OK
from fluxmon.sources import Downstream
from tests.conftest import json_settings

README = Path(__file__).parent.parent / "README.md"
PREFIXES = ("flux_", "fluxmon_", "process_", "python_")
ROW = re.compile(r"^\| `(?P<name>[a-z_:]+)` \| (?P<type>[a-z]+) \|", re.MULTILINE)
TYPE_LINE = re.compile(r"^# TYPE (?P<name>\S+) (?P<type>\S+)$", re.MULTILINE)


def documented() -> dict[str, str]:
    """Family name (as the text exposition's TYPE line spells it) -> type, from the table."""
    text = README.read_text()
    section = text[text.index("\n## Metrics\n") :]
    section = section[: section.index("\n## ", 1)]
    rows = {m["name"]: m["type"] for m in ROW.finditer(section)}
    assert rows, "the README's Metrics section has no metric table"
    return rows


class Scrape:
    """A source that scrapes the daemon it runs in once, then stops it."""

    def __init__(self) -> None:
        self.address: tuple[str, int] | None = None
        self.text = ""

    def run(self, downstream: Downstream, stop: threading.Event) -> None:
        """Fetch /metrics of the freshly started daemon and stop it."""
        assert self.address is not None
        host, port = self.address
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as reply:
            self.text = reply.read().decode()
        stop.set()


def exposed() -> dict[str, str]:
    """Family name -> type in the /metrics of a freshly started daemon."""
    base = json_settings()
    settings = dataclasses.replace(
        base, http=dataclasses.replace(base.http, listen=("127.0.0.1", 0))
    )
    scrape = Scrape()

    def listening(address: tuple[str, int]) -> None:
        scrape.address = address

    status = serve(
        settings, scrape, mode="test", log_stream=io.StringIO(), environ={}, on_listen=listening
    )
    assert status == EX_OK
    return {m["name"]: m["type"] for m in TYPE_LINE.finditer(scrape.text)}


@pytest.fixture(scope="module")
def families() -> tuple[dict[str, str], dict[str, str]]:
    """The documented and the exposed families."""
    return documented(), exposed()


def test_every_documented_family_is_exposed(
    families: tuple[dict[str, str], dict[str, str]],
) -> None:
    """Each family in the README's table is in the exposition, with the documented type."""
    docs, expo = families
    missing = {name: kind for name, kind in docs.items() if expo.get(name) != kind}
    assert not missing, f"documented but not exposed (or another type): {missing}"


def test_every_exposed_family_is_documented(
    families: tuple[dict[str, str], dict[str, str]],
) -> None:
    """Each flux_/fluxmon_/process_/python_ family exposed has a row of the README's table."""
    docs, expo = families
    ours = {name: kind for name, kind in expo.items() if name.startswith(PREFIXES)}
    undocumented = {name: kind for name, kind in ours.items() if docs.get(name) != kind}
    assert not undocumented, f"exposed but not documented (or another type): {undocumented}"


def test_no_family_outside_the_documented_prefixes(
    families: tuple[dict[str, str], dict[str, str]],
) -> None:
    """The exposition has no family outside flux_, fluxmon_, process_ and python_."""
    _, expo = families
    assert {name for name in expo if not name.startswith(PREFIXES)} == set()


def test_the_process_and_runtime_families_are_there(
    families: tuple[dict[str, str], dict[str, str]],
) -> None:
    """The process_* metrics the systemd unit and operations guide rely on are exposed."""
    _, expo = families
    assert expo.get("process_start_time_seconds") == "gauge"
    assert expo.get("process_cpu_seconds_total") == "counter"
    assert expo.get("python_gc_collections_total") == "counter"


def test_replay_exposition_has_no_process_families() -> None:
    """A replay's exposition leaves out process_* and python_*: it depends on its input only."""
    parts = build(json_settings(), io.StringIO(), clock=None)
    text = generate_latest(parts.registry).decode()
    assert "fluxmon_build_info" in text
    assert not re.search(r"^(# (HELP|TYPE) )?(process|python)_", text, re.MULTILINE)
