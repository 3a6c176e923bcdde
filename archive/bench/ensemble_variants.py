"""Ensemble selection variants on an experiment a search left behind (BENCHMARKS 15 (c)): the
members' kept scores fitted under Caruana et al. 2006's refinements (sorted initialization,
bagged selection) and with a dense k-NN member (cosine k-NN of the frozen encoder's
mean-pooled vectors, the TF-IDF baseline's vote: report/dense_knn.py's member, k chosen on
dev), per level and global.

Each variant is reported by its dev macro R-Precision (what the selection maximized, biased
towards the variants that fit dev hardest), its dev cross-validated macro R-Precision
(`report.ensemble.cross_validated`: the selection fitted on one half of dev, measured on the
other, both ways, averaged: a dev figure that a choice between variants can be made on), and
its test figures (per level, micro, macro), which take no part in any choice.

    python archive/bench/ensemble_variants.py EXPERIMENT [--members M] [--bags B]
        [--dense-sweep] [--json OUT]

`--dense-sweep` first scores the dense k-NN alone for layers, poolings and k (dev picks one).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: bench._common

from bench._common import load_average  # noqa: E402

SPLITS = ("dev", "test")
# (name, sorted initialization, bags): plain is report/ensemble.py's default
VARIANTS = (("plain", False, 0), ("sorted", True, 0), ("bagged", False, -1),
            ("sorted+bagged", True, -1))
# The dense k-NN sweep: (name, layers averaged, pooled view: 0 [CLS], 1 mean)
DENSE_VECTORS = (("mean_L6", (6,), 1), ("cls_L6", (6,), 0), ("mean_L5", (5,), 1),
                 ("mean_L4-6", (4, 5, 6), 1), ("mean_L1-6", (1, 2, 3, 4, 5, 6), 1))
DENSE_K = (10, 20, 50)


def members_of(experiment: str, top: int) -> tuple[list, dict, dict, str, Any, tuple]:
    """The fit's members (the best `top` trials and the baseline), their raw scores per split
    and level, the golds, the search metric, the corpus, and the dense k-NN member with its
    scores: as search/members.py reads them (the dense one computed and kept if missing)."""
    from hiersearch.search import members as S

    candidates, metric, _ = S.member_candidates(experiment, top)
    corpus = S._experiment_corpus(experiment)
    golds = S._golds(corpus)
    found = [(c.member, S._trial_scores(c.member, corpus)) for c in candidates]
    baseline = S._baseline_scores(experiment, corpus)
    if baseline is not None:
        found.append(baseline)
    scores = {s: [levels[s] for _, levels in found] for s in SPLITS}
    dense = S._dense_member(experiment, corpus, candidates, golds)
    return [m for m, _ in found], scores, golds, metric, corpus, dense


def pooled_vectors(experiment: str) -> dict[str, np.ndarray]:
    """The feature cache's pooled vectors [layers, docs, 2, hidden] per split (train, dev,
    test) of the experiment's corpus: the cache its head-only trials built."""
    import glob

    from hiersearch.report.experiment import read_meta

    where = (read_meta(experiment) or {})["corpus"]
    found = sorted(glob.glob(f"{where}/.hiersearch-cache/features-*/pooled/train.npy"))
    if len(found) != 1:
        raise SystemExit(f"need one feature cache under {where}, found {found}")
    directory = Path(found[0]).parent
    return {s: np.load(directory / f"{s}.npy", mmap_mode="r") for s in ("train", *SPLITS)}


def dense_vectors(pooled: np.ndarray, layers: Sequence[int], view: int) -> np.ndarray:
    """Each document's vector: the chosen layers' pooled views, each L2-normalized, averaged
    and normalized again (cosine similarity is then a dot product)."""
    total = 0
    for layer in layers:
        vectors = np.asarray(pooled[layer - 1, :, view], np.float32)
        total = total + vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return total / np.linalg.norm(total, axis=1, keepdims=True)


def dense_scores(pooled: dict, corpus: Any, layers: Sequence[int], view: int, k: int) -> dict:
    """The dense k-NN member's scores per split and level: the summed cosine similarity of
    the `k` most similar training documents that carry each label."""
    from hiersearch.report.baseline import gold_levels, knn_scores

    targets = [g.astype(np.float32) for g in gold_levels(
        [d.labels for d in corpus.splits["train"]], corpus.hierarchy.label_index())]
    train = dense_vectors(pooled["train"], layers, view)
    out = {}
    for split in SPLITS:
        similarity = dense_vectors(pooled[split], layers, view) @ train.T
        out[split] = [s.astype(np.float32) for s in knn_scores(similarity, targets, k)]
    return out


def sweep(pooled: dict, corpus: Any, golds: dict) -> dict[str, Any]:
    """The dense k-NN alone, every vector and k: dev and test macro R-Precision."""
    from hiersearch import metrics as M

    out = {}
    for name, layers, view in DENSE_VECTORS:
        for k in DENSE_K:
            scores = dense_scores(pooled, corpus, layers, view, k)
            row = {}
            for split in SPLITS:
                row.update(M.evaluate(golds[split], scores[split], split))
            out[f"{name}/k{k}"] = {key: row[key] for key in (
                M.rp_macro_key("dev"), M.rp_macro_key("test"),
                *M.rp_level_keys("test", len(golds["test"])))}
            print(f"dense {name} k={k}: {out[f'{name}/k{k}']}", file=sys.stderr, flush=True)
    return out


def evaluate_variant(members: list, scores: dict, golds: dict, metric: str, mode: str,
                     sorted_init: bool, bags: int) -> dict[str, Any]:
    """One variant: fitted on all of dev (dev and test figures) and 2-fold on dev (the
    held-out half's macro, averaged over both ways)."""
    from hiersearch import metrics as M
    from hiersearch.report.ensemble import cross_validated, fit_ensemble

    how = {"mode": mode, "metric": metric, "sorted_init": sorted_init, "bags": bags}
    started = time.perf_counter()
    fitted = fit_ensemble(members, scores, golds, **how)
    seconds = time.perf_counter() - started
    levels = len(golds["dev"])
    return {
        "dev_macro": fitted.metrics[M.rp_macro_key("dev")],
        "dev_cv_macro": cross_validated(members, scores["dev"], golds["dev"], **how),
        "test_levels": [fitted.metrics[k] for k in M.rp_level_keys("test", levels)],
        "test_micro": fitted.metrics[M.rp_micro_key("test")],
        "test_macro": fitted.metrics[M.rp_macro_key("test")],
        "members_used": len(fitted.used()),
        "fit_seconds": round(seconds, 2),
        "weights": fitted.describe(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment")
    parser.add_argument("--members", type=int, default=20)
    parser.add_argument("--bags", type=int, default=20)
    parser.add_argument("--dense-sweep", action="store_true")
    parser.add_argument("--variants", default=",".join(v[0] for v in VARIANTS))
    parser.add_argument("--pools", default="trials+tfidf,trials+tfidf+dense",
                        help="the member pools to fit (comma-separated)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    from hiersearch.report.ensemble import MODES

    result: dict[str, Any] = {
        "benchmark": "ensemble_variants", "experiment": args.experiment,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": " ".join(["python archive/bench/ensemble_variants.py", *sys.argv[1:]]),
        "cpus": os.cpu_count(), "load_before": load_average(), "members": args.members,
        "bags": args.bags,
    }
    members, scores, golds, metric, corpus, (dense_member, dense) = members_of(
        args.experiment, args.members)
    if args.dense_sweep:
        result["dense_alone"] = sweep(pooled_vectors(args.experiment), corpus, golds)
    from hiersearch.report.dense_knn import read_dense

    result["dense_member"] = read_dense(args.experiment)
    pools = {
        "trials+tfidf": (members, scores),
        "trials+tfidf+dense": ([*members, dense_member],
                               {s: [*scores[s], dense[s]] for s in SPLITS}),
    }
    chosen = [v for v in VARIANTS if v[0] in args.variants.split(",")]
    for pool, (pool_members, pool_scores) in pools.items():
        if pool not in args.pools.split(","):
            continue
        for variant, sorted_init, bags in chosen:
            for mode in MODES:
                key = f"{pool}/{variant}/{mode}"
                result[key] = evaluate_variant(
                    pool_members, pool_scores, golds, metric, mode, sorted_init,
                    args.bags if bags < 0 else bags)
                brief = {k: v for k, v in result[key].items() if k != "weights"}
                print(f"{key}: {json.dumps(brief)}", file=sys.stderr, flush=True)
    result["load_after"] = load_average()
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
