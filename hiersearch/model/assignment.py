"""Layer-to-level assignments: which encoder layers' [CLS] vectors feed the head of each level.

Layers and levels are 1-based. An assignment is either FLAT (one head on the last layer over
all labels) or one group of layers per level; a group's [CLS] vectors are concatenated in the
group's order.

The named variants of the paper (Manginas et al. 2020) and their generalization to N layers and
L levels:

- FLAT: one head on layer N.
- LAST-<L>: the top L layers, one each (LAST-SIX for six levels).
- ONE-BY-ONE: single layers spread evenly, level n on layer floor(n * N / L), so that the last
  level sits on layer N (12 layers x 6 levels -> 2, 4, .., 12).
- IN-PAIRS: all N layers split into L contiguous groups as even as possible; when N % L != 0
  the deepest N % L levels get the larger groups (deeper levels usually have more labels, and
  the lower layers then stay closer to single-task use).
- HYBRID: skip the lowest floor(N/4) layers (fewer when that would leave less than one layer
  per level: at most N - L are skipped); the R remaining layers are split, in order, into L
  contiguous groups of floor(R/L) or floor(R/L)+1 layers, the R % L levels with the most labels
  getting the larger ones. For the paper's 12 x 6 this is "the R - L = 3 levels with the most
  labels get pairs, the others single layers"; when R > 2L the groups simply grow beyond pairs.
  Ties in label counts, and the case without label counts, use the level index as the proxy:
  deeper = more labels.

The search space over assignments, and its Optuna sampling: `assignment_space.py`.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hiersearch.errors import InputError

# The deepest encoder known: DeepNet's 1,000-layer Transformer (Wang et al. 2022, "DeepNet:
# Scaling Transformers to 1,000 Layers"); BERT-large has 24 layers, the deepest LLMs ~130. A
# larger count names no encoder, and the layer lists built for it (IN-PAIRS lists every layer,
# a range "1-N" every layer of it) would only fill memory: it is refused.
MAX_LAYERS = 1000

_NUMBER_WORDS = (
    "ZERO", "ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX",
    "SEVEN", "EIGHT", "NINE", "TEN", "ELEVEN", "TWELVE",
)  # fmt: skip


def check_layer_count(num_layers: int, where: str) -> None:
    """InputError naming `where` unless 1 <= num_layers <= MAX_LAYERS."""
    if num_layers < 1:
        raise InputError(f"the encoder needs at least one layer, got {num_layers}", where=where)
    if num_layers > MAX_LAYERS:
        raise InputError(
            f"{num_layers} layers: at most {MAX_LAYERS:,}, the depth of the deepest encoder "
            "known (DeepNet, Wang et al. 2022)",
            where=where,
        )


def as_int(value: Any, what: str, where: str | None) -> int:
    """`value` as an int (lossless only: 3.0 yes, 3.5 and True no); InputError otherwise."""
    if isinstance(value, bool):
        raise InputError(f"{what} must be an integer, got {value!r}", where=where)
    try:
        return operator.index(value)
    except TypeError:
        raise InputError(f"{what} must be an integer, got {value!r}", where=where) from None


@dataclass(frozen=True)
class LayerAssignment:
    """Which 1-based encoder layers feed the head of each 1-based level."""

    # groups[n-1]: the layers whose [CLS] vectors are concatenated for level n; () when flat
    groups: tuple[tuple[int, ...], ...]
    # FLAT: a single head on the last layer over the labels of all levels
    flat: bool = False
    # the named variant this is ("FLAT", "LAST-SIX", ..); a label only, not part of equality
    name: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        groups = tuple(
            tuple(as_int(layer, "a layer", "assignment") for layer in group)
            for group in self.groups
        )
        object.__setattr__(self, "groups", groups)
        if self.flat and groups:
            raise InputError("a FLAT assignment has no per-level groups", where="assignment")
        if not self.flat and not groups:
            raise InputError(
                "an assignment needs one group of layers per level", where="assignment"
            )

    @classmethod
    def make_flat(cls, name: str | None = "FLAT") -> LayerAssignment:
        return cls(groups=(), flat=True, name=name)

    def validate(self, num_layers: int, num_levels: int) -> None:
        """Raise InputError unless this assignment fits an N-layer encoder and L levels."""
        where = f"assignment {self.to_string()}"
        if num_layers < 1:
            raise InputError(
                f"the encoder needs at least one layer, got {num_layers}", where=where
            )
        if self.flat:
            return
        if len(self.groups) != num_levels:
            raise InputError(
                f"{len(self.groups)} levels given but the hierarchy has {num_levels}", where=where
            )
        for level, group in enumerate(self.groups, start=1):
            if not group:
                raise InputError(f"level L{level} has no layers", where=where)
            for layer in group:
                if not 1 <= layer <= num_layers:
                    raise InputError(
                        f"level L{level}: layer {layer} of a {num_layers}-layer model "
                        f"(layers are 1..{num_layers})",
                        where=where,
                    )
            if len(set(group)) != len(group):
                raise InputError(f"level L{level} lists a layer twice", where=where)

    def layers_used(self, num_layers: int) -> tuple[int, ...]:
        if self.flat:
            return (num_layers,)
        return tuple(sorted({layer for group in self.groups for layer in group}))

    def to_string(self) -> str:
        """"FLAT" or "L1:7|L2:8+9|..": every layer listed (the form tables and JSON keep)."""
        if self.flat:
            return "FLAT"
        return "|".join(
            f"L{level}:" + "+".join(str(layer) for layer in group)
            for level, group in enumerate(self.groups, start=1)
        )

    def to_short_string(self) -> str:
        """`to_string` with each run of 3 or more consecutive layers as a range, "L1:1-4|L2:5+6"
        (for people: a deep encoder's blocks stay short); `from_string` reads it too."""
        if self.flat:
            return "FLAT"
        return "|".join(
            f"L{level}:" + "+".join(_runs(group))
            for level, group in enumerate(self.groups, start=1)
        )

    @classmethod
    def from_string(cls, s: str) -> LayerAssignment:
        """Parse "FLAT" or "L1:7|L2:8+9|L3:10-12": levels in order, layers joined with '+', a
        range a-b standing for a, a+1, .., b."""
        text = s.strip()
        if text.upper() == "FLAT":
            return cls.make_flat(name=None)
        if not text:
            raise InputError("empty assignment (expected FLAT or L1:<layers>|L2:..)")
        groups = []
        for level, raw in enumerate(text.split("|"), start=1):
            token = raw.strip()
            head, sep, body = token.partition(":")
            if not sep or head.strip().upper() != f"L{level}":
                raise InputError(
                    f"bad level token {token!r} ({_expected(level)})", where="assignment"
                )
            layers = [layer for part in body.split("+") for layer in _layers(part, token, level)]
            groups.append(tuple(layers))
        return cls(groups=tuple(groups))

    def to_json(self) -> dict[str, Any]:
        return {
            "string": self.to_string(),
            "flat": self.flat,
            "groups": [list(group) for group in self.groups],
            "name": self.name,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any] | str) -> LayerAssignment:
        """Inverse of to_json; also accepts the to_string form."""
        if isinstance(obj, str):
            return cls.from_string(obj)
        if not isinstance(obj, Mapping):
            raise InputError(f"expected an object or a string, got {obj!r}", where="assignment")
        name = obj.get("name")
        if "groups" in obj or "flat" in obj:
            flat = bool(obj.get("flat", False))
            groups = obj.get("groups") or ()
            if not isinstance(groups, (list, tuple)) or not all(
                isinstance(g, (list, tuple)) for g in groups
            ):
                raise InputError(
                    f"'groups' must be a list of lists, got {groups!r}", where="assignment"
                )
            return cls(groups=tuple(tuple(g) for g in groups), flat=flat, name=name)
        if "string" in obj:
            parsed = cls.from_string(str(obj["string"]))
            return cls(groups=parsed.groups, flat=parsed.flat, name=name)
        raise InputError("expected keys 'groups'/'flat' or 'string'", where="assignment")


def _expected(level: int) -> str:
    return f"expected L{level}:<layer>[+<layer>..], a range as <first>-<last>"


def _layers(part: str, token: str, level: int) -> range:
    """The layers of one '+'-separated part of a level's token: "7" or "1-4"."""
    first, dash, last = part.strip().partition("-")
    bad = f"bad layer {part.strip()!r} in token {token!r} ({_expected(level)})"
    if not first.strip().isdigit() or (dash and not last.strip().isdigit()):
        raise InputError(bad, where="assignment")
    low, high = int(first), int(last) if dash else int(first)
    if low > high:
        raise InputError(f"{bad}: a range runs upwards", where="assignment")
    if dash and high > MAX_LAYERS:
        raise InputError(f"{bad}: no encoder has layer {high}", where="assignment")
    return range(low, high + 1)


def _runs(group: Sequence[int]) -> list[str]:
    """A group's layers in order, each run of 3+ consecutive ones as "first-last"."""
    parts: list[str] = []
    start = 0
    for end in range(1, len(group) + 1):
        if end < len(group) and group[end] == group[end - 1] + 1:
            continue
        run = group[start:end]
        parts += [f"{run[0]}-{run[-1]}"] if len(run) >= 3 else [str(layer) for layer in run]
        start = end
    return parts


# ----------------------------------------------------------------------------- named variants


def _last_name(num_levels: int) -> str:
    word = _NUMBER_WORDS[num_levels] if num_levels < len(_NUMBER_WORDS) else str(num_levels)
    return f"LAST-{word}"


def variant_names(num_levels: int) -> list[str]:
    if num_levels < 1:
        raise InputError(
            f"the hierarchy needs at least one level, got {num_levels}", where="levels"
        )
    return ["FLAT", _last_name(num_levels), "ONE-BY-ONE", "IN-PAIRS", "HYBRID"]


def _check_label_counts(label_counts: Sequence[int] | None, num_levels: int) -> list[int] | None:
    if label_counts is None:
        return None
    counts = [as_int(c, "a label count", "label counts") for c in label_counts]
    if len(counts) != num_levels:
        raise InputError(
            f"{len(counts)} label counts given but the hierarchy has {num_levels} levels",
            where="label counts",
        )
    if any(c < 0 for c in counts):
        raise InputError(f"label counts must be >= 0, got {counts}", where="label counts")
    return counts


def _contiguous(start: int, widths: Sequence[int]) -> tuple[tuple[int, ...], ...]:
    groups = []
    for width in widths:
        groups.append(tuple(range(start, start + width)))
        start += width
    return tuple(groups)


def _variant_groups(
    name: str, num_layers: int, num_levels: int, counts: list[int] | None
) -> tuple[tuple[int, ...], ...]:
    n_, l_ = num_layers, num_levels
    if name == "ONE-BY-ONE":
        return tuple((level * n_ // l_,) for level in range(1, l_ + 1))
    if name == "IN-PAIRS":
        base, extra = divmod(n_, l_)
        return _contiguous(1, [base + (level >= l_ - extra) for level in range(l_)])
    if name == "HYBRID":
        skip = min(n_ // 4, n_ - l_)
        base, extra = divmod(n_ - skip, l_)
        proxy = counts if counts is not None else list(range(l_))
        # most labels first; among equal counts the deeper level counts as larger
        by_size = sorted(range(l_), key=lambda i: (proxy[i], i), reverse=True)
        wider = set(by_size[:extra])
        return _contiguous(skip + 1, [base + (i in wider) for i in range(l_)])
    # LAST-<L>
    return tuple((n_ - l_ + level,) for level in range(1, l_ + 1))


def named_variants(
    num_layers: int, num_levels: int, label_counts: Sequence[int] | None = None
) -> dict[str, LayerAssignment]:
    """All named variants for N layers and L levels, in `variant_names` order."""
    return {
        name: named_variant(name, num_layers, num_levels, label_counts)
        for name in variant_names(num_levels)
    }


def named_variant(
    name: str, num_layers: int, num_levels: int, label_counts: Sequence[int] | None = None
) -> LayerAssignment:
    names = variant_names(num_levels)
    canonical = name.strip().upper()
    if canonical not in names:
        raise InputError(f"unknown variant {name!r}; valid: {', '.join(names)}", where="variant")
    check_layer_count(num_layers, "layers")
    counts = _check_label_counts(label_counts, num_levels)
    if canonical == "FLAT":
        return LayerAssignment.make_flat()
    if num_layers < num_levels:
        raise InputError(
            f"variant {canonical} needs at least one layer per level: "
            f"{num_layers} layers < {num_levels} levels",
            where="variant",
        )
    groups = _variant_groups(canonical, num_layers, num_levels, counts)
    return LayerAssignment(groups=groups, name=canonical)


def resolve_assignment(
    spec: str, num_layers: int, label_counts: Sequence[int]
) -> LayerAssignment:
    """A variant name ("LAST-SIX") or a string ("L1:7|L2:8") -> a validated assignment."""
    if spec.upper() == "FLAT" or ":" not in spec:
        assignment = named_variant(spec.upper(), num_layers, len(label_counts), label_counts)
    else:
        assignment = LayerAssignment.from_string(spec)
    assignment.validate(num_layers, len(label_counts))
    return assignment


def variant_of(
    assignment: LayerAssignment, num_layers: int, label_counts: Sequence[int]
) -> str | None:
    """The named variant equal to `assignment`, if any (so searched points get names too)."""
    try:
        variants = named_variants(num_layers, len(label_counts), label_counts)
    except InputError:  # no named variant at this depth and level count
        return None
    return next((name for name, v in variants.items() if v == assignment), None)
