"""The Ray Tune driver: a search-space file -> OptunaSearch (+ ASHA) -> Tuner of trials, each
trial a Ray Train `TorchTrainer` run (DDP workers) reporting back through `TuneReportCallback`.

Train V2 inside Tune: the Tune trial is a thin driver function holding ~0 CPU, so that
concurrent drivers never starve the workers of CPUs; it builds a `TorchTrainer` named after the
trial id (a resumed trial finds its own checkpoints again) whose workers run `train.fit`.
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

from hiersearch import metrics as M
from hiersearch.config import TrialConfig
from hiersearch.corpus import Corpus, load_corpus_dir, write_corpus
from hiersearch.encode import encode
from hiersearch.errors import InputError
from hiersearch.model import encoder_depth, tokenizer_path
from hiersearch.space import (
    SEED_PARAM,
    VARIANT_PARAM,
    SpaceFile,
    assignment_of,
    define_by_run,
    fixed_points,
    trial_config,
)

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


def prepare_data(space: SpaceFile, base: TrialConfig, data_dir: str | None) -> PreparedData:
    """Find or synthesize the corpus, then encode it once (cached for every trial)."""
    corpus_dir = data_dir or space.data.corpus or base.corpus
    corpus: Corpus
    if corpus_dir:
        corpus = load_corpus_dir(corpus_dir)
    else:
        from hiersearch.hierarchy import load_hierarchy
        from hiersearch.synth import SynthConfig, synthesize

        d = space.data
        corpus_dir = str(
            Path(os.environ.get("HIERSEARCH_DATA", "runs/_data"))
            / f"synthetic-{d.hierarchy}-{d.docs}docs-seed{d.seed}"
            + (f"-top{d.max_leaves}" if d.max_leaves else "")
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
        num_layers=encoder_depth(base.model),
        synthetic=corpus.synthetic,
    )


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

    from hiersearch.train import STOP_NAN, train_worker

    assignment = assignment_of(params, data.num_layers, data.label_counts, space)
    config = trial_config(base, params, assignment).replace(corpus=data.corpus_dir)
    trial_id = tune.get_context().get_trial_id()
    filesystem, trial_path = _trial_storage()
    _write_text(filesystem, f"{trial_path}/config.json", config.dumps())
    resources = {"CPU": config.cpus_per_worker}
    if config.use_gpu:
        resources["GPU"] = 1
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={
            "trial": config.to_json(),
            "encoded": data.encoded_path,
            "artifacts_path": f"{trial_path}/artifacts",
            "filesystem": filesystem,
        },
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
    final = result.metrics or {}
    if final.get(M.TRIAL_STOP_REASON) == STOP_NAN:
        raise NonFiniteLossError(
            f"non-finite training loss in epoch {final.get(M.EPOCH)}: trial stopped "
            f"(lr={config.lr}, assignment={config.assignment})"
        )


def _trial_storage() -> tuple[Any, str]:
    """(pyarrow filesystem, path) of the running trial's directory in the experiment storage."""
    from ray.train._internal.session import get_storage

    storage = get_storage()
    return storage.storage_filesystem, storage.trial_fs_path


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


def connect(address: str | None) -> None:
    """Join the cluster at `address` / RAY_ADDRESS, or start a local Ray."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init()


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
    base = space.base_config(model=model)
    name = name or space.name
    path = experiment_path(storage, name)
    data = prepare_data(space, base, data_dir)
    connect(address)
    trainable = tune.with_resources(
        tune.with_parameters(trial_driver, base=base, data=data, space=space),
        {"cpu": DRIVER_CPUS},
    )
    if resume:
        from ray.tune import Tuner

        if not Tuner.can_restore(path):
            raise InputError("no experiment to resume at this path", where=f"--resume {path}")
        tuner = Tuner.restore(
            path, trainable, resume_unfinished=True, resume_errored=False, restart_errored=False
        )
        tuner.fit()
        return path

    points = fixed_points(space, data.num_layers, data.label_counts)
    if fixed_only or space.tune.algorithm == "grid":
        num_samples = len(points)
    else:
        num_samples = trials or space.tune.num_samples
    sampler = (
        optuna.samplers.RandomSampler(seed=space.tune.sampler_seed)
        if space.tune.algorithm == "random"
        else optuna.samplers.TPESampler(seed=space.tune.sampler_seed)
    )
    search_alg = OptunaSearch(
        space=define_by_run(space, data.num_layers, data.label_counts),
        metric=space.tune.metric,
        mode=space.tune.mode,
        points_to_evaluate=points[:num_samples] or None,
        sampler=sampler,
    )
    scheduler = None
    if space.tune.scheduler == "asha":
        scheduler = ASHAScheduler(
            time_attr="training_iteration",
            max_t=base.epochs + 1,  # the final report (test + utilization) is one more
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
            trial_name_creator=lambda t: f"trial_{t.trial_id}",
            trial_dirname_creator=lambda t: f"trial_{t.trial_id}",
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage_uri(storage),
            failure_config=tune.FailureConfig(max_failures=space.tune.max_failures),
            progress_reporter=_reporter(space, data),
            verbose=verbose,
        ),
    )
    tuner.fit()
    return path


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
