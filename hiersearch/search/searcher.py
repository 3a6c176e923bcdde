"""Ray Tune's OptunaSearch over a study that outlives the driver (an RDB study: SQLite in the
experiment directory or `--study-storage`).

Imported by the Tune builder (search/tuner.py) when it builds a searcher (it imports Ray).
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

__all__ = ["TUNE_TRIAL_ATTR", "PersistentOptunaSearch"]

logger = logging.getLogger(__name__)

# The Optuna user attribute naming the Ray Tune trial that asked for an Optuna trial: the link
# between the study (optuna-dashboard) and the experiment's trial directories (trial_<id>)
TUNE_TRIAL_ATTR = "ray_tune_trial_id"


class PersistentOptunaSearch(OptunaSearch):
    """OptunaSearch whose study is kept in a database.

    A resumed experiment restores the searcher saved with Tune's last snapshot, while the
    database holds every change up to the kill. The two differ in two ways, both handled
    here:
    - the database may have recorded a trial's end after that snapshot, while the restored
      searcher still takes it for running. Tune then hands it that trial's reports again, and
      Optuna refuses to update a finished trial. Ray's OptunaSearch already logs and goes on
      when that happens at a trial's completion; here it also goes on for an epoch's report.
    - the searcher may have handed out an Optuna trial after the snapshot, for a Tune trial
      that the snapshot does not hold (`_retry_lost`)."""

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        new = trial_id not in self._ot_trials
        config = super().suggest(trial_id)
        if new and trial_id in self._ot_trials:
            self._ot_trials[trial_id].set_user_attr(TUNE_TRIAL_ATTR, trial_id)
        return config

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        try:
            super().on_trial_result(trial_id, result)
        except optuna.exceptions.UpdateFinishedTrialError:
            logger.info("trial %s: its Optuna trial was finished before the resume", trial_id)

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        self._retry_lost()

    def _retry_lost(self) -> None:
        """Fail, and queue again, the running Optuna trials that the restored searcher never
        handed out: the killed driver asked for them after Tune's last snapshot, so no Tune
        trial of the resumed experiment will ever report to them. Left running, the point
        they took would never run (a fixed point: the next trial is sampled instead) and the
        study would show them running for ever. The retry is Optuna's own (its heartbeat
        retry callback): same parameters, the failed trial's number in `failed_trial`."""
        if self._ot_study is None:
            return
        handed_out = {trial._trial_id for trial in self._ot_trials.values()}
        running = self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        lost = [trial for trial in running if trial._trial_id not in handed_out]
        if not lost:
            return
        retry = _retry_callback()
        for trial in lost:
            failed = self._ot_study.tell(trial.number, state=TrialState.FAIL)
            retry(self._ot_study, failed)
            logger.info(
                "Optuna trial %d (Tune trial %s) was asked for after the experiment's last "
                "snapshot: queued again as a new trial",
                trial.number,
                trial.user_attrs.get(TUNE_TRIAL_ATTR, "?"),
            )


def _retry_callback() -> Any:
    """Optuna's retry callback (renamed in 4.9; the old name goes in 6.0), its
    "experimental" warning silenced: it is unchanged since 2.8."""
    storages = optuna.storages
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", FutureWarning)
        retry = getattr(storages, "RetryHeartbeatStaleTrialCallback", None)
        return (retry or storages.RetryFailedTrialCallback)()
