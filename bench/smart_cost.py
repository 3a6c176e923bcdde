"""SMART's cost per training step (`hiersearch.trial.smart`): seconds per optimizer step of a
trial with SMART's terms against the same trial without them, side by side in one run.

Encoders: a random-init `tiny:3x32` and the packaged MiniLM-L6 (`minilm`), FLAT heads (mean
pooling, batchnorm: the `hpo` heads), on a SYNTHETIC EuroVoc corpus (`--docs` documents, 48
tokens, batch 16). Each with the whole encoder training (`freeze_layers: 0`: the embeddings'
output perturbed) and with its upper layers training on the feature cache's states
(`freeze_layers` 1 of tiny's 3, 3 of MiniLM's 6: BENCHMARKS.md section 13's fine-tunes).

Arms: `off` (no SMART), `adversarial` (`smart_weight` 1, one ascent step), `bregman`
(`smart_bregman_weight` 1) and `both`. Every arm is a trial (`TrialRecipe`) set up once; a
repetition trains each arm `--steps` optimizer steps (`train_epoch` capped by
`max_steps_per_epoch`) in a rotating order; the figure is the median over repetitions of
(arm's seconds per step / off's in the same repetition), in wall time and in this process's
CPU time (one torch thread: CPU time is the step's compute on a loaded machine).

Term sizes: the adversarial term's value at radius 1e-5 (the paper's epsilon) .. 1 (the scale
its reference code perturbs at), beside the task loss, on one batch (upper layers cached).

    python bench/smart_cost.py [--quick] [--json OUT]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, machine, median, setup_env  # noqa: E402

# encoder -> the freeze_layers values measured (0: the whole encoder trains)
CASES = {"tiny:3x32": (0, 1), "minilm": (0, 3)}
ARMS: dict[str, dict[str, float]] = {
    "off": {},
    "adversarial": {"smart_weight": 1.0},
    "bregman": {"smart_bregman_weight": 1.0},
    "both": {"smart_weight": 1.0, "smart_bregman_weight": 1.0},
}
MAX_LENGTH, BATCH = 48, 16


def encode_corpus(docs: int, root: Path) -> str:
    """A synthetic EuroVoc corpus encoded with MiniLM's tokenizer (what every case reads)."""
    from hiersearch.data.encode import encode
    from hiersearch.data.synth import SynthConfig, synthesize
    from hiersearch.data.vocabularies import eurovoc_hierarchy
    from hiersearch.model.encoder import tokenizer_path

    corpus = synthesize(eurovoc_hierarchy(), SynthConfig(docs=docs, seed=1, max_leaves=300))
    return str(encode(corpus, tokenizer_path("minilm"), MAX_LENGTH, root / "cache").path)


def arm_config(model: str, freeze: int, steps: int, smart: dict[str, float]) -> Any:
    from hiersearch.trial.config import TrialConfig

    return TrialConfig(
        model=model, assignment="FLAT", max_length=MAX_LENGTH, batch_size=BATCH, lr=1e-4,
        head_lr=3e-2, pooling="mean", head_norm="batchnorm", freeze_layers=freeze,
        max_steps_per_epoch=steps, epochs=1000, util_docs=0, **smart,
    )


def ratios(per_step: dict[str, list[float]]) -> dict[str, float]:
    """Each arm's median over repetitions of (its seconds per step / off's, same rep)."""
    off = per_step["off"]
    return {
        arm: round(median([a / b for a, b in zip(values, off, strict=True)]), 3)
        for arm, values in per_step.items() if arm != "off"
    }


def measure(
    model: str, freeze: int, encoded: str, root: Path, steps: int, reps: int
) -> dict[str, Any]:
    """One case: every arm set up, then `reps` rotating rounds of `steps` steps each."""
    from hiersearch.trial.recipe import TrialRecipe
    from hiersearch.trial.session import LocalSession

    recipes = {}
    for arm, smart in ARMS.items():
        place = root / f"{model.replace(':', '_')}-{freeze}-{arm}"
        place.mkdir(parents=True)
        recipe = TrialRecipe(arm_config(model, freeze, steps, smart),
                             LocalSession(checkpoint_root=place))
        recipe.setup(encoded)
        recipe.train_epoch(0)  # warm-up: first-call allocations, the feature cache's pages
        recipes[arm] = recipe
    wall: dict[str, list[float]] = {arm: [] for arm in ARMS}
    cpu: dict[str, list[float]] = {arm: [] for arm in ARMS}
    names = list(ARMS)
    for rep in range(reps):
        for arm in names[rep % len(names):] + names[: rep % len(names)]:
            started_cpu, started = time.process_time(), time.perf_counter()
            trained = recipes[arm].train_epoch(rep + 1)
            wall[arm].append((time.perf_counter() - started) / trained.batches)
            cpu[arm].append((time.process_time() - started_cpu) / trained.batches)
    return {
        "model": model,
        "freeze_layers": freeze,
        "cached": recipes["off"].sources["train"] is not recipes["off"].train_split,
        "seconds_per_step_wall": {arm: round(median(v), 4) for arm, v in wall.items()},
        "seconds_per_step_cpu": {arm: round(median(v), 4) for arm, v in cpu.items()},
        "ratio_wall": ratios(wall),
        "ratio_cpu": ratios(cpu),
    }


def term_sizes(encoded: str, root: Path, model: str, freeze: int) -> dict[str, Any]:
    """The adversarial term's value (its K=1 perturbation at each radius, step = radius)
    beside the task loss, on one training batch of a freshly set-up trial: how large a
    perturbation must be to give the term any weight."""
    import torch

    from hiersearch.trial.evaluation import model_inputs
    from hiersearch.trial.recipe import TrialRecipe
    from hiersearch.trial.session import LocalSession
    from hiersearch.trial.smart import Smart

    place = root / f"sizes-{model.replace(':', '_')}-{freeze}"
    place.mkdir(parents=True)
    recipe = TrialRecipe(arm_config(model, freeze, 1, {}), LocalSession(checkpoint_root=place))
    recipe.setup(encoded)
    batch = recipe.sources["train"].batch(torch.arange(BATCH).numpy(), recipe.num_labels)
    inputs, core = model_inputs(batch), recipe.core
    core.train()
    torch.manual_seed(0)
    logits = core(**inputs)
    sizes = {}
    for eps in (1e-5, 1e-3, 1e-2, 1e-1, 1.0):
        config = recipe.config.replace(smart_weight=1.0, smart_eps=eps, smart_step_size=eps)
        term = Smart(core, config).adversarial(core, inputs, logits)
        sizes[f"{eps:g}"] = float(term)
    return {"model": model, "freeze_layers": freeze,
            "task_loss": float(core.loss(logits, batch["labels"])), "adversarial_term": sizes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny only, 2 rounds of 2 steps")
    parser.add_argument("--docs", type=int, default=400)
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per round")
    parser.add_argument("--reps", type=int, default=5, help="rounds per case")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    home = setup_env()
    import torch

    torch.set_num_threads(1)
    cases = {"tiny:3x32": CASES["tiny:3x32"]} if args.quick else CASES
    steps, reps = (2, 2) if args.quick else (args.steps, args.reps)
    start = machine()
    root = Path(tempfile.mkdtemp(prefix="smart-cost-", dir=home))
    encoded = encode_corpus(120 if args.quick else args.docs, root)
    results = [
        measure(model, freeze, encoded, root, steps, reps)
        for model, freezes in cases.items() for freeze in freezes
    ]
    sizes = [term_sizes(encoded, root, model, max(freezes)) for model, freezes in cases.items()]
    settings = {"docs": args.docs, "max_length": MAX_LENGTH, "batch_size": BATCH,
                "steps": steps, "reps": reps, "arms": ARMS, "smart_steps": 1}
    emit("smart_cost", {"machine": start, "load_at_end": machine()["load_average_1_5_15"],
                        "settings": settings, "cases": results, "term_sizes": sizes},
         args.json)


if __name__ == "__main__":
    main()
