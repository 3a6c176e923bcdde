"""An experiment's shared data: the corpus found (or synthesized once, then found again) and
encoded once into the cache every trial reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from hiersearch.data import prepare
from hiersearch.data.corpus import load_corpus_dir
from hiersearch.data.prepare import DataSpec, encode_corpus, find_corpus
from hiersearch.errors import InputError
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


def _links(path: Path, description: str) -> Path:
    path.write_text(f"r\t\troot words\nx\tr\t{description}\ny\tr\tyonder terms\n")
    return path


def test_a_corrected_hierarchy_file_gives_a_new_corpus_not_the_old_one(tmp_path: Path) -> None:
    hierarchy = _links(tmp_path / "labels.tsv", "first wording")
    spec = DataSpec(hierarchy=str(hierarchy), docs=12, seed=1)
    corpus, first_dir = find_corpus(spec, str(tmp_path / "data"))
    assert corpus.hierarchy.node("x").description == "first wording"
    _links(hierarchy, "corrected wording")  # same path, same sizes
    again, again_dir = find_corpus(spec, str(tmp_path / "data"))
    assert again.hierarchy.node("x").description == "corrected wording"
    assert again_dir != first_dir and Path(first_dir).is_dir()  # the old one is not deleted


def test_every_synthetic_setting_is_part_of_the_corpus_key(tmp_path: Path) -> None:
    root = str(tmp_path)
    dirs = {
        prepare.plan_corpus(spec, root).corpus_dir
        for spec in (SPEC, DataSpec(hierarchy="eurovoc", docs=30, seed=3, max_leaves=10),
                     DataSpec(hierarchy="eurovoc", docs=31, seed=2, max_leaves=10))
    }
    assert len(dirs) == 3


def test_a_torn_synthetic_corpus_is_written_again_not_reused(tmp_path: Path) -> None:
    corpus, corpus_dir = find_corpus(SPEC, str(tmp_path))
    (Path(corpus_dir) / "test.jsonl").write_text("")  # an interrupted replace
    plan = prepare.plan_corpus(SPEC, str(tmp_path))
    assert plan.to_write is not None
    prepare.write_planned(plan)
    assert load_corpus_dir(corpus_dir).fingerprint() == corpus.fingerprint()


def test_planning_a_synthetic_corpus_writes_nothing(tmp_path: Path) -> None:
    plan = prepare.plan_corpus(SPEC, str(tmp_path / "data"), levels=(1, 2))
    assert plan.to_write is not None and len(plan.label_counts) == 2
    assert not (tmp_path / "data").exists()


def test_synthetic_settings_are_checked_when_the_data_section_is_read() -> None:
    with pytest.raises(InputError, match="docs: must be at least 3"):
        DataSpec(docs=2)
    with pytest.raises(InputError, match="hierarchy: 'nowhere.tsv' is neither"):
        DataSpec(hierarchy="nowhere.tsv")
    assert DataSpec(corpus="some/dir", docs=2).docs == 2  # a named corpus: settings unused
