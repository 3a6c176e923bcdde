"""Where an experiment goes, refused when bad (--storage, --name, --resume): one error line
naming the option or file, exit 2, no traceback, refused before Ray starts (the `no_ray`
tripwire) and before anything is written.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from refusals import SPACE, _corpus, _refused, _search, _space, _unwritable


@pytest.mark.parametrize(
    ("name", "shown"),
    [("../escape", "'../escape'"), ("a/b", "'a/b'"), ("..", "'..'"), (".", "'.'")],
)
def test_experiment_names_outside_the_storage_are_refused(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    no_ray: list[str | None],
    name: str,
    shown: str,
) -> None:
    storage = tmp_path / "runs"
    line = _refused([*_search(tmp_path), "--storage", str(storage), "--name", name], capsys)
    assert line.startswith("hiersearch: error: --name:") and shown in line
    assert no_ray == [] and not storage.exists() and not (tmp_path / "escape").exists()


def test_storage_that_is_a_file_is_refused_before_ray(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_ray: list[str | None]
) -> None:
    storage = tmp_path / "runs.txt"
    storage.write_text("a file\n")
    line = _refused([*_search(tmp_path), "--storage", str(storage)], capsys)
    assert line.startswith("hiersearch: error: --storage:") and "not a directory" in line
    assert storage.read_text() == "a file\n" and no_ray == []


def test_storage_not_writable_is_refused_before_ray(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_ray: list[str | None]
) -> None:
    line = _refused([*_search(tmp_path), "--storage", str(_unwritable(tmp_path) / "r")], capsys)
    assert line.startswith("hiersearch: error: --storage: cannot write") and no_ray == []


def test_experiment_path_that_is_a_file_is_refused_before_ray(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_ray: list[str | None]
) -> None:
    storage = tmp_path / "runs"
    storage.mkdir()
    (storage / "tiny").write_text("not an experiment\n")
    line = _refused([*_search(tmp_path), "--storage", str(storage), "--name", "tiny"], capsys)
    assert "--storage" in line and "not a directory" in line and no_ray == []


def test_resume_without_an_experiment_is_refused_before_ray(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_ray: list[str | None]
) -> None:
    line = _refused(
        ["reproduce", "--preset", "smoke", "--storage", str(tmp_path), "--name", "none",
         "--resume"],
        capsys,
    )
    assert "--resume" in line and str(tmp_path / "none") in line
    assert no_ray == []


def test_resume_with_another_model_than_the_experiments_is_refused_before_ray(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_ray: list[str | None]
) -> None:
    # a resumed experiment runs its remaining trials with its own settings (hiersearch.json);
    # a contradicting option would silently mix two models in one leaderboard
    experiment = tmp_path / "runs" / "tiny"
    experiment.mkdir(parents=True)
    (experiment / "tuner.pkl").write_bytes(b"")  # what Tuner.can_restore looks for
    meta = {
        "space": SPACE,
        "space_file": "space.yaml",
        "base_config": {**SPACE["trial"]},
        "corpus": str(_corpus(tmp_path / "c")),
    }
    (experiment / "hiersearch.json").write_text(json.dumps(meta))
    line = _refused(
        ["search", "--space", str(_space(tmp_path)), "--storage", str(tmp_path / "runs"),
         "--name", "tiny", "--model", "tiny:6x16", "--resume"],
        capsys,
    )
    assert line.startswith("hiersearch: error: --model:") and "'tiny:4x16'" in line
    assert no_ray == []


def test_resume_of_a_state_file_cut_short_by_the_kill_is_refused_before_ray(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_ray: list[str | None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "ray-tmp"))
    experiment = tmp_path / "runs" / "tiny"
    experiment.mkdir(parents=True)
    (experiment / "tuner.pkl").write_bytes(b"")
    state = experiment / "experiment_state-2026-12-06_11-00-00.json"
    state.write_bytes(b"")  # Tune copies it in place: a kill in the copy leaves it empty
    line = _refused(
        ["search", "--space", str(_space(tmp_path)), "--storage", str(tmp_path / "runs"),
         "--name", "tiny", "--resume"],
        capsys,
    )
    assert line.startswith(f"hiersearch: error: {state}: Ray Tune's saved state is cut short")
    assert state.read_bytes() == b""  # left as it was
    assert no_ray == []
