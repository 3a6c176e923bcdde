"""The rung decisions of MO-ASHA (Schmucker et al. 2021, "Multi-objective Asynchronous
Successive Halving"): asynchronous successive halving whose rungs rank trials on several
metrics at once. Pure bookkeeping; the Ray Tune scheduler around it is `search/moasha.py`.

Rungs sit at grace_period * reduction_factor**k (k = 0, 1, ...) below max_t, as in Ray's
ASHA. A trial's first result at or past a rung it has not been recorded at is decided there,
with what the rung has seen so far (asynchronous: no waiting for the other trials):

- its metric vector is recorded at the rung;
- the rung's recorded trials, it included, are ordered by non-dominated rank, then crowding
  distance within the rank, larger first (NSGA-II's order: the front first, and on it the
  trials farthest from their neighbours);
- it continues iff fewer than n / reduction_factor of the n recorded trials come before it.

Ties go to the newcomer: only trials strictly before it in that order count (as Ray's ASHA
continues a trial whose metric equals the cutoff). So the first trial at a rung always
continues (0 < 1 / reduction_factor), and a later one is stopped only when enough of the
trials before it at the rung are ahead: with reduction factor 2, the second trial at a rung
is stopped iff the first dominates it. A vector with a NaN metric (one the result lacks)
cannot be compared: it is ranked after every complete one.

A trial that skips a rung (its results jump past it) is decided at the highest rung it has
reached, as in Ray's ASHA.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from hiersearch.metrics.pareto import crowding_distances, minimized, nondominated_ranks

__all__ = ["Rungs", "ahead_of", "rung_levels"]


def rung_levels(grace_period: float, reduction_factor: float, max_t: float) -> list[float]:
    """The rungs' milestones, lowest first: grace_period * reduction_factor**k below max_t
    (a trial at max_t is stopped anyway: no rung there)."""
    levels = []
    level = float(grace_period)
    while level < max_t:
        levels.append(level)
        level *= reduction_factor
    return levels


def ahead_of(points: np.ndarray, index: int) -> int:
    """How many of `points` (minimized metrics; NaN: incomplete) come strictly before point
    `index` in the order (non-dominated rank, larger crowding distance within the rank), the
    incomplete points after every complete one."""
    complete = ~np.isnan(points).any(axis=1)
    if not complete[index]:
        return int(complete.sum())
    rows = np.flatnonzero(complete)
    ranks = nondominated_ranks(points[rows])
    mine = ranks[rows == index][0]
    front = rows[ranks == mine]
    crowding = dict(zip(front, crowding_distances(points[front]), strict=True))
    better = sum(crowding[i] > crowding[index] for i in front)
    return int((ranks < mine).sum() + better)


@dataclass
class Rungs:
    """Every rung's recorded metric vectors, and the decision for a trial reaching one.
    Mutable: it is the scheduler's state, saved and restored with it."""

    # the rungs' milestones, lowest first (`rung_levels`)
    levels: Sequence[float]
    # keep the top 1/reduction_factor of a rung's recorded trials
    reduction_factor: float
    # "max" or "min" per metric, in the order of the vectors given
    modes: Sequence[str]
    # rung milestone -> trial id -> its minimized metric vector there
    recorded: dict[float, dict[str, np.ndarray]] = field(default_factory=dict)
    # trials stopped at a rung so far (the progress table's debug line)
    stopped: int = 0

    def decide(self, trial_id: str, time: float, values: Sequence[float]) -> bool:
        """Whether the trial continues after a result at `time` with metric `values` (NaN
        for a metric it lacks): False only when it reaches a rung and is not in the rung's
        top 1/reduction_factor."""
        rung = self._rung_to_decide(trial_id, time)
        if rung is None:
            return True
        recorded = self.recorded.setdefault(rung, {})
        recorded[trial_id] = minimized(np.asarray([values], dtype=float), self.modes)[0]
        ahead = ahead_of(np.stack(list(recorded.values())), len(recorded) - 1)
        keep = ahead < len(recorded) / self.reduction_factor
        self.stopped += not keep
        return keep

    def record(self, trial_id: str, time: float, values: Sequence[float]) -> None:
        """Record a result that decides nothing (a trial's last), for later comparisons."""
        rung = self._rung_to_decide(trial_id, time)
        if rung is not None:
            vector = minimized(np.asarray([values], dtype=float), self.modes)[0]
            self.recorded.setdefault(rung, {})[trial_id] = vector

    def _rung_to_decide(self, trial_id: str, time: float) -> float | None:
        """The highest rung at or below `time`, unless the trial was recorded there already
        (then it was decided there, and nothing lower is decided again)."""
        reached = [level for level in self.levels if level <= time]
        if not reached or trial_id in self.recorded.get(reached[-1], {}):
            return None
        return reached[-1]

    def summary(self) -> str:
        """'MO-ASHA: 3 stopped; rung 1: 6 trials, 3 on the front | rung 2: ...'."""
        parts = []
        for level in self.levels:
            vectors = list(self.recorded.get(level, {}).values())
            complete = [v for v in vectors if not np.isnan(v).any()]
            front = (nondominated_ranks(np.stack(complete)) == 0).sum() if complete else 0
            parts.append(f"rung {_number(level)}: {len(vectors)} trials, {front} on the front")
        return f"MO-ASHA: {self.stopped} stopped; " + " | ".join(parts)


def _number(value: float) -> str:
    return str(int(value)) if math.isfinite(value) and value == int(value) else f"{value:g}"
