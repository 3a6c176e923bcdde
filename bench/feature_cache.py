"""Trials that cost what they train: cached frozen layers, head-only trials, length-bucketed
batches, length-sorted evaluation, on the HPO term definitions with the packaged MiniLM-L6.

Every figure is measured side by side in one run (in-process trials, `TrialRecipe` on a
`LocalSession`, one torch thread each as a trial of the `hpo` preset has; the candidates of a
section alternate, 3 repetitions, median):

- `cache`: the feature pass over all 12,674 documents (the pooled vectors of every layer and
  the token states after layer 3, into a fresh cache) and the cache's size on disk, per
  document and layer;
- `steps`: training steps/s at the `hpo` preset's settings (48 tokens, batch 16, FLAT, mean
  pooling, batchnorm heads) for `freeze_layers: 0`, `3` recomputed every step
  (`feature_cache: false`, the code before the cache) and `3` cached;
- `buckets`: training steps/s at 128 tokens, `freeze_layers: 0`, batches from windows of 50
  batches sorted by length against random batches (`length_window: 1`), with layernorm heads
  (a batchnorm head keeps random batches: see `quality`);
- `quality`: what batches by length do to the scores: the five variants on the `hpo` preset's
  600 training documents, 2 epochs, seed 0, windows of 50 against random batches, with
  layernorm heads (batch statistics play no part) and with batchnorm heads (they do);
- `eval`: the dev pass (1,301 documents) as before (batches in document order), sorted by
  length, from the cache of `freeze_layers: 3`, and head-only;
- `heads`: a head-only trial's training epoch over all 10,119 training documents, against a
  fine-tuned epoch over the same documents extrapolated from `steps`' measured rate.

    python bench/feature_cache.py [--sections cache,steps,buckets,eval,heads] [--steps 12]
        [--reps 3] [--json OUT]
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import alternate, emit, machine, median, setup_env, verdict  # noqa: E402

SECTIONS = ("cache", "steps", "buckets", "eval", "heads", "quality")
VARIANTS = ("FLAT", "LAST-FOUR", "ONE-BY-ONE", "IN-PAIRS", "HYBRID")
# The `hpo` preset's trial settings (search_spaces/hpo.yaml), FLAT.
PRESET = {
    "model": "minilm", "assignment": "FLAT", "max_length": 48, "batch_size": 16,
    "eval_batch_size": 64, "lr": 1e-4, "head_lr": 3e-2, "dropout": 0.1, "pooling": "mean",
    "head_norm": "batchnorm", "util_docs": 0, "cpus_per_worker": 1, "epochs": 2,
}


def encoded_hpo(cache: Path, max_length: int) -> Any:
    """The whole HPO corpus (all 10,119 training documents), tokenized into `cache`."""
    from hiersearch.data.encode import encode
    from hiersearch.data.loaders import HpoConfig, load_hpo
    from hiersearch.model.encoder import tokenizer_path

    return encode(load_hpo(HpoConfig()), tokenizer_path("minilm"), max_length, cache)


def recipe_for(encoded: Any, root: Path, **changes: Any) -> Any:
    from hiersearch.trial.config import TrialConfig
    from hiersearch.trial.recipe import TrialRecipe
    from hiersearch.trial.session import LocalSession

    checkpoints = Path(tempfile.mkdtemp(dir=root))
    recipe = TrialRecipe(TrialConfig(**{**PRESET, **changes}), LocalSession(checkpoints))
    recipe.setup(encoded)
    return recipe


def bench_cache(root: Path) -> dict[str, Any]:
    """The first feature pass into a fresh cache, and what it takes on disk."""
    cache = root / "fresh-cache"
    encoded = encoded_hpo(cache, PRESET["max_length"])
    started = time.perf_counter()
    uncached = recipe_for(encoded, root, freeze_layers=3, feature_cache=False)
    setup_s = time.perf_counter() - started
    started = time.perf_counter()
    recipe = recipe_for(encoded, root, freeze_layers=3)
    pass_s = time.perf_counter() - started - setup_s
    (features,) = cache.glob("features-*")
    docs = sum(len(s) for s in recipe.sources.values())
    tokens = sum(int(s.lengths.sum()) for s in recipe.sources.values())
    pooled = _bytes(features / "pooled")
    states = _bytes(features / "states-L3")
    layers = recipe.sources["train"].pooled.shape[0]
    del uncached
    return {
        "documents": docs,
        "tokens": tokens,
        "feature_pass_s": round(pass_s, 1),
        "pooled_bytes": pooled,
        "states_L3_bytes": states,
        "pooled_kib_per_doc_per_layer": round(pooled / docs / layers / 1024, 2),
        "states_kib_per_doc_per_layer": round(states / docs / 1024, 2),
        "cache_dir": str(features),
    }


def _bytes(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.iterdir())


def _steps_per_s(recipe: Any, steps: int) -> Any:
    def run() -> None:
        recipe.train_epoch(0)

    recipe.steps_per_epoch = steps
    return run


def bench_steps(encoded: Any, root: Path, steps: int, reps: int) -> dict[str, Any]:
    # batches by length in all three, as measured on 2026-12-06 (before batchnorm heads were
    # given random batches by default): the same batches for each
    candidates = {
        "freeze0": recipe_for(encoded, root, freeze_layers=0, length_window=50),
        "freeze3_uncached": recipe_for(
            encoded, root, freeze_layers=3, feature_cache=False, length_window=50
        ),
        "freeze3_cached": recipe_for(encoded, root, freeze_layers=3, length_window=50),
    }
    times = alternate({k: _steps_per_s(r, steps) for k, r in candidates.items()}, reps)
    rate = {k: steps / times.median_wall(k) for k in candidates}
    vs0 = rate["freeze3_cached"] / rate["freeze0"]
    vs_uncached = rate["freeze3_cached"] / rate["freeze3_uncached"]
    return {
        "steps_per_call": steps,
        "steps_per_s": {k: round(v, 3) for k, v in rate.items()},
        "cached_vs_freeze0": round(vs0, 2),
        "cached_vs_freeze0_target": 2.2,
        "cached_vs_freeze0_verdict": verdict(vs0, 2.2, True),
        "cached_vs_uncached": round(vs_uncached, 2),
        "cached_vs_uncached_target": 1.25,
        "cached_vs_uncached_verdict": verdict(vs_uncached, 1.25, True),
        **times.to_json(),
    }


def bench_buckets(root: Path, steps: int, reps: int) -> dict[str, Any]:
    encoded = encoded_hpo(root / "cache-128", 128)
    heads = {"max_length": 128, "head_norm": "layernorm"}
    candidates = {
        "random_batches": recipe_for(encoded, root, length_window=1, **heads),
        "length_buckets": recipe_for(encoded, root, length_window=50, **heads),
    }
    times = alternate({k: _steps_per_s(r, steps) for k, r in candidates.items()}, reps)
    rate = {k: steps / times.median_wall(k) for k in candidates}
    ratio = rate["length_buckets"] / rate["random_batches"]
    return {
        "max_length": 128,
        "steps_per_s": {k: round(v, 3) for k, v in rate.items()},
        "buckets_vs_random": round(ratio, 2),
        "target": 1.3,
        "verdict": verdict(ratio, 1.3, True),
        **times.to_json(),
    }


@contextlib.contextmanager
def _document_order() -> Any:
    """Evaluation as before this change: batches in document order, not sorted by length."""
    from hiersearch.trial import evaluation

    sort = evaluation.by_length
    evaluation.by_length = lambda index, _lengths: index
    try:
        yield
    finally:
        evaluation.by_length = sort


def bench_eval(encoded: Any, root: Path, reps: int) -> dict[str, Any]:
    full = recipe_for(encoded, root, freeze_layers=0)
    cached = recipe_for(encoded, root, freeze_layers=3)
    heads = recipe_for(encoded, root, freeze_layers="all")

    def before() -> None:
        with _document_order():
            full._evaluate_split(full.sources["dev"])

    named = {
        "document_order": before,
        "length_sorted": lambda: full._evaluate_split(full.sources["dev"]),
        "cached_freeze3": lambda: cached._evaluate_split(cached.sources["dev"]),
        "head_only": lambda: heads._evaluate_split(heads.sources["dev"]),
    }
    times = alternate(named, reps)
    seconds = {k: round(times.median_wall(k), 2) for k in named}
    return {
        "dev_docs": len(full.dev),
        "dev_pass_s": seconds,
        "speedup_vs_document_order": {
            k: round(seconds["document_order"] / max(v, 1e-9), 1) for k, v in seconds.items()
        },
        **times.to_json(),
    }


def bench_heads(encoded: Any, root: Path, freeze0_steps_per_s: float | None) -> dict[str, Any]:
    recipe = recipe_for(encoded, root, freeze_layers="all")
    epochs = []
    for epoch in range(2):
        started = time.perf_counter()
        trained = recipe.train_epoch(epoch)
        report = recipe.evaluate(trained)
        epochs.append(time.perf_counter() - started)
    docs = len(recipe.train_split)
    out: dict[str, Any] = {
        "train_docs": docs,
        "head_only_epoch_with_dev_pass_s": [round(x, 2) for x in epochs],
        "head_only_dev_rp_macro_after_2_epochs": round(100 * report["dev/rp_macro"], 1),
    }
    if freeze0_steps_per_s:
        steps = -(-docs // PRESET["batch_size"])
        out["fine_tuned_epoch_s_extrapolated"] = round(steps / freeze0_steps_per_s, 1)
        out["fine_tuned_over_head_only"] = round(
            out["fine_tuned_epoch_s_extrapolated"] / median(epochs), 1
        )
    return out


def bench_quality(root: Path) -> dict[str, Any]:
    """Dev and test macro R-Precision of full runs, batches by length against random ones."""
    from hiersearch.data.encode import encode
    from hiersearch.data.loaders import HpoConfig, load_hpo
    from hiersearch.model.encoder import tokenizer_path
    from hiersearch.trial.recipe import fit

    encoded = encode(load_hpo(HpoConfig(train_docs=600)), tokenizer_path("minilm"),
                     PRESET["max_length"], root / "cache-600")
    rows = []
    for norm in ("layernorm", "batchnorm"):
        for variant in VARIANTS:
            for window in (50, 1):
                recipe = recipe_for(encoded, root, assignment=variant, head_norm=norm,
                                    length_window=window)
                final = fit(recipe.config, encoded, recipe.session)
                rows.append({
                    "head_norm": norm, "variant": variant, "length_window": window,
                    "dev_rp_macro": round(100 * final["dev/rp_macro"], 1),
                    "test_rp_macro": round(100 * final["test/rp_macro"], 1),
                })
    return {"train_docs": 600, "epochs": PRESET["epochs"], "seed": 0, "rows": rows}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--steps", type=int, default=12, help="training steps per timed call")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    sections = [s for s in args.sections.split(",") if s]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise SystemExit(f"--sections: unknown {sorted(unknown)} (known: {', '.join(SECTIONS)})")
    setup_env()
    root = Path(tempfile.mkdtemp(prefix="hiersearch-bench-features-"))
    result: dict[str, Any] = {"machine": machine(), "settings": PRESET}
    try:
        if "cache" in sections:
            result["cache"] = bench_cache(root)
        encoded = encoded_hpo(root / "cache", PRESET["max_length"])
        if "steps" in sections:
            result["steps"] = bench_steps(encoded, root, args.steps, args.reps)
        if "buckets" in sections:
            result["buckets"] = bench_buckets(root, args.steps, args.reps)
        if "eval" in sections:
            result["eval"] = bench_eval(encoded, root, args.reps)
        if "quality" in sections:
            result["quality"] = bench_quality(root)
        if "heads" in sections:
            rate = result.get("steps", {}).get("steps_per_s", {}).get("freeze0")
            result["heads"] = bench_heads(encoded, root, rate)
        result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        result["machine"]["load_average_end"] = machine()["load_average_1_5_15"]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    emit("feature_cache", result, args.json)
    return result


if __name__ == "__main__":
    main()
