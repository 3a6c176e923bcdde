"""What the command line itself refuses, for every command alike: exit 2 and exactly one
error line on stderr, no traceback (the real process), and --out or option values naming the
option.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from refusals import _corpus, _finished, _refused


def test_the_installed_command_prints_one_line_without_traceback(tmp_path: Path) -> None:
    """The real process: exit status 2 and stderr that is exactly one line."""
    corpus = _corpus(tmp_path / "c")
    with (corpus / "train.jsonl").open("a") as handle:
        handle.write("not json\n")
    done = subprocess.run(
        [sys.executable, "-m", "hiersearch.cli", "data", "stats", str(corpus)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"hiersearch: error: {corpus / 'train.jsonl'}:4: invalid JSON: Expecting value "
        "(column 1)"
    ]
    assert done.stdout == ""


@pytest.mark.parametrize("command", ["leaderboard", "export", "predict"])
def test_out_below_a_file_is_refused_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    (tmp_path / "afile").write_text("x")
    out = str(tmp_path / "afile" / "result")
    argv = {
        "leaderboard": ["leaderboard", _finished(), "--format", "csv", "--out", out],
        "export": ["export", _finished(), "--out", out],
        "predict": ["predict", str(tmp_path / "model"), "--input", "-", "--out", out],
    }[command]
    line = _refused(argv, capsys)
    assert "--out" in line and f"not a directory ({tmp_path / 'afile'})" in line


def test_variants_for_more_levels_than_layers_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    line = _refused(["variants", "--layers", "2", "--levels", "3"], capsys)
    assert "2 layers < 3 levels" in line
