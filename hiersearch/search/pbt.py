"""Population-based training as a Ray Tune scheduler: Ray's `PopulationBasedTraining`, with
what a hiersearch population needs (`tune.scheduler: pbt`, settings `PbtSpec`).

- Mutations stay in the space: a perturbed value (x0.8 / x1.2) is clipped to its `search:`
  range, so an exploited trial never runs a learning rate the file ruled out.
- A recipient takes its donor's newest checkpoint, as it stands at the exploit: Ray's PBT
  asks a top trial to save at each perturbation, which Tune mishandles for a trial that
  reports its own checkpoints (`_checkpoint_or_exploit`).
- An exploit pins that checkpoint: it is copied into the recipient's own trial directory
  (`pbt_donor_<n>/`) when the exploit is decided. Tune keeps only a trial's newest few
  checkpoints (`Population.checkpoint_policy`), and a recipient that waits for resources
  while its donor trains on would otherwise find the donor's checkpoint deleted (Ray issues
  8441, 9036). The previous copy goes at the recipient's next exploit, or when it ends.
- A trial's final report (test metrics, after training) decides nothing: there is no
  training left to exploit into.
- A Ray Train (DDP) trial gives the checkpoint its last report names (Tune holds none of its
  checkpoints); an exploiting one starts a Train run of its own from the copy
  (search/trainable.py's `train_run_name`), whose workers read it (`RaySession`).

What the recipient does with the donor's checkpoint (weights, optimizer, schedule, RNG, the
best-epoch bookkeeping; the exploit recorded as `pbt/exploits`) is the recipe's restore
(trial/recipe.py); the checkpoint's files, the donor copy's name and the lineage are
trial/checkpoint.py's. What the Tune builder (search/tuner.py) and a trial (search/trainable.py)
ask of a PBT search is one object, `Population`. This module imports Ray.
"""

from __future__ import annotations

import logging
import math
import random
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from ray.tune.schedulers import PopulationBasedTraining, TrialScheduler

from hiersearch import metrics as M
from hiersearch.report.experiment import PBT_POPULATION
from hiersearch.search.dimension import Dimension
from hiersearch.search.space import MEMBER_PARAM as MEMBER
from hiersearch.search.space import PbtSpec, SpaceFile
from hiersearch.trial.checkpoint import DONOR_PREFIX, donor_copy_path
from hiersearch.trial.config import TrialConfig

__all__ = [
    "DONOR_PREFIX",
    "PinnedPBT",
    "Population",
    "initial_population",
    "member_params",
    "mutations",
    "population_space",
]

logger = logging.getLogger(__name__)

# What a top trial offers its population at a perturbation (Ray's `last_checkpoint`): its
# newest checkpoint when a recipient takes it, not one saved for the occasion.
NEWEST = "newest"


def mutations(search: Mapping[str, Dimension]) -> dict[str, Any]:
    """Ray's `hyperparam_mutations` of a `search:` section: ranges as Tune domains (perturbed
    by a factor, or resampled), choices and integers as lists (shifted to a neighbour)."""
    from ray import tune

    out: dict[str, Any] = {}
    for key, dimension in search.items():
        values = dimension.pbt_values()
        if values is not None:
            out[key] = values
        else:
            domain = tune.loguniform if dimension.log else tune.uniform
            out[key] = domain(dimension.low, dimension.high)
    return out


def initial_population(
    define: Any, points: list[dict[str, Any]], size: int, sampler: Any
) -> list[dict[str, Any]]:
    """The population's starting configs: the fixed points (variants, grid, seeds) first, then
    draws of the space by the search's sampler. Ray's PBT takes no searcher (it refuses one:
    a searcher would be told results of configs that PBT has since changed), so the draws are
    made here, up front, by the same define-by-run function and sampler as any search."""
    import optuna

    study = optuna.create_study(sampler=sampler)
    for point in points[:size]:
        study.enqueue_trial(point)
    population = []
    for _ in range(size):
        trial = study.ask()
        define(trial)
        population.append(dict(trial.params))
    return population


class _Pick:
    """`tune.sample_from`: a member's starting value of one mutated key (picklable)."""

    def __init__(self, population: list[dict[str, Any]], key: str) -> None:
        self.values = [member[key] for member in population]

    def __call__(self, config: dict[str, Any]) -> Any:
        # the resolved config (Tune's deprecated form took a spec, with a warning per trial)
        return self.values[config[MEMBER]]


def population_space(
    population: list[dict[str, Any]], search: Mapping[str, Dimension]
) -> dict[str, Any]:
    """Tune's param space of a population: one trial per member (a grid over `MEMBER`), with
    the member's starting value of every key PBT mutates (top-level keys: Ray's PBT looks for
    them there, and requires them in the space when there is no searcher)."""
    from ray import tune

    space: dict[str, Any] = {MEMBER: tune.grid_search(list(range(len(population))))}
    space.update({key: tune.sample_from(_Pick(population, key)) for key in search})
    return space


def member_params(params: dict[str, Any], population: list[dict[str, Any]]) -> dict[str, Any]:
    """A PBT trial's parameters as any trial's: its member's draw, under what PBT set."""
    chosen = dict(population[int(params[MEMBER])])
    chosen.update({k: v for k, v in params.items() if k != MEMBER})
    return chosen


class _Clip:
    """`custom_explore_fn`: every perturbed float back into its `search:` range (picklable:
    the scheduler is saved with the experiment)."""

    def __init__(self, search: Mapping[str, Dimension]) -> None:
        self.ranges = {
            key: dimension.clip_range
            for key, dimension in search.items()
            if dimension.clip_range is not None
        }

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        for key, (low, high) in self.ranges.items():
            if isinstance(config.get(key), (int, float)) and math.isfinite(config[key]):
                config[key] = min(high, max(low, float(config[key])))
        return config


class PinnedPBT(PopulationBasedTraining):
    """Ray's PBT over the `search:` section, by epochs (see the module docstring)."""

    def __init__(self, spec: PbtSpec, search: Mapping[str, Dimension]) -> None:
        # the metric and mode are the Tuner's (Tune hands them over; it refuses both)
        super().__init__(
            time_attr=M.EPOCH,
            perturbation_interval=spec.perturbation_interval,
            burn_in_period=spec.burn_in_period,
            hyperparam_mutations=mutations(search),
            quantile_fraction=spec.quantile_fraction,
            resample_probability=spec.resample_probability,
            custom_explore_fn=_Clip(search),
            # Ray's pbt_global.txt / pbt_policy_<trial>.txt: the exploits and configs, as
            # Ray's own replay (PopulationBasedTrainingReplay) reads them
            log_config=True,
        )
        self._pinned: dict[str, tuple[Any, str]] = {}  # trial id -> (filesystem, copy path)

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        with warnings.catch_warnings():
            # Ray warns that num_to_keep <= 2 may delete a donor's checkpoint before its
            # recipient reads it: an exploit here copies it first (`_pin`)
            warnings.filterwarnings("ignore", message="Using `CheckpointConfig.num_to_keep")
            super().on_trial_add(tune_controller, trial)

    def on_trial_complete(
        self, tune_controller: Any, trial: Any, result: dict[str, Any]
    ) -> None:
        super().on_trial_complete(tune_controller, trial, result)
        self._release(trial.trial_id)  # its final checkpoint is its own

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        if result.get(M.TRIAL_FINAL):
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)

    def _checkpoint_or_exploit(
        self, trial: Any, tune_controller: Any, upper_quantile: list, lower_quantile: list
    ) -> None:
        """Ray's, except that a top trial is not asked to save: it offers its newest
        checkpoint as it stands when a recipient takes it (`_exploit`). A save asked of a
        trial running in its Tune trial hands back the checkpoint it has just reported, which
        Tune then registers a second time (it prunes the directory under the first entry,
        fails with an ERROR on the second and leaves older ones undeleted); a Train (DDP)
        trial has no checkpoint for Tune to ask for."""
        state = self._trial_state[trial]
        state.last_checkpoint = None
        if trial in upper_quantile:
            state.last_checkpoint = NEWEST
            self._num_checkpoints += 1
        if trial in lower_quantile:
            self._exploit(tune_controller, trial, random.choice(upper_quantile))

    def _exploit(self, tune_controller: Any, trial: Any, trial_to_clone: Any) -> None:
        """Ray's exploit, from a copy of the donor's newest checkpoint in the recipient's
        directory (`_pin`). A donor with none yet, or none left, is not exploited."""
        checkpoint, metrics = _newest(trial_to_clone)
        pinned = None if checkpoint is None else self._pin(trial, checkpoint)
        if pinned is None:
            logger.info(
                "[pbt] trial %s has no checkpoint to give: trial %s goes on without exploiting",
                trial_to_clone.trial_id,
                trial.trial_id,
            )
            return
        state = self._trial_state[trial_to_clone]
        offered = (state.last_checkpoint, state.last_result)
        state.last_checkpoint, state.last_result = pinned, metrics  # what Ray's hands over
        try:
            super()._exploit(tune_controller, trial, trial_to_clone)
        finally:
            state.last_checkpoint, state.last_result = offered

    def _pin(self, trial: Any, checkpoint: Any) -> Any:
        """A copy of `checkpoint` in the recipient's trial directory, as a Checkpoint; None
        when the checkpoint is gone (what was copied of it is deleted then)."""
        import pyarrow.fs
        from ray.tune import Checkpoint

        storage = trial.storage
        filesystem = storage.storage_filesystem
        number = self._num_perturbations
        target = donor_copy_path(storage.trial_fs_path, number)
        filesystem.create_dir(target, recursive=True)
        try:
            pyarrow.fs.copy_files(
                checkpoint.path,
                target,
                source_filesystem=checkpoint.filesystem,
                destination_filesystem=filesystem,
            )
        except FileNotFoundError:
            filesystem.delete_dir(target)
            return None
        self._release(trial.trial_id)
        self._pinned[trial.trial_id] = (filesystem, target)
        return Checkpoint(target, filesystem=filesystem)

    def _release(self, trial_id: str) -> None:
        """Delete the trial's previous copy: it has a newer one, or has ended. (No PBT state
        refers to a copy: a top trial offers `NEWEST`, resolved and copied at the exploit.)"""
        if trial_id in self._pinned:
            filesystem, path = self._pinned.pop(trial_id)
            filesystem.delete_dir(path)


def _newest(trial: Any) -> tuple[Any, dict[str, Any]]:
    """A trial's newest checkpoint and the metrics reported with it: under Ray Train the one
    its last report names; else the one Tune is registering (a save under way), or Tune's
    latest (the one Tune never prunes). None for a trial that has made its final report:
    that checkpoint holds the trial's final metrics and no training state, and a recipient
    would only report them again as its own."""
    from ray.train._internal.session import _FutureTrainingResult
    from ray.tune import Checkpoint
    from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY

    result = trial.last_result or {}
    checkpoint = None
    if result.get(CHECKPOINT_PATH_KEY) is not None:
        checkpoint = Checkpoint(result[CHECKPOINT_PATH_KEY], trial.storage.storage_filesystem)
    else:
        saving = getattr(trial.temporary_state, "saving_to", None)
        latest = saving.resolve() if isinstance(saving, _FutureTrainingResult) else None
        if latest is None or not latest.checkpoint:
            latest = trial.latest_checkpoint_result
        if latest is not None:
            checkpoint, result = latest.checkpoint, latest.metrics
    return (None if result.get(M.TRIAL_FINAL) else checkpoint), result


@dataclass(frozen=True)
class Population:
    """A PBT search (`tune.scheduler: pbt`) as the Tune builder (search/tuner.py) and its
    trials (search/trainable.py) ask it: its members, drawn once up front, each one Tune trial
    that PBT then mutates. Every other search asks tuner.py's `IndependentTrials` instead."""

    members: tuple[dict[str, Any], ...]  # each member's starting parameters
    spec: PbtSpec
    search: Mapping[str, Dimension]  # the `search:` section: what PBT mutates

    exploits: ClassVar[bool] = True  # a recipient goes on from its donor's checkpoint

    @classmethod
    def draw(
        cls,
        space: SpaceFile,
        define: Any,
        points: list[dict[str, Any]],
        size: int,
        sampler: Any,
    ) -> Population:
        """A new search's population (`initial_population`)."""
        members = initial_population(define, points, size, sampler)
        return cls(tuple(members), space.tune.pbt, space.search)

    @classmethod
    def kept_in(cls, meta: dict[str, Any] | None, space: SpaceFile) -> Population | None:
        """The population a resumed experiment's hiersearch.json keeps (None: no PBT)."""
        members = (meta or {}).get(PBT_POPULATION)
        return None if members is None else cls(tuple(members), space.tune.pbt, space.search)

    def kept(self) -> dict[str, Any]:
        """What hiersearch.json keeps: the members, which the trials' parameters point into."""
        return {PBT_POPULATION: list(self.members)}

    def trial_params(self, params: dict[str, Any]) -> dict[str, Any]:
        return member_params(params, list(self.members))

    def checkpoint_policy(self, base: TrialConfig) -> dict[str, Any]:
        """A trial's newest checkpoints, at least one more than the perturbation interval: an
        exploit copies the donor's newest, and the one a DDP donor's last report named is
        still there while its Train run prunes in the background."""
        return {"num_to_keep": max(base.keep_checkpoints, self.spec.perturbation_interval + 1)}

    def tune_search(
        self, optuna: Callable[[], Any], num_samples: int, concurrent: int
    ) -> dict[str, Any]:
        """TuneConfig's search settings: one trial per member through Tune's basic generator.
        Ray's PBT takes no searcher (`optuna` is never called: the sampler drew the members),
        and Tune's max_concurrent_trials limits a Searcher only: the generator takes it."""
        from ray.tune.search import BasicVariantGenerator

        return {
            "search_alg": BasicVariantGenerator(max_concurrent=concurrent),
            "num_samples": 1,  # the param space is a grid of the members, once each
            "max_concurrent_trials": None,
        }

    def param_space(self) -> dict[str, Any]:
        return population_space(list(self.members), self.search)

    def scheduler(self, base: TrialConfig) -> PinnedPBT:
        return PinnedPBT(self.spec, self.search)

    def report_columns(self, columns: dict[str, str]) -> tuple[dict[str, str], list[str]]:
        """The progress table's (metric, parameter) columns: a trial's variant and seed are
        its member's, so its reports name the assignment; and its exploits."""
        columns = {M.TRIAL_ASSIGNMENT: "assignment", **columns, M.PBT_EXPLOITS: "exploits"}
        return columns, [MEMBER, *self.search]
