"""The code reads as STYLE.md asks: ruff finds nothing, and mypy --strict accepts the
service (its configuration is in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from support.files import ROOT

BIN = Path(sys.executable).parent


def test_ruff_finds_nothing_in_the_service_tests_benchmarks_and_client() -> None:
    done = subprocess.run([str(BIN / "ruff"), "check", "daemon", "tests", "bench", "client"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120, check=False)
    assert (done.returncode, done.stdout.strip().splitlines()[-1:]) == (0, ["All checks passed!"]), done.stdout


def test_mypy_strict_accepts_the_service() -> None:
    done = subprocess.run([str(BIN / "mypy")], capture_output=True, text=True, cwd=ROOT, timeout=300, check=False)
    assert (done.returncode, done.stdout.strip().splitlines()[-1:][0].startswith("Success")) == (0, True), done.stdout
