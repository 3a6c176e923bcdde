"""Trial faults through the real path of a one-worker trial (Ray Tune trial training in its own
process, the default launcher): a diverging trial and a crashing trial are marked errored with
their error's first line, the rest of the search goes on, and only the crash is retried (Tune
restarts it in a new process, `worker_failures` times). Ray Train's restarts of a worker group
are tested by test_faults_worker.

One experiment, a 2 x 2 grid on one worker per trial, serves every assertion:

    lr 1e-3  x tiny:12x32  trains to the end
    lr 1e30  x tiny:12x32  diverges: weights overflow after its first step (NaN dev scores)
    any lr   x tiny:12x33  crashes in the worker: 33 is not a multiple of the 2 attention heads
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from hiersearch.report import results
from hiersearch.search.run import run_search
from hiersearch.search.space import load_space

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_session")]

GOOD, CRASHING, HUGE_LR = "tiny:12x32", "tiny:12x33", 1e30
WORKER_FAILURES = 1  # a failed trial may be restarted once
SPACE = {
    "name": "faults",
    "data": {"hierarchy": "eurovoc", "docs": 60, "seed": 1, "max_leaves": 12},
    "trial": {
        "model": GOOD,
        "max_length": 48,
        "epochs": 2,
        "max_steps_per_epoch": 1,
        "batch_size": 4,
        "eval_batch_size": 16,
        "patience": 2,
        "num_workers": 1,
        "cpus_per_worker": 1,
        "util_docs": 0,
        "keep_checkpoints": 1,
    },
    "search": {
        "lr": {"type": "categorical", "choices": [1e-3, HUGE_LR]},
        "model": {"type": "categorical", "choices": [GOOD, CRASHING]},
    },
    "assignment": {"space": "variants", "variants": ["FLAT"]},
    "tune": {"algorithm": "grid", "worker_failures": WORKER_FAILURES},
}


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("faults")
    space_file = root / "faults.yaml"
    launch = "# Launch: hiersearch search --space faults.yaml\n"
    space_file.write_text(launch + yaml.safe_dump(SPACE))
    path = run_search(load_space(space_file), storage=str(root / "runs"), verbose=0)
    return Path(path)


@pytest.fixture(scope="module")
def board(experiment: Path) -> pd.DataFrame:
    return results.load_experiments([str(experiment)])


def _rows(board: pd.DataFrame, lr: float, model: str | None = None) -> pd.DataFrame:
    keep = board["lr"] == lr
    if model is not None:
        keep &= board["model"] == model
    return board[keep]


def _trial_dir(experiment: Path, trial_id: str) -> Path:
    return experiment / f"trial_{trial_id}"


def _starts(experiment: Path, trial_id: str) -> list[dict]:
    """The starts recorded by the trial's rank 0 (one per attempt)."""
    text = (_trial_dir(experiment, trial_id) / "artifacts" / "workers.json").read_text()
    return json.loads(text)["starts"]


def _reports(experiment: Path, trial_id: str) -> list[dict]:
    text = (_trial_dir(experiment, trial_id) / "result.json").read_text()
    return [json.loads(line) for line in text.splitlines()]


def test_the_search_goes_on_past_failed_trials(board: pd.DataFrame) -> None:
    assert (board["status"] == "baseline").sum() == 1  # beside the four trials
    assert len(board[board["status"] != "baseline"]) == 4
    good = _rows(board, 1e-3, GOOD)
    assert list(good["status"]) == [results.STATUS_TERMINATED]
    assert list(good["stop_reason"]) == ["completed"]
    assert good["test/rp_macro"].notna().all()


def test_diverging_trial_is_errored_with_the_non_finite_loss_line(board: pd.DataFrame) -> None:
    row = _rows(board, HUGE_LR, GOOD).iloc[0]
    assert row["status"] == results.STATUS_ERRORED
    assert row["stop_reason"] == "nan_loss"
    assert row["error"] == (
        "hiersearch.search.trainable.NonFiniteLossError: "
        "non-finite training loss or weights in epoch 1: "
        "trial stopped, not retried (lr=1e+30, assignment=FLAT)"
    )


def test_diverging_trial_is_not_trained_again(
    board: pd.DataFrame, experiment: Path
) -> None:
    trial_id = _rows(board, HUGE_LR, GOOD).iloc[0]["trial_id"]
    # a restart was allowed: it found the trial's divergence recorded and failed at once
    assert len(_starts(experiment, trial_id)) == 1
    reports = _reports(experiment, trial_id)
    assert [(r["epoch"], r["trial/stop_reason"]) for r in reports] == [(1, "nan_loss")]


def test_crashing_trials_are_errored_with_the_workers_exception_line(
    board: pd.DataFrame,
) -> None:
    rows = board[board["model"] == CRASHING]
    assert len(rows) == 2
    assert set(rows["status"]) == {results.STATUS_ERRORED}
    assert set(rows["error"]) == {
        "ValueError: The hidden size (33) is not a multiple of the number of attention heads (2)"
    }


def test_crashing_trial_is_retried_worker_failures_times(
    board: pd.DataFrame, experiment: Path
) -> None:
    for trial_id in board[board["model"] == CRASHING]["trial_id"]:
        starts = _starts(experiment, trial_id)
        assert len(starts) == 1 + WORKER_FAILURES
        pids = [s["workers"][0]["pid"] for s in starts]
        assert len(set(pids)) == len(pids)  # a fresh process each time
