"""A two-stage search: screen the assignments with head-only trials, fine-tune the best few.

A space file with a `screen:` section (`ScreenSpec`) runs as one experiment in two stages:

1. `screen/`: head-only trials (`freeze_layers: all`: the heads train on the feature cache's
   pooled vectors of every layer, seconds an epoch on the whole training split) over every
   assignment of the space once (`trials: all`, the head options at their first choice), or
   over N points TPE draws from the assignments x the searched head options (`trials: N`);
2. `finetune/`: the `top_k` best assignments of stage 1 by the search metric, fine-tuned with
   the file's `trial:` and `search:` settings (its seeds, sampler and ASHA as in any search),
   each from the heads that the best screen trial of its assignment trained (`screen:
   warm_start`, on by default: stage 2's `heads_from:`, trial/warm_start.py).

Each stage is a whole experiment of its own (Ray Tune's state, hiersearch.json with a `stage`,
an Optuna study, the baseline row), side by side in the experiment's directory: the
leaderboard reads the directory as one table with a `stage` column, and `--resume` resumes
whichever stage was cut short. Two Tuner runs rather than one scheduler: stage 2's trials
exist only once stage 1's have all ended (they are its ranking), which a Tune scheduler cannot
express (it stops, pauses or perturbs trials that a searcher created; it does not create
trials of another kind), and each stage stays resumable by Tune's own restore.
"""

from __future__ import annotations

import copy
from typing import Any

from hiersearch.errors import InputError
from hiersearch.model.classifier import FREEZE_ALL
from hiersearch.search.assignment_space import enumerate_space, space_size
from hiersearch.search.space import SCREEN_ALL, SpaceFile, parse_space
from hiersearch.trial.config import SMART_TERMS

SCREEN, FINETUNE = "screen", "finetune"
STAGES = (SCREEN, FINETUNE)
# The most head-only trials `trials: all` runs: at about 10 s a trial (a Tune trial's start,
# utilization, checkpoint) and two at a time on 2 cores, about 3 hours; a GPU node runs them
# several at a time. Larger spaces (18,565 points for 12 layers x 6 levels) take `trials: N`.
MAX_SCREEN_TRIALS = 2000
# A trial's status (report/results.py) while its stage has not ended.
_UNFINISHED = ("running", "pending", "paused", "unknown")
# Searched settings a head-only trial has no use for: nothing in the encoder trains, and its
# heads are new.
_ENCODER_ONLY = ("lr", "freeze_layers", "warm_head_lr", *SMART_TERMS)


def screen_assignments(space: SpaceFile, num_layers: int, num_levels: int) -> list[str]:
    """Every assignment `trials: all` screens: the space's points (`monotone`) or its named
    variants (`variants`); more than `MAX_SCREEN_TRIALS` is an InputError with the size."""
    where = f"{space.path}: screen: trials"
    if space.assignment.space == "variants":
        return list(space.assignment.variants or _variant_names(num_levels))
    options = space.assignment.options()
    size = space_size(num_layers, num_levels, options)
    if size > MAX_SCREEN_TRIALS:
        raise InputError(
            f"'all' would run {size:,} head-only trials ({num_layers} layers x {num_levels} "
            f"levels), more than {MAX_SCREEN_TRIALS:,} (about 10 s each): set trials: N to "
            "screen N assignments that TPE draws, or narrow the space (assignment: max_width, "
            "skip_lowest)",
            where=where,
        )
    return [a.to_string() for a in enumerate_space(num_layers, num_levels, options)]


def _variant_names(num_levels: int) -> list[str]:
    from hiersearch.model.assignment import variant_names

    return list(variant_names(num_levels))


def screening_space(space: SpaceFile, num_layers: int, num_levels: int) -> SpaceFile:
    """Stage 1's space: the file's, head-only, one seed, no early stopping (a head-only epoch
    costs seconds), over every assignment as a grid or TPE's N points."""
    screen = _screen(space)
    raw = _stage_raw(space, SCREEN)
    trial = dict(raw.get("trial") or {})
    trial["freeze_layers"] = FREEZE_ALL
    # SMART regularizes fine-tunes (refused head-only); the screen trains new heads
    trial.update({key: 0.0 for key in SMART_TERMS}, init_heads_from=None)
    if screen.epochs is not None:
        trial["epochs"] = screen.epochs
    search = {k: dim for k, dim in space.search.items() if k not in _ENCODER_ONLY}
    tune = {**(raw.get("tune") or {}), "scheduler": "none", "seeds": 1}
    if screen.trials == SCREEN_ALL:
        for key, dimension in search.items():  # the head options at their first choice
            trial[key] = dimension.default
        search = {}
        raw["assignment"] = {
            "space": "variants",
            "variants": screen_assignments(space, num_layers, num_levels),
        }
        tune["algorithm"] = "grid"
    else:
        tune["num_samples"] = int(screen.trials)
        if tune.get("algorithm") == "grid":
            tune["algorithm"] = "tpe"
    searched = {k: copy.deepcopy(dim.raw) for k, dim in search.items()}
    raw.update({"trial": trial, "search": searched, "tune": tune})
    return parse_space(raw, f"{space.path} (stage 1: screen)")


def finetune_space(
    space: SpaceFile, assignments: list[str], heads: dict[str, str] | None = None
) -> SpaceFile:
    """Stage 2's space: the file's, over the screen's `top_k` best `assignments`, each
    starting from the trained heads `heads` names for it (`screen_heads`; none: new heads)."""
    raw = _stage_raw(space, FINETUNE)
    raw["assignment"] = {"space": "variants", "variants": list(assignments)}
    raw["heads_from"] = {a: heads[a] for a in assignments if heads and a in heads}
    return parse_space(raw, f"{space.path} (stage 2: finetune)")


def screen_heads(table: Any, assignments: list[str], metric: str, mode: str) -> dict[str, str]:
    """The final checkpoint of each assignment's best finished screen trial by `metric`: the
    trial that put it among the `top_k` (`top_assignments`), whose heads its fine-tunes start
    from. An assignment whose trial kept no checkpoint is left out (its fine-tunes start
    with new heads)."""
    done = table[(table["status"] == "terminated") & table[metric].notna()]
    ordered = done.sort_values(metric, ascending=mode == "min", kind="stable")
    heads: dict[str, str] = {}
    for assignment in assignments:
        rows = ordered[ordered["assignment"].astype(str) == assignment]
        if not rows.empty and isinstance(rows["checkpoint"].iloc[0], str):
            heads[assignment] = rows["checkpoint"].iloc[0]
    return heads


def screen_trials(space: SpaceFile) -> int | None:
    """`--trials` of stage 1: N for `trials: N`, None for the grid of every assignment."""
    trials = _screen(space).trials
    return None if trials == SCREEN_ALL else int(trials)


def top_assignments(table: Any, metric: str, mode: str, k: int) -> list[str]:
    """The `k` best distinct assignments of stage 1's finished trials by `metric`."""
    done = table[(table["status"] == "terminated") & table[metric].notna()]
    if done.empty:
        raise InputError(
            f"stage 1 (screen) finished no trial with a {metric!r} value: nothing to fine-tune",
            where="screen",
        )
    ordered = done.sort_values(metric, ascending=mode == "min", kind="stable")
    return list(dict.fromkeys(str(a) for a in ordered["assignment"]))[:k]


def unfinished(table: Any, expected: int) -> bool:
    """Whether a stage ended short of its `expected` trials: one has not ended, or fewer were
    made (a search's trials are made as it goes: Ctrl-C leaves the rest unmade)."""
    from hiersearch.report.results import trial_rows

    trials = trial_rows(table)
    return bool(trials["status"].isin(_UNFINISHED).any()) or len(trials) < expected


def screen_size(screen: SpaceFile) -> int:
    """The trials stage 1 runs: its grid of assignments, or its N TPE draws."""
    if screen.tune.algorithm == "grid":
        return len(screen.assignment.variants or ())
    return screen.tune.num_samples


def _screen(space: SpaceFile) -> Any:
    if space.screen is None:
        raise ValueError(f"{space.path} has no screen section")
    return space.screen


def _stage_raw(space: SpaceFile, stage: str) -> dict[str, Any]:
    raw = copy.deepcopy(space.raw)
    raw.pop("screen", None)
    raw["name"] = stage
    return raw
