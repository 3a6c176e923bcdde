"""A baseline without an encoder, in every experiment's leaderboard: TF-IDF k-nearest
neighbours on the experiment's own training documents.

Each dev or test document is scored against the training documents by the cosine similarity of
their TF-IDF vectors (scikit-learn's `TfidfVectorizer`: word unigrams and bigrams, sublinear
term frequency, fitted on the training documents); a label's score is the sum of the
similarities of the `k` nearest training documents that carry it (a similarity-weighted vote,
the usual multi-label k-NN). Its metrics are `hiersearch.metrics.evaluate`'s, as every
trial's are, under the same keys (`dev/rp_L1`, `test/rp_macro`, ...).

A search (search/run.py) computes it once per experiment (seconds, no GPU) and writes it beside
`hiersearch.json` as `baseline.json`; the results table shows it as a row of status
"baseline" with no checkpoint, so it is never the best trial and never exported, and a
fine-tuned model that does not beat it is visible at a glance.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from hiersearch import metrics as M
from hiersearch.data.corpus import Corpus
from hiersearch.errors import InputError
from hiersearch.report.experiment import open_location, read_experiment_json, write_text

BASELINE_FILE = "baseline.json"
STATUS_BASELINE = "baseline"
# Neighbours that vote, and the n-grams of the TF-IDF vectors (BENCHMARKS 10 (d) chose them:
# on HPO they reproduce the published baseline's figures).
K = 20
NGRAMS = (1, 2)
SPLITS = ("dev", "test")
# Documents scored at once: a [rows, train docs] float64 matrix of similarities per chunk
# (512 x 45,000 EURLEX57K training documents: 184 MB).
_CHUNK = 512


def baseline_name(k: int = K) -> str:
    return f"TF-IDF {k}-NN"


def gold_levels(labels: Sequence[Sequence[str]], label_index: Sequence[Sequence[str]]) -> list:
    """Per level, the multi-hot gold [docs, labels of the level] of documents' label ids (ids
    outside the levels are ignored)."""
    out = []
    for index in label_index:
        column = {label: c for c, label in enumerate(index)}
        gold = np.zeros((len(labels), len(index)), dtype=bool)
        for row, doc_labels in enumerate(labels):
            gold[row, [column[x] for x in doc_labels if x in column]] = True
        out.append(gold)
    return out


def knn_scores(similarity: np.ndarray, train_labels: list[np.ndarray], k: int) -> list:
    """Per level, each document's label scores: the summed similarity of its `k` most similar
    training documents that carry the label."""
    k = min(k, similarity.shape[1])
    nearest = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
    weights = np.zeros_like(similarity)
    np.put_along_axis(weights, nearest, np.take_along_axis(similarity, nearest, axis=1), axis=1)
    return [weights @ labels for labels in train_labels]


def tfidf_knn(corpus: Corpus, k: int = K, splits: Sequence[str] = SPLITS) -> dict[str, float]:
    """The baseline's metrics on `splits` of `corpus` (trained on its train split), keyed as
    every trial's are."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    label_index = corpus.hierarchy.label_index()
    train = corpus.splits["train"]
    vectorizer = TfidfVectorizer(ngram_range=NGRAMS, sublinear_tf=True, min_df=1)
    train_x = vectorizer.fit_transform([d.text for d in train])
    train_y = [y.astype(np.float32) for y in gold_levels([d.labels for d in train], label_index)]
    out: dict[str, float] = {}
    for split in splits:
        docs = corpus.splits[split]
        if not docs:
            continue
        parts: list[list[np.ndarray]] = [[] for _ in label_index]
        for start in range(0, len(docs), _CHUNK):
            chunk = docs[start : start + _CHUNK]
            # rows are L2-normalized by the vectorizer: the dot product is the cosine
            similarity = (vectorizer.transform([d.text for d in chunk]) @ train_x.T).toarray()
            for level, scores in enumerate(knn_scores(similarity, train_y, k)):
                parts[level].append(scores)
        golds = gold_levels([d.labels for d in docs], label_index)
        out.update(M.evaluate(golds, [np.concatenate(p) for p in parts], split))
    return out


def compute_baseline(corpus: Corpus, k: int = K) -> dict[str, Any]:
    """What `baseline.json` holds: the baseline's name, settings, metrics and cost."""
    started = time.perf_counter()
    metrics = tfidf_knn(corpus, k)
    return {
        "name": baseline_name(k),
        "k": k,
        "ngrams": list(NGRAMS),
        "train_docs": len(corpus.splits["train"]),
        "seconds": round(time.perf_counter() - started, 2),
        "metrics": metrics,
    }


def write_baseline(experiment: str, baseline: dict[str, Any]) -> None:
    filesystem, path = open_location(experiment)
    write_text(filesystem, f"{path}/{BASELINE_FILE}", json.dumps(baseline, indent=2) + "\n")


def read_baseline(experiment: str) -> dict[str, Any] | None:
    """The experiment's `baseline.json`, or None (none written, or unreadable: the table
    stands without it)."""
    try:
        baseline = read_experiment_json(experiment, BASELINE_FILE)
    except InputError:
        return None
    return baseline if baseline and isinstance(baseline.get("metrics"), dict) else None
