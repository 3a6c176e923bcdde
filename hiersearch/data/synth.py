"""The SYNTHETIC corpus: documents composed from the descriptions of real hierarchy labels.

It stands in for EURLEX57K / MIMIC-III until a user points the loaders at the real data, and it is
marked synthetic everywhere (`Corpus.synthetic`, corpus.json, `format_stats`).

A document draws a few gold leaves (nodes without children) with a Zipf-like long-tailed
frequency. Its text is a shuffled sequence of segments: (word-dropped) mentions of the
descriptions of its gold labels and of all their ancestors, descriptions of distractor labels,
and boilerplate filler. Coarse levels get more reliable evidence than fine ones: a description is
shown, repeated and kept word by word with probabilities that go linearly from the level-1 value
to the deepest-level value of each `(coarse, fine)` pair below. Distractors are mostly siblings
of the gold leaves, which share every coarse ancestor and so confuse only the fine levels.
Label ids never appear in the text.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np

from hiersearch.data.corpus import SPLITS, Corpus, finalize
from hiersearch.data.hierarchy import Hierarchy
from hiersearch.errors import InputError

# Generic boilerplate, chosen to carry no topic: it pads documents to a realistic length and
# dilutes the evidence without pointing at any label.
FILLER_WORDS: tuple[str, ...] = (
    "the",
    "of",
    "and",
    "to",
    "in",
    "a",
    "for",
    "on",
    "with",
    "as",
    "by",
    "this",
    "that",
    "shall",
    "be",
    "is",
    "are",
    "which",
    "from",
    "at",
    "or",
    "it",
    "its",
    "such",
    "any",
    "may",
    "has",
    "have",
    "been",
    "was",
    "were",
    "under",
    "within",
    "between",
    "following",
    "referred",
    "paragraph",
    "article",
    "annex",
    "provision",
    "accordance",
    "pursuant",
    "thereof",
    "herein",
    "whereas",
    "procedure",
    "period",
    "date",
    "report",
    "section",
    "case",
    "further",
    "given",
    "particular",
    "respect",
    "concerning",
    "relating",
    "regard",
    "basis",
    "account",
    "means",
    "part",
    "point",
    "order",
    "view",
    "light",
    "taking",
    "having",
    "regarding",
    "applicable",
    "relevant",
    "appropriate",
    "necessary",
    "certain",
    "initial",
    "final",
    "present",
    "previous",
    "subsequent",
    "noted",
    "described",
    "stated",
    "indicated",
    "above",
    "below",
    "also",
    "however",
    "therefore",
    "thus",
    "including",
    "where",
    "when",
    "each",
    "all",
    "both",
    "either",
    "record",
    "note",
    "entry",
    "item",
    "document",
    "text",
    "reference",
)

# Function words dropped from descriptions: evidence should be content words.
_STOPWORDS = frozenset(
    "a an the of and or to in on for with by as at from into its their this that is are be".split()  # noqa: SIM905
)
_WORD = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*")


@dataclass(frozen=True)
class SynthConfig:
    """Size, seed and difficulty knobs of the synthetic corpus. `(coarse, fine)` pairs give the
    value at level 1 and at the deepest level; levels in between are interpolated linearly."""

    # documents over all splits (at least 3: every split gets one)
    docs: int = 1000
    # seeds the one numpy Generator behind every draw: same seed, same corpus
    seed: int = 0
    # train, dev, test shares of the documents
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    # inclusive range of gold leaves drawn per document (duplicate draws merge)
    leaf_labels_per_doc: tuple[int, int] = (1, 4)
    # leaf frequency ~ 1 / rank**zipf_exponent over a seeded random ranking: a long tail
    zipf_exponent: float = 1.1
    # keep only the N most frequent leaves (the Zipf head), so that a small corpus sees each
    # used label several times; None keeps every leaf
    max_leaves: int | None = None
    # chance that a gold label's description is mentioned at all
    show_prob: tuple[float, float] = (0.95, 0.6)
    # how many times a shown description is mentioned (each mention dropped independently)
    mentions: tuple[int, int] = (2, 1)
    # chance that each word of a mention survives (word dropout)
    word_keep: tuple[float, float] = (0.9, 0.6)
    # inclusive range of distractor leaves per document (not gold, but described in the text)
    distractors_per_doc: tuple[int, int] = (1, 3)
    # chance that a distractor is a sibling of a gold leaf (confuses fine levels only) rather
    # than any leaf
    sibling_distractor_prob: float = 0.7
    # chance that each word of a distractor's description survives
    distractor_word_keep: float = 0.7
    # chance that each ancestor of a distractor outside the gold labels is described too
    # (this confuses the coarse levels, so that they do not saturate)
    distractor_ancestor_prob: float = 0.25
    # inclusive range of filler words per document, before the length cap
    filler_words: tuple[int, int] = (40, 110)
    # document length cap in words (filler is cut first); a MiniLM reads ~128 tokens
    max_words: int = 200

    def validate(self) -> None:
        """Bad values are InputErrors naming the field."""

        def check(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise InputError(f"{what}, got {getattr(self, name)!r}", where=name)

        check(self.docs >= 3, "docs", "must be at least 3 (one document per split)")
        check(self.seed >= 0, "seed", "must be >= 0")
        check(
            len(self.split_fractions) == 3 and all(f > 0 for f in self.split_fractions),
            "split_fractions",
            "must be three positive shares",
        )
        for name in ("leaf_labels_per_doc", "distractors_per_doc", "filler_words"):
            lo, hi = getattr(self, name)
            check(
                0 <= lo <= hi and (lo >= 1 or name != "leaf_labels_per_doc"),
                name,
                "must be an inclusive range lo <= hi (lo >= 1 for leaves)",
            )
        check(self.zipf_exponent >= 0, "zipf_exponent", "must be >= 0")
        check(self.max_leaves is None or self.max_leaves >= 1, "max_leaves", "must be >= 1")
        for name in ("show_prob", "word_keep"):
            check(all(0 <= p <= 1 for p in getattr(self, name)), name, "must be in [0, 1]")
        check(all(m >= 0 for m in self.mentions), "mentions", "must be >= 0")
        for name in (
            "sibling_distractor_prob",
            "distractor_word_keep",
            "distractor_ancestor_prob",
        ):
            check(0 <= getattr(self, name) <= 1, name, "must be in [0, 1]")
        check(self.max_words >= 1, "max_words", "must be >= 1")


def _per_level(pair: tuple[float, float], depth: int) -> np.ndarray:
    """Index 0 unused; index n = the value at level n."""
    steps = np.linspace(0.0, 1.0, depth) if depth > 1 else np.zeros(1)
    return np.concatenate([[np.nan], pair[0] + steps * (pair[1] - pair[0])])


def description_words(hierarchy: Hierarchy) -> dict[str, list[str]]:
    """Lower-cased content words of every description, without any token equal to a label id."""
    ids = {node.id.lower() for node in hierarchy}
    return {
        node.id: [
            w
            for w in _WORD.findall(node.description.lower())
            if w not in _STOPWORDS and w not in ids
        ]
        for node in hierarchy
    }


class _Uniforms:
    """Uniform [0, 1) draws fetched from the Generator in blocks: the per-document composition
    is a Python loop, and one Generator call per scalar draw dominated its time."""

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self._buf: list[float] = []
        self._pos = 0

    def take(self, n: int) -> list[float]:
        if self._pos + n > len(self._buf):
            self._buf = self._buf[self._pos :] + self._rng.random(max(1 << 16, n)).tolist()
            self._pos = 0
        self._pos += n
        return self._buf[self._pos - n : self._pos]

    def one(self) -> float:
        return self.take(1)[0]

    def index(self, n: int) -> int:
        return min(int(self.one() * n), n - 1)


class _DocDraws(NamedTuple):
    """The per-document draws made up front, in one Generator call each (order matters: the
    same seed must give the same corpus)."""

    leaf_counts: np.ndarray  # gold leaves drawn per document (before duplicates merge)
    leaf_draws: np.ndarray  # docs x max leaves: indices into the ranked leaves
    filler: list[int]  # filler words per document
    distractors: list[int]  # distractor slots per document


def _ranked_leaves(
    hierarchy: Hierarchy, config: SynthConfig, rng: np.random.Generator
) -> np.ndarray:
    """The leaves in a seeded random frequency ranking, cut to the Zipf head if asked."""
    leaves = np.array([n.id for n in hierarchy if not hierarchy.children(n.id)])
    return leaves[rng.permutation(len(leaves))][: config.max_leaves]


def _doc_draws(config: SynthConfig, leaves: int, rng: np.random.Generator) -> _DocDraws:
    weights = 1.0 / np.arange(1, leaves + 1) ** config.zipf_exponent
    lo, hi = config.leaf_labels_per_doc
    counts = rng.integers(lo, hi + 1, size=config.docs)
    draws = rng.choice(leaves, size=(config.docs, hi), p=weights / weights.sum())
    filler = rng.integers(config.filler_words[0], config.filler_words[1] + 1, size=config.docs)
    distractors = rng.integers(
        config.distractors_per_doc[0], config.distractors_per_doc[1] + 1, size=config.docs
    )
    return _DocDraws(counts, draws, filler.tolist(), distractors.tolist())


class _Composer:
    """Writes a document's text from its gold leaves. Every draw comes from one `_Uniforms`
    stream in a fixed order (gold mentions, distractors, filler, segment order), so the order
    of the calls below is part of the corpus a seed gives."""

    def __init__(
        self, hierarchy: Hierarchy, config: SynthConfig, ranked: list[str], uni: _Uniforms
    ) -> None:
        self.hierarchy, self.config, self.ranked, self.uni = hierarchy, config, ranked, uni
        self.words = description_words(hierarchy)
        self.level = {node.id: node.level for node in hierarchy}
        depth = hierarchy.depth
        self.show = _per_level(config.show_prob, depth).tolist()
        self.keep = _per_level(config.word_keep, depth).tolist()
        self.mentions = [0, *np.rint(_per_level(config.mentions, depth)[1:]).astype(int).tolist()]

    def text(self, gold_leaves: list[str], distractors: int, filler: int) -> str:
        gold = sorted(self.hierarchy.augment(gold_leaves))  # sorted: set order depends on hashing
        segments = self._gold_mentions(gold)
        segments += self._distractor_mentions(gold_leaves, set(gold), distractors)
        segments += self._filler(filler, evidence=sum(map(len, segments)))
        return " ".join(self._shuffled_words([seg for seg in segments if seg]))

    def _mention(self, label: str, keep_prob: float) -> list[str]:
        source = self.words[label]
        draws = self.uni.take(len(source))
        return [w for w, u in zip(source, draws, strict=True) if u < keep_prob]

    def _gold_mentions(self, gold: list[str]) -> list[list[str]]:
        segments = []
        for label in gold:
            lv = self.level[label]
            if self.uni.one() < self.show[lv]:
                segments += [self._mention(label, self.keep[lv]) for _ in range(self.mentions[lv])]
        return segments

    def _distractor_mentions(
        self, gold_leaves: list[str], gold: set[str], count: int
    ) -> list[list[str]]:
        config, uni, segments = self.config, self.uni, []
        for _ in range(count):
            parents = self.hierarchy.node(gold_leaves[uni.index(len(gold_leaves))]).parents
            if parents and uni.one() < config.sibling_distractor_prob:
                siblings = self.hierarchy.children(parents[0])
                other = siblings[uni.index(len(siblings))]
            else:
                other = self.ranked[uni.index(len(self.ranked))]
            if other in gold:  # drew a gold leaf: this distractor slot stays empty
                continue
            segments.append(self._mention(other, config.distractor_word_keep))
            for ancestor in sorted(self.hierarchy.ancestors(other) - gold):
                if uni.one() < config.distractor_ancestor_prob:
                    segments.append(self._mention(ancestor, config.distractor_word_keep))
        return segments

    def _filler(self, count: int, evidence: int) -> list[list[str]]:
        """Filler words in runs of 4..10, as many as fit under the length cap after the
        evidence."""
        n_filler = min(count, max(0, self.config.max_words - evidence))
        pool = [FILLER_WORDS[int(u * len(FILLER_WORDS))] for u in self.uni.take(n_filler)]
        runs, start = [], 0
        while start < n_filler:
            end = start + 4 + int(self.uni.one() * 7)
            runs.append(pool[start:end])
            start = end
        return runs

    def _shuffled_words(self, segments: list[list[str]]) -> list[str]:
        keys = self.uni.take(len(segments))
        order = sorted(range(len(segments)), key=keys.__getitem__)
        return [w for j in order for w in segments[j]][: self.config.max_words]


def _split_sizes(config: SynthConfig) -> list[int]:
    """Documents per split (train, dev, test): at least one each."""
    total = sum(config.split_fractions)
    n_dev = max(1, round(config.docs * config.split_fractions[1] / total))
    n_test = max(1, round(config.docs * config.split_fractions[2] / total))
    n_train = config.docs - n_dev - n_test
    if n_train < 1:
        raise InputError(
            f"too few documents ({config.docs}) for the split fractions", where="docs"
        )
    return [n_train, n_dev, n_test]


def _assign_splits(
    docs: list[tuple[str, str, list[str]]], config: SynthConfig, rng: np.random.Generator
) -> dict[str, list[tuple[str, str, list[str]]]]:
    which = rng.permutation(np.repeat(np.arange(3), _split_sizes(config)))
    return {
        s: [d for d, w in zip(docs, which, strict=True) if w == k] for k, s in enumerate(SPLITS)
    }


def _settings(config: SynthConfig) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}


def corpus_key(hierarchy: Hierarchy, config: SynthConfig) -> str:
    """What a synthetic corpus is a function of, hashed: the hierarchy's content (not the name
    or path of its file) and every setting. A corpus found on disk is reused only under it."""
    canonical = json.dumps(
        {"hierarchy": hierarchy.fingerprint(), "config": _settings(config)}, sort_keys=True
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def _generator_record(hierarchy: Hierarchy, config: SynthConfig, leaves: int) -> dict[str, Any]:
    """What the corpus records about how it was made (corpus.json)."""
    return {
        "name": "hiersearch.synth",  # a stable generator id, not the module path
        "config": _settings(config),
        "hierarchy": hierarchy.name,
        "hierarchy_fingerprint": hierarchy.fingerprint(),
        "key": corpus_key(hierarchy, config),
        "leaves": leaves,
    }


def synthesize(hierarchy: Hierarchy, config: SynthConfig) -> Corpus:
    """A synthetic corpus on `hierarchy` (labels augmented by `finalize`); deterministic for
    `config.seed`."""
    config.validate()
    rng = np.random.default_rng(config.seed)
    ranked = _ranked_leaves(hierarchy, config, rng)
    draws = _doc_draws(config, len(ranked), rng)
    ranked_list = ranked.tolist()
    composer = _Composer(hierarchy, config, ranked_list, _Uniforms(rng))
    docs = []
    for i in range(config.docs):
        gold_leaves = sorted(set(ranked[draws.leaf_draws[i, : draws.leaf_counts[i]]].tolist()))
        text = composer.text(gold_leaves, draws.distractors[i], draws.filler[i])
        docs.append((f"synth-{i:06d}", text, gold_leaves))
    raw = _assign_splits(docs, config, rng)
    generator = _generator_record(hierarchy, config, len(ranked))
    # With max_leaves the label universe is the Zipf head and its ancestors, not the whole
    # hierarchy: heads over thousands of never-seen labels would only add cost.
    labels = hierarchy.restrict(ranked_list) if config.max_leaves else hierarchy
    return finalize(raw, labels, synthetic=True, where="synthetic corpus", generator=generator)
