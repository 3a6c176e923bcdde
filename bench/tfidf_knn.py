"""A baseline without an encoder: TF-IDF k-nearest neighbours on the HPO term definitions.

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
from _common import emit, gold_levels, machine, setup_env  # noqa: E402

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


def knn_scores(similarity: Any, train_labels: list[Any], k: int) -> list[Any]:
    """Per level, each document's label scores: the summed similarity of its `k` most similar
    train documents that carry the label."""
    import numpy as np

    k = min(k, similarity.shape[1])
    nearest = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
    weights = np.zeros_like(similarity)
    np.put_along_axis(weights, nearest, np.take_along_axis(similarity, nearest, axis=1), axis=1)
    return [weights @ labels for labels in train_labels]


def evaluate_knn(corpus: Any, k: int) -> dict[str, dict[str, float]]:
    """Per split (dev, test): R-Precision per level (rp_l1...), micro and macro."""
    import numpy as np
    from sklearn.feature_extraction.text import TfidfVectorizer

    from hiersearch.metrics import evaluate
    from hiersearch.metrics.keys import rp_level_key, rp_macro_key, rp_micro_key

    label_index = corpus.hierarchy.label_index()
    train = corpus.splits["train"]
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
    train_x = vectorizer.fit_transform([d.text for d in train])
    train_y = [y.astype(np.float32) for y in gold_levels([d.labels for d in train], label_index)]
    out = {}
    for split in SPLITS:
        docs = corpus.splits[split]
        # rows are L2-normalized by the vectorizer: the dot product is the cosine
        similarity = (vectorizer.transform([d.text for d in docs]) @ train_x.T).toarray()
        golds = gold_levels([d.labels for d in docs], label_index)
        metrics = evaluate(golds, knn_scores(similarity, train_y, k), split, ks=[1])
        row = {f"rp_l{n}": metrics[rp_level_key(split, n)] for n in range(1, len(golds) + 1)}
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
