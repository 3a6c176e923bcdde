"""MO-ASHA against the unpruned multi-objective search: the `pareto` preset run twice on the main
job's corpus, once as shipped (every trial runs its 3 epochs) and once with `scheduler: asha`
(MO-ASHA, grace period 1, reduction factor 2: rungs at epochs 1 and 2), same sampler seed and
trials. Compared: the Pareto fronts (their points, and the hypervolume they dominate) and the
epochs each arm trained.

    python bench/pareto_pruning.py [--quick] [--json OUT] [--keep DIR]
        [--unpruned-from DIR] [--pruned-from DIR]

`--unpruned-from DIR` / `--pruned-from DIR` read an arm from a finished experiment of the same
setup (an earlier run's `--keep DIR/unpruned`, `DIR/mo-asha`) instead of running it again.

Compute = epochs trained (one pass over the same 630 training documents), as in
search_efficiency.py: the machine is shared and an epoch's seconds follow its load, its work
does not. Both arms run through `search.run_search` on one local Ray with 2 CPUs, two 1-CPU
trials at a time. The five enqueued assignments come first in both; after that TPE samples
from what it was told, and a trial MO-ASHA stops counts with its last epoch's metrics (as with
one-metric ASHA), so the arms' later trials differ.

Hypervolume: the area (dev macro R-Precision x encoder layers) that the front dominates,
from the reference point (R-Precision 0, one layer more than the encoder has): every point
of the space improves on it.

On an idle 2-core machine the unpruned arm takes ~12 minutes (BENCHMARKS.md section 5).
`--quick` (a random-init tiny:4x32, 90 docs, 4 trials) is a smoke run of the script only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, machine, ray_init, setup_env  # noqa: E402
from search_efficiency import epoch_reports, read_trials  # noqa: E402

from hiersearch import metrics as M  # noqa: E402 (the keys only: no Ray, no torch)

OBJECTIVES = ((M.rp_macro_key("dev"), "max"), (M.COST_ENCODER_LAYERS, "min"))
ARMS = {
    "unpruned": {"scheduler": "none"},
    "mo-asha": {"scheduler": "asha", "grace_period": 1, "reduction_factor": 2},
}
QUICK = {
    "data": {"docs": 90, "max_leaves": 30},
    "trial": {"model": "tiny:4x32", "epochs": 2},
    "tune": {"num_samples": 4},
}


def arm_space(arm: str, quick: bool = False) -> dict[str, Any]:
    """The pareto preset with the arm's scheduler (and the quick overrides)."""
    from hiersearch.search.space import preset_path

    raw = yaml.safe_load(preset_path("pareto").read_text())
    raw["name"] = arm
    raw["tune"].update(ARMS[arm])
    if quick:
        for section, values in QUICK.items():
            raw[section].update(values)
        raw["assignment"]["variants"] = ["L1:1|L2:2|L3:3", "FLAT"]
    return raw


def hypervolume(points: np.ndarray, reference: tuple[float, float]) -> float:
    """The area two minimized metrics' `points` dominate up to `reference` (exact in 2-D)."""
    kept = sorted((x, y) for x, y in points if x < reference[0] and y < reference[1])
    area, ceiling = 0.0, reference[1]
    for x, y in kept:  # by the first metric; each point adds the strip below the last one
        if y < ceiling:
            area += (reference[0] - x) * (ceiling - y)
            ceiling = y
    return area


def arm_result(path: Path, num_layers: int) -> dict[str, Any]:
    """An arm's trials (status, epochs, metrics, Pareto mark), front, hypervolume and epochs."""
    from hiersearch.metrics.pareto import minimized
    from hiersearch.report import leaderboard as lb
    from hiersearch.report.results import load_experiments

    table = lb.mark_pareto(load_experiments([str(path)]))
    trained = epochs_per_trial(read_trials(path))
    keys = [metric for metric, _ in OBJECTIVES]
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
        "hypervolume_reference": {"dev/rp_macro": 0.0, "cost/encoder_layers": reference[1]},
    }


def _plain(value: Any) -> Any:
    """A table cell as JSON: pandas' missing values as None, numpy numbers as Python's."""
    import pandas as pd

    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    return value.item() if isinstance(value, np.generic) else value


def epochs_per_trial(trials: list[dict[str, Any]]) -> dict[str, int]:
    """Trial directory name -> epochs it trained (its final report is not an epoch)."""
    counts: dict[str, int] = {}
    for epoch in epoch_reports(trials):
        counts[epoch["trial"]] = counts.get(epoch["trial"], 0) + 1
    return counts


def _run(raw: dict[str, Any], storage: Path) -> tuple[Path, dict[str, Any]]:
    from hiersearch.search.driver import run_search
    from hiersearch.search.space import parse_space

    load = [round(x, 2) for x in os.getloadavg()]
    start = time.time()
    path = run_search(parse_space(raw, raw["name"]), storage=str(storage), verbose=0)
    seconds = time.time() - start
    print(f"[pareto_pruning] {raw['name']}: {seconds:.0f} s, load at start {load}", flush=True)
    return Path(path), {"seconds": round(seconds), "load_at_start": load,
                        "load_at_end": [round(x, 2) for x in os.getloadavg()]}


def run(quick: bool, storage: Path, kept: dict[str, Path | None]) -> dict[str, Any]:
    import ray

    from hiersearch.report.experiment import read_meta

    ray_init(num_cpus=2)
    out: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    try:
        for arm in ARMS:
            path, timing = (kept[arm], {"from": str(kept[arm])}) if kept[arm] else _run(
                arm_space(arm, quick), storage)
            num_layers = int((read_meta(str(path)) or {}).get("num_layers", 6))
            out[arm] = {**timing, **arm_result(path, num_layers)}
    finally:
        ray.shutdown()
    unpruned, pruned = out["unpruned"], out["mo-asha"]
    out["epochs_ratio"] = pruned["epochs"] / unpruned["epochs"]
    out["hypervolume_ratio"] = pruned["hypervolume"] / unpruned["hypervolume"]
    out["same_front_points"] = [p[:2] for p in pruned["front"]] == [
        p[:2] for p in unpruned["front"]]
    out["ended"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: figures say nothing")
    parser.add_argument("--json", default=None, help="also write the result here")
    parser.add_argument("--keep", default=None, help="keep the experiments in this directory")
    parser.add_argument("--unpruned-from", default=None, help="a finished unpruned arm")
    parser.add_argument("--pruned-from", default=None, help="a finished MO-ASHA arm")
    args = parser.parse_args(argv)
    setup_env()
    storage = Path(args.keep or tempfile.mkdtemp(prefix="hiersearch-bench-pareto-"))
    kept = {"unpruned": args.unpruned_from, "mo-asha": args.pruned_from}
    try:
        result = run(args.quick, storage, {k: Path(v) if v else None for k, v in kept.items()})
    finally:
        if not args.keep:
            shutil.rmtree(storage, ignore_errors=True)
    emit("pareto_pruning", {"machine": machine(), "quick": args.quick, **result}, args.json)


if __name__ == "__main__":
    main()
