"""Running an experiment: a search-space file and the run's options (`RunOptions`) -> the checks
and the corpus (search/preflight.py) -> the Tune objects (search/tuner.py) -> a Tuner run, or a
resumed one; a space with a `screen:` section as its two stages (search/stages.py).
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from hiersearch import metrics as M
from hiersearch.data.corpus import Corpus
from hiersearch.errors import InputError
from hiersearch.report.experiment import read_meta, write_experiment_meta
from hiersearch.report.study import open_storage
from hiersearch.search.cluster import cluster_address, connect
from hiersearch.search.concurrency import trial_count
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
from hiersearch.search.space import SpaceFile, define_by_run, fixed_points
from hiersearch.search.tuner import TunerBuilder, kept_plan, quiet_forced_snapshots, search_plan

__all__ = ["RunOptions", "experiment_path", "run_search", "run_two_stage", "storage_uri"]


@dataclass(frozen=True)
class RunOptions:
    """How a search runs, besides its space file: the command line's options.

    `stop`: a Ray Tune stopper (or its dict / function form), e.g. a compute budget.
    `study_storage`: an SQLAlchemy URL for the Optuna study (default: a SQLite file in the
    experiment directory; a resumed experiment keeps the study its searcher saved). `mlflow`:
    a tracking URI (default $HIERSEARCH_MLFLOW_URI) that every trial is logged to as a run; a
    resumed experiment keeps the tracking it was started with."""

    storage: str = "runs"
    name: str | None = None  # default: the space's name
    trials: int | None = None  # default: the space's num_samples (a grid: its points)
    resume: bool = False
    address: str | None = None  # the Ray cluster (default: a local Ray, or $RAY_ADDRESS)
    data_dir: str | None = None
    model: str | None = None
    fixed_only: bool = False
    seeds: int | None = None
    verbose: int = 1
    stop: Any = None
    study_storage: str | None = None
    mlflow: str | None = None


def storage_uri(storage: str) -> str:
    """Tune wants an absolute path or a URI."""
    if "://" in storage:
        return storage
    return str(Path(storage).expanduser().resolve())


def experiment_path(storage: str, name: str) -> str:
    return f"{storage_uri(storage).rstrip('/')}/{name}"


def run_search(space: SpaceFile, options: RunOptions | None = None, **given: Any) -> str:
    """Run (or resume) an experiment; returns its directory (path or URI). `given`: options
    (`RunOptions`' fields) over `options`. A space with a `screen:` section runs as two
    stages in it (`run_two_stage`)."""
    options = replace(options or RunOptions(), **given)
    if options.seeds is not None:
        space = with_seeds(space, options.seeds)
    if space.screen is None:
        return run_experiment(space, options)
    check_destination(options.storage, options.name or space.name, _name_where(space, options))
    return run_two_stage(space, options)


def _name_where(space: SpaceFile, options: RunOptions) -> str:
    return "--name" if options.name else f"{space.path}: name"


def run_experiment(space: SpaceFile, options: RunOptions, stage: str | None = None) -> str:
    """One experiment (`stage`: which stage of a two-stage search it is, kept in its
    hiersearch.json), new or resumed; returns its directory."""
    name = options.name or space.name
    check_destination(options.storage, name, _name_where(space, options))
    path = experiment_path(options.storage, name)
    if options.resume:
        return _resume(space, options, path)
    return _start(space, options, name, path, stage)


def _resume(space: SpaceFile, options: RunOptions, path: str) -> str:
    """Go on with the interrupted experiment at `path`, with the settings it was started
    with."""
    _check_resumable(path)
    space, base, data_dir = resume_settings(path, space, options.model, options.data_dir)
    check_gpus(space, base, local=cluster_address(options.address) is None)
    root = data_root(options.storage)
    plan = plan_data(space, base, data_dir, root)
    quiet_forced_snapshots()
    data = prepare_data(space, base, data_dir, root, plan)
    _baseline(path, plan.corpus.corpus)  # an experiment from before baselines gets one
    connect(options.address)
    builder = TunerBuilder(space, base, data, kept_plan(space, read_meta(path)))
    builder.restore(path).fit()
    return path


def _start(
    space: SpaceFile, options: RunOptions, name: str, path: str, stage: str | None
) -> str:
    """A new experiment at `path`."""
    callbacks = _tracking(options.mlflow, name, path)
    check_space(space)
    base = space.base_config(model=options.model)
    check_gpus(space, base, local=cluster_address(options.address) is None)
    root = data_root(options.storage)
    plan = plan_data(space, base, options.data_dir, root)
    quiet_forced_snapshots()
    # Everything a trial resolves from the space is resolved once here, before anything is
    # written and Ray starts: bad input fails the command (exit 2), not each trial after minutes.
    points = fixed_points(space, plan.num_layers, plan.label_counts)
    define = define_by_run(space, plan.num_layers, plan.label_counts)
    check_trials(space, base, plan, points)
    # the study storage before the corpus: a bad --study-storage leaves nothing written
    study = open_storage(path, name, options.study_storage, space.tune.modes)
    if study.url is None:
        print(f"note: the Optuna study of {path} is kept in memory (no SQLite file in a "
              "bucket): pass --study-storage URL to keep it", file=sys.stderr)
    data = prepare_data(space, base, options.data_dir, root, plan)
    connect(options.address)
    num_samples = trial_count(space, len(points), options.trials, options.fixed_only)
    builder = TunerBuilder(space, base, data, search_plan(space, define, points, num_samples))
    write_experiment_meta(
        path, metrics=space.tune.metrics, modes=space.tune.modes, study=study.to_json(),
        space_file=space.path, space=space.raw, base_config=base.to_json(),
        corpus=data.corpus_dir, synthetic=data.synthetic, label_counts=data.label_counts,
        num_layers=data.num_layers, stage=stage, kept=builder.plan.kept(),
    )
    _baseline(path, plan.corpus.corpus)
    tuner = builder.tuner(
        define=define, points=points, study=study, num_samples=num_samples, name=name,
        storage_path=storage_uri(options.storage), verbose=options.verbose,
        callbacks=callbacks, stop=options.stop,
    )
    tuner.fit()
    return path


def run_two_stage(space: SpaceFile, options: RunOptions) -> str:
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
        screen_heads,
        screen_size,
        screen_trials,
        screening_space,
        top_assignments,
        unfinished,
    )

    root = experiment_path(options.storage, options.name or space.name)
    screen_path = experiment_path(root, SCREEN)
    if options.resume and not Tuner.can_restore(screen_path):
        raise InputError(
            "no two-stage experiment to resume at this path", where=f"--resume {root}"
        )
    base = space.base_config(model=options.model)
    plan = plan_data(space, base, options.data_dir, data_root(options.storage))
    screen = screening_space(space, plan.num_layers, len(plan.label_counts))
    write_planned(plan.corpus)
    # Each stage runs as its space says (the seeds are in it already), on the one corpus;
    # --fixed-only and a stopper are a one-experiment run's.
    common = replace(options, storage=root, data_dir=plan.corpus.corpus_dir, seeds=None,
                     fixed_only=False, stop=None)
    run_experiment(screen, replace(common, name=SCREEN, trials=screen_trials(space)), SCREEN)
    finetune = replace(common, name=FINETUNE)
    if options.resume and Tuner.can_restore(experiment_path(root, FINETUNE)):
        run_experiment(space, finetune, FINETUNE)  # its assignments are in its own meta
        return root
    table = load_experiments([screen_path])
    if unfinished(table, screen_size(screen)):  # Ctrl-C, a lost driver: stage 2 needs it all
        print(f"[hiersearch] stage 1 (screen) did not finish: {root} --resume goes on with it",
              file=sys.stderr, flush=True)
        return root
    metric, mode = space.tune.metrics[0], space.tune.modes[0]
    top = top_assignments(table, metric, mode, space.screen.top_k)
    heads = screen_heads(table, top, metric, mode) if space.screen.warm_start else {}
    print(f"[hiersearch] stage 2 fine-tunes the screen's {len(top)} best assignments by "
          f"{metric}: {', '.join(top)}; {len(heads)} of them from the heads their screen "
          "trial trained" + ("" if space.screen.warm_start else " (screen: warm_start: false)"),
          flush=True)
    run_experiment(finetune_space(space, top, heads), replace(finetune, resume=False), FINETUNE)
    return root


def _tracking(uri: str | None, name: str, path: str) -> list[Any]:
    """The MLflow callbacks of a new experiment (search/tracking.py); checked before Ray
    starts."""
    from hiersearch.search.tracking import MLFLOW_URI_ENV, mlflow_callbacks

    return mlflow_callbacks(uri or os.environ.get(MLFLOW_URI_ENV), name, path)


def _baseline(path: str, corpus: Corpus) -> None:
    """The experiment's baseline row (TF-IDF k-NN on its training documents,
    report/baseline.py), computed once: seconds, before the first trial starts."""
    from hiersearch.report.baseline import (
        baseline_with_scores,
        read_baseline,
        write_baseline,
        write_baseline_scores,
    )

    if read_baseline(path) is not None:
        return
    baseline, scores = baseline_with_scores(corpus)
    write_baseline_scores(path, scores)  # an ensemble's member (report/ensemble.py)
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
