"""Search-space files: YAML -> a checked `SpaceFile` -> an Optuna define-by-run function.

Besides its name and description, a space file has six sections (unknown keys anywhere are
an error naming the key):

    data:        where the corpus comes from (a corpus dir, or one to generate: synthetic, or
                 the HPO term definitions with `source: hpo`)
    trial:       fixed `TrialConfig` fields (model, epochs, workers, ...)
    search:      searched `TrialConfig` fields, each a distribution (a `Dimension`,
                 search/dimension.py: {type: loguniform|uniform|int, low, high, step} or
                 {type: categorical, choices}); choices may include null (head_hidden: [null, 64])
    assignment:  how layer-to-level assignments are searched: `space: variants` (a categorical
                 over named variants), `space: monotone` (the combinatorial space of ordered
                 blocks, with options) or `space: shared` (each level its own block, levels may
                 share layers), and whether the named variants are enqueued as fixed trials
    tune:        algorithm (tpe|random|nsga2|grid), num_samples, metric, mode, scheduler
                 (none|asha|pbt), seeds, ... and `pbt:` (population-based training's settings)
    screen:      a two-stage search (search/stages.py): head-only trials screen the
                 assignments, the best few are fine-tuned
    heads_from:  {assignment: a finished trial's final checkpoint}: the trained heads the
                 trials of each assignment start from (their `init_heads_from`,
                 trial/warm_start.py); what a two-stage search writes into its stage 2

The define-by-run function only calls `trial.suggest_*` and returns no constants: every fixed
trial (a named variant, a grid point, a seed) is a dict of suggest values, because Optuna's
`points_to_evaluate` reaches nothing else.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from hiersearch import metrics as M
from hiersearch.data.prepare import DataSpec  # the data section: it drives the preparation
from hiersearch.errors import InputError
from hiersearch.model.assignment import LayerAssignment, named_variants, variant_names
from hiersearch.search.assignment_space import SpaceOptions, assignment_params, suggest_assignment
from hiersearch.search.dimension import Dimension
from hiersearch.search_spaces import presets  # the packaged files are the list of presets
from hiersearch.textfile import decode_utf8, parse_yaml
from hiersearch.trial.config import TrialConfig, resolve_aliases
from hiersearch.typed import as_mapping, check_keys, coerce, from_mapping

VARIANT_PARAM = "variant"
SEED_PARAM = "seed"
# A PBT trial's parameter: its place in the search's initial population (which holds its
# assignment and seed); the values PBT mutates are parameters of their own.
MEMBER_PARAM = "pbt_member"
ASSIGN_PREFIX = "assign"
# The trial's trained heads (TrialConfig.init_heads_from): set per assignment (`heads_from:`)
HEADS_KEY = "init_heads_from"
SECTIONS = (
    "name", "description", "help", "reproduce", "data", "trial", "search", "assignment", "tune",
    "screen", "heads_from",
)
ASSIGNMENT_SPACES = ("variants", "monotone", "shared")

__all__ = [
    "ASSIGN_PREFIX",
    "MEMBER_PARAM",
    "SEED_PARAM",
    "VARIANT_PARAM",
    "AssignmentSpec",
    "DataSpec",
    "Dimension",
    "PbtSpec",
    "SpaceFile",
    "TuneSpec",
    "assignment_of",
    "define_by_run",
    "fixed_points",
    "load_space",
    "parse_space",
    "preset_path",
    "presets",
    "seed_values",
    "trial_config",
]


@dataclass(frozen=True)
class AssignmentSpec:
    """How assignments are searched."""

    # "variants": categorical over the named variants; "monotone": the combinatorial space of
    # ordered blocks; "shared": each level's block its own, only the blocks' tops ordered
    # (SpaceOptions.shared: levels may share layers).
    space: str = "variants"
    # Named variants in play (all five by default).
    variants: tuple[str, ...] | None = None
    # Enqueue the named variants as fixed trials before the sampler takes over (monotone).
    enqueue_variants: bool = True
    # Options of the combinatorial spaces (search/assignment_space.py, SpaceOptions); overlap
    # is monotone's only.
    overlap: bool = False
    max_width: int | None = None
    skip_lowest: int = 0
    include_flat: bool = True

    def __post_init__(self) -> None:
        if self.space not in ASSIGNMENT_SPACES:
            raise InputError(
                f"must be 'variants', 'monotone' or 'shared', got {self.space!r}", where="space"
            )
        self.options()  # checks the options' values, naming the option

    def options(self) -> SpaceOptions:
        return SpaceOptions(
            overlap=self.overlap,
            shared=self.space == "shared",
            max_width=self.max_width,
            skip_lowest=self.skip_lowest,
            include_flat=self.include_flat,
        )


ALGORITHMS = ("tpe", "random", "nsga2", "grid")
SCHEDULERS = ("none", "asha", "pbt")
# What population-based training may change in a trial that goes on from another's weights:
# rates, regularization and the loss, never a shape (head_hidden, pooling's feature width,
# freeze_layers, the model) nor what the schedule's length or the batches depend on.
PBT_MUTABLE = (
    "lr", "head_lr", "warm_head_lr", "dropout", "weight_decay", "warmup_ratio", "max_grad_norm",
    "loss_weighting", "smart_weight", "smart_bregman_weight",
)
# Searched keys that change a trial's weights' shapes: why PBT cannot copy weights across them.
SHAPE_KEYS = ("head_hidden", "pooling", "head_norm", "freeze_layers", "model", "max_length")
# `screen: trials: all`: every assignment of the space, once.
SCREEN_ALL = "all"


@dataclass(frozen=True)
class ScreenSpec:
    """A two-stage search (search/stages.py): head-only trials screen the assignments, then
    the best few are fine-tuned with the `trial:` and `search:` settings."""

    # Assignments (the best of the screen by the search metric) fine-tuned in stage 2.
    top_k: int = 3
    # "all": every assignment of the space once, head options at their first choice (a
    # grid); N: N points TPE draws from the assignments x the head options searched.
    trials: int | str = SCREEN_ALL
    # Epochs of a head-only trial (null: the trial section's).
    epochs: int | None = None
    # Each fine-tune starts from the heads its assignment's screen trial trained (linear
    # probing, then fine-tuning; trial/warm_start.py), at `warm_head_lr`; false: new heads
    # at `head_lr`, as a one-stage search's.
    warm_start: bool = True

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise InputError(f"must be >= 1, got {self.top_k!r}", where="top_k")
        if isinstance(self.trials, str) and self.trials != SCREEN_ALL:
            raise InputError(f"must be 'all' or a number, got {self.trials!r}", where="trials")
        if isinstance(self.trials, int) and self.trials < 1:
            raise InputError(f"must be >= 1 or 'all', got {self.trials!r}", where="trials")
        if self.epochs is not None and self.epochs < 1:
            raise InputError(f"must be >= 1 or null, got {self.epochs!r}", where="epochs")


@dataclass(frozen=True)
class PbtSpec:
    """Population-based training (`tune.scheduler: pbt`, Ray Tune's PopulationBasedTraining):
    every `perturbation_interval` epochs a trial in the bottom quantile goes on from a top
    trial's checkpoint, its `search:` values perturbed (x0.8 / x1.2, kept in their range) or
    drawn afresh."""

    # Epochs between a trial's perturbations (and its checkpoints that others may copy).
    perturbation_interval: int = 1
    # The fraction of the population in the top and in the bottom quantile (Ray's 0.25).
    quantile_fraction: float = 0.25
    # The chance that an exploited value is drawn afresh from its range instead of perturbed.
    resample_probability: float = 0.25
    # Epochs before the first perturbation: a head that has seen one epoch ranks by noise.
    burn_in_period: int = 1

    def __post_init__(self) -> None:
        checks = [
            (self.perturbation_interval >= 1, "perturbation_interval", ">= 1"),
            (0 < self.quantile_fraction <= 0.5, "quantile_fraction", "in (0, 0.5]"),
            (0 <= self.resample_probability <= 1, "resample_probability", "in [0, 1]"),
            (self.burn_in_period >= 0, "burn_in_period", ">= 0"),
        ]
        for ok, key, expected in checks:
            if not ok:
                raise InputError(f"must be {expected}, got {getattr(self, key)!r}", where=key)


@dataclass(frozen=True)
class TuneSpec:
    """How Ray Tune drives the search."""

    # "tpe" (Optuna's TPESampler), "random", "nsga2" (NSGAIISampler, for several metrics), or
    # "grid" (every combination, as fixed trials).
    algorithm: str = "tpe"
    # Trials in all (for grid: ignored, the grid size times seeds is used).
    num_samples: int = 10
    # The metric to optimize, or a list of them (a multi-objective search: its leaderboard marks
    # the Pareto front), e.g. [dev/rp_macro, cost/forward_ms_per_doc]. The first one sorts the
    # progress table and chooses `export --best`'s default.
    metric: str | tuple[str, ...] = M.DEFAULT_METRIC
    # "max" or "min" per metric; null: each metric's own direction (max for R-Precision, min
    # for losses, times and costs).
    mode: str | tuple[str, ...] | None = None
    # "asha" for early stopping of weak trials, "pbt" for population-based training (its
    # settings under `pbt:`), or "none". Several metrics: MO-ASHA, which ranks a rung's trials
    # by Pareto front, then crowding distance (search/moasha.py).
    scheduler: str = "none"
    # Population-based training's settings (`scheduler: pbt`).
    pbt: PbtSpec = field(default_factory=PbtSpec)
    # ASHA: epochs every trial gets before it can be stopped.
    grace_period: int = 1
    # ASHA: keep the top 1/reduction_factor at each rung.
    reduction_factor: int = 2
    # Seeds per fixed configuration (grid points, enqueued variants): first_seed, first_seed+1,
    # ... The sampler never chooses a seed: sampled trials all run with first_seed.
    seeds: int = 1
    # The first seed (e.g. 100 to re-train a configuration with seeds a search never used).
    first_seed: int = 0
    # Trial-level retries by Tune, once Ray Train has spent `worker_failures` on a dead worker.
    max_failures: int = 0
    # Ray Train restarts of a trial's worker group after a worker dies.
    worker_failures: int = 2
    # Cap on concurrent trials; null = as many as the cluster's resources fit.
    max_concurrent: int | None = None
    # Seed of the Optuna sampler.
    sampler_seed: int = 0
    # NSGA-II: trials per generation (Optuna's default, 50, outlasts most CPU budgets).
    population_size: int = 10
    # Every metric optimized and its direction, in order (set from metric and mode).
    metrics: tuple[str, ...] = field(init=False)
    modes: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        checks = [
            (self.algorithm in ALGORITHMS, "algorithm", ", ".join(ALGORITHMS)),
            (self.scheduler in SCHEDULERS, "scheduler", " or ".join(SCHEDULERS)),
            (self.num_samples >= 1, "num_samples", ">= 1"),
            (self.seeds >= 1, "seeds", ">= 1"),
            (self.first_seed >= 0, "first_seed", ">= 0"),
            (self.grace_period >= 1, "grace_period", ">= 1"),
            (self.reduction_factor >= 2, "reduction_factor", ">= 2"),
            (self.max_failures >= 0, "max_failures", ">= 0"),
            (self.worker_failures >= 0, "worker_failures", ">= 0"),
            (self.population_size >= 2, "population_size", ">= 2"),
            (self.max_concurrent is None or self.max_concurrent >= 1, "max_concurrent", ">= 1"),
            # numpy's and so Optuna's seeds are 32-bit unsigned
            (0 <= self.sampler_seed < 2**32, "sampler_seed", "in 0 .. 2**32 - 1"),
        ]
        for ok, key, expected in checks:
            if not ok:
                raise InputError(f"must be {expected}, got {getattr(self, key)!r}", where=key)
        metrics, modes = _objectives(self.metric, self.mode)
        late = [key for key in metrics if not M.in_epoch_reports(key)]
        if self.scheduler == "pbt" and len(metrics) > 1:
            raise InputError(
                f"pbt ranks its population by one metric, got {len(metrics)}: give one, or "
                "use scheduler: asha (MO-ASHA) for several",
                where="scheduler",
            )
        if self.scheduler != "none" and late:
            raise InputError(
                f"{self.scheduler} stops trials at epochs, whose reports lack "
                f"{', '.join(late)} (measured once, in a trial's final report): optimize "
                "dev or training metrics, or set scheduler: none",
                where="scheduler",
            )
        # One metric stays a string, several a tuple (dataclasses.replace keeps them all);
        # `metrics` / `modes` hold them as tuples, the first standing for the search where one
        # is needed (the progress table's order, `export --best`'s default).
        object.__setattr__(self, "metric", metrics[0] if len(metrics) == 1 else metrics)
        object.__setattr__(self, "mode", modes[0] if len(modes) == 1 else modes)
        object.__setattr__(self, "metrics", metrics)
        object.__setattr__(self, "modes", modes)

    @property
    def multi_objective(self) -> bool:
        return len(self.metrics) > 1


def _objectives(
    metric: str | tuple[str, ...], mode: str | tuple[str, ...] | None
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(metrics, modes) of a tune section's metric and mode, checked."""
    metrics = (metric,) if isinstance(metric, str) else tuple(metric)
    if not metrics:
        raise InputError("needs at least one metric", where="metric")
    for key in metrics:
        if not M.is_metric_key(key):
            raise InputError(f"unknown metric {key!r} (e.g. {M.DEFAULT_METRIC})", where="metric")
    if len(set(metrics)) != len(metrics):
        raise InputError(f"a metric is listed twice: {list(metrics)}", where="metric")
    if mode is None:
        modes = tuple(M.mode_of(key) for key in metrics)
    elif isinstance(mode, str) and len(metrics) > 1:
        raise InputError(
            f"one mode ({mode!r}) for {len(metrics)} metrics: give one per metric, in order "
            "(e.g. [max, min]), or leave mode out for each metric's own direction",
            where="mode",
        )
    else:
        modes = (mode,) if isinstance(mode, str) else tuple(mode)
    if len(modes) != len(metrics):
        raise InputError(
            f"{len(modes)} modes for {len(metrics)} metrics: give one per metric, in order",
            where="mode",
        )
    for value in modes:
        if value not in ("max", "min"):
            raise InputError(f"must be max or min, got {value!r}", where="mode")
    return metrics, modes


@dataclass(frozen=True)
class SpaceFile:
    """A parsed, checked search-space file."""

    name: str
    path: str
    data: DataSpec
    trial: dict[str, Any]
    search: dict[str, Dimension]
    assignment: AssignmentSpec
    tune: TuneSpec
    description: str = ""
    raw: dict[str, Any] = field(default_factory=dict, compare=False)
    # What it runs; corpus; hardware; about how long: a preset's line in `--help`; and
    # whether `reproduce --preset` takes it (a preset whose trials are all fixed).
    help: str = ""
    reproduce: bool = False
    # A two-stage search (`screen:`), or None: one stage.
    screen: ScreenSpec | None = None
    # The trained heads each assignment's trials start from (`heads_from:`): a checkpoint
    # per assignment, as the trials' configs name it.
    heads_from: dict[str, str] = field(default_factory=dict)

    def base_config(self, **overrides: Any) -> TrialConfig:
        values = {**self.trial, **{k: v for k, v in overrides.items() if v is not None}}
        return TrialConfig.from_dict(values, where=f"{self.path}: trial")


def preset_path(name: str) -> Path:
    """A packaged search-space file by preset name."""
    if name not in presets():
        raise InputError(
            f"unknown preset {name!r} (presets: {', '.join(presets())})", where="--preset"
        )
    return Path(str(resources.files("hiersearch.search_spaces") / f"{name}.yaml"))


def load_space(spec: str | os.PathLike[str]) -> SpaceFile:
    """Read a space file (a path, or a preset name) and check every key and value."""
    path = Path(spec)
    if not path.exists() and str(spec) in presets():
        path = preset_path(str(spec))
    where = str(spec)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read search-space file ({exc.strerror})", where=where) from exc
    raw = parse_yaml(decode_utf8(data, where), where)
    if not isinstance(raw, dict):
        raise InputError("a search-space file must be a mapping", where=where)
    return parse_space(raw, where)


def parse_space(raw: dict[str, Any], where: str = "space") -> SpaceFile:
    """Check a space file's mapping (`where` names it in errors) and build its spec."""
    check_keys(raw, SECTIONS, where)
    data = from_mapping(DataSpec, raw.get("data") or {}, f"{where}: data")
    # deprecated keys resolved once here (one warning), not in every config built from it
    trial = resolve_aliases(as_mapping(raw.get("trial") or {}, f"{where}: trial"),
                            f"{where}: trial")
    TrialConfig.from_dict(trial, where=f"{where}: trial")  # check keys and types now
    search = _parse_search(raw.get("search") or {}, trial, f"{where}: search")
    assignment = from_mapping(AssignmentSpec, raw.get("assignment") or {}, f"{where}: assignment")
    tune = from_mapping(TuneSpec, raw.get("tune") or {}, f"{where}: tune")
    screen = None
    if raw.get("screen") is not None:
        screen = from_mapping(ScreenSpec, raw["screen"], f"{where}: screen")
    if tune.scheduler == "pbt":
        _check_pbt(search, f"{where}: search")
    if tune.algorithm == "grid":
        for key, dimension in search.items():
            if dimension.kind != "categorical":
                raise InputError(
                    "grid search needs categorical distributions", where=f"{where}: search: {key}"
                )
    return SpaceFile(
        name=str(raw.get("name") or Path(where).stem),
        path=where,
        data=data,
        trial=trial,
        search=search,
        assignment=assignment,
        tune=tune,
        description=str(raw.get("description") or ""),
        raw=raw,
        help=coerce(raw.get("help", ""), str, f"{where}: help"),
        reproduce=coerce(raw.get("reproduce", False), bool, f"{where}: reproduce"),
        screen=screen,
        heads_from=_heads_from(raw.get("heads_from"), f"{where}: heads_from"),
    )


def _heads_from(section: Any, where: str) -> dict[str, str]:
    """The `heads_from:` section: an assignment (as trials name it) -> a checkpoint."""
    heads = {}
    for assignment, location in as_mapping(section or {}, where).items():
        location = coerce(location, str, f"{where}: {assignment}")
        if not location.strip():
            raise InputError("must be a trial's final checkpoint", where=f"{where}: {assignment}")
        heads[str(assignment)] = location
    return heads


def _check_pbt(search: dict[str, Dimension], where: str) -> None:
    """What `scheduler: pbt` mutates is the search section: it must hold something, and only
    what a trial can change while it goes on from another trial's weights."""
    if not search:
        raise InputError(
            f"scheduler: pbt mutates the searched values and this section is empty: search "
            f"one or more of {', '.join(PBT_MUTABLE)}",
            where=where,
        )
    for key in search:
        if key in PBT_MUTABLE:
            continue
        why = (
            "changes the shape of the weights, which pbt copies from one trial to another"
            if key in SHAPE_KEYS
            else "is no value a trial can change while it goes on from another's checkpoint"
        )
        raise InputError(
            f"{key!r} {why}: fix it in the trial section, or search it with scheduler: asha "
            f"or none (pbt mutates {', '.join(PBT_MUTABLE)})",
            where=f"{where}: {key}",
        )


def _parse_search(section: Any, trial: dict[str, Any], where: str) -> dict[str, Dimension]:
    """The search section: every key a searchable TrialConfig field, every distribution
    well-formed, and both its ends (or every choice) valid values of the field."""
    searchable = {f.name for f in fields(TrialConfig)} - {"assignment", SEED_PARAM, HEADS_KEY}
    search = {}
    for key, value in as_mapping(section, where).items():
        if key not in searchable:
            raise InputError(
                f"unknown searchable key {key!r} (searchable: TrialConfig fields other than "
                f"assignment, seed and {HEADS_KEY}; the assignment has its own section, seeds "
                "are tune.seeds, trained heads come per assignment: heads_from)",
                where=where,
            )
        search[key] = Dimension.parse(value, f"{where}: {key}")
        for edge in search[key].edges():
            TrialConfig.from_dict({**trial, key: edge}, where=where)
    return search


class DefineByRun:
    """The Optuna define-by-run function of a space: only `suggest_*` calls; it returns None.

    A class rather than a closure so that Ray Tune can pickle the searcher's state."""

    def __init__(self, space: SpaceFile, num_layers: int, label_counts: Sequence[int]) -> None:
        self.space = space
        self.num_layers = num_layers
        self.levels = len(label_counts)
        self.variants = _variant_list(space, num_layers, label_counts)
        self.options = space.assignment.options()

    def __call__(self, trial: Any) -> dict[str, Any] | None:
        for key, dimension in self.space.search.items():
            dimension.suggest(trial, key)
        if self.space.assignment.space == "variants":
            trial.suggest_categorical(VARIANT_PARAM, self.variants)
        else:
            suggest_assignment(
                trial, self.num_layers, self.levels, self.options, prefix=ASSIGN_PREFIX
            )
        # A categorical so that fixed trials can enqueue every seed; the search's sampler pins
        # it for sampled trials (optuna's PartialFixedSampler), so no sampler ever tunes it.
        trial.suggest_categorical(SEED_PARAM, seed_values(self.space.tune))
        return None


def seed_values(tune: TuneSpec) -> list[int]:
    """The seeds of every fixed configuration; the first is every sampled trial's seed."""
    return list(range(tune.first_seed, tune.first_seed + tune.seeds))


def define_by_run(
    space: SpaceFile, num_layers: int, label_counts: Sequence[int]
) -> Callable[[Any], dict[str, Any] | None]:
    """The Optuna define-by-run function of a space (only `suggest_*` calls)."""
    return DefineByRun(space, num_layers, label_counts)


def _variant_list(space: SpaceFile, num_layers: int, label_counts: Sequence[int]) -> list[str]:
    """The named variants in play; an entry that is no variant's name must be an assignment
    string (`L1:4|L2:5|L3:6`), e.g. a search's winner re-trained with fresh seeds."""
    names = variant_names(len(label_counts))
    chosen = list(space.assignment.variants or names)
    where = f"{space.path}: assignment: variants"
    for name in chosen:
        if name in names:
            continue
        try:
            LayerAssignment.from_string(name).validate(num_layers, len(label_counts))
        except InputError as exc:
            raise InputError(
                f"{name!r} is neither a variant ({', '.join(names)}) nor a valid assignment "
                f"string: {exc.message}",
                where=where,
            ) from None
    named_variants(num_layers, len(label_counts), label_counts)  # N >= L etc. checked here
    return chosen


def assignment_of(
    params: dict[str, Any], num_layers: int, label_counts: Sequence[int], space: SpaceFile
) -> str:
    """The assignment spec (variant name or string) of a trial's sampled parameters."""
    if VARIANT_PARAM in params:
        return str(params[VARIANT_PARAM])
    import optuna

    trial = optuna.trial.FixedTrial(
        {k: v for k, v in params.items() if k.startswith(ASSIGN_PREFIX + "/")}
    )
    assignment = suggest_assignment(
        trial, num_layers, len(label_counts), space.assignment.options(), prefix=ASSIGN_PREFIX
    )
    return assignment.to_string()


def fixed_points(space: SpaceFile, num_layers: int, label_counts: Sequence[int]) -> list[dict]:
    """Trials to run first, as suggest values: the whole grid for `algorithm: grid`; otherwise
    the named variants (when enqueued) at every searched value's `Dimension.default`."""
    seeds = seed_values(space.tune)
    variants = _variant_list(space, num_layers, label_counts)
    if space.assignment.space == "variants":
        assign_points = [{VARIANT_PARAM: v} for v in variants]
    else:
        all_variants = named_variants(num_layers, len(label_counts), label_counts)
        options = space.assignment.options()
        assign_points = []
        if space.assignment.enqueue_variants or space.tune.algorithm == "grid":
            for name in variants:
                try:
                    assign_points.append(
                        assignment_params(
                            all_variants.get(name) or LayerAssignment.from_string(name),
                            num_layers,
                            len(label_counts),
                            options,
                            prefix=ASSIGN_PREFIX,
                        )
                    )
                except InputError:
                    continue  # a variant outside this restricted space is not enqueued
    if space.tune.algorithm == "grid":
        grids = [[(k, v) for v in dim.grid_values()] for k, dim in space.search.items()]
    else:
        grids = [[(k, dim.default)] for k, dim in space.search.items()]
    points = []
    for assign in assign_points:
        for combo in itertools.product(*grids):
            for seed in seeds:
                points.append({**dict(combo), **assign, SEED_PARAM: seed})
    return points


def trial_config(
    base: TrialConfig,
    params: dict[str, Any],
    assignment: str,
    heads_from: dict[str, str] | None = None,
) -> TrialConfig:
    """The resolved config of one trial: fixed fields + sampled values + its assignment, and
    the trained heads `heads_from` names for that assignment (the space's `heads_from`)."""
    values = {
        k: v
        for k, v in params.items()
        if k != VARIANT_PARAM and not k.startswith(ASSIGN_PREFIX + "/")
    }
    merged = {**base.to_json(), **values, "assignment": assignment}
    if heads_from and assignment in heads_from:
        merged[HEADS_KEY] = heads_from[assignment]
    return TrialConfig.from_dict(merged, where="trial")
