"""Ensemble selection (report/ensemble.py): normalization, greedy selection with known answers,
the combined scores, ensemble.json."""

from __future__ import annotations

import numpy as np
import pytest

from hiersearch import metrics as M
from hiersearch.errors import InputError
from hiersearch.report import ensemble as E


def _trial(name: str) -> E.EnsembleMember:
    return E.EnsembleMember(E.KIND_TRIAL, name, "exp", f"exp/{name}/checkpoint_000001")


BASELINE = E.EnsembleMember(E.KIND_BASELINE, None, "exp", None)


def _one_hot(rows: list[int], labels: int) -> np.ndarray:
    out = np.zeros((len(rows), labels), dtype=bool)
    out[np.arange(len(rows)), rows] = True
    return out


def _scores_top(rows: list[int], labels: int) -> np.ndarray:
    """Scores ranking label `rows[d]` first in document d (the rest 0.1 apart, below it)."""
    out = np.tile(np.linspace(0.1, 0.0, labels, dtype=np.float32), (len(rows), 1))
    out[np.arange(len(rows)), rows] = 0.9
    return out


def test_normalize_maps_each_document_to_zero_one():
    scores = np.array([[2.0, 4.0, 3.0], [5.0, 5.0, 5.0]])
    out = E.normalize(scores)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.0, 1.0, 0.5], [0.0, 0.0, 0.0]])


def test_normalize_keeps_each_documents_order():
    scores = np.random.default_rng(0).normal(size=(20, 7))
    assert (np.argsort(E.normalize(scores), axis=1) == np.argsort(scores, axis=1)).all()


def test_three_members_each_wrong_once_take_equal_weights_and_fix_every_document():
    # gold label of document d is d; member m ranks a wrong label first on document m only
    gold = _one_hot([0, 1, 2], 3)
    members = [_one_hot([(d + 1) % 3 if d == m else d for d in range(3)], 3) for m in range(3)]
    scores = {"dev": [[s] for s in members]}
    ensemble = E.fit_ensemble([_trial(str(m)) for m in range(3)], scores, {"dev": [gold]})
    assert ensemble.weights == ((1 / 3, 1 / 3, 1 / 3),)
    assert ensemble.metrics[M.rp_level_key("dev", 1)] == 1.0
    assert all(M.r_precision(gold, s.astype(np.float32))[0] == 2 / 3 for s in members)


def test_per_level_selection_takes_each_level_from_the_member_best_at_it():
    gold = [_one_hot([0, 1, 2, 3], 4), _one_hot([3, 2, 1, 0], 4)]
    good_1, good_2 = _scores_top([0, 1, 2, 3], 4), _scores_top([3, 2, 1, 0], 4)
    bad_1, bad_2 = _scores_top([1, 2, 3, 0], 4), _scores_top([0, 1, 2, 3], 4)
    scores = {"dev": [[good_1, bad_2], [bad_1, good_2]]}
    members = [_trial("a"), _trial("b")]
    per_level = E.fit_ensemble(members, scores, {"dev": gold}, mode=E.PER_LEVEL)
    assert per_level.weights == ((1.0, 0.0), (0.0, 1.0))
    assert per_level.metrics[M.rp_macro_key("dev")] == 1.0
    whole = E.fit_ensemble(members, scores, {"dev": gold}, mode=E.GLOBAL)
    assert whole.weights[0] == whole.weights[1]
    assert whole.metrics[M.rp_macro_key("dev")] < 1.0
    assert E.choose_served({E.PER_LEVEL: per_level, E.GLOBAL: whole}) == E.PER_LEVEL


def test_a_member_that_hurts_is_never_selected():
    rng = np.random.default_rng(1)
    gold = rng.random((200, 30)) < 0.1
    good = gold + rng.normal(0, 0.6, gold.shape)
    hurts = -2.0 * gold + rng.normal(0, 0.1, gold.shape)  # ranks the gold labels last
    ensemble = E.fit_ensemble(
        [_trial("good"), _trial("hurts")], {"dev": [[good], [hurts]]}, {"dev": [gold]}, steps=20
    )
    assert ensemble.weights == ((1.0, 0.0),)
    assert ensemble.used() == [0]


def test_the_baseline_can_be_a_member_and_is_named_so():
    gold = _one_hot([0, 1, 2], 3)
    trial = _scores_top([0, 1, 0], 3)  # wrong on document 2
    knn = np.array([[0.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 3.0]])  # no vote on doc 0
    ensemble = E.fit_ensemble([_trial("t"), BASELINE], {"dev": [[trial], [knn]]},
                              {"dev": [gold]})
    assert ensemble.weights[0][1] > 0
    assert ensemble.metrics[M.rp_level_key("dev", 1)] == 1.0
    assert "baseline" in ensemble.describe()


def test_ties_are_broken_by_the_seed_and_the_same_seed_repeats():
    gold = _one_hot([0, 1], 2)
    same = _scores_top([0, 1], 2)
    members = [_trial(str(m)) for m in range(4)]
    fits = [
        E.fit_ensemble(members, {"dev": [[same]] * 4}, {"dev": [gold]}, steps=1, seed=seed)
        for seed in range(8)
    ]
    picked = {f.used()[0] for f in fits}
    assert len(picked) > 1  # different seeds, different picks among equals
    again = E.fit_ensemble(members, {"dev": [[same]] * 4}, {"dev": [gold]}, steps=1, seed=3)
    assert again.weights == fits[3].weights


def test_test_metrics_are_those_of_the_combined_test_scores():
    rng = np.random.default_rng(2)
    golds = {s: [rng.random((50, 8)) < 0.2, rng.random((50, 12)) < 0.1] for s in ("dev", "test")}
    scores = {s: [[g + rng.normal(0, 0.8, g.shape) for g in golds[s]] for _ in range(3)]
              for s in golds}
    ensemble = E.fit_ensemble([_trial(str(m)) for m in range(3)], scores, golds, steps=10)
    expected = M.evaluate(golds["test"], E.combine(scores["test"], ensemble), "test")
    assert ensemble.metrics[M.rp_macro_key("test")] == expected[M.rp_macro_key("test")]
    assert M.rp_micro_key("dev") in ensemble.metrics
    for level in ensemble.weights:
        assert sum(level) == pytest.approx(1.0)


def test_the_ensemble_file_round_trips(tmp_path):
    gold = _one_hot([0, 1, 2], 3)
    fitted = {
        mode: E.fit_ensemble([_trial("a"), BASELINE],
                             {"dev": [[_scores_top([0, 1, 0], 3)], [_scores_top([0, 1, 2], 3)]]},
                             {"dev": [gold]}, mode=mode)
        for mode in E.MODES
    }
    written = E.EnsembleFile(fitted, E.PER_LEVEL, (("b", "damaged"),), 1.5, 20)
    E.write_ensemble(str(tmp_path), written)
    back = E.read_ensemble_file(str(tmp_path))
    assert back is not None
    assert back.ensembles == written.ensembles
    assert back.skipped == (("b", "damaged"),)
    assert E.read_ensemble(str(tmp_path)) == fitted[E.PER_LEVEL]


def test_no_ensemble_file_reads_as_none_and_a_damaged_one_is_refused(tmp_path):
    assert E.read_ensemble_file(str(tmp_path)) is None
    (tmp_path / E.ENSEMBLE_FILE).write_text('{"schema": "other"}')
    with pytest.raises(InputError, match="not an ensemble file"):
        E.read_ensemble_file(str(tmp_path))


def _scalars(*values: float) -> list[list[np.ndarray]]:
    """Members of one 'level' each holding one number: a hand-made selection problem."""
    return [[np.array([v])] for v in values]


def _near(target: float):
    """A selection objective with a known best: the members' sum as close to `target`."""
    return lambda sums, _golds: -abs(float(sums[0].sum()) - target)


def test_sorted_initialization_starts_from_the_best_prefix_of_the_members_by_their_own_value():
    # own values vs 4.5: 1.0 -> -3.5, 2.0 -> -2.5, 2.5 -> -2, 0.5 -> -4; in that order the
    # prefix sums are 2.5, 4.5 (exact), 5.5, 6.0: the first two, once each
    members = _scalars(1.0, 2.0, 2.5, 0.5)
    start = E.sorted_start(members, [np.zeros(1)], _near(4.5))
    assert start.tolist() == [0, 1, 1, 0]
    # no step improves on an exact start: the best prefix is the start itself
    counts = E.select(members, [np.zeros(1)], _near(4.5), 5, np.random.default_rng(0), start)
    assert counts.tolist() == [0, 1, 1, 0]


def test_steps_after_a_sorted_start_only_add_to_it():
    members = _scalars(1.0, 2.0, 0.25)
    start = np.array([1, 0, 0])
    counts = E.select(members, [np.zeros(1)], _near(3.5), 4, np.random.default_rng(0), start)
    assert counts.tolist() == [1, 1, 2]  # 1 + 2 + 0.25 + 0.25: the start kept


def test_bagged_weights_are_each_members_share_of_the_bags_it_won():
    # member 0 alone hits the target; 1-3 add nothing. A bag holding member 0 gives it all its
    # weight; one without it gives all to the one of the others that its tie-break draws
    members = _scalars(1.0, 0.0, 0.0, 0.0)
    seed, bags = 4, 10
    weights = E.selection_weights(members, [np.zeros(1)], _near(1.0), 5,
                                  np.random.default_rng(seed), bags=bags)
    rng = np.random.default_rng(seed)  # the bags, drawn up front: two of the four members
    holding = sum(0 in rng.choice(4, 2, replace=False) for _ in range(bags))
    assert 0 < holding < bags
    assert weights[0] == pytest.approx(holding / bags)
    assert sum(weights) == pytest.approx(1.0)


def test_without_bags_or_sorted_start_the_selection_is_the_plain_greedy_one():
    rng = np.random.default_rng(5)
    golds = {"dev": [rng.random((60, 9)) < 0.2]}
    scores = {"dev": [[golds["dev"][0] + rng.normal(0, 0.9, (60, 9))] for _ in range(4)]}
    members = [_trial(str(m)) for m in range(4)]
    plain = E.fit_ensemble(members, scores, golds, steps=8)
    same = E.fit_ensemble(members, scores, golds, steps=8, sorted_init=False, bags=0)
    assert plain == same and not plain.sorted_init and plain.bags == 0
    bagged = E.fit_ensemble(members, scores, golds, steps=8, sorted_init=True, bags=3)
    assert bagged.sorted_init and bagged.bags == 3
    assert sum(bagged.weights[0]) == pytest.approx(1.0)
    back = E.Ensemble.from_json(bagged.to_json(), "here")
    assert back.sorted_init and back.bags == 3 and back.weights == bagged.weights


def test_cross_validation_fits_on_part_of_dev_and_measures_on_the_rest():
    # the right member ranks the gold label first on every document: whichever half it is
    # fitted on, it alone is picked and is perfect on the other half; a noisy one is worse
    rng = np.random.default_rng(6)
    rows = rng.integers(0, 5, 40).tolist()
    gold = [_one_hot(rows, 5)]
    right, noisy = _scores_top(rows, 5), rng.random((40, 5))
    members = [_trial("right"), _trial("noisy")]
    assert E.cross_validated(members, [[right], [noisy]], gold, steps=5) == 1.0
    assert E.cross_validated(members[1:], [[noisy]], gold, steps=5) < 1.0
    with pytest.raises(InputError, match="folds"):
        E.cross_validated(members, [[right], [noisy]], gold, folds=1)
