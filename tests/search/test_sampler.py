"""The search's Optuna sampler (tuner.sampler): what it models and what it never chooses."""

from __future__ import annotations

import dataclasses

import optuna
import pytest

from hiersearch.search.space import load_space
from hiersearch.search.tuner import sampler


def _objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", 0.0, 1.0)
    seed = trial.suggest_categorical("seed", [100, 101, 102])
    return x + seed  # a sampler free to choose the seed would pick 102


@pytest.mark.parametrize("algorithm", ["tpe", "random", "nsga2"])
def test_sampled_trials_never_choose_the_seed_and_enqueued_ones_keep_theirs(
    algorithm: str,
) -> None:
    tune = dataclasses.replace(load_space("layerwise").tune, algorithm=algorithm, seeds=3,
                               first_seed=100, population_size=4, scheduler="none")
    study = optuna.create_study(direction="maximize", sampler=sampler(tune))
    study.enqueue_trial({"x": 0.5, "seed": 102})
    study.enqueue_trial({"x": 0.5, "seed": 101})
    study.optimize(_objective, n_trials=16)
    seeds = [t.params["seed"] for t in study.trials]
    assert seeds[:2] == [102, 101]
    assert set(seeds[2:]) == {100}


def test_tpe_models_the_parameters_jointly_and_by_group() -> None:
    chosen = sampler(load_space("layerwise").tune)
    assert isinstance(chosen, optuna.samplers.PartialFixedSampler)
    base = chosen._base_sampler  # Optuna exposes no getter; what the builder built
    assert isinstance(base, optuna.samplers.TPESampler)
    assert base._multivariate and base._group and base._constant_liar
