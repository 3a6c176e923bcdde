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

Targets: step ratio <= 1.03 and peak-memory ratio <= 1.05 for every variant.

    python bench/layerwise_step.py [--quick] [--json OUT]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
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


def make_batch(batch: int, seq: int, num_labels: int, seed: int = 0) -> dict[str, Any]:
    """A full-length batch of random token ids and sparse multi-hot labels (~1% positive)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 30000, (batch, seq), generator=generator)
    ids[:, 0] = 101
    labels = (torch.rand(batch, num_labels, generator=generator) < 0.01).float()
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def build_model(encoder: Any, name: str, label_counts: tuple[int, ...]) -> Any:
    """A named variant over a deep copy of `encoder`, or the HF FLAT baseline with the same
    encoder weights (its pooler, which the layer-wise model does not have, is fresh)."""
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
    return LayerwiseClassifier(copy.deepcopy(encoder), assignment, label_counts, dropout=0.1)


def model_names(num_layers: int, label_counts: tuple[int, ...]) -> list[str]:
    from hiersearch.model.assignment import variant_names

    return [BASELINE, *variant_names(len(label_counts))]


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
    spec: str, label_counts: tuple[int, ...], batch_size: int, seq: int, reps: int, warmup: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall and CPU seconds per training step of every model, taking turns step by step."""
    import torch

    from hiersearch.model.encoder import load_encoder, num_encoder_layers

    encoder = load_encoder(spec, seed=0)
    names = model_names(num_encoder_layers(encoder), label_counts)
    models = {name: build_model(encoder, name, label_counts).train() for name in names}
    optimizers = {
        name: torch.optim.AdamW(model.parameters(), lr=1e-5) for name, model in models.items()
    }
    batch = make_batch(batch_size, seq, sum(label_counts))
    times: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(warmup + reps):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            cpu_start, start = time.process_time(), time.perf_counter()
            train_step(models[name], optimizers[name], batch, name == BASELINE)
            if rep >= warmup:  # the first steps allocate AdamW state and warm caches
                times[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - cpu_start)
    return times, cpu


def step_ratios(times: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Per variant: median of the paired ratios (variant / baseline, same repetition), and the
    ratio of the medians."""
    base = times[BASELINE]
    out = {}
    for name, values in times.items():
        if name == BASELINE:
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
    encoder: Any, name: str, counts: tuple[int, ...], batch: dict[str, Any], steps: int
) -> dict[str, int]:
    """Peak live CPU tensor bytes of one model's training steps (its weights, gradients, AdamW
    state and activations), counting every allocation from the model's construction on; the
    model is dropped afterwards so that the next measurement starts clean."""
    import gc

    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    gc.collect()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        model = build_model(encoder, name, counts).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
        with record_function("train_steps"):
            for _ in range(steps):
                train_step(model, optimizer, batch, name == BASELINE)
        del model, optimizer
        gc.collect()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        trace = json.loads(path.read_text())
    peak, at_start = peak_from_trace(trace, "train_steps")
    return {"peak_live_bytes": peak, "live_bytes_before_steps": at_start}


def memory_ratios(
    spec: str, counts: tuple[int, ...], batch_size: int, seq: int, steps: int
) -> dict[str, Any]:
    from hiersearch.model.encoder import load_encoder, num_encoder_layers

    encoder = load_encoder(spec, seed=0)
    batch = make_batch(batch_size, seq, sum(counts))
    names = model_names(num_encoder_layers(encoder), counts)
    measured = {n: peak_memory(encoder, n, counts, batch, steps) for n in names}
    base = measured[BASELINE]["peak_live_bytes"]
    out: dict[str, Any] = {
        "method": "torch.profiler profile_memory: max of the CPU allocator's live-bytes total "
        f"during {steps} training steps, counted from the model's construction",
        "baseline_peak_live_mb": base / 2**20,
    }
    for name in names:
        if name != BASELINE:
            out[name] = {
                "peak_live_mb": measured[name]["peak_live_bytes"] / 2**20,
                "peak_ratio": measured[name]["peak_live_bytes"] / base,
            }
    return out


def head_parameters(spec: str, counts: tuple[int, ...]) -> dict[str, int]:
    """Parameters of every model (why memory can differ: the heads over concatenated layers)."""
    from hiersearch.model.encoder import load_encoder, num_encoder_layers

    encoder = load_encoder(spec, seed=0)
    out = {}
    for name in model_names(num_encoder_layers(encoder), counts):
        model = build_model(encoder, name, counts)
        out[name] = sum(p.numel() for p in model.parameters())
    return out


def run_case(spec: str, counts: tuple[int, ...], batch_size: int, seq: int, reps: int,
             warmup: int, skip_memory: bool) -> dict[str, Any]:
    import torch

    from hiersearch.model.encoder import encoder_depth

    load_start = os.getloadavg()
    times, cpu = step_times(spec, counts, batch_size, seq, reps, warmup)
    ratios, cpu_ratios = step_ratios(times), step_ratios(cpu)
    case: dict[str, Any] = {
        "encoder": spec,
        "layers": encoder_depth(spec),
        "label_counts": list(counts),
        "batch": batch_size,
        "seq": seq,
        "torch_threads": torch.get_num_threads(),
        "reps": reps,
        "load_average_at_start": [round(x, 2) for x in load_start],
        "baseline_median_step_s": median(times[BASELINE]),
        "baseline_median_step_cpu_s": median(cpu[BASELINE]),
        "step_wall": ratios,
        "step_cpu": cpu_ratios,
        "step_times_s": {k: [round(x, 4) for x in v] for k, v in times.items()},
        "step_cpu_s": {k: [round(x, 4) for x in v] for k, v in cpu.items()},
        "parameters": head_parameters(spec, counts),
    }
    worst = max(r["median_paired_ratio"] for r in ratios.values())
    worst_cpu = max(r["median_paired_ratio"] for r in cpu_ratios.values())
    case["worst_step_ratio_wall"] = worst
    case["worst_step_ratio_cpu"] = worst_cpu
    case["target_step_1.03_wall"] = verdict(worst, 1.03, higher_is_better=False)
    case["target_step_1.03_cpu"] = verdict(worst_cpu, 1.03, higher_is_better=False)
    if not skip_memory:
        memory = memory_ratios(spec, counts, batch_size, seq, 3)
        case["memory"] = memory
        worst_mem = max(v["peak_ratio"] for v in memory.values() if isinstance(v, dict))
        case["worst_peak_memory_ratio"] = worst_mem
        case["target_memory_1.05"] = verdict(worst_mem, 1.05, higher_is_better=False)
    return case


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny encoders, few reps")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: a trial's worker on the quick preset)")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--only", default=None, help="run only this encoder spec")
    parser.add_argument("--json", default=None, help="also write the result here")
    args = parser.parse_args(argv)
    setup_env()
    import torch

    torch.set_num_threads(args.threads)
    cases = QUICK_CASES if args.quick else FULL_CASES
    if args.only:
        cases = [c for c in cases if c[0] == args.only]
    warmup = 1 if args.quick else 2
    out: dict[str, Any] = {"machine": machine(), "quick": args.quick, "cases": []}
    for spec, counts, batch_size, seq, reps in cases:
        out["cases"].append(
            run_case(spec, counts, batch_size, seq, args.reps or reps, warmup, args.skip_memory)
        )
    out["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    emit("layerwise_step", out, args.json)


if __name__ == "__main__":
    main()
