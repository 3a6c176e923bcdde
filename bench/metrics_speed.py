"""Metrics are fast: R-Precision at EURLEX57K scale, and the utilization metrics.

1. Per-level + micro R-Precision (`ranking.r_precision` per level and on all levels
   concatenated) and the full `ranking.evaluate` (per level, micro, macro, RP@k, nDCG@k for
   k = 1..10) on 57,000 docs x 7,341 labels (EuroVoc levels 21 / 127 / 567 / 3861 / 2284 / 481),
   random float32 scores and sparse gold labels, all on the compiled kernel (numba); against
   the straightforward per-document loop `ranking.r_precision_reference` (a full sort per row),
   timed on a subsample of rows and scaled linearly to all rows (its cost is the same for every
   row).
2. `utilization.measure_utilization` on 64 docs x 12 layers of a random-init BERT-base-sized
   encoder (hidden 768, 12 heads), sequences of up to 128 tokens (`--util-seq`), split into the
   encoder's forward pass (eager attention, attention maps and hidden states out) and the rest.
3. F1 at thresholds tuned on dev (`f1.tuned_f1`: each level's exact threshold search, then
   micro- and macro-F1 per level and overall) on a EURLEX57K-sized dev set, 5,000 docs x the
   same 7,341 labels, probabilities = sigmoid of the scores above: as they are (a model at the
   label prior: the search must sort nearly every score) and with gold scores + 3 (a trained
   model: the top slice proves the threshold at once); against sorting every score of every
   level (`np.sort`, what a plain exact search would do before anything else), side by side.

Targets: R-Precision per level + micro <= 1 s on 2 cores and >= 40x the reference;
utilization <= 10 s. F1 (no target set): the tuning's CPU time against sorting every score.

    python bench/metrics_speed.py [--quick] [--sections rp,util,f1] [--json OUT]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import alternate, emit, machine, setup_env, verdict  # noqa: E402

EUROVOC_LEVELS = (21, 127, 567, 3861, 2284, 481)  # the paper's EURLEX57K label sets
FULL_DOCS = 57_000


def gold_counts(docs: int, rng: np.random.Generator) -> np.ndarray:
    """Gold labels per document and level [docs, 6], shaped like EURLEX57K with ancestors:
    3..7 specific labels per document spread over the three deepest levels by their size (so
    some documents have none at a level and are skipped there), and fewer, ancestor-like
    labels at the coarse levels (1..2 domains, 1..3 micro-thesauri, 1..4 at level 3)."""
    deep = rng.integers(3, 8, size=docs)
    sizes = np.asarray(EUROVOC_LEVELS[3:], dtype=np.float64)
    spread = rng.multinomial(deep, sizes / sizes.sum())
    coarse = np.stack(
        [
            rng.integers(1, 3, size=docs),
            rng.integers(1, 4, size=docs),
            rng.integers(1, np.minimum(deep, 4) + 1),
        ],
        axis=1,
    )
    return np.concatenate([coarse, spread], axis=1)


def make_level_data(
    docs: int, label_counts: tuple[int, ...] = EUROVOC_LEVELS, seed: int = 0
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(gold uint8 [docs, labels], scores float32 [docs, labels]) per level.

    Gold columns are drawn with replacement (a duplicate draw merges, so R is sometimes one
    less than drawn); scores are standard normal float32.
    """
    rng = np.random.default_rng(seed)
    counts = gold_counts(docs, rng)
    if len(label_counts) != counts.shape[1]:
        counts = rng.integers(1, 4, size=(docs, len(label_counts)))
    golds, scores = [], []
    rows = np.arange(docs)
    for level, labels in enumerate(label_counts):
        gold = np.zeros((docs, labels), dtype=np.uint8)
        r = counts[:, level]
        width = int(r.max(initial=0))
        if width:
            cols = rng.integers(0, labels, size=(docs, width))
            keep = np.arange(width)[None, :] < r[:, None]
            gold[np.broadcast_to(rows[:, None], cols.shape)[keep], cols[keep]] = 1
        golds.append(gold)
        scores.append(rng.standard_normal((docs, labels), dtype=np.float32))
    return golds, scores


def rp_levels_and_micro(
    golds: list[np.ndarray],
    scores: list[np.ndarray],
    gold_all: np.ndarray,
    score_all: np.ndarray,
    rp: Any,
) -> list[float]:
    """R-Precision of every level, then micro, with the function `rp` (fast or reference)."""
    values = [rp(g, s)[0] for g, s in zip(golds, scores, strict=True)]
    values.append(rp(gold_all, score_all)[0])
    return values


def bench_rprecision(docs: int, ref_rows: int, reps: int) -> dict[str, Any]:
    from hiersearch import metrics as M

    golds, scores = make_level_data(docs)
    high = [s + 3 * g for g, s in zip(golds, scores, strict=True)]  # gold scores ~N(3, 1)
    # micro through r_precision needs one [docs, all labels] array: built once, outside timing
    gold_all, score_all = np.concatenate(golds, axis=1), np.concatenate(scores, axis=1)
    sub = slice(0, ref_rows)
    sub_golds, sub_scores = [g[sub] for g in golds], [s[sub] for s in scores]
    sub_gold_all, sub_score_all = gold_all[sub], score_all[sub]

    # the fast and the reference loop agree (same tie rule) on the subsample
    fast_sub = rp_levels_and_micro(sub_golds, sub_scores, sub_gold_all, sub_score_all,
                                   M.r_precision)
    ref_sub = rp_levels_and_micro(sub_golds, sub_scores, sub_gold_all, sub_score_all,
                                  M.r_precision_reference)
    max_abs_diff = float(np.max(np.abs(np.subtract(fast_sub, ref_sub))))

    times = alternate(
        {
            "r_precision_levels_micro": lambda: rp_levels_and_micro(
                golds, scores, gold_all, score_all, M.r_precision
            ),
            "evaluate_full": lambda: M.evaluate(golds, scores, "dev"),
            # a trained model ranks gold labels high: no count stops early (the worst case)
            "evaluate_full_gold_ranked_high": lambda: M.evaluate(golds, high, "dev"),
            "reference_subsample": lambda: rp_levels_and_micro(
                sub_golds, sub_scores, sub_gold_all, sub_score_all, M.r_precision_reference
            ),
        },
        reps,
    )
    fast = times.median_wall("r_precision_levels_micro")
    full = times.median_wall("evaluate_full")
    ref_scaled = times.median_wall("reference_subsample") * docs / ref_rows
    fast_cpu = times.median_cpu("r_precision_levels_micro")
    ref_cpu_scaled = times.median_cpu("reference_subsample") * docs / ref_rows
    result = M.evaluate(golds, scores, "dev")
    r = np.stack([np.count_nonzero(g, axis=1) for g in golds], axis=1)
    full_size = docs == FULL_DOCS
    return {
        "docs": docs,
        "label_counts": list(EUROVOC_LEVELS),
        "gold_per_doc_mean_by_level": [round(float(x), 2) for x in r.mean(axis=0)],
        "docs_without_gold_by_level": [int(x) for x in (r == 0).sum(axis=0)],
        "reference_rows_timed": ref_rows,
        "timings": times.to_json(),
        "r_precision_levels_micro_s": fast,
        "r_precision_levels_micro_cpu_s": fast_cpu,
        "evaluate_full_s": full,
        "evaluate_full_cpu_s": times.median_cpu("evaluate_full"),
        "evaluate_full_gold_ranked_high_s": times.median_wall("evaluate_full_gold_ranked_high"),
        "reference_scaled_s": ref_scaled,
        "reference_scaled_cpu_s": ref_cpu_scaled,
        "speedup_vs_reference": ref_scaled / fast,
        "speedup_vs_reference_cpu_time": ref_cpu_scaled / fast_cpu,
        "speedup_evaluate_vs_reference": ref_scaled / full,
        "fast_vs_reference_max_abs_diff": max_abs_diff,
        "dev_rp_macro_random_scores": result["dev/rp_macro"],
        "target_1s": verdict(fast, 1.0, False) if full_size else "n/a (not full size)",
        "target_1s_by_cpu_time_over_2_cores": verdict(fast_cpu / 2, 1.0, False)
        if full_size else "n/a (not full size)",
        "target_speedup_40x": verdict(ref_scaled / fast, 40.0, True),
    }


F1_DEV_DOCS = 5_000  # EURLEX57K's dev set


def f1_level_data(docs: int) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """EURLEX57K-shaped gold per level and two sets of float32 probabilities: a model at the
    label prior (sigmoid of random scores) and a trained one (gold scores + 3)."""
    golds, scores = make_level_data(docs)

    def sigmoid(x: np.ndarray) -> np.ndarray:
        return (1.0 / (1.0 + np.exp(-x.astype(np.float64)))).astype(np.float32)

    prior = [sigmoid(s) for s in scores]
    trained = [sigmoid(s + 3 * g) for g, s in zip(golds, scores, strict=True)]
    return golds, prior, trained


def bench_f1(docs: int, reps: int) -> dict[str, Any]:
    from hiersearch import metrics as M

    golds, prior, trained = f1_level_data(docs)
    times = alternate(
        {
            "tune_prior": lambda: M.tune_thresholds(golds, prior),
            "tune_trained": lambda: M.tune_thresholds(golds, trained),
            # what an epoch's dev report adds: the thresholds and every F1 at them
            "tuned_f1_trained": lambda: M.tuned_f1(golds, trained, "dev"),
            "sort_every_score": lambda: [np.sort(s, axis=None) for s in trained],
        },
        reps,
    )
    sort, sort_cpu = times.median_wall("sort_every_score"), times.median_cpu("sort_every_score")
    out: dict[str, Any] = {
        "docs": docs,
        "label_counts": list(EUROVOC_LEVELS),
        "timings": times.to_json(),
        "sort_every_score_s": sort,
        "sort_every_score_cpu_s": sort_cpu,
    }
    for name in ("tune_prior", "tune_trained", "tuned_f1_trained"):
        out[f"{name}_s"] = times.median_wall(name)
        out[f"{name}_cpu_s"] = times.median_cpu(name)
        out[f"{name}_over_sort_cpu"] = times.median_cpu(name) / sort_cpu
    out["dev_f1_micro_prior"] = M.tuned_f1(golds, prior, "dev")["dev/f1_micro"]
    out["dev_f1_micro_trained"] = M.tuned_f1(golds, trained, "dev")["dev/f1_micro"]
    return out


def util_inputs(docs: int, seq: int, seed: int = 0) -> tuple[Any, Any]:
    """Random token ids and a padding mask with lengths seq/2..seq (a realistic batch)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 30000, (docs, seq), generator=generator)
    ids[:, 0] = 101  # [CLS]
    lengths = torch.randint(seq // 2, seq + 1, (docs,), generator=generator)
    lengths[0] = seq  # one full-length document, so the batch really is `seq` wide
    mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()
    return ids * mask, mask


def bert_base_encoder(layers: int = 12, hidden: int = 768, heads: int = 12) -> Any:
    import torch
    from transformers import BertConfig, BertModel

    config = BertConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
    )
    torch.manual_seed(0)
    encoder = BertModel(config, add_pooling_layer=False)
    encoder.set_attn_implementation("sdpa")  # as in training: utilization switches to eager
    return encoder.eval()


def bench_utilization(docs: int, seq: int, layers: int, reps: int) -> dict[str, Any]:
    import torch

    from hiersearch.model.utilization import measure_utilization

    encoder = bert_base_encoder(layers)
    ids, mask = util_inputs(docs, seq)

    @torch.no_grad()
    def forward_only() -> None:
        # what measure_utilization's encoder calls cost by themselves (the same batches of 16
        # documents of similar length, each cut to its longest)
        encoder.set_attn_implementation("eager")
        ends = mask.sum(dim=1)  # util_inputs pads on the right
        order = torch.argsort(ends, stable=True)
        try:
            for start in range(0, docs, 16):
                rows = order[start : start + 16]
                used = int(ends[rows].max())
                encoder(
                    input_ids=ids[rows, :used],
                    attention_mask=mask[rows, :used],
                    output_attentions=True,
                    output_hidden_states=True,
                    return_dict=True,
                )
        finally:
            encoder.set_attn_implementation("sdpa")

    times = alternate(
        {
            "measure_utilization": lambda: measure_utilization(encoder, ids, mask),
            "encoder_forward_only": forward_only,
        },
        reps,
    )
    total, forward = times.median_wall("measure_utilization"), times.median_wall(
        "encoder_forward_only"
    )
    full_size = (docs, layers) == (64, 12)
    return {
        "docs": docs,
        "seq": seq,
        "layers": layers,
        "config": "BertConfig(hidden 768, 12 heads, intermediate 3072), random init, fp32",
        "torch_threads": torch.get_num_threads(),
        "timings": times.to_json(3),
        "measure_utilization_s": total,
        "measure_utilization_cpu_s": times.median_cpu("measure_utilization"),
        "encoder_forward_s": forward,
        "encoder_forward_cpu_s": times.median_cpu("encoder_forward_only"),
        "statistics_s": max(total - forward, 0.0),
        "statistics_share": max(total - forward, 0.0) / total,
        "target_10s": verdict(total, 10.0, False) if full_size else "n/a (not full size)",
        "target_10s_by_cpu_time_over_2_cores": verdict(
            times.median_cpu("measure_utilization") / 2, 10.0, False
        ) if full_size else "n/a (not full size)",
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1/10 of the docs, 1 rep")
    parser.add_argument("--docs", type=int, default=None)
    parser.add_argument("--ref-rows", type=int, default=None)
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--util-docs", type=int, default=None)
    parser.add_argument("--util-seq", type=int, default=128)
    parser.add_argument("--skip-util", action="store_true")
    parser.add_argument("--sections", default="rp,util,f1", help="which of rp, util, f1")
    parser.add_argument("--json", default=None, help="also write the result here")
    args = parser.parse_args(argv)
    setup_env()
    sections = set(args.sections.split(","))
    docs = args.docs or (FULL_DOCS // 10 if args.quick else FULL_DOCS)
    reps = args.reps or (1 if args.quick else 3)
    ref_rows = args.ref_rows or (300 if args.quick else 2000)
    out: dict[str, Any] = {"machine": machine(), "quick": args.quick}
    if "rp" in sections:
        out["r_precision"] = bench_rprecision(docs, min(ref_rows, docs), reps)
    if "f1" in sections:
        out["f1"] = bench_f1(F1_DEV_DOCS // 10 if args.quick else F1_DEV_DOCS, reps)
    if "util" in sections and not args.skip_util:
        util_docs = args.util_docs or (4 if args.quick else 64)
        out["utilization"] = bench_utilization(util_docs, args.util_seq, 12, reps)
    out["machine"]["load_average_end"] = machine()["load_average_1_5_15"]
    emit("metrics_speed", out, args.json)


if __name__ == "__main__":
    main()
