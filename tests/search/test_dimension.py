"""A `search:` entry as one type (`hiersearch.search.dimension.Dimension`): parsed and checked
once, errors naming the key; its Optuna distribution, suggest call, default, grid values, PBT
values and clip range, and its YAML form."""

from __future__ import annotations

import pickle
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from hiersearch.errors import InputError
from hiersearch.search.dimension import Dimension

WHERE = "s.yaml: search: k"
LOG = {"type": "loguniform", "low": 1e-5, "high": 1e-3}
UNIFORM = {"type": "uniform", "low": 0.0, "high": 0.3, "step": 0.1}
INT = {"type": "int", "low": 8, "high": 32, "step": 8}
CHOICES = {"type": "categorical", "choices": [None, 64, 256]}
EVERY_KIND = [LOG, UNIFORM, INT, CHOICES, {"type": "int", "low": 1, "high": 4},
              {"type": "uniform", "low": 0, "high": 1}]


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("fast", "needs type: one of loguniform, uniform, int, categorical"),
        ({"type": "normal", "low": 0, "high": 1}, "needs type: one of loguniform"),
        ({"type": "categorical", "choices": [1], "low": 0}, "unknown key 'low'"),
        ({"type": "uniform", "low": 0, "high": 1, "choices": [1]}, "unknown key 'choices'"),
        ({"type": "categorical", "choices": []}, "categorical needs a non-empty list of choices"),
        ({"type": "categorical", "choices": "ab"}, "categorical needs a non-empty list"),
        ({"type": "uniform", "low": "x", "high": 1}, "needs numeric low and high"),
        ({"type": "uniform", "high": 1}, "needs numeric low and high"),
        ({"type": "uniform", "low": 1, "high": 1}, "bad range [1.0, 1.0]"),
        ({"type": "loguniform", "low": 0, "high": 1}, "bad range [0.0, 1.0]"),
        ({"type": "int", "low": 2.5, "high": 4}, "low: expected an integer, got 2.5"),
        ({"type": "int", "low": 1, "high": 4, "step": 1.5}, "step: expected an integer, got 1.5"),
        ({"type": "int", "low": 1, "high": 4, "step": True}, "step: expected an integer"),
        ({"type": "uniform", "low": 0, "high": 1, "step": "0.1"},
         "step: expected a number, got '0.1'"),
        ({"type": "uniform", "low": 0, "high": 1, "step": 0},
         "Optuna refuses this distribution: `step > 0` must hold"),
        ({"type": "loguniform", "low": 1e-5, "high": 1e-3, "step": 1e-5},
         "Optuna refuses this distribution: The parameter `step` is not supported"),
        ({"type": "int", "low": 1, "high": 2, "step": 5},
         "Optuna refuses this distribution: The distribution is specified by [1, 2] and step=5"),
    ],
)
def test_a_bad_entry_is_one_input_error_naming_its_key(value: Any, said: str) -> None:
    with pytest.raises(InputError) as refused:
        Dimension.parse(value, WHERE)
    assert str(refused.value).startswith(f"{WHERE}: {said}")
    assert str(refused.value).count(WHERE) == 1  # named once, not again inside the message


def test_each_kind_builds_the_optuna_distribution_it_suggests() -> None:
    assert Dimension.parse(LOG, WHERE).optuna_distribution() == FloatDistribution(
        1e-5, 1e-3, log=True)
    assert Dimension.parse(UNIFORM, WHERE).optuna_distribution() == FloatDistribution(
        0.0, 0.3, step=0.1)
    assert Dimension.parse(INT, WHERE).optuna_distribution() == IntDistribution(8, 32, step=8)
    assert Dimension.parse(CHOICES, WHERE).optuna_distribution() == CategoricalDistribution(
        [None, 64, 256])
    plain = {"type": "int", "low": 1, "high": 4}
    assert Dimension.parse(plain, WHERE).optuna_distribution() == IntDistribution(1, 4)


@pytest.mark.parametrize("value", EVERY_KIND)
def test_suggest_asks_optuna_for_that_distribution(value: dict[str, Any]) -> None:
    dimension = Dimension.parse(value, WHERE)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    drawn = dimension.suggest(trial, "k")
    assert trial.distributions["k"] == dimension.optuna_distribution()
    assert trial.params["k"] == drawn


def test_yaml_1_1_strings_read_as_floats_for_a_range() -> None:
    dimension = Dimension.parse({"type": "loguniform", "low": "1e-5", "high": "1e-3"}, WHERE)
    assert (dimension.low, dimension.high) == (1e-5, 1e-3)


def test_the_default_is_the_first_choice_the_low_int_or_the_midpoint() -> None:
    assert Dimension.parse(CHOICES, WHERE).default is None
    assert Dimension.parse(INT, WHERE).default == 8
    assert Dimension.parse({"type": "uniform", "low": 0, "high": 0.3}, WHERE).default == 0.15
    assert Dimension.parse({"type": "loguniform", "low": 1e-4, "high": 1e-2},
                           WHERE).default == pytest.approx(1e-3)


def test_grid_values_are_the_choices_and_only_categoricals_have_them() -> None:
    assert Dimension.parse(CHOICES, WHERE).grid_values() == [None, 64, 256]
    with pytest.raises(ValueError, match="categorical"):
        Dimension.parse(INT, WHERE).grid_values()


def test_edges_are_every_choice_or_both_ends() -> None:
    assert Dimension.parse(CHOICES, WHERE).edges() == [None, 64, 256]
    assert Dimension.parse(INT, WHERE).edges() == [8, 32]
    assert Dimension.parse(LOG, WHERE).edges() == [1e-5, 1e-3]


def test_pbt_shifts_choices_and_ints_and_clips_ranges() -> None:
    assert Dimension.parse(CHOICES, WHERE).pbt_values() == [None, 64, 256]
    assert Dimension.parse(INT, WHERE).pbt_values() == [8, 16, 24, 32]
    assert Dimension.parse({"type": "int", "low": 1, "high": 3}, WHERE).pbt_values() == [1, 2, 3]
    for listed in (CHOICES, INT):
        assert Dimension.parse(listed, WHERE).clip_range is None
    log = Dimension.parse(LOG, WHERE)
    assert (log.pbt_values(), log.clip_range, log.log) == (None, (1e-5, 1e-3), True)
    uniform = Dimension.parse(UNIFORM, WHERE)
    assert (uniform.pbt_values(), uniform.clip_range, uniform.log) == (None, (0.0, 0.3), False)


@pytest.mark.parametrize("value", EVERY_KIND)
def test_raw_is_the_entry_as_given_and_parses_back_to_the_same_dimension(
    value: dict[str, Any],
) -> None:
    dimension = Dimension.parse(value, WHERE)
    assert dimension.raw == value and dimension.raw is not value
    assert Dimension.parse(dimension.raw, WHERE) == dimension
    assert pickle.loads(pickle.dumps(dimension)) == dimension  # Ray pickles the define-by-run


def test_raw_is_a_copy_the_caller_cannot_change_afterwards() -> None:
    value = {"type": "categorical", "choices": [1, 2]}
    dimension = Dimension.parse(value, WHERE)
    value["choices"].append(3)
    assert dimension.raw == {"type": "categorical", "choices": [1, 2]}
    assert dimension.choices == (1, 2)
