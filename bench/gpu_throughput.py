"""GPU training throughput, MFU and peak memory of FLAT and LAST-SIX in bf16 and fp32 side by
side: BERT-base (random init, or a model directory with --model), 512 tokens, fused AdamW, the
paper's 6 EuroVoc levels (21 / 127 / 567 / 3861 / 2284 / 481 labels) on one CUDA device.

Precisions, as hiersearch's trials use them (`TrialConfig.precision`):
- `bf16`: the forward under `torch.autocast("cuda", dtype=torch.bfloat16)`, TF32 allowed for
  the matmuls and convolutions that stay float32;
- `fp32`: no autocast, TF32 off (IEEE float32 matmuls).

The four candidates (variant x precision) take turns in blocks of steps, in an order that
rotates every block (several blocks, median samples/s). MFU = model FLOPs per second / the
device's dense peak for the precision: bf16 against the bf16 tensor-core peak, fp32 against
the plain FP32 (non-tensor-core) peak, since TF32 is off (PEAK_BF16, PEAK_FP32; --peak-tflops
and --peak-fp32-tflops for devices not listed). Model FLOPs per training sample = 3 x forward
(backward ~ 2 x forward), forward = layers x (24 s h^2 + 4 s^2 h) + 2 x head weights (matmuls
only; embeddings, norms and softmax left out, as is usual for MFU). Peak memory per candidate,
over 2 steps after its warm-up: `max_memory_allocated` above what is allocated before them
(both models' weights and AdamW state: activations and gradients) and `max_memory_reserved`
above what the caching allocator holds after `empty_cache` (what the step makes it reserve).

On a machine without CUDA it prints why and exits 0: nothing is measured.

    python bench/gpu_throughput.py [--quick] [--batch 16] [--steps N] [--blocks N]
        [--precisions bf16,fp32] [--model DIR] [--peak-tflops X] [--peak-fp32-tflops X]
        [--device cpu]   (a smoke run of the code path on the CPU: its figures mean nothing)
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, machine, median, setup_env  # noqa: E402

EUROVOC_LEVELS = (21, 127, 567, 3861, 2284, 481)
VARIANTS = ("FLAT", "LAST-SIX")
PRECISIONS = ("bf16", "fp32")
# dense peaks (no sparsity), FLOP/s, by a substring of the device name; "H100 PCIe" is listed
# (and so tried) before "H100". bf16: tensor cores; fp32: the plain FP32 units (TF32 off).
PEAK_BF16 = {
    "H200": 989.4e12,
    "H100 PCIe": 756.0e12,
    "H100": 989.4e12,  # SXM / HBM3
    "A100": 312.0e12,
    "L40S": 362.05e12,
    "A10G": 70.0e12,
    "L4": 121.0e12,
}
PEAK_FP32 = {
    "H200": 66.9e12,
    "H100 PCIe": 51.2e12,
    "H100": 66.9e12,
    "A100": 19.5e12,
    "L40S": 91.6e12,
    "A10G": 31.2e12,
    "L4": 30.3e12,
}
PEAKS = {"bf16": PEAK_BF16, "fp32": PEAK_FP32}
MEMORY_KEYS = ("resident_gib", "step_peak_allocated_gib", "step_peak_reserved_gib",
               "peak_allocated_gib", "peak_reserved_gib")


def peak_flops(
    device_name: str, override_tflops: float | None = None, precision: str = "bf16"
) -> float | None:
    """The device's dense peak for `precision` (FLOP/s), or None when its name is unknown."""
    if override_tflops:
        return override_tflops * 1e12
    for key, value in PEAKS[precision].items():
        if key in device_name:
            return value
    return None


def train_flops_per_sample(
    layers: int, hidden: int, seq: int, head_weights: int, used_layers: int | None = None
) -> float:
    """Matmul FLOPs of one training sample: 3 x (encoder layers run + heads) forward."""
    run = layers if used_layers is None else used_layers
    forward = run * (24 * seq * hidden**2 + 4 * seq**2 * hidden) + 2 * head_weights
    return 3.0 * forward


def candidates(variants: Sequence[str], precisions: Sequence[str]) -> list[tuple[str, str]]:
    """Every (variant, precision) pair, variant-major."""
    return [(v, p) for v in variants for p in precisions]


def block_order(block: int, names: Sequence[Any]) -> list[Any]:
    """The candidates' order in a block: rotated by one each block, so that no candidate is
    always first (a cold clock) or always after the same one."""
    shift = block % len(names)
    return [*names[shift:], *names[:shift]]


def set_precision(precision: str) -> Any:
    """Switch the process-wide TF32 flags for `precision`; return the autocast dtype its
    forward runs under (None: float32)."""
    import torch

    tf32 = precision == "bf16"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    return torch.bfloat16 if precision == "bf16" else None


def precision_ratios(rates: dict[str, dict[str, float]]) -> dict[str, float]:
    """Per variant: bf16 samples/s over fp32 samples/s (the speed-up of bf16)."""
    return {
        variant: by_precision["bf16"] / by_precision["fp32"]
        for variant, by_precision in rates.items()
        if by_precision.get("bf16") and by_precision.get("fp32")
    }


def build(variant: str, model: str | None, device: Any) -> Any:
    import torch
    from transformers import BertConfig, BertModel

    from hiersearch.model.assignment import named_variant
    from hiersearch.model.classifier import LayerwiseClassifier
    from hiersearch.model.encoder import load_encoder

    if model:
        encoder = load_encoder(model)
    else:
        torch.manual_seed(0)
        encoder = BertModel(BertConfig(), add_pooling_layer=False)  # BERT-base shape
        encoder.set_attn_implementation("sdpa")
    layers = int(encoder.config.num_hidden_layers)
    assignment = named_variant(variant, layers, len(EUROVOC_LEVELS), EUROVOC_LEVELS)
    return LayerwiseClassifier(encoder, assignment, EUROVOC_LEVELS, dropout=0.1).to(device)


@dataclass(frozen=True)
class Trainer:
    """Both variants' models and fused AdamW optimizers, and one fixed random batch (labels
    ~1 % positive) that every timed step trains on."""

    models: dict[str, Any]
    optimizers: dict[str, Any]
    ids: Any
    mask: Any
    labels: Any

    @classmethod
    def build(cls, args: argparse.Namespace, device: Any) -> Trainer:
        import torch

        generator = torch.Generator().manual_seed(0)
        ids = torch.randint(1000, 30000, (args.batch, args.seq), generator=generator).to(device)
        labels = (torch.rand(args.batch, sum(EUROVOC_LEVELS), generator=generator) < 0.01)
        models = {v: build(v, args.model, device).train() for v in VARIANTS}
        optimizers = {
            v: torch.optim.AdamW(m.parameters(), lr=2e-5, fused=True) for v, m in models.items()
        }
        return cls(models, optimizers, ids, torch.ones_like(ids), labels.float().to(device))

    def sync(self) -> None:
        import torch

        if self.ids.device.type == "cuda":
            torch.cuda.synchronize()

    def steps(self, name: tuple[str, str], count: int) -> float:
        """Seconds of `count` training steps of one candidate (variant, precision)."""
        import contextlib

        import torch

        variant, precision = name
        model, optimizer = self.models[variant], self.optimizers[variant]
        dtype = set_precision(precision)
        self.sync()
        start = time.perf_counter()
        for _ in range(count):
            autocast = (torch.autocast(self.ids.device.type, dtype=dtype) if dtype is not None
                        else contextlib.nullcontext())
            with autocast:
                loss = model.loss(model(self.ids, self.mask), self.labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        self.sync()
        return time.perf_counter() - start


def step_memory(trainer: Trainer, name: tuple[str, str]) -> dict[str, float]:
    """CUDA memory of 2 steps of a warmed-up candidate: what stays resident, and the peaks
    above it (allocated) and above the allocator's holding after `empty_cache` (reserved)."""
    import torch

    torch.cuda.empty_cache()  # reserved = what is allocated (rounded to blocks)
    torch.cuda.reset_peak_memory_stats()
    resident = torch.cuda.memory_allocated()  # both models' weights and AdamW state
    reserved = torch.cuda.memory_reserved()
    trainer.steps(name, 2)
    return {
        "resident_gib": resident / 2**30,
        "step_peak_allocated_gib": (torch.cuda.max_memory_allocated() - resident) / 2**30,
        "step_peak_reserved_gib": (torch.cuda.max_memory_reserved() - reserved) / 2**30,
        "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
        "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
    }


def time_blocks(trainer: Trainer, names: Sequence[tuple[str, str]], args: argparse.Namespace
                ) -> dict[tuple[str, str], list[float]]:
    """Samples/s of each candidate in each block of `args.steps` steps (rotating order)."""
    rates: dict[tuple[str, str], list[float]] = {name: [] for name in names}
    for block in range(args.blocks):
        for name in block_order(block, names):
            rates[name].append(args.batch * args.steps / trainer.steps(name, args.steps))
    return rates


def candidate_figures(model: Any, seq: int, rates: list[float], peak: float | None
                      ) -> dict[str, Any]:
    """One candidate's median samples/s over its blocks, its model FLOPs and MFU."""
    config = model.encoder.config
    heads = sum(h.weight.numel() for h in model.heads)
    flops = train_flops_per_sample(
        int(config.num_hidden_layers), int(config.hidden_size), seq, heads,
        used_layers=len(model.encoder.encoder.layer),
    )
    rate = median(rates)
    return {"samples_per_s": rate, "samples_per_s_all_blocks": rates,
            "train_flops_per_sample": flops, "mfu": rate * flops / peak if peak else None}


def variant_ratios(figures: dict[str, dict[str, Any]], precisions: Sequence[str]
                   ) -> dict[str, float | None]:
    """Per precision: LAST-SIX over FLAT in throughput and in a step's peak memory (None
    where FLAT's step peak is 0: a CPU run reads no device memory)."""
    out: dict[str, float | None] = {}
    for precision in precisions:
        flat, last = (figures[f"{v}/{precision}"] for v in VARIANTS)
        out[f"last_six_over_flat_throughput_{precision}"] = (
            last["samples_per_s"] / flat["samples_per_s"]
        )
        out[f"last_six_over_flat_step_peak_memory_{precision}"] = (
            last["step_peak_allocated_gib"] / flat["step_peak_allocated_gib"]
            if flat["step_peak_allocated_gib"] else None
        )
    return out


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    trainer = Trainer.build(args, device)
    names = candidates(VARIANTS, args.precisions)
    memory: dict[tuple[str, str], dict[str, float]] = {}
    for name in names:
        trainer.steps(name, args.warmup)
        # a smoke run on the CPU has no device memory to read
        memory[name] = step_memory(trainer, name) if cuda else dict.fromkeys(MEMORY_KEYS, 0.0)
    rates = time_blocks(trainer, names, args)
    device_name = torch.cuda.get_device_name(0) if cuda else "cpu"
    peaks = {
        "bf16": peak_flops(device_name, args.peak_tflops, "bf16"),
        "fp32": peak_flops(device_name, args.peak_fp32_tflops, "fp32"),
    }
    out: dict[str, Any] = {
        "device": device_name,
        "peak_bf16_flops": peaks["bf16"],
        "peak_fp32_flops": peaks["fp32"],
        "candidates": {},
    }
    medians: dict[str, dict[str, float]] = {v: {} for v in VARIANTS}
    for variant, precision in names:
        figures = candidate_figures(trainer.models[variant], args.seq,
                                    rates[(variant, precision)], peaks[precision])
        medians[variant][precision] = figures["samples_per_s"]
        out["candidates"][f"{variant}/{precision}"] = {
            "variant": variant, "precision": precision, **figures,
            **memory[(variant, precision)],
        }
    out["bf16_over_fp32_throughput"] = precision_ratios(medians)
    out.update(variant_ratios(out["candidates"], args.precisions))
    return out


def parse_precisions(text: str) -> tuple[str, ...]:
    chosen = tuple(p.strip() for p in text.split(",") if p.strip())
    bad = [p for p in chosen if p not in PRECISIONS]
    if bad or not chosen:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated subset of {','.join(PRECISIONS)}, got {text!r}")
    return chosen


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="seq 128, fewer steps")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="steps per timed block")
    parser.add_argument("--blocks", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--precisions", type=parse_precisions, default=PRECISIONS,
                        help="comma-separated, default bf16,fp32")
    parser.add_argument("--model", default=None, help="a 12-layer BERT-like model dir")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's dense bf16 peak, if its name is not known here")
    parser.add_argument("--peak-fp32-tflops", type=float, default=None,
                        help="the device's FP32 (non-tensor-core) peak, if not known here")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                        help="cpu: a smoke run of the code path (its figures mean nothing)")
    parser.add_argument("--json", default=None, help="also write the result here")
    args = parser.parse_args(argv)
    args.seq = args.seq or (128 if args.quick else 512)
    args.steps = args.steps or (5 if args.quick else 20)
    args.blocks = args.blocks or (4 if args.quick else 6)
    setup_env()
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_throughput: no CUDA device here (torch "
              f"{torch.__version__}): nothing measured. Run it on a GPU machine.", flush=True)
        emit("gpu_throughput", {"machine": machine(), "skipped": "no CUDA device"}, args.json)
        return None
    out = {"machine": machine(), "quick": args.quick, "batch": args.batch, "seq": args.seq,
           "steps_per_block": args.steps, "blocks": args.blocks,
           "precisions": list(args.precisions), **measure(args)}
    emit("gpu_throughput", out, args.json)
    return out


if __name__ == "__main__":
    main()
