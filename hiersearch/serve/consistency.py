"""Label sets that respect the hierarchy: no label without at least one of its parents.

A label set thresholds each level's scores on its own, so it can hold a label whose parents
are all missing (a "child without a parent"): a document about a specific descriptor that is
not about any of its domains. `hiersearch predict` makes every label set consistent by one of
three rules (`--consistency`):

- `drop`: a predicted label is kept only if at least one of its parents is kept; levels are
  settled from the most general down, so a label whose parent was dropped goes too.
- `add`: a predicted label without a predicted parent brings its highest-scoring parent (ties:
  the first in the model's column order), marked `"added": true` in the output; levels are
  settled from the most specific up, so an added label brings its own parent in turn.
- `none`: the thresholded label sets as they are.

A label's parents here are its parents in the hierarchy the model was trained on
(`hierarchy.json` in the model directory) that sit at a more general level among the levels
asked for (`--levels A-B`): the labels of the first level asked for, and level 1's, have none
and are never dropped. Every label below level 1 has a parent one level up (a label sits one
level below its nearest parent), so with contiguous levels no other label lacks one; a label
with several parents (a DAG) needs any one of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hiersearch.data.hierarchy import Hierarchy

DROP, ADD, NONE = "drop", "add", "none"
CONSISTENCY_MODES = (DROP, ADD, NONE)
# The default rule, chosen by its F1 on dev against the other two (BENCHMARKS.md section 9).
DEFAULT_CONSISTENCY = DROP


@dataclass(frozen=True)
class ParentIndex:
    """The parents of every label of the levels asked for, in their columns side by side
    (level after level): the parents of column c are `columns[starts[c]:starts[c + 1]]`."""

    widths: tuple[int, ...]  # labels of each level asked for, in order
    starts: np.ndarray  # int64 [columns + 1]: where each column's parents begin
    columns: np.ndarray  # int64: the parents' columns

    @classmethod
    def build(
        cls, hierarchy: Hierarchy, label_index: Sequence[Sequence[str]], levels: Sequence[int]
    ) -> ParentIndex:
        """For the (1-based, ascending) `levels` of a model whose columns are `label_index`
        (per level, its label ids); KeyError if a label is not in `hierarchy`."""
        column: dict[str, int] = {}
        for level in levels:
            for label in label_index[level - 1]:
                column[label] = len(column)
        starts, parents = [0], []
        for level in levels:
            for label in label_index[level - 1]:
                node = hierarchy.node(label)
                parents += sorted(  # column order: `add` breaks ties by it
                    column[p]
                    for p in node.parents
                    if p in column and hierarchy.node(p).level < node.level
                )
                starts.append(len(parents))
        widths = tuple(len(label_index[level - 1]) for level in levels)
        return cls(widths, np.array(starts, np.int64), np.array(parents, np.int64))

    def bounds(self) -> list[tuple[int, int]]:
        """Each level's first and past-the-last column."""
        edges = np.cumsum([0, *self.widths]).tolist()
        return list(zip(edges[:-1], edges[1:], strict=True))

    def has_parent(self, kept: np.ndarray, first: int, last: int) -> tuple[np.ndarray, np.ndarray]:
        """For the columns first..last-1 that have parents: those columns, and per document
        whether any of their parents is in `kept` [docs, columns]."""
        counts = np.diff(self.starts[first : last + 1])
        with_parents = first + np.flatnonzero(counts)
        if not with_parents.size:
            return with_parents, np.zeros((kept.shape[0], 0), dtype=bool)
        base = self.starts[first]
        gathered = kept[:, self.columns[base : self.starts[last]]]
        # every segment is non-empty (columns without parents are left out): reduceat is exact
        return with_parents, np.logical_or.reduceat(
            gathered, self.starts[with_parents] - base, axis=1
        )


def make_consistent(
    kept: np.ndarray, scores: np.ndarray, parents: ParentIndex, mode: str
) -> tuple[np.ndarray, np.ndarray]:
    """The label sets of `kept` ([docs, columns] bool, the levels side by side as in
    `parents`) made consistent by `mode`; also which labels the rule added (`add`). `scores`
    (same shape) picks the parent `add` brings."""
    if mode not in CONSISTENCY_MODES:
        raise ValueError(f"consistency must be one of {CONSISTENCY_MODES}, got {mode!r}")
    kept = np.array(kept, dtype=bool)
    added = np.zeros_like(kept)
    levels = parents.bounds()[1:]  # the first level asked for has no parents
    if mode == DROP:
        for first, last in levels:
            columns, has = parents.has_parent(kept, first, last)
            kept[:, columns] &= has
    elif mode == ADD:
        for first, last in reversed(levels):
            columns, has = parents.has_parent(kept, first, last)
            for doc, index in np.argwhere(kept[:, columns] & ~has):
                column = columns[index]
                options = parents.columns[parents.starts[column] : parents.starts[column + 1]]
                if kept[doc, options].any():  # a sibling's added parent is its parent too
                    continue
                best = options[int(np.argmax(scores[doc, options]))]
                kept[doc, best] = added[doc, best] = True
    return kept, added


@dataclass(frozen=True)
class LabelRule:
    """How `hiersearch predict` turns the scores of the levels asked for into label sets:
    scores >= each level's threshold, then made consistent."""

    thresholds: tuple[float, ...]  # one per level asked for, in order
    consistency: str  # one of CONSISTENCY_MODES
    parents: ParentIndex | None  # the levels' parents; None only with consistency "none"

    def __post_init__(self) -> None:
        if self.consistency not in CONSISTENCY_MODES:
            raise ValueError(f"consistency must be one of {CONSISTENCY_MODES}")
        if self.parents is None and self.consistency != NONE:
            raise ValueError(f"consistency {self.consistency!r} needs the labels' parents")

    def apply(self, level_scores: Sequence[np.ndarray]) -> tuple[list[np.ndarray], list]:
        """Per level: the kept labels and the ones the rule added ([docs, labels] bool)."""
        if len(level_scores) != len(self.thresholds):
            raise ValueError(f"{len(level_scores)} levels for {len(self.thresholds)} thresholds")
        kept = [s >= t for s, t in zip(level_scores, self.thresholds, strict=True)]
        if self.parents is None or self.consistency == NONE:
            return kept, [np.zeros_like(k) for k in kept]
        every, added = make_consistent(
            np.hstack(kept), np.hstack(level_scores), self.parents, self.consistency
        )
        splits = np.cumsum(self.parents.widths)[:-1]
        return np.hsplit(every, splits), np.hsplit(added, splits)
