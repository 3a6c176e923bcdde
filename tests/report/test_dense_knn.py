"""The dense k-NN member (report/dense_knn.py): its vote, k chosen on dev, its saved index."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hiersearch import metrics as M
from hiersearch.errors import InputError
from hiersearch.report import dense_knn as D


def _at(cosine: float, rng: np.random.Generator, count: int) -> np.ndarray:
    """`count` 8-dimensional vectors at `cosine` to the first axis (and to each other's
    first component), in random directions otherwise."""
    rest = rng.normal(size=(count, 7))
    rest /= np.linalg.norm(rest, axis=1, keepdims=True)
    return np.hstack([np.full((count, 1), cosine), np.sqrt(1 - cosine**2) * rest])


def test_a_label_scores_the_summed_cosine_of_the_k_nearest_that_carry_it() -> None:
    train = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 2.0]])  # lengths do not count
    targets = [np.array([[1, 0], [0, 1], [0, 1]])]
    index = D.DenseKnnIndex.fit(train, targets, layer=6, k=2)
    (scores,) = index.level_scores(np.array([[3.0, 0.0]]))
    # nearest two: doc 0 (cosine 1, label 0) and doc 1 (0.6, label 1); doc 2 (0) votes not
    np.testing.assert_allclose(scores, [[1.0, 0.6]], rtol=1e-6)
    assert scores.dtype == np.float32


def test_k_is_chosen_on_dev_and_ties_go_to_the_larger() -> None:
    # the dev document lies on the first axis, gold label 0: 3 training documents of label 0
    # close to it (0.9), 7 of label 1 further (0.5). k = 3 and 5 rank label 0 first
    # (2.7 against 0 or 1.0), k = 10 and 20 label 1 (3.5 against 2.7)
    rng = np.random.default_rng(0)
    train = np.vstack([_at(0.9, rng, 3), _at(0.5, rng, 7)])
    targets = [np.array([[1, 0]] * 3 + [[0, 1]] * 7)]
    vectors = {"train": train, "dev": np.eye(1, 8), "test": np.eye(1, 8)}
    golds = {"dev": [np.array([[True, False]])], "test": [np.array([[True, False]])]}
    index, info, scores = D.fit_on_dev(vectors, targets, golds, layer=6)
    assert index.k == info["k"] == 5
    assert info["k_dev_macro"] == {"3": 1.0, "5": 1.0, "10": 0.0, "20": 0.0}
    assert info["metrics"][M.rp_macro_key("test")] == 1.0
    assert set(scores) == {"dev", "test"} and scores["test"][0].shape == (1, 2)


def test_the_saved_index_scores_the_same(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    targets = [rng.random((40, 5)) < 0.3, rng.random((40, 9)) < 0.2]
    index = D.DenseKnnIndex.fit(rng.normal(size=(40, 16)), targets, layer=3, k=5)
    index.save(tmp_path)
    back = D.DenseKnnIndex.load(tmp_path)
    assert (back.layer, back.k, back.label_counts) == (3, 5, [5, 9])
    queries = rng.normal(size=(7, 16))
    for a, b in zip(index.level_scores(queries), back.level_scores(queries), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_damaged_index_or_member_file_is_refused_by_name(tmp_path: Path) -> None:
    index = D.DenseKnnIndex.fit(np.eye(3), [np.eye(3)], layer=1, k=1)
    index.save(tmp_path)
    (tmp_path / D.VECTORS_FILE).write_bytes(b"not numpy")
    with pytest.raises(InputError, match="cannot read the dense k-NN index") as err:
        D.DenseKnnIndex.load(tmp_path)
    assert err.value.where.endswith(D.VECTORS_FILE)
    (tmp_path / D.DENSE_FILE).write_text(json.dumps({"k": 3}))
    with pytest.raises(InputError, match="not a dense k-NN member's file"):
        D.read_dense(str(tmp_path))
    assert D.read_dense(str(tmp_path / "elsewhere")) is None
