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


@pytest.mark.parametrize("gpus", [0.25, 0.5, 1])
def test_gpus_per_worker_may_be_a_fraction_of_one_gpu(gpus: float) -> None:
    config = TrialConfig.from_dict({"use_gpu": True, "gpus_per_worker": gpus})
    assert config.worker_gpus() == gpus


@pytest.mark.parametrize("gpus", [0, -0.5, 1.5, 2, 4.0])
def test_gpus_per_worker_outside_one_gpu_is_refused_pointing_at_num_workers(gpus: float) -> None:
    # a worker trains on one GPU: extra whole GPUs would idle
    with pytest.raises(InputError, match=r"gpus_per_worker: must be in \(0, 1\].*num_workers"):
        TrialConfig(gpus_per_worker=gpus)


def test_ddp_on_a_fraction_of_a_gpu_is_refused_naming_both_options() -> None:
    # two NCCL ranks on one GPU fail at their first collective ("Duplicate GPU detected")
    with pytest.raises(InputError, match=r"gpus_per_worker: must be 1 with num_workers: 2"):
        TrialConfig.from_dict({"use_gpu": True, "num_workers": 2, "gpus_per_worker": 0.5})
    assert TrialConfig(use_gpu=True, num_workers=2).worker_gpus() == 1
    assert TrialConfig(num_workers=2, gpus_per_worker=0.5).worker_gpus() == 0  # CPU: ignored


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


def test_precision_defaults_to_bf16_and_takes_the_four_modes() -> None:
    assert TrialConfig().precision == "bf16"
    for mode in ("bf16", "fp16", "tf32", "fp32"):
        assert TrialConfig.from_dict({"precision": mode}).precision == mode
    with pytest.raises(InputError, match="precision: must be one of bf16, fp16, tf32, fp32"):
        TrialConfig(precision="half")


@pytest.mark.parametrize(("flag", "meant"), [(True, "bf16"), (False, "fp32")])
def test_the_deprecated_bf16_flag_reads_as_its_precision_with_a_note(
    flag: bool, meant: str
) -> None:
    with pytest.warns(FutureWarning, match=f"old.yaml: trial: bf16 is deprecated.*{meant}"):
        config = TrialConfig.from_dict({"bf16": flag}, where="old.yaml: trial")
    assert config.precision == meant
    assert "bf16" not in config.to_json()  # what is saved is the new key


def test_a_bf16_flag_that_contradicts_precision_is_refused() -> None:
    with pytest.raises(InputError, match="trial: bf16: bf16: false contradicts precision: bf16"):
        TrialConfig.from_dict({"bf16": False, "precision": "bf16"}, where="trial")
    with pytest.raises(InputError, match="trial: bf16: expected bool"):
        TrialConfig.from_dict({"bf16": "yes"}, where="trial")


def test_a_checkpoint_config_written_before_precision_still_loads() -> None:
    old = TrialConfig().to_json()
    del old["precision"]
    old["bf16"] = True
    with pytest.warns(FutureWarning):
        assert TrialConfig.from_dict(old) == TrialConfig()


def test_gpu_options_are_checked() -> None:
    with pytest.raises(InputError, match="grad_compression: must be one of none, bf16"):
        TrialConfig(use_gpu=True, grad_compression="fp8")
    with pytest.raises(InputError, match="grad_compression: bf16 .* needs use_gpu: true"):
        TrialConfig(grad_compression="bf16")  # gloo has no bf16 all-reduce hook
    assert TrialConfig(use_gpu=True, num_workers=2, grad_compression="bf16").use_gpu
    with pytest.raises(InputError, match="divergence_check_steps: must be >= 1"):
        TrialConfig(divergence_check_steps=0)
    with pytest.raises(InputError, match="accelerator_type: must be a GPU type"):
        TrialConfig(accelerator_type=" ")


def test_freeze_layers_takes_a_count_or_all_and_names_anything_else() -> None:
    assert TrialConfig.from_dict({"freeze_layers": "all"}).freeze_layers == "all"
    assert TrialConfig.from_dict({"freeze_layers": 3.0}).freeze_layers == 3
    with pytest.raises(InputError, match="freeze_layers: must be a layer count or 'all'"):
        TrialConfig.from_dict({"freeze_layers": "most"})


def test_feature_cache_and_length_window_options_are_checked() -> None:
    assert TrialConfig().feature_cache
    with pytest.raises(InputError, match="feature_cache_gb"):
        TrialConfig(feature_cache_gb=-1)
    with pytest.raises(InputError, match="length_window"):
        TrialConfig(length_window=0)


def test_batches_group_by_length_unless_a_batchnorm_head_needs_random_batches() -> None:
    assert TrialConfig(head_norm="layernorm").batch_window() == 50
    assert TrialConfig(head_norm="none").batch_window() == 50
    assert TrialConfig(head_norm="batchnorm").batch_window() == 1  # batch statistics
    assert TrialConfig(head_norm="batchnorm", length_window=8).batch_window() == 8
