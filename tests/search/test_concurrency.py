"""How many trials a run has and how many run at once (`hiersearch.search.concurrency`), on a
fixed cluster and on an autoscaling one that starts with no GPU (cluster.yaml's GPU workers
have `min_workers: 0`). Pure: the cluster's resources are plain dicts (where they are read
from Ray: tests/search/test_cluster.py, test_tuner.py)."""

from __future__ import annotations

import sys

from hiersearch.search.concurrency import trial_count, trials_at_once, trials_that_fit
from hiersearch.search.space import load_space, preset_path
from hiersearch.trial.config import TrialConfig

HEAD_CPUS = 8.0  # cluster.yaml's head, an m5.2xlarge
NOW = {"CPU": HEAD_CPUS}  # an autoscaling cluster before its first GPU worker
# cluster.yaml at its largest: the head plus 8 x g5.xlarge (4 CPUs, 1 GPU) and 2 x p4d (96
# CPUs, 8 GPUs)
LARGEST = {"CPU": HEAD_CPUS + 224, "GPU": 24.0}


def _paper() -> TrialConfig:
    """The paper preset's trial: one worker, 4 CPUs and 1 GPU (issue 22's 30-trial grid)."""
    return load_space(preset_path("paper")).base_config()


def test_an_autoscaling_cluster_without_gpus_yet_runs_what_its_largest_size_holds() -> None:
    # 24 GPUs at most, 232 CPUs (the head's 8 too): the GPUs decide
    assert trials_at_once(_paper(), NOW, LARGEST, None, 30)[0] == 24


def test_tune_max_concurrent_caps_an_autoscaling_cluster() -> None:
    assert trials_at_once(_paper(), NOW, LARGEST, 6, 30)[0] == 6


def test_no_more_trials_run_at_once_than_the_run_has() -> None:
    # max_count -1 (no upper bound) reads as sys.maxsize
    unlimited = {"CPU": float(sys.maxsize), "GPU": float(sys.maxsize)}
    count, message = trials_at_once(_paper(), NOW, unlimited, None, 30)
    assert count == 30
    assert message.startswith(
        "trials at once: 30 (the run's trials; any number fit the unlimited CPUs and unlimited "
        "GPUs its autoscaler may grow the cluster to"
    )


def test_without_an_autoscaler_config_the_cluster_as_it_is_decides() -> None:
    now = {"CPU": 16.0, "GPU": 1.0}
    base = TrialConfig(use_gpu=True, cpus_per_worker=1)
    assert trials_at_once(base, now, None)[0] == 1
    assert trials_at_once(base.replace(gpus_per_worker=0.25), now, None)[0] == 4
    assert trials_at_once(base.replace(use_gpu=False), now, None)[0] == 16


def test_fractional_gpus_let_several_trials_share_one_gpu() -> None:
    now = {"CPU": 16.0, "GPU": 1.0}
    base = TrialConfig(use_gpu=True, cpus_per_worker=1)
    assert trials_at_once(base, now, None)[0] == 1
    assert trials_at_once(base.replace(gpus_per_worker=0.25), now, None)[0] == 4
    assert trials_at_once(base.replace(gpus_per_worker=0.25, cpus_per_worker=8), now, None)[0] == 2


def test_the_cluster_as_it_is_counts_when_larger_than_its_autoscaler_says() -> None:
    # a GPU node added by hand, beyond what the autoscaler config names (with the head's CPUs)
    now = {"CPU": 40.0, "GPU": 4.0}
    assert trials_at_once(_paper(), now, {"CPU": HEAD_CPUS + 8, "GPU": 1.0})[0] == 4


def test_the_search_says_how_many_trials_run_at_once_and_why() -> None:
    assert trials_at_once(_paper(), NOW, LARGEST, None, 30)[1] == (
        "trials at once: 24 (24 fit the 232 CPUs and 24 GPUs its autoscaler may grow the "
        "cluster to, 4 CPUs and 1 GPU each; it has 8 CPUs and 0 GPUs now)"
    )
    capped = trials_at_once(_paper(), NOW, LARGEST, 6, 30)[1]
    assert capped.startswith("trials at once: 6 (tune.max_concurrent; 24 fit")


def test_trials_that_can_never_run_are_noted_not_refused() -> None:
    # use_gpu on a fixed cluster without GPUs
    count, message = trials_at_once(_paper(), {"CPU": 16.0}, None, None, 30)
    assert count == 1
    lines = message.splitlines()
    assert lines[0] == "trials at once: 1 (0 fit the cluster's 16 CPUs and 0 GPUs, 4 CPUs and " \
                       "1 GPU each)"
    assert lines[1].startswith("note: not one trial (4 CPUs and 1 GPU) fits the cluster's 16 "
                               "CPUs and 0 GPUs, and no autoscaler config was found")
    assert "never come" in lines[1] and "use_gpu" in lines[1]


def test_a_trial_holds_its_workers_cpus_and_gpus() -> None:
    ddp = TrialConfig(use_gpu=True, num_workers=2, cpus_per_worker=2)
    assert trials_that_fit(ddp, {"CPU": 16.0, "GPU": 4.0}) == 2
    assert trials_that_fit(ddp, {"CPU": 7.9, "GPU": 8.0}) == 1
    assert trials_that_fit(ddp, {"CPU": 16.0}) == 0
    quarter = TrialConfig(use_gpu=True, cpus_per_worker=2, gpus_per_worker=0.25)
    assert trials_that_fit(quarter, {"CPU": 16.0, "GPU": 1.0}) == 4


def test_trials_caps_a_grid_and_sizes_a_sampled_search() -> None:
    grid = load_space(preset_path("smoke"))  # algorithm: grid, five fixed points
    assert trial_count(grid, 5, None, fixed_only=False) == 5
    assert trial_count(grid, 5, 2, fixed_only=False) == 2
    assert trial_count(grid, 5, 9, fixed_only=False) == 5
    sampled = load_space(preset_path("layerwise"))
    assert trial_count(sampled, 5, None, fixed_only=False) == sampled.tune.num_samples
    assert trial_count(sampled, 5, 40, fixed_only=False) == 40
    assert trial_count(sampled, 5, None, fixed_only=True) == 5
