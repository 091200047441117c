"""CI's guard against quietly skipped real-broker tests (``FLUXMON_REQUIRE_MARKERS``)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

INNER = """
import pytest

@pytest.mark.flux
def test_needs_a_broker():
    pytest.skip("needs a Flux broker: `flux` is not on PATH")

def test_plain():
    pytest.skip("nothing to do with flux")
"""


@pytest.fixture
def inner(pytester: pytest.Pytester) -> pytest.Pytester:
    """A throwaway test project that uses this project's conftest."""
    conftest = Path(__file__).with_name("conftest.py").read_text()
    pytester.makeconftest(conftest)
    pytester.makeini("[pytest]\nmarkers =\n    flux: needs flux\n")
    pytester.makepyfile(test_inner=INNER)
    return pytester


def test_required_marker_turns_its_skip_into_a_failure_with_the_reason(
    inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With FLUXMON_REQUIRE_MARKERS=flux a skipped flux test fails, naming the skip reason."""
    monkeypatch.setenv("FLUXMON_REQUIRE_MARKERS", "flux promtool")
    result = inner.runpytest_subprocess("-q")
    result.assert_outcomes(failed=1, skipped=1)
    assert "FLUXMON_REQUIRE_MARKERS requires ['flux']" in result.stdout.str()
    assert "needs a Flux broker: `flux` is not on PATH" in result.stdout.str()


def test_without_the_variable_a_skip_stays_a_skip(
    inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where nothing is required (a user's clone), the same tests simply skip."""
    monkeypatch.delenv("FLUXMON_REQUIRE_MARKERS", raising=False)
    result = inner.runpytest_subprocess("-q")
    result.assert_outcomes(skipped=2)
