"""One entry of a space file's `search:` section, a `Dimension`: `{type: loguniform | uniform |
int, low, high, step}` or `{type: categorical, choices}`, parsed and checked once
(`Dimension.parse`, errors naming the file, section and key), and everything a search asks of
it: its Optuna distribution, its define-by-run `suggest_*` call, the value of a fixed trial,
a grid's values, what population-based training mutates and clips to, and its YAML form.

Pure (no Ray): search/pbt.py makes Tune's domains of what `pbt_values` and `clip_range` say.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from typing import Any

from hiersearch.errors import InputError
from hiersearch.typed import check_keys

DISTRIBUTIONS = ("loguniform", "uniform", "int", "categorical")
# The kinds whose values are floats: PBT perturbs them by a factor and clips them to the range.
RANGES = ("loguniform", "uniform")

__all__ = ["DISTRIBUTIONS", "Dimension"]


@dataclass(frozen=True)
class Dimension:
    """A searched `TrialConfig` field's distribution, checked (build it with `parse`)."""

    kind: str
    # An int's or a range's ends (ints for `int`, floats for the ranges); None for categorical.
    low: float | None = None
    high: float | None = None
    # The grid step of an int or a uniform range; None: none given (an int's step is then 1).
    step: float | None = None
    # A categorical's choices, in the file's order (the first is a fixed trial's value).
    choices: tuple[Any, ...] = ()
    # The mapping as the file gave it (what a stage's space or hiersearch.json is written with).
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def parse(cls, value: Any, where: str) -> Dimension:
        """The dimension of a `search:` entry; what it or Optuna refuses is an InputError
        naming `where` (file: search: key), not an error in a trial after Ray has started."""
        if not isinstance(value, dict) or value.get("type") not in DISTRIBUTIONS:
            raise InputError(f"needs type: one of {', '.join(DISTRIBUTIONS)}", where=where)
        kind = value["type"]
        categorical = kind == "categorical"
        check_keys(value, {"type", "choices"} if categorical else {"type", "low", "high", "step"},
                   where)
        raw = copy.deepcopy(value)
        if categorical:
            choices = value.get("choices")
            if not isinstance(choices, list) or not choices:
                raise InputError("categorical needs a non-empty list of choices", where=where)
            return cls(kind, choices=tuple(choices), raw=raw)._checked(where)
        try:
            low, high = float(value["low"]), float(value["high"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError("needs numeric low and high", where=where) from exc
        if not low < high or (kind == "loguniform" and low <= 0):
            raise InputError(f"bad range [{low}, {high}]", where=where)
        if kind == "int":
            ends = (_whole(value, key, where) for key in ("low", "high", "step"))
            low_int, high_int, step_int = ends
            step = step_int if "step" in value else None
            return cls(kind, low_int, high_int, step, raw=raw)._checked(where)
        step = value.get("step")
        if step is not None and not isinstance(step, (int, float)) or isinstance(step, bool):
            raise InputError(f"step: expected a number, got {step!r}", where=where)
        return cls(kind, low, high, None if step is None else float(step), raw=raw)._checked(where)

    def _checked(self, where: str) -> Dimension:
        """Self, once Optuna has built its distribution: what Optuna refuses (step 0, a step
        with a log scale, a range the step does not divide, a choice it cannot store) is an
        error naming the key. Optuna's warnings (it would silently shrink a range) count too."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                self.optuna_distribution()
        except (ValueError, Warning) as exc:
            first = str(exc).strip().splitlines()[0]
            raise InputError(f"Optuna refuses this distribution: {first}", where=where) from None
        return self

    @property
    def log(self) -> bool:
        return self.kind == "loguniform"

    def optuna_distribution(self) -> Any:
        """The Optuna distribution `suggest` asks for."""
        from optuna import distributions as od

        if self.kind == "categorical":
            return od.CategoricalDistribution(list(self.choices))
        if self.kind == "int":
            return od.IntDistribution(int(self.low), int(self.high), step=self._int_step)
        return od.FloatDistribution(
            float(self.low), float(self.high), log=self.log, step=self.step
        )

    def suggest(self, trial: Any, name: str) -> Any:
        """The define-by-run call: `trial.suggest_*` of this distribution under `name`."""
        if self.kind == "categorical":
            return trial.suggest_categorical(name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), step=self._int_step)
        return trial.suggest_float(name, self.low, self.high, log=self.log, step=self.step)

    @property
    def default(self) -> Any:
        """A fixed trial's value (an enqueued variant's, a screen's): the first choice, an
        int's low end, a range's midpoint (geometric on a log scale)."""
        if self.kind == "categorical":
            return self.choices[0]
        if self.kind == "int":
            return int(self.low)
        low, high = float(self.low), float(self.high)
        if self.log:
            return float((low * high) ** 0.5)
        return (low + high) / 2

    def grid_values(self) -> list[Any]:
        """The values a grid search runs: every choice (a grid needs categorical ones)."""
        if self.kind != "categorical":
            raise ValueError(f"a grid needs categorical distributions, not {self.kind}")
        return list(self.choices)

    def edges(self) -> list[Any]:
        """Every choice, or both ends: the values a `TrialConfig` must accept for the whole
        dimension to be valid."""
        if self.kind == "categorical":
            return list(self.choices)
        return [self.low, self.high]

    def pbt_values(self) -> list[Any] | None:
        """What population-based training shifts a value between: the choices, every value of
        an int; None for a range, which it perturbs by a factor (then clips: `clip_range`)."""
        if self.kind == "categorical":
            return list(self.choices)
        if self.kind == "int":
            return list(range(int(self.low), int(self.high) + 1, self._int_step))
        return None

    @property
    def clip_range(self) -> tuple[float, float] | None:
        """The range a perturbed float is clipped back into; None where PBT only picks listed
        values (choices, an int's values)."""
        if self.kind not in RANGES:
            return None
        return float(self.low), float(self.high)

    @property
    def _int_step(self) -> int:
        return 1 if self.step is None else int(self.step)


def _whole(value: dict[str, Any], key: str, where: str) -> int:
    """An int distribution's low, high or step (default 1) as an int; 2.5 is an error."""
    number = value.get(key, 1)
    if isinstance(number, bool) or not isinstance(number, (int, float)) or number != int(number):
        raise InputError(f"{key}: expected an integer, got {number!r}", where=where)
    return int(number)
