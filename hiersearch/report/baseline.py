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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hiersearch import metrics as M
from hiersearch.data.corpus import Corpus
from hiersearch.data.hierarchy import read_json_object
from hiersearch.errors import InputError
from hiersearch.files import atomic_write_json
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
# A saved index (`TfidfKnnIndex.save`): its settings and vocabulary, idf, training vectors and
# labels; the format bumps when the layout changes incompatibly.
INDEX_FORMAT = "hiersearch.tfidf_knn/1"
INDEX_FILE, IDF_FILE, VECTORS_FILE, TARGETS_FILE = (
    "tfidf.json", "idf.npy", "train_vectors.npz", "train_labels.npz",
)


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
    from scipy.sparse import csr_matrix

    rows, train = similarity.shape
    k = min(k, train)
    nearest = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
    # k of the row's similarities kept, as a sparse matrix: the product sums k terms per
    # label instead of every training document's (a dense [rows, train docs] product was
    # most of a served ensemble's k-NN member)
    weights = csr_matrix(
        (np.take_along_axis(similarity, nearest, axis=1).ravel(), nearest.ravel(),
         np.arange(0, rows * k + 1, k)), shape=similarity.shape,
    )
    return [np.asarray(weights @ labels) for labels in train_labels]


def _vectorizer(vocabulary: dict[str, int] | None = None) -> Any:
    """The baseline's TF-IDF vectorizer (unfitted; with `vocabulary`, that fixed one)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(ngram_range=NGRAMS, sublinear_tf=True, min_df=1,
                           vocabulary=vocabulary)


@dataclass(frozen=True)
class TfidfKnnIndex:
    """The baseline as a model: the fitted vectorizer, the training documents' TF-IDF vectors
    and, per level, their labels; scores any text (`level_scores`). `save` / `load` keep it in
    a directory (an ensemble export carries it): the vocabulary in column order and the idf
    (`INDEX_FILE`, `IDF_FILE`), the vectors and the labels as sparse matrices."""

    vectorizer: Any = field(repr=False)
    train_vectors: Any = field(repr=False)  # scipy CSR [train docs, terms], rows L2-normalized
    # per level, float32 multi-hot [train docs, labels of the level] (dense: `knn_scores`'
    # product is the baseline's, to the last bit)
    train_targets: tuple[np.ndarray, ...] = field(repr=False)
    k: int = K  # neighbours that vote

    @classmethod
    def fit(cls, texts: Sequence[str], level_targets: Sequence[np.ndarray], k: int = K
            ) -> TfidfKnnIndex:
        """Fitted on training documents and their per-level multi-hot labels."""
        vectorizer = _vectorizer()
        vectors = vectorizer.fit_transform(list(texts))
        targets = tuple(np.asarray(y).astype(np.float32) for y in level_targets)
        return cls(vectorizer, vectors, targets, k)

    @property
    def label_counts(self) -> list[int]:
        return [int(y.shape[1]) for y in self.train_targets]

    def level_scores(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Per level, float64 [docs, labels]: `knn_scores` of the documents' cosine similarity
        to the training documents, `_CHUNK` documents at a time."""
        parts: list[list[np.ndarray]] = [[] for _ in self.train_targets]
        for start in range(0, len(texts), _CHUNK):
            chunk = list(texts[start : start + _CHUNK])
            # rows are L2-normalized by the vectorizer: the dot product is the cosine
            similarity = (self.vectorizer.transform(chunk) @ self.train_vectors.T).toarray()
            for level, scores in enumerate(knn_scores(similarity, list(self.train_targets),
                                                      self.k)):
                parts[level].append(scores)
        return [np.concatenate(p) if p else np.zeros((0, y.shape[1]))
                for p, y in zip(parts, self.train_targets, strict=True)]

    def save(self, directory: Path) -> None:
        """Into `directory` (which exists)."""
        from scipy import sparse

        terms = sorted(self.vectorizer.vocabulary_, key=self.vectorizer.vocabulary_.get)
        atomic_write_json(directory / INDEX_FILE, {
            "format": INDEX_FORMAT, "k": self.k, "ngrams": list(NGRAMS),
            "label_counts": self.label_counts, "terms": terms,
        })
        np.save(directory / IDF_FILE, np.asarray(self.vectorizer.idf_))
        sparse.save_npz(directory / VECTORS_FILE, sparse.csr_matrix(self.train_vectors))
        labels = sparse.csr_matrix(np.concatenate(self.train_targets, axis=1) != 0)
        sparse.save_npz(directory / TARGETS_FILE, labels)

    @classmethod
    def load(cls, directory: Path) -> TfidfKnnIndex:
        """What `save` wrote; a missing or damaged file is an InputError naming it."""
        path = directory / INDEX_FILE
        info = read_json_object(path)
        if info.get("format") != INDEX_FORMAT or list(info.get("ngrams", [])) != list(NGRAMS):
            raise InputError(f"not a {INDEX_FORMAT} index of {NGRAMS}-grams", where=str(path))
        terms, counts = info["terms"], [int(c) for c in info["label_counts"]]
        vectorizer = _vectorizer({str(t): i for i, t in enumerate(terms)})
        vectorizer.idf_ = _load_array(directory / IDF_FILE, np.load)
        vectors = _load_array(directory / VECTORS_FILE, _load_npz)
        labels = _load_array(directory / TARGETS_FILE, _load_npz)
        if vectors.shape[1] != len(terms) or labels.shape != (vectors.shape[0], sum(counts)):
            raise InputError("vectors, labels and vocabulary differ in size", where=str(path))
        dense = labels.toarray().astype(np.float32)
        bounds = np.cumsum([0, *counts])
        targets = tuple(dense[:, a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True))
        return cls(vectorizer, vectors.tocsr(), targets, int(info["k"]))


def _load_npz(path: Path) -> Any:
    from scipy import sparse

    return sparse.load_npz(path)


def _load_array(path: Path, load: Any) -> Any:
    try:
        return load(path)
    except (OSError, ValueError, KeyError, EOFError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"cannot read the TF-IDF index: {first}", where=str(path)) from None


def tfidf_knn_scores(
    corpus: Corpus, k: int = K, splits: Sequence[str] = SPLITS
) -> dict[str, list[np.ndarray]]:
    """The baseline's scores of `splits` of `corpus` (its index fitted on the train split):
    per split, per level, [docs, labels of the level] (float64); a split without documents is
    left out."""
    index = fit_index(corpus, k)
    return {
        split: index.level_scores([d.text for d in corpus.splits[split]])
        for split in splits
        if corpus.splits[split]
    }


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


def fit_index(corpus: Corpus, k: int = K) -> TfidfKnnIndex:
    """The baseline's index of `corpus`'s training documents (its hierarchy's levels)."""
    train = corpus.splits["train"]
    targets = gold_levels([d.labels for d in train], corpus.hierarchy.label_index())
    return TfidfKnnIndex.fit([d.text for d in train], targets, k)


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


def write_baseline_scores(
    experiment: str, scores: dict[str, list[np.ndarray]], name: str = BASELINE_SCORES_FILE
) -> None:
    """`baseline_scores.npz` beside `baseline.json` (or another experiment-level member's
    file `name`): per split and level (keys "dev/L1", ...), float32 (half of float64's disk;
    the ensemble normalizes and sums them in float32 anyway)."""
    import io

    arrays = {
        f"{split}/L{level}": np.asarray(values, np.float32)
        for split, levels in scores.items()
        for level, values in enumerate(levels, start=1)
    }
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    filesystem, path = open_location(experiment)
    write_bytes(filesystem, f"{path}/{name}", buffer.getvalue())


def _split_level(key: str) -> tuple[str, int]:
    """("dev", 2) of the key "dev/L2"."""
    split, _, level = key.partition("/L")
    return split, int(level)


def read_baseline_scores(
    experiment: str, name: str = BASELINE_SCORES_FILE
) -> dict[str, list[np.ndarray]] | None:
    """The baseline's scores (`write_baseline_scores`; another member's file `name`); None
    when there are none. A file that cannot be read is an InputError naming it."""
    import io
    import zipfile

    filesystem, path = open_location(experiment)
    data = read_bytes(filesystem, f"{path}/{name}")
    if data is None:
        return None
    where = f"{experiment.rstrip('/')}/{name}"
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as saved:
            keys = sorted(saved.files, key=_split_level)
            out: dict[str, list[np.ndarray]] = {}
            for key in keys:
                out.setdefault(key.split("/")[0], []).append(np.asarray(saved[key], np.float32))
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"cannot read the scores: {exc}", where=where) from None
    return out
