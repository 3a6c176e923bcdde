"""Bad `leaderboard` input and --out: one error line naming the directory, option or file, exit
2, no traceback, and the experiment read left as it was; a damaged hiersearch.json is one
warning line, not a refusal.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from refusals import (
    _contents,
    _experiment_copy,
    _finished,
    _refused,
    _refused_in_a_subprocess,
    _unwritable,
)

from hiersearch.cli import main
from hiersearch.report import results


def test_leaderboard_of_a_directory_without_an_experiment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notes.txt").write_text("not an experiment\n")
    line = _refused(["leaderboard", str(tmp_path)], capsys)
    assert str(tmp_path) in line and "no Ray Tune experiment" in line


def test_leaderboard_with_a_damaged_hiersearch_json_still_reads_the_trials(
    tmp_path: Path,
) -> None:
    import shutil

    experiment = tmp_path / "finished"
    shutil.copytree(_finished(), experiment)
    (experiment / "hiersearch.json").write_text('{"metric": "dev/rp_')  # a torn write
    with pytest.warns(results.LeaderboardWarning, match=r"hiersearch\.json"):
        table = results.load_experiments([str(experiment)])
    assert len(table) == 9


@pytest.mark.parametrize(
    ("where", "said"),
    [
        ("dev_rp >", "--where: cannot parse 'dev_rp >'"),
        ("nosuch > 1", "--where: no column 'nosuch'"),
        ("dev/rp_macro > 0.5", "quote a column holding '/' in backticks"),
    ],
)
def test_leaderboard_where_errors_are_worded_for_the_user(
    capsys: pytest.CaptureFixture[str], where: str, said: str
) -> None:
    experiment = Path(__file__).parents[1] / "fixtures" / "leaderboard" / "finished"
    line = _refused(["leaderboard", str(experiment), "--where", where], capsys)
    assert said in line and "Error:" not in line


def test_leaderboard_warnings_are_one_line_without_source(tmp_path: Path) -> None:
    import shutil

    experiment = tmp_path / "finished"
    shutil.copytree(_finished(), experiment)
    (experiment / "hiersearch.json").write_text('{"metric": "dev/rp_')
    done = subprocess.run(
        [sys.executable, "-m", "hiersearch.cli", "leaderboard", str(experiment), "--top", "1"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"hiersearch: warning: {experiment}")


def test_leaderboard_out_not_writable_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    locked = _unwritable(tmp_path)
    line = _refused(["leaderboard", _finished(), "--format", "csv", "--out",
                     str(locked / "t.csv")], capsys)
    assert line == f"hiersearch: error: --out: cannot write: Permission denied ({locked})"


@pytest.mark.parametrize("named", ["hiersearch.json", "a trial's result.json by a symlink"])
def test_leaderboard_out_onto_a_file_of_its_experiment_is_refused(
    tmp_path: Path, named: str
) -> None:
    experiment = _experiment_copy(tmp_path)
    out = experiment / "hiersearch.json"
    if named != "hiersearch.json":
        out = tmp_path / "table.json"
        out.symlink_to(next(experiment.glob("trainable_*")) / "result.json")
    before = _contents(experiment)
    err = _refused_in_a_subprocess(["leaderboard", str(experiment), "--out", str(out)])
    assert err == (
        f"hiersearch: error: --out: {out} is a file of the experiment {experiment}, which "
        "the leaderboard reads; writing it would replace that file (write the table outside "
        "the experiment)\n"
    )
    assert _contents(experiment) == before


def test_leaderboard_out_may_be_a_new_file_inside_its_experiment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    experiment = _experiment_copy(tmp_path)
    assert main(["leaderboard", str(experiment), "--out", str(experiment / "board.csv")]) == 0
    assert (experiment / "board.csv").read_text().startswith("experiment,")
