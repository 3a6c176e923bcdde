"""Search efficiency: TPE + ASHA over the layer-wise space against the exhaustive paper grid.

Both run through `search.run_search` (Ray Tune + Ray Train, one local Ray with 2 CPUs, one
1-CPU worker per trial, two trials at a time) on the same SYNTHETIC EuroVoc corpus with the same
encoder, epochs and seed. Two setups (`--setup`): `tiny`, described here, and `minilm`, the
packaged pretrained MiniLM-L6 with a grid of {5e-5, 1e-4, 2e-4} x dropout {0, 0.1} and the
layerwise preset's lr range [3e-5, 3e-4] (see `MINILM`; ~35 minutes on 2 cores):

- grid: the paper's grid, 5 named variants x 3 learning rates x 2 dropouts = 30 trials. The
  paper's rates for a pretrained BERT-base are {2e-5, 3e-5, 5e-5}; a random-init tiny encoder
  needs ~100x that, so the grid is {2e-3, 3e-3, 5e-3} (same 2:3:5 shape), dropout {0, 0.1};
- search: the `layerwise` preset's space (monotone layer-to-level assignments with the named
  variants enqueued first, lr loguniform [1e-3, 1e-2] (the preset's [2e-5, 3e-4] scaled the
  same way, capped where a tiny transformer still trains), dropout, batch size, warm-up, loss
  weighting), TPE + ASHA (grace 1 epoch, reduction factor 2), a fixed trial budget.

Per trial (from its result.json): the best dev macro R-Precision it reported (max over its
reports, so trials ASHA stopped count with what they reached), the epochs it trained, its
training-loop seconds (each epoch's samples / its samples/s) and its wall time (time_total_s).
Compute = total training-loop seconds (also given: epochs trained, which no machine load can
blur, and trial wall time, which includes every trial's fixed start-up cost).

Target: search best >= grid best - 0.01 (1 RP point) at <= 35% of the grid's compute.

    python bench/search_efficiency.py [--quick] [--setup tiny|minilm] [--json OUT]

`--search-trials N` sets the search's budget; `--grid-from EARLIER.json` compares a search with
the grid of an earlier run of the same setup instead of running the grid again.

The tiny run (400 docs, tiny:6x64, 64 tokens, 2 epochs, 30 + 10 trials) takes ~15-20 minutes
on a 2-core machine, mostly Ray's fixed cost per trial; --quick (90 docs, tiny:4x32, 1 epoch,
a 2-trial grid, 2 search trials) is a smoke version whose figures say nothing about the
target. Even it takes ~1.5 minutes, not one: every Ray trial has ~20-40 s of fixed cost on
2 cores (see bench/ray_overhead.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, machine, ray_init, setup_env, verdict  # noqa: E402

METRIC = "dev/rp_macro"
SPS = "train/samples_per_s"


@dataclass(frozen=True)
class Setup:
    model: str
    docs: int
    max_leaves: int
    epochs: int
    max_length: int
    batch_size: int
    grid_variants: tuple[str, ...] | None  # None: all five
    grid_lrs: tuple[float, ...]
    grid_dropouts: tuple[float, ...]
    search_trials: int
    lr_range: tuple[float, float]
    head_lr: float | None = None  # the heads' own rate (null: lr)


# random-init tiny encoder: cheap, but every configuration ends near the label prior
FULL = Setup("tiny:6x64", 400, 100, 2, 64, 16, None, (2e-3, 3e-3, 5e-3), (0.0, 0.1), 10,
             (1e-3, 1e-2))
# the packaged pretrained MiniLM-L6 at the quick preset's rates, on a corpus where the
# variants differ: the paper's grid shape around the quick preset's lr (1e-4; 2e-4 is where
# MiniLM starts to collapse), the layerwise preset's lr range
MINILM = Setup("minilm", 600, 200, 2, 64, 16, None, (5e-5, 1e-4, 2e-4), (0.0, 0.1), 10,
               (3e-5, 3e-4), head_lr=3e-2)
QUICK = Setup("tiny:4x32", 90, 30, 1, 64, 16, ("FLAT", "LAST-THREE"), (3e-3,), (0.1,), 2,
              (1e-3, 1e-2))
SETUPS = {"tiny": FULL, "minilm": MINILM}


def _data(s: Setup) -> dict[str, Any]:
    return {"hierarchy": "eurovoc", "docs": s.docs, "seed": 1, "max_leaves": s.max_leaves}


def _trial(s: Setup) -> dict[str, Any]:
    return {
        "model": s.model,
        "max_length": s.max_length,
        "epochs": s.epochs,
        "batch_size": s.batch_size,
        "warmup_ratio": 0.1,
        "patience": s.epochs,  # early stopping is the schedulers' business here
        "num_workers": 1,
        "cpus_per_worker": 1,
        "util_docs": 0,  # utilization is the same cost for both: left out to save time
        "keep_checkpoints": 1,
        "eval_batch_size": 64,
        "head_lr": s.head_lr,
    }


def grid_space(s: Setup) -> dict[str, Any]:
    assignment: dict[str, Any] = {"space": "variants"}
    if s.grid_variants:
        assignment["variants"] = list(s.grid_variants)
    return {
        "name": "grid",
        "data": _data(s),
        "trial": _trial(s),
        "search": {
            "lr": {"type": "categorical", "choices": list(s.grid_lrs)},
            "dropout": {"type": "categorical", "choices": list(s.grid_dropouts)},
        },
        "assignment": assignment,
        "tune": {"algorithm": "grid", "metric": METRIC, "mode": "max", "seeds": 1},
    }


def search_space(s: Setup) -> dict[str, Any]:
    return {
        "name": "search",
        "data": _data(s),
        "trial": _trial(s),
        "search": {
            "lr": {"type": "loguniform", "low": s.lr_range[0], "high": s.lr_range[1]},
            "dropout": {"type": "categorical", "choices": [0.0, 0.1]},
            # the grid's batch size first: enqueued variants run at the first choice
            "batch_size": {"type": "categorical", "choices": [16, 8, 32]},
            "warmup_ratio": {"type": "uniform", "low": 0.0, "high": 0.2},
            "loss_weighting": {"type": "categorical", "choices": ["proportional", "uniform"]},
        },
        "assignment": {"space": "monotone", "enqueue_variants": True, "include_flat": True},
        "tune": {
            "algorithm": "tpe",
            "num_samples": s.search_trials,
            "metric": METRIC,
            "mode": "max",
            "scheduler": "asha",
            "grace_period": 1,
            "reduction_factor": 2,
            "sampler_seed": 0,
        },
    }


# ----------------------------------------------------------------------------- accounting


def trial_summary(lines: list[dict[str, Any]], train_docs: int, base_batch: int) -> dict[str, Any]:
    """One trial's best dev metric, epochs trained, training-loop and wall seconds."""
    epochs = [r for r in lines if r.get(SPS)]
    batch = int((lines[0].get("config") or {}).get("batch_size", base_batch)) if lines else 0
    epoch_samples = math.ceil(train_docs / batch) * batch if batch else 0
    values = [float(r[METRIC]) for r in lines if isinstance(r.get(METRIC), (int, float))]
    return {
        "best_dev": max(values) if values else float("nan"),
        "epochs": len(epochs),
        "training_s": sum(epoch_samples / float(r[SPS]) for r in epochs),
        "wall_s": float(lines[-1].get("time_total_s", 0.0)) if lines else 0.0,
        "finished": any(r.get("trial/final") == 1 for r in lines),
        "assignment": next((r["trial/assignment"] for r in lines if "trial/assignment" in r),
                           None),
        "params": {k: v for k, v in (lines[0].get("config") or {}).items()
                   if not k.startswith("assign")} if lines else {},
    }


def experiment_summary(path: str | Path, train_docs: int, base_batch: int) -> dict[str, Any]:
    """Totals of an experiment directory (one result.json per trial)."""
    trials = []
    for result in sorted(Path(path).glob("trial_*/result.json")):
        lines = [json.loads(x) for x in result.read_text().splitlines() if x.strip()]
        trials.append(trial_summary(lines, train_docs, base_batch))
    best = max(trials, key=lambda t: t["best_dev"], default=None)
    return {
        "trials": len(trials),
        "best_dev_rp_macro": best["best_dev"] if best else float("nan"),
        "best_trial": best,
        "training_s": sum(t["training_s"] for t in trials),
        "epochs": sum(t["epochs"] for t in trials),
        "trial_wall_s": sum(t["wall_s"] for t in trials),
        "stopped_early": sum(1 for t in trials if not t["finished"]),
        "per_trial": trials,
    }


def compare(grid: dict[str, Any], search: dict[str, Any]) -> dict[str, Any]:
    gap = search["best_dev_rp_macro"] - grid["best_dev_rp_macro"]
    compute = search["training_s"] / grid["training_s"]
    within = gap >= -0.01
    return {
        "best_gap_rp_points": 100 * gap,
        "compute_ratio_training_s": compute,
        "compute_ratio_epochs": search["epochs"] / grid["epochs"],
        "compute_ratio_trial_wall_s": search["trial_wall_s"] / grid["trial_wall_s"],
        "target_within_1_point": "MET" if within else "MISSED",
        "target_compute_0.35": verdict(compute, 0.35, higher_is_better=False),
    }


# ----------------------------------------------------------------------------- run


def run(setup: Setup, storage: Path, grid_result: dict[str, Any] | None = None) -> dict[str, Any]:
    """Grid, then search; with `grid_result` (an earlier run's "grid" summary of the same
    setup) only the search runs and is compared with that grid."""
    import ray

    from hiersearch.data.encode import load_encoded
    from hiersearch.search.driver import prepare_data, run_search
    from hiersearch.search.space import parse_space

    grid, search = parse_space(grid_space(setup)), parse_space(search_space(setup))
    data = prepare_data(grid, grid.base_config(), None, os.environ["HIERSEARCH_DATA"])
    train_docs = len(load_encoded(data.encoded_path).splits["train"])
    ray_init(num_cpus=2)
    out: dict[str, Any] = {"train_docs": train_docs, "label_counts": data.label_counts}
    try:
        runs = [("search", search)] if grid_result else [("grid", grid), ("search", search)]
        if grid_result:
            out["grid"] = {**grid_result, "from_an_earlier_run": True}
        for name, space in runs:
            load = [round(x, 2) for x in os.getloadavg()]
            start = time.time()
            path = run_search(space, storage=str(storage), name=name, verbose=0)
            summary = experiment_summary(path, train_docs, setup.batch_size)
            summary["experiment_wall_s"] = time.time() - start
            summary["load_average_at_start"] = load
            out[name] = summary
            print(f"[search_efficiency] {name}: {summary['trials']} trials, best "
                  f"{summary['best_dev_rp_macro']:.4f}, training {summary['training_s']:.0f}s, "
                  f"wall {summary['experiment_wall_s']:.0f}s", flush=True)
    finally:
        ray.shutdown()
    out["comparison"] = compare(out["grid"], out["search"])
    return out


def earlier_grid(path: Path, setup: Setup) -> dict[str, Any] | None:
    """The grid summary of an earlier run's JSON, or None if that run had another setup (the
    search budget aside)."""
    earlier = json.loads(path.read_text())
    this = json.loads(json.dumps(setup.__dict__))  # tuples as lists, as in the file
    if {**earlier.get("setup", {}), "search_trials": 0} != {**this, "search_trials": 0}:
        return None
    return dict(earlier["grid"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke version: tiny everything, figures not comparable")
    parser.add_argument("--setup", choices=sorted(SETUPS), default="tiny",
                        help="tiny: random-init tiny:6x64 (~20 min); minilm: the packaged "
                             "pretrained MiniLM-L6 (~45 min on 2 cores)")
    parser.add_argument("--search-trials", type=int, default=None,
                        help="the search's trial budget (default: the setup's, 10)")
    parser.add_argument("--grid-from", default=None,
                        help="JSON of an earlier run of the same setup: compare with its grid "
                             "instead of running the grid again")
    parser.add_argument("--json", default=None, help="also write the result here")
    args = parser.parse_args(argv)
    setup_env()
    setup = QUICK if args.quick else SETUPS[args.setup]
    if args.search_trials is not None:
        setup = dataclasses.replace(setup, search_trials=args.search_trials)
    grid_result = None
    if args.grid_from:
        grid_result = earlier_grid(Path(args.grid_from), setup)
        if grid_result is None:
            parser.error(f"--grid-from {args.grid_from}: another setup than this run's")
    storage = Path(tempfile.mkdtemp(prefix="hiersearch-bench-search-"))
    try:
        result = run(setup, storage, grid_result)
    finally:
        shutil.rmtree(storage, ignore_errors=True)
    out = {"machine": machine(), "quick": args.quick, "setup": setup.__dict__, **result}
    emit("search_efficiency", out, args.json)


if __name__ == "__main__":
    main()
