"""A second nearest-neighbour member for an experiment's ensemble: k-NN on the frozen
encoder's mean-pooled vectors, the TF-IDF baseline's vote (report/baseline.py) over another
view of the documents.

Each document is the mean over its real tokens of the encoder's top layer (MiniLM-L6, the
packaged backbone, is a sentence encoder trained for exactly this vector and cosine), before
any fine-tuning; a label's score is the summed cosine similarity of the `k` most similar
training documents that carry it (`knn_scores`, as the TF-IDF baseline's). It errs unlike
both the TF-IDF vote (words vs meaning) and the trials' heads (a vote among neighbours vs a
linear map of one vector), which is what an ensemble gains from; it costs no training, and at
prediction one dot product with the training vectors on top of an encoder forward that
head-only members run anyway (BENCHMARKS 15 (c)).

The vectors come from the feature cache of the experiment's backbone (trial/features.py),
built if missing; search/members.py computes the member's dev and test scores once per
experiment and keeps them beside `baseline.json` as `dense_knn_scores.npz`. `DenseKnnIndex`
is the member as a model: an ensemble export saves it, `hiersearch predict` scores with it.
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
from hiersearch.data.hierarchy import read_json_object
from hiersearch.errors import InputError
from hiersearch.files import atomic_open, atomic_write_json
from hiersearch.report.baseline import knn_scores
from hiersearch.report.experiment import open_location, read_experiment_json, write_text

# Neighbours that vote, chosen on dev among K_CHOICES by the member's own dev macro
# R-Precision (ties: the larger k); K where nothing chose. On HPO (BENCHMARKS 15 (c)) dev
# R-Precision falls from k = 3 to 50 (88.8, 88.8, 87.9, 85.7, 81.1 at 3, 5, 10, 20, 50):
# near-duplicate documents (sibling terms) decide, and a wide vote blurs them.
K = 10
K_CHOICES = (3, 5, 10, 20)
# The member's settings and own metrics, and its dev and test scores, in the experiment
# directory beside `baseline.json`.
DENSE_FILE = "dense_knn.json"
DENSE_SCORES_FILE = "dense_knn_scores.npz"
# The TrialConfig fields `dense_knn.json`'s "backbone" keeps: what an export needs to find the
# same vectors again (the backbone, its tokenization, the feature cache's precision and place).
DENSE_BACKBONE = ("model", "seed", "max_length", "precision", "cache_dir")
# A saved index (`DenseKnnIndex.save`): its settings, the training vectors and labels.
INDEX_FORMAT = "hiersearch.dense_knn/1"
INDEX_FILE, VECTORS_FILE, TARGETS_FILE = "dense_knn.json", "train_vectors.npy", "train_labels.npz"
# Documents scored at once: a [rows, train docs] float32 block of similarities per chunk.
_CHUNK = 1024


def dense_name(k: int = K) -> str:
    return f"dense {k}-NN"


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """float32 rows scaled to length 1 (a zero row stays 0): cosine is then a dot product."""
    values = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(values, axis=1, keepdims=True)
    return values / np.where(norms > 0, norms, 1).astype(np.float32)


@dataclass(frozen=True)
class DenseKnnIndex:
    """The dense k-NN member as a model: the training documents' unit vectors and, per level,
    their labels; scores any documents' vectors (`level_scores`) pooled as the training ones
    were (the mean over the real tokens of encoder layer `layer`)."""

    train_vectors: np.ndarray = field(repr=False)  # [train docs, hidden] float32, unit rows
    # per level, float32 multi-hot [train docs, labels of the level]
    train_targets: tuple[np.ndarray, ...] = field(repr=False)
    layer: int  # the encoder layer (1-based) whose mean-pooled states are the vectors
    k: int = K

    @classmethod
    def fit(cls, vectors: np.ndarray, level_targets: Sequence[np.ndarray], layer: int,
            k: int = K) -> DenseKnnIndex:
        """On training documents' pooled vectors and their per-level multi-hot labels."""
        targets = tuple(np.asarray(y).astype(np.float32) for y in level_targets)
        return cls(unit_rows(vectors), targets, layer, k)

    @property
    def label_counts(self) -> list[int]:
        return [int(y.shape[1]) for y in self.train_targets]

    def level_scores(self, vectors: np.ndarray) -> list[np.ndarray]:
        """Per level, float32 [docs, labels]: `knn_scores` of the documents' cosine similarity
        to the training documents, `_CHUNK` documents at a time."""
        queries = unit_rows(vectors)
        parts: list[list[np.ndarray]] = [[] for _ in self.train_targets]
        for start in range(0, len(queries), _CHUNK):
            similarity = queries[start : start + _CHUNK] @ self.train_vectors.T
            for level, scores in enumerate(knn_scores(similarity, list(self.train_targets),
                                                      self.k)):
                parts[level].append(scores.astype(np.float32, copy=False))
        return [np.concatenate(p) if p else np.zeros((0, y.shape[1]), np.float32)
                for p, y in zip(parts, self.train_targets, strict=True)]

    def save(self, directory: Path) -> None:
        """Into `directory` (which exists)."""
        from scipy import sparse

        atomic_write_json(directory / INDEX_FILE, {
            "format": INDEX_FORMAT, "k": self.k, "layer": self.layer, "pooling": "mean",
            "label_counts": self.label_counts,
        })
        with atomic_open(directory / VECTORS_FILE, "wb") as handle:
            np.save(handle, self.train_vectors)
        labels = sparse.csr_matrix(np.concatenate(self.train_targets, axis=1) != 0)
        with atomic_open(directory / TARGETS_FILE, "wb") as handle:
            sparse.save_npz(handle, labels)

    @classmethod
    def load(cls, directory: Path) -> DenseKnnIndex:
        """What `save` wrote; a missing or damaged file is an InputError naming it."""
        from scipy import sparse

        path = directory / INDEX_FILE
        info = read_json_object(path)
        if info.get("format") != INDEX_FORMAT:
            raise InputError(f"not a {INDEX_FORMAT} index", where=str(path))
        counts = [int(c) for c in info["label_counts"]]
        vectors = _load(directory / VECTORS_FILE, lambda p: np.load(p, allow_pickle=False))
        labels = _load(directory / TARGETS_FILE, sparse.load_npz)
        if vectors.ndim != 2 or labels.shape != (vectors.shape[0], sum(counts)):
            raise InputError("vectors and labels differ in size", where=str(path))
        dense = labels.toarray().astype(np.float32)
        bounds = np.cumsum([0, *counts])
        targets = tuple(dense[:, a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True))
        return cls(np.asarray(vectors, np.float32), targets, int(info["layer"]), int(info["k"]))


def fit_on_dev(
    vectors: dict[str, np.ndarray],
    targets: Sequence[np.ndarray],
    golds: dict[str, Sequence[np.ndarray]],
    layer: int,
) -> tuple[DenseKnnIndex, dict[str, Any], dict[str, list[np.ndarray]]]:
    """The member fitted on the training documents' `vectors["train"]` (their labels
    `targets`), its k chosen on dev (`K_CHOICES`); with what `DENSE_FILE` holds and its scores
    of every split in `golds` (dev, test)."""
    started = time.perf_counter()
    index = DenseKnnIndex.fit(vectors["train"], targets, layer)
    macro = M.rp_macro_key("dev")
    by_k = {k: M.evaluate(golds["dev"], _with_k(index, k).level_scores(vectors["dev"]),
                          "dev")[macro] for k in K_CHOICES}
    best = max(K_CHOICES, key=lambda k: (by_k[k], k))
    index = _with_k(index, best)
    scores = {split: index.level_scores(vectors[split]) for split in golds}
    metrics: dict[str, float] = {}
    for split, split_scores in scores.items():
        metrics.update(M.evaluate(golds[split], split_scores, split))
    info = {
        "name": dense_name(best), "k": best, "layer": layer, "pooling": "mean",
        "k_dev_macro": {str(k): v for k, v in by_k.items()},
        "train_docs": int(len(vectors["train"])),
        "seconds": round(time.perf_counter() - started, 2), "metrics": metrics,
    }
    return index, info, scores


def _with_k(index: DenseKnnIndex, k: int) -> DenseKnnIndex:
    return DenseKnnIndex(index.train_vectors, index.train_targets, index.layer, k)


def write_dense(experiment: str, info: dict[str, Any]) -> None:
    filesystem, path = open_location(experiment)
    write_text(filesystem, f"{path}/{DENSE_FILE}", json.dumps(info, indent=2) + "\n")


def read_dense(experiment: str) -> dict[str, Any] | None:
    """The experiment's `dense_knn.json`, or None (none written); a damaged one is an
    InputError naming it."""
    info = read_experiment_json(experiment, DENSE_FILE)
    if info is not None and not all(key in info for key in ("k", "layer", "backbone")):
        raise InputError("not a dense k-NN member's file", where=f"{experiment}/{DENSE_FILE}")
    return info


def _load(path: Path, load: object) -> np.ndarray:
    try:
        return load(path)  # type: ignore[operator]
    except (OSError, ValueError, KeyError, EOFError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"cannot read the dense k-NN index: {first}", where=str(path)) from None
