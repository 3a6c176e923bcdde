"""Tokenize once: `encode` on a corpus it has not seen (a cache miss: it tokenizes) against the
same corpus again (a hit: it memory-maps the cached Arrow table), and what every trial's worker
does (`load_encoded` of the cached path).

The corpus is the quick preset's SYNTHETIC EuroVoc corpus (1,500 docs, seed 1, top 300 leaves,
MiniLM's tokenizer, 128 tokens), written to disk and loaded back before each call (so the
corpus fingerprint is computed inside every timed call, as in a new experiment). Tokenizer
work is counted by wrapping `AutoTokenizer.from_pretrained` and
`PreTrainedTokenizerBase.__call__`: a hit must load no tokenizer and tokenize nothing.

    python bench/encode_cache.py [--quick] [--json OUT]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, machine, median, setup_env, timed, verdict  # noqa: E402


@contextlib.contextmanager
def count_tokenizer_calls() -> Iterator[dict[str, int]]:
    """Count tokenizer loads and tokenizer calls (batched calls count once each) inside the
    block, by wrapping the transformers entry points for its duration."""
    from transformers import AutoTokenizer
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase

    counts = {"from_pretrained": 0, "tokenizer_calls": 0, "texts_tokenized": 0}
    original_load = AutoTokenizer.from_pretrained.__func__  # type: ignore[attr-defined]
    original_call = PreTrainedTokenizerBase.__call__

    def load(cls: Any, *args: Any, **kwargs: Any) -> Any:
        counts["from_pretrained"] += 1
        return original_load(cls, *args, **kwargs)

    def call(self: Any, text: Any = None, *args: Any, **kwargs: Any) -> Any:
        counts["tokenizer_calls"] += 1
        counts["texts_tokenized"] += len(text) if isinstance(text, (list, tuple)) else 1
        return original_call(self, text, *args, **kwargs)

    AutoTokenizer.from_pretrained = classmethod(load)  # type: ignore[method-assign]
    PreTrainedTokenizerBase.__call__ = call  # type: ignore[method-assign]
    try:
        yield counts
    finally:
        AutoTokenizer.from_pretrained = classmethod(original_load)  # type: ignore[method-assign]
        PreTrainedTokenizerBase.__call__ = original_call  # type: ignore[method-assign]


def write_quick_corpus(directory: Path, docs: int, max_leaves: int) -> None:
    from hiersearch.data.corpus import write_corpus
    from hiersearch.data.synth import SynthConfig, synthesize
    from hiersearch.data.vocabularies import load_hierarchy

    corpus = synthesize(
        load_hierarchy("eurovoc"), SynthConfig(docs=docs, seed=1, max_leaves=max_leaves)
    )
    write_corpus(corpus, directory)


def measured(fn: Callable[[], Any]) -> dict[str, Any]:
    with count_tokenizer_calls() as counts:
        seconds, result = timed(fn)
    return {"seconds": seconds, **counts, "cache_hit": getattr(result, "cache_hit", None)}


def run(docs: int, max_leaves: int, max_length: int, reps: int) -> dict[str, Any]:
    import datasets

    from hiersearch.data.corpus import load_corpus_dir
    from hiersearch.data.encode import encode, load_encoded
    from hiersearch.model.encoder import tokenizer_path

    datasets.disable_progress_bars()
    tokenizer = tokenizer_path("minilm")
    work = Path(tempfile.mkdtemp(prefix="hiersearch-bench-encode-"))
    corpus_dir = work / "corpus"
    write_quick_corpus(corpus_dir, docs, max_leaves)
    calls: dict[str, list[dict[str, Any]]] = {"miss": [], "hit": [], "trial_load": []}
    for rep in range(reps):
        cache = work / f"cache-{rep}"  # a fresh cache: the first call of the rep must miss
        fresh = load_corpus_dir(corpus_dir)
        calls["miss"].append(
            measured(lambda c=fresh, d=cache: encode(c, tokenizer, max_length, d))
        )
        again = load_corpus_dir(corpus_dir)
        hit = measured(lambda c=again, d=cache: encode(c, tokenizer, max_length, d))
        calls["hit"].append(hit)
        path = next(cache.glob("encoded-*"))
        calls["trial_load"].append(measured(lambda p=path: load_encoded(p)))
    miss_s = median([c["seconds"] for c in calls["miss"]])
    hit_s = median([c["seconds"] for c in calls["hit"]])
    no_work = all(
        c["from_pretrained"] == 0 and c["tokenizer_calls"] == 0 and c["cache_hit"]
        for c in calls["hit"] + calls["trial_load"]
    )
    return {
        "docs": docs,
        "max_leaves": max_leaves,
        "max_length": max_length,
        "reps": reps,
        "calls": calls,
        "miss_s": miss_s,
        "hit_s": hit_s,
        "trial_load_s": median([c["seconds"] for c in calls["trial_load"]]),
        "miss_over_hit": miss_s / hit_s,
        "texts_tokenized_on_miss": calls["miss"][0]["texts_tokenized"],
        "hit_did_no_tokenization": no_work,
        "target_no_tokenization_on_hit": "MET" if no_work else "MISSED",
        "target_hit_faster": verdict(miss_s / hit_s, 1.0, higher_is_better=True),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="(the same size: it is cheap)")
    parser.add_argument("--docs", type=int, default=1500)
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--json", default=None, help="also write the result here")
    args = parser.parse_args(argv)
    setup_env()
    reps = args.reps or (2 if args.quick else 5)
    out: dict[str, Any] = {"machine": machine(), "quick": args.quick}
    out["encode"] = run(args.docs, 300, 128, reps)
    out["machine"]["load_average_end"] = machine()["load_average_1_5_15"]
    emit("encode_cache", out, args.json)


if __name__ == "__main__":
    main()
