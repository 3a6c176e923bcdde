"""What runs inside a Tune trial: its config resolved from its parameters, then the trial recipe
(trial/recipe.py) run in one of two ways, and the Tune trainable that holds them.

Train V2 inside Tune: a DDP trial's Tune trial runs the trial's Train controller, a thin
function holding ~0 CPU (`CONTROLLER_CPUS`) so that concurrent trials never starve the workers
of CPUs; it builds a `TorchTrainer` named after the trial id (a resumed trial finds its own
checkpoints again) whose workers run the recipe and report back through
`TuneReportCallback`. A one-worker trial (launcher "auto") skips Ray Train: the recipe runs in
the Tune trial itself, which holds the worker's resources and reports straight to Tune.

What a trial asks of its search (a PBT trial's parameters point into its population; whether
another trial's checkpoint may be handed to it; which checkpoints it keeps) is the search
plan's answer (`TrialPlan`: search/pbt.py's `Population`, search/tuner.py's
`IndependentTrials`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Protocol

from hiersearch import metrics as M
from hiersearch.data.prepare import PreparedData
from hiersearch.report.experiment import read_stored_json, write_text
from hiersearch.search.space import SpaceFile, assignment_of, trial_config
from hiersearch.trial import checkpoint
from hiersearch.trial.config import TrialConfig

__all__ = [
    "CONTROLLER_CPUS",
    "NonFiniteLossError",
    "TrialInputs",
    "TrialPlan",
    "in_trial",
    "scaling_config",
    "train_run_name",
    "trainable",
    "trial_in_process",
    "trial_with_trainer",
    "worker_resources",
]

CONTROLLER_CPUS = 0.01  # a trial's Train controller only waits on its TorchTrainer


class NonFiniteLossError(RuntimeError):
    """A trial's training loss became NaN or infinite; the trial stops with this error."""


class TrialPlan(Protocol):
    """What a trial asks of the search it is part of."""

    # whether Tune may hand the trial another trial's checkpoint to go on from (PBT's exploit)
    exploits: bool

    def trial_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """The trial's parameters as any trial's (a PBT trial's: its member's)."""
        ...

    def checkpoint_policy(self, base: TrialConfig) -> dict[str, Any]:
        """How many checkpoints a trial keeps, and which (a CheckpointConfig's settings)."""
        ...


@dataclass(frozen=True)
class TrialInputs:
    """What every trial of a search is given besides its parameters (Tune's `with_parameters`
    puts it in Ray's object store once)."""

    base: TrialConfig  # the space's trial: section, resolved
    data: PreparedData  # the corpus, encoded once before Ray started
    space: SpaceFile
    plan: TrialPlan


def in_trial(space: SpaceFile, base: TrialConfig) -> bool:
    """Whether every trial runs the recipe in the Tune trial itself (one worker, no DDP)."""
    return base.launcher == "auto" and base.num_workers == 1 and "num_workers" not in space.search


def trainable(space: SpaceFile, base: TrialConfig, data: PreparedData, plan: TrialPlan) -> Any:
    """The Tune trainable of every trial, with the resources one trial holds."""
    from ray import tune

    direct = in_trial(space, base)
    resources: dict[str, float] = {"cpu": CONTROLLER_CPUS}
    if direct:  # the trial is the worker
        resources = worker_resources(base)
    return tune.with_resources(
        tune.with_parameters(
            trial_in_process if direct else trial_with_trainer,
            inputs=TrialInputs(base, data, space, plan),
        ),
        resources,
    )


def _resolve(params: dict[str, Any], inputs: TrialInputs) -> TrialConfig:
    """The running trial's config from its parameters (a PBT trial's: its member's, under
    what PBT mutated), saved into its directory."""
    from ray.tune.utils import flatten_dict

    data = inputs.data
    # Tune nests "assign/L1_start"-style keys into {"assign": {...}}: undo that.
    params = inputs.plan.trial_params(flatten_dict(params, delimiter="/"))
    assignment = assignment_of(params, data.num_layers, data.label_counts, inputs.space)
    config = trial_config(inputs.base, params, assignment, inputs.space.heads_from)
    config = config.replace(corpus=data.corpus_dir)
    filesystem, trial_path = _trial_storage()
    write_text(filesystem, checkpoint.config_path(trial_path), config.dumps())
    return config


def _loop_config(config: TrialConfig, inputs: TrialInputs, donated: Any = None) -> dict:
    """What the recipe's workers need; `donated`: a PBT donor's checkpoint that a Ray Train
    run starts from (Train V2 has no `resume_from_checkpoint`: the workers read it)."""
    from ray import tune

    filesystem, trial_path = _trial_storage()
    return {
        # whose checkpoint a restore reads: another trial's is a PBT exploit
        "trial_id": tune.get_context().get_trial_id(),
        "pbt": inputs.plan.exploits,  # the reports say how the weights came about (pbt/*)
        "trial": config.to_json(),
        "encoded": inputs.data.encoded_path,
        "artifacts_path": _artifacts_path(trial_path),
        "filesystem": filesystem,
        "required_metrics": list(inputs.space.tune.metrics),
        "donated": donated,
    }


def _artifacts_path(trial_path: str) -> str:
    """The trial's artifacts (TensorBoard, heatmaps, its final report) in its directory."""
    return f"{trial_path}/artifacts"


def _raise_if_diverged(final: dict[str, Any], config: TrialConfig) -> None:
    from hiersearch.trial.recipe import STOP_NAN

    if final.get(M.TRIAL_STOP_REASON) == STOP_NAN:
        raise NonFiniteLossError(
            f"non-finite training loss or weights in epoch {final.get(M.EPOCH)}: trial "
            f"stopped, not retried (lr={config.lr}, assignment={config.assignment})"
        )


def trial_in_process(params: dict[str, Any], *, inputs: TrialInputs) -> None:
    """One Tune trial that trains in its own process (one worker): the recipe reports to
    Tune directly."""
    from hiersearch.trial.recipe import tune_worker

    config = _resolve(params, inputs)
    loop = _loop_config(config, inputs)
    # Tune retries a failed trial here (no Ray Train to tell a crash from divergence): a
    # diverged trial fails again at once instead of training into the same NaN.
    earlier = read_stored_json(
        loop["filesystem"], checkpoint.final_metrics_path(loop["artifacts_path"])
    )
    _raise_if_diverged(earlier or {}, config)
    _raise_if_diverged(tune_worker(loop), config)


def trial_with_trainer(params: dict[str, Any], *, inputs: TrialInputs) -> None:
    """One Tune trial as its Train controller: resolve its config, run a TorchTrainer, surface
    its failure."""
    from ray import tune

    config = _resolve(params, inputs)
    # A PBT exploit hands the trial its donor's checkpoint through Tune (search/pbt.py); no
    # other Tune checkpoint exists for a Ray Train trial (its own are its run's)
    donated = tune.get_checkpoint() if inputs.plan.exploits else None
    trainer = _torch_trainer(config, inputs, donated)
    result = trainer.fit()
    # Train V2's result holds only metrics reported with a checkpoint; a diverged trial's final
    # report has none, so rank 0 leaves its final report in the artifacts as well.
    filesystem, trial_path = _trial_storage()
    final = read_stored_json(
        filesystem, checkpoint.final_metrics_path(_artifacts_path(trial_path))
    )
    _raise_if_diverged(final or result.metrics or {}, config)


def train_run_name(trial_id: str, donated: Any = None) -> str:
    """The Ray Train run of a trial: `train_<trial>`, where a restarted trial finds its
    checkpoints again. A PBT trial that goes on from a donor's checkpoint (its copy in the
    trial's directory, `pbt_donor_<n>`) trains in a run of its own for it: Train resumes a
    run from the run's own newest checkpoint, the workers read the donated one only in a run
    that has none (`RaySession`), and a restart after the exploit finds that run again."""
    if donated is None:
        return f"train_{trial_id}"
    return f"train_{trial_id}_{PurePosixPath(donated.path).name}"


def _torch_trainer(config: TrialConfig, inputs: TrialInputs, donated: Any = None) -> Any:
    """The trial's Ray Train run (`train_run_name`), stored in the trial's directory,
    reporting to Tune; `donated`: a PBT donor's checkpoint to go on from."""
    import ray.train
    from ray import tune
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from hiersearch.trial.recipe import train_worker

    filesystem, trial_path = _trial_storage()
    return TorchTrainer(
        train_worker,
        train_loop_config=_loop_config(config, inputs, donated),
        torch_config=TorchConfig(backend="nccl" if config.use_gpu else "gloo"),
        scaling_config=scaling_config(config),
        run_config=ray.train.RunConfig(
            name=train_run_name(tune.get_context().get_trial_id(), donated),
            storage_path=trial_path,
            storage_filesystem=filesystem,
            failure_config=ray.train.FailureConfig(
                max_failures=inputs.space.tune.worker_failures
            ),
            checkpoint_config=ray.train.CheckpointConfig(
                **inputs.plan.checkpoint_policy(config)
            ),
            callbacks=[TuneReportCallback()],
        ),
    )


def scaling_config(config: TrialConfig) -> Any:
    """The Ray Train workers of a trial: their count, CPUs and (fractional) GPUs each."""
    import ray.train

    # The controller's sliver of CPU comes out of the workers' share, so that a trial takes
    # exactly num_workers * cpus_per_worker CPUs and the trials at once
    # (search/concurrency.py) fit the cluster.
    resources = {"CPU": config.cpus_per_worker - CONTROLLER_CPUS / config.num_workers}
    if config.use_gpu:
        resources["GPU"] = config.worker_gpus()
    return ray.train.ScalingConfig(
        num_workers=config.num_workers,
        use_gpu=config.use_gpu,
        resources_per_worker=resources,
        # every worker of the trial on one GPU type (a sliver of the node's type resource)
        accelerator_type=config.accelerator_type if config.use_gpu else None,
    )


def worker_resources(config: TrialConfig) -> dict[str, float]:
    """What a one-worker trial that trains in its Tune trial holds (`tune.with_resources`):
    the worker's CPUs, its share of a GPU and, as Ray Train's `ScalingConfig` asks for it, a
    sliver of its GPU type's resource."""
    from ray._common.utils import RESOURCE_CONSTRAINT_PREFIX

    resources = {"cpu": config.cpus_per_worker, "gpu": config.worker_gpus()}
    if config.use_gpu and config.accelerator_type:
        resources[f"{RESOURCE_CONSTRAINT_PREFIX}{config.accelerator_type}"] = 0.001
    return resources


def _trial_storage() -> tuple[Any, str]:
    """(pyarrow filesystem, path) of the running trial's directory in the experiment storage.

    Ray 2.60 has no public API for it: `TuneContext.get_trial_dir()` is the local staging
    directory, not the trial's place in bucket storage. `get_storage()` (no longer imported
    from `ray.train._internal`) is a DeveloperAPI whose StorageContext "may change between
    minor versions": hence the pin on ray in pyproject.toml."""
    from ray import tune

    storage = tune.get_context().get_storage()
    return storage.storage_filesystem, storage.trial_fs_path
