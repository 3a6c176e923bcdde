"""Data: label hierarchies, corpora and their loaders, the real HPO corpus, the SYNTHETIC
corpus, tokenize-once encoding. Pure (no Ray): every step above reads what this package
prepares."""

from __future__ import annotations

from hiersearch.data.corpus import (
    SPLITS,
    Corpus,
    Document,
    format_stats,
    load_corpus_dir,
    write_corpus,
)
from hiersearch.data.encode import EncodedCorpus, Split, encode, load_encoded
from hiersearch.data.hierarchy import Hierarchy, Node, load_levels_file, load_parent_file
from hiersearch.data.loaders import (
    HpoConfig,
    load_csv,
    load_eurlex57k,
    load_hpo,
    load_jsonl,
    load_mimic,
    load_mimic_iv,
)
from hiersearch.data.prepare import DataSpec, PreparedData, encode_corpus, find_corpus
from hiersearch.data.synth import SynthConfig, synthesize
from hiersearch.data.vocabularies import (
    NAMED_HIERARCHIES,
    eurovoc_hierarchy,
    icd9_hierarchy,
    icd10_hierarchy,
    load_hierarchy,
    normalize_icd9,
    normalize_icd10,
)

__all__ = [
    "Corpus",
    "DataSpec",
    "Document",
    "EncodedCorpus",
    "Hierarchy",
    "HpoConfig",
    "NAMED_HIERARCHIES",
    "Node",
    "PreparedData",
    "SPLITS",
    "Split",
    "SynthConfig",
    "encode",
    "encode_corpus",
    "eurovoc_hierarchy",
    "find_corpus",
    "format_stats",
    "icd9_hierarchy",
    "icd10_hierarchy",
    "load_corpus_dir",
    "load_csv",
    "load_encoded",
    "load_eurlex57k",
    "load_hierarchy",
    "load_hpo",
    "load_jsonl",
    "load_levels_file",
    "load_mimic",
    "load_mimic_iv",
    "load_parent_file",
    "normalize_icd9",
    "normalize_icd10",
    "synthesize",
    "write_corpus",
]
