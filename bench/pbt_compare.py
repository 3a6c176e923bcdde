"""PBT against ASHA and against the fixed variants at equal compute (BENCHMARKS 14).

Three arms on the `pbt` preset's corpus and trials (the main job's: HPO term definitions, all
10,119 training documents, heads trained on the frozen MiniLM-L6's cached features, 4 epochs
a trial), each given 40 epochs:

- fixed: the five named variants x 2 seeds at the preset's head settings (10 x 4 epochs);
- asha: TPE over variant x head rate x dropout x weight decay (the preset's search) with ASHA
  (grace 1 epoch, keep 1/2), stopped once its trials have trained 40 epochs;
- pbt: the preset itself (a population of 10: the five variants, then five TPE draws).

Each arm runs once per repetition (seeds 0, 1, 2: the sampler's seed and the trials' first
seed). An arm's answer is its best trial by dev macro R-Precision among those that trained
to the end (an ASHA trial it stopped has no test score), read on test (macro R-Precision at
the dev-chosen epoch): mean +- std over the repetitions. Epochs trained are counted from the
trials' epoch reports (a PBT exploit goes on from its donor's epoch, so PBT's count may differ
from 40 by a few).

    python bench/pbt_compare.py [--reps 3] [--arms fixed,asha,pbt] [--json OUT] [--keep DIR]
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, load_average, machine, ray_init, setup_env  # noqa: E402

ARMS = ("fixed", "asha", "pbt")
BUDGET_EPOCHS = 40
DEV, TEST = "dev/rp_macro", "test/rp_macro"


def arm_space(preset: dict[str, Any], arm: str, rep: int) -> dict[str, Any]:
    """The space file of one arm of one repetition, from the `pbt` preset."""
    raw = copy.deepcopy(preset)
    raw["name"] = f"{arm}-{rep}"
    tune = raw["tune"]
    tune.update(sampler_seed=rep, first_seed=rep)
    tune.pop("pbt", None)
    if arm == "pbt":
        raw["tune"]["pbt"] = copy.deepcopy(preset["tune"]["pbt"])
    elif arm == "asha":
        tune.update(scheduler="asha", grace_period=1, reduction_factor=2,
                    num_samples=2 * BUDGET_EPOCHS)  # more than fit: the budget stops it
    else:
        raw.pop("search")
        raw["assignment"] = {"space": "variants"}
        tune.update(algorithm="grid", scheduler="none", seeds=2, first_seed=2 * rep)
    return raw


def answer(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """An arm's answer: its best finished trial by dev macro R-Precision, with its test
    score, and what the arm spent (trials, epochs)."""
    trials = [r for r in rows if r.get("status") != "baseline"]
    finished = [r for r in trials if r.get("status") == "terminated" and r.get(TEST) is not None]
    if not finished:
        raise SystemExit("an arm finished no trial: nothing to compare")
    best = max(finished, key=lambda r: r[DEV])
    return {
        "trials": len(trials),
        "best_trial": best["trial_id"],
        "variant": best.get("variant"),
        "dev_macro": best[DEV],
        "test_macro": best[TEST],
    }


def summary(results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Mean and std (over repetitions) of each arm's test score and epochs."""
    out = {}
    for arm, reps in results.items():
        scores = [r["test_macro"] for r in reps]
        out[arm] = {
            "test_macro_mean": statistics.mean(scores),
            "test_macro_std": statistics.stdev(scores) if len(scores) > 1 else 0.0,
            "epochs_mean": statistics.mean(r["epochs"] for r in reps),
            "seconds_mean": statistics.mean(r["seconds"] for r in reps),
        }
    return out


def epochs_trained(experiment: Path) -> int:
    """Epoch reports of every trial of an experiment (result.json lines that are no final
    report)."""
    count = 0
    for result in experiment.glob("trial_*/result.json"):
        for line in result.read_text().splitlines():
            try:
                report = json.loads(line)
            except ValueError:
                continue
            count += report.get("trial/final") == 0
    return count


def _run(raw: dict[str, Any], storage: Path) -> tuple[Path, float]:
    from search_efficiency import compute_budget

    from hiersearch.search.driver import run_search
    from hiersearch.search.space import parse_space

    stop = compute_budget(BUDGET_EPOCHS) if raw["tune"].get("scheduler") == "asha" else None
    start = time.time()
    path = run_search(parse_space(raw, raw["name"]), storage=str(storage), verbose=0, stop=stop)
    return Path(path), time.time() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated arms to run")
    parser.add_argument("--json")
    parser.add_argument("--keep", type=Path, help="keep the experiments here")
    args = parser.parse_args(argv)
    arms = args.arms.split(",")
    if not set(arms) <= set(ARMS):
        parser.error(f"--arms: one or more of {', '.join(ARMS)}, got {args.arms!r}")
    setup_env()
    from hiersearch.report.results import load_experiments
    from hiersearch.search.space import preset_path

    preset = yaml.safe_load(preset_path("pbt").read_text())
    storage = args.keep or Path(tempfile.mkdtemp(prefix="pbt-compare-"))
    ray_init(num_cpus=2)
    load = [round(x, 2) for x in load_average()]
    results: dict[str, list[dict[str, Any]]] = {arm: [] for arm in arms}
    for rep in range(args.reps):
        for arm in arms:
            path, seconds = _run(arm_space(preset, arm, rep), storage)
            rows = load_experiments([str(path)]).to_dict("records")
            got = {**answer(rows), "epochs": epochs_trained(path), "seconds": seconds}
            print(f"[pbt_compare] rep {rep} {arm}: {got}", flush=True)
            results[arm].append(got)
    emit("pbt_compare", {"machine": machine(), "load_at_start": load,
                         "budget_epochs": BUDGET_EPOCHS, "results": results,
                         "summary": summary(results)}, args.json)
    if args.keep is None:
        shutil.rmtree(storage, ignore_errors=True)


if __name__ == "__main__":
    main()
