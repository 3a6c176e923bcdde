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
from hiersearch.report.experiment import (
    open_location,
    read_bytes,
    read_experiment_json,
    write_bytes,
    write_text,
)

BASELINE_FILE = "baseline.json"
# The baseline's dev and test scores beside it (`write_baseline_scores`): an ensemble's member.
BASELINE_SCORES_FILE = "baseline_scores.npz"
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


def tfidf_knn_scores(
    corpus: Corpus, k: int = K, splits: Sequence[str] = SPLITS
) -> dict[str, list[np.ndarray]]:
    """The baseline's scores of `splits` of `corpus` (trained on its train split): per split,
    per level, [docs, labels of the level] (float64); a split without documents is left out."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    label_index = corpus.hierarchy.label_index()
    train = corpus.splits["train"]
    vectorizer = TfidfVectorizer(ngram_range=NGRAMS, sublinear_tf=True, min_df=1)
    train_x = vectorizer.fit_transform([d.text for d in train])
    train_y = [y.astype(np.float32) for y in gold_levels([d.labels for d in train], label_index)]
    out: dict[str, list[np.ndarray]] = {}
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
        out[split] = [np.concatenate(p) for p in parts]
    return out


def tfidf_knn(corpus: Corpus, k: int = K, splits: Sequence[str] = SPLITS) -> dict[str, float]:
    """The baseline's metrics on `splits` of `corpus` (trained on its train split), keyed as
    every trial's are."""
    return knn_metrics(corpus, tfidf_knn_scores(corpus, k, splits))


def knn_metrics(corpus: Corpus, scores: dict[str, list[np.ndarray]]) -> dict[str, float]:
    """The metrics of the baseline's `scores` (`tfidf_knn_scores`) on `corpus`."""
    label_index = corpus.hierarchy.label_index()
    out: dict[str, float] = {}
    for split, levels in scores.items():
        golds = gold_levels([d.labels for d in corpus.splits[split]], label_index)
        out.update(M.evaluate(golds, levels, split))
    return out


def compute_baseline(corpus: Corpus, k: int = K) -> dict[str, Any]:
    """What `baseline.json` holds: the baseline's name, settings, metrics and cost."""
    return baseline_with_scores(corpus, k)[0]


def baseline_with_scores(
    corpus: Corpus, k: int = K
) -> tuple[dict[str, Any], dict[str, list[np.ndarray]]]:
    """`compute_baseline` and the scores its metrics come from (`tfidf_knn_scores`: what
    `baseline_scores.npz` keeps, an ensemble's baseline member)."""
    started = time.perf_counter()
    scores = tfidf_knn_scores(corpus, k)
    baseline = {
        "name": baseline_name(k),
        "k": k,
        "ngrams": list(NGRAMS),
        "train_docs": len(corpus.splits["train"]),
        "seconds": round(time.perf_counter() - started, 2),
        "metrics": knn_metrics(corpus, scores),
    }
    return baseline, scores


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


def write_baseline_scores(experiment: str, scores: dict[str, list[np.ndarray]]) -> None:
    """`baseline_scores.npz` beside `baseline.json`: per split and level (keys "dev/L1", ...),
    float32 (half of float64's disk; the ensemble normalizes and sums them in float32 anyway)."""
    import io

    arrays = {
        f"{split}/L{level}": np.asarray(values, np.float32)
        for split, levels in scores.items()
        for level, values in enumerate(levels, start=1)
    }
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    filesystem, path = open_location(experiment)
    write_bytes(filesystem, f"{path}/{BASELINE_SCORES_FILE}", buffer.getvalue())


def _split_level(key: str) -> tuple[str, int]:
    """("dev", 2) of the key "dev/L2"."""
    split, _, level = key.partition("/L")
    return split, int(level)


def read_baseline_scores(experiment: str) -> dict[str, list[np.ndarray]] | None:
    """The baseline's scores (`write_baseline_scores`); None when there are none. A file that
    cannot be read is an InputError naming it."""
    import io
    import zipfile

    filesystem, path = open_location(experiment)
    data = read_bytes(filesystem, f"{path}/{BASELINE_SCORES_FILE}")
    if data is None:
        return None
    where = f"{experiment.rstrip('/')}/{BASELINE_SCORES_FILE}"
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as saved:
            keys = sorted(saved.files, key=_split_level)
            out: dict[str, list[np.ndarray]] = {}
            for key in keys:
                out.setdefault(key.split("/")[0], []).append(np.asarray(saved[key], np.float32))
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"cannot read the baseline's scores: {exc}", where=where) from None
    return out
