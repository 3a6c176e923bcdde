"""The Ray Tune driver: a search-space file -> OptunaSearch (+ ASHA) -> Tuner of trials, each
trial a Ray Train `TorchTrainer` run (DDP workers) reporting back through `TuneReportCallback`.

Train V2 inside Tune: the Tune trial is a thin driver function holding ~0 CPU, so that
concurrent drivers never starve the workers of CPUs; it builds a `TorchTrainer` named after the
trial id (a resumed trial finds its own checkpoints again) whose workers run `train.fit`.
A one-worker trial (launcher "auto") skips Ray Train: `train.fit` runs in the Tune trial
itself, which holds the worker's resources and reports straight to Tune.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hiersearch.data.corpus import Corpus, load_corpus_dir, write_corpus
from hiersearch.data.encode import encode
from hiersearch.errors import InputError
from hiersearch.metrics import ranking as M
from hiersearch.model.encoder import encoder_depth, tokenizer_path
from hiersearch.search.cluster import connect
from hiersearch.search.space import (
    SEED_PARAM,
    VARIANT_PARAM,
    SpaceFile,
    assignment_of,
    define_by_run,
    fixed_points,
    trial_config,
)
from hiersearch.trial.config import TrialConfig

DRIVER_CPUS = 0.01  # the trial driver only waits on its TorchTrainer
EXPERIMENT_META = "hiersearch.json"


class NonFiniteLossError(RuntimeError):
    """A trial's training loss became NaN or infinite; the trial stops with this error."""


@dataclass(frozen=True)
class PreparedData:
    """What every trial of an experiment shares: the encoded corpus and the model's shape."""

    corpus_dir: str
    encoded_path: str
    label_counts: list[int]
    num_layers: int
    synthetic: bool


def prepare_data(
    space: SpaceFile, base: TrialConfig, data_dir: str | None, data_root: str
) -> PreparedData:
    """Find or synthesize the corpus, then encode it once (cached for every trial).

    A synthetic corpus is written under `data_root` and reused by later experiments."""
    corpus_dir = data_dir or space.data.corpus or base.corpus
    corpus: Corpus
    if corpus_dir:
        corpus = load_corpus_dir(corpus_dir)
    else:
        from hiersearch.data.synth import SynthConfig, synthesize
        from hiersearch.data.vocabularies import load_hierarchy

        d = space.data
        leaves = f"-top{d.max_leaves}" if d.max_leaves else ""
        corpus_dir = str(
            Path(data_root) / f"synthetic-{d.hierarchy}-{d.docs}docs-seed{d.seed}{leaves}"
        )
        if (Path(corpus_dir) / "hierarchy.json").is_file():
            corpus = load_corpus_dir(corpus_dir)
        else:
            corpus = synthesize(
                load_hierarchy(d.hierarchy),
                SynthConfig(docs=d.docs, seed=d.seed, max_leaves=d.max_leaves),
            )
            write_corpus(corpus, corpus_dir)
    if base.levels is not None:
        corpus = corpus.truncate(*base.levels)
    # The model's config first: a missing model is then an InputError naming it (the
    # tokenizer loader would raise a bare OSError for a hub name when offline).
    num_layers = encoder_depth(base.model)
    cache_dir = base.cache_dir or str(Path(corpus_dir) / ".hiersearch-cache")
    encoded = encode(corpus, tokenizer_path(base.model), base.max_length, cache_dir)
    print(
        f"[hiersearch] corpus {corpus_dir} ({'SYNTHETIC, ' if corpus.synthetic else ''}"
        f"{sum(len(v) for v in corpus.splits.values())} docs, labels per level "
        f"{encoded.label_counts}); encoding {'cache hit' if encoded.cache_hit else 'built'} "
        f"in {encoded.seconds:.1f}s: {encoded.path}",
        flush=True,
    )
    return PreparedData(
        corpus_dir=str(Path(corpus_dir).resolve()),
        encoded_path=str(Path(encoded.path).resolve()),
        label_counts=encoded.label_counts,
        num_layers=num_layers,
        synthetic=corpus.synthetic,
    )


def in_trial(space: SpaceFile, base: TrialConfig) -> bool:
    """Whether every trial runs `train.fit` in the Tune trial itself (one worker, no DDP)."""
    return base.launcher == "auto" and base.num_workers == 1 and "num_workers" not in space.search


def _resolve(
    params: dict[str, Any], base: TrialConfig, data: PreparedData, space: SpaceFile
) -> TrialConfig:
    """The running trial's config from its parameters, saved into its directory."""
    from ray.tune.utils import flatten_dict

    # Tune nests "assign/L1_start"-style keys into {"assign": {...}}: undo that.
    params = flatten_dict(params, delimiter="/")
    assignment = assignment_of(params, data.num_layers, data.label_counts, space)
    config = trial_config(base, params, assignment).replace(corpus=data.corpus_dir)
    filesystem, trial_path = _trial_storage()
    _write_text(filesystem, f"{trial_path}/config.json", config.dumps())
    return config


def _loop_config(config: TrialConfig, data: PreparedData, space: SpaceFile) -> dict[str, Any]:
    filesystem, trial_path = _trial_storage()
    return {
        "trial": config.to_json(),
        "encoded": data.encoded_path,
        "artifacts_path": f"{trial_path}/artifacts",
        "filesystem": filesystem,
        "required_metrics": [space.tune.metric],
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
) -> None:
    """One Tune trial that trains in its own process (one worker): `train.fit` reports to
    Tune directly."""
    from hiersearch.trial.recipe import tune_worker

    config = _resolve(params, base, data, space)
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
) -> None:
    """One Tune trial: resolve its config, run a TorchTrainer, surface its failure."""
    import ray.train
    from ray import tune
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from hiersearch.trial.recipe import train_worker

    config = _resolve(params, base, data, space)
    trial_id = tune.get_context().get_trial_id()
    filesystem, trial_path = _trial_storage()
    # The driver's sliver of CPU comes out of the workers' share, so that a trial takes exactly
    # num_workers * cpus_per_worker CPUs and `max_concurrent` trials fit the cluster.
    resources = {"CPU": config.cpus_per_worker - DRIVER_CPUS / config.num_workers}
    if config.use_gpu:
        resources["GPU"] = 1
    trainer = TorchTrainer(
        train_worker,
        train_loop_config=_loop_config(config, data, space),
        torch_config=TorchConfig(backend="nccl" if config.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=config.num_workers,
            use_gpu=config.use_gpu,
            resources_per_worker=resources,
        ),
        run_config=ray.train.RunConfig(
            name=f"train_{trial_id}",
            storage_path=trial_path,
            storage_filesystem=filesystem,
            failure_config=ray.train.FailureConfig(max_failures=space.tune.worker_failures),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=config.keep_checkpoints,
                checkpoint_score_attribute=M.loss_key("dev"),
                checkpoint_score_order="min",
            ),
            callbacks=[TuneReportCallback()],
        ),
    )
    result = trainer.fit()
    # Train V2's result holds only metrics reported with a checkpoint; a diverged trial's final
    # report has none, so rank 0 leaves its final report in the artifacts as well.
    final = _read_json(filesystem, f"{trial_path}/artifacts/final_metrics.json")
    _raise_if_diverged(final or result.metrics or {}, config)


def _trial_storage() -> tuple[Any, str]:
    """(pyarrow filesystem, path) of the running trial's directory in the experiment storage."""
    from ray.train._internal.session import get_storage

    storage = get_storage()
    return storage.storage_filesystem, storage.trial_fs_path


def _read_json(filesystem: Any, path: str) -> dict[str, Any] | None:
    """A small JSON object through a pyarrow filesystem; None if absent or not an object."""
    try:
        with filesystem.open_input_stream(path) as stream:
            value = json.loads(stream.read().decode("utf-8"))
    except (FileNotFoundError, OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _write_text(filesystem: Any, path: str, text: str) -> None:
    """Write a small file through a pyarrow filesystem (local dirs and bucket URIs alike)."""
    import pyarrow.fs

    if isinstance(filesystem, pyarrow.fs.LocalFileSystem):
        from hiersearch.files import atomic_write_text

        atomic_write_text(path, text)
        return
    filesystem.create_dir(os.path.dirname(path), recursive=True)
    with filesystem.open_output_stream(path) as stream:
        stream.write(text.encode())


def trial_count(space: SpaceFile, fixed: int, trials: int | None, fixed_only: bool) -> int:
    """How many trials a run has: a grid (or fixed-only run) is its fixed points, cut to the
    first `trials` when given; a sampled search is `trials` or the space's num_samples."""
    if fixed_only or space.tune.algorithm == "grid":
        return fixed if trials is None else min(trials, fixed)
    return trials or space.tune.num_samples


def max_concurrent(base: TrialConfig, cap: int | None) -> int:
    """How many trials fit the cluster at once, given the per-trial scaling."""
    import ray

    resources = ray.cluster_resources()
    fits = math.floor(resources.get("CPU", 1) / (base.num_workers * base.cpus_per_worker) + 1e-9)
    if base.use_gpu:
        fits = min(fits, math.floor(resources.get("GPU", 0) / base.num_workers + 1e-9))
    fits = max(1, fits)
    return min(fits, cap) if cap else fits


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
) -> str:
    """Run (or resume) an experiment; returns its directory (path or URI)."""
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    if seeds is not None:
        space = _with_seeds(space, seeds)
    name = name or space.name
    path = experiment_path(storage, name)
    if resume:
        from ray.tune import Tuner

        if not Tuner.can_restore(path):
            raise InputError("no experiment to resume at this path", where=f"--resume {path}")
        space, base, data_dir = _resume_settings(path, space, model, data_dir)
    else:
        _check_space(space)
        base = space.base_config(model=model)
    data_root = os.environ.get("HIERSEARCH_DATA") or (
        "runs/_data" if "://" in storage else str(Path(storage) / "_data")
    )
    data = prepare_data(space, base, data_dir, data_root)
    if not resume:
        # Everything a trial resolves from the space is resolved once here, before Ray
        # starts: bad input fails the command (exit 2), not each trial after minutes.
        points = fixed_points(space, data.num_layers, data.label_counts)
        define = define_by_run(space, data.num_layers, data.label_counts)
        _check_trials(space, base, data, points)
    connect(address)
    direct = in_trial(space, base)
    resources: dict[str, float] = {"cpu": DRIVER_CPUS}
    if direct:  # the trial is the worker
        resources = {"cpu": base.cpus_per_worker, "gpu": 1 if base.use_gpu else 0}
    trainable = tune.with_resources(
        tune.with_parameters(
            trial_in_process if direct else trial_driver, base=base, data=data, space=space
        ),
        resources,
    )
    if resume:
        tuner = Tuner.restore(
            path, trainable, resume_unfinished=True, resume_errored=False, restart_errored=False
        )
        tuner.fit()
        return path

    num_samples = trial_count(space, len(points), trials, fixed_only)
    sampler = (
        optuna.samplers.RandomSampler(seed=space.tune.sampler_seed)
        if space.tune.algorithm == "random"
        else optuna.samplers.TPESampler(seed=space.tune.sampler_seed)
    )
    search_alg = OptunaSearch(
        space=define,
        metric=space.tune.metric,
        mode=space.tune.mode,
        points_to_evaluate=points[:num_samples] or None,
        sampler=sampler,
    )
    scheduler = None
    if space.tune.scheduler == "asha":
        scheduler = ASHAScheduler(
            time_attr="training_iteration",
            # Reports are the epochs, then a final one (test + utilization). At max_t ASHA
            # *stops* a trial; at epochs + 1 that would kill every completing trial during
            # its Train teardown, so max_t lies one past the last report.
            max_t=base.epochs + 2,
            grace_period=space.tune.grace_period,
            reduction_factor=space.tune.reduction_factor,
        )
    _write_meta(path, space, data, base)
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=search_alg,
            scheduler=scheduler,
            metric=space.tune.metric,
            mode=space.tune.mode,
            num_samples=num_samples,
            max_concurrent_trials=max_concurrent(base, space.tune.max_concurrent),
            # A trial that trains in its own process leaves torch, transformers and the
            # compiled metric kernels imported: the next trial starts warm in it.
            reuse_actors=direct,
            trial_name_creator=lambda t: f"trial_{t.trial_id}",
            trial_dirname_creator=lambda t: f"trial_{t.trial_id}",
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage_uri(storage),
            # A trial that trains in its own process has no Ray Train to restart its worker:
            # Tune's retries (from the last checkpoint) stand in for worker_failures.
            failure_config=tune.FailureConfig(
                max_failures=space.tune.max_failures + direct * space.tune.worker_failures
            ),
            # What Ray Train's CheckpointConfig does for a TorchTrainer trial, for a trial that
            # reports to Tune itself (the others report no checkpoint to Tune).
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=base.keep_checkpoints,
                checkpoint_score_attribute=M.loss_key("dev"),
                checkpoint_score_order="min",
            ),
            progress_reporter=_reporter(space, data),
            verbose=verbose,
        ),
    )
    tuner.fit()
    return path


# TrialConfig fields that shape the encoded corpus: it is encoded once per experiment (with
# the trial section's values), so searching them would change nothing.
PER_EXPERIMENT_FIELDS = ("corpus", "levels", "max_length", "cache_dir")


def _check_space(space: SpaceFile) -> None:
    """What `parse_space` accepts but a search would silently ignore."""
    if "assignment" in space.trial:
        raise InputError(
            "not used: each trial's assignment comes from the assignment section "
            "(space: variants or monotone; variants: [...])",
            where=f"{space.path}: trial: assignment",
        )
    if "launcher" in space.search:
        raise InputError(
            "cannot be searched: it decides how every trial of the experiment runs",
            where=f"{space.path}: search: launcher",
        )
    for key in PER_EXPERIMENT_FIELDS:
        if key in space.search:
            raise InputError(
                "cannot be searched: the corpus is encoded once per experiment; set it in "
                "the trial section (or run one experiment per value)",
                where=f"{space.path}: search: {key}",
            )


def _check_trials(
    space: SpaceFile, base: TrialConfig, data: PreparedData, points: list[dict[str, Any]]
) -> None:
    """Resolve every fixed trial as its driver will, and every searched backbone, against the
    model depth and the corpus levels: an InputError here costs no Ray start."""
    from hiersearch.trial.recipe import resolve_assignment

    for point in points:
        assignment = assignment_of(point, data.num_layers, data.label_counts, space)
        config = trial_config(base, point, assignment)
        resolve_assignment(config.assignment, data.num_layers, data.label_counts)
    model_dist = space.search.get("model") or {}
    for choice in model_dist.get("choices") or []:
        where = f"{space.path}: search: model"
        depth = encoder_depth(str(choice))
        if depth != data.num_layers:  # assignments are drawn for one depth
            raise InputError(
                f"model {choice!r} has {depth} layers, the experiment's base model "
                f"{base.model!r} has {data.num_layers}",
                where=where,
            )
        if tokenizer_path(str(choice)) != tokenizer_path(base.model):
            raise InputError(
                f"model {choice!r} has another tokenizer than the base model {base.model!r}, "
                "whose tokens the corpus is encoded with",
                where=where,
            )


def read_meta(path: str) -> dict[str, Any] | None:
    """An experiment's `hiersearch.json` (path or URI); None when there is none."""
    import pyarrow.fs

    filesystem, fs_path = pyarrow.fs.FileSystem.from_uri(
        path if "://" in path else f"file://{os.path.abspath(path)}"
    )
    where = f"{path.rstrip('/')}/{EXPERIMENT_META}"
    try:
        with filesystem.open_input_stream(f"{fs_path}/{EXPERIMENT_META}") as stream:
            text = stream.read().decode("utf-8")
    except (FileNotFoundError, OSError):
        return None
    try:
        meta = json.loads(text)
    except ValueError as exc:
        raise InputError(f"not JSON ({exc})", where=where) from None
    if not isinstance(meta, dict):
        raise InputError("expected a JSON object", where=where)
    return meta


def _resume_settings(
    path: str, space: SpaceFile, model: str | None, data_dir: str | None
) -> tuple[SpaceFile, TrialConfig, str | None]:
    """The space, base config and corpus the experiment at `path` was started with, so that
    its remaining trials run exactly like its finished ones whatever the resuming command
    line says; a --model or --data that contradicts them is an InputError."""
    from hiersearch.search.space import parse_space

    meta = read_meta(path)
    if meta is None:  # an experiment from before hiersearch.json: trust the command line
        return space, space.base_config(model=model), data_dir
    where = f"{path.rstrip('/')}/{EXPERIMENT_META}"
    try:
        stored = parse_space(meta["space"], str(meta.get("space_file") or where))
        base = TrialConfig.from_dict(meta["base_config"], where=f"{where}: base_config")
        corpus = str(meta["corpus"])
    except (KeyError, TypeError) as exc:
        raise InputError(f"missing or malformed key {exc}", where=where) from None
    if model is not None and model != base.model:
        raise InputError(
            f"the experiment being resumed uses model {base.model!r}; drop --model or start "
            "a new experiment (--name)",
            where="--model",
        )
    if data_dir is not None and Path(data_dir).resolve() != Path(corpus).resolve():
        raise InputError(
            f"the experiment being resumed uses the corpus {corpus}; drop --data or start a "
            "new experiment (--name)",
            where="--data",
        )
    return stored, base, corpus


def _with_seeds(space: SpaceFile, seeds: int) -> SpaceFile:
    from dataclasses import replace

    if seeds < 1:
        raise InputError("must be >= 1", where="--seeds")
    return replace(space, tune=replace(space.tune, seeds=seeds))


def _reporter(space: SpaceFile, data: PreparedData) -> Any:
    from ray.tune import CLIReporter

    levels = len(data.label_counts)
    columns = {M.EPOCH: "epoch", M.loss_key("dev"): "dev loss"}
    columns.update({M.rp_level_key("dev", n): f"RP L{n}" for n in range(1, levels + 1)})
    columns.update({M.rp_micro_key("dev"): "RP micro", M.rp_macro_key("dev"): "RP macro"})
    params = [*space.search, SEED_PARAM]
    if space.assignment.space == "variants":
        params.insert(0, VARIANT_PARAM)
    return CLIReporter(
        metric_columns=columns,
        parameter_columns=params,
        max_report_frequency=10,
        sort_by_metric=True,
    )


def _write_meta(path: str, space: SpaceFile, data: PreparedData, base: TrialConfig) -> None:
    import pyarrow.fs

    meta = {
        "name": Path(path).name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "metric": space.tune.metric,
        "mode": space.tune.mode,
        "space_file": space.path,
        "space": space.raw,
        "base_config": base.to_json(),
        "corpus": data.corpus_dir,
        "synthetic": data.synthetic,
        "label_counts": data.label_counts,
        "num_layers": data.num_layers,
    }
    text = json.dumps(meta, indent=2, default=str) + "\n"
    if "://" in path:
        filesystem, fs_path = pyarrow.fs.FileSystem.from_uri(path)
        _write_text(filesystem, f"{fs_path}/{EXPERIMENT_META}", text)
    else:
        _write_text(pyarrow.fs.LocalFileSystem(), f"{path}/{EXPERIMENT_META}", text)


def trial_params_columns(space: SpaceFile) -> Sequence[str]:
    return [*space.search, SEED_PARAM]
