"""The one builder of a search's Ray Tune objects: the searcher (OptunaSearch over the
define-by-run space, its Optuna sampler) or PBT's population, the scheduler (ASHA, MO-ASHA for
several metrics, PBT), the checkpoint policy, TuneConfig, RunConfig, the progress reporter, and
the Tuner of a new or a resumed experiment.

What differs between a PBT search and every other is asked of one object, the search plan:
search/pbt.py's `Population` or `IndependentTrials` below (`search_plan`, `kept_plan`).
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from hiersearch import metrics as M
from hiersearch.data.prepare import PreparedData
from hiersearch.report.study import StudyStorage
from hiersearch.search.concurrency import trials_at_once
from hiersearch.search.space import SEED_PARAM, VARIANT_PARAM, SpaceFile, TuneSpec, seed_values
from hiersearch.search.trainable import TrialPlan, in_trial, trainable
from hiersearch.trial.config import TrialConfig

__all__ = [
    "IndependentTrials",
    "SearchPlan",
    "TunerBuilder",
    "kept_plan",
    "max_concurrent",
    "sampler",
    "search_plan",
]

# Tune snapshots the experiment every `num_to_keep` (trial.keep_checkpoints) checkpoints of a
# trial, so that a resume finds the checkpoints it kept; with the presets' 1 that is every
# epoch, and Tune then warns at every epoch that snapshots come often. They are meant to.
_SNAPSHOT_WARNING_ENV = "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S"


class SearchPlan(TrialPlan, Protocol):
    """What the builder asks of a search: a PBT one (`pbt.Population`) or any other
    (`IndependentTrials`)."""

    def tune_search(
        self, optuna: Callable[[], Any], num_samples: int, concurrent: int
    ) -> dict[str, Any]:
        """TuneConfig's search_alg, num_samples and max_concurrent_trials; `optuna` builds
        the OptunaSearch when the plan uses one."""
        ...

    def param_space(self) -> dict[str, Any] | None: ...

    def scheduler(self, base: TrialConfig) -> Any: ...

    def report_columns(self, columns: dict[str, str]) -> tuple[dict[str, str], list[str]]:
        """The progress table's (metric columns, parameter columns)."""
        ...

    def kept(self) -> dict[str, Any]:
        """What hiersearch.json keeps of the plan for a resume."""
        ...


@dataclass(frozen=True)
class IndependentTrials:
    """Every search but PBT: each trial trains from its own start, at a point the searcher
    chose, until its end or its scheduler (ASHA) stops it."""

    space: SpaceFile

    exploits: ClassVar[bool] = False

    def trial_params(self, params: dict[str, Any]) -> dict[str, Any]:
        return params

    def checkpoint_policy(self, base: TrialConfig) -> dict[str, Any]:
        """A trial's `keep_checkpoints` best by dev loss."""
        return {
            "num_to_keep": base.keep_checkpoints,
            "checkpoint_score_attribute": M.loss_key("dev"),
            "checkpoint_score_order": "min",
        }

    def tune_search(
        self, optuna: Callable[[], Any], num_samples: int, concurrent: int
    ) -> dict[str, Any]:
        return {"search_alg": optuna(), "num_samples": num_samples,
                "max_concurrent_trials": concurrent}

    def param_space(self) -> None:
        return None  # the searcher's define-by-run function is the space

    def scheduler(self, base: TrialConfig) -> Any:
        """ASHA when the space asks for it (MO-ASHA for several metrics), else None (every
        trial runs to its end)."""
        from ray.tune.schedulers import ASHAScheduler

        from hiersearch.search.moasha import MOASHAScheduler

        tune = self.space.tune
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

    def report_columns(self, columns: dict[str, str]) -> tuple[dict[str, str], list[str]]:
        params = [*self.space.search, SEED_PARAM]
        if self.space.assignment.space == "variants":
            params.insert(0, VARIANT_PARAM)
        else:  # the sampled blocks are many parameters; the trial reports them as one string
            columns = {M.TRIAL_ASSIGNMENT: "assignment", **columns}
        return columns, params

    def kept(self) -> dict[str, Any]:
        return {}


def search_plan(
    space: SpaceFile, define: Any, points: list[dict[str, Any]], num_samples: int
) -> SearchPlan:
    """A new search's plan: PBT's population drawn now (search/pbt.py), or independent
    trials."""
    if space.tune.scheduler == "pbt":
        from hiersearch.search.pbt import Population

        return Population.draw(space, define, points, num_samples, sampler(space.tune))
    return IndependentTrials(space)


def kept_plan(space: SpaceFile, meta: dict[str, Any] | None) -> SearchPlan:
    """A resumed search's plan, from what its hiersearch.json kept."""
    if space.tune.scheduler == "pbt":
        from hiersearch.search.pbt import Population

        population = Population.kept_in(meta, space)
        if population is not None:
            return population
    return IndependentTrials(space)


def optuna_searcher(
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


def max_concurrent(base: TrialConfig, cap: int | None, trials: int | None = None) -> int:
    """How many trials run at once (search/concurrency.py) on the joined cluster, now and at
    the largest its autoscaler may grow it to; said on stderr, with why."""
    import ray

    from hiersearch.search.cluster import largest_cluster

    count, message = trials_at_once(base, ray.cluster_resources(), largest_cluster(), cap, trials)
    print(message, file=sys.stderr)
    return count


def quiet_forced_snapshots() -> None:
    """Turn Tune's warning about frequent experiment snapshots off, unless the user set it."""
    os.environ.setdefault(_SNAPSHOT_WARNING_ENV, "0")


@dataclass(frozen=True)
class TunerBuilder:
    """The Tune objects of one experiment: its space, base config, prepared data and plan."""

    space: SpaceFile
    base: TrialConfig
    data: PreparedData
    plan: SearchPlan

    def trainable(self) -> Any:
        return trainable(self.space, self.base, self.data, self.plan)

    def restore(self, path: str) -> Any:
        """The interrupted experiment's Tuner: unfinished trials resume, errored ones stay."""
        from ray.tune import Tuner

        return Tuner.restore(
            path, self.trainable(), resume_unfinished=True, resume_errored=False,
            restart_errored=False,
        )

    def tuner(
        self,
        *,
        define: Any,
        points: list[dict[str, Any]],
        study: StudyStorage,
        num_samples: int,
        name: str,
        storage_path: str,
        verbose: int,
        callbacks: list[Any],
        stop: Any = None,
    ) -> Any:
        """A new experiment's Tuner of `num_samples` trials, the fixed `points` first."""
        from ray import tune

        optuna = functools.partial(
            optuna_searcher, self.space, define, points[:num_samples], study
        )
        concurrent = max_concurrent(self.base, self.space.tune.max_concurrent, num_samples)
        return tune.Tuner(
            self.trainable(),
            param_space=self.plan.param_space(),
            tune_config=self._tune_config(optuna, num_samples, concurrent),
            run_config=self._run_config(name, storage_path, verbose, callbacks, stop),
        )

    def _tune_config(self, optuna: Callable[[], Any], num_samples: int, concurrent: int) -> Any:
        from ray import tune

        return tune.TuneConfig(
            **self.plan.tune_search(optuna, num_samples, concurrent),
            scheduler=self.plan.scheduler(self.base),
            # several metrics: the first orders the progress table (the searcher has them all)
            metric=self.space.tune.metrics[0],
            mode=self.space.tune.modes[0],
            # A trial that trains in its own process leaves torch, transformers and the
            # compiled metric kernels imported: the next trial starts warm in it.
            reuse_actors=in_trial(self.space, self.base),
            trial_name_creator=lambda t: f"trial_{t.trial_id}",
            trial_dirname_creator=lambda t: f"trial_{t.trial_id}",
        )

    def _run_config(
        self, name: str, storage_path: str, verbose: int, callbacks: list[Any], stop: Any
    ) -> Any:
        from ray import tune

        from hiersearch.search.recovery import PrunedCheckpointRepair

        settings = self.space.tune
        direct = in_trial(self.space, self.base)
        return tune.RunConfig(
            name=name,
            storage_path=storage_path,
            # A trial that trains in its own process has no Ray Train to restart its worker:
            # Tune's retries (from the last checkpoint) stand in for worker_failures.
            failure_config=tune.FailureConfig(
                max_failures=settings.max_failures + direct * settings.worker_failures
            ),
            # What Ray Train's CheckpointConfig does for a TorchTrainer trial, for a trial that
            # reports to Tune itself (the others report no checkpoint to Tune).
            checkpoint_config=tune.CheckpointConfig(**self.plan.checkpoint_policy(self.base)),
            progress_reporter=self.reporter(),
            verbose=verbose,
            # a resume whose saved state names a checkpoint Tune had pruned goes on from the
            # one that replaced it (kept with the experiment: Tune restores its callbacks)
            callbacks=[PrunedCheckpointRepair(), *callbacks],
            stop=stop,
        )

    def reporter(self) -> Any:
        """The progress table: epoch, dev loss, R-Precision per level, micro and macro, the
        searched metrics, and the plan's columns."""
        from ray.tune import CLIReporter

        levels = len(self.data.label_counts)
        columns = {M.EPOCH: "epoch", M.loss_key("dev"): "dev loss"}
        columns.update({M.rp_level_key("dev", n): f"RP L{n}" for n in range(1, levels + 1)})
        columns.update({M.rp_micro_key("dev"): "RP micro", M.rp_macro_key("dev"): "RP macro"})
        for metric in self.space.tune.metrics:  # e.g. a cost a multi-objective search minimizes
            columns.setdefault(metric, metric)
        columns, params = self.plan.report_columns(columns)
        return CLIReporter(
            metric_columns=columns,
            parameter_columns=params,
            max_report_frequency=10,
            sort_by_metric=True,
        )
