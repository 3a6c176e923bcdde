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

import re
from dataclasses import asdict, dataclass

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


def synthesize(hierarchy: Hierarchy, config: SynthConfig) -> Corpus:
    """A synthetic corpus on `hierarchy` (labels augmented by `finalize`); deterministic for
    `config.seed`."""
    config.validate()
    rng = np.random.default_rng(config.seed)
    words = description_words(hierarchy)
    level = {node.id: node.level for node in hierarchy}
    depth = hierarchy.depth
    show = _per_level(config.show_prob, depth).tolist()
    keep = _per_level(config.word_keep, depth).tolist()
    mentions = [0, *np.rint(_per_level(config.mentions, depth)[1:]).astype(int).tolist()]

    leaves = np.array([n.id for n in hierarchy if not hierarchy.children(n.id)])
    ranked = leaves[rng.permutation(len(leaves))][: config.max_leaves]
    weights = 1.0 / np.arange(1, len(ranked) + 1) ** config.zipf_exponent
    lo, hi = config.leaf_labels_per_doc
    counts = rng.integers(lo, hi + 1, size=config.docs)
    draws = rng.choice(len(ranked), size=(config.docs, hi), p=weights / weights.sum())
    filler_counts = rng.integers(
        config.filler_words[0], config.filler_words[1] + 1, size=config.docs
    ).tolist()
    distractor_counts = rng.integers(
        config.distractors_per_doc[0], config.distractors_per_doc[1] + 1, size=config.docs
    ).tolist()
    ranked_list = ranked.tolist()
    uni = _Uniforms(rng)

    def mention(label: str, keep_prob: float) -> list[str]:
        source = words[label]
        return [w for w, u in zip(source, uni.take(len(source)), strict=True) if u < keep_prob]

    docs = []
    for i in range(config.docs):
        gold_leaves = sorted(set(ranked[draws[i, : counts[i]]].tolist()))
        gold = sorted(hierarchy.augment(gold_leaves))  # sorted: set order depends on hashing
        segments = []
        for label in gold:
            lv = level[label]
            if uni.one() < show[lv]:
                segments += [mention(label, keep[lv]) for _ in range(mentions[lv])]
        gold_set = set(gold)
        for _ in range(distractor_counts[i]):
            parents = hierarchy.node(gold_leaves[uni.index(len(gold_leaves))]).parents
            if parents and uni.one() < config.sibling_distractor_prob:
                siblings = hierarchy.children(parents[0])
                other = siblings[uni.index(len(siblings))]
            else:
                other = ranked_list[uni.index(len(ranked_list))]
            if other in gold_set:  # drew a gold leaf: this distractor slot stays empty
                continue
            segments.append(mention(other, config.distractor_word_keep))
            for ancestor in sorted(hierarchy.ancestors(other) - gold_set):
                if uni.one() < config.distractor_ancestor_prob:
                    segments.append(mention(ancestor, config.distractor_word_keep))
        evidence = sum(map(len, segments))
        n_filler = min(filler_counts[i], max(0, config.max_words - evidence))
        pool = [FILLER_WORDS[int(u * len(FILLER_WORDS))] for u in uni.take(n_filler)]
        start = 0
        while start < n_filler:  # filler comes in runs of 4..10 words
            end = start + 4 + int(uni.one() * 7)
            segments.append(pool[start:end])
            start = end
        segments = [seg for seg in segments if seg]
        keys = uni.take(len(segments))
        order = sorted(range(len(segments)), key=keys.__getitem__)
        text_words = [w for j in order for w in segments[j]][: config.max_words]
        docs.append((f"synth-{i:06d}", " ".join(text_words), gold_leaves))

    n_dev = max(1, round(config.docs * config.split_fractions[1] / sum(config.split_fractions)))
    n_test = max(1, round(config.docs * config.split_fractions[2] / sum(config.split_fractions)))
    n_train = config.docs - n_dev - n_test
    if n_train < 1:
        raise InputError(
            f"too few documents ({config.docs}) for the split fractions", where="docs"
        )
    which = rng.permutation(np.repeat(np.arange(3), [n_train, n_dev, n_test]))
    raw = {
        s: [d for d, w in zip(docs, which, strict=True) if w == k] for k, s in enumerate(SPLITS)
    }
    settings = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}
    generator = {
        "name": "hiersearch.synth",  # a stable generator id, not the module path
        "config": settings,
        "hierarchy": hierarchy.name,
        "hierarchy_fingerprint": hierarchy.fingerprint(),
        "leaves": len(ranked),
    }
    # With max_leaves the label universe is the Zipf head and its ancestors, not the whole
    # hierarchy: heads over thousands of never-seen labels would only add cost.
    labels = hierarchy.restrict(ranked_list) if config.max_leaves else hierarchy
    return finalize(raw, labels, synthetic=True, where="synthetic corpus", generator=generator)
