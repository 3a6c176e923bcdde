"""Search efficiency: the layerwise preset's search (TPE + ASHA) against the paper's grid, on the
main job's corpus, with selection on dev and the report on test from re-trained seeds.

Both arms run through `search.run_search` (Ray Tune, one local Ray with 2 CPUs, one 1-CPU trial
at a time per CPU) on the main job's corpus and trial settings (`quick.yaml`: SYNTHETIC EuroVoc,
900 docs, the packaged MiniLM-L6, 64 tokens, batch 16, head_lr 3e-2, the head that learns:
mean-pooled and standardized). Utilization is left out of both (`util_docs: 0`, the same cost
for either arm).

- grid: the paper's grid, the 5 named variants x lr {5e-5, 1e-4, 2e-4} x dropout {0, 0.1} = 30
  trials of the main job's 3 epochs (the paper's rates {2, 3, 5}e-5 are BERT-base's; MiniLM
  with its own head rate trains at 1e-4 and collapses from ~2e-4);
- search: `layerwise.yaml`'s search, assignment and tune sections over the same corpus and trial
  settings, with that preset's epochs (6: ASHA's last rung).

Compute = epochs trained (one pass over the same 630 training documents), summed over every
epoch any trial finished; the training-loop seconds (`train/epoch_s`) are recorded beside them.
Epochs, not seconds, set the budget and the reading points: on this shared 2-core machine an
epoch took 50 s or 160 s depending on what else ran, while an epoch's work does not change,
and a search epoch never costs more than a grid epoch (the grid's trials all run the 6 layers
at batch 16; a search trial runs at most 6, fewer when its assignment stops lower or it freezes
layers, and at batch 16 or 32). So the search's compute counted in grid epochs is an upper
bound of its seconds on an idle machine. The search runs until it has trained as many epochs
as the grid (a Tune stopper), then it is read at two budgets: its choice at a budget B is its
best dev configuration among the epochs that had ended when its epoch count reached B (epochs
in the order they ended): what the search would have answered, had it been given B. The
grid's choice is its best over all 30.

Each choice is then re-trained with 3 fresh seeds (100, 101, 102: no arm ever ran them), its
full configuration (epochs included), and scored on test: macro R-Precision at the epoch with
the best dev loss, mean +- std over the seeds. Targets:

- at <= 35% of the grid's training seconds, the search's re-trained choice is within 1 point of
  the grid's re-trained choice;
- at 100%, the search's re-trained choice is above the grid's by more than the larger of the
  two standard deviations over seeds.

    python bench/search_efficiency.py [--quick] [--json OUT] [--keep DIR] [--grid-from DIR]
        [--search-from DIR]

`--grid-from DIR` takes the grid from a finished grid experiment of the same setup (e.g. an
earlier run's `--keep DIR/grid`) instead of running it again; `--search-from DIR` does the
same for the search (an earlier run's `--keep DIR/search`), so that with both only the
re-training runs.

On an idle 2-core machine: the grid ~45 minutes, the search as long, the re-training ~18.
`--quick` (a random-init tiny:4x32, 90 docs, 1 epoch, a 2-trial grid, a 1-seed re-train) is a
smoke run of the script only: its figures say nothing about the targets.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, machine, ray_init, setup_env  # noqa: E402

from hiersearch import metrics as M  # noqa: E402 (the keys only: no Ray, no torch)

METRIC = M.rp_macro_key("dev")
TEST_METRIC = M.rp_macro_key("test")
EPOCH_S = M.EPOCH_SECONDS
FINAL = M.TRIAL_FINAL
BUDGETS = (0.35, 1.0)
RETRAIN_SEEDS = 100  # the first of the re-training seeds: no arm runs seeds this high


@dataclass(frozen=True)
class Setup:
    grid_lrs: tuple[float, ...] = (5e-5, 1e-4, 2e-4)
    grid_dropouts: tuple[float, ...] = (0.0, 0.1)
    grid_variants: tuple[str, ...] | None = None  # None: all five
    retrain_seeds: int = 3
    max_search_trials: int = 200  # a cap only: the compute budget ends the search
    # smoke-run overrides of the main job's data and trial sections (empty: the main job's)
    data: tuple[tuple[str, Any], ...] = ()
    trial: tuple[tuple[str, Any], ...] = ()
    search_epochs: int | None = None  # None: the layerwise preset's


FULL = Setup()
QUICK = Setup(
    grid_lrs=(3e-3,),
    grid_dropouts=(0.1,),
    grid_variants=("FLAT", "LAST-THREE"),
    retrain_seeds=1,
    max_search_trials=3,
    data=(("docs", 90), ("max_leaves", 30)),
    trial=(("model", "tiny:4x32"), ("epochs", 1), ("head_lr", None)),
    search_epochs=2,
)


def _preset(name: str) -> dict[str, Any]:
    from hiersearch.search.space import preset_path

    return yaml.safe_load(preset_path(name).read_text())


def _main_job(setup: Setup) -> tuple[dict[str, Any], dict[str, Any]]:
    """The main job's data and trial sections, with the bench's overrides."""
    quick = _preset("quick")
    data = {**quick["data"], **dict(setup.data)}
    trial = {**quick["trial"], "util_docs": 0, **dict(setup.trial)}
    return data, trial


def grid_space(setup: Setup) -> dict[str, Any]:
    data, trial = _main_job(setup)
    assignment: dict[str, Any] = {"space": "variants"}
    if setup.grid_variants:
        assignment["variants"] = list(setup.grid_variants)
    return {
        "name": "grid",
        "data": data,
        "trial": trial,
        "search": {
            "lr": {"type": "categorical", "choices": list(setup.grid_lrs)},
            "dropout": {"type": "categorical", "choices": list(setup.grid_dropouts)},
        },
        "assignment": assignment,
        "tune": {"algorithm": "grid", "metric": METRIC, "mode": "max", "seeds": 1},
    }


def search_space(setup: Setup) -> dict[str, Any]:
    """The layerwise preset's search over the main job's corpus and trial settings."""
    layerwise = _preset("layerwise")
    data, trial = _main_job(setup)
    epochs = setup.search_epochs or layerwise["trial"]["epochs"]
    return {
        "name": "search",
        "data": data,
        "trial": {**trial, "epochs": epochs},
        "search": layerwise["search"],
        "assignment": layerwise["assignment"],
        "tune": {**layerwise["tune"], "num_samples": setup.max_search_trials},
    }


def retrain_space(config: dict[str, Any], setup: Setup, name: str) -> dict[str, Any]:
    """A chosen trial's resolved config as a fixed-only space: its assignment, fresh seeds."""
    data, _ = _main_job(setup)
    trial = {k: v for k, v in config.items() if k not in ("assignment", "seed", "corpus")}
    return {
        "name": name,
        "data": data,
        "trial": {**trial, "util_docs": 0},
        "assignment": {"space": "variants", "variants": [config["assignment"]]},
        "tune": {
            "algorithm": "grid",
            "metric": METRIC,
            "mode": "max",
            "seeds": setup.retrain_seeds,
            "first_seed": RETRAIN_SEEDS,
        },
    }


# ----------------------------------------------------------------------------- accounting


def read_trials(path: str | Path) -> list[dict[str, Any]]:
    """Every trial of an experiment: its id, resolved config and reports (result.json)."""
    trials = []
    for result in sorted(Path(path).glob("trial_*/result.json")):
        lines = [json.loads(x) for x in result.read_text().splitlines() if x.strip()]
        config_file = result.parent / "config.json"
        config = json.loads(config_file.read_text()) if config_file.exists() else {}
        trials.append({"trial": result.parent.name, "config": config, "reports": lines})
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


def choice_at(epochs: list[dict[str, Any]], budget_epochs: float) -> dict[str, Any] | None:
    """The best dev epoch among the first `budget_epochs` epochs to end."""
    within = [e for e in epochs if e["cumulative_epochs"] <= budget_epochs + 1e-9
              and e["dev"] == e["dev"]]
    return max(within, key=lambda e: e["dev"], default=None)


def arm_summary(trials: list[dict[str, Any]]) -> dict[str, Any]:
    epochs = epoch_reports(trials)
    return {
        "trials": len(trials),
        "epochs": len(epochs),
        "training_s": epochs[-1]["cumulative_s"] if epochs else 0.0,
        "trials_per_epochs_trained": _histogram(epochs),
    }


def _histogram(epochs: list[dict[str, Any]]) -> dict[int, int]:
    per_trial: dict[str, int] = {}
    for e in epochs:
        per_trial[e["trial"]] = per_trial.get(e["trial"], 0) + 1
    counts: dict[int, int] = {}
    for n in per_trial.values():
        counts[n] = counts.get(n, 0) + 1
    return dict(sorted(counts.items()))


def describe(choice: dict[str, Any], trials: list[dict[str, Any]]) -> dict[str, Any]:
    config = next(t["config"] for t in trials if t["trial"] == choice["trial"])
    return {"trial": choice["trial"], "epoch": choice["epoch"], "dev_rp_macro": choice["dev"],
            "at_epochs": choice["cumulative_epochs"], "at_training_s": choice["cumulative_s"],
            "config": config}


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


def verdicts(grid: dict[str, Any], choices: dict[str, dict[str, Any] | None]) -> dict[str, Any]:
    """The two targets; a budget at which the search had not finished an epoch misses."""
    ref = grid["retrained"]
    out: dict[str, Any] = {}
    for budget, target in zip(BUDGETS, ("within_1_point", "above_by_more_than_std"), strict=True):
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


# ----------------------------------------------------------------------------- run


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


def _run(raw: dict[str, Any], storage: Path, stop: Any = None) -> Path:
    from hiersearch.search.driver import run_search
    from hiersearch.search.space import parse_space

    load = [round(x, 2) for x in os.getloadavg()]
    start = time.time()
    path = run_search(parse_space(raw, raw["name"]), storage=str(storage), verbose=0, stop=stop)
    print(f"[search_efficiency] {raw['name']}: {time.time() - start:.0f} s, load at start "
          f"{load}", flush=True)
    return Path(path)


def _check_kept(path: Path, wanted: dict[str, Any], flag: str) -> list[dict[str, Any]]:
    """The trials of a kept experiment run with the space `wanted`, or SystemExit naming
    `flag` and the section that differs."""
    meta = json.loads((path / "hiersearch.json").read_text())
    for section in ("data", "trial", "search", "assignment"):
        if meta["space"].get(section) != wanted[section]:
            raise SystemExit(f"{flag} {path}: another experiment ({section} differs)")
    return read_trials(path)


def _check_grid(path: Path, setup: Setup) -> Path:
    """A finished grid experiment of this setup, or SystemExit saying why not."""
    trials = _check_kept(path, grid_space(setup), "--grid-from")
    unfinished = [t["trial"] for t in trials if not any(r.get(FINAL) == 1 for r in t["reports"])]
    size = len(setup.grid_lrs) * len(setup.grid_dropouts) * len(setup.grid_variants or "12345")
    if len(trials) != size or unfinished:
        raise SystemExit(f"--grid-from {path}: {len(trials)} trials, unfinished {unfinished}")
    return path


def _check_search(path: Path, setup: Setup, budget_epochs: int) -> Path:
    """A search experiment of this setup that trained the grid's epochs, or SystemExit."""
    trials = _check_kept(path, search_space(setup), "--search-from")
    trained = len(epoch_reports(trials))
    if trained < budget_epochs:
        raise SystemExit(f"--search-from {path}: {trained} epochs trained, the grid's "
                         f"{budget_epochs} are needed")
    return path


def run(
    setup: Setup, storage: Path, grid_from: Path | None = None, search_from: Path | None = None
) -> dict[str, Any]:
    import ray

    ray_init(num_cpus=2)
    out: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    try:
        grid_dir = _check_grid(grid_from, setup) if grid_from else _run(grid_space(setup), storage)
        grid_trials = read_trials(grid_dir)
        grid = arm_summary(grid_trials)
        grid_choice = describe(choice_at(epoch_reports(grid_trials), float("inf")), grid_trials)
        if search_from:
            search_dir = _check_search(search_from, setup, grid["epochs"])
        else:
            search_dir = _run(search_space(setup), storage, compute_budget(grid["epochs"]))
        search_trials = read_trials(search_dir)
        search = arm_summary(search_trials)
        epochs = epoch_reports(search_trials)
        choices = {}
        for b in BUDGETS:
            choice = choice_at(epochs, b * grid["epochs"])
            choices[f"{b:.2f}"] = describe(choice, search_trials) if choice else None
        retrained: dict[str, dict[str, Any]] = {}
        for label, choice in [("grid", grid_choice), *choices.items()]:
            if choice is None:
                continue
            key = json.dumps(choice["config"], sort_keys=True)
            if key not in retrained:
                name = f"retrain-{label.replace('.', '_')}"
                retrained[key] = seed_scores(_run(retrain_space(choice["config"], setup, name),
                                                  storage))
            choice["retrained"] = retrained[key]
        out.update(
            grid={**grid, "choice": grid_choice, "from": str(grid_from) if grid_from else None},
            search={**search, "choices": choices,
                    "from": str(search_from) if search_from else None,
                    "compute_ratio_epochs": search["epochs"] / grid["epochs"],
                    "compute_ratio_training_s": search["training_s"] / grid["training_s"]},
        )
        out["verdicts"] = verdicts(grid_choice, choices)
    finally:
        ray.shutdown()
    out["ended"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke version: tiny everything, figures say nothing")
    parser.add_argument("--json", default=None, help="also write the result here")
    parser.add_argument("--keep", default=None,
                        help="keep the experiments in this directory (default: a temp dir)")
    parser.add_argument("--grid-from", default=None,
                        help="a finished grid experiment of the same setup: not run again")
    parser.add_argument("--search-from", default=None,
                        help="a search experiment of the same setup that trained the grid's "
                        "epochs: not run again (with --grid-from, only the re-training runs)")
    args = parser.parse_args(argv)
    setup_env()
    setup = QUICK if args.quick else FULL
    storage = Path(args.keep or tempfile.mkdtemp(prefix="hiersearch-bench-search-"))
    try:
        result = run(
            setup,
            storage,
            Path(args.grid_from) if args.grid_from else None,
            Path(args.search_from) if args.search_from else None,
        )
    finally:
        if not args.keep:
            shutil.rmtree(storage, ignore_errors=True)
    out = {"machine": machine(), "quick": args.quick, "setup": setup.__dict__, **result}
    emit("search_efficiency", out, args.json)


if __name__ == "__main__":
    main()
