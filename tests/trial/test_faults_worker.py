"""Worker loss: a Ray Train worker SIGKILLed in the middle of an epoch is replaced by Ray Train
(`tune.worker_failures` restarts) and training resumes from the last checkpoint: epochs, the
optimizer step count, the learning-rate schedule and Adam's moments all carry on, so that the
resumed trial reports exactly what an uninterrupted run of the same config reports.

The worker's pid comes from the trial's `artifacts/workers.json`, which rank 0 writes at every
start of the worker group. The kill comes once the Ray Train controller has registered the
epoch-1 checkpoint (its `checkpoint_manager_snapshot.json` in the Train run's directory lists
it) or the epoch-1 report is in Tune's result.json, whichever is seen first: the snapshot is
written when the controller takes the report, while result.json gets the line only after Tune's
driver has processed it, which on a busy machine came after epoch 2 had ended (seen on CI).
One trial, one worker; batch size 1 makes an epoch 112 optimizer steps (~10 s on 2 cores).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from hiersearch import metrics as M
from hiersearch.report import results
from hiersearch.search.run import run_search
from hiersearch.search.space import load_space
from hiersearch.trial.config import TrialConfig
from hiersearch.trial.recipe import fit
from hiersearch.trial.session import LocalSession

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_session")]

LR, WARMUP, EPOCHS = 1e-3, 0.25, 2
SPACE = {
    "name": "worker-loss",
    "data": {"hierarchy": "eurovoc", "docs": 160, "seed": 1, "max_leaves": 12},
    "trial": {
        "model": "tiny:12x32",
        "max_length": 48,
        "epochs": EPOCHS,
        "batch_size": 1,  # 112 training documents: 112 optimizer steps per epoch
        "eval_batch_size": 16,
        "lr": LR,
        "warmup_ratio": WARMUP,
        "patience": EPOCHS,
        "num_workers": 1,
        "launcher": "train",  # Ray Train's worker restarts are what this tests
        "cpus_per_worker": 1,
        "util_docs": 0,
        "keep_checkpoints": 1,
    },
    "assignment": {"space": "variants", "variants": ["FLAT"]},
    "tune": {"algorithm": "grid", "worker_failures": 1},
}


def _reports(trial_dir: Path) -> list[dict[str, Any]]:
    text = (trial_dir / "result.json").read_text() if (trial_dir / "result.json").exists() else ""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _registered_epochs(trial_dir: Path) -> list[int]:
    """Epochs of the checkpoints the Train controller has registered (its snapshot file)."""
    epochs: list[int] = []
    for snapshot in trial_dir.glob("train_*/checkpoint_manager_snapshot.json"):
        try:
            state = json.loads(snapshot.read_text())
        except (OSError, ValueError):  # being written: the next poll reads it whole
            continue
        for result in state.get("checkpoint_results") or []:
            epoch = (result.get("metrics") or {}).get(M.EPOCH)
            if isinstance(epoch, int):
                epochs.append(epoch)
    return sorted(epochs)


class _Killer(threading.Thread):
    """Waits for epoch 1 to be checkpointed (registered by the Train controller, or reported to
    Tune), then SIGKILLs the worker named in workers.json."""

    def __init__(self, experiment: Path) -> None:
        super().__init__(daemon=True)
        self.experiment = experiment
        self.killed_pid: int | None = None
        self.epochs_seen_at_kill: list[int] = []

    def run(self) -> None:
        deadline = time.time() + 400
        while time.time() < deadline and self.killed_pid is None:
            for trial_dir in self.experiment.glob("trial_*"):
                workers = trial_dir / "artifacts" / "workers.json"
                registered = _registered_epochs(trial_dir)
                reported = [r.get(M.EPOCH) for r in _reports(trial_dir)]
                if workers.exists() and (registered == [1] or reported == [1]):
                    pid = json.loads(workers.read_text())["starts"][-1]["workers"][0]["pid"]
                    # what was checkpointed when the kill came: epoch 1 only
                    self.epochs_seen_at_kill = sorted(set(registered) | set(reported))
                    os.kill(pid, signal.SIGKILL)
                    self.killed_pid = pid
                    return
            time.sleep(0.05)


@pytest.fixture(scope="module")
def killed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, _Killer]:
    root = tmp_path_factory.mktemp("worker-loss")
    space_file = root / "worker-loss.yaml"
    launch = "# Launch: hiersearch search --space worker-loss.yaml\n"
    space_file.write_text(launch + yaml.safe_dump(SPACE))
    storage = root / "runs"
    killer = _Killer(storage / "worker-loss")
    killer.start()
    experiment = Path(run_search(load_space(space_file), storage=str(storage), verbose=0))
    killer.join(timeout=1)
    (trial_dir,) = experiment.glob("trial_*")
    return trial_dir, killer


def test_the_worker_was_killed_inside_epoch_two_and_replaced(
    killed: tuple[Path, _Killer],
) -> None:
    trial_dir, killer = killed
    assert killer.killed_pid is not None, "epoch 1 was never seen checkpointed"
    assert killer.epochs_seen_at_kill == [1]  # epoch 2 had not reported yet
    starts = json.loads((trial_dir / "artifacts" / "workers.json").read_text())["starts"]
    pids = [start["workers"][0]["pid"] for start in starts]
    assert pids[0] == killer.killed_pid
    assert len(pids) == 2 and pids[1] != pids[0]


def test_the_trial_finishes_with_every_epoch_reported_once(
    killed: tuple[Path, _Killer],
) -> None:
    trial_dir, _ = killed
    reports = _reports(trial_dir)
    assert [r[M.EPOCH] for r in reports] == [1, 2, 2]  # the last one is the final report
    assert reports[-1][M.TRIAL_STOP_REASON] == "completed"
    table = results.load_experiments([str(trial_dir.parent)])
    (row,) = table[table["status"] != "baseline"].to_dict("records")
    assert row["status"] == results.STATUS_TERMINATED


def test_step_count_and_lr_schedule_continue_after_the_restart(
    killed: tuple[Path, _Killer],
) -> None:
    trial_dir, _ = killed
    epochs = _reports(trial_dir)[:EPOCHS]
    steps_per_epoch = epochs[0][M.TRAIN_STEP]
    total = steps_per_epoch * EPOCHS
    warmup = int(WARMUP * total)
    assert [r[M.TRAIN_STEP] for r in epochs] == [steps_per_epoch * (e + 1) for e in range(EPOCHS)]
    for report in epochs:  # the linear decay after warm-up, at the step reached
        step = report[M.TRAIN_STEP]
        expected = LR * max(0.0, (total - step) / (total - warmup))
        assert report[M.LEARNING_RATE] == pytest.approx(expected, abs=1e-12)


def test_resumed_trial_reports_what_an_uninterrupted_run_reports(
    killed: tuple[Path, _Killer], tmp_path: Path
) -> None:
    """Weights, Adam's moments, the scheduler and the RNG came back from the checkpoint:
    any of them restarted from scratch would change the epoch-2 dev loss."""
    trial_dir, _ = killed
    config = TrialConfig.from_dict(json.loads((trial_dir / "config.json").read_text()))
    meta = json.loads((trial_dir.parent / "hiersearch.json").read_text())
    (encoded,) = Path(meta["corpus"]).glob(".hiersearch-cache/encoded-*")
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    session = LocalSession(checkpoint_root=checkpoints)
    fit(config, str(encoded), session)
    resumed = _reports(trial_dir)
    for key in (M.loss_key("dev"), M.rp_macro_key("dev"), M.loss_key("train")):
        got = [r[key] for r in resumed[:EPOCHS]]
        want = [r[key] for r in session.reports[:EPOCHS]]
        assert got == pytest.approx(want, rel=1e-5), key
