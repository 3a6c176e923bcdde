"""Arms at equal compute: searches run side by side through `run_search`, each arm a space file
built from the presets, compared as its arms file says (bench/arms/*.yaml, each opening with
its launch command).

    python bench/arms.py --arms bench/arms/NAME.yaml [--quick] [--reps N] [--only A,B]
        [--from ARM=DIR ...] [--keep DIR] [--json OUT]

An arms file holds:
- `bench`: the study's name (its JSON's "bench"); `compare`: how its arms are compared
  (`how`: one of COMPARE, and that comparison's settings);
- `base` (what every arm shares) and `arms` (name -> what it changes), each a layer of
  `preset` (start from a whole preset), `from` (a section or setting by dotted path ->
  the preset to copy it from) and `set` (dotted path -> value; null removes it), applied in
  that order; an arm may add `budget_epochs` (a number, or an earlier arm's name: the epochs
  that arm trained in the same repetition) and `rep_seeds`;
- `reps` (repetitions, default 1) and `rep_seeds` (dotted path -> k: the setting is k x the
  repetition, 0-based; with it, experiment names end in -REP);
- `quick`: the smoke run's `set` for every arm, its `arms` (per arm) and `compare` settings.

Compute is counted in epochs (one pass over the arm's training documents) from the trials'
epoch reports: the machine is shared and an epoch's seconds follow its load, its work does
not. A budget is a Tune stopper that ends the experiment once its trials have trained that
many epochs (an epoch running then is cut short and not counted). `--from ARM=DIR` reads an
arm from a finished experiment of the same space (an earlier run's `--keep DIR/ARM`) instead
of running it again. Ray runs locally on 2 CPUs; see bench/README.md for the studies.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, machine, ray_init, setup_env  # noqa: E402

from hiersearch import metrics as M  # noqa: E402 (the keys only: no Ray, no torch)

METRIC = M.rp_macro_key("dev")
TEST_METRIC = M.rp_macro_key("test")
EPOCH_S = M.EPOCH_SECONDS
FINAL = M.TRIAL_FINAL
KEYS = {"bench", "compare", "base", "arms", "reps", "rep_seeds", "quick"}
LAYER_KEYS = {"preset", "from", "set", "budget_epochs", "rep_seeds"}


@dataclass(frozen=True)
class Ran:
    """One arm of one repetition: its experiment, the space it ran and its wall time."""

    path: Path
    raw: dict[str, Any]
    timing: dict[str, Any]


# ----------------------------------------------------------------------------- arms files


def load_arms(path: str | Path) -> dict[str, Any]:
    """An arms file, its keys checked (SystemExit naming the file and the key otherwise)."""
    spec = yaml.safe_load(Path(path).read_text())
    if not isinstance(spec, dict) or not isinstance(spec.get("arms"), dict):
        raise SystemExit(f"{path}: an arms file is a mapping with an `arms` mapping")
    unknown = set(spec) - KEYS
    layers = [spec.get("base", {}), *spec["arms"].values()]
    unknown |= {k for layer in layers for k in layer or {}} - LAYER_KEYS
    if unknown:
        raise SystemExit(f"{path}: unknown keys {sorted(unknown)}")
    if spec.get("compare", {}).get("how") not in COMPARE:
        raise SystemExit(f"{path}: compare.how must be one of {sorted(COMPARE)}")
    return spec


def _preset(name: str) -> dict[str, Any]:
    from hiersearch.search.space import preset_path

    return yaml.safe_load(preset_path(name).read_text())


def _get(raw: dict[str, Any], path: str) -> Any:
    for key in path.split("."):
        raw = raw[key]
    return copy.deepcopy(raw)


def _put(raw: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for key in parents:
        raw = raw.setdefault(key, {})
    if value is None:
        raw.pop(last, None)
    else:
        raw[last] = copy.deepcopy(value)


def apply_layer(raw: dict[str, Any], layer: dict[str, Any] | None) -> dict[str, Any]:
    """`raw` with a layer's `preset`, `from` and `set` applied, in that order."""
    layer = layer or {}
    if "preset" in layer:
        raw = _preset(layer["preset"])
    for path, preset in (layer.get("from") or {}).items():
        _put(raw, path, _get(_preset(preset), path))
    for path, value in (layer.get("set") or {}).items():
        _put(raw, path, value)
    return raw


def arm_space(spec: dict[str, Any], arm: str, rep: int = 0, quick: bool = False) -> dict[str, Any]:
    """The space file of one arm of one repetition (with the smoke run's overrides)."""
    raw = apply_layer(apply_layer({}, spec.get("base")), spec["arms"][arm])
    if quick:
        raw = apply_layer(raw, {"set": spec.get("quick", {}).get("set")})
        raw = apply_layer(raw, spec.get("quick", {}).get("arms", {}).get(arm))
    seeds = {**spec.get("rep_seeds", {}), **(spec["arms"][arm] or {}).get("rep_seeds", {})}
    for path, step in seeds.items():
        _put(raw, path, step * rep)
    raw["name"] = f"{arm}-{rep}" if seeds else arm
    return raw


def compare_settings(spec: dict[str, Any], quick: bool) -> dict[str, Any]:
    return {**spec["compare"], **(spec.get("quick", {}).get("compare", {}) if quick else {})}


# ----------------------------------------------------------------------------- accounting


def read_trials(path: str | Path) -> list[dict[str, Any]]:
    """Every trial of an experiment: its id, resolved config and reports (result.json; a line
    cut short by a kill is skipped)."""
    trials = []
    for result in sorted(Path(path).glob("trial_*/result.json")):
        reports = []
        for line in result.read_text().splitlines():
            try:
                reports.append(json.loads(line))
            except ValueError:
                continue
        config_file = result.parent / "config.json"
        config = json.loads(config_file.read_text()) if config_file.exists() else {}
        trials.append({"trial": result.parent.name, "config": config, "reports": reports})
    return trials


def epoch_reports(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every finished epoch of every trial, in the order they ended, with the experiment's
    cumulative epochs and training seconds at that point. The final report repeats the best
    epoch's train/ figures: it is not an epoch."""
    epochs = [
        {"trial": t["trial"], "time": r["timestamp"], "train_s": float(r[EPOCH_S]),
         "dev": float(r.get(METRIC, float("nan"))), "epoch": r.get("epoch")}
        for t in trials
        for r in t["reports"]
        if EPOCH_S in r and r.get(FINAL) != 1
    ]
    epochs.sort(key=lambda e: (e["time"], e["trial"]))
    total = 0.0
    for count, e in enumerate(epochs, start=1):
        total += e["train_s"]
        e["cumulative_s"], e["cumulative_epochs"] = total, count
    return epochs


def epochs_per_trial(trials: list[dict[str, Any]]) -> dict[str, int]:
    """Trial directory name -> epochs it trained."""
    counts: dict[str, int] = {}
    for epoch in epoch_reports(trials):
        counts[epoch["trial"]] = counts.get(epoch["trial"], 0) + 1
    return counts


def compute_budget(budget_epochs: int) -> Any:
    """A Tune stopper that ends the experiment once its trials have finished `budget_epochs`
    epochs (an epoch running then is cut short and not counted)."""
    from ray.tune import Stopper

    class ComputeBudget(Stopper):
        def __init__(self) -> None:
            self.epochs = 0

        def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
            if EPOCH_S in result and result.get(FINAL) != 1:
                self.epochs += 1
            return False

        def stop_all(self) -> bool:
            return self.epochs >= budget_epochs

    return ComputeBudget()


# ----------------------------------------------------------------------------- running


def run_space(raw: dict[str, Any], storage: Path, budget: int | None = None) -> Ran:
    """One experiment through `run_search` (stopped at `budget` epochs when given)."""
    from hiersearch.search.run import run_search
    from hiersearch.search.space import parse_space

    load = [round(x, 2) for x in os.getloadavg()]
    start = time.time()
    stop = compute_budget(budget) if budget else None
    path = run_search(parse_space(raw, raw["name"]), storage=str(storage), verbose=0, stop=stop)
    seconds = time.time() - start
    print(f"[arms] {raw['name']}: {seconds:.0f} s, load at start {load}", flush=True)
    return Ran(Path(path), raw, {"seconds": round(seconds), "load_at_start": load,
                                 "load_at_end": [round(x, 2) for x in os.getloadavg()]})


def check_kept(path: Path, wanted: dict[str, Any], arm: str, budget: int | None) -> Ran:
    """A kept experiment run with the space `wanted` (and, with a budget, that trained it),
    or SystemExit naming `--from ARM` and what differs."""
    meta = json.loads((path / "hiersearch.json").read_text())
    for section in ("data", "trial", "search", "assignment"):
        if meta["space"].get(section) != wanted.get(section):
            raise SystemExit(f"--from {arm}={path}: another experiment ({section} differs)")
    trained = len(epoch_reports(read_trials(path)))
    if budget and trained < budget:
        raise SystemExit(f"--from {arm}={path}: {trained} epochs trained, {budget} are needed")
    return Ran(path, wanted, {"from": str(path)})


def _budget(value: Any, done: dict[str, Ran], arm: str) -> int | None:
    if value is None or isinstance(value, int):
        return value
    if value not in done:
        raise SystemExit(f"arm {arm}: its budget is arm {value}'s epochs; run {value} first")
    return len(epoch_reports(read_trials(done[value].path)))


def run_arms(spec: dict[str, Any], arms: list[str], reps: int, quick: bool, storage: Path,
             kept: dict[str, Path]) -> dict[str, list[Ran]]:
    """Every arm of every repetition, in the file's order: arm -> one Ran per repetition."""
    runs: dict[str, list[Ran]] = {arm: [] for arm in arms}
    for rep in range(reps):
        done: dict[str, Ran] = {}
        for arm in arms:
            raw = arm_space(spec, arm, rep, quick)
            budget = _budget((spec["arms"][arm] or {}).get("budget_epochs"), done, arm)
            done[arm] = (check_kept(kept[arm], raw, arm, budget) if arm in kept
                         else run_space(raw, storage, budget))
            runs[arm].append(done[arm])
    return runs


# ----------------------------------------------------------------------------- comparisons
# Each takes (the arms' runs, the compare settings, a runner of further spaces) and returns
# the figures of the study's JSON.
Runner = Callable[[dict[str, Any]], Ran]


def describe(choice: dict[str, Any], trials: list[dict[str, Any]]) -> dict[str, Any]:
    config = next(t["config"] for t in trials if t["trial"] == choice["trial"])
    return {"trial": choice["trial"], "epoch": choice["epoch"], "dev_rp_macro": choice["dev"],
            "at_epochs": choice["cumulative_epochs"], "at_training_s": choice["cumulative_s"],
            "config": config}


def choice_at(epochs: list[dict[str, Any]], budget_epochs: float) -> dict[str, Any] | None:
    """The best dev epoch among the first `budget_epochs` epochs to end."""
    within = [e for e in epochs if e["cumulative_epochs"] <= budget_epochs + 1e-9
              and e["dev"] == e["dev"]]
    return max(within, key=lambda e: e["dev"], default=None)


def arm_summary(trials: list[dict[str, Any]]) -> dict[str, Any]:
    epochs = epoch_reports(trials)
    histogram: dict[int, int] = {}
    for n in epochs_per_trial(trials).values():
        histogram[n] = histogram.get(n, 0) + 1
    return {
        "trials": len(trials),
        "epochs": len(epochs),
        "training_s": epochs[-1]["cumulative_s"] if epochs else 0.0,
        "trials_per_epochs_trained": dict(sorted(histogram.items())),
    }


def retrain_space(config: dict[str, Any], data: dict[str, Any], seeds: int, first_seed: int,
                  name: str) -> dict[str, Any]:
    """A chosen trial's resolved config as a fixed-only space: its assignment, fresh seeds."""
    trial = {k: v for k, v in config.items() if k not in ("assignment", "seed", "corpus")}
    return {
        "name": name,
        "data": data,
        "trial": {**trial, "util_docs": 0},
        "assignment": {"space": "variants", "variants": [config["assignment"]]},
        "tune": {"algorithm": "grid", "metric": METRIC, "mode": "max", "seeds": seeds,
                 "first_seed": first_seed},
    }


def seed_scores(path: str | Path) -> dict[str, Any]:
    """Test macro R-Precision of each re-trained seed, mean and standard deviation."""
    scores = []
    for t in read_trials(path):
        final = [r for r in t["reports"] if r.get(FINAL) == 1 and TEST_METRIC in r]
        if final:
            scores.append(float(final[-1][TEST_METRIC]))
    std = statistics.stdev(scores) if len(scores) > 1 else 0.0
    return {"test_rp_macro": scores, "mean": statistics.fmean(scores) if scores else float("nan"),
            "std": std}


def verdicts(grid: dict[str, Any], choices: dict[str, dict[str, Any] | None],
             budgets: tuple[float, ...] = (0.35, 1.0)) -> dict[str, Any]:
    """Below the whole budget the candidate's re-trained choice must be within 1 point of the
    reference's; at it, above by more than the larger std over seeds. A budget at which the
    candidate had not finished an epoch misses."""
    ref = grid["retrained"]
    out: dict[str, Any] = {}
    for budget in budgets:
        target = "within_1_point" if budget < 1.0 else "above_by_more_than_std"
        label = f"{round(100 * budget)}pct"
        choice = choices[f"{budget:.2f}"]
        if choice is None:
            out[f"target_{label}_{target}"] = "MISSED (no epoch ended within the budget)"
            continue
        got = choice["retrained"]
        gap = 100 * (got["mean"] - ref["mean"])
        noise = 100 * max(got["std"], ref["std"])
        met = gap >= -1.0 if budget < 1.0 else gap > noise
        out[f"gap_at_{label}_points"] = gap
        out[f"seed_std_at_{label}_points"] = noise
        out[f"target_{label}_{target}"] = "MET" if met else "MISSED"
    return out


def choice_at_budget(runs: dict[str, list[Ran]], settings: dict[str, Any],
                     run: Runner) -> dict[str, Any]:
    """The reference arm's best dev choice against the other arm's choices at fractions of the
    reference's epochs, each re-trained with fresh seeds and scored on test."""
    ref_name = settings["reference"]
    (cand_name,) = [arm for arm in runs if arm != ref_name]
    ref, cand = runs[ref_name][0], runs[cand_name][0]
    ref_trials, cand_trials = read_trials(ref.path), read_trials(cand.path)
    reference = arm_summary(ref_trials)
    ref_choice = describe(choice_at(epoch_reports(ref_trials), float("inf")), ref_trials)
    candidate = arm_summary(cand_trials)
    epochs = epoch_reports(cand_trials)
    budgets = tuple(settings["budgets"])
    choices = {}
    for b in budgets:
        choice = choice_at(epochs, b * reference["epochs"])
        choices[f"{b:.2f}"] = describe(choice, cand_trials) if choice else None
    retrained: dict[str, dict[str, Any]] = {}
    for label, choice in [(ref_name, ref_choice), *choices.items()]:
        if choice is None:
            continue
        key = json.dumps(choice["config"], sort_keys=True)
        if key not in retrained:
            name = f"retrain-{label.replace('.', '_')}"
            raw = retrain_space(choice["config"], ref.raw["data"], settings["retrain_seeds"],
                                settings["retrain_first_seed"], name)
            retrained[key] = seed_scores(run(raw).path)
        choice["retrained"] = retrained[key]
    return {
        ref_name: {**reference, "choice": ref_choice, "from": ref.timing.get("from")},
        cand_name: {**candidate, "choices": choices, "from": cand.timing.get("from"),
                    "compute_ratio_epochs": candidate["epochs"] / reference["epochs"],
                    "compute_ratio_training_s": candidate["training_s"] / reference["training_s"]},
        "verdicts": verdicts(ref_choice, choices, budgets),
    }


def hypervolume(points: np.ndarray, reference: tuple[float, float]) -> float:
    """The area two minimized metrics' `points` dominate up to `reference` (exact in 2-D)."""
    kept = sorted((x, y) for x, y in points if x < reference[0] and y < reference[1])
    area, ceiling = 0.0, reference[1]
    for x, y in kept:  # by the first metric; each point adds the strip below the last one
        if y < ceiling:
            area += (reference[0] - x) * (ceiling - y)
            ceiling = y
    return area


def _plain(value: Any) -> Any:
    """A table cell as JSON: pandas' missing values as None, numpy numbers as Python's."""
    import pandas as pd

    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    return value.item() if isinstance(value, np.generic) else value


def front_result(path: Path, num_layers: int) -> dict[str, Any]:
    """An arm's trials (status, epochs, metrics, Pareto mark), front, hypervolume and epochs.
    Hypervolume: the area (dev macro R-Precision x encoder layers) the front dominates from
    (R-Precision 0, one layer more than the encoder has): every point improves on it."""
    from hiersearch.metrics.pareto import minimized
    from hiersearch.report import leaderboard as lb
    from hiersearch.report.results import load_experiments

    table = lb.mark_pareto(load_experiments([str(path)]))
    trained = epochs_per_trial(read_trials(path))
    keys = [METRIC, M.COST_ENCODER_LAYERS]
    columns = ["status", "assignment", "head_lr", "head_hidden", *keys]
    rows = [
        {"trial": f"trial_{row['trial_id']}", **{c: _plain(row.get(c)) for c in columns},
         "epochs": trained.get(f"trial_{row['trial_id']}", 0), "pareto": bool(row.get("pareto"))}
        for _, row in table.iterrows()
    ]
    front = [r for r in rows if r["pareto"]]
    points = minimized(np.array([[r[k] for k in keys] for r in front], float), ["max", "min"])
    reference = (0.0, num_layers + 1.0)  # R-Precision 0 (minimized: -0), one layer too many
    return {
        "trials": rows,
        "epochs": sum(trained.values()),
        "stopped_early": sum(r["status"] == "stopped early" for r in rows),
        "front": sorted((r[keys[1]], r[keys[0]], r["assignment"]) for r in front),
        "hypervolume": hypervolume(points, reference),
        "hypervolume_reference": {METRIC: 0.0, M.COST_ENCODER_LAYERS: reference[1]},
    }


def pareto_front(runs: dict[str, list[Ran]], settings: dict[str, Any],
                 run: Runner) -> dict[str, Any]:
    """Each arm's Pareto front (dev macro R-Precision against encoder layers) and hypervolume;
    the other arm's epochs and hypervolume over the reference arm's."""
    from hiersearch.report.experiment import read_meta

    out: dict[str, Any] = {}
    for arm, (ran,) in runs.items():
        num_layers = int((read_meta(str(ran.path)) or {}).get("num_layers", 6))
        out[arm] = {**ran.timing, **front_result(ran.path, num_layers)}
    ref_name = settings["reference"]
    (other,) = [arm for arm in runs if arm != ref_name]
    ref, got = out[ref_name], out[other]
    out["epochs_ratio"] = got["epochs"] / ref["epochs"]
    out["hypervolume_ratio"] = got["hypervolume"] / ref["hypervolume"]
    out["same_front_points"] = [p[:2] for p in got["front"]] == [p[:2] for p in ref["front"]]
    return out


def answer(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """An arm's answer: its best finished trial by dev macro R-Precision (an ASHA trial it
    stopped has no test score), with its test score and the trials the arm ran."""
    trials = [r for r in rows if r.get("status") != "baseline"]
    finished = [r for r in trials if r.get("status") == "terminated"
                and r.get(TEST_METRIC) is not None]
    if not finished:
        raise SystemExit("an arm finished no trial: nothing to compare")
    best = max(finished, key=lambda r: r[METRIC])
    return {"trials": len(trials), "best_trial": best["trial_id"], "variant": best.get("variant"),
            "dev_macro": best[METRIC], "test_macro": best[TEST_METRIC]}


def summary(results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Mean and std (over repetitions) of each arm's test score, epochs and seconds."""
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


def best_finished(runs: dict[str, list[Ran]], settings: dict[str, Any],
                  run: Runner) -> dict[str, Any]:
    """Each arm's answer per repetition (best finished trial by dev, on test), then mean and
    std over the repetitions."""
    from hiersearch.report.results import load_experiments

    results: dict[str, list[dict[str, Any]]] = {}
    for arm, reps in runs.items():
        results[arm] = [
            {**answer(load_experiments([str(ran.path)]).to_dict("records")),
             "epochs": len(epoch_reports(read_trials(ran.path))),
             "seconds": ran.timing.get("seconds", float("nan"))}
            for ran in reps
        ]
    return {"results": results, "summary": summary(results)}


COMPARE: dict[str, Callable[[dict[str, list[Ran]], dict[str, Any], Runner], dict[str, Any]]] = {
    "choice_at_budget": choice_at_budget,
    "pareto_front": pareto_front,
    "best_finished": best_finished,
}


# ----------------------------------------------------------------------------- command line


def parse_from(items: list[str], arms: dict[str, Any]) -> dict[str, Path]:
    """["grid=DIR", ...] -> {"grid": Path(DIR)}, naming the file's arms only."""
    out = {}
    for item in items:
        arm, sep, path = item.partition("=")
        if not sep or arm not in arms:
            raise SystemExit(f"--from {item!r}: expected ARM=DIR with ARM one of {list(arms)}")
        out[arm] = Path(path)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arms", required=True, help="the arms file (bench/arms/*.yaml)")
    parser.add_argument("--quick", action="store_true", help="smoke run: figures say nothing")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (the file's: 1)")
    parser.add_argument("--only", default=None, help="comma-separated arms to run")
    parser.add_argument("--from", dest="kept", action="append", default=[], metavar="ARM=DIR",
                        help="a finished experiment of an arm's space: not run again")
    parser.add_argument("--keep", default=None, help="keep the experiments in this directory")
    parser.add_argument("--json", default=None, help="also write the result here")
    args = parser.parse_args(argv)
    spec = load_arms(args.arms)
    arms = args.only.split(",") if args.only else list(spec["arms"])
    if not set(arms) <= set(spec["arms"]):
        parser.error(f"--only: one or more of {', '.join(spec['arms'])}, got {args.only!r}")
    kept = parse_from(args.kept, spec["arms"])
    reps = args.reps or spec.get("reps", 1)
    setup_env()
    import ray

    storage = Path(args.keep or tempfile.mkdtemp(prefix="hiersearch-bench-arms-"))
    settings = compare_settings(spec, args.quick)
    ray_init(num_cpus=2)
    out: dict[str, Any] = {"machine": machine(), "quick": args.quick, "arms_file": args.arms,
                           "spec": spec, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    try:
        runs = run_arms(spec, arms, reps, args.quick, storage, kept)
        out.update(COMPARE[settings["how"]](runs, settings, lambda raw: run_space(raw, storage)))
    finally:
        ray.shutdown()
        if not args.keep:
            shutil.rmtree(storage, ignore_errors=True)
    out["ended"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    emit(spec["bench"], out, args.json)
    return out


if __name__ == "__main__":
    main()
