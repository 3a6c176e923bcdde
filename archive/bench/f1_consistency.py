"""The F1 cost or gain of label sets that respect the hierarchy (`hiersearch predict`'s
`--consistency drop|add|none`), on exported models of a trained experiment.

For each model directory (written by `hiersearch export`) and split (dev, test): the model
scores the split's documents as `hiersearch predict` does (`ExportedModel.scores`), each level
is thresholded at the export's thresholds (tuned on dev, so dev is in-sample for them and test
is not), and the label sets are made consistent by each rule (`serve/consistency.py`). The
figures: micro- and macro-F1 per level and overall (`metrics/f1.py`) of each rule, the labels
the rule dropped or added per document and the share of them that is gold (against the share
of all thresholded labels that is: their precision), and the F1 the trial itself reported for
`none` (the same numbers, recomputed: a check that this script thresholds as the trial did).

Gold: each document's labels as the corpus holds them (already with every ancestor, as the
trial trained on them), cut to the model's levels.

    python archive/bench/f1_consistency.py MODEL_DIR... [--splits dev,test] [--quick] [--json OUT]

`--quick` scores the first 8 documents of each split (a smoke run).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))  # _common
from _common import emit, machine, setup_env  # noqa: E402

from hiersearch.report.baseline import gold_levels  # noqa: E402

RULES = ("none", "drop", "add")
QUICK_DOCS = 8


def rule_figures(
    golds: Sequence[np.ndarray], scores: Sequence[np.ndarray], rule: Any, split: str
) -> dict[str, Any]:
    """F1 of one rule's label sets, and how many labels it changed per document."""
    from hiersearch import metrics as M

    sets, added = rule.apply(scores)
    raw = M.label_sets(scores, rule.thresholds)
    docs = max(1, golds[0].shape[0])
    figures: dict[str, Any] = dict(M.f1_of_label_sets(golds, sets, split))
    figures["labels_per_doc"] = sum(int(s.sum()) for s in sets) / docs
    dropped = [r & ~s for r, s in zip(raw, sets, strict=True)]
    figures["dropped_per_doc"] = sum(int(d.sum()) for d in dropped) / docs
    figures["dropped_gold_share"] = _share(dropped, golds)
    figures["added_per_doc"] = sum(int(a.sum()) for a in added) / docs
    figures["added_gold_share"] = _share(added, golds)
    figures["raw_precision"] = _share(raw, golds)
    return figures


def _share(labels: Sequence[np.ndarray], golds: Sequence[np.ndarray]) -> float:
    """The share of `labels` (per level, bool) that are gold (NaN if there is none)."""
    total = sum(int(a.sum()) for a in labels)
    hits = sum(int((a & g).sum()) for a, g in zip(labels, golds, strict=True))
    return hits / total if total else math.nan


def measure_model(model_dir: str, splits: Sequence[str], limit: int | None) -> dict[str, Any]:
    from hiersearch.data.corpus import load_corpus_dir
    from hiersearch.serve.consistency import LabelRule, ParentIndex
    from hiersearch.serve.model import ExportedModel

    model = ExportedModel.load(model_dir)
    if model.thresholds is None:
        raise SystemExit(f"{model_dir}: the export has no thresholds (an older trial)")
    corpus = load_corpus_dir(model.config.corpus)
    if model.config.levels is not None:
        corpus = corpus.truncate(*model.config.levels)
    levels = list(range(1, model.num_levels + 1))
    parents = ParentIndex.build(model.hierarchy(), model.label_index, levels)
    out: dict[str, Any] = {
        "model": model_dir,
        "trial_id": model.info.get("trial_id"),
        "variant": model.info.get("variant"),
        "assignment": model.info.get("assignment"),
        "thresholds": model.thresholds,
        "splits": {},
    }
    for split in splits:
        docs = corpus.splits[split][:limit]
        scores = model.scores([d.text for d in docs])
        golds = gold_levels([d.labels for d in docs], model.label_index)
        figures = {"docs": len(docs), "trial_reported": _reported(model.info, split)}
        for name in RULES:
            rule = LabelRule(tuple(model.thresholds), name, parents)
            figures[name] = rule_figures(golds, scores, rule, split)
        out["splits"][split] = figures
    return out


def _reported(info: dict[str, Any], split: str) -> dict[str, Any]:
    """The trial's own F1 figures of `split` (model.json's metrics)."""
    metrics = info.get("metrics") or {}
    return {k: v for k, v in metrics.items() if k.startswith(f"{split}/f1_")}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="model directories (hiersearch export)")
    parser.add_argument("--splits", default="dev,test")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_DOCS} documents a split")
    parser.add_argument("--json", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    setup_env()
    limit = QUICK_DOCS if args.quick else None
    splits = [s for s in args.splits.split(",") if s]
    result = {
        "machine": machine(),
        "models": [measure_model(m, splits, limit) for m in args.models],
        "machine_after": machine(),
    }
    emit("f1_consistency", result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
