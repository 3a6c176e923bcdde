"""Ensemble selection over a search's trials and its baseline (Caruana et al., ICML 2004, as
auto-sklearn's `EnsembleSelection` and AutoGluon's `WeightedEnsemble_L2`), fitted on dev.

Each member's scores of a level are first normalized per document (`normalize`: min-max over
the level's labels, so that the best label of every member is 1 and its worst 0), then summed
with the member's weight (`combine`). Min-max rather than ranks: a member's confidence gap (a
trial sure of one label and unsure of the rest, a TF-IDF vote with most labels at 0) survives
it, and ranks would spread a k-NN vote's many tied zeros over the same range as a trial's
distinct scores. It needs nothing but the document itself, so `hiersearch predict` normalizes
exactly as the fit did.

The weights come from greedy forward selection with replacement (`select`): start empty, and
at each of `steps` steps add the member (possibly again) whose addition gives the best dev
value, ties broken by a seeded draw; the weights are the counts of the best prefix of those
steps (the earliest at its value, as AutoGluon keeps), so a step that made dev worse is
undone. Per level (`mode="per_level"`, the default), each level's weights fit that level's dev
R-Precision, so a level takes its scores from the members best at it; `mode="global"` picks
one set of weights for every level on the search metric. 50 steps (auto-sklearn's
`ensemble_size`; AutoGluon takes 100): weights in steps of 1/50 are finer than the differences
between members that a few thousand dev documents can tell apart, and the cost is linear in
them.

The result is an `Ensemble` (members, weights per level, its dev and test metrics under the
trials' keys), kept as `ensemble.json` in the experiment directory beside the members it was
fitted on: both selections, the one served (the better on dev) and the members skipped with
their reason. The members' scores come from search/members.py, which reads them from the
trials' checkpoints and the baseline's `baseline_scores.npz`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hiersearch import metrics as M
from hiersearch.errors import InputError
from hiersearch.report.experiment import open_location, read_experiment_json, write_text

ENSEMBLE_FILE = "ensemble.json"
SCHEMA = "hiersearch.ensemble/1"
STATUS_ENSEMBLE = "ensemble"
PER_LEVEL, GLOBAL = "per_level", "global"
MODES = (PER_LEVEL, GLOBAL)
KIND_TRIAL, KIND_BASELINE = "trial", "baseline"
# The experiment's dense k-NN on its backbone's pooled vectors (report/dense_knn.py).
KIND_DENSE = "dense_knn"
KINDS = (KIND_TRIAL, KIND_BASELINE, KIND_DENSE)
# Greedy steps (see the module docstring) and members (the search's best by its metric).
STEPS = 50
TOP = 20
SEED = 0
# Caruana et al. 2006's refinements against fitting dev (`fit_ensemble`), off by default
# (BENCHMARKS 15 (c): neither was better on dev). Sorted initialization: start from the
# members ranked by their own dev value, the prefix of that ranking best on dev, once each.
SORTED_INIT = False
# Bagged selection: this many selections, each over a random `BAG_FRACTION` of the members,
# their weights averaged (0: one selection over every member). 20 bags of half the members
# are the paper's.
BAGS = 0
BAG_FRACTION = 0.5
# Dev's parts for `cross_validated`: two halves, each fitted on the other (half of HPO's dev
# is 630 documents: still thousands of label decisions per level).
CV_FOLDS = 2


def normalize(scores: np.ndarray) -> np.ndarray:
    """Per-document min-max of one member's scores of one level: [docs, labels] -> float32 in
    [0, 1], each document's best label 1 and its worst 0; a document whose labels all score
    the same is all 0 (it tells nothing apart)."""
    values = np.asarray(scores, dtype=np.float32)
    if values.ndim != 2:
        raise ValueError(f"scores must be [docs, labels], got shape {values.shape}")
    if values.shape[1] == 0:
        return values.copy()
    low = values.min(axis=1, keepdims=True)
    span = values.max(axis=1, keepdims=True) - low
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(span > 0, (values - low) / np.where(span > 0, span, 1), 0)
    return out.astype(np.float32, copy=False)


@dataclass(frozen=True)
class EnsembleMember:
    """One member: a finished trial, the experiment's baseline or its dense k-NN."""

    kind: str  # one of KINDS
    trial_id: str | None  # the trial's id; None for the baseline and the dense k-NN
    experiment: str  # the experiment directory it came from (a two-stage search's stage dir)
    checkpoint: str | None  # the trial's final checkpoint (`hiersearch export --trial` reads)

    @property
    def name(self) -> str:
        return self.trial_id if self.kind == KIND_TRIAL and self.trial_id else self.kind

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "trial_id": self.trial_id, "experiment": self.experiment,
                "checkpoint": self.checkpoint}

    @classmethod
    def from_json(cls, obj: Any, where: str) -> EnsembleMember:
        if not isinstance(obj, dict) or obj.get("kind") not in KINDS:
            raise InputError(f"a member must be an object with kind {', '.join(KINDS)}",
                             where=where)
        return cls(str(obj["kind"]), _text(obj.get("trial_id")), str(obj.get("experiment", "")),
                   _text(obj.get("checkpoint")))


@dataclass(frozen=True)
class Ensemble:
    """Members and their weights per level (each level's summing to 1, 0 for a member the
    level did not pick), how they were selected, and the ensemble's metrics."""

    members: tuple[EnsembleMember, ...]
    weights: tuple[tuple[float, ...], ...]  # [level][member]
    mode: str  # PER_LEVEL or GLOBAL
    steps: int  # greedy steps run (the weights are the best prefix's)
    seed: int  # the draw that breaks ties
    metric: str  # the search metric: the members' ranking and the global selection's target
    metrics: dict[str, float] = field(default_factory=dict)  # dev/* and test/* (M.evaluate)
    sorted_init: bool = SORTED_INIT  # whether the selection started from the sorted best
    bags: int = BAGS  # selections averaged over random halves of the members (0: one, all)

    def used(self) -> list[int]:
        """The members some level gives weight to, in member order."""
        return [m for m in range(len(self.members)) if any(w[m] > 0 for w in self.weights)]

    def describe(self) -> str:
        """Members and weights in one line: `FLAT 0.42 | baseline 0.30 | ...` (per level when
        levels differ)."""
        def level(weights: Sequence[float]) -> str:
            picked = sorted(((w, m) for m, w in enumerate(weights) if w > 0), reverse=True)
            return ", ".join(f"{self.members[m].name} {w:.2f}" for w, m in picked)

        lines = [level(w) for w in self.weights]
        if len(set(lines)) == 1:
            return lines[0] if lines else ""
        return " | ".join(f"L{n}: {line}" for n, line in enumerate(lines, start=1))

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode, "steps": self.steps, "seed": self.seed, "metric": self.metric,
            "sorted_init": self.sorted_init, "bags": self.bags,
            "members": [m.to_json() for m in self.members],
            "weights": [list(w) for w in self.weights],
            "metrics": {k: _finite_or_none(v) for k, v in self.metrics.items()},
        }

    @classmethod
    def from_json(cls, obj: Any, where: str) -> Ensemble:
        try:
            members = tuple(
                EnsembleMember.from_json(m, f"{where}: members[{i}]")
                for i, m in enumerate(obj["members"])
            )
            weights = tuple(tuple(float(w) for w in level) for level in obj["weights"])
            ensemble = cls(
                members=members, weights=weights, mode=str(obj["mode"]),
                steps=int(obj["steps"]), seed=int(obj["seed"]), metric=str(obj["metric"]),
                metrics={str(k): float("nan") if v is None else float(v)
                         for k, v in (obj.get("metrics") or {}).items()},
                sorted_init=bool(obj.get("sorted_init", False)), bags=int(obj.get("bags", 0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"not an ensemble ({exc!r})", where=where) from None
        if ensemble.mode not in MODES or any(len(w) != len(members) for w in weights):
            raise InputError("an ensemble's mode or weights do not fit its members", where=where)
        return ensemble


def combine(level_scores: Sequence[Sequence[np.ndarray]], ensemble: Ensemble) -> list[np.ndarray]:
    """Member x level raw scores -> per level, the ensemble's scores: each member's scores
    normalized (`normalize`) and summed with its weight; members of weight 0 are not read
    (None is allowed there)."""
    if len(level_scores) != len(ensemble.members):
        raise ValueError(f"{len(level_scores)} members' scores for {len(ensemble.members)}")
    out = []
    for level, weights in enumerate(ensemble.weights):
        total: np.ndarray | None = None
        for member, weight in enumerate(weights):
            if weight <= 0:
                continue
            part = np.float32(weight) * normalize(level_scores[member][level])
            total = part if total is None else total + part
        if total is None:
            raise ValueError(f"level {level + 1} gives no member weight")
        out.append(total)
    return out


# ------------------------------------------------------------------------------ selection


def _objective(metric: str, levels: int) -> tuple[str, Callable[..., float]]:
    """The global selection's target: the search metric when it is a dev R-Precision (per
    level, micro or macro), else dev macro R-Precision; as (its key, f(per-level scores,
    golds))."""
    keys = {M.rp_level_key("dev", n): n - 1 for n in range(1, levels + 1)}
    if metric in keys:
        return metric, lambda s, g: _rp(g[keys[metric]], s[keys[metric]])
    if metric == M.rp_micro_key("dev"):
        return metric, lambda s, g: _rp(np.concatenate(g, axis=1), np.concatenate(s, axis=1))
    return M.rp_macro_key("dev"), _macro


def _macro(scores: Sequence[np.ndarray], golds: Sequence[np.ndarray]) -> float:
    return float(np.mean([_rp(g, s) for g, s in zip(golds, scores, strict=True)]))


def _rp(gold: np.ndarray, scores: np.ndarray) -> float:
    value, _ = M.r_precision(gold, scores)
    return -np.inf if np.isnan(value) else value


def select(
    candidates: Sequence[Sequence[np.ndarray]],
    golds: Sequence[np.ndarray],
    value: Callable[[list[np.ndarray], Sequence[np.ndarray]], float],
    steps: int,
    rng: np.random.Generator,
    start: np.ndarray | None = None,
) -> np.ndarray:
    """Greedy forward selection with replacement: `candidates[m][l]` member m's normalized dev
    scores of the levels `golds` holds; `value(per-level sums, golds)` is what the steps
    maximize. Returns each member's count in the best prefix of `steps` steps, which starts
    from the counts `start` (kept: the steps only add) when given."""
    counts = np.zeros(len(candidates), dtype=np.int64) if start is None else start.copy()
    total = [sum((c * float(n) for c, n in zip(level, counts, strict=True) if n),
                 np.zeros_like(level[0]))
             for level in zip(*candidates, strict=True)]
    best = value(total, golds) if counts.any() else -np.inf
    best_counts = counts.copy()
    for _ in range(steps):
        values = np.array([
            value([t + c for t, c in zip(total, member, strict=True)], golds)
            for member in candidates
        ])
        top = np.flatnonzero(values == values.max())
        pick = int(top[0] if len(top) == 1 else rng.choice(top))
        counts[pick] += 1
        total = [t + c for t, c in zip(total, candidates[pick], strict=True)]
        if values[pick] > best:  # the earliest prefix at the best value
            best, best_counts = float(values[pick]), counts.copy()
    return best_counts


def sorted_start(
    candidates: Sequence[Sequence[np.ndarray]],
    golds: Sequence[np.ndarray],
    value: Callable[[list[np.ndarray], Sequence[np.ndarray]], float],
) -> np.ndarray:
    """Sorted initialization (Caruana et al. 2004, section 2.2): the members ranked by their
    own dev value (ties: member order), and of that ranking the prefix whose equal-weight sum
    is best on dev (the shortest at its value), each of its members once."""
    own = np.array([value(list(member), golds) for member in candidates])
    order = np.argsort(-own, kind="stable")
    total = [np.zeros_like(level) for level in candidates[0]]
    best, size = -np.inf, 0
    for n, member in enumerate(order, start=1):
        total = [t + c for t, c in zip(total, candidates[member], strict=True)]
        current = value(total, golds)
        if current > best:
            best, size = current, n
    counts = np.zeros(len(candidates), dtype=np.int64)
    counts[order[:size]] = 1
    return counts


def selection_weights(
    candidates: Sequence[Sequence[np.ndarray]],
    golds: Sequence[np.ndarray],
    value: Callable[[list[np.ndarray], Sequence[np.ndarray]], float],
    steps: int,
    rng: np.random.Generator,
    *,
    sorted_init: bool = SORTED_INIT,
    bags: int = BAGS,
) -> tuple[float, ...]:
    """The members' weights (summing to 1): one selection (`select`, from `sorted_start`
    with `sorted_init`) over every member, or with `bags` >= 1 bagged selection (Caruana et
    al. 2006, section 3.3): `bags` selections, each over a random `BAG_FRACTION` of the
    members (drawn up front), their weights averaged; a member in no bag weighs 0."""
    def one(members: Sequence[Sequence[np.ndarray]]) -> np.ndarray:
        start = sorted_start(members, golds, value) if sorted_init else None
        counts = select(members, golds, value, steps, rng, start)
        return counts / counts.sum()

    if bags < 1:
        return tuple(float(w) for w in one(candidates))
    size = max(1, round(BAG_FRACTION * len(candidates)))
    subsets = [np.sort(rng.choice(len(candidates), size, replace=False)) for _ in range(bags)]
    total = np.zeros(len(candidates))
    for subset in subsets:
        total[subset] += one([candidates[m] for m in subset])
    return tuple(float(w) for w in total / bags)


def fit_ensemble(
    members: Sequence[EnsembleMember],
    scores: Mapping[str, Sequence[Sequence[np.ndarray]]],
    golds: Mapping[str, Sequence[np.ndarray]],
    *,
    mode: str = PER_LEVEL,
    steps: int = STEPS,
    seed: int = SEED,
    metric: str = M.DEFAULT_METRIC,
    sorted_init: bool = SORTED_INIT,
    bags: int = BAGS,
) -> Ensemble:
    """Ensemble selection on dev. `scores[split][m][l]`: member m's raw scores of level l
    (`golds[split][l]` its gold multi-hot), "dev" required, "test" reported when given;
    `sorted_init` and `bags` as `selection_weights` takes them."""
    if mode not in MODES:
        raise InputError(f"mode must be one of {', '.join(MODES)}", where="ensemble")
    if not members or steps < 1 or bags < 0:
        raise InputError("an ensemble needs a member and a step (and bags >= 0)",
                         where="ensemble")
    dev = [[normalize(level) for level in member] for member in scores["dev"]]
    levels = len(golds["dev"])
    rng = np.random.default_rng(seed)
    how = {"sorted_init": sorted_init, "bags": bags}
    if mode == PER_LEVEL:
        weights = [
            selection_weights([[m[level]] for m in dev], [golds["dev"][level]],
                              lambda s, g: _rp(g[0], s[0]), steps, rng, **how)
            for level in range(levels)
        ]
    else:
        _, value = _objective(metric, levels)
        weights = [selection_weights(dev, golds["dev"], value, steps, rng, **how)] * levels
    ensemble = Ensemble(tuple(members), tuple(weights), mode, steps, seed, metric, {}, **how)
    metrics: dict[str, float] = {}
    for split, split_scores in scores.items():
        if split in golds and len(golds[split][0]):
            metrics.update(M.evaluate(golds[split], combine(split_scores, ensemble), split))
    return dataclasses.replace(ensemble, metrics=metrics)


def cross_validated(
    members: Sequence[EnsembleMember],
    dev_scores: Sequence[Sequence[np.ndarray]],
    dev_golds: Sequence[np.ndarray],
    *,
    folds: int = CV_FOLDS,
    **fit: Any,
) -> float:
    """A selection's dev value out of sample: dev's documents in `folds` random parts (drawn
    from `fit`'s seed), the selection (`fit_ensemble` with `fit`'s options) fitted on all but
    one and measured on it by the global selection's target, the values averaged. Unlike the
    fitted ensemble's own dev value it does not favour the selection with more freedom (per
    level fits each level's weights on the level it is measured on)."""
    documents = len(dev_golds[0])
    if folds < 2 or documents < folds:
        raise InputError(f"needs >= 2 folds of >= 1 dev document ({folds}, {documents})",
                         where="ensemble")
    key, _ = _objective(fit.get("metric", M.DEFAULT_METRIC), len(dev_golds))
    held_key = key.replace("dev/", "held/", 1)
    order = np.random.default_rng(fit.get("seed", SEED)).permutation(documents)

    def rows(chosen: np.ndarray) -> tuple[list, list]:
        return ([[level[chosen] for level in member] for member in dev_scores],
                [gold[chosen] for gold in dev_golds])

    values = []
    for part in np.array_split(order, folds):
        fit_scores, fit_golds = rows(np.setdiff1d(order, part))
        held_scores, held_golds = rows(np.sort(part))
        held = fit_ensemble(members, {"dev": fit_scores, "held": held_scores},
                            {"dev": fit_golds, "held": held_golds}, **fit)
        values.append(held.metrics[held_key])
    return float(np.mean(values))


# --------------------------------------------------------------------------- ensemble.json


@dataclass(frozen=True)
class EnsembleFile:
    """What `ensemble.json` holds: both selections, which one is served (the leaderboard's row,
    what `export --ensemble` writes), the members skipped and why, and the fit's cost."""

    ensembles: dict[str, Ensemble]  # by mode
    served: str  # the mode of the served one: the better on dev by the search metric
    skipped: tuple[tuple[str, str], ...] = ()  # (member, reason)
    seconds: float = 0.0  # the selection's wall time, members' scores already read
    top: int = TOP  # the members it chose from: the search's best by its metric

    @property
    def ensemble(self) -> Ensemble:
        return self.ensembles[self.served]

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "served": self.served, "top": self.top, "seconds": round(self.seconds, 2),
            "skipped": [{"member": m, "reason": r} for m, r in self.skipped],
            "ensembles": {mode: e.to_json() for mode, e in self.ensembles.items()},
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any], where: str) -> EnsembleFile:
        raw = obj.get("ensembles")
        if obj.get("schema") != SCHEMA or not isinstance(raw, dict):
            raise InputError(f"not an ensemble file (schema {SCHEMA})", where=where)
        ensembles = {m: Ensemble.from_json(e, f"{where}: {m}") for m, e in raw.items()}
        if obj.get("served") not in ensembles:
            raise InputError("'served' names no ensemble in the file", where=where)
        skipped = tuple(
            (str(s.get("member")), str(s.get("reason")))
            for s in obj.get("skipped") or [] if isinstance(s, dict)
        )
        return cls(ensembles, str(obj["served"]), skipped, float(obj.get("seconds") or 0.0),
                   int(obj.get("top") or TOP))


def choose_served(ensembles: Mapping[str, Ensemble]) -> str:
    """The mode whose ensemble is better on dev by the global selection's target (the search
    metric when it is a dev R-Precision, else dev macro); ties: per level."""
    def dev(mode: str) -> tuple[float, bool]:
        ensemble = ensembles[mode]
        key, _ = _objective(ensemble.metric, len(ensemble.weights))
        value = ensemble.metrics.get(key, float("nan"))
        return (-np.inf if np.isnan(value) else value), mode == PER_LEVEL

    return max(ensembles, key=dev)


def write_ensemble(experiment: str, fitted: EnsembleFile) -> None:
    filesystem, path = open_location(experiment)
    text = json.dumps(fitted.to_json(), indent=2) + "\n"
    write_text(filesystem, f"{path}/{ENSEMBLE_FILE}", text)


def read_ensemble_file(experiment: str) -> EnsembleFile | None:
    """The experiment's `ensemble.json`; None when there is none. A damaged one is an
    InputError naming it."""
    obj = read_experiment_json(experiment, ENSEMBLE_FILE)
    where = f"{experiment.rstrip('/')}/{ENSEMBLE_FILE}"
    return None if obj is None else EnsembleFile.from_json(obj, where)


def read_ensemble(experiment: str) -> Ensemble | None:
    """The served ensemble of the experiment (what `export --ensemble` writes); None when
    none was fitted."""
    fitted = read_ensemble_file(experiment)
    return None if fitted is None else fitted.ensemble


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _finite_or_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None
