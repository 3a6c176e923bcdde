"""The persistent OptunaSearch: a searcher restored from Tune's snapshot over a study that
went on after it (the driver killed between the two)."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from hiersearch.search.searcher import TUNE_TRIAL_ATTR, PersistentOptunaSearch

VARIANTS = ["FLAT", "LAST-THREE", "ONE-BY-ONE"]


def _space(trial: Any) -> None:
    trial.suggest_categorical("variant", VARIANTS)


def _searcher(storage: Any) -> PersistentOptunaSearch:
    return PersistentOptunaSearch(
        space=_space,
        metric="dev/rp_macro",
        mode="max",
        points_to_evaluate=[{"variant": v} for v in VARIANTS],
        sampler=optuna.samplers.RandomSampler(seed=0),
        study_name="s",
        storage=storage,
    )


def _killed_after_snapshot(tmp_path: Path, storage: Any) -> tuple[PersistentOptunaSearch, Any]:
    """The searcher Tune would restore (the one built, pickled in tuner.pkl, then given the
    snapshot) after a driver that handed out a third trial past its last snapshot."""
    searcher = _searcher(storage)
    built = pickle.dumps(searcher)
    searcher.suggest("tune_a")
    searcher.suggest("tune_b")
    searcher.save_to_dir(str(tmp_path), session_str="killed")  # as Tune snapshots it
    assert searcher.suggest("tune_c") == {"variant": "ONE-BY-ONE"}  # after the snapshot
    restored = pickle.loads(built)
    restored.restore_from_dir(str(tmp_path))
    return restored, searcher._ot_study


@pytest.fixture
def sqlite(tmp_path: Path) -> Any:
    return optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")


def test_a_resumed_search_runs_the_point_a_lost_trial_had_taken(
    tmp_path: Path, sqlite: Any
) -> None:
    restored, _ = _killed_after_snapshot(tmp_path, sqlite)
    assert restored.suggest("tune_d") == {"variant": "ONE-BY-ONE"}


def test_the_lost_optuna_trial_fails_and_its_retry_names_it(tmp_path: Path, sqlite: Any) -> None:
    restored, _ = _killed_after_snapshot(tmp_path, sqlite)
    restored.suggest("tune_d")
    trials = optuna.load_study(study_name="s", storage=sqlite).trials
    assert [t.state for t in trials] == [TrialState.RUNNING] * 2 + [TrialState.FAIL] + [
        TrialState.RUNNING
    ]
    assert trials[2].user_attrs[TUNE_TRIAL_ATTR] == "tune_c"
    assert trials[3].system_attrs["failed_trial"] == 2
    assert trials[3].user_attrs[TUNE_TRIAL_ATTR] == "tune_d"


def test_trials_in_the_snapshot_stay_running_and_report(tmp_path: Path, sqlite: Any) -> None:
    restored, _ = _killed_after_snapshot(tmp_path, sqlite)
    restored.on_trial_complete("tune_b", {"dev/rp_macro": 0.5})
    study = optuna.load_study(study_name="s", storage=sqlite)
    assert study.trials[1].state == TrialState.COMPLETE
    assert study.trials[1].value == 0.5
    assert study.trials[0].state == TrialState.RUNNING


def test_an_in_memory_study_restores_as_its_snapshot(tmp_path: Path) -> None:
    """The snapshot holds the whole in-memory study: the third point was never taken."""
    restored, _ = _killed_after_snapshot(tmp_path, None)
    assert restored.suggest("tune_d") == {"variant": "ONE-BY-ONE"}
    assert [t.state for t in restored._ot_study.trials] == [TrialState.RUNNING] * 3


def test_every_optuna_trial_names_its_tune_trial(sqlite: Any) -> None:
    searcher = _searcher(sqlite)
    searcher.suggest("tune_a")
    searcher.suggest("tune_a")  # asked again: the same Optuna trial
    trials = optuna.load_study(study_name="s", storage=sqlite).trials
    assert [t.user_attrs.get(TUNE_TRIAL_ATTR) for t in trials] == ["tune_a", None, None]
