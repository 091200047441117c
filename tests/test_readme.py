"""The README agrees with the code both ways: every exit code and log record it names exists."""

from __future__ import annotations

import re
from pathlib import Path

from fluxmon.exitcodes import EXIT_CODES

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
PACKAGE = ROOT / "fluxmon"

_LEVELS = "debug|info|warning|error|exception|critical"
#: A structlog call on a logger (``log``, ``_log``, ``self.src.log``...) and its first argument.
_LOG_CALL = re.compile(rf"\b_?log\.(?:{_LEVELS})\(\s*(?P<first>\S)")
_LITERAL_NAME = re.compile(rf"\b_?log\.(?:{_LEVELS})\(\s*\"(?P<name>[^\"]*)\"")
#: A record name as the README writes it (`name`, `msg=name` or `level=L msg=name`).
_DOC_NAME = re.compile(r"`(?:level=[a-z]+ )?(?:msg=)?([a-z]+(?:_[a-z]+)*\.[a-z]+(?:_[a-z]+)*)`")


def section(title: str) -> str:
    """The text of the README's ``## title`` section."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", README, re.M | re.S)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def emitted_records() -> set[str]:
    """The ``msg`` of every record the package logs, from its logger calls' first argument."""
    names: set[str] = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        for call in _LOG_CALL.finditer(text):
            line = text.count("\n", 0, call.start()) + 1
            assert call["first"] == '"', f"{path}:{line}: a record name that is not a literal"
        names.update(m["name"] for m in _LITERAL_NAME.finditer(text))
    return names


def documented_records() -> set[str]:
    """Every record name the README's Logs section lists."""
    return set(_DOC_NAME.findall(section("Logs")))


def test_record_scan_sees_known_records() -> None:
    """The source scan finds records from app, logs, pipeline, http and the Flux source."""
    assert {
        "fluxmon.start",
        "job.finished",
        "history.caught_up",
        "http.request_failed",
        "source.fallback",
    } <= emitted_records()


def test_every_emitted_record_is_documented() -> None:
    """Each record name the package logs is listed in the README's Logs section."""
    assert emitted_records() - documented_records() == set()


def test_every_documented_record_is_emitted() -> None:
    """Each record name the README's Logs section lists is logged somewhere in the package."""
    assert documented_records() - emitted_records() == set()


def test_readme_exit_codes_are_the_table() -> None:
    """The README's exit-code line lists exactly the codes of fluxmon.exitcodes.EXIT_CODES."""
    match = re.search(r"^Exit codes: (.*?)\.\n\n", README, re.M | re.S)
    assert match, "README has no 'Exit codes:' line"
    listed = [int(code) for code in re.findall(r"(?:^|,\s)(\d+)\s", match.group(1))]
    assert len(listed) == len(set(listed)), listed
    assert set(listed) == set(EXIT_CODES)
