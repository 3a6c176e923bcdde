"""The Ray Tune driver: a search-space file -> OptunaSearch (+ ASHA, or MO-ASHA for several
metrics) -> Tuner of trials, each trial a Ray Train `TorchTrainer` run (DDP workers) reporting
back through `TuneReportCallback`.

Train V2 inside Tune: the Tune trial is a thin driver function holding ~0 CPU, so that
concurrent drivers never starve the workers of CPUs; it builds a `TorchTrainer` named after the
trial id (a resumed trial finds its own checkpoints again) whose workers run the trial recipe.
A one-worker trial (launcher "auto") skips Ray Train: the recipe runs in the Tune trial
itself, which holds the worker's resources and reports straight to Tune.

What is settled before Ray starts (the checks, the corpus) is in `preflight.py`.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from pathlib import Path, PurePosixPath
from typing import Any

from hiersearch import metrics as M
from hiersearch.data.corpus import Corpus
from hiersearch.data.prepare import PreparedData
from hiersearch.errors import InputError
from hiersearch.report.experiment import read_meta, read_text, write_meta, write_text
from hiersearch.report.study import StudyStorage, open_storage
from hiersearch.search.cluster import cluster_address, connect
from hiersearch.search.preflight import (
    check_destination,
    check_gpus,
    check_space,
    check_trials,
    data_root,
    plan_data,
    prepare_data,
    resume_settings,
    with_seeds,
)
from hiersearch.search.space import (
    MEMBER_PARAM,
    SEED_PARAM,
    VARIANT_PARAM,
    SpaceFile,
    TuneSpec,
    assignment_of,
    define_by_run,
    fixed_points,
    seed_values,
    trial_config,
)
from hiersearch.trial.config import TrialConfig

# hiersearch.json's key for a PBT search's initial population (its members' parameters).
PBT_POPULATION = "pbt_population"

__all__ = [
    "DRIVER_CPUS",
    "NonFiniteLossError",
    "experiment_path",
    "in_trial",
    "max_concurrent",
    "prepare_data",
    "run_search",
    "sampler",
    "scaling_config",
    "storage_uri",
    "trial_count",
    "trial_driver",
    "trial_in_process",
    "worker_resources",
]

DRIVER_CPUS = 0.01  # the trial driver only waits on its TorchTrainer


class NonFiniteLossError(RuntimeError):
    """A trial's training loss became NaN or infinite; the trial stops with this error."""


# --- one trial ------------------------------------------------------------------------------


def in_trial(space: SpaceFile, base: TrialConfig) -> bool:
    """Whether every trial runs the recipe in the Tune trial itself (one worker, no DDP)."""
    return base.launcher == "auto" and base.num_workers == 1 and "num_workers" not in space.search


def _resolve(
    params: dict[str, Any],
    base: TrialConfig,
    data: PreparedData,
    space: SpaceFile,
    population: list[dict[str, Any]] | None = None,
) -> TrialConfig:
    """The running trial's config from its parameters (a PBT trial's: its member's, under
    what PBT mutated), saved into its directory."""
    from ray.tune.utils import flatten_dict

    from hiersearch.search.pbt import member_params

    # Tune nests "assign/L1_start"-style keys into {"assign": {...}}: undo that.
    params = flatten_dict(params, delimiter="/")
    if population is not None:
        params = member_params(params, population)
    assignment = assignment_of(params, data.num_layers, data.label_counts, space)
    config = trial_config(base, params, assignment).replace(corpus=data.corpus_dir)
    filesystem, trial_path = _trial_storage()
    write_text(filesystem, f"{trial_path}/config.json", config.dumps())
    return config


def _loop_config(
    config: TrialConfig, data: PreparedData, space: SpaceFile, donated: Any = None
) -> dict[str, Any]:
    """What the recipe's workers need; `donated`: a PBT donor's checkpoint that a Ray Train
    run starts from (Train V2 has no `resume_from_checkpoint`: the workers read it)."""
    from ray import tune

    filesystem, trial_path = _trial_storage()
    return {
        # whose checkpoint a restore reads: another trial's is a PBT exploit
        "trial_id": tune.get_context().get_trial_id(),
        "pbt": space.tune.scheduler == "pbt",
        "trial": config.to_json(),
        "encoded": data.encoded_path,
        "artifacts_path": f"{trial_path}/artifacts",
        "filesystem": filesystem,
        "required_metrics": list(space.tune.metrics),
        "donated": donated,
    }


def _raise_if_diverged(final: dict[str, Any], config: TrialConfig) -> None:
    from hiersearch.trial.recipe import STOP_NAN

    if final.get(M.TRIAL_STOP_REASON) == STOP_NAN:
        raise NonFiniteLossError(
            f"non-finite training loss or weights in epoch {final.get(M.EPOCH)}: trial "
            f"stopped, not retried (lr={config.lr}, assignment={config.assignment})"
        )


def trial_in_process(
    params: dict[str, Any],
    *,
    base: TrialConfig,
    data: PreparedData,
    space: SpaceFile,
    population: list[dict[str, Any]] | None = None,
) -> None:
    """One Tune trial that trains in its own process (one worker): the recipe reports to
    Tune directly."""
    from hiersearch.trial.recipe import tune_worker

    config = _resolve(params, base, data, space, population)
    loop = _loop_config(config, data, space)
    # Tune retries a failed trial here (no Ray Train to tell a crash from divergence): a
    # diverged trial fails again at once instead of training into the same NaN.
    earlier = _read_json(loop["filesystem"], f"{loop['artifacts_path']}/final_metrics.json")
    _raise_if_diverged(earlier or {}, config)
    _raise_if_diverged(tune_worker(loop), config)


def trial_driver(
    params: dict[str, Any],
    *,
    base: TrialConfig,
    data: PreparedData,
    space: SpaceFile,
    population: list[dict[str, Any]] | None = None,
) -> None:
    """One Tune trial: resolve its config, run a TorchTrainer, surface its failure."""
    from ray import tune

    config = _resolve(params, base, data, space, population)
    # A PBT exploit hands the trial its donor's checkpoint through Tune (search/pbt.py); no
    # other Tune checkpoint exists for a Ray Train trial (its own are its run's)
    donated = tune.get_checkpoint() if space.tune.scheduler == "pbt" else None
    trainer = _torch_trainer(config, data, space, tune.get_context().get_trial_id(), donated)
    result = trainer.fit()
    # Train V2's result holds only metrics reported with a checkpoint; a diverged trial's final
    # report has none, so rank 0 leaves its final report in the artifacts as well.
    filesystem, trial_path = _trial_storage()
    final = _read_json(filesystem, f"{trial_path}/artifacts/final_metrics.json")
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


def _torch_trainer(
    config: TrialConfig,
    data: PreparedData,
    space: SpaceFile,
    trial_id: str,
    donated: Any = None,
) -> Any:
    """The trial's Ray Train run (`train_run_name`), stored in the trial's directory,
    reporting to Tune; `donated`: a PBT donor's checkpoint to go on from."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from hiersearch.trial.recipe import train_worker

    filesystem, trial_path = _trial_storage()
    return TorchTrainer(
        train_worker,
        train_loop_config=_loop_config(config, data, space, donated),
        torch_config=TorchConfig(backend="nccl" if config.use_gpu else "gloo"),
        scaling_config=scaling_config(config),
        run_config=ray.train.RunConfig(
            name=train_run_name(trial_id, donated),
            storage_path=trial_path,
            storage_filesystem=filesystem,
            failure_config=ray.train.FailureConfig(max_failures=space.tune.worker_failures),
            checkpoint_config=ray.train.CheckpointConfig(**checkpoint_policy(space, config)),
            callbacks=[TuneReportCallback()],
        ),
    )


def scaling_config(config: TrialConfig) -> Any:
    """The Ray Train workers of a trial: their count, CPUs and (fractional) GPUs each."""
    import ray.train

    # The driver's sliver of CPU comes out of the workers' share, so that a trial takes exactly
    # num_workers * cpus_per_worker CPUs and `max_concurrent` trials fit the cluster.
    resources = {"CPU": config.cpus_per_worker - DRIVER_CPUS / config.num_workers}
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


def _read_json(filesystem: Any, path: str) -> dict[str, Any] | None:
    """A small JSON object through a pyarrow filesystem; None if absent or not an object."""
    try:
        value = json.loads(read_text(filesystem, path) or "")
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


# --- the experiment -------------------------------------------------------------------------


def trial_count(space: SpaceFile, fixed: int, trials: int | None, fixed_only: bool) -> int:
    """How many trials a run has: a grid (or fixed-only run) is its fixed points, cut to the
    first `trials` when given; a sampled search is `trials` or the space's num_samples."""
    if fixed_only or space.tune.algorithm == "grid":
        return fixed if trials is None else min(trials, fixed)
    return trials or space.tune.num_samples


def max_concurrent(base: TrialConfig, cap: int | None, trials: int | None = None) -> int:
    """How many trials run at once: as many as the cluster holds at its largest (an
    autoscaling cluster: what its autoscaler may add), at most `cap` (`tune.max_concurrent`)
    and the run's `trials`. Said on stderr, with why: users read it when a cluster looks idle.

    Tune keeps as many trials pending as `max_concurrent_trials` lets run (Ray 2.60's default
    TUNE_MAX_PENDING_TRIALS_PG with a searcher; one without the limit), each asking for its
    resources, so that an autoscaler sees every trial's demand at once and launches their
    nodes together."""
    import ray

    from hiersearch.search.cluster import largest_cluster

    now = ray.cluster_resources()
    largest = largest_cluster()
    most = now if largest is None else {k: max(now.get(k, 0), v) for k, v in largest.items()}
    fits = trials_that_fit(base, most)
    limits = [n for n in (cap, trials) if n]
    count = min([max(1, fits), *limits])
    reason = _concurrency_reason(base, now, largest, fits, cap, count)
    print(f"trials at once: {count} ({reason})", file=sys.stderr)
    if fits == 0:
        print(_never_fits_note(base, now, largest), file=sys.stderr)
    return count


def trials_that_fit(base: TrialConfig, resources: dict[str, float]) -> int:
    """How many trials of this scaling these CPUs and GPUs hold together (0: not one).

    A trial holds num_workers * cpus_per_worker CPUs, whether it trains in its Tune trial or
    drives Ray Train workers (their share makes room for its driver, `scaling_config`)."""
    cpus, gpus = _trial_resources(base)
    fits = math.floor(resources.get("CPU", 1) / cpus + 1e-9)
    if gpus:
        fits = min(fits, math.floor(resources.get("GPU", 0) / gpus + 1e-9))
    return fits


def _trial_resources(base: TrialConfig) -> tuple[float, float]:
    """(CPUs, GPUs) one trial holds."""
    return base.num_workers * base.cpus_per_worker, base.num_workers * base.worker_gpus()


def _amounts(resources: dict[str, float], gpus: bool) -> str:
    """'8 CPUs and 1 GPU' (the GPUs only when trials use them)."""

    def amount(key: str) -> str:
        value = resources.get(key, 0)
        if _unlimited(value):
            return f"unlimited {key}s"
        return f"{value:g} {key}" + ("" if value == 1 else "s")

    return f"{amount('CPU')} and {amount('GPU')}" if gpus else amount("CPU")


def _unlimited(value: float) -> bool:
    """How Ray reads the resources of a node type without a most number of nodes."""
    return value >= sys.maxsize


def _concurrency_reason(
    base: TrialConfig,
    now: dict[str, float],
    largest: dict[str, float] | None,
    fits: int,
    cap: int | None,
    count: int,
) -> str:
    """Why `count` trials run at once, e.g. '24 fit the 232 CPUs and 24 GPUs its autoscaler may
    grow the cluster to, 4 CPUs and 1 GPU each; it has 8 CPUs and 0 GPUs now'."""
    cpus, gpus = _trial_resources(base)
    each = _amounts({"CPU": cpus, "GPU": gpus}, base.use_gpu)
    if largest is None:
        why = f"{fits} fit the cluster's {_amounts(now, base.use_gpu)}, {each} each"
    else:
        used = ["CPU", "GPU"] if base.use_gpu else ["CPU"]
        fit = "any number" if all(_unlimited(largest[k]) for k in used) else fits
        why = (f"{fit} fit the {_amounts(largest, base.use_gpu)} its autoscaler may grow the "
               f"cluster to, {each} each; it has {_amounts(now, base.use_gpu)} now")
    if count < max(1, fits):
        why = ("tune.max_concurrent" if cap == count else "the run's trials") + "; " + why
    return why


def _never_fits_note(
    base: TrialConfig, now: dict[str, float], largest: dict[str, float] | None
) -> str:
    """Why the search will seem to hang. It is not refused: a node added by hand would run
    its trials, and a cluster without an autoscaler config found may well have one."""
    cpus, gpus = _trial_resources(base)
    each = _amounts({"CPU": cpus, "GPU": gpus}, base.use_gpu)
    if largest is None:
        cluster = (f"the cluster's {_amounts(now, base.use_gpu)}, and no autoscaler config was "
                   "found (a fixed cluster, a local Ray, or a driver off the head node)")
    else:
        cluster = f"the {_amounts(largest, base.use_gpu)} its autoscaler may grow the cluster to"
    return (
        f"note: not one trial ({each}) fits {cluster}: the trials will wait for resources that "
        "never come unless a node is added. Check use_gpu, num_workers, cpus_per_worker and "
        "gpus_per_worker in the space's trial: section against `ray status`."
    )


def storage_uri(storage: str) -> str:
    """Tune wants an absolute path or a URI."""
    if "://" in storage:
        return storage
    return str(Path(storage).expanduser().resolve())


def experiment_path(storage: str, name: str) -> str:
    return f"{storage_uri(storage).rstrip('/')}/{name}"


def run_search(
    space: SpaceFile,
    *,
    storage: str = "runs",
    name: str | None = None,
    trials: int | None = None,
    resume: bool = False,
    address: str | None = None,
    data_dir: str | None = None,
    model: str | None = None,
    fixed_only: bool = False,
    seeds: int | None = None,
    verbose: int = 1,
    stop: Any = None,
    study_storage: str | None = None,
    mlflow: str | None = None,
    stage: str | None = None,
) -> str:
    """Run (or resume) an experiment; returns its directory (path or URI). A space with a
    `screen:` section runs as two stages in it (`run_two_stage`); `stage` names the stage a
    call runs (recorded in hiersearch.json). `stop` is a Ray Tune
    stopper (or its dict / function form), e.g. a compute budget (bench/search_efficiency.py).
    `study_storage`: an SQLAlchemy URL for the Optuna study (default: a SQLite file in the
    experiment directory; a resumed experiment keeps the study its searcher saved). `mlflow`: a
    tracking URI (default $HIERSEARCH_MLFLOW_URI) that every trial is logged to as a run; a
    resumed experiment keeps the tracking it was started with."""
    if seeds is not None:
        space = with_seeds(space, seeds)
    check_destination(storage, name or space.name, "--name" if name else f"{space.path}: name")
    if space.screen is not None and stage is None:
        return run_two_stage(
            space, storage=storage, name=name or space.name, trials=trials, resume=resume,
            address=address, data_dir=data_dir, model=model, verbose=verbose,
            study_storage=study_storage, mlflow=mlflow,
        )
    name = name or space.name
    path = experiment_path(storage, name)
    callbacks = [] if resume else _tracking(mlflow, name, path)
    if resume:
        _check_resumable(path)
        space, base, data_dir = resume_settings(path, space, model, data_dir)
    else:
        check_space(space)
        base = space.base_config(model=model)
    check_gpus(space, base, local=cluster_address(address) is None)
    plan = plan_data(space, base, data_dir, data_root(storage))
    _quiet_forced_snapshots()
    if resume:
        data = prepare_data(space, base, data_dir, data_root(storage), plan)
        _baseline(path, plan.corpus.corpus)  # an experiment from before baselines gets one
        connect(address)
        population = (read_meta(path) or {}).get(PBT_POPULATION)
        _restore(path, _trainable(space, base, data, population)).fit()
        return path
    # Everything a trial resolves from the space is resolved once here, before anything is
    # written and Ray starts: bad input fails the command (exit 2), not each trial after minutes.
    points = fixed_points(space, plan.num_layers, plan.label_counts)
    define = define_by_run(space, plan.num_layers, plan.label_counts)
    check_trials(space, base, plan, points)
    # the study storage before the corpus: a bad --study-storage leaves nothing written
    study = open_storage(path, name, study_storage, space.tune.modes)
    if study.url is None:
        print(f"note: the Optuna study of {path} is kept in memory (no SQLite file in a "
              "bucket): pass --study-storage URL to keep it", file=sys.stderr)
    data = prepare_data(space, base, data_dir, data_root(storage), plan)
    connect(address)
    num_samples = trial_count(space, len(points), trials, fixed_only)
    param_space, population = None, None
    if space.tune.scheduler == "pbt":
        searcher, param_space, population = _population(space, base, define, points, num_samples)
    else:
        searcher = _searcher(space, define, points[:num_samples], study)
    trainable = _trainable(space, base, data, population)
    scheduler = _scheduler(space, base)
    _write_meta(path, space, data, base, study, stage, population)
    _baseline(path, plan.corpus.corpus)
    from ray import tune

    tuner = tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=_tune_config(space, base, searcher, scheduler, num_samples),
        run_config=_run_config(space, base, data, name, storage, verbose, callbacks, stop),
    )
    tuner.fit()
    return path


def run_two_stage(
    space: SpaceFile,
    *,
    storage: str,
    name: str,
    trials: int | None,
    resume: bool,
    address: str | None,
    data_dir: str | None,
    model: str | None,
    verbose: int,
    study_storage: str | None,
    mlflow: str | None,
) -> str:
    """The two stages of a `screen:` space (search/stages.py) as two experiments in
    `<storage>/<name>/`: `screen`, then `finetune` on its `top_k` best assignments. One corpus
    for both (planned and written here once); `resume` resumes the stage that was cut short
    and starts the ones not yet begun. Returns the experiment's directory."""
    from ray.tune import Tuner

    from hiersearch.data.prepare import write_planned
    from hiersearch.report.results import load_experiments
    from hiersearch.search.stages import (
        FINETUNE,
        SCREEN,
        finetune_space,
        screen_size,
        screen_trials,
        screening_space,
        top_assignments,
        unfinished,
    )

    root = experiment_path(storage, name)
    screen_path = experiment_path(root, SCREEN)
    if resume and not Tuner.can_restore(screen_path):
        raise InputError(
            "no two-stage experiment to resume at this path", where=f"--resume {root}"
        )
    base = space.base_config(model=model)
    plan = plan_data(space, base, data_dir, data_root(storage))
    screen = screening_space(space, plan.num_layers, len(plan.label_counts))
    write_planned(plan.corpus)
    corpus_dir = plan.corpus.corpus_dir
    common = {"address": address, "data_dir": corpus_dir, "model": model, "verbose": verbose,
              "study_storage": study_storage, "mlflow": mlflow}
    run_search(screen, storage=root, name=SCREEN, trials=screen_trials(space),
               resume=resume, stage=SCREEN, **common)
    finetune_path = experiment_path(root, FINETUNE)
    if resume and Tuner.can_restore(finetune_path):  # its assignments are in its own meta
        run_search(space, storage=root, name=FINETUNE, trials=trials, resume=True,
                   stage=FINETUNE, **common)
        return root
    table = load_experiments([screen_path])
    if unfinished(table, screen_size(screen)):  # Ctrl-C, a lost driver: stage 2 needs it all
        print(f"[hiersearch] stage 1 (screen) did not finish: {root} --resume goes on with it",
              file=sys.stderr, flush=True)
        return root
    top = top_assignments(table, space.tune.metrics[0], space.tune.modes[0], space.screen.top_k)
    print(f"[hiersearch] stage 2 fine-tunes the screen's {len(top)} best assignments by "
          f"{space.tune.metrics[0]}: {', '.join(top)}", flush=True)
    run_search(finetune_space(space, top), storage=root, name=FINETUNE, trials=trials,
               stage=FINETUNE, **common)
    return root


# Tune snapshots the experiment every `num_to_keep` (trial.keep_checkpoints) checkpoints of a
# trial, so that a resume finds the checkpoints it kept; with the presets' 1 that is every
# epoch, and Tune then warns at every epoch that snapshots come often. They are meant to.
_SNAPSHOT_WARNING_ENV = "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S"


def _quiet_forced_snapshots() -> None:
    """Turn Tune's warning about frequent experiment snapshots off, unless the user set it."""
    os.environ.setdefault(_SNAPSHOT_WARNING_ENV, "0")


def _tracking(uri: str | None, name: str, path: str) -> list[Any]:
    """The MLflow callbacks of a new experiment (search/tracking.py); checked before Ray
    starts."""
    from hiersearch.search.tracking import MLFLOW_URI_ENV, mlflow_callbacks

    return mlflow_callbacks(uri or os.environ.get(MLFLOW_URI_ENV), name, path)


def _baseline(path: str, corpus: Corpus) -> None:
    """The experiment's baseline row (TF-IDF k-NN on its training documents,
    report/baseline.py), computed once: seconds, before the first trial starts."""
    from hiersearch.report.baseline import compute_baseline, read_baseline, write_baseline

    if read_baseline(path) is not None:
        return
    baseline = compute_baseline(corpus)
    write_baseline(path, baseline)
    macro = baseline["metrics"].get(M.rp_macro_key("dev"), math.nan)
    print(
        f"[hiersearch] baseline {baseline['name']} on {baseline['train_docs']} training "
        f"documents: dev macro R-Precision {macro:.3f} ({baseline['seconds']:.1f}s), the "
        "leaderboard's 'baseline' row",
        flush=True,
    )


def _check_resumable(path: str) -> None:
    from ray.tune import Tuner

    from hiersearch.search.recovery import check_saved_state

    if not Tuner.can_restore(path):
        raise InputError("no experiment to resume at this path", where=f"--resume {path}")
    check_saved_state(path)


def _trainable(
    space: SpaceFile,
    base: TrialConfig,
    data: PreparedData,
    population: list[dict[str, Any]] | None = None,
) -> Any:
    """The Tune trainable of every trial, with the resources one trial holds; `population`:
    a PBT search's members, which its trials' parameters point into."""
    from ray import tune

    direct = in_trial(space, base)
    resources: dict[str, float] = {"cpu": DRIVER_CPUS}
    if direct:  # the trial is the worker
        resources = worker_resources(base)
    return tune.with_resources(
        tune.with_parameters(
            trial_in_process if direct else trial_driver,
            base=base,
            data=data,
            space=space,
            population=population,
        ),
        resources,
    )


def _restore(path: str, trainable: Any) -> Any:
    """The interrupted experiment's Tuner: unfinished trials resume, errored ones stay."""
    from ray.tune import Tuner

    return Tuner.restore(
        path, trainable, resume_unfinished=True, resume_errored=False, restart_errored=False
    )


def _searcher(
    space: SpaceFile, define: Any, points: list[dict[str, Any]], study: StudyStorage
) -> Any:
    """OptunaSearch over the define-by-run space, its fixed points enqueued first, its study
    kept in the experiment's study storage (None: in memory)."""
    from hiersearch.search.searcher import PersistentOptunaSearch

    tune = space.tune
    return PersistentOptunaSearch(
        space=define,
        metric=list(tune.metrics) if tune.multi_objective else tune.metric,
        mode=list(tune.modes) if tune.multi_objective else tune.mode,
        points_to_evaluate=points or None,
        sampler=sampler(tune),
        study_name=study.name,
        storage=study.storage,
    )


def _population(
    space: SpaceFile, base: TrialConfig, define: Any, points: list[dict[str, Any]], size: int
) -> tuple[Any, dict[str, Any], list[dict[str, Any]]]:
    """PBT's (search algorithm, param space, population): the population drawn once, up
    front (search/pbt.py), one trial per member through Tune's basic generator."""
    from ray.tune.search import BasicVariantGenerator

    from hiersearch.search.pbt import initial_population, population_space

    population = initial_population(define, points, size, sampler(space.tune))
    # Tune's max_concurrent_trials limits a Searcher only: the generator takes it itself
    concurrent = max_concurrent(base, space.tune.max_concurrent, size)
    generator = BasicVariantGenerator(max_concurrent=concurrent)
    return generator, population_space(population, space.search), population


def sampler(tune: TuneSpec) -> Any:
    """The Optuna sampler of a search, its seed parameter pinned.

    TPE models the parameters jointly (`multivariate`), split by which ones a trial has
    (`group`: the assignment space is conditional: a FLAT trial has no per-level blocks), and
    lies about running trials (`constant_liar`) so that concurrent trials spread out. The
    seed is pinned for sampled trials: fixed trials enqueue every seed, and a sampler that
    could choose one would pick the luckiest seed instead of the best configuration."""
    import optuna

    # multivariate TPE and PartialFixedSampler are "experimental" in Optuna (since 2.x and
    # unchanged since): the warnings would print with every search
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        base: optuna.samplers.BaseSampler
        if tune.algorithm == "random":
            base = optuna.samplers.RandomSampler(seed=tune.sampler_seed)
        elif tune.algorithm == "nsga2":
            base = optuna.samplers.NSGAIISampler(
                seed=tune.sampler_seed, population_size=tune.population_size
            )
        else:
            base = optuna.samplers.TPESampler(
                seed=tune.sampler_seed, multivariate=True, group=True, constant_liar=True
            )
        return optuna.samplers.PartialFixedSampler({SEED_PARAM: seed_values(tune)[0]}, base)


def _scheduler(space: SpaceFile, base: TrialConfig) -> Any:
    """ASHA when the space asks for it (MO-ASHA for several metrics), population-based
    training (search/pbt.py) for `scheduler: pbt`, else None (every trial runs to its end)."""
    from ray.tune.schedulers import ASHAScheduler

    from hiersearch.search.moasha import MOASHAScheduler
    from hiersearch.search.pbt import PinnedPBT

    tune = space.tune
    if tune.scheduler == "pbt":
        return PinnedPBT(tune.pbt, space.search)
    if tune.scheduler != "asha":
        return None
    settings = {
        "time_attr": "training_iteration",
        # Reports are the epochs, then a final one (test + utilization). At max_t ASHA
        # *stops* a trial; at epochs + 1 that would kill every completing trial during
        # its Train teardown, so max_t lies one past the last report.
        "max_t": base.epochs + 2,
        "grace_period": tune.grace_period,
        "reduction_factor": tune.reduction_factor,
    }
    if tune.multi_objective:
        return MOASHAScheduler(tune.metrics, tune.modes, **settings)
    return ASHAScheduler(**settings)


def checkpoint_policy(space: SpaceFile, base: TrialConfig) -> dict[str, Any]:
    """How many checkpoints a trial keeps, and which: its `keep_checkpoints` best by dev
    loss; under PBT its newest, at least one more than the perturbation interval: an exploit
    copies the donor's newest (search/pbt.py), and the one a DDP donor's last report named is
    still there while its Train run prunes in the background."""
    if space.tune.scheduler == "pbt":
        keep = max(base.keep_checkpoints, space.tune.pbt.perturbation_interval + 1)
        return {"num_to_keep": keep}
    return {
        "num_to_keep": base.keep_checkpoints,
        "checkpoint_score_attribute": M.loss_key("dev"),
        "checkpoint_score_order": "min",
    }


def _tune_config(
    space: SpaceFile, base: TrialConfig, searcher: Any, scheduler: Any, num_samples: int
) -> Any:
    from ray import tune

    pbt = space.tune.scheduler == "pbt"
    return tune.TuneConfig(
        search_alg=searcher,
        scheduler=scheduler,
        # several metrics: the first orders the progress table (the searcher has them all)
        metric=space.tune.metrics[0],
        mode=space.tune.modes[0],
        # PBT: the param space is a grid of the population's members, once each
        num_samples=1 if pbt else num_samples,
        max_concurrent_trials=(
            None if pbt else max_concurrent(base, space.tune.max_concurrent, num_samples)
        ),
        # A trial that trains in its own process leaves torch, transformers and the
        # compiled metric kernels imported: the next trial starts warm in it.
        reuse_actors=in_trial(space, base),
        trial_name_creator=lambda t: f"trial_{t.trial_id}",
        trial_dirname_creator=lambda t: f"trial_{t.trial_id}",
    )


def _run_config(
    space: SpaceFile,
    base: TrialConfig,
    data: PreparedData,
    name: str,
    storage: str,
    verbose: int,
    callbacks: list[Any] | None = None,
    stop: Any = None,
) -> Any:
    from ray import tune

    from hiersearch.search.recovery import PrunedCheckpointRepair

    direct = in_trial(space, base)
    return tune.RunConfig(
        name=name,
        storage_path=storage_uri(storage),
        # A trial that trains in its own process has no Ray Train to restart its worker:
        # Tune's retries (from the last checkpoint) stand in for worker_failures.
        failure_config=tune.FailureConfig(
            max_failures=space.tune.max_failures + direct * space.tune.worker_failures
        ),
        # What Ray Train's CheckpointConfig does for a TorchTrainer trial, for a trial that
        # reports to Tune itself (the others report no checkpoint to Tune).
        checkpoint_config=tune.CheckpointConfig(**checkpoint_policy(space, base)),
        progress_reporter=_reporter(space, data),
        verbose=verbose,
        # a resume whose saved state names a checkpoint Tune had pruned goes on from the one
        # that replaced it (kept with the experiment: Tune restores its callbacks)
        callbacks=[PrunedCheckpointRepair(), *(callbacks or [])],
        stop=stop,
    )


def _reporter(space: SpaceFile, data: PreparedData) -> Any:
    from ray.tune import CLIReporter

    levels = len(data.label_counts)
    columns = {M.EPOCH: "epoch", M.loss_key("dev"): "dev loss"}
    columns.update({M.rp_level_key("dev", n): f"RP L{n}" for n in range(1, levels + 1)})
    columns.update({M.rp_micro_key("dev"): "RP micro", M.rp_macro_key("dev"): "RP macro"})
    for metric in space.tune.metrics:  # e.g. a cost a multi-objective search minimizes
        columns.setdefault(metric, metric)
    params = [*space.search, SEED_PARAM]
    if space.tune.scheduler == "pbt":  # variant and seed are the member's; reports name them
        params = [MEMBER_PARAM, *space.search]
        columns = {M.TRIAL_ASSIGNMENT: "assignment", **columns, M.PBT_EXPLOITS: "exploits"}
    elif space.assignment.space == "variants":
        params.insert(0, VARIANT_PARAM)
    else:  # the sampled blocks are many parameters; the trial reports them as one string
        columns = {M.TRIAL_ASSIGNMENT: "assignment", **columns}
    return CLIReporter(
        metric_columns=columns,
        parameter_columns=params,
        max_report_frequency=10,
        sort_by_metric=True,
    )


def _write_meta(
    path: str,
    space: SpaceFile,
    data: PreparedData,
    base: TrialConfig,
    study: StudyStorage,
    stage: str | None = None,
    population: list[dict[str, Any]] | None = None,
) -> None:
    """hiersearch.json: what the experiment was started with (read on resume and by the
    results table); a PBT search's population, which its trials' parameters point into."""
    write_meta(
        path,
        {
            "name": Path(path).name,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "metric": space.tune.metrics[0],
            "mode": space.tune.modes[0],
            "metrics": list(space.tune.metrics),
            "modes": list(space.tune.modes),
            "study": study.to_json(),
            "space_file": space.path,
            "space": space.raw,
            "base_config": base.to_json(),
            "corpus": data.corpus_dir,
            "synthetic": data.synthetic,
            "label_counts": data.label_counts,
            "num_layers": data.num_layers,
            **({"stage": stage} if stage else {}),
            **({PBT_POPULATION: population} if population is not None else {}),
        },
    )
