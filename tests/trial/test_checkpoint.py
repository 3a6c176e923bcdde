"""A trial's checkpoint files: what is written, that it reads back whole (random states too),
that the format is the one existing experiments and exported models hold, and that a missing
or damaged file is reported by name."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from hiersearch.errors import InputError
from hiersearch.report.results import FINAL_CHECKPOINT_FILES
from hiersearch.trial import checkpoint
from hiersearch.trial.checkpoint import (
    CheckpointError,
    EpochCheckpoint,
    FinalCheckpoint,
    LoopState,
    TrainingState,
)
from hiersearch.trial.config import TrialConfig

CONFIG = TrialConfig(lr=3e-5, assignment="LAST-SIX")
# train_state.pt's keys and its "state"'s, as every checkpoint written so far holds them
TRAIN_STATE_KEYS = {"optimizer", "scheduler", "scaler", "state", "rng", "trial_id"}
STATE_KEYS = {"epoch", "best_dev_loss", "best_epoch", "bad_epochs", "best_metrics",
              "global_step", "exploits"}


def _trained() -> tuple[torch.nn.Module, torch.optim.Optimizer, Any]:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    model(torch.ones(4, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    return model, optimizer, scheduler


def _epoch(
    best_model: dict[str, Any] | None = None,
    writer: str | None = "a",
    smart_anchor: dict[str, Any] | None = None,
) -> EpochCheckpoint:
    model, optimizer, scheduler = _trained()
    state = LoopState(epoch=2, best_dev_loss=0.5, best_epoch=1, bad_epochs=1,
                      best_metrics={"dev/loss": 0.5}, global_step=7,
                      exploits=[{"donor": "b", "epoch": 1}])
    training = TrainingState(
        optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), scaler=None,
        state=state, rng=checkpoint.rng_state(torch.device("cpu")), writer=writer,
        best_model=best_model, smart_anchor=smart_anchor,
    )
    return EpochCheckpoint(model.state_dict(), training)


def _draws() -> list[float]:
    return [random.random(), float(np.random.rand()), float(torch.rand(1))]


def test_an_epoch_checkpoint_reads_back_whole(tmp_path: Path) -> None:
    saved = _epoch()
    checkpoint.save(tmp_path, saved, CONFIG)
    loaded = checkpoint.load(tmp_path, torch.device("cpu"))
    assert loaded.model.keys() == saved.model.keys()
    assert all(torch.equal(loaded.model[k], saved.model[k]) for k in saved.model)
    moments = [s["exp_avg"] for s in loaded.training.optimizer["state"].values()]
    assert moments and all(
        torch.equal(a, b["exp_avg"])
        for a, b in zip(moments, saved.training.optimizer["state"].values(), strict=True)
    )
    assert loaded.training.scheduler["last_epoch"] == 1
    assert loaded.training.state == saved.training.state
    assert loaded.training.writer == "a" and loaded.training.best_model is None


def test_restoring_the_random_states_repeats_the_draws_after_the_save(tmp_path: Path) -> None:
    saved = _epoch()
    checkpoint.save(tmp_path, saved, CONFIG)
    expected = _draws()
    _draws()  # the generators move on
    checkpoint.set_rng_state(checkpoint.read_training(tmp_path).rng, torch.device("cpu"))
    assert _draws() == expected


def test_the_best_weights_are_kept_only_when_they_are_not_the_checkpoints_own(
    tmp_path: Path,
) -> None:
    own, older = tmp_path / "own", tmp_path / "older"
    own.mkdir()
    older.mkdir()
    checkpoint.save(own, _epoch(), CONFIG)
    assert not (own / checkpoint.BEST_MODEL_FILE).exists()
    best = {"weight": torch.zeros(2, 3)}
    checkpoint.save(older, _epoch(best_model=best), CONFIG)
    loaded = checkpoint.read_training(older).best_model
    assert loaded is not None and torch.equal(loaded["weight"], best["weight"])


def test_the_files_and_keys_of_an_epoch_checkpoint_are_the_existing_format(
    tmp_path: Path,
) -> None:
    checkpoint.save(tmp_path, _epoch(best_model={"weight": torch.zeros(1)}), CONFIG)
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {"model.pt", "best_model.pt", "train_state.pt", "config.json"}
    raw = torch.load(tmp_path / "train_state.pt", weights_only=False)
    assert set(raw) == TRAIN_STATE_KEYS and set(raw["state"]) == STATE_KEYS
    assert raw["trial_id"] == "a" and set(raw["rng"]) == {"python", "numpy", "torch"}
    assert (tmp_path / "config.json").read_text() == CONFIG.dumps()


def test_smarts_anchor_is_kept_only_by_a_trial_that_has_one(tmp_path: Path) -> None:
    anchor = {"heads.0.weight": torch.ones(2, 3)}
    checkpoint.save(tmp_path, _epoch(smart_anchor=anchor), CONFIG)
    raw = torch.load(tmp_path / "train_state.pt", weights_only=False)
    assert set(raw) == {*TRAIN_STATE_KEYS, "smart_anchor"}
    assert torch.equal(checkpoint.read_training(tmp_path).smart_anchor["heads.0.weight"],
                       anchor["heads.0.weight"])
    checkpoint.save(tmp_path, _epoch(), CONFIG)
    assert checkpoint.read_training(tmp_path).smart_anchor is None


def test_a_checkpoint_written_before_this_module_loads(tmp_path: Path) -> None:
    """What the recipe wrote by hand (a dict of files), read by the module."""
    model, optimizer, scheduler = _trained()
    torch.save(model.state_dict(), tmp_path / "model.pt")
    state = {"epoch": 1, "best_dev_loss": 0.25, "best_epoch": 1, "bad_epochs": 0,
             "best_metrics": {}, "global_step": 3, "exploits": []}
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": None, "state": state, "rng": checkpoint.rng_state(torch.device("cpu")),
                "trial_id": "old"}, tmp_path / "train_state.pt")
    (tmp_path / "config.json").write_text(CONFIG.dumps())
    loaded = checkpoint.load(tmp_path, torch.device("cpu"))
    assert loaded.training.state == LoopState(**state) and loaded.training.writer == "old"
    assert torch.equal(loaded.model["weight"], model.state_dict()["weight"])


def test_a_final_checkpoint_holds_weights_config_and_the_report_as_strict_json(
    tmp_path: Path,
) -> None:
    final = {"dev/loss": math.nan, "test/rp_L1": np.float32(0.5), "epoch": np.int64(3)}
    checkpoint.save(tmp_path, FinalCheckpoint({"weight": torch.ones(1)}, final), CONFIG)
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {"model.pt", "config.json", "final_metrics.json"}
    # how the leaderboard tells a final checkpoint (report/ cannot import trial/)
    assert names == FINAL_CHECKPOINT_FILES
    raw = json.loads((tmp_path / "final_metrics.json").read_text())
    assert raw == {"dev/loss": None, "test/rp_L1": 0.5, "epoch": 3}
    again = checkpoint.read_final_metrics(tmp_path)
    assert again is not None and math.isnan(again["dev/loss"]) and again["epoch"] == 3
    assert torch.equal(checkpoint.read_weights(tmp_path)["weight"], torch.ones(1))


def test_an_epoch_checkpoint_has_no_final_metrics(tmp_path: Path) -> None:
    checkpoint.save(tmp_path, _epoch(), CONFIG)
    assert checkpoint.read_final_metrics(tmp_path) is None


def test_the_final_metrics_are_found_in_a_local_directory_or_a_storage_path() -> None:
    local = Path("t/artifacts")
    assert checkpoint.final_metrics_path(local) == local / "final_metrics.json"
    assert checkpoint.final_metrics_path("bucket/t/artifacts/") == (
        "bucket/t/artifacts/final_metrics.json"
    )
    assert checkpoint.config_path("bucket/t") == "bucket/t/config.json"


def test_a_missing_file_is_reported_by_name(tmp_path: Path) -> None:
    checkpoint.save(tmp_path, _epoch(), CONFIG)
    (tmp_path / "train_state.pt").unlink()
    with pytest.raises(CheckpointError, match="train_state.pt"):
        checkpoint.load(tmp_path, torch.device("cpu"))


@pytest.mark.parametrize("name", ["model.pt", "train_state.pt"])
def test_a_damaged_file_is_reported_by_name(tmp_path: Path, name: str) -> None:
    checkpoint.save(tmp_path, _epoch(), CONFIG)
    (tmp_path / name).write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match=name) as caught:
        checkpoint.load(tmp_path, torch.device("cpu"))
    assert isinstance(caught.value, InputError)  # `hiersearch export` exits 2 on it


def test_a_training_state_without_its_keys_is_reported_by_name(tmp_path: Path) -> None:
    checkpoint.save(tmp_path, _epoch(), CONFIG)
    torch.save({"optimizer": {}}, tmp_path / "train_state.pt")
    with pytest.raises(CheckpointError, match="train_state.pt.*not a training state"):
        checkpoint.read_training(tmp_path)


@pytest.mark.parametrize(
    ("text", "named"),
    [('{"epoch": 1,\n oops}', r"final_metrics.json:2: invalid JSON"),
     ("[1]", r"final_metrics.json: expected a JSON object")],
)
def test_damaged_final_metrics_are_reported_by_name(tmp_path: Path, text: str, named: str) -> None:
    (tmp_path / "final_metrics.json").write_text(text)
    with pytest.raises(InputError, match=named):
        checkpoint.read_final_metrics(tmp_path)


def test_save_new_leaves_nothing_behind_when_a_write_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    directory = checkpoint.save_new(_epoch(), CONFIG)
    assert directory.parent == tmp_path and (directory / "train_state.pt").is_file()

    def full_disk(*_: Any, **__: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError):
        checkpoint.save_new(_epoch(), CONFIG)
    assert list(tmp_path.iterdir()) == [directory]


def test_another_trials_checkpoint_is_an_exploit_in_the_lineage() -> None:
    state = LoopState(epoch=3)
    assert state.exploited("me", "me") is None and state.exploited(None, "me") is None
    assert state.exploited("donor", None) is None and state.exploits == []
    assert state.exploited("donor", "me") == {"donor": "donor", "epoch": 3}
    state.epoch = 5
    state.exploited("other", "me")
    assert state.lineage() == "donor@3 > other@5"


def test_a_donors_copy_is_named_by_its_number_in_the_recipients_directory() -> None:
    path = checkpoint.donor_copy_path("runs/x/trial_a", 3)
    assert path == "runs/x/trial_a/pbt_donor_0003"
    assert path.rsplit("/", 1)[1].startswith(checkpoint.DONOR_PREFIX)
