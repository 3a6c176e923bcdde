"""MO-ASHA's rung decisions (search/rungs.py) and its Ray Tune scheduler (search/moasha.py),
with stand-in trials and results: no Ray cluster."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
from ray.tune.schedulers import TrialScheduler

from hiersearch import metrics as M
from hiersearch.search.moasha import MOASHAScheduler
from hiersearch.search.rungs import Rungs, ahead_of, rung_levels

RP, LAYERS = M.rp_macro_key("dev"), M.COST_ENCODER_LAYERS
CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP


@dataclass
class _Trial:
    trial_id: str


def _scheduler(**settings: float) -> MOASHAScheduler:
    # the Tune builder's settings for 3 epochs: max_t = epochs + 2
    return MOASHAScheduler([RP, LAYERS], ["max", "min"], max_t=5, **settings)


def _result(epoch: int, rp: float, layers: float, final: int = 0) -> dict:
    return {"training_iteration": epoch, RP: rp, LAYERS: layers, M.TRIAL_FINAL: final}


def test_rungs_sit_at_grace_period_times_powers_of_the_reduction_factor_below_max_t() -> None:
    assert rung_levels(1, 2, 5) == [1, 2, 4]
    assert rung_levels(1, 3, 8) == [1, 3]  # the layerwise preset's: epochs 1 and 3
    assert rung_levels(2, 2, 2) == []


def test_a_dominated_trial_is_stopped_at_the_first_rung() -> None:
    scheduler = _scheduler(reduction_factor=2)
    assert scheduler.on_trial_result(None, _Trial("a"), _result(1, 0.60, 3)) == CONTINUE
    # worse on both metrics than the only trial at the rung
    assert scheduler.on_trial_result(None, _Trial("b"), _result(1, 0.50, 6)) == STOP
    assert "1 stopped" in scheduler.debug_string()


def test_a_trial_on_the_front_continues_though_others_score_higher() -> None:
    scheduler = _scheduler(reduction_factor=2)
    scheduler.on_trial_result(None, _Trial("a"), _result(1, 0.70, 6))
    scheduler.on_trial_result(None, _Trial("b"), _result(1, 0.65, 6))  # dominated by a: stopped
    # the lowest R-Precision yet, but the fewest layers: on the front
    assert scheduler.on_trial_result(None, _Trial("c"), _result(1, 0.40, 2)) == CONTINUE


def test_crowding_distance_decides_between_trials_of_one_front() -> None:
    rungs = Rungs([1], reduction_factor=2, modes=["max", "min"])
    for name, rp, layers in (("a", 0.70, 6), ("b", 0.60, 4), ("c", 0.59, 3), ("d", 0.30, 1)):
        assert rungs.decide(name, 1, [rp, layers])  # one front, each at one of its ends
    # e joins the front close to b and c: all 4 others are less crowded, 4 >= 5 / 2
    assert not rungs.decide("e", 1, [0.595, 3.5])
    # f joins it alone between d and c: only the ends (a, d) come before it, 2 < 6 / 2
    assert rungs.decide("f", 1, [0.45, 2.0])


def test_the_first_trial_at_a_rung_continues_and_ties_go_to_the_newcomer() -> None:
    scheduler = _scheduler(reduction_factor=3)
    assert scheduler.on_trial_result(None, _Trial("a"), _result(1, 0.10, 6)) == CONTINUE
    assert scheduler.on_trial_result(None, _Trial("b"), _result(1, 0.10, 6)) == CONTINUE


def test_a_trial_is_decided_once_per_rung() -> None:
    scheduler = _scheduler(reduction_factor=2)
    scheduler.on_trial_result(None, _Trial("a"), _result(1, 0.60, 3))
    assert scheduler.on_trial_result(None, _Trial("a"), _result(1, 0.10, 9)) == CONTINUE
    # epoch 2 is the next rung: there it is the first, whatever it scores
    assert scheduler.on_trial_result(None, _Trial("a"), _result(2, 0.10, 9)) == CONTINUE
    assert scheduler.on_trial_result(None, _Trial("b"), _result(2, 0.05, 9)) == STOP


def test_a_final_report_is_recorded_but_never_stopped() -> None:
    scheduler = _scheduler(reduction_factor=2)
    scheduler.on_trial_result(None, _Trial("a"), _result(4, 0.70, 3, final=1))
    assert scheduler.on_trial_result(None, _Trial("b"), _result(4, 0.10, 6, final=1)) == CONTINUE
    assert "rung 4: 2 trials, 1 on the front" in scheduler.debug_string()


def test_a_trial_at_max_t_is_stopped() -> None:
    assert _scheduler().on_trial_result(None, _Trial("a"), _result(5, 0.9, 1)) == STOP


def test_a_missing_metric_ranks_a_trial_after_every_complete_one() -> None:
    scheduler = _scheduler(reduction_factor=2)
    scheduler.on_trial_result(None, _Trial("a"), _result(1, 0.10, 12))
    lacking = {"training_iteration": 1, RP: 0.99, M.TRIAL_FINAL: 0}
    assert scheduler.on_trial_result(None, _Trial("b"), lacking) == STOP
    without_metrics = {"training_iteration": 1}
    assert scheduler.on_trial_result(None, _Trial("c"), without_metrics) == CONTINUE


def test_a_completed_trial_counts_at_its_rung_for_later_trials() -> None:
    scheduler = _scheduler(reduction_factor=2)
    scheduler.on_trial_complete(None, _Trial("a"), _result(2, 0.70, 3))
    assert scheduler.on_trial_result(None, _Trial("b"), _result(2, 0.60, 4)) == STOP


def test_tune_may_name_the_first_metric_and_mode_but_no_other() -> None:
    scheduler = _scheduler()
    assert scheduler.set_search_properties(RP, "max")
    assert scheduler.set_search_properties(None, None)
    assert not scheduler.set_search_properties(LAYERS, "min")
    assert scheduler.metric == RP


def test_its_state_survives_save_and_restore(tmp_path) -> None:
    scheduler = _scheduler(reduction_factor=2)
    scheduler.on_trial_result(None, _Trial("a"), _result(1, 0.60, 3))
    scheduler.save(str(tmp_path / "scheduler.pkl"))
    restored = _scheduler(reduction_factor=2)
    restored.restore(str(tmp_path / "scheduler.pkl"))
    assert restored.on_trial_result(None, _Trial("b"), _result(1, 0.50, 6)) == STOP


@pytest.mark.parametrize(
    ("metrics", "modes"), [([RP], ["max", "min"]), ([RP, LAYERS], ["max", "up"]), ([], [])]
)
def test_bad_metrics_or_modes_are_refused(metrics: list[str], modes: list[str]) -> None:
    with pytest.raises(ValueError):
        MOASHAScheduler(metrics, modes)


def test_nan_is_worse_than_any_number() -> None:
    points = np.array([[math.nan, 1.0], [-0.1, 9.0]])
    assert ahead_of(points, 0) == 1 and ahead_of(points, 1) == 0
