"""An experiment's shared data: the corpus found (or synthesized once, then found again) and
encoded once into the cache every trial reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from hiersearch.data import prepare
from hiersearch.data.prepare import DataSpec, encode_corpus, find_corpus
from hiersearch.model.encoder import tokenizer_path

SPEC = DataSpec(hierarchy="eurovoc", docs=30, seed=2, max_leaves=10)


def test_a_synthetic_corpus_is_written_once_then_found_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus, corpus_dir = find_corpus(SPEC, str(tmp_path))
    assert corpus.synthetic
    assert Path(corpus_dir).name.startswith("synthetic-eurovoc-30docs-seed2-top10-")

    def no_synthesis(*_: object) -> None:
        raise AssertionError("the corpus under data_root must be reused")

    monkeypatch.setattr(prepare, "_synthesize", no_synthesis)
    again, again_dir = find_corpus(SPEC, str(tmp_path))
    assert again_dir == corpus_dir
    assert again.stats()["documents"] == corpus.stats()["documents"]


def test_a_named_corpus_directory_is_read_and_cut_to_the_levels(tmp_path: Path) -> None:
    _, written = find_corpus(SPEC, str(tmp_path))
    named = DataSpec(corpus=written, docs=999)  # the synthetic settings no longer matter
    corpus, corpus_dir = find_corpus(named, str(tmp_path / "unused"), levels=(1, 2))
    assert corpus_dir == written and corpus.hierarchy.depth == 2
    assert not (tmp_path / "unused").exists()


def test_encoding_is_cached_beside_the_corpus_with_the_model_shape(tmp_path: Path) -> None:
    corpus, corpus_dir = find_corpus(SPEC, str(tmp_path))
    data = encode_corpus(
        corpus, corpus_dir, tokenizer=tokenizer_path("minilm"), num_layers=6, max_length=16
    )
    assert Path(data.encoded_path).is_relative_to(Path(corpus_dir, ".hiersearch-cache").resolve())
    assert data.num_layers == 6 and data.synthetic
    assert len(data.label_counts) == corpus.hierarchy.depth
