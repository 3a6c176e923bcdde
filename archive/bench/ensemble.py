"""The ensemble of an experiment's trials and baseline (report/ensemble.py) against its best
trial and the baseline, on an experiment a search already left behind (BENCHMARKS 15).

Fits the experiment's ensemble as `hiersearch leaderboard EXP --ensemble` does (both
selections, written as ensemble.json), timed: reading the members' scores, and the selection
alone. Then the same members under other normalizations, for the record of why min-max per
document is the one kept: ranks per document (average rank over ties, scaled to [0, 1]) and
none (raw scores: sigmoid probabilities, the baseline's summed similarities). Also the disk
a trial's `scores.npz` takes.

    python bench/ensemble.py EXPERIMENT [--members M] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: bench._common

from bench._common import load_average  # noqa: E402


def _rank(scores: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    values = np.asarray(scores, dtype=np.float64)
    ranks = rankdata(values, axis=1)  # ties: their average rank
    return ((ranks - 1) / max(values.shape[1] - 1, 1)).astype(np.float32)


def _raw(scores: np.ndarray) -> np.ndarray:
    return np.asarray(scores, dtype=np.float32)


def _rows(experiment: str) -> dict[str, Any]:
    from hiersearch import metrics as M
    from hiersearch.report.experiment import read_meta
    from hiersearch.report.results import (
        STATUS_BASELINE,
        STATUS_TERMINATED,
        experiment_locations,
        load_experiments,
    )

    table = load_experiments([experiment])
    metric = (read_meta(experiment_locations(experiment)[0]) or {}).get("metric", M.DEFAULT_METRIC)
    keys = [*M.rp_level_keys("test", 4), M.rp_micro_key("test"), M.rp_macro_key("test"),
            M.rp_macro_key("dev")]
    done = table[table["status"] == STATUS_TERMINATED].sort_values(metric, ascending=False)
    best = done.iloc[0]
    baseline = table[table["status"] == STATUS_BASELINE].iloc[0]

    def pick(row: Any) -> dict[str, Any]:
        return {k: float(row[k]) for k in keys if k in row and row[k] == row[k]}

    return {
        "trials": len(done),
        "best_trial": {"trial_id": str(best["trial_id"]), "variant": str(best["variant"]),
                       "assignment": str(best["assignment"]), **pick(best)},
        "best_test_trial_macro": float(done[M.rp_macro_key("test")].max()),
        # a dev pass: what keeping a trial's scores adds at its end (the dev split again)
        "dev_eval_s_median": float(done[M.eval_seconds_key("dev")].median()),
        "baseline": {"name": str(baseline["variant"]), **pick(baseline)},
    }


def _normalizations(experiment: str, members: int) -> dict[str, Any]:
    """Test and dev macro of both selections under each normalization, same members."""
    from hiersearch import metrics as M
    from hiersearch.report import ensemble as E
    from hiersearch.report.baseline import gold_levels
    from hiersearch.search import members as S

    candidates, metric, _ = S.member_candidates(experiment, members)
    corpus = S._experiment_corpus(experiment)
    golds = {s: gold_levels([d.labels for d in corpus.splits[s]], corpus.hierarchy.label_index())
             for s in S.SPLITS}
    found = [(c.member, S._trial_scores(c.member, corpus)) for c in candidates]
    baseline = S._baseline_scores(experiment, corpus)
    if baseline is not None:
        found.append(baseline)
    scores = {s: [levels[s] for _, levels in found] for s in S.SPLITS}
    # min-max of the trials' logits instead of their sigmoid probabilities
    from hiersearch.trial import checkpoint

    slices = S._level_slices(corpus.hierarchy.label_counts())
    logits = {s: list(scores[s]) for s in S.SPLITS}
    for index, candidate in enumerate(candidates):
        kept_scores = checkpoint.read_scores(Path(str(candidate.member.checkpoint)))
        for s in S.SPLITS:
            logits[s][index] = [kept_scores[s][:, part] for part in slices]
    out: dict[str, Any] = {"fit_seconds_20_members": _timed_20(found, scores, golds, metric)}
    kept = E.normalize
    for name, function, inputs in (("minmax", kept, scores), ("minmax_logits", kept, logits),
                                   ("rank", _rank, scores), ("none", _raw, scores)):
        E.normalize = function
        try:
            for mode in E.MODES:
                fitted = E.fit_ensemble([m for m, _ in found], inputs, golds, mode=mode,
                                        metric=metric)
                out[f"{name}/{mode}"] = {
                    "dev_macro": fitted.metrics[M.rp_macro_key("dev")],
                    "test_macro": fitted.metrics[M.rp_macro_key("test")],
                    "members_used": len(fitted.used()),
                }
        finally:
            E.normalize = kept
    return out


def _timed_20(found: list, scores: dict, golds: dict, metric: str) -> dict[str, float]:
    """Both selections' seconds over 20 trial members and the baseline: the experiment's
    trials repeated to 20 (the same arrays, so the same cost as 20 distinct ones)."""
    from hiersearch.report import ensemble as E

    trials = [i for i, (m, _) in enumerate(found) if m.kind == E.KIND_TRIAL]
    rest = [i for i, (m, _) in enumerate(found) if m.kind != E.KIND_TRIAL]
    picked = [trials[i % len(trials)] for i in range(20)] + rest
    members = [E.EnsembleMember(E.KIND_TRIAL, str(n), "x", None) for n in range(20)]
    members += [found[i][0] for i in rest]
    tiled = {s: [scores[s][i] for i in picked] for s in scores}
    out = {}
    for mode in E.MODES:
        started = time.perf_counter()
        E.fit_ensemble(members, tiled, golds, mode=mode, metric=metric)
        out[mode] = round(time.perf_counter() - started, 2)
    return out


def _float16(experiment: str, members: int) -> dict[str, Any]:
    """What float16 scores would change: each trial's test macro R-Precision from its kept
    float32 logits against the same logits rounded to float16 (near-ties may reorder)."""
    from hiersearch import metrics as M
    from hiersearch.search import members as S
    from hiersearch.trial import checkpoint

    candidates, _, _ = S.member_candidates(experiment, members)
    corpus = S._experiment_corpus(experiment)
    golds = S._golds(corpus)["test"]
    slices = S._level_slices(corpus.hierarchy.label_counts())
    diffs = []
    for candidate in candidates:
        kept = checkpoint.read_scores(Path(str(candidate.member.checkpoint)))
        if kept is None:
            continue
        full = kept["test"]
        half = full.astype(np.float16).astype(np.float32)
        key = M.rp_macro_key("test")
        exact = M.evaluate(golds, [full[:, s] for s in slices], "test")[key]
        rounded = M.evaluate(golds, [half[:, s] for s in slices], "test")[key]
        diffs.append(abs(exact - rounded))
    return {"trials": len(diffs), "max_abs_test_macro_change": max(diffs, default=0.0),
            "mean_abs_test_macro_change": float(np.mean(diffs)) if diffs else 0.0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment")
    parser.add_argument("--members", type=int, default=20)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    from hiersearch import metrics as M
    from hiersearch.report.ensemble import read_ensemble_file
    from hiersearch.search.members import fit_experiment_ensemble

    load_before = load_average()
    started = time.perf_counter()
    fitted = fit_experiment_ensemble(args.experiment, args.members)
    total = time.perf_counter() - started
    result: dict[str, Any] = {
        "benchmark": "ensemble",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "experiment": args.experiment,
        "command": f"python bench/ensemble.py {args.experiment} --members {args.members}",
        "cpus": os.cpu_count(),
        "load_before": load_before,
        "fit_seconds_total": round(total, 2),
        "fit_seconds_selection": round(fitted.seconds, 2),
        "members_offered": len(fitted.ensemble.members),
        "skipped": [list(s) for s in fitted.skipped],
        **_rows(args.experiment),
    }
    for mode, ensemble in fitted.ensembles.items():
        result[f"ensemble_{mode}"] = {
            "served": mode == fitted.served,
            "members": ensemble.describe(),
            "weights": [list(w) for w in ensemble.weights],
            "member_ids": [m.name for m in ensemble.members],
            **{k: ensemble.metrics[k] for k in
               [*M.rp_level_keys("dev", len(ensemble.weights)), M.rp_macro_key("dev"),
                *M.rp_level_keys("test", len(ensemble.weights)), M.rp_micro_key("test"),
                M.rp_macro_key("test")]},
        }
    sizes = [os.path.getsize(Path(m.checkpoint) / "scores.npz")
             for m in fitted.ensemble.members if m.checkpoint]
    result["scores_npz_mb_per_trial"] = round(float(np.mean(sizes)) / 1e6, 2) if sizes else None
    result["normalizations"] = _normalizations(args.experiment, args.members)
    result["float16_scores"] = _float16(args.experiment, args.members)
    result["load_after"] = load_average()
    assert read_ensemble_file(args.experiment) is not None
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
