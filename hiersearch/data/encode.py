"""Tokenize a corpus once into a cached `datasets` Arrow table; per-level multi-hot targets.

The cache key is (corpus content, tokenizer, max length), so every trial after the first on the
same corpus memory-maps the cached table instead of tokenizing again. Labels are stored as
indices into the concatenation of the hierarchy's per-level label lists (compact even for
thousands of labels); the multi-hot targets are built per batch by `multi_hot`, and each level's
slice of them is given by `EncodedCorpus.level_slices`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hiersearch.data.corpus import SPLITS, Corpus
from hiersearch.errors import InputError
from hiersearch.files import atomic_directory, atomic_write_json

ENCODING_VERSION = 1  # bump when the table layout changes, so old caches are not reused
_TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "merges.txt",
    "vocab.json",
    "spiece.model",
    "sentencepiece.bpe.model",
)


@dataclass(frozen=True)
class EncodedCorpus:
    """A tokenized corpus: one Arrow table per split plus the label index it was built with."""

    path: Path
    splits: dict[str, Any]  # split -> datasets.Dataset (input_ids, label_ids)
    label_index: list[list[str]]  # per level, the label ids in column order
    synthetic: bool
    cache_hit: bool  # False when this call tokenized
    seconds: float  # wall time of this call (tokenizing or loading)

    @property
    def label_counts(self) -> list[int]:
        return [len(labels) for labels in self.label_index]

    @property
    def num_labels(self) -> int:
        return sum(self.label_counts)

    @property
    def level_slices(self) -> list[slice]:
        """Column range of each level inside the concatenated multi-hot target."""
        bounds = np.cumsum([0, *self.label_counts])
        return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def tokenizer_fingerprint(tokenizer_path: str) -> str:
    """Identify a tokenizer by the content of its files (a local dir) or by its name (hub)."""
    digest = hashlib.sha256()
    path = Path(tokenizer_path)
    if path.is_dir():
        found = False
        for name in _TOKENIZER_FILES:
            file = path / name
            if file.is_file():
                found = True
                digest.update(name.encode())
                digest.update(file.read_bytes())
        if not found:
            raise InputError("no tokenizer files found in model directory", where=str(path))
    else:
        digest.update(f"hub:{tokenizer_path}".encode())
    return digest.hexdigest()


def cache_key(corpus: Corpus, tokenizer_path: str, max_length: int) -> str:
    digest = hashlib.sha256()
    for part in (
        f"v{ENCODING_VERSION}",
        corpus.fingerprint(),
        tokenizer_fingerprint(tokenizer_path),
        str(max_length),
    ):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:24]


def encoded_path(
    corpus: Corpus, tokenizer_path: str, max_length: int, cache_dir: str | os.PathLike[str]
) -> Path:
    """Where `encode` keeps (and finds again) this encoding."""
    return Path(cache_dir) / f"encoded-{cache_key(corpus, tokenizer_path, max_length)}"


def is_encoded(path: Path) -> bool:
    return (path / "meta.json").is_file()  # written last: the directory is complete


def encode(
    corpus: Corpus,
    tokenizer_path: str,
    max_length: int,
    cache_dir: str | os.PathLike[str],
) -> EncodedCorpus:
    """Return the encoded corpus from the cache, tokenizing (once) on a miss."""
    start = time.perf_counter()
    key = cache_key(corpus, tokenizer_path, max_length)
    path = encoded_path(corpus, tokenizer_path, max_length, cache_dir)
    if is_encoded(path):
        return load_encoded(path, cache_hit=True, start=start)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    label_index = corpus.hierarchy.label_index()
    column = {
        label: i for i, label in enumerate(label for level in label_index for label in level)
    }
    import datasets

    with atomic_directory(path) as tmp:
        for split in SPLITS:
            docs = corpus.splits[split]
            table = datasets.Dataset.from_dict(
                {
                    "id": [d.id for d in docs],
                    "text": [d.text for d in docs],
                    "label_ids": [
                        sorted(column[x] for x in d.labels if x in column) for d in docs
                    ],
                }
            )
            table = table.map(
                lambda batch: {
                    "input_ids": tokenizer(batch["text"], truncation=True, max_length=max_length)[
                        "input_ids"
                    ]
                },
                batched=True,
                batch_size=1000,
                remove_columns=["text"],
                desc=f"tokenizing {split}",
            )
            table.save_to_disk(str(tmp / split))
        atomic_write_json(
            tmp / "meta.json",
            {
                "version": ENCODING_VERSION,
                "key": key,
                "tokenizer": tokenizer_path,
                "max_length": max_length,
                "label_index": label_index,
                "synthetic": corpus.synthetic,
                "hierarchy": corpus.hierarchy.name,
            },
        )
    return load_encoded(path, cache_hit=False, start=start)


def load_encoded(
    path: str | os.PathLike[str], *, cache_hit: bool = True, start: float | None = None
) -> EncodedCorpus:
    """Memory-map an encoded corpus written by `encode`."""
    import datasets

    start = time.perf_counter() if start is None else start
    path = Path(path)
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"not an encoded corpus ({exc})", where=str(path)) from exc
    splits = {split: datasets.load_from_disk(str(path / split)) for split in SPLITS}
    return EncodedCorpus(
        path=path,
        splits=splits,
        label_index=meta["label_index"],
        synthetic=bool(meta.get("synthetic", False)),
        cache_hit=cache_hit,
        seconds=time.perf_counter() - start,
    )


@dataclass(frozen=True)
class Split:
    """One split held as padded numpy arrays: cheap to index from any sampler."""

    input_ids: np.ndarray  # [docs, max_len] int64, 0-padded
    lengths: np.ndarray  # [docs] real token counts
    label_ids: list[np.ndarray]  # per doc, column indices of its gold labels

    def __len__(self) -> int:
        return len(self.lengths)

    @classmethod
    def from_table(cls, table: Any, pad_id: int = 0) -> Split:
        ids: Sequence[Sequence[int]] = table["input_ids"]
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        width = int(lengths.max()) if len(lengths) else 1
        matrix = np.full((len(ids), width), pad_id, dtype=np.int64)
        for row, seq in enumerate(ids):  # one pass at load time, not per step
            matrix[row, : len(seq)] = seq
        labels = [np.asarray(x, dtype=np.int64) for x in table["label_ids"]]
        return cls(matrix, lengths, labels)

    def inputs(self, index: np.ndarray) -> dict[str, torch.Tensor]:
        """Token ids and attention mask of the documents in `index`, padded to the longest."""
        lengths = self.lengths[index]
        width = int(lengths.max())
        return {
            "input_ids": torch.from_numpy(self.input_ids[index, :width]),
            "attention_mask": attention_mask(lengths, width),
        }

    def batch(self, index: np.ndarray, num_labels: int) -> dict[str, torch.Tensor]:
        """`inputs` plus the multi-hot targets [docs, num_labels]."""
        out = self.inputs(index)
        out["labels"] = multi_hot([self.label_ids[i] for i in index], num_labels)
        return out


def attention_mask(lengths: np.ndarray, width: int) -> torch.Tensor:
    """[docs, width] 1 for each document's real tokens, 0 for its padding."""
    return (torch.arange(width)[None, :] < torch.from_numpy(lengths)[:, None]).long()


def multi_hot(label_ids: Sequence[np.ndarray], num_labels: int) -> torch.Tensor:
    """[docs, num_labels] float 0/1 targets from per-document column indices."""
    rows = np.repeat(np.arange(len(label_ids)), [len(x) for x in label_ids])
    cols = np.concatenate(label_ids) if len(label_ids) else np.zeros(0, dtype=np.int64)
    out = torch.zeros(len(label_ids), num_labels)
    out[torch.from_numpy(rows), torch.from_numpy(cols.astype(np.int64))] = 1.0
    return out
