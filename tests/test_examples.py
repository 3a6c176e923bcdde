"""Every script in examples/ runs as its first line says, offline, and prints its results."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.py"))


def test_every_example_opens_with_its_run_command() -> None:
    assert EXAMPLES
    for script in EXAMPLES:
        first = script.read_text().splitlines()[0]
        assert re.fullmatch(rf"# Run: python examples/{script.name}( .*)?", first), script.name


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_runs_and_reports_r_precision(script: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        capture_output=True, text=True, timeout=300, env=dict(os.environ),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert re.search(r"^dev: macro R-Precision 0\.\d{3} ", done.stdout, re.MULTILINE), done.stdout
