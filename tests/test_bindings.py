"""The one recipe for flux-core's bindings, as ``fluxmon run`` prints it and the README gives it.

A fresh venv sees fluxmon and its dependencies (through a ``.pth`` naming this test
venv's site-packages and the source tree) but not the bindings: a ``.pth`` line adds a
folder to ``sys.path`` without reading the ``.pth`` files inside it, so this venv's own
``flux-core.pth`` does not leak in.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import fluxmon

FLUX = shutil.which("flux")
RECIPE = re.compile(r"`(flux python --get-path > (\S+/flux-core\.pth))`")


def _bare_venv(root: Path) -> tuple[Path, Path]:
    """A venv without pip or bindings that imports fluxmon; returns (python, purelib)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = root / "bin" / "python"
    purelib = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
    )  # fmt: skip
    source = Path(fluxmon.__file__).resolve().parent.parent
    (purelib / "fluxmon-test.pth").write_text(f"{sysconfig.get_path('purelib')}\n{source}\n")
    return python, purelib


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def _run_without_bindings(python: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [python, "-m", "fluxmon", "run", "--uri", "local:///nonexistent"],
        env=_clean_env(), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_run_prints_the_recipe_for_its_own_venv(tmp_path: Path) -> None:
    """Without bindings, run exits 69 with one line whose command targets its own venv."""
    python, purelib = _bare_venv(tmp_path / "venv")
    proc = _run_without_bindings(python)
    assert proc.returncode == 69, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    match = RECIPE.search(proc.stderr)
    assert match is not None, proc.stderr
    assert Path(match.group(2)) == purelib / "flux-core.pth"


@pytest.mark.flux
@pytest.mark.skipif(FLUX is None, reason="needs a Flux broker: `flux` is not on PATH")
def test_the_printed_recipe_makes_the_bindings_importable(tmp_path: Path) -> None:
    """Running the command run printed, as printed, is all a venv needs to import flux."""
    python, _ = _bare_venv(tmp_path / "venv")
    match = RECIPE.search(_run_without_bindings(python).stderr)
    assert match is not None
    subprocess.run(["bash", "-c", match.group(1)], env=_clean_env(), check=True)
    probe = subprocess.run(
        [python, "-c", "import flux.job, flux.constants"],
        env=_clean_env(), capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    assert RECIPE.search(_run_without_bindings(python).stderr) is None  # now it is the URI
