"""How many trials a run has, and how many of them run at once with the words that say why:
pure arithmetic over a trial's resources and the cluster's, which the caller reads from Ray
and passes in (search/tuner.py asks Ray; search/cluster.py finds the largest size an
autoscaler may grow the cluster to).

Tune keeps as many trials pending as `max_concurrent_trials` lets run (Ray 2.60's default
TUNE_MAX_PENDING_TRIALS_PG with a searcher; one without the limit), each asking for its
resources, so that an autoscaler sees every trial's demand at once and launches their nodes
together: the count below is also how many trials an autoscaler sees waiting.
"""

from __future__ import annotations

import math
import sys

from hiersearch.search.space import SpaceFile
from hiersearch.trial.config import TrialConfig

__all__ = ["trial_count", "trials_at_once", "trials_that_fit"]


def trial_count(space: SpaceFile, fixed: int, trials: int | None, fixed_only: bool) -> int:
    """How many trials a run has: a grid (or fixed-only run) is its fixed points, cut to the
    first `trials` when given; a sampled search is `trials` or the space's num_samples."""
    if fixed_only or space.tune.algorithm == "grid":
        return fixed if trials is None else min(trials, fixed)
    return trials or space.tune.num_samples


def trials_at_once(
    base: TrialConfig,
    now: dict[str, float],
    largest: dict[str, float] | None,
    cap: int | None = None,
    trials: int | None = None,
) -> tuple[int, str]:
    """(how many trials run at once, what to tell the user about it): as many as the cluster
    holds at its largest (`largest`: what its autoscaler may grow it to, None when no
    autoscaler config was found; `now`: its resources now), at most `cap`
    (`tune.max_concurrent`) and the run's `trials`. The message is one line, and a note when
    not one trial fits: users read it when a cluster looks idle."""
    most = now if largest is None else {k: max(now.get(k, 0), v) for k, v in largest.items()}
    fits = trials_that_fit(base, most)
    limits = [n for n in (cap, trials) if n]
    count = min([max(1, fits), *limits])
    message = f"trials at once: {count} ({_reason(base, now, largest, fits, cap, count)})"
    if fits == 0:
        message += "\n" + _never_fits_note(base, now, largest)
    return count, message


def trials_that_fit(base: TrialConfig, resources: dict[str, float]) -> int:
    """How many trials of this scaling these CPUs and GPUs hold together (0: not one).

    A trial holds num_workers * cpus_per_worker CPUs, whether it trains in its Tune trial or
    runs a Train controller beside its workers (their share makes room for it,
    search/trainable.py's `scaling_config`)."""
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


def _reason(
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
