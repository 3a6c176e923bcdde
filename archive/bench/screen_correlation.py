"""Does the cheap stage predict the expensive one? The Spearman rank correlation between a
two-stage search's stage-1 (head-only) and stage-2 (fine-tuned) dev macro R-Precision of the
assignments both stages ran, with the scatter as a PNG.

    python archive/bench/screen_correlation.py EXPERIMENT [--metric dev/rp_macro] [--png OUT.png]
        [--json OUT.json]

EXPERIMENT is a finished two-stage experiment directory (`screen/` and `finetune/` in it), e.g.
the one `archive/bench/screen_hpo.yaml` makes:

    hiersearch search --space archive/bench/screen_hpo.yaml --storage runs
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))  # _common
from _common import emit, machine  # noqa: E402


def paired(table: Any, metric: str) -> Any:
    """Per assignment both stages finished: its stage-1 and stage-2 `metric` (stage 2's mean
    over its seeds), one row each."""
    import pandas as pd

    done = table[(table["status"] == "terminated") & table[metric].notna()]
    by_stage = {
        stage: rows.groupby("assignment")[metric].mean() for stage, rows in done.groupby("stage")
    }
    both = pd.concat(
        {"screen": by_stage.get("screen"), "finetune": by_stage.get("finetune")}, axis=1
    ).dropna()
    return both.sort_values("screen", ascending=False)


def correlation(both: Any) -> dict[str, Any]:
    from scipy.stats import spearmanr

    rho, p_value = spearmanr(both["screen"], both["finetune"])
    return {"assignments": len(both), "spearman_rho": float(rho), "p_value": float(p_value)}


def scatter(both: Any, metric: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 5))
    axes.scatter(100 * both["screen"], 100 * both["finetune"])
    for name, row in both.iterrows():
        axes.annotate(str(name), (100 * row["screen"], 100 * row["finetune"]), fontsize=6)
    axes.set_xlabel(f"stage 1, head-only: {metric} (%)")
    axes.set_ylabel(f"stage 2, fine-tuned: {metric} (%)")
    axes.set_title("Does the screen predict the fine-tune?")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from hiersearch.report.results import load_experiments

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment")
    parser.add_argument("--metric", default="dev/rp_macro")
    parser.add_argument("--png", default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    table = load_experiments([args.experiment])
    if "stage" not in table.columns:
        raise SystemExit(f"{args.experiment}: not a two-stage experiment (no stage column)")
    both = paired(table, args.metric)
    result = {"machine": machine(), "metric": args.metric, **correlation(both),
              "pairs": {str(k): {"screen": v["screen"], "finetune": v["finetune"]}
                        for k, v in both.iterrows()}}
    if args.png:
        scatter(both, args.metric, args.png)
    emit("screen_correlation", result, args.json)
    return result


if __name__ == "__main__":
    main()
