"""Head-only trials at real label counts: a head-only training epoch with the optimizer step
as it was ("before": torch's for-loop AdamW on the CPU, `clip_grad_norm_` over
`model.parameters()` scaling every gradient at every step) against the step as it is
("after": fused AdamW, the clip over the trained parameters that scales only when the norm
is over), on the packaged MiniLM-L6's cached features, one torch thread as a screen's trial
has (`hpo_heads`' settings: batch 16, mean pooling, batchnorm heads, head_lr 3e-2).

    python bench/head_speed.py --corpus DIR [--levels 1-4] [--variants LAST-FOUR,IN-PAIRS]
        [--sections speed,quality] [--steps 150] [--reps 3] [--seeds 0,1,2] [--epochs 2]
        [--batch-sizes 16] [--max-steps N] [--cache-dir DIR] [--json OUT]

Sections, every figure side by side in one run (before and after alternate):

- `speed`: documents per second of `--steps` training steps of each variant (`--reps`
  repetitions, median), before and after, and each part of an after-step (forward, backward,
  clip, optimizer step) from `torch.profiler`;
- `quality`: whole trials (`fit`, `--epochs` epochs, early stopping on dev loss, the best
  epoch on test) of the first variant for every seed, before and after: dev and test macro
  R-Precision, their spread over seeds, and each trial's training documents per second.
  `--batch-sizes 16,64` adds after-trials at other batch sizes (a different training: fewer,
  larger steps; batch_size is already a search dimension), whose scores are set against the
  seeds' spread at batch 16.

The corpus is any corpus directory (`hiersearch data ...`), cut to `--levels`; its encoding and
feature cache go to `--cache-dir` (default: the corpus's own `.hiersearch-cache`).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import alternate, emit, machine, median, setup_env, verdict  # noqa: E402

SECTIONS = ("speed", "quality")
ARMS = ("before", "after")
# `hpo_heads`' trial settings (search_spaces/hpo_heads.yaml), head-only on MiniLM-L6.
PRESET: dict[str, Any] = {
    "model": "minilm", "freeze_layers": "all", "max_length": 48, "epochs": 2,
    "batch_size": 16, "eval_batch_size": 64, "lr": 1e-4, "head_lr": 3e-2, "dropout": 0.1,
    "pooling": "mean", "head_norm": "batchnorm", "warmup_ratio": 0.1, "patience": 2,
    "cpus_per_worker": 1, "util_docs": 0, "keep_checkpoints": 1,
}
# The target: a head-only epoch at >= 10,000 labels, >= 3x the documents per second.
TARGET_SPEEDUP = 3.0


class _EveryStep:
    """`model.parameters()` walked anew at every step, as the clip did before."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def __iter__(self) -> Iterator[Any]:
        return iter(self.model.parameters())


@contextlib.contextmanager
def step_as_before(recipe: Any = None) -> Iterator[None]:
    """The training step as it was before fused AdamW on the CPU and `clip_gradients`: an
    optimizer built inside is the for-loop AdamW, and the clip is torch's `clip_grad_norm_`
    over every module's parameters (of `recipe`, when given)."""
    import torch

    from hiersearch.trial import training

    saved = getattr(recipe, "trained", None)
    if recipe is not None:
        recipe.trained = _EveryStep(recipe.model)
    try:
        with mock.patch.object(training, "FUSED_DEVICES", ("cuda",)), mock.patch.object(
            training, "clip_gradients", torch.nn.utils.clip_grad_norm_
        ):
            yield
    finally:
        if recipe is not None:
            recipe.trained = saved


def arm_context(arm: str, recipe: Any = None) -> contextlib.AbstractContextManager[None]:
    return step_as_before(recipe) if arm == "before" else contextlib.nullcontext()


def load_encoded(corpus: str, levels: tuple[int, int] | None, cache_dir: str | None) -> Any:
    from hiersearch.data.corpus import load_corpus_dir
    from hiersearch.data.encode import encode
    from hiersearch.model.encoder import tokenizer_path

    loaded = load_corpus_dir(corpus)
    if levels is not None:
        loaded = loaded.truncate(*levels)
    cache = Path(cache_dir) if cache_dir else Path(corpus) / ".hiersearch-cache"
    return encode(loaded, tokenizer_path(PRESET["model"]), PRESET["max_length"], cache)


def trial_config(**changes: Any) -> Any:
    from hiersearch.trial.config import TrialConfig

    return TrialConfig(**{**PRESET, **changes})


def build_recipe(encoded: Any, root: Path, arm: str, **changes: Any) -> Any:
    """A set-up head-only recipe of `arm` (its optimizer built as that arm builds it)."""
    from hiersearch.trial.recipe import TrialRecipe
    from hiersearch.trial.session import LocalSession

    recipe = TrialRecipe(trial_config(**changes), LocalSession(Path(tempfile.mkdtemp(dir=root))))
    with arm_context(arm):
        recipe.setup(encoded)
    return recipe


def _train_steps(recipe: Any, arm: str, steps: int) -> Callable[[], None]:
    def run() -> None:
        recipe.steps_per_epoch = steps
        with arm_context(arm, recipe):
            recipe.train_epoch(0)

    return run


def bench_speed(
    encoded: Any, root: Path, variants: Iterable[str], steps: int, reps: int
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for variant in variants:
        recipes = {arm: build_recipe(encoded, root, arm, assignment=variant) for arm in ARMS}
        fused = {arm: bool(r.optimizer.defaults.get("fused")) for arm, r in recipes.items()}
        times = alternate({arm: _train_steps(r, arm, steps) for arm, r in recipes.items()}, reps)
        docs = steps * PRESET["batch_size"]
        rate = {arm: docs / times.median_wall(arm) for arm in ARMS}
        cpu_rate = {arm: docs / times.median_cpu(arm) for arm in ARMS}
        speedup = rate["after"] / rate["before"]
        out[variant] = {
            "head_widths": [h.in_features if hasattr(h, "in_features") else None
                            for h in recipes["after"].core.heads],
            "head_parameters": sum(p.numel() for p in recipes["after"].core.heads.parameters()),
            "fused": fused,
            "docs_per_s": {k: round(v, 1) for k, v in rate.items()},
            "docs_per_s_cpu": {k: round(v, 1) for k, v in cpu_rate.items()},
            "speedup": round(speedup, 2),
            "speedup_cpu": round(cpu_rate["after"] / cpu_rate["before"], 2),
            "verdict": verdict(speedup, TARGET_SPEEDUP, True),
            "step_parts_ms": {arm: step_parts(r, arm, min(steps, 40)) for arm, r in
                              recipes.items()},
            **times.to_json(),
        }
    return out


# torch.profiler's names (prefixes) of the parts of a head-only step
PARTS = {
    "forward": ("aten::linear", "aten::batch_norm", "aten::dropout", "aten::cat"),
    "loss": ("aten::binary_cross_entropy_with_logits",),
    "backward": ("autograd::engine::evaluate_function",),
    "optimizer": ("Optimizer.step#AdamW.step",),
    "clip_norm": ("aten::_foreach_norm",),
    "clip_scale": ("aten::_foreach_mul_",),
}


def step_parts(recipe: Any, arm: str, steps: int) -> dict[str, float]:
    """CPU milliseconds per step of each part of `steps` training steps, profiled (the named
    operators' CPU time; `other`: the rest of this process's CPU time: batches, Python, the
    tally, the profiler's own)."""
    from torch.profiler import ProfilerActivity, profile

    recipe.steps_per_epoch = steps
    with arm_context(arm, recipe), profile(activities=[ProfilerActivity.CPU]) as prof:
        started = time.process_time()
        recipe.train_epoch(0)
        cpu = time.process_time() - started
    totals = {event.key: event.cpu_time_total for event in prof.key_averages()}
    out = {
        part: sum(t for key, t in totals.items() if key.startswith(names)) / 1000 / steps
        for part, names in PARTS.items()
    }
    out["other"] = cpu * 1000 / steps - sum(out.values())
    out["total"] = cpu * 1000 / steps
    return {k: round(v, 2) for k, v in out.items()}


def bench_quality(
    encoded: Any,
    root: Path,
    variant: str,
    seeds: list[int],
    epochs: int,
    batch_sizes: list[int],
    max_steps: int | None,
) -> dict[str, Any]:
    """Whole trials per seed, before and after (alternating), and after at other batch sizes."""
    from hiersearch import metrics as M
    from hiersearch.trial.recipe import fit
    from hiersearch.trial.session import LocalSession

    keys = {"dev": M.rp_macro_key("dev"), "test": M.rp_macro_key("test")}
    arms = [(arm, PRESET["batch_size"]) for arm in ARMS]
    arms += [("after", size) for size in batch_sizes if size != PRESET["batch_size"]]
    runs: dict[str, list[dict[str, Any]]] = {}
    for seed in seeds:
        for arm, size in arms if seed % 2 == 0 else arms[::-1]:
            name = arm if size == PRESET["batch_size"] else f"{arm}_batch{size}"
            config = trial_config(assignment=variant, seed=seed, epochs=epochs,
                                  batch_size=size, max_steps_per_epoch=max_steps)
            session = LocalSession(Path(tempfile.mkdtemp(dir=root)))
            started, cpu = time.perf_counter(), time.process_time()
            with arm_context(arm):
                final = fit(config, encoded, session)
            epoch_reports = [r for r in session.reports if not r.get(M.TRIAL_FINAL)]
            runs.setdefault(name, []).append({
                "seed": seed,
                "dev_rp_macro": final[keys["dev"]],
                "test_rp_macro": final[keys["test"]],
                "best_epoch": final[M.TRIAL_BEST_EPOCH],
                "train_docs_per_s": [r[M.SAMPLES_PER_SECOND] for r in epoch_reports],
                "dev_eval_s": [r[M.eval_seconds_key("dev")] for r in epoch_reports],
                "trial_s": time.perf_counter() - started,
                "trial_cpu_s": time.process_time() - cpu,
            })
    return {"variant": variant, "runs": runs, "summary": quality_summary(runs)}


def quality_summary(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per arm: mean, spread (max - min) over seeds and per-seed values of dev and test macro
    RP; each arm's mean against `before`'s seeds (inside their range, widened by their
    spread's half on either side); the training documents per second."""
    out: dict[str, Any] = {}
    base = runs.get("before", [])
    for name, rows in runs.items():
        entry: dict[str, Any] = {}
        for split in ("dev", "test"):
            values = [row[f"{split}_rp_macro"] for row in rows]
            entry[split] = {
                "mean": round(statistics.fmean(values), 4),
                "spread": round(max(values) - min(values), 4),
                "per_seed": [round(v, 4) for v in values],
            }
            if base and name != "before":
                ref = [row[f"{split}_rp_macro"] for row in base]
                entry[split]["within_before_spread"] = _within(statistics.fmean(values), ref)
                paired = [a - b for a, b in zip(values, ref, strict=False)]
                entry[split]["paired_diff"] = [round(d, 4) for d in paired]
        entry["train_docs_per_s"] = round(median(
            [rate for row in rows for rate in row["train_docs_per_s"]]), 1)
        entry["dev_eval_s"] = round(median([s for row in rows for s in row["dev_eval_s"]]), 2)
        entry["trial_s"] = round(median([row["trial_s"] for row in rows]), 1)
        entry["trial_cpu_s"] = round(median([row["trial_cpu_s"] for row in rows]), 1)
        out[name] = entry
    if "before" in out:
        for entry in out.values():
            entry["speedup_vs_before"] = round(
                entry["train_docs_per_s"] / out["before"]["train_docs_per_s"], 2)
    return out


def _within(value: float, reference: list[float]) -> bool:
    """Whether `value` lies within the reference seeds' range, widened by half that range on
    either side (three seeds' range understates their spread)."""
    low, high = min(reference), max(reference)
    margin = (high - low) / 2
    return low - margin <= value <= high + margin


def _levels(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    first, last = (int(x) for x in text.split("-"))
    return first, last


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--levels", default=None, help="first-last, e.g. 1-4")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--variants", default="LAST-FOUR,IN-PAIRS")
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=PRESET["epochs"])
    parser.add_argument("--batch-sizes", default=str(PRESET["batch_size"]))
    parser.add_argument("--max-steps", type=int, default=None,
                        help="cap the optimizer steps of a quality trial's epochs (smoke runs)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    setup_env()
    sections = [s for s in args.sections.split(",") if s]
    variants = [v for v in args.variants.split(",") if v]
    encoded = load_encoded(args.corpus, _levels(args.levels), args.cache_dir)
    root = Path(tempfile.mkdtemp(prefix="head-speed-"))
    result: dict[str, Any] = {
        "machine_start": machine(),
        "corpus": args.corpus,
        "levels": args.levels,
        "label_counts": list(encoded.label_counts),
        "train_docs": encoded.splits["train"].num_rows,
        "settings": PRESET,
    }
    if "speed" in sections:
        result["speed"] = bench_speed(encoded, root, variants, args.steps, args.reps)
    if "quality" in sections:
        result["quality"] = bench_quality(
            encoded, root, variants[0], [int(s) for s in args.seeds.split(",")], args.epochs,
            [int(b) for b in args.batch_sizes.split(",")], args.max_steps,
        )
    result["machine_end"] = machine()
    emit("head_speed", result, args.json)
    return result


if __name__ == "__main__":
    main()
