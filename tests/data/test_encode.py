"""Encoding: tokenized once into a cached Arrow table keyed by (corpus, tokenizer, max length);
per-level multi-hot targets in the hierarchy's column order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hiersearch.data.corpus import Corpus
from hiersearch.data.encode import Split, encode, multi_hot
from hiersearch.data.synth import SynthConfig, synthesize
from hiersearch.data.vocabularies import eurovoc_hierarchy
from hiersearch.model.encoder import tokenizer_path


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return synthesize(eurovoc_hierarchy(), SynthConfig(docs=30, seed=2, max_leaves=10))


def test_second_encoding_of_the_same_corpus_hits_the_cache_without_a_tokenizer(
    corpus: Corpus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = encode(corpus, tokenizer_path("minilm"), 32, tmp_path)
    assert not first.cache_hit

    def no_tokenizer(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a cache hit must not load a tokenizer")

    import transformers

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", no_tokenizer)
    second = encode(corpus, tokenizer_path("minilm"), 32, tmp_path)
    assert second.cache_hit and second.path == first.path
    assert second.label_index == first.label_index
    for split in ("train", "dev", "test"):
        assert second.splits[split]["input_ids"] == first.splits[split]["input_ids"]


def test_another_max_length_is_another_cache_entry(corpus: Corpus, tmp_path: Path) -> None:
    short = encode(corpus, tokenizer_path("minilm"), 16, tmp_path)
    long = encode(corpus, tokenizer_path("minilm"), 32, tmp_path)
    assert short.path != long.path and not long.cache_hit
    assert max(len(ids) for ids in short.splits["train"]["input_ids"]) <= 16


def test_targets_are_per_level_multi_hot_in_the_label_index_order(
    corpus: Corpus, tmp_path: Path
) -> None:
    encoded = encode(corpus, tokenizer_path("minilm"), 32, tmp_path)
    assert [s.stop - s.start for s in encoded.level_slices] == encoded.label_counts
    columns = [label for level in encoded.label_index for label in level]
    split = Split.from_table(encoded.splits["train"])
    targets = split.batch(np.arange(len(split)), encoded.num_labels)["labels"].numpy()
    for doc, row in zip(corpus.splits["train"], targets, strict=True):
        assert {columns[i] for i in np.flatnonzero(row)} == set(doc.labels) & set(columns)


def test_inputs_pad_to_the_longest_document_of_the_batch() -> None:
    split = Split(np.array([[5, 6, 7, 0], [5, 6, 0, 0]]), np.array([3, 2]),
                  [np.array([0]), np.array([1, 2])])
    inputs = split.inputs(np.array([1]))
    assert inputs["input_ids"].tolist() == [[5, 6]]
    both = split.inputs(np.array([0, 1]))
    assert both["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert multi_hot([np.array([0]), np.array([1, 2])], 3).tolist() == [[1, 0, 0], [0, 1, 1]]
