"""Every benchmark in bench/ still imports and answers --help (not timed: nothing is measured).

A benchmark is run rarely and by hand, so a helper renamed in bench/common.py or the
service breaks it silently; this catches that in CI. The benchmarks themselves run with
`bash bench/run_all.sh`.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from support.files import ROOT

BENCH = ROOT / "bench"
SCRIPTS = sorted(p for p in BENCH.glob("*.py") if 'if __name__ == "__main__":' in p.read_text())


def test_every_module_in_bench_is_a_script_or_the_shared_helpers() -> None:
    assert sorted(p.name for p in BENCH.glob("*.py")) == sorted([*(p.name for p in SCRIPTS), "common.py"])


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_benchmark_answers_help_with_what_it_measures(script: Path) -> None:
    done = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True,
                          cwd=ROOT, timeout=60, check=False)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.startswith(f"usage: {script.name} ")
    # The docstring says what the benchmark measures; --help shows it.
    doc = ast.get_docstring(ast.parse(script.read_text()))
    assert doc is not None
    assert " ".join(doc.split("\n\n")[0].split()) in " ".join(done.stdout.split())


def test_run_all_runs_every_benchmark() -> None:
    run_all = (BENCH / "run_all.sh").read_text()
    # gen_nodes.py and reference_app.py are run by the benchmarks, not by it.
    not_run = sorted(p.name for p in SCRIPTS if f"bench/{p.name}" not in run_all)
    assert not_run == ["gen_nodes.py", "reference_app.py"]
