"""A trial's checkpoint: every file in it and their format, written and read here only.

An epoch's checkpoint is what a trial goes on from (a restarted worker group, a resumed
experiment, a PBT exploit):

    model.pt         the classifier's state dict (`torch.save`)
    best_model.pt    the best epoch's weights, only when they are not `model.pt`'s (dev loss
                     got worse since)
    train_state.pt   {"optimizer", "scheduler", "scaler" (None without fp16 loss scaling),
                     "state" (`LoopState`'s fields), "rng" (`rng_state`), "trial_id" (the
                     trial that wrote it: another trial's checkpoint restored is a PBT exploit)}
    config.json      the resolved `TrialConfig`

`train_state.pt` of a trial with SMART's Bregman term also holds "smart_anchor": the moving
average of its trained weights (trial/smart.py).

A trial's final checkpoint (what `hiersearch export` reads) holds the weights of its best
epoch, `config.json`, `final_metrics.json` (the final report, strict JSON: a non-finite value
is null) and `scores.npz`: those weights' dev and test scores (logits [docs, labels], float32,
in the encoded corpus's document order: exactly what the trial's R-Precision was computed
from), which an ensemble of trials is fitted on (report/ensemble.py). The trial's artifacts
hold `config.json` and `final_metrics.json` as well: a diverged trial reports without a
checkpoint, and Ray Train V2 keeps only the metrics reported with one, so its Tune trial reads
why it stopped there (`final_metrics_path`).

PBT lineage: `LoopState.exploits` are the exploits the weights went through, oldest first; a
checkpoint that another trial wrote appends one when it is restored (`LoopState.exploited`).
A recipient's copy of its donor's checkpoint is a folder of the recipient's trial directory
(`donor_copy_path`). The file names here are the format: existing experiments and exported
models read them, so they do not change.
"""

from __future__ import annotations

import contextlib
import math
import os
import pickle
import random
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from hiersearch.data.hierarchy import read_json_file
from hiersearch.errors import InputError
from hiersearch.files import atomic_open, atomic_write_json, atomic_write_text, dir_mode
from hiersearch.trial.config import TrialConfig

MODEL_FILE = "model.pt"
BEST_MODEL_FILE = "best_model.pt"
TRAIN_STATE_FILE = "train_state.pt"
CONFIG_FILE = "config.json"
FINAL_METRICS_FILE = "final_metrics.json"
SCORES_FILE = "scores.npz"
# The splits a final checkpoint keeps scores of (`SCORES_FILE`).
SCORED_SPLITS = ("dev", "test")
# A PBT recipient's copy of its donor's checkpoint, in the recipient's trial directory.
DONOR_PREFIX = "pbt_donor_"

# A local directory, or a path on the storage's pyarrow filesystem
_Dir = TypeVar("_Dir", Path, str)


class CheckpointError(InputError):
    """A checkpoint file that is missing or cannot be read (the message names it)."""


@dataclass
class LoopState:
    """The loop's progress that a checkpoint carries (besides weights, optimizer, RNG); its
    fields are `train_state.pt`'s "state", by name."""

    epoch: int = 0  # epochs completed
    best_dev_loss: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    best_metrics: dict[str, Any] = field(default_factory=dict)
    global_step: int = 0
    # PBT exploits these weights went through, oldest first: {"donor": trial id, "epoch": n}
    exploits: list[dict[str, Any]] = field(default_factory=list)

    def exploited(self, writer: str | None, trial_id: str | None) -> dict[str, Any] | None:
        """The exploit that restoring a checkpoint written by trial `writer` is for trial
        `trial_id`, appended to the lineage; None for a trial's own checkpoint (or either
        unknown)."""
        if trial_id is None or writer is None or writer == trial_id:
            return None
        exploit = {"donor": writer, "epoch": self.epoch}
        self.exploits.append(exploit)
        return exploit

    def lineage(self) -> str:
        """The exploits as `donor@epoch > donor@epoch` (the report's pbt/lineage)."""
        return " > ".join(f"{e['donor']}@{e['epoch']}" for e in self.exploits)


@dataclass(frozen=True)
class TrainingState:
    """What an epoch's checkpoint holds besides its weights: `train_state.pt`, and the best
    epoch's weights when they are not the checkpoint's own (`best_model.pt`)."""

    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    scaler: dict[str, Any] | None
    state: LoopState
    rng: dict[str, Any]
    writer: str | None  # the trial that wrote it ("trial_id" on disk)
    best_model: dict[str, Any] | None = None
    # SMART's moving average of the trained weights (trial/smart.py), when the trial has one
    smart_anchor: dict[str, Any] | None = None


@dataclass(frozen=True)
class EpochCheckpoint:
    """An epoch's checkpoint: what a trial goes on from."""

    model: dict[str, Any]
    training: TrainingState


@dataclass(frozen=True)
class FinalCheckpoint:
    """A finished trial's checkpoint: its best weights, its final report and those weights'
    scores of each split in `SCORED_SPLITS` (None: not kept)."""

    model: dict[str, Any]
    metrics: dict[str, Any]
    scores: dict[str, np.ndarray] | None = None


def save(directory: Path, content: EpochCheckpoint | FinalCheckpoint, config: TrialConfig) -> None:
    """Write a checkpoint of `content` and `config` into `directory` (which exists)."""
    torch.save(content.model, weights_path(directory))
    if isinstance(content, FinalCheckpoint):
        write_config(directory, config)
        write_final_metrics(directory, content.metrics)
        if content.scores is not None:
            write_scores(directory, content.scores)
        return
    training = content.training
    if training.best_model is not None:
        torch.save(training.best_model, directory / BEST_MODEL_FILE)
    train_state = {
        "optimizer": training.optimizer,
        "scheduler": training.scheduler,
        "scaler": training.scaler,
        "state": training.state.__dict__,
        "rng": training.rng,
        "trial_id": training.writer,
    }
    if training.smart_anchor is not None:  # a trial without it keeps the format as it was
        train_state["smart_anchor"] = training.smart_anchor
    torch.save(train_state, directory / TRAIN_STATE_FILE)
    write_config(directory, config)


def save_new(content: EpochCheckpoint | FinalCheckpoint, config: TrialConfig) -> Path:
    """`save` into a new temporary directory, returned (the caller owns it from then on);
    nothing is left behind when a write fails."""
    directory = Path(tempfile.mkdtemp(prefix="hiersearch-ckpt-"))
    os.chmod(directory, dir_mode())  # a checkpoint copied as a whole keeps it
    try:
        save(directory, content, config)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return directory


def load(directory: Path, device: torch.device) -> EpochCheckpoint:
    """An epoch's checkpoint, the weights onto `device` (`read_weights`, `read_training`)."""
    return EpochCheckpoint(read_weights(directory, device), read_training(directory))


def read_training(directory: Path) -> TrainingState:
    """An epoch's checkpoint but its weights, onto the CPU: the random states must be CPU
    tensors, and `load_state_dict` moves the optimizer's state onto each parameter's device
    (no copy on the GPU that saved it). A missing or unreadable file is a `CheckpointError`
    naming it."""
    path = directory / TRAIN_STATE_FILE
    saved = _torch_load(path, map_location="cpu", weights_only=False)
    best = directory / BEST_MODEL_FILE
    try:
        return TrainingState(
            optimizer=saved["optimizer"],
            scheduler=saved["scheduler"],
            scaler=saved.get("scaler") or None,
            state=LoopState(**saved["state"]),
            rng=saved["rng"],
            writer=saved.get("trial_id"),
            smart_anchor=saved.get("smart_anchor"),
            # the best epoch is an earlier one
            best_model=_torch_load(best, map_location="cpu") if best.exists() else None,
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"not a training state ({exc!r})", where=str(path)) from None


def weights_path(directory: Path) -> Path:
    """The checkpoint's weights (a final checkpoint's are its best epoch's)."""
    return directory / MODEL_FILE


def read_weights(directory: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """The checkpoint's weights as a state dict on `device`."""
    return _torch_load(weights_path(directory), map_location=device)


def _torch_load(path: Path, **kwargs: Any) -> Any:
    try:
        return torch.load(path, **kwargs)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        message = f"cannot read the checkpoint file: {first}"
        raise CheckpointError(message, where=str(path)) from None


def config_path(directory: _Dir) -> _Dir:
    """The resolved config in a checkpoint or a trial's artifacts (a local directory, or a
    path on the storage's pyarrow filesystem)."""
    return _in(directory, CONFIG_FILE)


def write_config(directory: Path, config: TrialConfig) -> None:
    atomic_write_text(config_path(directory), config.dumps())


def read_config(directory: Path) -> TrialConfig:
    """The resolved config a checkpoint holds; a missing or bad file is a CheckpointError
    (an InputError) naming it."""
    path = config_path(directory)
    if not path.is_file():
        raise CheckpointError("no such file: not a trial's checkpoint", where=str(path))
    return TrialConfig.from_dict(read_json_file(path), where=str(path))


@contextlib.contextmanager
def local_copy(location: str) -> Iterator[Path]:
    """A checkpoint (a local path, or a URI pyarrow opens: s3://, gs://) as a local
    directory: as it is on a local disk, else a temporary copy of its config and weights,
    gone after the block."""
    if "://" not in location:
        yield Path(location).expanduser()
        return
    import pyarrow.fs

    try:
        filesystem, path = pyarrow.fs.FileSystem.from_uri(location.rstrip("/"))
    except Exception as exc:  # pyarrow raises ArrowInvalid and friends for a bad URI
        raise CheckpointError(f"cannot open: {exc}", where=location) from None
    with tempfile.TemporaryDirectory(prefix="hiersearch-heads-") as tmp:
        for name in (CONFIG_FILE, MODEL_FILE):
            try:
                pyarrow.fs.copy_files(
                    f"{path}/{name}", f"{tmp}/{name}", source_filesystem=filesystem,
                    destination_filesystem=pyarrow.fs.LocalFileSystem(),
                )
            except (OSError, FileNotFoundError):
                continue  # named by the reader of the missing file
        yield Path(tmp)


def final_metrics_path(directory: _Dir) -> _Dir:
    """The final report in a final checkpoint or a trial's artifacts (a local directory, or a
    path on the storage's pyarrow filesystem)."""
    return _in(directory, FINAL_METRICS_FILE)


def write_final_metrics(directory: Path, final: dict[str, Any]) -> None:
    atomic_write_json(final_metrics_path(directory), _jsonable(final))


def read_final_metrics(directory: Path) -> dict[str, Any] | None:
    """The final report kept in `directory`, as it was reported (null back to NaN); None when
    there is none (an epoch's checkpoint). Bad JSON is an `InputError` naming the file."""
    path = final_metrics_path(directory)
    if not path.is_file():
        return None
    saved = read_json_file(path)
    if not isinstance(saved, dict):
        raise CheckpointError("expected a JSON object", where=str(path))
    return {k: math.nan if v is None else v for k, v in saved.items()}


def write_scores(directory: Path, scores: dict[str, np.ndarray]) -> None:
    """`scores.npz`: per split, the float32 scores [docs, labels] (uncompressed: logits barely
    compress, and a member's scores are read whole at every ensemble fit)."""
    arrays = {split: np.ascontiguousarray(scores[split], np.float32) for split in SCORED_SPLITS}
    with atomic_open(directory / SCORES_FILE, "wb") as handle:
        np.savez(handle, **arrays)


def read_scores(directory: Path) -> dict[str, np.ndarray] | None:
    """The scores a final checkpoint keeps (`write_scores`); None when it keeps none (a
    trial from before they were kept). A file that cannot be read is a `CheckpointError`
    naming it."""
    path = directory / SCORES_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as saved:
            scores = {split: np.asarray(saved[split], np.float32) for split in SCORED_SPLITS}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"cannot read the scores: {first}", where=str(path)) from None
    if any(a.ndim != 2 for a in scores.values()):
        raise CheckpointError("scores are not [docs, labels] arrays", where=str(path))
    return scores


def donor_copy_path(trial_dir: str, number: int) -> str:
    """Where a PBT recipient keeps its `number`th donor's checkpoint: its trial directory's
    `pbt_donor_<number>` (a path on the storage's filesystem)."""
    return f"{trial_dir}/{DONOR_PREFIX}{number:04d}"


def _in(directory: _Dir, name: str) -> _Dir:
    if isinstance(directory, Path):
        return directory / name
    return f"{directory.rstrip('/')}/{name}"


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    """Strict JSON: a non-finite float is null, NumPy scalars are Python's."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            out[key] = None
        elif isinstance(value, (np.floating, np.integer)):
            out[key] = value.item()
        else:
            out[key] = value
    return out


def rng_state(device: torch.device) -> dict[str, Any]:
    """Every random state a trial draws from: Python's, NumPy's, torch's CPU generator and,
    on a GPU, the device's (dropout there draws from it)."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore `rng_state`; a checkpoint written on the CPU leaves the GPU's as it is."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)
