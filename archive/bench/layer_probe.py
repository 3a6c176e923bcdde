"""What each layer of the encoder offers a head: frozen linear probes per layer, pooling and
feature normalization, on the main job's corpus or on real text.

`--corpus synthetic` (the default) is the quick preset's corpus (SYNTHETIC EuroVoc, 900 docs,
seed 1, the 200 most frequent leaves, 64 tokens); `--corpus hpo` the hpo preset's real one (the
HPO term definitions, 4 levels, split seed 0, 48 tokens), with `--train-docs` train documents
(a fixed sample; 1,500 by default, dev whole). Both use the packaged MiniLM-L6 and its
tokenizer. The features of every layer
1..N are extracted once (eval mode, no gradient): the [CLS] vector and the mean of the real
tokens' vectors (padding masked). On each (layer, pooling, normalization) a probe is trained:
one linear layer per hierarchy level, full-batch Adam, BCE with logits, on train; it is scored
on dev with `hiersearch.metrics.evaluate` (R-Precision per level and macro).

Normalizations, all fitted on train only:
- `none`: the raw features (the paper's head);
- `batchnorm`: per feature, minus the train mean, over the train standard deviation (what a
  BatchNorm1d without affine parameters computes in eval mode);
- `layernorm`: per vector, minus its own mean over its own standard deviation (LayerNorm
  without affine parameters): it does not remove an offset that all documents share.

Every probe starts from the same seed, so the figures differ only by their features.
`--probes cls:none,mean:batchnorm` keeps some pooling:normalization pairs (default: all six).

    python archive/bench/layer_probe.py [--quick] [--corpus synthetic|hpo] [--train-docs N]
        [--probes P:N,...] [--steps 300] [--lr 3e-2] [--threads 2] [--json OUT]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))  # _common
from _common import emit, machine, setup_env  # noqa: E402

POOLINGS = ("cls", "mean")
NORMS = ("none", "batchnorm", "layernorm")
EPS = 1e-5  # BatchNorm1d's and LayerNorm's default


@dataclass(frozen=True)
class Setup:
    """The corpus, encoder and probe training of one run."""

    encoder: str
    docs: int  # synthetic corpus: documents in all splits
    max_leaves: int | None  # synthetic corpus: the most frequent leaves kept
    max_length: int
    steps: int
    lr: float
    seed: int = 1  # the corpus seed (the quick preset's; the hpo preset's split seed is 0)
    batch: int = 64  # documents per forward pass while extracting features
    corpus: str = "synthetic"  # or "hpo": the HPO term definitions (a real corpus)
    train_docs: int | None = None  # hpo: a fixed sample of train documents (None: all)


MAIN_JOB = Setup(encoder="minilm", docs=900, max_leaves=200, max_length=64, steps=300, lr=3e-2)
# The hpo preset's corpus and tokens; more train documents than its 600 (a probe is cheap)
HPO_JOB = Setup(encoder="minilm", docs=0, max_leaves=None, max_length=48, steps=300, lr=3e-2,
                seed=0, corpus="hpo", train_docs=1500)
QUICK = Setup(encoder="tiny:4x32", docs=40, max_leaves=20, max_length=32, steps=20, lr=3e-2)


def load_corpus(setup: Setup) -> Any:
    """The setup's corpus: synthetic on EuroVoc, or the HPO term definitions."""
    if setup.corpus == "hpo":
        from hiersearch.data.loaders import HpoConfig, load_hpo

        return load_hpo(HpoConfig(depth=4, seed=setup.seed, train_docs=setup.train_docs))
    from hiersearch.data import SynthConfig, eurovoc_hierarchy, synthesize

    config = SynthConfig(docs=setup.docs, seed=setup.seed, max_leaves=setup.max_leaves)
    return synthesize(eurovoc_hierarchy(), config)


def load_splits(setup: Setup, cache_dir: str) -> tuple[dict[str, Any], list[int]]:
    """The train and dev splits (`hiersearch.data.Split`) of the setup's corpus, encoded
    with the encoder's tokenizer, and the label count of every level."""
    import datasets

    from hiersearch.data import encode
    from hiersearch.data.encode import Split
    from hiersearch.model import tokenizer_path

    corpus = load_corpus(setup)
    datasets.disable_progress_bars()  # the JSON on stdout and the table on stderr stay readable
    encoded = encode(corpus, tokenizer_path(setup.encoder), setup.max_length, cache_dir)
    splits = {name: Split.from_table(encoded.splits[name]) for name in ("train", "dev")}
    return splits, encoded.label_counts


def extract_features(encoder: Any, split: Any, batch: int) -> dict[str, Any]:
    """Per pooling, a [layers, docs, hidden] float tensor of every layer's frozen features
    (layer 1 is the first encoder layer's output; the embeddings are left out)."""
    import numpy as np
    import torch

    encoder.eval()
    pooled: dict[str, list[Any]] = {name: [] for name in POOLINGS}
    with torch.no_grad():
        for start in range(0, len(split), batch):
            inputs = split.inputs(np.arange(start, min(start + batch, len(split))))
            out = encoder(**inputs, output_hidden_states=True, return_dict=True)
            hidden = torch.stack(out.hidden_states[1:])  # [layers, docs, tokens, hidden]
            mask = inputs["attention_mask"].to(hidden.dtype)[None, :, :, None]
            pooled["cls"].append(hidden[:, :, 0])
            pooled["mean"].append((hidden * mask).sum(dim=2) / mask.sum(dim=2))
    return {name: torch.cat(parts, dim=1) for name, parts in pooled.items()}


def normalize(train: Any, dev: Any, norm: str) -> tuple[Any, Any]:
    """(train, dev) features under `norm`; statistics come from train only."""
    import torch

    if norm == "none":
        return train, dev
    if norm == "batchnorm":
        mean, var = train.mean(dim=0), train.var(dim=0, unbiased=False)
        scale = torch.rsqrt(var + EPS)
        return (train - mean) * scale, (dev - mean) * scale
    if norm == "layernorm":
        shape = train.shape[-1:]
        return (torch.nn.functional.layer_norm(train, shape, eps=EPS),
                torch.nn.functional.layer_norm(dev, shape, eps=EPS))
    raise ValueError(f"unknown normalization {norm!r}")


def feature_spread(features: Any) -> float:
    """Median over features of the standard deviation across documents: how much a feature
    tells one document from another (tiny for the lower layers' [CLS] of MiniLM)."""
    return float(features.std(dim=0).median())


def train_probe(x: Any, targets: list[Any], steps: int, lr: float, seed: int = 0) -> list[Any]:
    """One linear layer per level on fixed features, full-batch Adam, BCE with logits; the
    levels' losses are summed (their parameters are disjoint, so each level trains alone)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    heads = []
    for target in targets:
        head = torch.nn.Linear(x.shape[1], target.shape[1])
        bound = 1.0 / x.shape[1] ** 0.5  # nn.Linear's own init, from a fixed seed
        with torch.no_grad():
            head.weight.uniform_(-bound, bound, generator=generator)
            head.bias.uniform_(-bound, bound, generator=generator)
        heads.append(head)
    optimizer = torch.optim.Adam([p for h in heads for p in h.parameters()], lr=lr)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    for _ in range(steps):
        loss = sum(bce(head(x), target) for head, target in zip(heads, targets, strict=True))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return heads


def score_probe(heads: list[Any], x: Any, golds: list[Any]) -> dict[str, float]:
    """Dev R-Precision per level (rp_l1, rp_l2, ...) and macro."""
    import torch

    from hiersearch.metrics import evaluate
    from hiersearch.metrics.keys import rp_level_key, rp_macro_key

    with torch.no_grad():
        scores = [head(x).numpy() for head in heads]
    metrics = evaluate([g.numpy() for g in golds], scores, "dev", ks=[1])
    out = {f"rp_l{n}": metrics[rp_level_key("dev", n)] for n in range(1, len(heads) + 1)}
    out["rp_macro"] = metrics[rp_macro_key("dev")]
    return out


def level_targets(split: Any, label_counts: list[int]) -> list[Any]:
    """Per level, the [docs, labels of the level] multi-hot targets."""
    import numpy as np

    from hiersearch.data.encode import multi_hot

    full = multi_hot(split.label_ids, sum(label_counts))
    bounds = np.cumsum([0, *label_counts])
    return [full[:, a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def label_prior(train: list[Any], dev: list[Any]) -> dict[str, float]:
    """R-Precision of ranking every dev document's labels by their train frequency: what a
    head that learned nothing from the text scores."""
    from hiersearch.metrics import evaluate
    from hiersearch.metrics.keys import rp_level_key, rp_macro_key

    scores = [t.mean(dim=0).expand(len(d), -1).numpy() for t, d in zip(train, dev, strict=True)]
    metrics = evaluate([d.numpy() for d in dev], scores, "dev", ks=[1])
    out = {f"rp_l{n}": metrics[rp_level_key("dev", n)] for n in range(1, len(dev) + 1)}
    out["rp_macro"] = metrics[rp_macro_key("dev")]
    return out


ALL_PROBES = tuple((pooling, norm) for pooling in POOLINGS for norm in NORMS)


def parse_probes(text: str | None) -> tuple[tuple[str, str], ...]:
    """"cls:none,mean:batchnorm" -> the (pooling, normalization) pairs; None -> all six."""
    if text is None:
        return ALL_PROBES
    pairs = tuple(tuple(item.split(":", 1)) for item in text.split(","))
    bad = [":".join(p) for p in pairs if p not in ALL_PROBES]
    if bad:
        raise SystemExit(f"--probes: unknown pairs {bad}; choose from "
                         f"{','.join(':'.join(p) for p in ALL_PROBES)}")
    return pairs  # type: ignore[return-value]


def probe_grid(features: dict[str, dict[str, Any]], train_y: list[Any], dev_y: list[Any],
               setup: Setup, probes: tuple[tuple[str, str], ...] = ALL_PROBES
               ) -> list[dict[str, Any]]:
    """One probe per layer x (pooling, normalization) pair; a row per probe."""
    rows = []
    layers = features["train"]["cls"].shape[0]
    for pooling in POOLINGS:
        for layer in range(1, layers + 1):
            train_x = features["train"][pooling][layer - 1]
            dev_x = features["dev"][pooling][layer - 1]
            spread = feature_spread(train_x)
            for norm in (n for p, n in probes if p == pooling):
                x, x_dev = normalize(train_x, dev_x, norm)
                heads = train_probe(x, train_y, setup.steps, setup.lr)
                rows.append({"layer": layer, "pooling": pooling, "norm": norm,
                             "train_feature_std_median": spread,
                             **score_probe(heads, x_dev, dev_y)})
    return rows


def table(rows: list[dict[str, Any]], levels: int) -> str:
    """The rows as text: one line per pooling x normalization probed, one column per layer."""
    keys = [f"rp_l{n}" for n in range(1, levels + 1)] + ["rp_macro"]
    probed = [p for p in ALL_PROBES if any((r["pooling"], r["norm"]) == p for r in rows)]
    lines = []
    for key in keys:
        lines.append(f"dev {key} by layer")
        for pooling, norm in probed:
            picked = sorted((r for r in rows if r["pooling"] == pooling and r["norm"] == norm),
                            key=lambda r: r["layer"])
            values = " ".join(f"{r[key]:.3f}" for r in picked)
            lines.append(f"  {pooling:5s} {norm:9s} {values}")
    return "\n".join(lines)


def run(setup: Setup, cache_dir: str,
        probes: tuple[tuple[str, str], ...] = ALL_PROBES) -> dict[str, Any]:
    from hiersearch.model import load_encoder

    start = time.perf_counter()
    splits, counts = load_splits(setup, cache_dir)
    encoder = load_encoder(setup.encoder, seed=0)
    extract_start = time.perf_counter()
    features = {name: extract_features(encoder, split, setup.batch)
                for name, split in splits.items()}
    extract_s = time.perf_counter() - extract_start
    train_y = level_targets(splits["train"], counts)
    dev_y = level_targets(splits["dev"], counts)
    probe_start = time.perf_counter()
    rows = probe_grid(features, train_y, dev_y, setup, probes)
    return {
        "setup": setup.__dict__,
        "label_counts": counts,
        "docs": {name: len(split) for name, split in splits.items()},
        "label_prior": label_prior(train_y, dev_y),
        "probes": rows,
        "seconds": {"extract": extract_s, "probes": time.perf_counter() - probe_start,
                    "total": time.perf_counter() - start},
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny encoder, 40 docs")
    parser.add_argument("--corpus", choices=("synthetic", "hpo"), default="synthetic",
                        help="the quick preset's synthetic corpus, or the hpo preset's")
    parser.add_argument("--train-docs", type=int, default=None,
                        help="hpo: train documents (a fixed sample; default 1500)")
    parser.add_argument("--probes", default=None,
                        help="pooling:normalization pairs, e.g. cls:none,mean:batchnorm")
    parser.add_argument("--steps", type=int, default=None, help="Adam steps per probe")
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--cache-dir", default=None, help="encoded-corpus cache (default: temp)")
    parser.add_argument("--json", default=None, help="also write the result here")
    args = parser.parse_args(argv)
    setup_env()
    import dataclasses

    import torch

    torch.set_num_threads(args.threads)
    probes = parse_probes(args.probes)
    setup = QUICK if args.quick else (HPO_JOB if args.corpus == "hpo" else MAIN_JOB)
    if args.quick and args.corpus == "hpo":
        setup = dataclasses.replace(setup, corpus="hpo", seed=0, train_docs=40)
    setup = dataclasses.replace(setup, steps=args.steps or setup.steps, lr=args.lr or setup.lr,
                                train_docs=args.train_docs or setup.train_docs)
    out: dict[str, Any] = {"machine": machine(), "quick": args.quick}
    with tempfile.TemporaryDirectory(prefix="hiersearch-probe-") as tmp:
        out.update(run(setup, args.cache_dir or tmp, probes))
    out["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    print(table(out["probes"], len(out["label_counts"])), file=sys.stderr, flush=True)
    emit("layer_probe", out, args.json)
    return out


if __name__ == "__main__":
    main()
