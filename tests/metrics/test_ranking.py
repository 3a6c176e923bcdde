from __future__ import annotations

import math

import numpy as np
import pytest

from hiersearch.metrics import goldrank
from hiersearch.metrics import ranking as metrics
from hiersearch.metrics.ranking import (
    evaluate,
    ndcg_at_k,
    r_precision,
    r_precision_per_doc,
    r_precision_reference,
    rp_at_k,
)


def _expected_relevance(scores: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """Per rank, the chance the label there is gold under a random order among equal scores."""
    values, group, size = np.unique(-scores, return_inverse=True, return_counts=True)
    share = np.bincount(group, weights=gold, minlength=values.size) / size
    return np.repeat(share, size)  # groups in descending score order, one entry per rank


def _reference(gold: np.ndarray, scores: np.ndarray, k: int) -> tuple[float, float, float]:
    """(R-Precision, RP@k, nDCG@k) by a plain loop over documents; NaN if no document counts."""
    rp, rpk, ndcg = [], [], []
    for row, truth in zip(scores, gold != 0, strict=True):
        r = int(truth.sum())
        if r == 0:
            continue
        rel = np.concatenate([_expected_relevance(row, truth), np.zeros(k)])
        rp.append(rel[:r].sum() / r)
        rpk.append(rel[:k].sum() / min(k, r))
        discount = 1 / np.log2(np.arange(2, k + 2))
        ndcg.append((rel[:k] * discount).sum() / discount[: min(k, r)].sum())
    if not rp:
        return math.nan, math.nan, math.nan
    return float(np.mean(rp)), float(np.mean(rpk)), float(np.mean(ndcg))


def _random_case(
    rng: np.random.Generator, docs: int, labels: int, density: float, levels: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    gold = rng.random((docs, labels)) < density
    scores = rng.random((docs, labels)).astype(np.float32)
    if levels is not None:  # few distinct values: ties everywhere
        scores = np.floor(scores * levels).astype(np.float32)
    return gold, scores


@pytest.fixture(autouse=True, params=["compiled", "interpreted"])
def kernel_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every metric test runs the gold-rank kernel compiled and as plain Python: numba's typed
    arithmetic (integer widths, float casts) must not change a result that Python computes."""
    if request.param == "interpreted":
        if request.node.get_closest_marker("compiled_only"):
            pytest.skip("15 s as plain Python; the compiled run covers it")
        monkeypatch.setattr(goldrank, "_kernel", lambda: goldrank._rank_metrics)
    return str(request.param)


# ----------------------------------------------------------------------------- hand examples


def test_r_precision_counts_gold_in_top_r() -> None:
    gold = np.array([[1, 0, 0, 1]])
    scores = np.array([[0.9, 0.8, 0.1, 0.3]])
    assert r_precision(gold, scores) == (0.5, 0)


def test_r_precision_tie_is_expectation_over_orders() -> None:
    # R = 1 and three labels tie for first, one of them gold: 1/3
    assert r_precision(np.array([[1, 0, 0, 0]]), np.array([[0.5, 0.5, 0.5, 0.1]]))[0] == (
        pytest.approx(1 / 3)
    )
    # R = 2: the gold 0.9 plus one of two tied 0.5s, one gold: (1 + 1/2) / 2
    gold = np.array([[1, 0, 1, 0]])
    scores = np.array([[0.9, 0.5, 0.5, 0.1]])
    assert r_precision(gold, scores)[0] == pytest.approx(0.75)


def test_r_precision_does_not_depend_on_column_order() -> None:
    gold = np.array([[1, 0, 1, 0, 0], [0, 1, 0, 0, 1]])
    scores = np.array([[0.5, 0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.9, 0.3, 0.1]])
    order = np.array([4, 2, 0, 3, 1])
    assert r_precision(gold, scores) == r_precision(gold[:, order], scores[:, order])


def test_document_without_gold_is_skipped_and_counted() -> None:
    gold = np.array([[1, 0], [0, 0], [0, 1]])
    scores = np.array([[0.9, 0.1], [0.5, 0.4], [0.8, 0.2]])
    assert r_precision(gold, scores) == (0.5, 1)
    values, mask = r_precision_per_doc(gold, scores)
    assert mask.tolist() == [True, False, True]
    assert values[0] == 1.0 and math.isnan(values[1]) and values[2] == 0.0


def test_level_with_a_single_label() -> None:
    gold = np.array([[1], [0], [1]])
    scores = np.array([[0.2], [0.9], [0.1]], dtype=np.float32)
    assert r_precision(gold, scores) == (1.0, 1)
    assert rp_at_k(gold, scores, 5) == 1.0 and ndcg_at_k(gold, scores, 5) == 1.0


def test_all_documents_skipped_gives_nan() -> None:
    value, skipped = r_precision(np.zeros((2, 3)), np.ones((2, 3)))
    assert math.isnan(value) and skipped == 2


def test_rp_at_k_and_ndcg_at_k_by_hand() -> None:
    gold = np.array([[1, 0, 1, 0]])
    scores = np.array([[0.9, 0.8, 0.7, 0.1]])
    assert rp_at_k(gold, scores, 1) == 1.0
    assert rp_at_k(gold, scores, 2) == 0.5
    assert rp_at_k(gold, scores, 3) == 1.0  # divided by min(k, R) = 2
    ideal = 1 + 1 / math.log2(3)
    assert ndcg_at_k(gold, scores, 2) == pytest.approx(1 / ideal)
    assert ndcg_at_k(gold, scores, 3) == pytest.approx((1 + 1 / math.log2(4)) / ideal)


def test_perfect_ranking_scores_one_everywhere() -> None:
    gold = np.array([[0, 1, 1, 0, 1, 0], [1, 0, 0, 0, 0, 0]])
    scores = gold + np.linspace(0.0, 0.1, 6)
    for k in (1, 3, 10):
        assert rp_at_k(gold, scores, k) == 1.0 and ndcg_at_k(gold, scores, k) == 1.0
    assert r_precision(gold, scores) == (1.0, 0)


def test_evaluate_micro_and_macro_on_two_levels() -> None:
    level1_gold = np.array([[1, 0], [1, 1]])
    level1 = np.array([[0.9, 0.2], [0.1, 0.6]])
    level2_gold = np.array([[1, 0, 0], [1, 0, 1]])
    level2 = np.array([[0.3, 0.8, 0.5], [0.7, 0.4, 0.6]])
    out = evaluate([level1_gold, level2_gold], [level1, level2], "dev", ks=[1, 2])
    assert out["dev/rp_L1"] == 1.0
    assert out["dev/rp_L2"] == 0.5  # doc A misses its one gold label, doc B gets both
    assert out["dev/rp_macro"] == 0.75
    # doc A: top 2 of all five are 0.9 (gold) and 0.8 -> 1/2; doc B: R = 4, top 4 -> 3/4
    assert out["dev/rp_micro"] == pytest.approx(0.625)
    assert out["dev/rp_skipped_docs"] == 0 and out["dev/rp_skipped_docs_L2"] == 0
    assert out["dev/rp@1"] == 1.0 and out["dev/rp@1_L2"] == 0.5
    assert set(out) >= {"dev/ndcg@2", "dev/ndcg@2_L1", "dev/rp@2_L1"}


def test_evaluate_macro_leaves_out_levels_without_gold() -> None:
    gold = [np.array([[1, 0], [0, 1]]), np.zeros((2, 3))]
    scores = [np.array([[0.9, 0.1], [0.2, 0.8]]), np.zeros((2, 3))]
    out = evaluate(gold, scores, "test", ks=[])
    assert math.isnan(out["test/rp_L2"]) and out["test/rp_skipped_docs_L2"] == 2
    assert out["test/rp_macro"] == 1.0 and out["test/rp_micro"] == 1.0


def test_nan_scores_are_rejected() -> None:
    with pytest.raises(ValueError, match="NaN"):
        r_precision(np.array([[1, 0]]), np.array([[np.nan, 0.5]]))
    wide = np.random.default_rng(0).random((3, 400))
    wide[1, 17] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        r_precision(np.eye(3, 400), wide)


# ----------------------------------------------------------------------------- vs. reference


@pytest.mark.parametrize(
    ("docs", "labels", "density", "ties"),
    [
        (40, 1, 0.5, None),
        (60, 5, 0.4, 2),
        (80, 50, 0.3, None),  # R often larger than k
        (80, 300, 0.02, None),  # rows within one count block
        (50, 2000, 0.004, None),  # rows of several count blocks: counts stop early
        (50, 2000, 0.004, 3),  # tie groups far larger than the deepest rank asked
        (50, 700, 0.01, 50),
        # R far past a count's block: counts stop late (15 s each as plain Python)
        pytest.param(30, 900, 0.4, None, marks=pytest.mark.compiled_only),
        pytest.param(30, 900, 0.4, 5, marks=pytest.mark.compiled_only),
    ],
)
def test_metrics_match_reference(
    docs: int, labels: int, density: float, ties: int | None
) -> None:
    rng = np.random.default_rng(docs + labels)
    gold, scores = _random_case(rng, docs, labels, density, ties)
    assert r_precision(gold, scores) == pytest.approx(r_precision_reference(gold, scores))
    for k in (1, 3, 10):
        rp, rpk, ndcg = _reference(gold, scores, k)
        assert rp_at_k(gold, scores, k) == pytest.approx(rpk, nan_ok=True)
        assert ndcg_at_k(gold, scores, k) == pytest.approx(ndcg, nan_ok=True)
        assert r_precision(gold, scores)[0] == pytest.approx(rp, nan_ok=True)


def test_evaluate_micro_matches_reference_on_concatenated_levels() -> None:
    rng = np.random.default_rng(7)
    sizes, levels = [3, 40, 900], []
    for labels, ties in zip(sizes, [None, 4, None], strict=True):
        levels.append(_random_case(rng, 70, labels, 3 / labels, ties))
    gold = np.concatenate([g for g, _ in levels], axis=1)
    scores = np.concatenate([s for _, s in levels], axis=1)
    out = evaluate([g for g, _ in levels], [s for _, s in levels], "dev", ks=[2, 10])
    for k in (2, 10):
        rp, rpk, ndcg = _reference(gold, scores, k)
        assert out["dev/rp_micro"] == pytest.approx(rp)
        assert out[f"dev/rp@{k}"] == pytest.approx(rpk)
        assert out[f"dev/ndcg@{k}"] == pytest.approx(ndcg)
    for level, (g, s) in enumerate(levels, start=1):
        assert out[f"dev/rp_L{level}"] == pytest.approx(r_precision_reference(g, s)[0])


def test_chunked_threaded_run_equals_single_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    levels = [_random_case(rng, 300, n, 0.05, t) for n, t in [(20, None), (500, 6)]]
    whole = evaluate([g for g, _ in levels], [s for _, s in levels], "dev")
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 2000)
    monkeypatch.setattr(metrics, "_workers", lambda: 3)
    chunked = evaluate([g for g, _ in levels], [s for _, s in levels], "dev")
    assert chunked.keys() == whole.keys()
    for key, value in whole.items():
        assert chunked[key] == pytest.approx(value)


def test_infinite_and_float64_scores_match_reference() -> None:
    rng = np.random.default_rng(11)
    gold, scores = _random_case(rng, 40, 600, 0.01)
    scores = scores.astype(np.float64)
    scores[:, ::3] = -np.inf  # a third of each row ties at -inf
    scores[0, :] = -np.inf
    gold[0, :3] = True
    assert r_precision(gold, scores) == pytest.approx(r_precision_reference(gold, scores))
    rp, rpk, ndcg = _reference(gold, scores, 4)
    assert rp_at_k(gold, scores, 4) == pytest.approx(rpk)
    assert ndcg_at_k(gold, scores, 4) == pytest.approx(ndcg)


def test_integer_and_boolean_inputs_are_accepted() -> None:
    gold = np.array([[True, False, True]])
    scores = np.array([[3, 1, 2]])
    assert r_precision(gold, scores) == (1.0, 0)


# ----------------------------------------------------------------------------- gold ranks


def _levels(rng: np.random.Generator, ties: int | None) -> tuple[list, list]:
    sizes = [4, 60, 700]
    cases = [_random_case(rng, 40, n, 4 / n, ties) for n in sizes]
    return [g for g, _ in cases], [s for _, s in cases]


@pytest.mark.parametrize("ties", [None, 3])
def test_gold_rank_kernel_compiled_and_plain_python_agree(ties: int | None) -> None:
    golds, scores = _levels(np.random.default_rng(6), ties)
    compiled = goldrank.rank_metrics(scores, golds, [1, 5, 10], micro=True)
    plain = goldrank.rank_metrics(scores, golds, [1, 5, 10], micro=True, compiled=False)
    for a, b in zip(compiled, plain, strict=True):
        assert np.allclose(a, b, equal_nan=True)
    assert compiled.per_doc.shape == (40, 4)  # three levels and micro


@pytest.mark.parametrize("ties", [None, 4])
def test_gold_ranked_first_needs_whole_rows_and_still_matches_reference(ties: int | None) -> None:
    """A trained model ranks gold labels high: their counts never stop early."""
    golds, scores = _levels(np.random.default_rng(9), ties)
    scores = [s + 3 * g for g, s in zip(golds, scores, strict=True)]
    out = evaluate(golds, scores, "dev", ks=[3, 10])
    rp, rpk, ndcg = _reference(np.concatenate(golds, 1), np.concatenate(scores, 1), 10)
    assert out["dev/rp_micro"] == pytest.approx(rp)
    assert out["dev/rp@10"] == pytest.approx(rpk) and out["dev/ndcg@10"] == pytest.approx(ndcg)
    for level, (g, s) in enumerate(zip(golds, scores, strict=True), start=1):
        rp, rpk, ndcg = _reference(g, s, 3)
        assert out[f"dev/rp_L{level}"] == pytest.approx(rp)
        assert out[f"dev/rp@3_L{level}"] == pytest.approx(rpk)
        assert out[f"dev/ndcg@3_L{level}"] == pytest.approx(ndcg)


def test_levels_of_different_float_types_and_non_byte_gold() -> None:
    golds, scores = _levels(np.random.default_rng(2), None)
    same = evaluate(golds, scores, "dev")
    mixed = evaluate(
        [golds[0].astype(np.float32), golds[1].astype(np.int64), golds[2]],
        [scores[0].astype(np.float64), scores[1], scores[2]],
        "dev",
    )
    assert mixed == pytest.approx(same)


def test_gold_rank_kernel_rejects_nan_anywhere_in_a_row() -> None:
    golds, scores = _levels(np.random.default_rng(4), None)
    scores[2][13, 611] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        goldrank.rank_metrics(scores, golds, [], micro=False)
    with pytest.raises(ValueError, match="dtypes"):
        goldrank.rank_metrics([scores[0].astype(np.float64), scores[1]], golds[:2], [], True)
