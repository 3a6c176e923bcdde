"""A baseline without an encoder: TF-IDF k-nearest neighbours on the HPO term definitions
(the baseline row every leaderboard carries, `hiersearch.report.baseline`, run on samples).

What a fine-tuned encoder has to beat on the hpo preset's corpus (BENCHMARKS.md section 10).
Each dev or test document is scored against the train documents by the cosine similarity of
their TF-IDF vectors (scikit-learn's `TfidfVectorizer`: word unigrams and bigrams, sublinear
term frequency, fitted on the train documents used); a label's score is the sum of the
similarities of the `k` nearest train documents that carry it (a similarity-weighted vote,
the usual multi-label k-NN). R-Precision per level, micro and macro come from
`hiersearch.metrics.evaluate`, as every trial's do.

It runs on every train document (about 10,000) and on the preset's fixed sample of 600, so
that the preset's figures can be read against a baseline that saw the same documents.

    python bench/tfidf_knn.py [--k 20] [--train-docs 600,all] [--json OUT]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, machine, setup_env  # noqa: E402

SPLITS = ("dev", "test")


def parse_train_docs(text: str) -> list[int | None]:
    """"600,all" -> [600, None] (None: every train document)."""
    out: list[int | None] = []
    for item in text.split(","):
        item = item.strip()
        if item == "all":
            out.append(None)
        elif item.isdigit() and int(item) >= 10:
            out.append(int(item))
        else:
            raise SystemExit(f"--train-docs: expected counts >= 10 or 'all', got {item!r}")
    return out


def evaluate_knn(corpus: Any, k: int) -> dict[str, dict[str, float]]:
    """Per split (dev, test): R-Precision per level (rp_l1...), micro and macro, of the
    baseline every leaderboard carries (`hiersearch.report.baseline.tfidf_knn`)."""
    from hiersearch.metrics.keys import rp_level_key, rp_macro_key, rp_micro_key
    from hiersearch.report.baseline import tfidf_knn

    metrics = tfidf_knn(corpus, k, SPLITS)
    levels = len(corpus.hierarchy.label_index())
    out = {}
    for split in SPLITS:
        row = {f"rp_l{n}": metrics[rp_level_key(split, n)] for n in range(1, levels + 1)}
        row["rp_micro"] = metrics[rp_micro_key(split)]
        row["rp_macro"] = metrics[rp_macro_key(split)]
        out[split] = row
    return out


def run(k: int, train_docs: list[int | None], depth: int = 4) -> dict[str, Any]:
    from hiersearch.data.loaders import HpoConfig, load_hpo

    rows = []
    for count in train_docs:
        started = time.perf_counter()
        corpus = load_hpo(HpoConfig(depth=depth, seed=0, train_docs=count))
        rows.append({
            "train_docs": len(corpus.splits["train"]),
            "sample": count,
            **evaluate_knn(corpus, k),
            "seconds": time.perf_counter() - started,
        })
    return {"k": k, "depth": depth, "runs": rows}


def table(result: dict[str, Any]) -> str:
    lines = []
    for row in result["runs"]:
        for split in SPLITS:
            values = " ".join(f"{v:.3f}" for v in row[split].values())
            lines.append(f"train {row['train_docs']:>6} {split:4s} {values}")
    header = " ".join(result["runs"][0]["dev"]) if result["runs"] else ""
    return f"R-Precision ({header})\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--k", type=int, default=20, help="neighbours that vote")
    parser.add_argument("--train-docs", default="600,all",
                        help="train documents: fixed samples as the hpo preset takes them, "
                             "or 'all' (comma-separated)")
    parser.add_argument("--depth", type=int, default=4, help="levels of the hierarchy")
    parser.add_argument("--json", default=None, help="also write the result here")
    args = parser.parse_args(argv)
    if args.k < 1:
        raise SystemExit("--k: must be >= 1")
    setup_env()
    result = {"machine": machine(), **run(args.k, parse_train_docs(args.train_docs), args.depth)}
    print(table(result), file=sys.stderr)
    emit("tfidf_knn", result, args.json)
    return result


if __name__ == "__main__":
    main()
