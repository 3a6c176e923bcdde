"""Ensemble selection's data (MINIMAL stand-in, helper e2): only the interface agreed with
helper e1 for issue 36, so that the export and the server can be built and tested before e1's
module lands; the merger keeps e1's version of this file.

Each member's scores of one level are min-max normalized per document, then weighted and summed
per level.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hiersearch.errors import InputError
from hiersearch.report.experiment import read_experiment_json

ENSEMBLE_FILE = "ensemble.json"
KIND_TRIAL, KIND_BASELINE = "trial", "baseline"


def normalize(scores: np.ndarray) -> np.ndarray:
    """Per document (row): (s - min) / (max - min); 0 where max == min."""
    scores = np.asarray(scores, dtype=np.float64)
    low = scores.min(axis=1, keepdims=True) if scores.size else scores[:, :0]
    spread = (scores.max(axis=1, keepdims=True) - low) if scores.size else scores[:, :0]
    out = np.zeros_like(scores)
    np.divide(scores - low, spread, out=out, where=spread > 0)
    return out


@dataclass(frozen=True)
class EnsembleMember:
    kind: str  # "trial" | "baseline"
    trial_id: str | None
    experiment: str
    checkpoint: str | None  # the trial's final checkpoint directory (None: the baseline)


@dataclass(frozen=True)
class Ensemble:
    members: tuple[EnsembleMember, ...]
    weights: tuple[tuple[float, ...], ...]  # [level][member], sums to 1 per level
    mode: str
    steps: int
    seed: int
    metric: str
    metrics: dict[str, float] = field(default_factory=dict)  # none measured yet

    def to_json(self) -> dict[str, Any]:
        return {
            "members": [m.__dict__ for m in self.members],
            "weights": [list(level) for level in self.weights],
            "mode": self.mode,
            "steps": self.steps,
            "seed": self.seed,
            "metric": self.metric,
            "metrics": dict(self.metrics),
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any], where: str) -> Ensemble:
        try:
            members = tuple(
                EnsembleMember(str(m["kind"]), m.get("trial_id"), str(m["experiment"]),
                               m.get("checkpoint"))
                for m in obj["members"]
            )
            weights = tuple(tuple(float(w) for w in level) for level in obj["weights"])
            return cls(members, weights, str(obj["mode"]), int(obj["steps"]), int(obj["seed"]),
                       str(obj["metric"]), dict(obj.get("metrics") or {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"not an ensemble ({exc!r})", where=where) from None


def combine(level_scores: Sequence[Sequence[np.ndarray]], ensemble: Ensemble) -> list[np.ndarray]:
    """[member][level] raw scores -> per level the weighted sum of the normalized scores."""
    out = []
    for level, weights in enumerate(ensemble.weights):
        total = np.zeros_like(np.asarray(level_scores[0][level], dtype=np.float64))
        for member, weight in enumerate(weights):
            total = total + weight * normalize(level_scores[member][level])
        out.append(total)
    return out


def read_ensemble(experiment: str) -> Ensemble | None:
    """The served ensemble of the experiment's `ensemble.json` (`{"schema", "served",
    "ensembles": {mode: ensemble}}`, as e1's fit writes it), or None when it has none."""
    obj = read_experiment_json(experiment, ENSEMBLE_FILE)
    if obj is None:
        return None
    where = f"{experiment.rstrip('/')}/{ENSEMBLE_FILE}"
    try:
        served = obj["ensembles"][obj["served"]]
    except (KeyError, TypeError):
        raise InputError("not an ensemble file (no served ensemble)", where=where) from None
    return Ensemble.from_json(served, where)
