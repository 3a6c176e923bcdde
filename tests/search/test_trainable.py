"""What runs inside a Tune trial (`hiersearch.search.trainable`, no Ray started): where a
trial's workers land (a trial's GPU type reaches every worker's placement, the one-worker
trial's as well as a Ray Train trial's), which trials train in their Tune trial, and the
resources a trial holds."""

from __future__ import annotations

import pytest

from hiersearch.data.prepare import PreparedData
from hiersearch.search.space import load_space, parse_space, preset_path
from hiersearch.search.trainable import (
    CONTROLLER_CPUS,
    in_trial,
    scaling_config,
    trainable,
    worker_resources,
)
from hiersearch.search.tuner import IndependentTrials
from hiersearch.trial.config import TrialConfig


def test_a_trials_workers_all_run_on_the_gpu_type_it_names() -> None:
    config = TrialConfig(use_gpu=True, num_workers=2, accelerator_type="A100")
    bundles = scaling_config(config).as_placement_group_factory().bundles
    assert [b.get("accelerator_type:A100") for b in bundles if "GPU" in b] == [0.001, 0.001]
    one = config.replace(num_workers=1, gpus_per_worker=0.25)
    assert worker_resources(one) == {"cpu": 1.0, "gpu": 0.25, "accelerator_type:A100": 0.001}
    assert "accelerator_type:A100" not in worker_resources(one.replace(use_gpu=False))
    assert scaling_config(config.replace(accelerator_type=None)).accelerator_type is None


def test_one_worker_trials_train_in_the_tune_trial_unless_told_otherwise() -> None:
    smoke = load_space(preset_path("smoke"))  # two DDP workers: always Ray Train
    assert not in_trial(smoke, smoke.base_config())
    quick = load_space(preset_path("quick"))  # one worker
    assert in_trial(quick, quick.base_config())
    assert not in_trial(quick, quick.base_config().replace(launcher="train"))
    workers = {"num_workers": {"type": "categorical", "choices": [1, 2]}}
    searched = parse_space({**quick.raw, "search": workers})
    assert not in_trial(searched, searched.base_config())


def test_launcher_must_be_auto_or_train() -> None:
    with pytest.raises(ValueError, match="launcher"):
        TrialConfig(launcher="tune")


def test_fractional_gpus_reach_a_ray_train_trials_worker() -> None:
    # one worker under Ray Train (launcher: train); DDP workers hold whole GPUs
    config = TrialConfig(use_gpu=True, gpus_per_worker=0.5, launcher="train", cpus_per_worker=2)
    scaling = scaling_config(config)
    assert scaling.use_gpu and scaling.num_gpus_per_worker == 0.5
    bundles = scaling.as_placement_group_factory().bundles
    assert [b.get("GPU") for b in bundles if "GPU" in b] == [0.5]
    assert scaling_config(config.replace(use_gpu=False)).num_gpus_per_worker == 0
    ddp = scaling_config(config.replace(gpus_per_worker=1, num_workers=2))
    assert [b.get("GPU") for b in ddp.as_placement_group_factory().bundles if "GPU" in b] == [1, 1]


def test_a_ray_train_trial_takes_its_workers_cpus_controller_included() -> None:
    config = TrialConfig(num_workers=2, cpus_per_worker=2, launcher="train")
    bundles = scaling_config(config).as_placement_group_factory().bundles
    # the controller's sliver comes out of the workers' share: the trial holds 2 x 2 CPUs
    assert sum(b["CPU"] for b in bundles) + CONTROLLER_CPUS == pytest.approx(4.0)


def test_fractional_gpus_reach_a_one_worker_trials_placement() -> None:
    space = load_space(preset_path("quick"))  # one worker: the trial is the worker
    data = PreparedData("corpus", "encoded", [2, 3], 6, synthetic=True)
    base = space.base_config().replace(use_gpu=True, gpus_per_worker=0.25)
    assert in_trial(space, base)
    plan = IndependentTrials(space)
    placement = trainable(space, base, data, plan)._resources
    assert placement.required_resources == {"CPU": base.cpus_per_worker, "GPU": 0.25}
    on_cpu = trainable(space, base.replace(use_gpu=False), data, plan)._resources
    assert on_cpu.required_resources.get("GPU", 0) == 0
