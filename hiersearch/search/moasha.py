"""MO-ASHA as a Ray Tune scheduler: asynchronous successive halving that stops trials on several
metrics at once (`scheduler: asha` with a list `metric`). Ray's ASHA ranks a rung on one metric;
this one ranks it by non-dominated sorting, then crowding distance (the decision and its ties:
`search/rungs.py`).

Imported by the Tune builder (search/tuner.py) when it builds a scheduler (it imports Ray).

A stopped trial reaches the searcher as with Ray's ASHA: Tune hands OptunaSearch the trial's
last result (the rung's report) in `on_trial_complete`, which tells the study that result's
values, so a trial stopped at epoch 1 counts with its epoch-1 metrics.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Sequence
from typing import Any

from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from hiersearch import metrics as M
from hiersearch.search.rungs import Rungs, rung_levels

__all__ = ["MOASHAScheduler"]


class MOASHAScheduler(FIFOScheduler):
    """Stops a trial at a rung unless it is among the rung's top 1/reduction_factor by
    (non-dominated rank, larger crowding distance) over `metrics`.

    `max_t`, `grace_period`, `reduction_factor` and `time_attr` mean what they mean for Ray's
    `ASHAScheduler`: rungs at grace_period * reduction_factor**k below max_t, a trial stopped
    once `time_attr` reaches max_t. A result that carries `final_attr` (a trial's last report:
    hiersearch's test metrics after training) decides nothing: the trial has no training left
    to save, and a Ray Train trial stopped then would lose its teardown (its last checkpoint's
    upload); it is recorded at its rung all the same."""

    def __init__(
        self,
        metrics: Sequence[str],
        modes: Sequence[str],
        time_attr: str = "training_iteration",
        max_t: float = 100,
        grace_period: float = 1,
        reduction_factor: float = 2,
        final_attr: str | None = M.TRIAL_FINAL,
    ) -> None:
        if len(metrics) != len(modes) or not metrics:
            raise ValueError(f"one mode per metric: got {list(metrics)} and {list(modes)}")
        if any(mode not in ("max", "min") for mode in modes):
            raise ValueError(f"modes must be max or min, got {list(modes)}")
        if not 0 < grace_period <= max_t or reduction_factor <= 1:
            raise ValueError("needs 0 < grace_period <= max_t and reduction_factor > 1")
        super().__init__()
        self._metrics = tuple(metrics)
        self._modes = tuple(modes)
        self._metric = self._metrics[0]  # what Tune shows as the scheduler's metric
        self._time_attr = time_attr
        self._max_t = max_t
        self._final_attr = final_attr
        self._rungs = Rungs(
            rung_levels(grace_period, reduction_factor, max_t), reduction_factor, self._modes
        )

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        """Tune passes TuneConfig's metric and mode: accepted when they are the first of ours
        (search/tuner.py's TuneConfig names the first metric, which orders the progress table)."""
        return metric in (None, self._metrics[0]) and mode in (None, self._modes[0])

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        time, values = self._time_and_values(result)
        if time is None:
            return TrialScheduler.CONTINUE
        if time >= self._max_t:
            return TrialScheduler.STOP
        if values is None:
            return TrialScheduler.CONTINUE
        if self._is_final(result):
            self._rungs.record(trial.trial_id, time, values)
            return TrialScheduler.CONTINUE
        keep = self._rungs.decide(trial.trial_id, time, values)
        return TrialScheduler.CONTINUE if keep else TrialScheduler.STOP

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> None:
        """A finished trial's last result counts at its rung for the trials still to come
        (a stopped trial's was recorded when it was decided)."""
        time, values = self._time_and_values(result)
        if time is not None and values is not None:
            self._rungs.record(trial.trial_id, time, values)

    def _time_and_values(
        self, result: dict[str, Any]
    ) -> tuple[float | None, list[float] | None]:
        """(time, metric values) of a result: a metric it lacks is NaN; values None when it
        has none of them (Ray's ASHA skips such a result too)."""
        time = result.get(self._time_attr)
        if not any(metric in result for metric in self._metrics):
            return time, None
        return time, [_number(result.get(metric)) for metric in self._metrics]

    def _is_final(self, result: dict[str, Any]) -> bool:
        return bool(self._final_attr and result.get(self._final_attr))

    def debug_string(self) -> str:
        return self._rungs.summary()

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as out:
            pickle.dump(self.__dict__, out)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as saved:
            self.__dict__.update(pickle.load(saved))


def _number(value: Any) -> float:
    """A metric value as a float; NaN for a missing or non-numeric one."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan
