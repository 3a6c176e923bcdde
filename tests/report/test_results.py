"""Reading real Ray 2.60 experiment directories into the table of trials (trimmed copies in
fixtures/leaderboard/).

fixtures/leaderboard/finished: 8 trials that completed (FLAT and LAST-SIX, lr 1e-5 / 3e-5,
seeds 1 and 2) and one that raised ValueError; asha: one trial stopped by ASHA after one report
and one that completed; killed: two trials whose driver was killed with SIGKILL mid-run.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from hiersearch.errors import InputError
from hiersearch.report import results
from hiersearch.trial.config import TrialConfig

FIXTURES = Path(__file__).parents[1] / "fixtures" / "leaderboard"


def _copy(tmp_path: Path, name: str) -> Path:
    return Path(shutil.copytree(FIXTURES / name, tmp_path / name))


def _trial_dir(experiment: Path, trial_id: str) -> Path:
    return next(experiment.glob(f"*_{trial_id}_*"))


def _row(df: pd.DataFrame, trial_id: str) -> pd.Series:
    return df.set_index("trial_id").loc[trial_id]


@pytest.fixture(scope="module")
def finished() -> pd.DataFrame:
    return results.load_experiments([str(FIXTURES / "finished")])


def test_finished_experiment_has_one_row_per_trial(finished: pd.DataFrame) -> None:
    assert len(finished) == 9
    assert list(finished.columns[: len(results.ID_COLUMNS)]) == list(results.ID_COLUMNS)
    assert set(finished["experiment"]) == {"finished"}
    assert (finished["status"] == results.STATUS_TERMINATED).sum() == 8


def test_finished_trial_shows_its_final_report(finished: pd.DataFrame) -> None:
    row = _row(finished, "f18e3_00000")
    final = json.loads(
        (_trial_dir(FIXTURES / "finished", "f18e3_00000") / "result.json")
        .read_text()
        .splitlines()[-1]
    )
    assert row["dev/rp_macro"] == final["dev/rp_macro"]
    assert row["test/rp_L3"] == final["test/rp_L3"]
    assert (row["stop_reason"], row["best_epoch"], row["epochs"]) == ("completed", 3, 4)
    assert (row["assignment"], row["node_id"]) == ("FLAT", "abc123")
    assert row["time_s"] == pytest.approx(final["time_total_s"])


def test_params_become_columns_and_metric_comes_from_hiersearch_json(
    finished: pd.DataFrame,
) -> None:
    row = _row(finished, "f18e3_00005")
    assert (row["lr"], row["seed"], row["batch_size"], row["assign/kind"]) == (3e-5, 1, 8, "last")
    assert row["param/variant"] == "LAST-SIX"  # the param named like the identity column
    assert str(finished["batch_size"].dtype) == "Int64"
    assert finished.attrs == {"metric": "dev/rp_macro", "mode": "max", "objectives": []}


def test_metric_columns_are_ordered_dev_test_train_util(finished: pd.DataFrame) -> None:
    assert results.metric_columns(finished)[:7] == [
        "dev/rp_L1",
        "dev/rp_L2",
        "dev/rp_L3",
        "dev/rp_micro",
        "dev/rp_macro",
        "dev/loss",
        "test/rp_L1",
    ]
    assert results.metric_columns(finished)[-1] == "util/angular_mean"


def test_errored_trial_shows_errored_and_the_exception_line(finished: pd.DataFrame) -> None:
    row = _row(finished, "f18e3_00008")
    assert row["status"] == results.STATUS_ERRORED
    assert row["error"] == "ValueError: boom: bad things happened"
    assert row["variant"] == "ERR"  # never reported trial/variant: taken from its config


def test_error_line_without_a_traceback_skips_rays_header() -> None:
    assert results.error_line("Failure # 1 (occurred at 2026)\nworker died\n") == "worker died"


def test_scheduler_stopped_trial_is_stopped_early() -> None:
    df = results.load_experiments([str(FIXTURES / "asha")])
    assert _row(df, "0a29b_00000")["status"] == results.STATUS_STOPPED_EARLY
    assert _row(df, "0a29b_00001")["status"] == results.STATUS_TERMINATED
    assert math.isnan(_row(df, "0a29b_00000")["test/rp_macro"])


def test_experiment_without_metadata_sorts_by_the_default_metric() -> None:
    df = results.load_experiments([str(FIXTURES / "asha")])
    assert df.attrs == {"metric": "dev/rp_macro", "mode": "max", "objectives": []}
    assert set(df["experiment"]) == {"asha"}


def test_killed_driver_leaves_trials_running() -> None:
    df = results.load_experiments([str(FIXTURES / "killed")])
    assert list(df["status"]) == [results.STATUS_RUNNING, results.STATUS_RUNNING]
    assert list(df["epochs"]) == [5, 5]


def test_unfinished_trial_takes_dev_metrics_from_its_best_report(tmp_path: Path) -> None:
    exp = _copy(tmp_path, "asha")
    result = _trial_dir(exp, "0a29b_00000") / "result.json"
    first = json.loads(result.read_text().splitlines()[0])
    later = {**first, "dev/rp_macro": 0.01, "train/loss": 9.0, "epoch": 2, "time_total_s": 7.0}
    result.write_text(result.read_text() + json.dumps(later) + "\n")
    row = _row(results.load_experiments([str(exp)]), "0a29b_00000")
    assert (row["dev/rp_macro"], row["train/loss"]) == (first["dev/rp_macro"], first["train/loss"])
    assert (row["epochs"], row["time_s"]) == (2, 7.0)


def test_corrupt_result_line_is_skipped_with_a_warning_naming_the_file(
    tmp_path: Path, finished: pd.DataFrame
) -> None:
    exp = _copy(tmp_path, "finished")
    result = _trial_dir(exp, "f18e3_00004") / "result.json"
    lines = result.read_text().splitlines()
    result.write_text("\n".join([*lines[:-1], lines[-1][:40]]))  # a torn last write
    with pytest.warns(results.LeaderboardWarning, match=r"f18e3_00004.*result\.json.*line 4"):
        df = results.load_experiments([str(exp)])
    assert _row(df, "f18e3_00004")["epochs"] == 3
    others = df[df["trial_id"] != "f18e3_00004"].drop(columns="experiment")
    expected = finished[finished["trial_id"] != "f18e3_00004"].drop(columns="experiment")
    pd.testing.assert_frame_equal(others.reset_index(drop=True), expected.reset_index(drop=True))


def test_corrupt_params_json_falls_back_to_the_state_config(tmp_path: Path) -> None:
    exp = _copy(tmp_path, "finished")
    (_trial_dir(exp, "f18e3_00001") / "params.json").write_text('{"lr": ')
    with pytest.warns(results.LeaderboardWarning, match=r"params\.json"):
        df = results.load_experiments([str(exp)])
    assert _row(df, "f18e3_00001")["lr"] == 3e-5


def test_trial_in_state_without_a_directory_is_pending(tmp_path: Path) -> None:
    exp = _copy(tmp_path, "finished")
    shutil.rmtree(_trial_dir(exp, "f18e3_00003"))
    state_file = next(exp.glob("experiment_state-*.json"))
    state = json.loads(state_file.read_text())
    for pair in state["trial_data"]:
        trial = json.loads(pair[0])
        if trial["trial_id"] == "f18e3_00003":
            pair[0] = json.dumps({**trial, "status": "PENDING"})
            pair[1] = json.dumps({**json.loads(pair[1]), "last_result": {}})
    state_file.write_text(json.dumps(state))
    row = _row(results.load_experiments([str(exp)]), "f18e3_00003")
    assert (row["status"], row["variant"], row["lr"]) == (results.STATUS_PENDING, "FLAT", 3e-5)


def test_without_a_state_file_status_comes_from_the_trial_files(tmp_path: Path) -> None:
    exp = _copy(tmp_path, "finished")
    next(exp.glob("experiment_state-*.json")).unlink()
    df = results.load_experiments([str(exp)])
    assert len(df) == 9
    assert _row(df, "f18e3_00000")["status"] == results.STATUS_TERMINATED
    assert _row(df, "f18e3_00008")["status"] == results.STATUS_ERRORED


def _drop_from_state(exp: Path, trial_id: str) -> None:
    state_file = next(exp.glob("experiment_state-*.json"))
    state = json.loads(state_file.read_text())
    pairs = state["trial_data"]
    state["trial_data"] = [p for p in pairs if json.loads(p[0])["trial_id"] != trial_id]
    assert len(state["trial_data"]) == len(pairs) - 1
    state_file.write_text(json.dumps(state))


def test_trial_missing_from_the_saved_state_is_lost(tmp_path: Path) -> None:
    """A killed driver had started it after its last snapshot: no state entry names it."""
    exp = _copy(tmp_path, "killed")
    _drop_from_state(exp, "46e40_00001")
    df = results.load_experiments([str(exp)])
    assert list(df["status"]) == [results.STATUS_RUNNING, results.STATUS_LOST]
    assert list(df["epochs"]) == [5, 5]


def test_finished_trial_missing_from_the_saved_state_is_terminated(tmp_path: Path) -> None:
    exp = _copy(tmp_path, "finished")
    _drop_from_state(exp, "f18e3_00002")
    assert _row(results.load_experiments([str(exp)]), "f18e3_00002")["status"] == (
        results.STATUS_TERMINATED
    )


def test_corrupt_state_file_is_skipped_and_trial_files_still_read(tmp_path: Path) -> None:
    exp = _copy(tmp_path, "killed")
    state_file = next(exp.glob("experiment_state-*.json"))
    state_file.write_text(state_file.read_text()[:100])
    with pytest.warns(results.LeaderboardWarning, match="experiment_state"):
        df = results.load_experiments([str(exp)])
    assert list(df["status"]) == [results.STATUS_UNKNOWN, results.STATUS_UNKNOWN]  # no guessing
    assert list(df["trial_id"]) == ["46e40_00000", "46e40_00001"]


def test_file_uri_reads_like_a_path(finished: pd.DataFrame) -> None:
    df = results.load_experiments([(FIXTURES / "finished").as_uri()])
    pd.testing.assert_frame_equal(df, finished)


def test_several_directories_make_one_table() -> None:
    df = results.load_experiments([str(FIXTURES / "finished"), str(FIXTURES / "killed")])
    assert len(df) == 11
    assert df["lr"].notna().all() and df["batch_size"].isna().sum() == 2


def _storage_root(tmp_path: Path) -> Path:
    """A storage root as searches leave it: two experiments and the corpora in `_data`."""
    root = tmp_path / "runs"
    for name in ("finished", "killed"):
        shutil.copytree(FIXTURES / name, root / name)
    (root / "_data" / "synthetic-eurovoc").mkdir(parents=True)
    (root / "_data" / "synthetic-eurovoc" / "train.jsonl").write_text("{}\n")
    return root


def test_storage_root_reads_every_experiment_in_it(tmp_path: Path) -> None:
    root = _storage_root(tmp_path)
    df = results.load_experiments([str(root)])
    apart = results.load_experiments([str(root / "finished"), str(root / "killed")])
    pd.testing.assert_frame_equal(df, apart)
    assert df["experiment"].value_counts().to_dict() == {"finished": 9, "killed": 2}


def test_storage_root_as_a_uri_reads_like_a_path(tmp_path: Path) -> None:
    root = _storage_root(tmp_path)
    df = results.load_experiments([root.as_uri()])
    assert sorted(set(df["experiment"])) == ["finished", "killed"]
    assert df["checkpoint"].isna().all() and len(df) == 11


def test_storage_root_without_experiments_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "_data" / "corpus").mkdir(parents=True)
    with pytest.raises(InputError, match="nor does any directory in it"):
        results.load_experiments([str(tmp_path)])


def test_empty_directory_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=str(tmp_path)):
        results.load_experiments([str(tmp_path)])


def test_missing_directory_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such experiment directory"):
        results.load_experiments([str(tmp_path / "nope")])


def test_hiersearch_json_that_is_not_an_object_is_ignored_with_a_warning(
    tmp_path: Path,
) -> None:
    experiment = _copy(tmp_path, "finished")
    (experiment / "hiersearch.json").write_text('["dev/rp_macro"]\n')
    with pytest.warns(results.LeaderboardWarning, match=r"hiersearch\.json: expected a JSON"):
        table = results.load_experiments([str(experiment)])
    assert len(table) == 9 and table.attrs["metric"] == "dev/rp_macro"


# --- head options ----------------------------------------------------------------------------

HEAD: dict[str, Any] = {
    "pooling": "mean",
    "head_norm": "batchnorm",
    "head_hidden": None,
    "freeze_layers": 2,
}


def _write_configs(experiment: Path, head: dict[str, Any]) -> None:
    """A config.json in every trial directory, as the search driver writes it."""
    for trial_dir in experiment.glob("trainable_*"):
        (trial_dir / "config.json").write_text(TrialConfig(**head).dumps())


def test_head_options_are_columns_from_config_json_though_not_searched(tmp_path: Path) -> None:
    exp = _copy(tmp_path, "finished")
    _write_configs(exp, HEAD)
    df = results.load_experiments([str(exp)])
    assert set(results.HEAD_OPTION_COLUMNS) <= set(results.param_columns(df))
    searched = json.loads((_trial_dir(exp, "f18e3_00000") / "params.json").read_text())
    assert set(results.HEAD_OPTION_COLUMNS).isdisjoint(searched)
    row = _row(df, "f18e3_00005")
    assert (row["pooling"], row["head_norm"], row["freeze_layers"]) == ("mean", "batchnorm", 2)
    assert row["head_hidden"] is None
    assert str(df["freeze_layers"].dtype) == "Int64"


def test_experiment_without_config_json_has_no_head_columns(finished: pd.DataFrame) -> None:
    assert set(results.HEAD_OPTION_COLUMNS).isdisjoint(finished.columns)


def test_trial_without_config_json_takes_head_options_from_the_base_config(
    tmp_path: Path,
) -> None:
    exp = _copy(tmp_path, "finished")
    meta = json.loads((exp / "hiersearch.json").read_text())
    meta["base_config"] = TrialConfig(pooling="cls_mean", head_hidden=64).to_json()
    (exp / "hiersearch.json").write_text(json.dumps(meta))
    params = _trial_dir(exp, "f18e3_00001") / "params.json"
    params.write_text(json.dumps({**json.loads(params.read_text()), "head_norm": "layernorm"}))
    row = _row(results.load_experiments([str(exp)]), "f18e3_00001")
    assert (row["pooling"], row["head_hidden"]) == ("cls_mean", 64)
    assert row["head_norm"] == "layernorm"  # the trial's searched value over the base


def test_corrupt_config_json_is_skipped_with_a_warning(tmp_path: Path) -> None:
    exp = _copy(tmp_path, "finished")
    _write_configs(exp, HEAD)
    (_trial_dir(exp, "f18e3_00004") / "config.json").write_text('{"pooling": ')
    with pytest.warns(results.LeaderboardWarning, match=r"f18e3_00004.*config\.json"):
        df = results.load_experiments([str(exp)])
    assert _row(df, "f18e3_00000")["pooling"] == "mean"
    assert pd.isna(_row(df, "f18e3_00004")["pooling"])
