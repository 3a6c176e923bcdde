"""The builder of a search's Tune objects (`hiersearch.search.tuner`), no Ray started: what
each search plan (independent trials, a PBT population) gives the builder, the progress
table's columns, Tune's settings, and how many trials Tune keeps pending."""

from __future__ import annotations

import os
from typing import Any

import pytest

from hiersearch import metrics as M
from hiersearch.data.prepare import PreparedData
from hiersearch.report.experiment import PBT_POPULATION
from hiersearch.search import tuner
from hiersearch.search.pbt import PinnedPBT, Population
from hiersearch.search.space import MEMBER_PARAM, define_by_run, fixed_points, load_space
from hiersearch.search.tuner import (
    _SNAPSHOT_WARNING_ENV,
    IndependentTrials,
    TunerBuilder,
    kept_plan,
    quiet_forced_snapshots,
    search_plan,
)

COUNTS = [21, 94, 200]


def _prepared(label_counts: list[int]) -> PreparedData:
    return PreparedData("corpus", "encoded", label_counts, 6, True)


def _builder(preset: str) -> TunerBuilder:
    space = load_space(preset)
    plan = kept_plan(space, {PBT_POPULATION: [{"variant": "FLAT"}]})
    return TunerBuilder(space, space.base_config(), _prepared(COUNTS), plan)


def test_the_progress_table_names_each_trials_assignment() -> None:
    monotone = _builder("layerwise").reporter()
    assert monotone._metric_columns[M.TRIAL_ASSIGNMENT] == "assignment"
    assert "variant" not in monotone._parameter_columns
    assert [monotone._metric_columns[M.rp_level_key("dev", n)] for n in (1, 2, 3)] == [
        "RP L1", "RP L2", "RP L3"]
    variants = _builder("quick").reporter()
    assert variants._parameter_columns[0] == "variant"  # known before the first report
    assert M.TRIAL_ASSIGNMENT not in variants._metric_columns
    # a PBT trial's variant and seed are its population member's: its reports name them
    pbt = _builder("pbt").reporter()
    assert pbt._parameter_columns == ["pbt_member", "head_lr", "dropout", "weight_decay"]
    assert pbt._metric_columns[M.TRIAL_ASSIGNMENT] == "assignment"
    assert pbt._metric_columns[M.PBT_EXPLOITS] == "exploits"


def test_tunes_snapshot_warning_is_off_unless_the_user_set_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(_SNAPSHOT_WARNING_ENV, raising=False)
    quiet_forced_snapshots()
    assert os.environ[_SNAPSHOT_WARNING_ENV] == "0"
    monkeypatch.setenv(_SNAPSHOT_WARNING_ENV, "7")
    quiet_forced_snapshots()
    assert os.environ[_SNAPSHOT_WARNING_ENV] == "7"


def test_independent_trials_take_optunas_searcher_and_keep_their_best_checkpoints() -> None:
    space = load_space("layerwise")
    plan = search_plan(space, None, [], 8)
    assert plan == IndependentTrials(space) and not plan.exploits
    searcher = object()
    assert plan.tune_search(lambda: searcher, 8, 3) == {
        "search_alg": searcher, "num_samples": 8, "max_concurrent_trials": 3}
    assert plan.param_space() is None and plan.kept() == {}
    assert plan.trial_params({"lr": 0.1}) == {"lr": 0.1}
    assert plan.checkpoint_policy(space.base_config(keep_checkpoints=2)) == {
        "num_to_keep": 2, "checkpoint_score_attribute": "dev/loss",
        "checkpoint_score_order": "min"}
    from ray.tune.schedulers import ASHAScheduler

    assert isinstance(plan.scheduler(space.base_config()), ASHAScheduler)
    assert kept_plan(space, {}) == plan  # a resume without a population: the same plan


def test_a_population_is_one_trial_per_member_under_pbt_and_kept_for_a_resume() -> None:
    space = load_space("pbt")
    points = fixed_points(space, 6, COUNTS)
    plan = search_plan(space, define_by_run(space, 6, COUNTS), points, 7)
    assert isinstance(plan, Population) and plan.exploits and len(plan.members) == 7

    def never() -> Any:
        raise AssertionError("PBT takes no searcher")

    settings = plan.tune_search(never, 7, 3)
    assert type(settings["search_alg"]).__name__ == "BasicVariantGenerator"
    assert settings["search_alg"].max_concurrent == 3
    assert (settings["num_samples"], settings["max_concurrent_trials"]) == (1, None)
    assert plan.param_space()[MEMBER_PARAM] == {"grid_search": list(range(7))}
    assert isinstance(plan.scheduler(space.base_config()), PinnedPBT)
    params = plan.trial_params({MEMBER_PARAM: 2, "head_lr": 0.05})
    assert params == {**plan.members[2], "head_lr": 0.05}
    # hiersearch.json keeps the members; a resume asks them again
    kept = plan.kept()
    assert kept == {PBT_POPULATION: list(plan.members)}
    assert kept_plan(space, kept) == plan


def test_pbt_keeps_each_trials_newest_checkpoints_past_a_perturbation() -> None:
    space = load_space("pbt")
    plan = kept_plan(space, {PBT_POPULATION: []})
    interval = space.tune.pbt.perturbation_interval
    assert plan.checkpoint_policy(space.base_config(keep_checkpoints=1)) == {
        "num_to_keep": interval + 1}


def test_max_concurrent_asks_ray_for_the_cluster_and_says_why(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import ray

    from hiersearch.search import cluster
    from hiersearch.trial.config import TrialConfig

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 16.0, "GPU": 1.0})
    monkeypatch.setattr(cluster, "largest_cluster", lambda: None)
    base = TrialConfig(use_gpu=True, cpus_per_worker=1, gpus_per_worker=0.25)
    assert tuner.max_concurrent(base, None, 30) == 4
    assert capsys.readouterr().err.startswith("trials at once: 4 (4 fit the cluster's 16 CPUs")


def test_tune_keeps_as_many_trials_pending_as_may_run_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What lets an autoscaler see every trial's demand at once: the searcher Tune wraps in a
    ConcurrencyLimiter for `max_concurrent_trials` (ray/tune/tune.py) sets the number of
    pending trials; without the limit a searcher keeps one."""
    from ray.tune.execution.tune_controller import _get_max_pending_trials
    from ray.tune.search import ConcurrencyLimiter, Searcher, SearchGenerator

    class _Searcher(Searcher):
        def suggest(self, trial_id: str) -> dict[str, Any] | None:
            return {}

    monkeypatch.delenv("TUNE_MAX_PENDING_TRIALS_PG", raising=False)
    limited = SearchGenerator(ConcurrencyLimiter(_Searcher(), max_concurrent=24))
    assert _get_max_pending_trials(limited) == 24
    assert _get_max_pending_trials(SearchGenerator(_Searcher())) == 1
    monkeypatch.setenv("TUNE_MAX_PENDING_TRIALS_PG", "7")  # the user's value wins
    assert _get_max_pending_trials(limited) == 7
