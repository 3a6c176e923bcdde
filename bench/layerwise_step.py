"""Layer-wise heads cost nothing: training step time and peak memory of every named variant
(`hiersearch.model.classifier.LayerwiseClassifier`) against a plain FLAT baseline,
`transformers.BertForSequenceClassification(problem_type="multi_label_classification")`, on the
same encoder weights, batch and label count.

Encoders: the packaged MiniLM-L6 (6 layers, hidden 384) with 3 levels (21 / 104 / 300 labels:
the quick preset's synthetic EuroVoc corpus), and a random-init 12-layer BERT (`tiny:12x128`:
hidden 128, 8 heads) with the paper's 6 EuroVoc levels (21 / 127 / 567 / 3861 / 2284 / 481).

Step time: every model has its own copy of the encoder and its own AdamW; the models take
turns step by step (a rotating order) on one fixed batch, many repetitions; the figure is the
median over repetitions of (variant step / baseline step of the same repetition), both in wall
time and in this process's CPU time (one torch thread by default, so CPU time is the step's
compute and does not wait for a core when the shared machine is loaded).

Peak memory: the PyTorch profiler tracks every CPU tensor allocation from the model's
construction on (its "[memory]" events carry the allocator's running total of live bytes, the
CPU analogue of `torch.cuda.max_memory_allocated`); the figure is the maximum of that total
during 3 training steps (weights + gradients + AdamW state + activations), over the baseline's.
One model at a time, dropped before the next. (RSS deltas were tried and rejected: transformers'
lazy imports and the allocator's cached pages swamp a difference of a few MB.)

Head options (section `heads`): one variant (IN-PAIRS by default: it reads every layer, in
pairs, so its heads are the widest) with each `pooling` (cls, mean, cls_mean) and `head_norm`
(none, batchnorm, layernorm), and mean + batchnorm, taking turns with the same HF baseline in
one run: the same step-time and peak-memory ratios and targets. The main job's shape: MiniLM-L6,
batch 16 x 64 tokens.

Frozen layers (section `freeze`): the same variant with `freeze_layers` k = 0..N-1 (the
embeddings and the lowest k layers get no gradient; the optimizer gets only the parameters that
require one); the figure is the speed-up of a training step over k = 0, median of the paired
ratios (step at k = 0 / step at k, same repetition).

Targets: step ratio <= 1.03 and peak-memory ratio <= 1.05 for every variant and head option.

    python bench/layerwise_step.py [--quick] [--sections variants,heads,freeze] [--json OUT]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, machine, median, setup_env, verdict  # noqa: E402

BASELINE = "BASELINE"
EUROVOC_LEVELS = (21, 127, 567, 3861, 2284, 481)
QUICK_LEVELS = (21, 104, 300)  # the quick preset's synthetic EuroVoc corpus
# (encoder, label counts, batch, seq, repetitions): the faster step gets more repetitions,
# since its ratio is noisier on a shared machine
FULL_CASES = [
    ("minilm", QUICK_LEVELS, 16, 128, 16),
    ("tiny:12x128", EUROVOC_LEVELS, 16, 128, 40),
]
QUICK_CASES = [("tiny:6x64", QUICK_LEVELS, 8, 64, 3), ("tiny:12x64", EUROVOC_LEVELS, 8, 64, 3)]
# head options and frozen layers: the main job's shape (quick preset: batch 16, 64 tokens).
# A 0.9 s step needs ~40 repetitions to read a 3% ratio on a shared box (12 read up to 1.04
# for the paper's own head); the freeze speed-ups are tens of percent, 12 suffice.
CASE_BY_SECTION = {
    "heads": ("minilm", QUICK_LEVELS, 16, 64, 40),
    "freeze": ("minilm", QUICK_LEVELS, 16, 64, 12),
}
QUICK_HEAD_CASE = ("tiny:4x32", QUICK_LEVELS, 4, 16, 2)
HEAD_VARIANT = "IN-PAIRS"  # reads all layers, two per head: the widest heads
SECTIONS = ("variants", "heads", "freeze")


@dataclass(frozen=True)
class Candidate:
    """One model of a comparison: a named variant with head options, or the HF baseline."""

    key: str
    variant: str
    head: dict[str, Any] = field(default_factory=dict)

    @property
    def baseline(self) -> bool:
        return self.variant == BASELINE


def head_candidates(variant: str) -> list[Candidate]:
    """The HF baseline, then `variant` with every pooling and every normalization (each
    changed alone from the paper's head), and mean + batchnorm (the issue's best probe)."""
    out = [Candidate(BASELINE, BASELINE)]
    for pooling in ("cls", "mean", "cls_mean"):
        out.append(Candidate(f"pooling={pooling}", variant, {"pooling": pooling}))
    for norm in ("batchnorm", "layernorm"):
        out.append(Candidate(f"head_norm={norm}", variant, {"head_norm": norm}))
    out.append(Candidate("mean+batchnorm", variant, {"pooling": "mean", "head_norm": "batchnorm"}))
    return out


def freeze_candidates(variant: str, num_layers: int) -> list[Candidate]:
    """`variant` with freeze_layers k = 0..N-1 (k = N would leave only the heads to train)."""
    return [Candidate(f"freeze_layers={k}", variant, {"freeze_layers": k})
            for k in range(num_layers)]


def trainable(model: Any) -> list[Any]:
    """The parameters an optimizer gets: frozen layers must not be in it (no AdamW state)."""
    return [p for p in model.parameters() if p.requires_grad]


def make_batch(batch: int, seq: int, num_labels: int, seed: int = 0) -> dict[str, Any]:
    """A full-length batch of random token ids and sparse multi-hot labels (~1% positive)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 30000, (batch, seq), generator=generator)
    ids[:, 0] = 101
    labels = (torch.rand(batch, num_labels, generator=generator) < 0.01).float()
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def build_model(
    encoder: Any, name: str, label_counts: tuple[int, ...], head: dict[str, Any] | None = None
) -> Any:
    """A named variant (with `head`: LayerwiseClassifier's head options) over a deep copy of
    `encoder`, or the HF FLAT baseline with the same encoder weights (its pooler, which the
    layer-wise model does not have, is fresh)."""
    from transformers import BertForSequenceClassification

    from hiersearch.model.assignment import named_variant
    from hiersearch.model.classifier import LayerwiseClassifier
    from hiersearch.model.encoder import num_encoder_layers

    if name == BASELINE:
        config = copy.deepcopy(encoder.config)
        config.num_labels = sum(label_counts)
        config.problem_type = "multi_label_classification"
        model = BertForSequenceClassification(config)
        missing, unexpected = model.bert.load_state_dict(encoder.state_dict(), strict=False)
        if unexpected or any(not key.startswith("pooler.") for key in missing):
            raise RuntimeError(f"baseline weights differ: {missing} {unexpected}")
        model.set_attn_implementation("sdpa")
        return model
    num_layers = num_encoder_layers(encoder)
    assignment = named_variant(name, num_layers, len(label_counts), label_counts)
    # the classifier registers hooks on (and may truncate) its encoder: one copy per model
    return LayerwiseClassifier(
        copy.deepcopy(encoder), assignment, label_counts, dropout=0.1, **(head or {})
    )


def model_names(num_layers: int, label_counts: tuple[int, ...]) -> list[str]:
    from hiersearch.model.assignment import variant_names

    return [BASELINE, *variant_names(len(label_counts))]


def variant_candidates(num_layers: int, label_counts: tuple[int, ...]) -> list[Candidate]:
    """The HF baseline and every named variant with the paper's head."""
    return [Candidate(name, name) for name in model_names(num_layers, label_counts)]


def train_step(model: Any, optimizer: Any, batch: dict[str, Any], baseline: bool) -> float:
    """One forward + backward + AdamW step; returns the loss."""
    if baseline:
        loss = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            labels=batch["labels"],
        ).loss
    else:
        logits = model(batch["input_ids"], batch["attention_mask"])
        loss = model.loss(logits, batch["labels"])
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def step_times(
    encoder: Any, candidates: list[Candidate], counts: tuple[int, ...], batch: dict[str, Any],
    reps: int, warmup: int,
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall and CPU seconds per training step of every candidate, taking turns step by step."""
    import torch

    models = {c.key: build_model(encoder, c.variant, counts, c.head).train() for c in candidates}
    optimizers = {key: torch.optim.AdamW(trainable(m), lr=1e-5) for key, m in models.items()}
    baseline = {c.key: c.baseline for c in candidates}
    keys = list(models)
    times: dict[str, list[float]] = {key: [] for key in keys}
    cpu: dict[str, list[float]] = {key: [] for key in keys}
    for rep in range(warmup + reps):
        shift = rep % len(keys)
        for key in keys[shift:] + keys[:shift]:
            cpu_start, start = time.process_time(), time.perf_counter()
            train_step(models[key], optimizers[key], batch, baseline[key])
            if rep >= warmup:  # the first steps allocate AdamW state and warm caches
                times[key].append(time.perf_counter() - start)
                cpu[key].append(time.process_time() - cpu_start)
    return times, cpu


def step_ratios(
    times: dict[str, list[float]], base_key: str = BASELINE
) -> dict[str, dict[str, float]]:
    """Per variant: median of the paired ratios (variant / baseline, same repetition), and the
    ratio of the medians."""
    base = times[base_key]
    out = {}
    for name, values in times.items():
        if name == base_key:
            continue
        paired = [v / b for v, b in zip(values, base, strict=True)]
        out[name] = {
            "median_paired_ratio": median(paired),
            "ratio_of_medians": median(values) / median(base),
            # contention only ever adds time: the fastest steps are the least disturbed
            "ratio_of_minimums": min(values) / min(base),
            "median_step_s": median(values),
        }
    return out


# ----------------------------------------------------------------------------- peak memory


def peak_from_trace(trace: dict[str, Any], marker: str) -> tuple[int, int]:
    """(peak live bytes inside the `marker` range, live bytes when it starts), counted from
    the start of the profile, from a chrome trace of a profile with profile_memory=True."""
    events = trace["traceEvents"]
    span = next(e for e in events if e.get("name") == marker and e.get("ph") == "X")
    start, end = float(span["ts"]), float(span["ts"]) + float(span["dur"])
    memory = sorted(
        (float(e["ts"]), int(e["args"]["Total Allocated"]), int(e["args"]["Bytes"]))
        for e in events
        if e.get("name") == "[memory]" and e["args"].get("Device Type", 0) == 0
    )
    if not memory:
        return 0, 0
    # the allocator's total also holds tensors tracked by an earlier profile and still alive:
    # the total before the first event of this profile is that floor
    floor = memory[0][1] - memory[0][2]
    before = [total - floor for ts, total, _ in memory if ts < start]
    inside = [total - floor for ts, total, _ in memory if start <= ts <= end]
    at_start = before[-1] if before else 0
    return max(inside, default=at_start), at_start


def peak_memory(
    encoder: Any, candidate: Candidate, counts: tuple[int, ...], batch: dict[str, Any],
    steps: int,
) -> dict[str, int]:
    """Peak live CPU tensor bytes of one model's training steps (its weights, gradients, AdamW
    state and activations), counting every allocation from the model's construction on; the
    model is dropped afterwards so that the next measurement starts clean."""
    import gc

    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    gc.collect()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        model = build_model(encoder, candidate.variant, counts, candidate.head).train()
        optimizer = torch.optim.AdamW(trainable(model), lr=1e-5)
        with record_function("train_steps"):
            for _ in range(steps):
                train_step(model, optimizer, batch, candidate.baseline)
        del model, optimizer
        gc.collect()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        trace = json.loads(path.read_text())
    peak, at_start = peak_from_trace(trace, "train_steps")
    return {"peak_live_bytes": peak, "live_bytes_before_steps": at_start}


def memory_ratios(
    encoder: Any, candidates: list[Candidate], counts: tuple[int, ...], batch: dict[str, Any],
    steps: int,
) -> dict[str, Any]:
    """Peak live bytes of every candidate over the first one's (the baseline)."""
    measured = {c.key: peak_memory(encoder, c, counts, batch, steps) for c in candidates}
    base = measured[candidates[0].key]["peak_live_bytes"]
    out: dict[str, Any] = {
        "method": "torch.profiler profile_memory: max of the CPU allocator's live-bytes total "
        f"during {steps} training steps, counted from the model's construction",
        "baseline": candidates[0].key,
        "baseline_peak_live_mb": base / 2**20,
    }
    for c in candidates[1:]:
        out[c.key] = {
            "peak_live_mb": measured[c.key]["peak_live_bytes"] / 2**20,
            "peak_ratio": measured[c.key]["peak_live_bytes"] / base,
        }
    return out


def parameter_counts(
    encoder: Any, candidates: list[Candidate], counts: tuple[int, ...]
) -> dict[str, dict[str, int]]:
    """Parameters of every model, all and trainable (why memory can differ: the heads over
    concatenated layers; why a step gets faster: frozen layers)."""
    out = {}
    for c in candidates:
        model = build_model(encoder, c.variant, counts, c.head)
        out[c.key] = {"all": sum(p.numel() for p in model.parameters()),
                      "trainable": sum(p.numel() for p in trainable(model))}
    return out


def section_candidates(section: str, layers: int, counts: tuple[int, ...],
                       variant: str) -> list[Candidate]:
    """The models one section compares; the first is what the others are divided by."""
    if section == "variants":
        return variant_candidates(layers, counts)
    if section == "heads":
        return head_candidates(variant)
    if section == "freeze":
        return freeze_candidates(variant, layers)
    raise ValueError(f"unknown section {section!r} (one of {', '.join(SECTIONS)})")


def cost_summary(times: dict[str, list[float]], cpu: dict[str, list[float]]) -> dict[str, Any]:
    """Step-time ratios against the HF baseline, with their verdicts."""
    ratios, cpu_ratios = step_ratios(times), step_ratios(cpu)
    worst = max(r["median_paired_ratio"] for r in ratios.values())
    worst_cpu = max(r["median_paired_ratio"] for r in cpu_ratios.values())
    return {
        "baseline_median_step_s": median(times[BASELINE]),
        "baseline_median_step_cpu_s": median(cpu[BASELINE]),
        "step_wall": ratios,
        "step_cpu": cpu_ratios,
        "worst_step_ratio_wall": worst,
        "worst_step_ratio_cpu": worst_cpu,
        "target_step_1.03_wall": verdict(worst, 1.03, higher_is_better=False),
        "target_step_1.03_cpu": verdict(worst_cpu, 1.03, higher_is_better=False),
    }


def speedups(times: dict[str, list[float]], base_key: str) -> dict[str, float]:
    """Per candidate, the median over repetitions of (base step / its step, same repetition)."""
    base = times[base_key]
    return {key: median([b / v for b, v in zip(base, values, strict=True)])
            for key, values in times.items() if key != base_key}


def freeze_summary(times: dict[str, list[float]], cpu: dict[str, list[float]],
                   base_key: str) -> dict[str, Any]:
    return {
        "unfrozen_median_step_s": median(times[base_key]),
        "unfrozen_median_step_cpu_s": median(cpu[base_key]),
        "speedup_wall": speedups(times, base_key),
        "speedup_cpu": speedups(cpu, base_key),
    }


def run_case(spec: str, counts: tuple[int, ...], batch_size: int, seq: int, reps: int,
             warmup: int, skip_memory: bool, section: str = "variants",
             variant: str = HEAD_VARIANT) -> dict[str, Any]:
    import torch

    from hiersearch.model.encoder import load_encoder, num_encoder_layers

    load_start = os.getloadavg()
    encoder = load_encoder(spec, seed=0)
    layers = num_encoder_layers(encoder)
    candidates = section_candidates(section, layers, counts, variant)
    batch = make_batch(batch_size, seq, sum(counts))
    times, cpu = step_times(encoder, candidates, counts, batch, reps, warmup)
    case: dict[str, Any] = {
        "section": section,
        "encoder": spec,
        "layers": layers,
        "label_counts": list(counts),
        "variant": None if section == "variants" else variant,
        "batch": batch_size,
        "seq": seq,
        "torch_threads": torch.get_num_threads(),
        "reps": reps,
        "load_average_at_start": [round(x, 2) for x in load_start],
    }
    if section == "freeze":
        case.update(freeze_summary(times, cpu, candidates[0].key))
    else:
        case.update(cost_summary(times, cpu))
    case["step_times_s"] = {k: [round(x, 4) for x in v] for k, v in times.items()}
    case["step_cpu_s"] = {k: [round(x, 4) for x in v] for k, v in cpu.items()}
    case["parameters"] = parameter_counts(encoder, candidates, counts)
    if not skip_memory:
        memory = memory_ratios(encoder, candidates, counts, batch, 3)
        case["memory"] = memory
        worst_mem = max(v["peak_ratio"] for v in memory.values() if isinstance(v, dict))
        case["worst_peak_memory_ratio"] = worst_mem
        if section != "freeze":
            case["target_memory_1.05"] = verdict(worst_mem, 1.05, higher_is_better=False)
    case["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return case


def planned_cases(quick: bool, sections: list[str], only: str | None
                  ) -> list[tuple[str, str, tuple[int, ...], int, int, int]]:
    """(section, encoder, label counts, batch, seq, repetitions) of every case to run."""
    out = []
    if "variants" in sections:
        out += [("variants", *case) for case in (QUICK_CASES if quick else FULL_CASES)]
    for section in ("heads", "freeze"):
        if section in sections:
            out.append((section, *(QUICK_HEAD_CASE if quick else CASE_BY_SECTION[section])))
    return [case for case in out if only is None or case[1] == only]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny encoders, few reps")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: a trial's worker on the quick preset)")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--only", default=None, help="run only this encoder spec")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated, of: {', '.join(SECTIONS)}")
    parser.add_argument("--variant", default=HEAD_VARIANT,
                        help="the variant the heads and freeze sections use")
    parser.add_argument("--json", default=None, help="also write the result here")
    args = parser.parse_args(argv)
    setup_env()
    import torch

    torch.set_num_threads(args.threads)
    sections = [name.strip() for name in args.sections.split(",") if name.strip()]
    warmup = 1 if args.quick else 2
    out: dict[str, Any] = {"machine": machine(), "quick": args.quick, "cases": []}
    for section, spec, counts, batch_size, seq, reps in planned_cases(
        args.quick, sections, args.only
    ):
        out["cases"].append(run_case(spec, counts, batch_size, seq, args.reps or reps, warmup,
                                     args.skip_memory, section, args.variant))
    out["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    emit("layerwise_step", out, args.json)
    return out


if __name__ == "__main__":
    main()
