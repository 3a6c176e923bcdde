"""Predict throughput: `ExportedModel.scores` against a plain Hugging Face forward pass of the
same encoder, and early exit by level.

The model: the packaged MiniLM-L6 with ONE-BY-ONE heads over the 3 levels of a synthetic
EuroVoc corpus (21 / 127 / 7,029 labels; L1 -> layer 2, L2 -> layer 4, L3 -> layer 6), mean
pooling, freshly initialized heads (speed does not depend on what they learned), written to a
temporary directory by the exporter (`hiersearch.serve.export`) and loaded back with
`ExportedModel.load`, as `hiersearch predict` does. The documents: that corpus's texts
(synthetic), truncated at 64 tokens as the quick preset trains them.

Candidates, timed over the same documents, batch size and thread count, taking turns (rotating
order) over several repetitions:

- `hf_forward`: `AutoModel.from_pretrained(<export>/encoder)` + its tokenizer, batch by batch,
  `inference_mode`: the plain encoder forward (no heads, no pooling, no sigmoid).
- `scores_all`: `ExportedModel.scores(texts)`: tokenization, all layers, every head, sigmoid.
- `scores_L1`, `scores_L1-2`: early exit: `scores(texts, levels=[1])` runs layers 1-2 only,
  `levels=[1, 2]` layers 1-4.
- `predict_all`: `hiersearch.serve.predict.predict_stream` (scores + top-5 selection + JSON
  lines into memory): what `hiersearch predict` adds on top of `scores`.

Figures: throughput ratio (hf_forward time / candidate time, median of the per-repetition
ratios; documents per second follow from the medians), wall and CPU time. Targets:
`scores_all` / `hf_forward` >= 0.95; early exit speed-up over `scores_all` >= 0.9 x (encoder
layers / layers needed).

    python bench/predict_throughput.py [--quick] [--docs N] [--threads T] [--json OUT]

An exported ensemble against a single exported trial (issue 36; `--ensemble DIR --single DIR
--input DOCS.jsonl`): the documents of DOCS (the first `--docs`), candidates timed as above:

- `single_scores`: `ExportedModel.scores` of the single trial's export (the best trial);
- `ensemble_scores`: `EnsembleModel.scores` of the ensemble's export (every member weighted at
  some level runs; members on a shared encoder in one forward per batch);
- `ensemble_baseline_member`: its TF-IDF member's `level_scores` alone (part of the above);
- `ensemble_scores_2`, ...: a second `--ensemble DIR` (and more), timed in the same turns.

Figure: documents per second of the ensemble / of the single trial (single time / ensemble
time, median of the per-repetition ratios). Target >= 0.8 for head-only members on one frozen
encoder.

    python bench/predict_throughput.py --ensemble DIR --single DIR --input DOCS.jsonl
        [--docs N] [--reps R] [--threads T] [--json OUT]
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import alternate, emit, machine, median, setup_env, verdict  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

LEVEL_SUBSETS = {"scores_L1": [1], "scores_L1-2": [1, 2]}
BASELINE = "hf_forward"
TARGET_RATIO = 0.95
SINGLE, ENSEMBLE = "single_scores", "ensemble_scores"
TARGET_ENSEMBLE = 0.8  # ensemble docs/s over the single trial's
TARGET_EARLY_EXIT = 0.9  # x (encoder layers / layers needed)


@dataclass(frozen=True)
class Setup:
    encoder: str
    docs: int
    max_length: int
    batch: int
    reps: int


FULL = Setup("minilm", docs=128, max_length=64, batch=32, reps=7)
QUICK = Setup("tiny:6x32", docs=12, max_length=16, batch=4, reps=1)


def build_export(setup: Setup, directory: Path) -> tuple[Path, list[str]]:
    """A model directory of a freshly initialized ONE-BY-ONE classifier on a synthetic EuroVoc
    corpus of 3 levels, and that corpus's texts."""
    from hiersearch.data.synth import SynthConfig, synthesize
    from hiersearch.data.vocabularies import eurovoc_hierarchy
    from hiersearch.serve.export import write_model_dir
    from hiersearch.trial.config import TrialConfig
    from hiersearch.trial.recipe import build_classifier

    corpus = synthesize(eurovoc_hierarchy(), SynthConfig(docs=setup.docs, seed=0))
    if corpus.hierarchy.depth > 3:
        corpus = corpus.truncate(1, 3)
    counts = [len(ids) for ids in corpus.hierarchy.label_index()]
    config = TrialConfig(
        model=setup.encoder, assignment="ONE-BY-ONE", max_length=setup.max_length,
        pooling="mean", dropout=0.0,
    )
    core = build_classifier(config, counts).eval()
    out = directory / "model"
    out.mkdir()
    # the exporter's own writer: the bench measures the directory `hiersearch export` writes
    write_model_dir(out, core, config, corpus.hierarchy, corpus.synthetic, {}, "bench",
                    "random-init", "")
    texts = [doc.text for docs in corpus.splits.values() for doc in docs]
    return out, texts[: setup.docs]


def hf_forward(model_dir: Path, max_length: int) -> Callable[[Sequence[str], int], None]:
    """The plain Hugging Face encoder of the export, run the way predict batches documents."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    # no pooler: the export has none (the heads pool), and a random one would add work
    encoder = AutoModel.from_pretrained(model_dir / "encoder", add_pooling_layer=False).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir / "tokenizer")

    @torch.inference_mode()
    def run(texts: Sequence[str], batch: int) -> None:
        for start in range(0, len(texts), batch):
            ids = tokenizer(list(texts[start : start + batch]), truncation=True,
                            max_length=max_length, padding=True, return_tensors="pt")
            encoder(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"])

    return run


def candidates(model: Any, model_dir: Path, texts: list[str], batch: int) -> dict[str, Any]:
    from hiersearch.serve.predict import Selection, check_levels, predict_stream

    plain = hf_forward(model_dir, model.max_length)
    every = check_levels(None, model.num_levels)
    named: dict[str, Callable[[], Any]] = {
        BASELINE: lambda: plain(texts, batch),
        "scores_all": lambda: model.scores(texts, batch_size=batch),
    }
    for name, levels in LEVEL_SUBSETS.items():
        named[name] = lambda levels=levels: model.scores(texts, levels=levels, batch_size=batch)
    named["predict_all"] = lambda: predict_stream(
        model, ((str(i), t) for i, t in enumerate(texts)), io.StringIO(), every,
        Selection(5, None), batch,
    )
    return named


def paired_ratio(times: dict[str, list[float]], numerator: str, denominator: str) -> float:
    """Median over repetitions of numerator time / denominator time (same repetition)."""
    return median([a / b for a, b in zip(times[numerator], times[denominator], strict=True)])


def summarize(times: dict[str, list[float]], docs: int, layers: int,
              needed: dict[str, int]) -> dict[str, Any]:
    throughput = {k: docs / median(v) for k, v in times.items()}
    ratio = {k: paired_ratio(times, BASELINE, k) for k in times if k != BASELINE}
    early = {}
    for name, k in needed.items():
        speedup = paired_ratio(times, "scores_all", name)
        target = TARGET_EARLY_EXIT * layers / k
        early[name] = {"layers_needed": k, "speedup": speedup, "target": target,
                       "verdict": verdict(speedup, target, True)}
    return {
        "docs_per_s": throughput,
        "throughput_ratio_vs_hf": ratio,
        "ratio_verdict": verdict(ratio["scores_all"], TARGET_RATIO, True),
        "early_exit": early,
    }


def ensemble_name(number: int) -> str:
    """The candidate of the `number`th `--ensemble` (0-based): `ensemble_scores`, then
    `ensemble_scores_2`, ..."""
    return ENSEMBLE if number == 0 else f"{ENSEMBLE}_{number + 1}"


def summarize_ensemble(times: dict[str, list[float]], docs: int) -> dict[str, Any]:
    """Docs per second of every candidate, and each ensemble's over the single trial's (the
    first's as `ensemble_over_single`, every one's in `over_single`)."""
    ensembles = [k for k in times if k == ENSEMBLE or k.startswith(f"{ENSEMBLE}_")]
    ratios = {k: paired_ratio(times, SINGLE, k) for k in ensembles}
    return {
        "docs_per_s": {k: docs / median(v) for k, v in times.items()},
        "ensemble_over_single": ratios[ENSEMBLE],
        "over_single": ratios,
        "target": TARGET_ENSEMBLE,
        "verdict": verdict(ratios[ENSEMBLE], TARGET_ENSEMBLE, True),
        "verdicts": {k: verdict(r, TARGET_ENSEMBLE, True) for k, r in ratios.items()},
    }


def compare_ensemble(args: argparse.Namespace) -> dict[str, Any]:
    """The ensemble's export against the single trial's, on the documents of `args.input`."""
    from hiersearch.serve.ensemble import EnsembleModel
    from hiersearch.serve.model import ExportedModel
    from hiersearch.serve.predict import open_documents

    texts = [text for _, text in open_documents(args.input)][: args.docs or None]
    single = ExportedModel.load(args.single)
    ensembles = [EnsembleModel.load(directory) for directory in args.ensemble]
    ensemble = ensembles[0]
    batch = args.batch
    named: dict[str, Callable[[], Any]] = {SINGLE: lambda: single.scores(texts, batch_size=batch)}
    for number, model in enumerate(ensembles):
        named[ensemble_name(number)] = (
            lambda model=model: model.scores(texts, batch_size=batch))
    if ensemble.baseline is not None:
        index = ensemble.baseline[1]
        named["ensemble_baseline_member"] = lambda: index.level_scores(texts)
    for fn in named.values():  # warm-up
        fn()
    before = machine()
    timings = alternate(named, args.reps or 5)
    return {
        "single": str(args.single),
        "single_trial": single.info.get("trial_id"),
        "single_variant": single.info.get("variant"),
        "ensemble": str(args.ensemble[0]),
        "members": [dict(p) for p in ensemble.info["members"]],
        "shared_encoders": [len(g) for g in ensemble.groups],
        "ensembles": {ensemble_name(n): {
            "dir": str(d), "weights": [list(w) for w in m.ensemble.weights],
            "members": [dict(p) for p in m.info["members"]],
            "shared_encoders": [len(g) for g in m.groups],
            "test_macro": m.info["metrics"].get("test/rp_macro"),
        } for n, (d, m) in enumerate(zip(args.ensemble, ensembles, strict=True))},
        "docs": len(texts),
        "batch": batch,
        "threads": args.threads,
        "machine_before": before,
        "load_after": machine()["load_average_1_5_15"],
        "wall": summarize_ensemble(timings.wall, len(texts)),
        "cpu": summarize_ensemble(timings.cpu, len(texts)),
        **timings.to_json(),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, a few documents")
    parser.add_argument("--docs", type=int, default=None)
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch's threads and numpy's BLAS pool (fixed)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--ensemble", action="append", default=None,
                        help="an exported ensemble's directory (again for more, side by side)")
    parser.add_argument("--single", default=None, help="an exported trial's directory")
    parser.add_argument("--input", default=None, help="documents (JSONL with a text field)")
    parser.add_argument("--batch", type=int, default=32, help="with --ensemble: batch size")
    args = parser.parse_args(argv)
    if args.ensemble is not None:
        if args.single is None or args.input is None:
            parser.error("--ensemble needs --single and --input")
        setup_env()
        import torch

        torch.set_num_threads(args.threads)
        # the k-NN members' products run in numpy's BLAS, whose idle threads spin: left at
        # its default, it charged the ensemble CPU time the one-thread single trial never has
        with threadpool_limits(args.threads):
            result = compare_ensemble(args)
        emit("predict_throughput_ensemble", result, args.json)
        return result
    setup = QUICK if args.quick else FULL
    setup = Setup(setup.encoder, args.docs or setup.docs, setup.max_length, setup.batch,
                  args.reps or setup.reps)
    setup_env()
    import torch

    torch.set_num_threads(args.threads)
    from hiersearch.serve.model import ExportedModel

    with tempfile.TemporaryDirectory(prefix="hiersearch-bench-predict-") as tmp:
        model_dir, texts = build_export(setup, Path(tmp))
        model = ExportedModel.load(model_dir)
        named = candidates(model, model_dir, texts, setup.batch)
        for fn in named.values():  # warm-up: first calls allocate and pick kernels
            fn()
        before = machine()
        timings = alternate(named, setup.reps)
        needed = {name: model.layers_needed(levels) for name, levels in LEVEL_SUBSETS.items()}
        result = {
            "setup": setup.__dict__,
            "encoder_layers": model.num_layers,
            "docs": len(texts),
            "machine_before": before,
            "load_after": machine()["load_average_1_5_15"],
            "wall": summarize(timings.wall, len(texts), model.num_layers, needed),
            "cpu": summarize(timings.cpu, len(texts), model.num_layers, needed),
            **timings.to_json(),
        }
    emit("predict_throughput", result, args.json)
    return result


if __name__ == "__main__":
    main()
