"""Trial: `TrialConfig`, the training recipe of one trial, and the sessions it runs in
(in-process, a one-worker Tune trial, Ray Train DDP workers)."""

from __future__ import annotations

from hiersearch.trial.config import TrialConfig
from hiersearch.trial.recipe import fit, train_worker, tune_worker
from hiersearch.trial.session import Artifacts, LocalSession, Session

__all__ = [
    "Artifacts",
    "LocalSession",
    "Session",
    "TrialConfig",
    "fit",
    "train_worker",
    "tune_worker",
]
