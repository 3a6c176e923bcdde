"""F1 of label sets and the tuned thresholds, against scikit-learn's `f1_score` and a brute
force search over every threshold."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import f1_score

from hiersearch.metrics import f1 as F
from hiersearch.metrics import keys

SKLEARN = {"zero_division": np.nan}  # the module's rule for a label with nothing to count


def _levels(seed: int, docs: int = 40, sizes: tuple[int, ...] = (3, 7, 15)):
    """Gold and float32 probabilities per level; scores of gold cells lean higher, and some
    labels never occur (no gold: their F1 may be 0 / 0)."""
    rng = np.random.default_rng(seed)
    golds, scores = [], []
    for size in sizes:
        gold = rng.random((docs, size)) < 0.15
        gold[:, -1] = False  # a label without gold in the split
        noise = rng.random((docs, size))
        scores.append(np.clip(0.6 * noise + 0.35 * gold, 0, 1).astype(np.float32))
        golds.append(gold.astype(np.uint8))
    return golds, scores


def _brute_force_threshold(gold: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """Every distinct score as a threshold, one at a time: (best micro-F1, highest t with it)."""
    best, best_t, truth = -1.0, math.nan, gold != 0
    for t in sorted(set(scores.ravel().tolist()), reverse=True):
        pred = scores >= t
        value = 2 * np.count_nonzero(pred & truth) / (pred.sum() + truth.sum())
        if value > best:
            best, best_t = value, t
    return best, best_t


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tuned_threshold_is_the_brute_force_best_and_highest(seed: int) -> None:
    golds, scores = _levels(seed)
    for gold, score in zip(golds, scores, strict=True):
        best, best_t = _brute_force_threshold(gold, score)
        t = F.tune_threshold(gold, score)
        assert t == best_t
        assert f1_score(gold.ravel(), (score >= t).ravel()) == pytest.approx(best, abs=0)


def test_tuned_threshold_from_the_top_slice_alone_is_the_brute_force_best(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A sparse level with a model that ranks gold high: the partitioned top proves its best
    candidate optimal at once, without sorting every score."""
    rng = np.random.default_rng(4)
    gold = rng.random((200, 50)) < 0.005
    scores = np.clip(rng.random((200, 50)) * 0.5 + 0.45 * gold, 0, 1).astype(np.float32)
    searches = []
    search = F._best_candidate
    monkeypatch.setattr(F, "_best_candidate", lambda *a: searches.append(a[2]) or search(*a))
    assert F.tune_threshold(gold, scores) == _brute_force_threshold(gold, scores)[1]
    assert searches == [False]  # one search, on the top slice only


def test_tuned_threshold_is_exact_when_the_first_top_cannot_prove_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A model near the prior: the bound fails on the first top slice, the search grows it
    (down to every score, sorted) and still finds the brute-force threshold."""
    rng = np.random.default_rng(5)
    gold = rng.random((60, 30)) < 0.05
    scores = rng.random((60, 30)).astype(np.float32)  # no signal: best F1 is low
    monkeypatch.setattr(F, "FIRST_TOP", 1)
    searches = []
    search = F._best_candidate
    monkeypatch.setattr(F, "_best_candidate", lambda *a: searches.append(a[2]) or search(*a))
    assert F.tune_threshold(gold, scores) == _brute_force_threshold(gold, scores)[1]
    assert len(searches) > 1  # the first top slice was not enough


def test_tuned_threshold_with_ties_at_the_boundary_of_the_top_slice() -> None:
    """Many cells share the score at the edge of the partitioned top: counted exactly."""
    gold = np.zeros((20, 10), dtype=bool)
    gold[:3, 0] = True
    scores = np.full((20, 10), 0.25, dtype=np.float32)
    scores[:3, 0] = 0.25  # the gold cells tie with every other cell
    scores[3:6, 1] = 0.9  # three confident false positives
    best, best_t = _brute_force_threshold(gold, scores)
    assert F.tune_threshold(gold, scores) == best_t == pytest.approx(0.25)


def test_a_level_without_gold_gets_a_threshold_that_predicts_nothing() -> None:
    scores = np.array([[1.0, 0.2], [0.99, 0.0]], dtype=np.float32)
    t = F.tune_threshold(np.zeros((2, 2)), scores)
    assert t > 1.0 and not (scores >= t).any()


def test_nan_scores_are_refused() -> None:
    with pytest.raises(ValueError, match="NaN"):
        F.tune_threshold(np.ones((1, 2)), np.array([[0.5, np.nan]]))


@pytest.mark.parametrize("seed", [0, 3])
def test_f1_per_level_and_overall_match_sklearn(seed: int) -> None:
    golds, scores = _levels(seed)
    thresholds = [0.4, 0.5, 0.55]
    preds = [s >= t for s, t in zip(scores, thresholds, strict=True)]
    got = F.f1_at_thresholds(golds, scores, thresholds, "test")
    for n, (gold, pred) in enumerate(zip(golds, preds, strict=True), start=1):
        micro = f1_score(gold, pred, average="micro", **SKLEARN)
        macro = f1_score(gold, pred, average="macro", **SKLEARN)
        assert got[keys.f1_micro_key("test", n)] == pytest.approx(micro, rel=1e-12)
        assert got[keys.f1_macro_key("test", n)] == pytest.approx(macro, rel=1e-12)
    every_gold, every_pred = np.hstack(golds), np.hstack(preds)
    assert got[keys.f1_micro_key("test")] == pytest.approx(
        f1_score(every_gold, every_pred, average="micro", **SKLEARN), rel=1e-12
    )
    assert got[keys.f1_macro_key("test")] == pytest.approx(
        f1_score(every_gold, every_pred, average="macro", **SKLEARN), rel=1e-12
    )


def test_labels_with_no_gold_and_no_prediction_are_left_out_of_macro() -> None:
    gold = np.array([[1, 0, 0], [0, 0, 0]])
    pred = np.array([[1, 0, 0], [0, 0, 1]])  # label 1: 0/0, label 2: a false positive
    got = F.f1_of_label_sets([gold], [pred], "dev")
    assert got[keys.f1_macro_key("dev", 1)] == 0.5  # (1 + 0) / 2, label 1 left out
    assert got[keys.f1_macro_key("dev", 1)] == f1_score(gold, pred, average="macro", **SKLEARN)


def test_nothing_to_count_is_nan() -> None:
    nothing = np.zeros((2, 3), dtype=bool)
    got = F.f1_of_label_sets([nothing], [nothing], "dev")
    assert math.isnan(got[keys.f1_micro_key("dev")])
    assert math.isnan(got[keys.f1_macro_key("dev", 1)])


def test_overall_macro_is_over_labels_not_the_mean_of_levels() -> None:
    # level 1: one label, perfect; level 2: three labels, all wrong
    gold = [np.array([[1], [0]]), np.array([[1, 1, 1], [0, 0, 0]])]
    pred = [np.array([[1], [0]]), np.array([[0, 0, 0], [1, 1, 1]])]
    got = F.f1_of_label_sets(gold, pred, "dev")
    assert got[keys.f1_macro_key("dev")] == 0.25  # (1 + 0 + 0 + 0) / 4, not (1 + 0) / 2


def test_tuned_f1_reports_the_thresholds_it_used() -> None:
    golds, scores = _levels(7)
    got = F.tuned_f1(golds, scores, "dev")
    thresholds = [got[keys.f1_threshold_key("dev", n)] for n in (1, 2, 3)]
    assert thresholds == F.tune_thresholds(golds, scores)
    again = F.f1_at_thresholds(golds, scores, thresholds, "dev")
    assert all(got[k] == v for k, v in again.items())
    assert all(keys.is_metric_key(k) for k in again)
    assert not keys.is_metric_key(keys.f1_threshold_key("dev", 1))


def test_f1_keys_are_searchable_and_maximized() -> None:
    for key in ("dev/f1_micro", "dev/f1_macro", "test/f1_micro_L2", "dev/f1_macro_L6"):
        assert keys.is_metric_key(key) and keys.mode_of(key) == "max"
    assert keys.f1_micro_key("dev", 2) == "dev/f1_micro_L2"
    assert keys.f1_threshold_key("dev", 3) == "dev/f1_threshold_L3"
