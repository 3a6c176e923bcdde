"""The search space over layer-to-level assignments (`assignment.py` has the value type and the
named variants), its size, and its Optuna define-by-run sampling.

The search space ("monotone", the default): level n gets a non-empty contiguous block
[a_n, b_n] with b_n < a_{n+1} (ordered, non-overlapping, gaps allowed), plus the FLAT point.
Its size is C(N - k + L, 2L) (+1 for FLAT) with k = skip_lowest: map the 2L block ends to the
strictly increasing sequence a_1, b_1+1, a_2+1, b_2+2, .., a_L+L-1, b_L+L over 1..N-k+L.
With `overlap=True` the blocks only have to be ordered by both ends (a_n <= a_{n+1} and
b_n <= b_{n+1}); they may share layers, and consecutive levels may even use the same block.

With `shared=True` (`assignment: {space: shared}`) each level picks its block on its own and
only the blocks' top layers are ordered (b_n <= b_{n+1}: a deeper, more specific level never
tops out below a shallower one, the direction of every named variant). Levels may share layers
and a deeper level's block may reach further down than a shallower one's: "L1:6|L2:6|L3:6|
L4:5+6" (FLAT's top layer for L1-L3, layers 5-6 for L4) is a point of it and of neither space
above (its a_4 = 5 < a_3 = 6). It holds every point of both; its size is
sum over b_1 <= .. <= b_L of prod_n s(b_n), s(b) = min(width, b - k) the blocks that top out
at layer b (6 layers x 4 levels: 22,827 + FLAT; 12 x 6: 1,256,328,866 + FLAT, 5,619,970 with
blocks of at most 3 layers).

Optuna sampling is define-by-run: `<prefix>/kind` ("flat" or "blocks"), then for each level
`<prefix>/L<n>_start` and `<prefix>/L<n>_end` (`shared`: the end first, the start below it),
integers whose ranges are computed from the earlier draws so that every draw is a valid point
and every point of the space is reachable. Drawing
each parameter uniformly is NOT uniform over the space (early levels' ranges shape the rest);
that is acceptable, TPE adapts to where the good points are.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from hiersearch.errors import InputError
from hiersearch.model.assignment import (
    LayerAssignment,
    as_int,
    check_layer_count,
    named_variant,
    variant_names,
)

if TYPE_CHECKING:
    import optuna


@dataclass(frozen=True)
class SpaceOptions:
    """Which assignments the search space holds (see the module docstring)."""

    # False: ordered non-overlapping blocks (b_n < a_{n+1}); True: a_n <= a_{n+1}, b_n <= b_{n+1}
    overlap: bool = False
    # True: each level's block its own, only the top layers ordered (b_n <= b_{n+1}); it holds
    # every `overlap` point, so the two are not set together
    shared: bool = False
    # the most layers one level's block may hold; None = no limit
    max_width: int | None = None
    # the lowest k layers are never used (kept for their pre-trained function)
    skip_lowest: int = 0
    # the FLAT point is part of the space (the paper's baseline)
    include_flat: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.overlap, bool):
            raise InputError(f"must be true or false, got {self.overlap!r}", where="overlap")
        if not isinstance(self.shared, bool):
            raise InputError(f"must be true or false, got {self.shared!r}", where="shared")
        if self.overlap and self.shared:
            raise InputError(
                "a shared space already lets levels share layers (it holds every overlap "
                "point): leave overlap out of it",
                where="overlap",
            )
        if not isinstance(self.include_flat, bool):
            raise InputError(
                f"must be true or false, got {self.include_flat!r}", where="include_flat"
            )
        if self.max_width is not None:
            width = as_int(self.max_width, "max_width", "max_width")
            if width < 1:
                raise InputError(f"must be >= 1, got {width}", where="max_width")
        skip = as_int(self.skip_lowest, "skip_lowest", "skip_lowest")
        if skip < 0:
            raise InputError(f"must be >= 0, got {skip}", where="skip_lowest")

    def to_dict(self) -> dict[str, Any]:
        return {
            "overlap": self.overlap,
            "shared": self.shared,
            "max_width": self.max_width,
            "skip_lowest": self.skip_lowest,
            "include_flat": self.include_flat,
        }


def _width(options: SpaceOptions, num_layers: int) -> int:
    return num_layers if options.max_width is None else min(options.max_width, num_layers)


def _blocks_possible(num_layers: int, num_levels: int, options: SpaceOptions) -> bool:
    usable = num_layers - options.skip_lowest
    return usable >= (1 if options.overlap or options.shared else num_levels) and num_levels >= 1


def _shared_end_range(
    prev: tuple[int, int] | None, n_: int, options: SpaceOptions
) -> tuple[int, int]:
    """A shared space's inclusive range of b_level: at or above the previous level's top."""
    return (options.skip_lowest + 1 if prev is None else prev[1]), n_


def _shared_start_range(end: int, n_: int, options: SpaceOptions) -> tuple[int, int]:
    """A shared space's inclusive range of a_level under its top layer `end`."""
    return max(options.skip_lowest + 1, end - _width(options, n_) + 1), end


def _start_range(
    level: int, prev: tuple[int, int] | None, n_: int, l_: int, options: SpaceOptions
) -> tuple[int, int]:
    """Inclusive range of a_level given the previous block, such that the rest still fits
    (not shared: there the start is drawn after the end, `_shared_start_range`)."""
    first = options.skip_lowest + 1
    if options.overlap:
        if prev is None:
            return first, n_
        return max(prev[0], prev[1] - _width(options, n_) + 1), n_
    low = first if prev is None else prev[1] + 1
    return low, n_ - (l_ - level)


def _end_range(
    level: int, start: int, prev: tuple[int, int] | None, n_: int, l_: int, options: SpaceOptions
) -> tuple[int, int]:
    width = _width(options, n_)
    if options.overlap:
        low = start if prev is None else max(start, prev[1])
        return low, min(n_, start + width - 1)
    return start, min(n_ - (l_ - level), start + width - 1)


def _blocks_of(assignment: LayerAssignment) -> list[tuple[int, int]] | None:
    """The [a, b] blocks of a non-flat assignment, or None if a group is not an ascending run."""
    blocks = []
    for group in assignment.groups:
        if not group or list(group) != list(range(group[0], group[0] + len(group))):
            return None
        blocks.append((group[0], group[-1]))
    return blocks


def _why_not_in_space(
    assignment: LayerAssignment, num_layers: int, num_levels: int, options: SpaceOptions
) -> str | None:
    if assignment.flat:
        return None if options.include_flat else "FLAT is excluded (include_flat: false)"
    try:
        assignment.validate(num_layers, num_levels)
    except InputError as err:
        return str(err)
    blocks = _blocks_of(assignment)
    if blocks is None:
        return "every level needs one ascending run of consecutive layers"
    if options.shared:
        return _why_not_shared(blocks, num_layers, options)
    prev = None
    for level, (a, b) in enumerate(blocks, start=1):
        lo, hi = _start_range(level, prev, num_layers, num_levels, options)
        if not lo <= a <= hi:
            return f"level L{level} starts at layer {a}, allowed {lo}..{hi}"
        lo, hi = _end_range(level, a, prev, num_layers, num_levels, options)
        if not lo <= b <= hi:
            return f"level L{level} ends at layer {b}, allowed {lo}..{hi}"
        prev = (a, b)
    return None


def _why_not_shared(
    blocks: list[tuple[int, int]], num_layers: int, options: SpaceOptions
) -> str | None:
    prev = None
    for level, (a, b) in enumerate(blocks, start=1):
        lo, hi = _shared_end_range(prev, num_layers, options)
        if not lo <= b <= hi:
            return f"level L{level} ends at layer {b}, allowed {lo}..{hi}"
        lo, hi = _shared_start_range(b, num_layers, options)
        if not lo <= a <= hi:
            return f"level L{level} starts at layer {a}, allowed {lo}..{hi}"
        prev = (a, b)
    return None


def in_space(
    assignment: LayerAssignment,
    num_layers: int,
    num_levels: int,
    options: SpaceOptions = SpaceOptions(),  # noqa: B008 (frozen, immutable default)
) -> bool:
    return _why_not_in_space(assignment, num_layers, num_levels, options) is None


def _check_dims(num_layers: int, num_levels: int) -> None:
    if num_layers < 1:
        raise InputError(f"must be >= 1, got {num_layers}", where="layers")
    check_layer_count(num_layers, "layers")  # the size takes O(levels x layers^2)
    if num_levels < 1:
        raise InputError(f"must be >= 1, got {num_levels}", where="levels")


def space_size(
    num_layers: int,
    num_levels: int,
    options: SpaceOptions = SpaceOptions(),  # noqa: B008 (frozen, immutable default)
) -> int:
    """Exact number of points, by dynamic programming over (start, end) of the last block.

    Python integers (object arrays) keep it exact where int64 would overflow (48 x 10 overlap).
    """
    _check_dims(num_layers, num_levels)
    n_, width = num_layers, _width(options, num_layers)
    a = np.arange(n_ + 1)[:, None]
    b = np.arange(n_ + 1)[None, :]
    valid = (a > options.skip_lowest) & (a <= b) & (b - a < width)
    count = valid.astype(object)
    for _ in range(num_levels - 1):
        if options.overlap:
            # blocks dominated in both ends: a 2-D prefix sum
            reach = np.cumsum(np.cumsum(count, axis=0), axis=1)
        elif options.shared:
            # any block ending at or below the new end: prefix sum over ends, indexed by b'
            reach = np.broadcast_to(np.cumsum(count.sum(axis=0))[None, :], count.shape)
        else:
            # any block ending before the new start: prefix sum over ends, indexed by a' - 1
            ends = np.cumsum(count.sum(axis=0))
            reach = np.zeros_like(count)
            reach[1:, :] = ends[:-1, None]
        count = np.where(valid, reach, 0).astype(object)
    total = int(count.sum())
    return total + int(options.include_flat)


def enumerate_space(
    num_layers: int,
    num_levels: int,
    options: SpaceOptions = SpaceOptions(),  # noqa: B008 (frozen, immutable default)
) -> Iterator[LayerAssignment]:
    """Every point, FLAT first, by brute force over pairwise constraints (tests, tiny spaces)."""
    _check_dims(num_layers, num_levels)
    if options.include_flat:
        yield LayerAssignment.make_flat(name=None)
    width = _width(options, num_layers)
    blocks = [
        (a, b)
        for a in range(options.skip_lowest + 1, num_layers + 1)
        for b in range(a, min(num_layers, a + width - 1) + 1)
    ]

    def fits(prev: tuple[int, int], nxt: tuple[int, int]) -> bool:
        if options.shared:
            return prev[1] <= nxt[1]
        if options.overlap:
            return prev[0] <= nxt[0] and prev[1] <= nxt[1]
        return prev[1] < nxt[0]

    def extend(chosen: list[tuple[int, int]]) -> Iterator[LayerAssignment]:
        if len(chosen) == num_levels:
            yield LayerAssignment(groups=tuple(tuple(range(a, b + 1)) for a, b in chosen))
            return
        for block in blocks:
            if not chosen or fits(chosen[-1], block):
                yield from extend([*chosen, block])

    yield from extend([])


def _param_names(prefix: str, level: int) -> tuple[str, str]:
    return f"{prefix}/L{level}_start", f"{prefix}/L{level}_end"


def _kind_choices(num_layers: int, num_levels: int, options: SpaceOptions) -> list[str]:
    choices = (["flat"] if options.include_flat else []) + (
        ["blocks"] if _blocks_possible(num_layers, num_levels, options) else []
    )
    if not choices:
        raise InputError(
            f"the space is empty: {num_layers} layers, {num_levels} levels, "
            f"skip_lowest {options.skip_lowest}, include_flat false",
            where="space",
        )
    return choices


def suggest_assignment(
    trial: optuna.trial.BaseTrial,
    num_layers: int,
    num_levels: int,
    options: SpaceOptions = SpaceOptions(),  # noqa: B008 (frozen, immutable default)
    prefix: str = "assign",
) -> LayerAssignment:
    """Draw one point define-by-run; every draw is valid, no rejection.

    `<prefix>/kind` is only drawn when both FLAT and block assignments are possible.
    """
    _check_dims(num_layers, num_levels)
    choices = _kind_choices(num_layers, num_levels, options)
    kind = (
        choices[0] if len(choices) == 1 else trial.suggest_categorical(f"{prefix}/kind", choices)
    )
    if kind == "flat":
        return LayerAssignment.make_flat(name=None)
    groups = []
    prev: tuple[int, int] | None = None
    for level in range(1, num_levels + 1):
        start_name, end_name = _param_names(prefix, level)
        if options.shared:
            end = trial.suggest_int(end_name, *_shared_end_range(prev, num_layers, options))
            start = trial.suggest_int(start_name, *_shared_start_range(end, num_layers, options))
        else:
            start = trial.suggest_int(
                start_name, *_start_range(level, prev, num_layers, num_levels, options)
            )
            end = trial.suggest_int(
                end_name, *_end_range(level, start, prev, num_layers, num_levels, options)
            )
        groups.append(tuple(range(start, end + 1)))
        prev = (start, end)
    return LayerAssignment(groups=tuple(groups))


def assignment_params(
    assignment: LayerAssignment,
    num_layers: int,
    num_levels: int,
    options: SpaceOptions = SpaceOptions(),  # noqa: B008 (frozen, immutable default)
    prefix: str = "assign",
) -> dict[str, Any]:
    """The suggest_* values that make `suggest_assignment` return `assignment`."""
    _check_dims(num_layers, num_levels)
    reason = _why_not_in_space(assignment, num_layers, num_levels, options)
    if reason is not None:
        raise InputError(
            f"{assignment.name or assignment.to_string()} is not in the search space: {reason}",
            where="assignment",
        )
    choices = _kind_choices(num_layers, num_levels, options)
    params: dict[str, Any] = {}
    if len(choices) > 1:
        params[f"{prefix}/kind"] = "flat" if assignment.flat else "blocks"
    if not assignment.flat:
        for level, group in enumerate(assignment.groups, start=1):
            start_name, end_name = _param_names(prefix, level)
            params[start_name], params[end_name] = group[0], group[-1]
    return params


def space_summary(
    num_layers: int,
    num_levels: int,
    options: SpaceOptions = SpaceOptions(),  # noqa: B008 (frozen, immutable default)
    label_counts: Sequence[int] | None = None,
) -> dict[str, Any]:
    """The machine-readable description printed by `hiersearch space --json`."""
    size = space_size(num_layers, num_levels, options)
    variants: dict[str, bool] = {}
    for name in variant_names(num_levels):
        try:
            variant = named_variant(name, num_layers, num_levels, label_counts)
        except InputError:
            variants[name] = False
            continue
        variants[name] = in_space(variant, num_layers, num_levels, options)
    return {
        "layers": num_layers,
        "levels": num_levels,
        "options": options.to_dict(),
        "size": size,
        "size_without_flat": size - int(options.include_flat),
        "named_variants_in_space": variants,
    }


def monotone_size_formula(num_layers: int, num_levels: int, skip_lowest: int = 0) -> int:
    """C(N - k + L, 2L): the block count of the default space without FLAT (see the docstring)."""
    usable = num_layers - skip_lowest
    return math.comb(usable + num_levels, 2 * num_levels) if usable >= num_levels else 0
