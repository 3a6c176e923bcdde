"""A resume whose saved state names a checkpoint Tune had pruned: the trial goes on from the
one that replaced it (Tune's own checkpoint manager, trials as Tune restores them)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest


def _trial(tmp_path: Path, keep: int, latest: int, on_disk: list[int]) -> tuple[Any, Any]:
    """A trial restored from a state saved when checkpoint `latest` was its newest, while
    on disk only `on_disk` are left (Tune went on and pruned before the kill)."""
    from ray.train import CheckpointConfig
    from ray.train._internal.checkpoint_manager import _CheckpointManager
    from ray.train._internal.session import _TrainingResult
    from ray.tune import Checkpoint

    manager = _CheckpointManager(CheckpointConfig(num_to_keep=keep))
    for n in range(latest + 1):  # the bookkeeping as saved: Tune had pruned down to `keep`
        directory = tmp_path / f"checkpoint_{n:06d}"
        directory.mkdir(parents=True, exist_ok=True)
        manager.register_checkpoint(_TrainingResult(Checkpoint(str(directory)), {"epoch": n + 1}))
    for directory in tmp_path.glob("checkpoint_*"):
        directory.rmdir()
    rows = []
    for n in on_disk:
        (tmp_path / f"checkpoint_{n:06d}").mkdir()
        rows.append({"epoch": n + 1, "checkpoint_dir_name": f"checkpoint_{n:06d}"})
    lines = [json.dumps(row) for row in rows] + ['{"epoch": 9, "cut short']
    (tmp_path / "result.json").write_text("\n".join(lines))
    trial = SimpleNamespace(
        trial_id="t1", run_metadata=SimpleNamespace(checkpoint_manager=manager)
    )
    return trial, manager


def test_a_trial_named_a_pruned_checkpoint_goes_on_from_the_one_that_replaced_it(
    tmp_path: Path,
) -> None:
    from hiersearch.search.recovery import repair_trial

    # keep 1: state saved at checkpoint 4; Tune then registered 5 and deleted 4
    trial, manager = _trial(tmp_path, keep=1, latest=4, on_disk=[5])
    assert repair_trial(trial)
    latest = manager.latest_checkpoint_result
    assert Path(latest.checkpoint.path).name == "checkpoint_000005"
    assert latest.metrics["epoch"] == 6  # what the trial reported with it (result.json)
    assert [Path(r.checkpoint.path).name for r in manager._checkpoint_results] == [
        "checkpoint_000005"
    ]  # no entry left for Tune to fail deleting


def test_a_trial_whose_checkpoint_is_there_or_has_no_successor_is_left_as_it_is(
    tmp_path: Path,
) -> None:
    from hiersearch.search.recovery import repair_trial

    trial, manager = _trial(tmp_path / "kept", keep=2, latest=3, on_disk=[2, 3])
    assert not repair_trial(trial)
    assert Path(manager.latest_checkpoint_result.checkpoint.path).name == "checkpoint_000003"
    trial, manager = _trial(tmp_path / "none", keep=1, latest=3, on_disk=[])
    assert not repair_trial(trial)  # Tune's own error then names the missing checkpoint
    assert Path(manager.latest_checkpoint_result.checkpoint.path).name == "checkpoint_000003"


def test_the_repair_runs_once_at_the_first_step_before_trials_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hiersearch.search.recovery as recovery

    seen: list[Any] = []
    monkeypatch.setattr(recovery, "repair_trial", seen.append)
    callback = recovery.PrunedCheckpointRepair()
    callback.on_step_begin(iteration=0, trials=["a", "b"])
    callback.on_step_begin(iteration=1, trials=["a", "b"])
    assert seen == ["a", "b"]



@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_a_resume_goes_on_past_a_checkpoint_pruned_after_the_state_was_saved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """End to end: a search stopped (Ctrl-C) once its first checkpoint is registered; the
    checkpoint its saved state names is then replaced by a successor, as Tune does before a
    driver killed mid-way could save the state again. `--resume` finishes the trial (Tune
    alone fails it: "Could not recover from checkpoint as it does not exist")."""
    import os
    import signal

    import yaml
    from ray.tune import Callback

    import hiersearch.search.run as run
    from hiersearch import metrics as M
    from hiersearch.search.space import load_space, preset_path

    marker = tmp_path / "interrupted"

    class Interrupt(Callback):  # once per experiment: Tune restores callbacks with it
        def on_checkpoint(self, *args: Any, **kwargs: Any) -> None:
            if not marker.exists():
                marker.touch()
                os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C does

    smoke = yaml.safe_load(preset_path("smoke").read_text())
    raw = {
        "name": "pruned",
        "data": smoke["data"],
        "trial": {**smoke["trial"], "model": "tiny:3x32", "epochs": 3, "util_docs": 0,
                  "num_workers": 1, "cpus_per_worker": 1, "max_steps_per_epoch": 1,
                  "keep_checkpoints": 1},
        "assignment": {"space": "variants", "variants": ["FLAT"]},
        "tune": {"algorithm": "grid"},
    }
    path = tmp_path / "pruned.yaml"
    path.write_text("# Launch: hiersearch search --space pruned.yaml\n" + yaml.safe_dump(raw))
    space = load_space(path)
    monkeypatch.setattr(run, "_tracking", lambda *args: [Interrupt()])
    storage = str(tmp_path / "storage")
    run.run_search(space, storage=storage, verbose=0)
    (trial_dir,) = (tmp_path / "storage" / "pruned").glob("trial_*")
    reported = (trial_dir / "result.json").read_text().splitlines()
    assert json.loads(reported[-1])[M.TRIAL_FINAL] == 0  # stopped mid-way
    # whichever checkpoint the saved state names is gone, and a newer one stands beside it
    for checkpoint in sorted(trial_dir.glob("checkpoint_*"), reverse=True):
        number = int(checkpoint.name.removeprefix("checkpoint_"))
        checkpoint.rename(trial_dir / f"checkpoint_{number + 10:06d}")
    run.run_search(space, storage=storage, resume=True, verbose=0)
    rows = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]
    assert rows[-1][M.TRIAL_FINAL] == 1 and rows[-1][M.EPOCH] == 3


# --- state files cut short by the kill ----------------------------------------------------


def _experiment(tmp_path: Path, **files: bytes) -> Path:
    """An experiment directory holding two driver sessions' state files, with `files` over
    them (name -> content)."""
    import pickle

    experiment = tmp_path / "runs" / "exp"
    experiment.mkdir(parents=True)
    for session in ("2026-12-06_10-00-00", "2026-12-06_11-00-00"):
        (experiment / f"experiment_state-{session}.json").write_text('{"trial_data": []}')
        (experiment / f"search_gen_state-{session}.json").write_bytes(pickle.dumps({"b": 2}))
        (experiment / f"searcher-state-{session}.pkl").write_bytes(pickle.dumps({"a": 1}))
    for name, content in files.items():
        (experiment / name).write_bytes(content)
    return experiment


NEWEST_STATE = "experiment_state-2026-12-06_11-00-00.json"


def test_whole_state_files_pass(tmp_path: Path) -> None:
    from hiersearch.search.recovery import check_saved_state

    check_saved_state(str(_experiment(tmp_path)))


def test_an_older_sessions_torn_state_is_not_read(tmp_path: Path) -> None:
    from hiersearch.search.recovery import check_saved_state

    check_saved_state(str(_experiment(tmp_path, **{
        "experiment_state-2026-12-06_10-00-00.json": b"",
    })))


@pytest.mark.parametrize(
    ("name", "content"),
    [
        (NEWEST_STATE, b""),
        (NEWEST_STATE, b'{"trial_data": [['),
        ("search_gen_state-2026-12-06_11-00-00.json", b"\x80\x05\x95\x10\x00"),
        ("searcher-state-2026-12-06_11-00-00.pkl", b"\x80\x05\x95\x10\x00"),
    ],
)
def test_a_state_file_cut_short_is_an_input_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, content: bytes
) -> None:
    from hiersearch.errors import InputError
    from hiersearch.search.recovery import check_saved_state

    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "no-ray"))
    experiment = _experiment(tmp_path, **{name: content})
    with pytest.raises(InputError) as caught:
        check_saved_state(str(experiment))
    assert caught.value.where == str(experiment / name)
    assert "cut short" in caught.value.message and "no whole copy" in caught.value.message


def test_the_error_names_rays_whole_staging_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hiersearch.errors import InputError
    from hiersearch.search.recovery import check_saved_state

    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "ray-tmp"))
    staging = tmp_path / "ray-tmp/ray/session_1/artifacts/2026-12-06_11-00-00/exp"
    (staging / "driver_artifacts").mkdir(parents=True)
    whole = staging / "driver_artifacts" / NEWEST_STATE
    whole.write_text('{"trial_data": []}')
    experiment = _experiment(tmp_path, **{NEWEST_STATE: b'{"tri'})
    with pytest.raises(InputError, match=f"a whole copy is in Ray's staging directory: {whole}"):
        check_saved_state(str(experiment))


def test_an_unreadable_state_file_is_an_input_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyarrow.fs

    from hiersearch.errors import InputError
    from hiersearch.search import recovery

    experiment = _experiment(tmp_path)
    local = pyarrow.fs.LocalFileSystem()

    def refuse(path: str) -> Any:
        raise PermissionError(13, "Permission denied")

    filesystem = SimpleNamespace(get_file_info=local.get_file_info, open_input_stream=refuse)
    monkeypatch.setattr(recovery, "open_location", lambda where: (filesystem, where))
    with pytest.raises(InputError, match="cannot read: Permission denied") as caught:
        recovery.check_saved_state(str(experiment))
    assert caught.value.where == str(experiment / NEWEST_STATE)
