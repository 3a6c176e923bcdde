"""Where a trial's workers land (no Ray started): a trial's GPU type reaches every worker's
placement, the one-worker trial's as well as a Ray Train trial's."""

from __future__ import annotations

from hiersearch.search.driver import scaling_config, worker_resources
from hiersearch.trial.config import TrialConfig


def test_a_trials_workers_all_run_on_the_gpu_type_it_names() -> None:
    config = TrialConfig(use_gpu=True, num_workers=2, accelerator_type="A100")
    bundles = scaling_config(config).as_placement_group_factory().bundles
    assert [b.get("accelerator_type:A100") for b in bundles if "GPU" in b] == [0.001, 0.001]
    one = config.replace(num_workers=1, gpus_per_worker=0.25)
    assert worker_resources(one) == {"cpu": 1.0, "gpu": 0.25, "accelerator_type:A100": 0.001}
    assert "accelerator_type:A100" not in worker_resources(one.replace(use_gpu=False))
    assert scaling_config(config.replace(accelerator_type=None)).accelerator_type is None


