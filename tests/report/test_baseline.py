"""The baseline row of every leaderboard (`hiersearch.report.baseline`): TF-IDF k-NN on the
experiment's own training documents, shown beside the trials, never the best."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from hiersearch import metrics as M
from hiersearch.errors import InputError
from hiersearch.report import leaderboard as lb
from hiersearch.report.baseline import (
    BASELINE_FILE,
    NGRAMS,
    STATUS_BASELINE,
    TfidfKnnIndex,
    compute_baseline,
    gold_levels,
    knn_scores,
    read_baseline,
    tfidf_knn,
    write_baseline,
)
from hiersearch.report.results import load_experiments
from hiersearch.report.summary import SUMMARY_JSON_SCHEMA, run_summary
from hiersearch.serve.export import choose_trial

FINISHED = Path(__file__).parents[1] / "fixtures" / "leaderboard" / "finished"


def test_knn_sums_the_similarities_of_the_k_nearest_that_carry_a_label() -> None:
    similarity = np.array([[0.9, 0.1, 0.5]], dtype=np.float32)
    labels = np.array([[1, 0], [0, 1], [1, 1]], dtype=np.float32)  # 3 train docs x 2 labels
    (scores,) = knn_scores(similarity, [labels], k=2)  # neighbours: docs 0 and 2
    np.testing.assert_allclose(scores, [[1.4, 0.5]], rtol=1e-6)
    (every,) = knn_scores(similarity, [labels], k=10)  # k past the train docs: all
    np.testing.assert_allclose(every, [[1.4, 0.6]], rtol=1e-6)


def test_knn_equals_the_dense_product_of_the_k_nearest_weights() -> None:
    """The sparse vote sums the same k similarities a dense [docs, train docs] product does."""
    rng = np.random.default_rng(0)
    similarity = rng.random((40, 300))
    labels = [(rng.random((300, n)) < 0.1).astype(np.float32) for n in (5, 17)]
    nearest = np.argpartition(-similarity, 19, axis=1)[:, :20]
    dense = np.zeros_like(similarity)
    np.put_along_axis(dense, nearest, np.take_along_axis(similarity, nearest, axis=1), axis=1)
    for got, y in zip(knn_scores(similarity, labels, k=20), labels, strict=True):
        assert got.shape == (40, y.shape[1]) and got.dtype == np.float64
        np.testing.assert_allclose(got, dense @ y, rtol=1e-12, atol=0)


def _corpus() -> SimpleNamespace:
    def doc(text: str, *labels: str) -> SimpleNamespace:
        return SimpleNamespace(text=text, labels=labels)

    train = [doc("heart valve murmur", "A", "A1"), doc("kidney stone pain", "B", "B1"),
             doc("heart rhythm fast", "A", "A2")]
    held_out = [doc("a murmur of the heart valve", "A", "A1"),
                doc("stone in the kidney", "B", "B1")]
    hierarchy = SimpleNamespace(label_index=lambda: [["A", "B"], ["A1", "A2", "B1"]])
    return SimpleNamespace(hierarchy=hierarchy,
                           splits={"train": train, "dev": held_out, "test": held_out[:1]})


def test_the_baseline_scores_under_the_trials_metric_keys() -> None:
    metrics = tfidf_knn(_corpus(), k=1)  # type: ignore[arg-type]
    assert metrics[M.rp_macro_key("dev")] == 1.0 and metrics[M.rp_level_key("test", 2)] == 1.0
    baseline = compute_baseline(_corpus(), k=1)  # type: ignore[arg-type]
    assert baseline["name"] == "TF-IDF 1-NN" and baseline["train_docs"] == 3


@pytest.fixture()
def experiment(tmp_path: Path) -> Path:
    path = tmp_path / "finished"
    shutil.copytree(FINISHED, path)
    metrics = {M.rp_level_key(split, n): 0.99 for split in ("dev", "test") for n in (1, 2, 3)}
    metrics.update({M.rp_macro_key("dev"): 0.99, M.rp_macro_key("test"): 0.98})
    write_baseline(str(path), {"name": "TF-IDF 20-NN", "k": 20, "metrics": metrics})
    return path


def test_the_baseline_is_a_row_of_its_own_that_is_never_the_best(experiment: Path) -> None:
    table = load_experiments([str(experiment)])
    row = table[table["status"] == STATUS_BASELINE].iloc[0]
    assert row["variant"] == "TF-IDF 20-NN" and row[M.rp_macro_key("dev")] == 0.99
    assert table[M.rp_macro_key("dev")].max() == 0.99  # it outscores every trial
    # one finished trial with a checkpoint: the best, whatever the baseline scores
    trial_dir = sorted(experiment.glob("trainable_*"))[0]
    (trial_dir / "checkpoint_000001").mkdir()
    for name in ("model.pt", "final_metrics.json", "config.json"):
        (trial_dir / "checkpoint_000001" / name).write_text("{}")
    best = choose_trial(str(experiment), None, None)
    assert best["status"] == "terminated" and best["trial_id"] != STATUS_BASELINE


def test_the_summary_names_the_baseline_apart_from_the_trials(experiment: Path) -> None:
    import jsonschema

    table = load_experiments([str(experiment)])
    summary = run_summary("search", str(experiment), table, None, None)
    jsonschema.validate(summary, SUMMARY_JSON_SCHEMA)
    assert summary["trials"]["total"] == len(table) - 1
    assert STATUS_BASELINE not in summary["trials"]["by_status"]
    assert summary["baseline"]["name"] == "TF-IDF 20-NN"


def test_the_paper_table_ends_with_the_baseline(experiment: Path) -> None:
    paper = lb.paper_table(load_experiments([str(experiment)]), "test")
    last = paper.iloc[-1]
    assert last["variant"] == "TF-IDF 20-NN (baseline)" and last["macro"] == "98.0"
    assert last["seeds"] == "-" and "FLAT" in set(paper["variant"])


def test_an_unreadable_baseline_file_is_no_row(experiment: Path) -> None:
    (experiment / BASELINE_FILE).write_text("{not json")
    assert read_baseline(str(experiment)) is None
    table = load_experiments([str(experiment)])
    assert STATUS_BASELINE not in set(table["status"])


# --- the baseline as a model: a saved index (an ensemble export carries it) ------------------


def _index_corpus() -> tuple[list[str], list[np.ndarray], list[str]]:
    corpus = _corpus()
    train = corpus.splits["train"]
    targets = gold_levels([d.labels for d in train], corpus.hierarchy.label_index())
    texts = [d.text for d in corpus.splits["dev"]] + ["heart stone", "nothing known here"]
    return [d.text for d in train], targets, texts


def test_the_index_scores_exactly_as_knn_of_the_tfidf_cosine() -> None:
    from sklearn.feature_extraction.text import TfidfVectorizer

    train, targets, texts = _index_corpus()
    vectorizer = TfidfVectorizer(ngram_range=NGRAMS, sublinear_tf=True, min_df=1)
    train_x = vectorizer.fit_transform(train)
    similarity = (vectorizer.transform(texts) @ train_x.T).toarray()
    expected = knn_scores(similarity, [y.astype(np.float32) for y in targets], 2)
    got = TfidfKnnIndex.fit(train, targets, k=2).level_scores(texts)
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_saved_index_loads_back_to_the_same_scores(tmp_path: Path) -> None:
    train, targets, texts = _index_corpus()
    index = TfidfKnnIndex.fit(train, targets, k=2)
    index.save(tmp_path)
    again = TfidfKnnIndex.load(tmp_path)
    assert again.k == 2 and again.label_counts == [2, 3]
    for a, b in zip(again.level_scores(texts), index.level_scores(texts), strict=True):
        np.testing.assert_array_equal(a, b)
    (tmp_path / "train_vectors.npz").write_bytes(b"cut short")
    with pytest.raises(InputError, match=str(tmp_path / "train_vectors.npz")):
        TfidfKnnIndex.load(tmp_path)
