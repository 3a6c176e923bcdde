"""What every trial of an experiment shares: the corpus (found, or synthesized once) and its
encoding (tokenized once, cached).

Pure data: the caller names the tokenizer and the model's depth (the model package is a sibling
of this one, and the search-space file above both).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hiersearch.data.corpus import Corpus, load_corpus_dir, write_corpus
from hiersearch.data.encode import encode


@dataclass(frozen=True)
class DataSpec:
    """Where the corpus comes from (a space file's `data` section)."""

    # A corpus directory ({train,dev,test}.jsonl + hierarchy.json); null = synthesize one.
    corpus: str | None = None
    # Hierarchy of the synthetic corpus: "eurovoc", "icd9" or "icd10".
    hierarchy: str = "eurovoc"
    # Documents in the synthetic corpus (all splits).
    docs: int = 1000
    # Seed of the synthetic corpus (fixed across trials: the data is not a hyper-parameter).
    seed: int = 1
    # Restrict the synthetic label universe to the most frequent leaves (None = all leaves).
    max_leaves: int | None = None


@dataclass(frozen=True)
class PreparedData:
    """What every trial of an experiment shares: the encoded corpus and the model's shape."""

    corpus_dir: str
    encoded_path: str
    label_counts: list[int]
    num_layers: int
    synthetic: bool


def synthetic_dir(spec: DataSpec, data_root: str) -> str:
    """Where the synthetic corpus of `spec` is written (and found again by later
    experiments)."""
    leaves = f"-top{spec.max_leaves}" if spec.max_leaves else ""
    name = f"synthetic-{spec.hierarchy}-{spec.docs}docs-seed{spec.seed}{leaves}"
    return str(Path(data_root) / name)


def find_corpus(
    spec: DataSpec, data_root: str, levels: tuple[int, int] | None = None
) -> tuple[Corpus, str]:
    """The corpus `spec` names, or its synthetic corpus under `data_root` (synthesized and
    written the first time), cut to `levels`; with the directory it was read from."""
    if spec.corpus:
        corpus, corpus_dir = load_corpus_dir(spec.corpus), spec.corpus
    else:
        corpus_dir = synthetic_dir(spec, data_root)
        if (Path(corpus_dir) / "hierarchy.json").is_file():
            corpus = load_corpus_dir(corpus_dir)
        else:
            corpus = _synthesize(spec)
            write_corpus(corpus, corpus_dir)
    if levels is not None:
        corpus = corpus.truncate(*levels)
    return corpus, corpus_dir


def _synthesize(spec: DataSpec) -> Corpus:
    from hiersearch.data.synth import SynthConfig, synthesize
    from hiersearch.data.vocabularies import load_hierarchy

    config = SynthConfig(docs=spec.docs, seed=spec.seed, max_leaves=spec.max_leaves)
    return synthesize(load_hierarchy(spec.hierarchy), config)


def encode_corpus(
    corpus: Corpus,
    corpus_dir: str,
    *,
    tokenizer: str,
    num_layers: int,
    max_length: int,
    cache_dir: str | None = None,
) -> PreparedData:
    """Encode `corpus` once with `tokenizer` (cached under `cache_dir`, by default
    `<corpus_dir>/.hiersearch-cache`: every trial and later experiment reuses it)."""
    cache_dir = cache_dir or str(Path(corpus_dir) / ".hiersearch-cache")
    encoded = encode(corpus, tokenizer, max_length, cache_dir)
    print(
        f"[hiersearch] corpus {corpus_dir} ({'SYNTHETIC, ' if corpus.synthetic else ''}"
        f"{sum(len(v) for v in corpus.splits.values())} docs, labels per level "
        f"{encoded.label_counts}); encoding {'cache hit' if encoded.cache_hit else 'built'} "
        f"in {encoded.seconds:.1f}s: {encoded.path}",
        flush=True,
    )
    return PreparedData(
        corpus_dir=str(Path(corpus_dir).resolve()),
        encoded_path=str(Path(encoded.path).resolve()),
        label_counts=encoded.label_counts,
        num_layers=num_layers,
        synthetic=corpus.synthetic,
    )
