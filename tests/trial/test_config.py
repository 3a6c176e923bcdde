from __future__ import annotations

import json

import pytest

from hiersearch.errors import InputError
from hiersearch.trial.config import TrialConfig


def test_defaults_round_trip_through_json() -> None:
    config = TrialConfig(levels=(1, 3), lr=3e-5)
    again = TrialConfig.from_dict(json.loads(config.dumps()))
    assert again == config


def test_unknown_key_is_named() -> None:
    with pytest.raises(InputError, match="'learning_rate'"):
        TrialConfig.from_dict({"learning_rate": 1e-3}, where="space.yaml: trial")


def test_wrong_type_is_named_with_its_key() -> None:
    with pytest.raises(InputError, match="batch_size"):
        TrialConfig.from_dict({"batch_size": "large"})


def test_yaml_style_values_are_coerced_losslessly() -> None:
    config = TrialConfig.from_dict({"lr": "5e-5", "epochs": 3.0, "levels": [2, 4]})
    assert config.lr == 5e-5 and config.epochs == 3 and config.levels == (2, 4)


def test_out_of_range_value_is_refused() -> None:
    with pytest.raises(InputError, match="dropout"):
        TrialConfig(dropout=1.5)
    with pytest.raises(InputError, match="loss_weighting"):
        TrialConfig(loss_weighting="by-level")


@pytest.mark.parametrize("gpus", [0.25, 0.5, 1, 2, 4.0])
def test_gpus_per_worker_may_be_a_fraction_or_whole_gpus(gpus: float) -> None:
    config = TrialConfig.from_dict({"use_gpu": True, "gpus_per_worker": gpus})
    assert config.worker_gpus() == gpus


@pytest.mark.parametrize("gpus", [0, -0.5, 1.5, 2.25])
def test_gpus_per_worker_outside_a_fraction_or_whole_gpus_is_refused(gpus: float) -> None:
    with pytest.raises(InputError, match=r"gpus_per_worker: must be in \(0, 1\] or a whole"):
        TrialConfig(gpus_per_worker=gpus)


def test_a_cpu_worker_holds_no_gpu_and_a_gpu_worker_one_by_default() -> None:
    assert TrialConfig(gpus_per_worker=0.5).worker_gpus() == 0
    assert TrialConfig(use_gpu=True).worker_gpus() == 1


def test_config_is_frozen() -> None:
    with pytest.raises(AttributeError):
        TrialConfig().lr = 1.0  # type: ignore[misc]


def test_out_of_range_value_from_a_file_names_the_file_section_and_key() -> None:
    with pytest.raises(InputError, match=r"^quick\.yaml: trial: lr: must be > 0 \(got -1\.0\)$"):
        TrialConfig.from_dict({"lr": -1}, where="quick.yaml: trial")


def test_a_list_where_a_mapping_belongs_is_an_input_error() -> None:
    with pytest.raises(InputError, match="space.yaml: trial: must be a mapping"):
        TrialConfig.from_dict(["lr", 1e-3], where="space.yaml: trial")  # type: ignore[arg-type]
