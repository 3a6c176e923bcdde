from __future__ import annotations

import math
import time

import optuna
import pytest

from hiersearch.errors import InputError
from hiersearch.model.assignment import (
    LayerAssignment,
    named_variant,
    named_variants,
)
from hiersearch.search.assignment_space import (
    SpaceOptions,
    assignment_params,
    enumerate_space,
    in_space,
    monotone_size_formula,
    space_size,
    space_summary,
    suggest_assignment,
)

EUROVOC_COUNTS = (21, 127, 567, 3861, 2284, 481)

OPTION_SETS = [
    SpaceOptions(),
    SpaceOptions(overlap=True),
    SpaceOptions(max_width=2),
    SpaceOptions(skip_lowest=2),
    SpaceOptions(include_flat=False),
    SpaceOptions(overlap=True, max_width=2, skip_lowest=1),
    SpaceOptions(overlap=True, max_width=1, include_flat=False),
    SpaceOptions(shared=True),
    SpaceOptions(shared=True, max_width=2, skip_lowest=1),
    SpaceOptions(shared=True, max_width=1, include_flat=False),
]
# FLAT's top layer for L1-L3 and layers 5-6 for L4 on a 6-layer encoder (issue 37): levels
# share layer 6, and the deepest level starts below the others
SHARED_POINT = LayerAssignment.from_string("L1:6|L2:6|L3:6|L4:5+6")


@pytest.fixture(autouse=True)
def _quiet_optuna() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)


# ----------------------------------------------------------------------------- space size


def test_paper_space_size() -> None:
    assert space_size(12, 6) == math.comb(18, 12) + 1 == 18565


@pytest.mark.parametrize("skip", [0, 1, 3])
def test_monotone_size_matches_formula(skip: int) -> None:
    for layers in range(1, 13):
        for levels in range(1, 7):
            options = SpaceOptions(skip_lowest=skip)
            expected = monotone_size_formula(layers, levels, skip) + 1
            assert space_size(layers, levels, options) == expected


@pytest.mark.parametrize("options", OPTION_SETS, ids=str)
def test_space_size_matches_enumeration(options: SpaceOptions) -> None:
    for layers, levels in [(1, 1), (4, 2), (5, 3), (6, 3), (3, 3), (2, 3), (7, 2)]:
        points = list(enumerate_space(layers, levels, options))
        assert len(set(points)) == len(points)
        assert space_size(layers, levels, options) == len(points)


def test_space_size_is_exact_and_fast_for_large_models() -> None:
    start = time.perf_counter()
    size = space_size(48, 10, SpaceOptions(overlap=True))
    assert time.perf_counter() - start < 1.0
    assert size > 2**63  # beyond int64: Python integers throughout
    assert space_size(48, 10) == math.comb(58, 20) + 1


# ----------------------------------------------------------------------------- optuna


@pytest.mark.parametrize("options", OPTION_SETS, ids=str)
def test_every_point_round_trips_through_fixed_trial(options: SpaceOptions) -> None:
    for layers, levels in [(5, 2), (6, 3)]:
        for point in enumerate_space(layers, levels, options):
            params = assignment_params(point, layers, levels, options)
            trial = optuna.trial.FixedTrial(params)
            assert suggest_assignment(trial, layers, levels, options) == point


def test_named_variants_round_trip_through_fixed_trial() -> None:
    for variant in named_variants(12, 6, EUROVOC_COUNTS).values():
        params = assignment_params(variant, 12, 6)
        assert suggest_assignment(optuna.trial.FixedTrial(params), 12, 6) == variant


def test_parameter_names_are_stable() -> None:
    params = assignment_params(named_variant("LAST-SIX", 12, 6), 12, 6)
    assert list(params)[:3] == ["assign/kind", "assign/L1_start", "assign/L1_end"]
    assert params["assign/kind"] == "blocks" and params["assign/L6_end"] == 12
    assert assignment_params(LayerAssignment.make_flat(), 12, 6) == {"assign/kind": "flat"}


def test_enqueued_variants_come_back_from_a_study() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    variants = list(named_variants(12, 6, EUROVOC_COUNTS).values())
    for variant in variants:
        study.enqueue_trial(assignment_params(variant, 12, 6))
    for variant in variants:
        trial = study.ask()
        assert suggest_assignment(trial, 12, 6) == variant
        study.tell(trial, 0.0)


@pytest.mark.parametrize("options", [*OPTION_SETS[:3], SpaceOptions(shared=True)], ids=str)
def test_random_draws_are_valid_points(options: SpaceOptions) -> None:
    space = set(enumerate_space(6, 3, options))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(500):
        trial = study.ask()
        point = suggest_assignment(trial, 6, 3, options)
        point.validate(6, 3)
        assert point in space
        seen.add(point)
        study.tell(trial, 0.0)
    assert len(seen) > min(len(space) // 2, 100)


def test_tpe_draws_with_changing_ranges_stay_valid() -> None:
    sampler = optuna.samplers.TPESampler(seed=0, n_startup_trials=5)
    study = optuna.create_study(sampler=sampler, direction="maximize")
    for _ in range(40):
        trial = study.ask()
        point = suggest_assignment(trial, 12, 6)
        assert in_space(point, 12, 6)
        study.tell(trial, float(len(point.layers_used(12))))


def test_params_reject_points_outside_the_space() -> None:
    in_pairs = named_variant("IN-PAIRS", 12, 6)
    with pytest.raises(InputError, match="IN-PAIRS is not in the search space"):
        assignment_params(in_pairs, 12, 6, SpaceOptions(max_width=1))
    with pytest.raises(InputError, match="FLAT is excluded"):
        assignment_params(LayerAssignment.make_flat(), 12, 6, SpaceOptions(include_flat=False))


def test_flat_only_space_draws_flat_without_a_kind_parameter() -> None:
    assert space_size(2, 3) == 1
    trial = optuna.trial.FixedTrial({})
    assert suggest_assignment(trial, 2, 3).flat
    assert assignment_params(LayerAssignment.make_flat(), 2, 3) == {}


def test_empty_space_is_an_input_error() -> None:
    with pytest.raises(InputError, match="the space is empty"):
        suggest_assignment(optuna.trial.FixedTrial({}), 2, 3, SpaceOptions(include_flat=False))


# ----------------------------------------------------------------------------- options, summary


def test_space_summary_for_the_paper() -> None:
    summary = space_summary(12, 6, SpaceOptions())
    assert summary["size"] == 18565 and summary["size_without_flat"] == 18564
    assert all(summary["named_variants_in_space"].values())
    assert summary["options"] == {
        "overlap": False,
        "shared": False,
        "max_width": None,
        "skip_lowest": 0,
        "include_flat": True,
    }


def test_space_summary_reports_variants_outside_the_space() -> None:
    inside = space_summary(12, 6, SpaceOptions(skip_lowest=3))["named_variants_in_space"]
    assert inside == {
        "FLAT": True,
        "LAST-SIX": True,
        "ONE-BY-ONE": False,
        "IN-PAIRS": False,
        "HYBRID": True,
    }


def test_space_options_reject_bad_values() -> None:
    with pytest.raises(InputError, match="max_width"):
        SpaceOptions(max_width=0)
    with pytest.raises(InputError, match="skip_lowest"):
        SpaceOptions(skip_lowest=-1)
    with pytest.raises(InputError, match="overlap"):
        SpaceOptions(overlap="yes")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- the shared space


def test_the_shared_space_lets_levels_share_layers_where_the_others_do_not() -> None:
    assert in_space(SHARED_POINT, 6, 4, SpaceOptions(shared=True))
    assert not in_space(SHARED_POINT, 6, 4, SpaceOptions(overlap=True))  # a_4 = 5 < a_3 = 6
    assert not in_space(SHARED_POINT, 6, 4)
    # a deeper level never tops out below a shallower one
    assert not in_space(LayerAssignment.from_string("L1:6|L2:5"), 6, 2, SpaceOptions(shared=True))


@pytest.mark.parametrize("options", [SpaceOptions(), SpaceOptions(overlap=True)], ids=str)
def test_the_shared_space_holds_every_point_of_the_others(options: SpaceOptions) -> None:
    shared = set(enumerate_space(6, 3, SpaceOptions(shared=True)))
    assert set(enumerate_space(6, 3, options)) < shared


def test_shared_space_sizes_at_the_main_jobs_and_the_papers_layouts() -> None:
    shared = SpaceOptions(shared=True)
    assert space_size(6, 4) == 46 and space_size(6, 4, SpaceOptions(overlap=True)) == 5293
    assert space_size(6, 4, shared) == 22828
    assert space_size(12, 6, shared) == 1_256_328_867
    assert space_size(12, 6, SpaceOptions(shared=True, max_width=3)) == 5_619_971
    summary = space_summary(12, 6, shared, EUROVOC_COUNTS)
    assert all(summary["named_variants_in_space"].values())


def test_the_shared_space_draws_each_levels_top_layer_before_its_first() -> None:
    options = SpaceOptions(shared=True)
    params = assignment_params(SHARED_POINT, 6, 4, options)
    assert params["assign/L4_start"] == 5 and params["assign/L4_end"] == 6
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    suggest_assignment(trial, 12, 6, options)
    names = list(trial.params)
    assert names.index("assign/L1_end") < names.index("assign/L1_start")


def test_tpe_draws_in_the_shared_space_stay_valid() -> None:
    options = SpaceOptions(shared=True, max_width=3)
    sampler = optuna.samplers.TPESampler(seed=0, n_startup_trials=5, multivariate=True,
                                         group=True)
    study = optuna.create_study(sampler=sampler, direction="maximize")
    for _ in range(40):
        trial = study.ask()
        point = suggest_assignment(trial, 12, 6, options)
        assert in_space(point, 12, 6, options)
        study.tell(trial, float(len(point.layers_used(12))))


def test_overlap_and_shared_are_not_set_together() -> None:
    with pytest.raises(InputError, match="^overlap: a shared space already"):
        SpaceOptions(overlap=True, shared=True)
    with pytest.raises(InputError, match="^shared: must be true or false"):
        SpaceOptions(shared="yes")  # type: ignore[arg-type]
