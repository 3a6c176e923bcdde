"""Label sets made consistent with the hierarchy: drop, add, none; parents of a DAG; the
vectorized rule against a per-document loop."""

from __future__ import annotations

import numpy as np
import pytest

from hiersearch.data.hierarchy import Hierarchy, Node
from hiersearch.serve.consistency import LabelRule, ParentIndex, make_consistent

# A (level 1) -> a1, a2 (level 2) -> x (level 3, parents a1 and a2), y (parent a2)
# B (level 1) -> b1 (level 2) -> z (level 3)
HIERARCHY = Hierarchy(
    [
        Node("A", "", (), 1), Node("B", "", (), 1),
        Node("a1", "", ("A",), 2), Node("a2", "", ("A",), 2), Node("b1", "", ("B",), 2),
        Node("x", "", ("a1", "a2"), 3), Node("y", "", ("a2",), 3), Node("z", "", ("b1",), 3),
    ],
    "toy",
)
INDEX = [["A", "B"], ["a1", "a2", "b1"], ["x", "y", "z"]]
COLUMNS = [label for level in INDEX for label in level]


def _rows(*labels: str) -> np.ndarray:
    row = np.zeros((1, len(COLUMNS)), dtype=bool)
    row[0, [COLUMNS.index(label) for label in labels]] = True
    return row


def _labels(row: np.ndarray) -> set[str]:
    return {COLUMNS[c] for c in np.flatnonzero(row[0])}


PARENTS = ParentIndex.build(HIERARCHY, INDEX, [1, 2, 3])


def test_parent_index_lists_each_labels_parents_by_column() -> None:
    x = COLUMNS.index("x")
    parents = PARENTS.columns[PARENTS.starts[x] : PARENTS.starts[x + 1]]
    assert [COLUMNS[c] for c in parents] == ["a1", "a2"]
    assert PARENTS.widths == (2, 3, 3)
    assert np.diff(PARENTS.starts)[:2].tolist() == [0, 0]  # level 1 has no parents


def test_drop_removes_a_child_whose_parents_are_all_missing_and_its_children_too() -> None:
    kept, added = make_consistent(_rows("B", "a1", "x", "z"), _rows(), PARENTS, "drop")
    # a1 has no A: dropped, so x loses its only predicted parent; z has no b1
    assert _labels(kept) == {"B"} and not added.any()


def test_drop_keeps_a_dag_label_with_any_one_parent() -> None:
    kept, _ = make_consistent(_rows("A", "a2", "x"), _rows(), PARENTS, "drop")
    assert _labels(kept) == {"A", "a2", "x"}


def test_add_brings_the_best_scoring_parent_up_to_level_one() -> None:
    scores = np.zeros((1, len(COLUMNS)))
    scores[0, COLUMNS.index("a2")] = 0.3  # x's better parent
    scores[0, COLUMNS.index("a1")] = 0.2
    kept, added = make_consistent(_rows("x"), scores, PARENTS, "add")
    assert _labels(kept) == {"x", "a2", "A"}
    assert _labels(added) == {"a2", "A"}


def test_add_brings_one_parent_for_siblings_that_share_it() -> None:
    scores = np.zeros((1, len(COLUMNS)))
    scores[0, COLUMNS.index("a2")] = 0.3
    kept, added = make_consistent(_rows("x", "y"), scores, PARENTS, "add")
    assert _labels(added) == {"a2", "A"}  # not a1 as well


def test_none_keeps_the_thresholded_sets() -> None:
    rows = _rows("B", "a1", "x")
    kept, added = make_consistent(rows, _rows(), PARENTS, "none")
    assert (kept == rows).all() and not added.any()


def test_levels_asked_for_start_the_rule_at_their_first_level() -> None:
    parents = ParentIndex.build(HIERARCHY, INDEX, [2, 3])
    rule = LabelRule((0.5, 0.5), "drop", parents)
    level2 = np.array([[0.9, 0.0, 0.0]])  # a1 without A: A is not asked for, a1 stays
    level3 = np.array([[0.9, 0.0, 0.9]])  # x (parent a1 kept) stays, z (b1 missing) goes
    (got2, got3), _ = rule.apply([level2, level3])
    assert got2.tolist() == [[True, False, False]]
    assert got3.tolist() == [[True, False, False]]


def test_a_rule_with_a_hierarchy_needs_its_parents() -> None:
    with pytest.raises(ValueError, match="parents"):
        LabelRule((0.5,), "drop", None)
    assert LabelRule((0.5,), "none", None).apply([np.array([[0.7, 0.2]])])[0][0].tolist() == [
        [True, False]
    ]


def _reference(kept: np.ndarray, scores: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """One document and one label at a time, levels in order (drop) or reversed (add)."""
    kept, added = kept.copy(), np.zeros_like(kept)
    level_of = [n for n, level in enumerate(INDEX) for _ in level]
    parents = [
        [COLUMNS.index(p) for p in HIERARCHY.node(label).parents] for label in COLUMNS
    ]
    order = sorted(range(len(COLUMNS)), key=lambda c: level_of[c], reverse=mode == "add")
    for doc in range(kept.shape[0]):
        for c in order:
            if not parents[c] or not kept[doc, c] or kept[doc, parents[c]].any():
                continue
            if mode == "drop":
                kept[doc, c] = False
            else:
                best = max(parents[c], key=lambda p: (scores[doc, p], -p))
                kept[doc, best] = added[doc, best] = True
    return kept, added


@pytest.mark.parametrize("mode", ["drop", "add"])
def test_the_vectorized_rule_equals_a_per_document_loop(mode: str) -> None:
    rng = np.random.default_rng(0)
    scores = rng.random((200, len(COLUMNS)))
    kept = scores >= 0.6
    got = make_consistent(kept, scores, PARENTS, mode)
    want = _reference(kept, scores, mode)
    assert (got[0] == want[0]).all() and (got[1] == want[1]).all()
